"""What the budget chapter shows of the budget study (``tinyattn.analysis.budget``): its tables and sentences.

``budget_labels`` names the two budgets by their epochs; ``score_table`` and ``comparison_table`` are
the chapter's tables; ``change_sentence`` (glued in the GLUE chapter too) and ``headline`` its sentences.
"""

from __future__ import annotations

import pandas as pd

from tinyattn.analysis import stats
from tinyattn.analysis.budget import BUDGETS, SHORT, BudgetStudy, verdict_change
from tinyattn.analysis.decidability import pairs_needed, sign_floor


def _epochs(values) -> str:
    """``"10"`` or ``"2-3"``: the distinct epoch counts of a budget."""
    found = sorted({int(v) for v in values if pd.notna(v)})
    if not found:
        return "?"
    return f"{found[0]}" if len(found) == 1 else f"{found[0]}–{found[-1]}"


def budget_labels(study: BudgetStudy) -> dict[str, str]:
    """How the chapter's tables name the two budgets: their epochs, e.g. ``2–3 epochs``."""
    return {b: f"{_epochs(study.pairs[f'{b}_epochs'])} epochs" for b in BUDGETS}


def _score(value: float) -> str:
    return "…" if pd.isna(value) else f"{value:.1f}"


def score_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per task and method, one column per seed: "short → long" end-of-training score ("…" where a run
    has not finished), the epochs of each budget, and the mean change over the seeds done at both."""
    cells = pairs.assign(
        cell=[
            f"{_score(s)} → {_score(g)}" for s, g in zip(pairs["short_score"], pairs["long_score"])
        ]
    )
    table = cells.pivot(index=["task", "method"], columns="seed", values="cell")
    table.columns = [f"seed {s}" for s in table.columns]
    grouped = pairs.groupby(["task", "method"], sort=False)
    epochs = grouped.apply(
        lambda g: f"{_epochs(g['short_epochs'])} → {_epochs(g['long_epochs'])}",
        include_groups=False,
    )
    change = grouped["change"].agg(["mean", "count", "size"])
    table.insert(0, "epochs", epochs)
    table["mean change"] = change.apply(
        lambda c: (
            "…" if c["count"] == 0 else f"{c['mean']:+.1f} ({int(c['count'])} of {int(c['size'])})"
        ),
        axis=1,
    )
    order = list(dict.fromkeys(zip(pairs["task"], pairs["method"])))
    return table.loc[order].rename_axis(index=["task", "method"], columns=None)


def comparison_table(comparison: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The declared comparison at both budgets, for reading: per method and budget the pairs, the mean
    difference with its 95 % interval in parentheses, pairs won-lost, sign-test and Holm p, and the
    outcome."""

    def difference(row) -> str:
        if pd.isna(row["mean_difference"]):
            return "—"
        if pd.isna(row["ci_low"]):
            return f"{row['mean_difference']:+.2f}"
        return f"{row['mean_difference']:+.2f} ({row['ci_low']:+.2f}, {row['ci_high']:+.2f})"

    holm = comparison["holm_p"].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}")
    table = pd.DataFrame(
        {
            "method": comparison["method"],
            "budget": comparison["budget"].map(labels),
            "pairs": comparison["pairs"].astype(int),
            "difference": comparison.apply(difference, axis=1),
            "won–lost": [f"{w}–{lo}" for w, lo in zip(comparison["wins"], comparison["losses"])],
            "sign p / Holm": [f"{p:.3f} / {h}" for p, h in zip(comparison["sign_p"], holm)],
            "outcome": comparison["outcome"],
        }
    )
    order = {m: i for i, m in enumerate(dict.fromkeys(comparison["method"]))}
    table = table.sort_values("method", key=lambda s: s.map(order), kind="stable")
    return table.set_index(["method", "budget"])


def _biggest_move(comparison: pd.DataFrame) -> pd.Series | None:
    """The method whose mean difference to tiny attention moved most between the budgets."""
    wide = comparison.pivot(index="method", columns="budget", values="mean_difference").dropna()
    if wide.empty:
        return None
    moved = (wide["long"] - wide["short"]).abs()
    method = moved.idxmax()
    long = comparison[(comparison["budget"] == "long") & (comparison["method"] == method)].iloc[0]
    return pd.Series({"method": method, "short": wide.loc[method, "short"], **long.to_dict()})


def _so_far(pairs: pd.DataFrame, long_phrase: str) -> str:
    """Before any comparison is complete: how far the longer budget moved the finished runs."""
    done = pairs.dropna(subset=["change"])
    if done.empty:
        return ""
    groups = [f"`{m}` on {t}" for t, m in dict.fromkeys(zip(done["task"], done["method"]))]
    mean = done["change"].mean()
    return (
        f"; so far {long_phrase} moved the end-of-training score of the {len(done)} finished "
        f"run(s) ({', '.join(groups)}) by {mean:+.1f} points on average (from "
        f"{done['change'].min():+.1f} to {done['change'].max():+.1f}), against the same seeds' "
        f"`{SHORT}` runs."
    )


def change_sentence(study: BudgetStudy) -> str:
    """For the GLUE chapter: per task, how the longer budget moved each method's end-of-training
    score (the mean over the seeds finished at both budgets), the reference first."""
    done = study.pairs.dropna(subset=["change"])
    if done.empty:
        return "No run of the longer budget has finished yet."
    long_phrase = f"{_epochs(study.pairs['long_epochs'])} epochs"
    order = [study.reference, *study.family]
    parts = []
    for task, group in done.groupby("task", sort=False):
        means = group.groupby("method")["change"].mean().reindex(order).dropna()
        seeds = group.groupby("method")["seed"].nunique()
        moves = ", ".join(
            f"`{m}` {v:+.1f} ({seeds[m]} seed{'s' if seeds[m] != 1 else ''})"
            for m, v in means.items()
        )
        parts.append(f"on {task}, {moves}")  # the task as the tables name it
    return (
        f"Measured with {long_phrase} instead of the `{study.short.profile['name']}` budget, the "
        "end-of-training score moved as follows (points, the mean over the seeds finished at both "
        "budgets): " + "; ".join(parts) + "."
    )


def decidable(study: BudgetStudy) -> bool:
    """Whether the finished grid could resolve a comparison under the declared rule at all (all
    pairs won must give a Holm p below the level): six pairs in a family of three cannot."""
    full = study.planned // (len(study.family) + 1)  # the pairs of a finished comparison
    return sign_floor(full, len(study.family))[1] < stats.ALPHA


def estimates(comparison: pd.DataFrame, budget: str) -> str:
    """Tiny attention minus each method at one budget, as estimates: the mean difference with its
    95 % interval and the pairs won, every method of the family in its order."""
    rows = comparison[(comparison["budget"] == budget) & (comparison["pairs"] > 0)]
    if rows.empty:
        return "no pair finished at both budgets yet"
    parts = []
    for row in rows.itertuples():
        interval = "" if pd.isna(row.ci_low) else f" ({row.ci_low:+.2f}, {row.ci_high:+.2f})"
        parts.append(
            f"`{row.method}` {row.mean_difference:+.2f}{interval}, {int(row.wins)} of "
            f"{int(row.pairs)} pairs won"
        )
    return "; ".join(parts)


def intro_phrase(study: BudgetStudy, comparison: pd.DataFrame) -> str:
    """What the intro's claims table says of the budget grid (plain text): no verdict where its design
    cannot reach one, and the estimates at the longer budget against its own reference."""
    long_phrase = f"{_epochs(study.pairs['long_epochs'])} epochs"
    rows = comparison[(comparison["budget"] == "long") & (comparison["pairs"] > 0)]
    gaps = ", ".join(f"{r.method} {r.mean_difference:+.1f}" for r in rows.itertuples())
    said = (
        "no verdict (its design cannot reach one)"
        if not decidable(study)
        else verdict_change(comparison)["long"]
    )
    measured = f"{gaps} points" if gaps else "no pair yet"
    return (
        f"{said}; tiny attention ({study.reference}) minus each method at {long_phrase}: {measured}"
    )


def headline(study: BudgetStudy, comparison: pd.DataFrame) -> str:
    """The chapter's first sentence: what the budget study says so far, with its strongest number and
    how many runs it rests on."""
    labels = budget_labels(study)
    long_phrase = f"{_epochs(study.pairs['long_epochs'])} epochs"
    done, planned = study.done, study.planned
    status = (
        f"With all {planned} runs done"
        if done == planned
        else f"With {done} of {planned} runs done"
    )
    move = _biggest_move(comparison)
    if move is None:
        return (
            f"{status}, the budget study cannot yet say whether {long_phrase} change C1: no "
            "comparison of tiny attention with another method is finished at both budgets yet"
            + (_so_far(study.pairs, long_phrase) or ".")
        )
    most = int(comparison["pairs"].max())
    if not decidable(study):
        full = study.planned // (len(study.family) + 1)
        family = len(study.family)
        return (
            f"{status}, the budget grid cannot decide C1 at either budget: a comparison has at most "
            f"{full} pairs, and under the declared rule even {full} of {full} won give a Holm p of "
            f"{sign_floor(full, family)[1]:.3f} ({pairs_needed(family)} pairs are the fewest that "
            f"can). What it measures, tiny attention minus each method on the pairs finished at both "
            f"budgets: at {labels['long']}, {estimates(comparison, 'long')}; at the "
            f"`{study.short.profile['name']}` budget ({labels['short']}), "
            f"{estimates(comparison, 'short')}."
        )
    gap = (
        f"; the largest move is tiny attention's gap to `{move['method']}`, from "
        f"{move['short']:+.2f} to {move['mean_difference']:+.2f} points, tiny attention winning "
        f"{int(move['wins'])} of {int(move['pairs'])} pairs at {long_phrase}."
    )
    change = verdict_change(comparison)
    if change["short"] == change["long"] == "no verdict":
        return (
            f"{status}, the budget study cannot yet say whether {long_phrase} change C1: no "
            f"comparison has more than {most} pair finished at both budgets" + gap
        )
    if change["changed"]:
        said = (
            f"C1's verdict goes from *{change['short']}* at the `{study.short.profile['name']}` "
            f"budget ({labels['short']}) to *{change['long']}* at {labels['long']}"
        )
    else:
        said = f"C1's verdict is *{change['long']}* at both budgets"
    family = int((comparison["budget"] == "long").sum())
    limit = ""
    if sign_floor(most, family)[1] >= stats.ALPHA:
        limit = (
            f" (no comparison of {most} pairs can be resolved yet; it needs {pairs_needed(family)})"
        )
    provisional = "" if done == planned else ", provisionally"
    return f"{status}{provisional}, {said}{limit}" + gap
