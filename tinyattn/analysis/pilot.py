"""The exploratory pilot's C3 comparisons (the ``ablations`` profile) as estimates, with no verdict
that its design could never have reached.

The ``ablations`` grid is the pilot that produced the hypotheses of the confirmatory round
(``profiles/confirm.yaml``; ``tinyattn.analysis.confirm``). Its C3 family (tiny attention minus the
same adapter without context, minus a bottleneck adapter of its size, minus one ten times larger:
``verdicts.C3_TESTS``) has one pair per (task, seed). Under the declared rule a comparison resolves
only when its Holm-adjusted sign-test p falls below ``stats.ALPHA``; with the grid's pairs that p
cannot, whatever the scores (``decidability.sign_floor``). So the chapter reports what the pilot
measures: each difference with its 95 % bootstrap interval over the pairs, the pairs won, and per task
a *t* interval over the seeds, as the budget chapter does for its grid of the same size.

* ``c3_labels``, ``head_dims``: the labels the chapter reads, through the profile's ``roles``;
* ``design_pairs`` and ``can_decide``: the pairs a finished grid gives a comparison, and whether the
  rule can resolve one there at all;
* ``c3_estimates`` and ``c3_per_task`` (``per_task_table``): the comparisons, pooled and per task;
* ``c3_reading``: the chapter's verdict paragraph: ``verdicts.c3`` where the design can reach a
  verdict, else the estimates and why there is none; ``c3_opening`` and ``c3_intro`` its sentences.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from tinyattn.analysis import stats, verdicts
from tinyattn.analysis.decidability import pairs_needed, sign_floor
from tinyattn.study.profiles import role
from tinyattn.study.status import ProfileRuns

#: What each C3 comparison is, in words: tiny attention minus ...
C3_WORDS = {
    "no_context": "the same adapter without context",
    "same_size_bottleneck": "a bottleneck adapter of its size",
    "larger_bottleneck": "one ten times larger",
}
DECIDED_BY = "the confirmatory round (the `confirm` profile; see The confirmatory plan)"


def c3_labels(profile: dict) -> list[str]:
    """The labels of C3's comparisons (``verdicts.C3_TESTS``), read through the profile's roles."""
    return [role(profile, name) for name in verdicts.C3_TESTS]


def head_dims(study: ProfileRuns) -> dict[str, int]:
    """The head-dimension sweep: label -> head dimension d for the reference and the ``head_dims``
    role's labels, in order of d, each d as the planned runs hold it."""
    labels = [role(study.profile, "reference"), *role(study.profile, "head_dims")]
    planned = {
        p.label: int(p.method_options["head_dim"]) for p in study.planned if p.label in labels
    }
    missing = [label for label in labels if label not in planned]
    if missing:
        raise ValueError(f"no planned run of {missing} in {study.profile.get('name')!r}")
    return dict(sorted(((label, planned[label]) for label in labels), key=lambda kv: kv[1]))


def design_pairs(profile: dict) -> int:
    """The (task, seed) pairs a comparison of the finished grid has: tasks times seeds."""
    return len(profile["tasks"]) * len(profile["seeds"])


def can_decide(pairs: int, family: int) -> bool:
    """Whether the declared rule can resolve a comparison of ``pairs`` pairs in a family of ``family``
    at all: all pairs won must give a Holm p below ``stats.ALPHA``."""
    return sign_floor(pairs, family)[1] < stats.ALPHA


def c3_estimates(runs: pd.DataFrame, profile: dict, score: str = "final_score") -> pd.DataFrame:
    """Tiny attention (role ``reference``) minus each C3 variant, paired on (task, seed): the
    declared analysis (``stats.declared_comparison``: pairs, mean and median difference, 95 %
    bootstrap interval, pairs won and lost, sign test, Holm over the three), one row per variant with
    a pair; empty while the reference has no run."""
    reference, labels = role(profile, "reference"), c3_labels(profile)
    if runs.empty or reference not in set(runs["method"]):
        return pd.DataFrame()
    shown = runs[runs["method"].isin([reference, *labels])]
    table = stats.declared_comparison(shown, reference, labels, score=score)
    return table[table["pairs"] > 0].reset_index(drop=True) if not table.empty else table


def c3_per_task(runs: pd.DataFrame, profile: dict, score: str = "final_score") -> pd.DataFrame:
    """Per task and C3 variant: tiny attention minus it over the seeds, the mean with its 95 % *t*
    interval and the seeds tiny attention wins (``stats.per_task_differences``); empty while the
    reference has no run."""
    reference, labels = role(profile, "reference"), c3_labels(profile)
    if runs.empty or reference not in set(runs["method"]):
        return pd.DataFrame()
    shown = runs[runs["method"].isin([reference, *labels])]
    table = stats.per_task_differences(shown, reference, score)
    if table.empty:
        return table
    order = {label: i for i, label in enumerate(labels)}
    return table.sort_values(
        ["task", "method"], key=lambda s: s.map(order) if s.name == "method" else s
    )


def per_task_table(per_task: pd.DataFrame) -> pd.DataFrame:
    """``c3_per_task`` for reading: one row per variant, one column per task, each cell the mean
    difference with its *t* interval and the seeds won ("k of n")."""
    if per_task.empty:
        return pd.DataFrame()
    cells = per_task.assign(
        cell=[
            f"{r.mean_difference:+.2f} "
            + ("(one seed)" if r.seeds < 2 else f"({r.ci_low:+.2f}, {r.ci_high:+.2f})")
            + f", {r.reference_wins} of {r.seeds}"
            for r in per_task.itertuples()
        ]
    )
    table = cells.pivot(index="method", columns="task", values="cell")
    return table.reindex(list(dict.fromkeys(per_task["method"]))).rename_axis(
        index=None, columns=None
    )


def _estimate(row, unit: str = " points") -> str:
    interval = (
        ""
        if pd.isna(row["ci_low"])
        else f" (95 % interval {row['ci_low']:+.2f} to {row['ci_high']:+.2f})"
    )
    return f"{row['mean_difference']:+.2f}{unit}{interval}"


def estimates(family: pd.DataFrame, profile: dict) -> str:
    """The C3 estimates in words: tiny attention minus each variant, the mean difference with its
    interval and the pairs it won."""
    if family.empty:
        return "no pair of tiny attention and a C3 variant has finished yet"
    rows = family.set_index("method")
    parts = []
    for name, label in zip(verdicts.C3_TESTS, c3_labels(profile)):
        if label in rows.index:
            row = rows.loc[label]
            parts.append(
                f"minus {C3_WORDS[name]} (`{label}`) {_estimate(row)}, {int(row['wins'])} of "
                f"{int(row['pairs'])} pairs won"
            )
    return "tiny attention " + "; ".join(parts)


def c3_reading(family: pd.DataFrame, profile: dict, complete: bool, *, round_done: bool) -> str:
    """The verdict paragraph. Where the finished grid can resolve a comparison under the declared
    rule, ``verdicts.c3`` on the comparisons; where it cannot (the pilot's six pairs against a family
    of three), no verdict: the estimates, what the design can reach, and what decides C3 (whether
    the confirmatory round is done: ``round_done``)."""
    pairs, family_size = design_pairs(profile), len(verdicts.C3_TESTS)
    roles: Mapping[str, str] = profile.get("roles") or {}
    if can_decide(pairs, family_size):
        return verdicts.c3(family, complete, roles=roles)
    p_all, p_holm = sign_floor(pairs, family_size)
    decides = (
        "decided C3 on new seeds: its verdict opens this chapter"
        if round_done
        else "decides C3 on new seeds; its verdict is pending until every one of its runs is done"
    )
    return (
        "**No verdict on C3 from the exploratory pilot**: its design cannot reach one. A comparison "
        f"has at most {pairs} (task, seed) pairs; even if tiny attention won all of them, the sign "
        f"test's p would be {p_all:.3f}, which Holm's correction over C3's {family_size} comparisons "
        f"makes {p_holm:.3f}, above {stats.ALPHA:g}: whatever the scores, no comparison resolves "
        f"({pairs_needed(family_size)} pairs are the fewest that could). What it measures, at the "
        f"end of training: {estimates(family, profile)}. These estimates are the hypotheses of "
        f"{DECIDED_BY}, which {decides}."
    )


def _decidable(profile: dict) -> bool:
    return can_decide(design_pairs(profile), len(verdicts.C3_TESTS))


def c3_opening(reading: str, family: pd.DataFrame, profile: dict, *, round_done: bool) -> str:
    """The pilot's opening sentence: the verdict's gist (none, for the pilot) and its estimates,
    after the confirmatory round's (pending until ``round_done``)."""
    head = verdicts.headline(reading)
    head = head[:1].upper() + head[1:]
    if family.empty:
        return f"**{head}.** No pair of tiny attention and a C3 variant has finished yet."
    if _decidable(profile):
        return f"**{head}**: {estimates(family, profile)}, at the end of training."
    most = int(family["pairs"].max())
    verdict = (
        "whose verdict opens this chapter"
        if round_done
        else "whose verdict is pending until that grid is complete"
    )
    return (
        f"**{head}**, whose {most} paired (task, seed) runs per comparison cannot reach one: "
        f"{estimates(family, profile)}, at the end of training. C3 is decided by "
        f"{DECIDED_BY}, {verdict}."
    )


def c3_intro(reading: str, family: pd.DataFrame, profile: dict, *, round_done: bool) -> str:
    """What the intro's claims table says of the pilot (plain text): the gist, and the estimates;
    until ``round_done``, that the verdict is pending the confirmatory round (whose status the row
    opens with)."""
    head = verdicts.headline(reading)
    if family.empty:
        return f"{head}; no pair has finished yet"
    rows = family.set_index("method")
    parts = [
        f"minus {C3_WORDS[name]} {rows.loc[label, 'mean_difference']:+.2f} "
        f"({rows.loc[label, 'ci_low']:+.2f} to {rows.loc[label, 'ci_high']:+.2f})"
        for name, label in zip(verdicts.C3_TESTS, c3_labels(profile))
        if label in rows.index and not pd.isna(rows.loc[label, "ci_low"])
    ]
    measured = f"tiny attention {', '.join(parts)} points (95 % intervals)"
    if _decidable(profile):
        return f"{head}: {measured}"
    if round_done:  # the intro's row opens with the round's verdict
        return f"{head}: the pilot's estimates, {measured}"
    return (
        f"{head}: the pilot's estimates, {measured}; the verdict is pending the confirmatory round"
    )
