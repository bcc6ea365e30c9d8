"""How the chapters show the confirmatory round (``confirm``): the sentence a claim's chapter opens
with, the intro's short status, how far the grid is, and the tables of a claim's family (C2 in its
parts, C3's comparisons), with what another test would say beside each outcome. Nothing here reads
an outcome of a partial grid: every verdict comes through ``confirm.finished_claim``.
"""

from __future__ import annotations

import pandas as pd

from tinyattn.analysis.confirm import Comparison, Plan, claim_reading, finished_claim, supports


def decided_within_margin(outcome: str, within_margin: bool) -> bool:
    """A decided difference that also passed the equivalence test (an *equivalent* outcome says so
    already), which the chapters mark "within the margin"."""
    return bool(within_margin) and outcome != "equivalent"


def other_tests(row) -> str:
    """What the robustness tests would say where they differ from the rule's outcome (the sign
    test reads direction only), e.g. "the sign test would say behind"; empty when neither differs."""
    direction = row["outcome"] if row["outcome"] in ("ahead", "behind") else "undecided"
    said = []
    if row["sign_outcome"] != direction:
        said.append(f"the sign test would say {row['sign_outcome']}")
    if row["boot_outcome"] != row["outcome"]:
        said.append(f"the bootstrap would say {row['boot_outcome']}")
    return " and ".join(said)


def progress(done: int, planned: int) -> str:
    """How far the round's grid is, in words: "all 325 of its runs are done", or "300 of its 325 runs
    are done"."""
    if done >= planned:
        return f"all {planned} of its runs are done"
    return f"{done} of its {planned} runs are done"


def design_words(plan: Plan, claim: str) -> str:
    """The effect a claim's comparisons were planned to decide, in words: "1 point with 80 % power"."""
    sizes = sorted({c.decides for c in plan.family(claim)})
    unit = "point" if sizes == [1.0] else "points"
    return f"{' or '.join(f'{d:g}' for d in sizes)} {unit} with {plan.power * 100:.0f} % power"


def opening(plan: Plan, claim: str, runs: pd.DataFrame, done: int, planned: int) -> str:
    """The sentence a claim's chapter opens with: its confirmatory verdict once every one of the
    grid's ``planned`` runs is done, else only how far the grid is (no outcome of a partial grid)."""
    table = finished_claim(plan, claim, runs, done, planned)
    if table is None:
        return (
            f"The confirmatory round decides {claim}: {done} of its {planned} runs are done, and "
            "its verdict is read, and shown here, once every run has finished."
        )
    parts = []
    for _, r in table.iterrows():
        note = " within the margin" * decided_within_margin(r["outcome"], r["within_margin"])
        others = other_tests(r)
        parts.append(
            f"`{r['comparison']}` {r['outcome']}{note} ({r['estimate']:+.2f} points, 95 % interval "
            f"{r['ci_low']:+.2f} to {r['ci_high']:+.2f}, over {r['pairs']} pairs"
            + (f"; {others}" if others else "")
            + ")"
        )
    reading = claim_reading(plan, claim, table)
    return f"In the confirmatory round, {claim} **{reading}**: " + "; ".join(parts) + "."


def claim_status(plan: Plan, claim: str, runs: pd.DataFrame, done: int, planned: int) -> str:
    """The intro's short form of ``opening``, in plain text: the claim's confirmatory reading once
    every one of the grid's ``planned`` runs is done, else how far the grid is (no outcome yet)."""
    table = finished_claim(plan, claim, runs, done, planned)
    if table is None:
        return f"the confirmatory round decides it once its {planned} runs are done, {done} so far"
    pairs = int(table["pairs"].min()) if len(table) else 0
    outcomes = ", ".join(f"{r.comparison} {r.outcome}" for r in table.itertuples())
    reading = claim_reading(plan, claim, table)
    return f"{reading} in the confirmatory round, on {pairs} pairs: {outcomes}"


#: The tables' estimate column: the estimate, its 95 % interval and the difference test's Holm p.
ESTIMATE = "estimate [95 % interval]; Holm p"

#: C2's parts, as the chapter names them (the plan's comparison names).
PARTS = {
    "averaging": "averaging cost: the average − as trained",
    "experts": "the experts − one expert",
    "experts_vs_compute": "the experts − one expert trained as long",
}


def parts_table(plan: Plan, forms: dict[str, tuple[str, pd.DataFrame | None]]) -> pd.DataFrame:
    """C2 in its parts (rows) for each form (``forms``: form -> (where its numbers come from, its
    ``mean_form_verdicts``-style table, or None while they wait)): estimate with its interval, the
    rule's outcome, whether another test would differ, and what it says of the paper's prediction."""
    rows = []
    indexed = {
        form: None if t is None else t.set_index("comparison") for form, (_, t) in forms.items()
    }
    for comparison in plan.family("C2"):
        for form, (source, table) in forms.items():
            found = indexed[form]
            r = (
                None
                if found is None or comparison.name not in found.index
                else found.loc[comparison.name]
            )
            row = {
                "part": PARTS.get(comparison.name, comparison.name),
                "form": form,
                "from": (None if r is None else r.get("source")) or source,
            }
            if r is None:
                why = "not trained there" if table is not None else "read once the grid is done"
                rows.append(row | {"pairs": "", ESTIMATE: "", "outcome": why})
                continue
            rows.append(row | _cells(comparison, r))
    return pd.DataFrame(rows).fillna("")


def _cells(comparison: Comparison, r) -> dict:
    """One comparison's verdict row (``family_verdicts``), as a table shows it."""
    return {
        "pairs": int(r["pairs"]),
        ESTIMATE: (
            f"{r['estimate']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]; "
            f"Holm p {r['holm_p_diff']:.3f}"
        ),
        "outcome": r["outcome"]
        + " (within the margin)" * decided_within_margin(r["outcome"], r["within_margin"]),
        "another test differs": other_tests(r) or "no",
        "reading": r.get("reading", supports(comparison, r)),
    }


def family_table(plan: Plan, claim: str, table: pd.DataFrame) -> pd.DataFrame:
    """A claim's family (``verdicts``) as a chapter shows it, one row per declared comparison (named
    with its sides, treatment − control): the estimate with its interval and the difference test's
    Holm p, the outcome, what another test would say, and what it says of the paper."""
    found = table.set_index("comparison")
    rows = [
        {"comparison": f"{c.name}: {_sides(c)}"} | _cells(c, found.loc[c.name])
        for c in plan.family(claim)
        if c.name in found.index
    ]
    return pd.DataFrame(rows).set_index("comparison")


def _sides(c: Comparison) -> str:
    if c.within_runs:  # two scores of the same runs
        return f"{c.treatment}, {c.treatment_score} − {c.control_score}"
    return f"{c.treatment} − {c.control}"
