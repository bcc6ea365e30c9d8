"""Every rule that turns measurements into a verdict the book states, and the verdict's sentence.

The paper's claims C1, C2 and C3 are judged on paired comparisons; the efficiency targets on a
benchmark's per-round ratios. Each rule is written once here and tested on every outcome it can give,
so that the book's chapters only display what it returns. Every comparison is a ``paired_comparison``
table (``tinyattn.analysis.aggregate``): the reference minus each other method, paired on (task, seed), with a
95 % bootstrap interval and an exact sign test. Each claim judges its own family of comparisons:
Holm's correction runs over that family (``stats.within_family``), and a difference counts as
resolved only under the declared rule (``stats.outcome``): its interval excludes zero *and* its
Holm-adjusted sign-test p is below 0.05.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pandas as pd

from tinyattn.analysis import stats

#: Averaging the experts "keeps" their accuracy when the whole 95 % interval of the loss (trained form
#: minus averaged, in points) lies below this margin: a loss of under half a point, resolved as such.
KEEP_MARGIN = 0.5

PROVISIONAL = "**Provisional** (on the runs finished so far; the grid is not complete):"

#: The tiny-attention variants: C1 judges tiny attention against the *other* methods only.
TINY_ATTENTION = "tinyattn"

#: When each C2 rule was fixed, from the project's history (``git log -S``), and what was seen by then.
C2_RULES = {
    "point estimate": {
        "commit": "9fb0df7",
        "date": "2026-11-27 04:23 UTC",
        "rule": "averaging keeps the accuracy when the mean loss (trained form minus averaged) is "
        "under half a point; the experts help when the intervals against one expert and one expert "
        "trained as long both lie above zero",
        "seen": "before any experts analysis was committed",
    },
    "interval": {
        "commit": "019a8e9",
        "date": "2026-11-27 12:36 UTC",
        "rule": "averaging keeps the accuracy when the whole 95 % interval of the loss lies under half "
        "a point, and loses it when the interval excludes zero but reaches half a point",
        "seen": "after the experts analyses of the three SST-2 runs of the cpu study (fce64a2, "
        "10:37 UTC) had been committed",
    },
}


def headline(verdict: str) -> str:
    """A verdict's gist for a summary table: its first bold phrase, marked provisional when it is."""
    provisional = verdict.startswith(PROVISIONAL)
    body = verdict.removeprefix(PROVISIONAL)
    match = re.search(r"\*\*(.+?)\*\*", body)
    gist = (match.group(1) if match else body.strip().splitlines()[0]).rstrip(".")
    return f"provisional: {gist}" if provisional else gist


def outcome(row: Mapping) -> str:
    """The reference against one method of a claim's family (a ``stats.within_family`` row):
    ``"better"``, ``"worse"``, ``"not resolved"`` or, with fewer than two pairs, ``"too few pairs"``,
    under the declared rule (``stats.outcome``: interval excludes zero and Holm's p < 0.05)."""
    return stats.outcome(row)


def code_list(items) -> str:
    """Names as inline code, comma-separated, in order of first appearance; ``"none"`` if empty."""
    return ", ".join(f"`{item}`" for item in dict.fromkeys(items)) or "none"


def _interval(row: Mapping) -> str:
    if pd.isna(row["ci_low"]):
        return f"{row['mean_difference']:+.2f} points, {int(row['pairs'])} pair(s)"
    return (
        f"{row['mean_difference']:+.2f} points, 95 % interval {row['ci_low']:+.2f} to "
        f"{row['ci_high']:+.2f}"
    )


def _evidence(row: Mapping) -> str:
    """The interval, and the sign test with its Holm-adjusted p."""
    text = _interval(row)
    if "wins" in row and not pd.isna(row.get("holm_p")):
        decided = int(row["wins"]) + int(row["losses"])
        text += f"; ahead in {int(row['wins'])} of {decided} pairs, Holm p = {row['holm_p']:.3f}"
    return text


def _row(comparison: pd.DataFrame, method: str) -> Mapping | None:
    table = comparison.set_index("method") if "method" in comparison.columns else comparison
    return table.loc[method] if method in table.index else None


def _methods(comparison: pd.DataFrame) -> list[str]:
    return list(comparison["method"] if "method" in comparison.columns else comparison.index)


# --------------------------------------------------------------------------- C1


def c1_family(comparison: pd.DataFrame) -> pd.DataFrame:
    """C1's family: tiny attention against every method that is not a tiny-attention variant (E = 4
    against E = 1 belongs to C2), with Holm's p over that family and the declared outcome."""
    others = [m for m in _methods(comparison) if not str(m).startswith(TINY_ATTENTION)]
    return stats.within_family(comparison, others)


def _c1_gist(table: pd.DataFrame) -> str:
    if (table["outcome"] == "worse").any():
        return "does not hold"
    if (table["outcome"] != "better").any():
        return "is not established"
    return "holds"


def c1(
    comparison: pd.DataFrame,
    reference: str,
    complete: bool,
    *,
    without_collapsed: pd.DataFrame | None = None,
) -> str:
    """C1, tiny attention beats every other method: it must be resolvably better than each of them
    (``c1_family``). Judged on all runs, as the protocol keeps every seed; ``without_collapsed`` (the
    same comparison without the pairs that hold a collapsed run) is reported beside it, and the
    sentence says whether it changes the verdict."""
    table = c1_family(comparison) if not comparison.empty else comparison
    if table.empty:
        return f"**No verdict yet.** No finished run of `{reference}` has a pair to compare."
    groups = table.groupby("outcome")["method"].apply(list).to_dict()
    better, worse = groups.get("better", []), groups.get("worse", [])
    unresolved = groups.get("not resolved", []) + groups.get("too few pairs", [])
    by_method = table.set_index("method")
    lines = [
        f"- tiny attention (`{reference}`) is resolvably better than: " + code_list(better),
        "- resolvably worse than: "
        + (
            "none"
            if not worse
            else "; ".join(f"`{m}` ({_evidence(by_method.loc[m])})" for m in worse)
        ),
        "- not resolved by these seeds and tasks: " + code_list(unresolved),
    ]
    gist = _c1_gist(table)
    if without_collapsed is not None and not without_collapsed.empty:
        other = c1_family(without_collapsed)
        other_gist = _c1_gist(other)
        worse_there = other.loc[other["outcome"] == "worse", "method"]
        lines.append(
            "- without the pairs that hold a collapsed run: resolvably worse than "
            + code_list(worse_there)
            + "; "
            + (
                "the verdict is the same"
                if other_gist == gist
                else f"the verdict would be that C1 {other_gist}"
            )
        )
    head = "" if complete else PROVISIONAL + " "
    head += {
        "does not hold": "**C1 does not hold on MiniLM-L6**: some methods beat tiny attention.",
        "is not established": "**C1 is not established on MiniLM-L6**: no method beats tiny "
        "attention, but not all differences are resolved.",
        "holds": "**C1 holds on MiniLM-L6**: tiny attention beats every other method.",
    }[gist]
    return head + "\n" + "\n".join(lines)


# --------------------------------------------------------------------------- C2


def averaging(deployment: Mapping) -> str:
    """The trained form minus the weight-averaged experts (one row of a paired comparison), under
    the interval rule: ``"keeps"`` (the loss is resolvably under ``KEEP_MARGIN``), ``"loses"`` (a
    resolved loss that may reach the margin) or ``"not resolved"``."""
    if pd.isna(deployment["ci_high"]):
        return "not resolved"
    if deployment["ci_high"] < KEEP_MARGIN:
        return "keeps"
    if deployment["ci_low"] > 0:
        return "loses"
    return "not resolved"


#: The comparisons that say whether the experts help: four averaged experts minus the runs of these
#: roles (the profile's ``roles``: one expert, one expert trained as long) ...
C2_EXPERTS = ("reference", "compute_control")


def glue_reference(roles: Mapping[str, str]) -> str:
    """... and, in the GLUE study (five tasks), minus one expert: the row C1 no longer judges."""
    return f"{roles['reference']} (GLUE study)"


def c2_labels(roles: Mapping[str, str]) -> list[str]:
    """The labels of C2's "the experts help" comparisons in a profile with these ``roles``."""
    return [roles[name] for name in C2_EXPERTS]


def c2_family(
    experts: pd.DataFrame, glue_experts: pd.DataFrame | None = None, *, roles: Mapping[str, str]
) -> pd.DataFrame:
    """C2's family of "the experts help" comparisons: four averaged experts minus one expert and
    minus one expert trained as long (the ablations), and minus one expert in the GLUE study
    (``glue_experts``, where given), with Holm's p over the family and the declared outcome.
    ``roles``: the ablations profile's (which label is the reference and the compute control)."""
    reference = roles["reference"]
    parts = [experts.reset_index() if "method" not in experts.columns else experts]
    if glue_experts is not None and _row(glue_experts, reference) is not None:
        glue = glue_experts.reset_index() if "method" not in glue_experts.columns else glue_experts
        parts.append(glue[glue["method"] == reference].assign(method=glue_reference(roles)))
    family = [*c2_labels(roles), glue_reference(roles)]
    return stats.within_family(pd.concat(parts, ignore_index=True), family)


def _c2_head(kept: str, helps: bool) -> str:
    if kept == "loses":
        return "**C2 does not hold on MiniLM-L6**: averaging the experts' weights loses accuracy."
    if kept == "not resolved":
        return (
            "**C2 is not established on MiniLM-L6**: these runs do not resolve whether averaging "
            "keeps the experts' accuracy."
        )
    if helps:
        return (
            "**C2 holds on MiniLM-L6**: averaging keeps the experts' accuracy and the experts help."
        )
    return (
        "**C2 holds only in part on MiniLM-L6**: averaging keeps the accuracy, but the experts "
        "do not resolvably beat one expert given the same training compute."
    )


def c2(
    experts: pd.DataFrame,
    deployment: pd.DataFrame,
    complete: bool,
    *,
    speed: float | None = None,
    independent: pd.DataFrame | None = None,
    glue_experts: pd.DataFrame | None = None,
    roles: Mapping[str, str],
) -> str:
    """C2, heads as experts, under the interval rule (``C2_RULES["interval"]``) and the declared
    analysis: weight averaging keeps the experts' accuracy (``averaging``), and the experts help
    (every comparison of ``c2_family`` resolved in their favour).

    ``experts``: four averaged experts (the reference) minus one expert (role ``reference``) and minus
    one expert trained as long (role ``compute_control``); ``roles``: the profile's; ``deployment``: the trained form (reference)
    minus each deployment, with a row ``"averaged"``, over the analysed runs; ``speed``: how many
    times as fast the averaged model serves; ``independent``: the same deployment comparison for
    independently initialised experts; ``glue_experts``: the GLUE study's four experts minus one.
    """
    row = _row(deployment, "averaged")
    if row is None:
        return "**No verdict yet.** No analysed run compares the deployments."
    if experts.empty:
        return "**No verdict yet.** No finished run of four experts to compare with one."
    independent = None if independent is None else _row(independent, "averaged")
    family = c2_family(experts, glue_experts, roles=roles).set_index("method")
    labels = {
        roles["reference"]: "four averaged experts minus one expert",
        roles["compute_control"]: "minus one expert trained as long (the same compute)",
        glue_reference(roles): "in the GLUE study (five tasks), four averaged experts minus one "
        "expert",
    }
    lines = [
        "- the experts as trained minus their weight average: "
        + _interval(row)
        + (f"; the average serves {speed:.2f}x as fast" if speed else "")
    ]
    lines += [
        f"- {labels[m]}: {_evidence(family.loc[m])} ({family.loc[m, 'outcome']})"
        for m in family.index
    ]
    if independent is not None:
        lines.append(
            "- independently initialised experts, as trained minus averaged: "
            + _interval(independent)
        )
    helps = roles["reference"] in family.index and (family["outcome"] == "better").all()
    head = ("" if complete else PROVISIONAL + " ") + _c2_head(averaging(row), helps)
    return head + "\n\n" + "\n".join(lines)


def c2_earlier_rules(
    experts: pd.DataFrame, deployment: pd.DataFrame, *, roles: Mapping[str, str]
) -> dict[str, str]:
    """The verdict's headline under each earlier rule of ``C2_RULES``, kept to report beside the
    current one, on the same comparisons. Both judged "the experts help" by the intervals alone (four
    averaged experts above one expert and above one expert trained as long; no sign test, no Holm, no
    GLUE-study row); the *point estimate* rule judged averaging by the mean loss (under
    ``KEEP_MARGIN``), the *interval* rule by its interval (``averaging``)."""
    row = _row(deployment, "averaged")
    if row is None or experts.empty:
        return dict.fromkeys(C2_RULES, "No verdict yet")
    e1, e1_2x = (_row(experts, label) for label in c2_labels(roles))
    helps = e1 is not None and e1["ci_low"] > 0
    helps = helps and (e1_2x is None or e1_2x["ci_low"] > 0)
    point = "keeps" if abs(row["mean_difference"]) < KEEP_MARGIN else "loses"
    return {
        "point estimate": headline(_c2_head(point, helps)),
        "interval": headline(_c2_head(averaging(row), helps)),
    }


#: C3's comparisons, as the roles of the profile's variants: tiny attention against the same adapter
#: without context, a bottleneck adapter of its size, and one ten times larger.
C3_TESTS = ("no_context", "same_size_bottleneck", "larger_bottleneck")


def c3_labels(roles: Mapping[str, str]) -> list[str]:
    """The labels of C3's comparisons (``C3_TESTS``) in a profile with these ``roles``."""
    return [roles[name] for name in C3_TESTS]


def c3(comparison: pd.DataFrame, complete: bool, *, roles: Mapping[str, str]) -> str:
    """C3, contexts matter more than parameters: tiny attention (role ``reference``) against the
    same adapter without context, a bottleneck adapter of its size, and one ten times larger (the
    ``C3_TESTS`` roles; ``roles``: the profile's).

    It holds if tiny attention resolvably beats both same-size variants and is not beaten by the larger
    one; it fails if either same-size variant beats it (context, or attention itself, then costs
    accuracy at equal parameters); it holds in a weak form if it beats the same-size variants but the
    larger adapter beats it.
    """
    tests = dict(zip(C3_TESTS, c3_labels(roles)))  # role -> label
    rows = {name: _row(comparison, label) for name, label in tests.items()}
    missing = [tests[name] for name, row in rows.items() if row is None]
    if missing:
        return f"**No verdict yet.** No finished pair for {code_list(missing)}."
    family = stats.within_family(comparison, list(tests.values())).set_index("method")  # Holm, 3
    rows = {name: family.loc[label] for name, label in tests.items()}
    result = {name: outcome(row) for name, row in rows.items()}
    labels = {
        "no_context": "against the same adapter without context (same parameters)",
        "same_size_bottleneck": "against a bottleneck adapter of the same size",
        "larger_bottleneck": "against one ten times larger",
    }
    phrase = {"better": "tiny attention better", "worse": "tiny attention worse"}
    lines = [
        f"- {labels[name]}: {phrase.get(result[name], result[name])} ({_evidence(rows[name])})"
        for name in C3_TESTS
    ]
    same_size = (result["no_context"], result["same_size_bottleneck"])
    head = "" if complete else PROVISIONAL + " "
    if "worse" in same_size:
        head += (
            "**C3 does not hold on MiniLM-L6**: at the same number of parameters, a variant without "
            "attention over the context does better."
        )
    elif same_size == ("better", "better"):
        head += (
            "**C3 holds on MiniLM-L6.**"
            if result["larger_bottleneck"] != "worse"
            else "**C3 holds only in its weak form on MiniLM-L6**: context beats the same number of "
            "parameters, but not ten times as many."
        )
    else:
        head += "**C3 is not established on MiniLM-L6**: the same-size comparisons are not all resolved."
        if "better" not in same_size:
            head += (
                " Nothing here shows context helping: tiny attention is not resolvably better than "
                "either variant of its own size"
            )
            head += (
                ", while ten times the parameters are resolvably better."
                if result["larger_bottleneck"] == "worse"
                else "."
            )
    return head + "\n\n" + "\n".join(lines)


def standing(table: pd.DataFrame) -> str:
    """Where tiny attention wins and fails, task by task, in one sentence: every task at its best and
    at its worst rank, and its widest gap to the best method.

    ``table``: ``tinyattn.analysis.aggregate.task_standing`` indexed by task (``rank``, ``methods``, ``best``,
    ``gap_to_best``).
    """
    if table.empty:
        return "No task has a finished run of the reference yet."
    if (table["rank"] == 1).all():
        return "Tiny attention is the best method on every task."
    first = ", ".join(table.index[table["rank"] == 1])
    top, low = table["rank"].min(), table["rank"].max()
    widest = table.loc[table["gap_to_best"].idxmax()]
    return (
        (f"Tiny attention is the best method on {first}. " if first else "")
        + f"Its rank runs from {top} ({', '.join(table.index[table['rank'] == top])}) to "
        + f"{low} ({', '.join(table.index[table['rank'] == low])}) of up to "
        + f"{table['methods'].max()} methods; its largest gap to the best method is "
        + f"{widest['gap_to_best']:.1f} points, behind {widest['best']} on {widest.name}."
    )


# Efficiency targets. A benchmark gives each ratio between two methods as the median and quartiles of
# its per-round ratios (``tinyattn.study.bench``), e.g. ``{"median": 1.02, "q1": 1.0, "q3": 1.04}``.


def ratio_target(ratio: Mapping, target: float) -> str:
    """A target on a measured ratio (at most ``target`` times the other method), met or missed only
    where the quartiles of the per-round ratio lie on one side of it."""
    if ratio["q3"] <= target:
        return "is met"
    if ratio["q1"] > target:
        return "is missed"
    return "cannot be resolved by this measurement (the quartiles of the ratio straddle it)"


def memory_target(tiny_attention: list[float], lora: float) -> str:
    """The memory target: every tiny-attention configuration needs no more than LoRA (MB)."""
    return "is met" if max(tiny_attention) <= lora else "is missed"


def within_spread(a: Mapping, b: Mapping) -> str:
    """Whether two measured ratios differ by more than their spread: ``"within"`` where their
    inter-quartile ranges overlap, else ``"beyond"``."""
    return "within" if a["q1"] <= b["q3"] and b["q1"] <= a["q3"] else "beyond"


def ranges_apart(before: pd.Series, after: pd.Series) -> str:
    """Whether a change is resolved across processes (one measured value each): every ``after``
    value below every ``before`` value, or ranges that overlap."""
    if after.max() < before.min():
        return "ranges that do not overlap"
    return "ranges that overlap: the process-to-process spread is larger than the change"
