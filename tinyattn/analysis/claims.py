"""The claim chapters' declared comparisons as the reader sees them: narrow tables, each chapter's
opening sentence (its verdict and strongest number), and what a change of rule changed.

The statistics are ``tinyattn.analysis.stats``'s, the rules ``tinyattn.analysis.verdicts``'s; this module only words
and shapes their results for ``book/glue.ipynb`` (C1) and ``book/heads.ipynb`` (C2).
"""

from __future__ import annotations

import pandas as pd

from tinyattn.analysis import stats, verdicts
from tinyattn.study.profiles import role

# --------------------------------------------------------------------------- any claim


def comparison_display(table: pd.DataFrame) -> pd.DataFrame:
    """A pooled comparison (``aggregate.paired_comparison``, or a claim's family with ``holm_p`` and
    ``outcome``) as the chapters show it, narrow enough for the page: per method the pairs, the mean
    difference with its 95 % interval, the median, pairs won and lost, the sign test's p (Holm's
    where the family gives it) and the outcome."""

    def interval(row) -> str:
        if pd.isna(row["ci_low"]):
            return f"{row['mean_difference']:+.2f}"
        return f"{row['mean_difference']:+.2f} ({row['ci_low']:+.2f}, {row['ci_high']:+.2f})"

    table = table.set_index("method") if "method" in table.columns else table
    shown = pd.DataFrame(index=table.index.rename(None))
    shown["pairs"] = table["pairs"].astype(int)
    shown["mean (95 % interval)"] = table.apply(interval, axis=1)
    shown["median"] = table["median_difference"].map(lambda v: f"{v:+.2f}")
    shown["won–lost"] = [f"{int(w)}–{int(lo)}" for w, lo in zip(table["wins"], table["losses"])]
    p = "holm_p" if "holm_p" in table.columns else "sign_p"
    shown["Holm p" if p == "holm_p" else "sign-test p"] = table[p].map(lambda v: f"{v:.3f}")
    if "outcome" in table.columns:
        shown["outcome"] = table["outcome"]
    return shown


def per_task_display(table: pd.DataFrame):
    """``aggregate.per_task_table`` as the chapters show it: in each cell the interval on a line below
    its mean, so that five tasks fit the text column (the book keeps a table's cell on one line)."""
    return table.style.format(lambda cell: cell.replace(" (", "<br>(", 1), na_rep="—")


def wrapped(table: pd.DataFrame):
    """A table of sentences as the chapters show it: its cells and labels wrap at spaces (the book
    keeps a table's cell on one line), left-aligned, so that it fits the text column."""
    wrap = [("white-space", "normal"), ("text-align", "left"), ("vertical-align", "top")]
    return table.style.set_table_styles(
        [{"selector": "td", "props": wrap}, {"selector": "th", "props": wrap}]
    )


# --------------------------------------------------------------------------- C1 (GLUE chapter)


def c1_opening(family: pd.DataFrame, headline: str, reference: str) -> str:
    """The GLUE chapter's first sentence: the C1 verdict's headline and its strongest number (the
    method furthest ahead of tiny attention among those resolvably ahead, or else the comparison
    nearest to being resolved against it). ``family``: ``verdicts.c1_family``."""
    if family.empty:
        return f"{headline}."
    worse = family[family["outcome"] == "worse"].sort_values("mean_difference")
    if worse.empty:
        top = family.sort_values("mean_difference").iloc[0]
        return (
            f"{headline}: no method is resolvably ahead of tiny attention (`{reference}`); the "
            f"closest is `{top['method']}`, {-top['mean_difference']:+.1f} points against it over "
            f"{int(top['pairs'])} (task, seed) pairs."
        )
    top = worse.iloc[0]
    decided = int(top["wins"] + top["losses"])
    return (
        f"{headline}: {len(worse)} of the {len(family)} other methods beat tiny attention "
        f"(`{reference}`) resolvably ({verdicts.code_list(worse['method'])}); `{top['method']}` by the most, "
        f"{-top['mean_difference']:.1f} points (95 % interval {-top['ci_high']:.1f} to "
        f"{-top['ci_low']:.1f}) over {int(top['pairs'])} (task, seed) pairs, ahead in "
        f"{int(top['losses'])} of {decided}."
    )


def interval_only(table: pd.DataFrame) -> pd.Series:
    """Per row of a pooled comparison, its outcome by the interval alone (the rule before the
    declared analysis): ``better``, ``worse`` or ``not resolved``."""
    return pd.Series(
        [
            "better" if low > 0 else "worse" if high < 0 else "not resolved"
            for low, high in zip(table["ci_low"], table["ci_high"])
        ],
        index=table.index,
    )


def c1_change(comparison: pd.DataFrame, family: pd.DataFrame, reference: str) -> str:
    """What the declared analysis changed in C1, as a sentence: the methods resolvably ahead of tiny
    attention by the interval alone over every row (the rule before; tiny attention's own E = 1
    included), against those resolvably ahead under the declared rule over C1's family."""
    table = comparison.set_index("method") if "method" in comparison.columns else comparison
    before = list(table.index[interval_only(table) == "worse"])
    now = list(family.loc[family["outcome"] == "worse", "method"])
    text = (
        f"By the interval alone, with every other row in the family (the rule before), "
        f"{verdicts.code_list(before)} were resolvably ahead of `{reference}`; under the declared rule, "
        f"{verdicts.code_list(now)}."
    )
    for method in [m for m in before if m not in now]:
        text += f" `{method}` no longer counts: " + (
            "it is a tiny-attention variant, judged under C2."
            if str(method).startswith(verdicts.TINY_ATTENTION)
            else "its sign test is not resolved after Holm's correction."
        )
    same = bool(before) == bool(now)
    return text + (" The verdict is unchanged." if same else " The verdict changes with the rule.")


def disagreements(family: pd.DataFrame) -> str:
    """The comparisons in which the mean and the rank-based check disagree (the interval on one side
    of zero and the sign test not resolved, or the reverse, or the mean and most pairs pointing
    opposite ways), as a sentence; empty when there is none. The declared rule needs both."""
    lines = []
    for _, row in family.iterrows():
        interval = not (row["ci_low"] <= 0 <= row["ci_high"])
        signed = row["holm_p"] < stats.ALPHA
        opposite = (row["mean_difference"] > 0) != (row["wins"] > row["losses"])
        if interval != signed or (opposite and row["wins"] != row["losses"]):
            decided = int(row["wins"] + row["losses"])
            lines.append(
                f"`{row['method']}`: mean {row['mean_difference']:+.2f} points (95 % interval "
                f"{row['ci_low']:+.2f} to {row['ci_high']:+.2f}), tiny attention ahead in "
                f"{int(row['wins'])} of {decided} pairs (Holm p = {row['holm_p']:.3f})"
            )
    return "; ".join(lines)


# --------------------------------------------------------------------------- C2 (heads chapter)


def combine_forms(ablations) -> dict[str, set[str]]:
    """The ablations' four-expert runs by how the experts were combined while training: ``"mean"``
    (role ``experts``, every C2 run before) and ``"sequential"`` (role ``sequential``, the authors'
    form), as run ids."""
    roles = {"mean": "experts", "sequential": "sequential"}
    labels = {form: role(ablations.profile, name) for form, name in roles.items()}
    return {
        form: {p.run_id for p in ablations.planned if p.label == label}
        for form, label in labels.items()
    }


def c2_opening(verdict: str, deployment: pd.DataFrame) -> str:
    """The heads chapter's sentence on the exploratory grids, after the confirmatory round's: the C2
    verdict's headline, labelled exploratory, and the averaging loss (the experts as trained minus
    their weight average) with its interval, against the keep margin."""
    head, where = verdicts.headline(verdict), "In the exploratory grids"
    if head.startswith("provisional: "):
        head, where = head.removeprefix("provisional: "), f"{where} (provisional)"
    gist = f"{where}, {head}"
    table = deployment.set_index("method") if "method" in deployment.columns else deployment
    if "averaged" not in table.index:
        return f"{gist}."
    row = table.loc["averaged"]
    return (
        f"{gist}: averaging the four experts' weights costs {row['mean_difference']:+.2f} points "
        f"(95 % interval {row['ci_low']:+.2f} to {row['ci_high']:+.2f}) against the experts as "
        f"trained, over {int(row['pairs'])} analysed runs; the rule keeps only a loss whose whole "
        f"interval lies under {verdicts.KEEP_MARGIN} points."
    )


def forms_sentence(losses: dict[str, pd.DataFrame], heads: dict[str, str]) -> str:
    """Whether the combination form changes C2: the averaging loss of each form (``losses``: form ->
    its deployment comparison) and C2's headline in each (``heads``), on the same tasks and seeds.
    The intervals' upper ends are given to four decimals, since the rule compares them with
    ``verdicts.KEEP_MARGIN``."""
    rows = {f: t.set_index("method").loc["averaged"] for f, t in losses.items() if not t.empty}
    if set(rows) != {"mean", "sequential"}:
        return "The sequential form has no analysed run yet; C2 is judged on the mean form alone."
    seq, mean = rows["sequential"], rows["mean"]
    gists = {form: verdicts.headline(heads[form]) for form in ("sequential", "mean")}
    text = (
        f"Averaging the authors' sequential experts costs {seq['mean_difference']:+.2f} points "
        f"(95 % interval {seq['ci_low']:+.2f} to {seq['ci_high']:+.4f}, {int(seq['pairs'])} runs); "
        f"the mean form's experts, on the same tasks and seeds, {mean['mean_difference']:+.2f} "
        f"({mean['ci_low']:+.2f} to {mean['ci_high']:+.4f}). Under the same rule, C2 in the "
        f"sequential form: **{gists['sequential']}**; in the mean form: **{gists['mean']}**. "
    )
    if gists["sequential"] == gists["mean"]:
        return text + "The combination form does not change C2's verdict."
    margin = verdicts.KEEP_MARGIN

    def side(row) -> str:
        gap = row["ci_high"] - margin
        return f"{abs(gap):.4f} {'over' if gap >= 0 else 'under'}"

    overlap = seq["ci_low"] <= mean["ci_high"] and mean["ci_low"] <= seq["ci_high"]
    text += (
        f"The combination form changes C2's verdict: the upper ends of the two intervals lie "
        f"{side(seq)} and {side(mean)} the {margin}-point margin"
    )
    return text + (
        ", and the intervals overlap, so the forms differ in verdict more than in what averaging "
        "is shown to cost."
        if overlap
        else "."
    )


def forms_rules_table(experts: dict[str, pd.DataFrame], losses: dict[str, pd.DataFrame],
                      heads: dict[str, str], roles: dict[str, str]) -> pd.DataFrame:  # fmt: skip
    """C2 under each of its rules (rows) in each combination form (columns), on the ablations' runs:
    ``experts`` and ``losses`` per form as ``verdicts.c2`` takes them, ``heads`` its verdicts,
    ``roles`` the ablations profile's."""
    forms = {}
    for form in heads:
        earlier = verdicts.c2_earlier_rules(experts[form], losses[form], roles=roles)
        forms[f"{form} form"] = {f"{name} rule": gist for name, gist in earlier.items()}
        forms[f"{form} form"]["current rule"] = verdicts.headline(heads[form])
    return pd.DataFrame(forms)


def c2_rules_table(earlier: dict[str, str], current: str) -> pd.DataFrame:
    """C2 under each rule it has had (columns), on the same records: when each was fixed (commit,
    date), what had been seen by then, and its verdict (rows; ``earlier``:
    ``verdicts.c2_earlier_rules``; ``current``: the verdict text of ``verdicts.c2``)."""
    rules = {
        f"{name} rule": {
            "fixed at": f"{rule['commit']} ({rule['date']})",
            "seen by then": rule["seen"],
            "verdict on these records": earlier[name],
        }
        for name, rule in verdicts.C2_RULES.items()
    }
    rules["interval rule, declared analysis (current)"] = {
        "fixed at": "ce60453, ef13b22 (2026-12-01 05:59 UTC)",
        "seen by then": "every run of both studies and every analysis of the mean form",
        "verdict on these records": verdicts.headline(current),
    }
    return pd.DataFrame(rules)


def c2_change(earlier: dict[str, str], current: str) -> str:
    """Whether C2's verdict moved with its rules, on the same records, as a sentence."""
    verdicts_by_rule = [*earlier.values(), verdicts.headline(current)]
    if len(set(verdicts_by_rule)) == 1:
        return f"All three rules give the same verdict on these records: **{verdicts_by_rule[0]}**."
    point, interval, now = verdicts_by_rule
    return (
        f"On these records the verdict moved with the rule: the point-estimate rule says "
        f"**{point}**, the interval rule **{interval}**, and the current rule **{now}**."
    )


def reference_collapsed(runs: pd.DataFrame, collapsed: pd.Series, reference: str) -> str:
    """Which of the collapsed runs (``stats.collapsed``, aligned with ``runs``) are the reference's
    own, by task and seed, and the tasks that leave every comparison without collapsed runs because
    all of the reference's seeds there collapsed."""
    ours = runs["method"] == reference
    own = runs[collapsed & ours]
    if own.empty:
        return f"None of them is tiny attention's own (`{reference}`)."
    seeds = runs[ours].groupby("task").size()
    gone = [t for t, n in own.groupby("task").size().items() if n == seeds[t]]
    where = "; ".join(
        f"{task} (seed {', '.join(map(str, group['seed']))})" for task, group in own.groupby("task")
    )
    text = f"{len(own)} of them are tiny attention's own (`{reference}`): {where}."
    if gone:
        text += (
            f" Without collapsed runs, {', '.join(gone)} therefore drops out of every comparison."
        )
    return text


def rederived_text(runs: pd.DataFrame, majority: dict[str, float]) -> str:
    """What the reruns of ``results/rederive/`` (``rows.load_records``'s ``behaviour_source``) changed
    in the collapse flags: how many runs were rerun, how many repeat their records, and how many
    flags the behaviour then gives that the score alone did not, or takes away."""
    source = runs.get("behaviour_source", pd.Series(index=runs.index, dtype=object))
    rerun = source.isin(["rerun", "rerun differs"])
    if not rerun.any():
        return "No run of this study has been rerun to learn what it predicted."
    repeated = source == "rerun"
    now = stats.collapsed(runs, majority)
    said = [f"{w}_{c}" for w in ("best", "final") for c in ("top_share", "prediction_std")]
    by_score = stats.collapsed(runs.drop(columns=[c for c in said if c in runs]), majority)
    cleared = int((repeated & by_score & ~now).sum())
    added = int((repeated & now & ~by_score).sum())
    kept = int((repeated & by_score & now).sum())
    text = (
        f"{int(rerun.sum())} runs were rerun with today's code to learn what they predicted "
        f"(`results/rederive/`), and {int(repeated.sum())} of them repeat their records within "
        "0.01 points, so they are judged by behaviour"
    )
    if repeated.sum() < rerun.sum():
        text += f" ({int(rerun.sum() - repeated.sum())} do not, and stay judged by score)"
    return text + (
        f". Of those, {kept} collapsed by both rules, {cleared} that the score flagged did not "
        f"collapse by behaviour, and {added} that the score left did."
    )
