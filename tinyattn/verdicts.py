"""Every rule that turns measurements into a verdict the book states, and the verdict's sentence.

The paper's claims C1, C2 and C3 are judged on paired comparisons; the efficiency targets on a
benchmark's per-round ratios. Each rule is written once here and tested on every outcome it can give,
so that the book's chapters only display what it returns. Every comparison is a ``paired_comparison``
table (``tinyattn.aggregate``): the reference minus each other method, paired on (task, seed), with a
95 % bootstrap interval. A difference counts as resolved only when its interval excludes zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pandas as pd

#: Averaging the experts "keeps" their accuracy when the whole 95 % interval of the loss (trained form
#: minus averaged, in points) lies below this margin: a loss of under half a point, resolved as such.
KEEP_MARGIN = 0.5

PROVISIONAL = "**Provisional** (on the runs finished so far; the grid is not complete):"


def headline(verdict: str) -> str:
    """A verdict's gist for a summary table: its first bold phrase, marked provisional when it is."""
    provisional = verdict.startswith(PROVISIONAL)
    body = verdict.removeprefix(PROVISIONAL)
    match = re.search(r"\*\*(.+?)\*\*", body)
    gist = (match.group(1) if match else body.strip().splitlines()[0]).rstrip(".")
    return f"provisional: {gist}" if provisional else gist


def outcome(row: Mapping) -> str:
    """The reference against one method: ``"better"``, ``"worse"``, ``"not resolved"`` or, with fewer
    than two pairs, ``"too few pairs"``."""
    if pd.isna(row["ci_low"]) or pd.isna(row["ci_high"]):
        return "too few pairs"
    if row["ci_low"] > 0:
        return "better"
    if row["ci_high"] < 0:
        return "worse"
    return "not resolved"


def _names(methods) -> str:
    return ", ".join(f"`{m}`" for m in methods) or "none"


def _interval(row: Mapping) -> str:
    if pd.isna(row["ci_low"]):
        return f"{row['mean_difference']:+.2f} points, {int(row['pairs'])} pair(s)"
    return (
        f"{row['mean_difference']:+.2f} points, 95 % interval {row['ci_low']:+.2f} to "
        f"{row['ci_high']:+.2f}"
    )


def _row(comparison: pd.DataFrame, method: str) -> Mapping | None:
    table = comparison.set_index("method") if "method" in comparison.columns else comparison
    return table.loc[method] if method in table.index else None


def c1(comparison: pd.DataFrame, reference: str, complete: bool) -> str:
    """C1, tiny attention beats every other method: it must be resolvably better than each of them."""
    table = comparison.set_index("method") if "method" in comparison.columns else comparison
    if table.empty:
        return f"**No verdict yet.** No finished run of `{reference}` has a pair to compare."
    groups: dict[str, list[str]] = {}
    for method, row in table.iterrows():
        groups.setdefault(outcome(row), []).append(method)
    better, worse = groups.get("better", []), groups.get("worse", [])
    unresolved = groups.get("not resolved", []) + groups.get("too few pairs", [])
    lines = [
        f"- tiny attention (`{reference}`) is better, with the interval excluding zero, than: "
        + _names(better),
        "- worse than: " + _names(worse),
        "- not resolved by these seeds and tasks: " + _names(unresolved),
    ]
    head = "" if complete else PROVISIONAL + " "
    if worse:
        head += "**C1 does not hold on MiniLM-L6**: some methods beat tiny attention."
    elif unresolved:
        head += (
            "**C1 is not established on MiniLM-L6**: no method beats tiny attention, but not all "
            "differences are resolved."
        )
    else:
        head += "**C1 holds on MiniLM-L6**: tiny attention beats every other method."
    return head + "\n" + "\n".join(lines)


def averaging(deployment: Mapping) -> str:
    """The trained form minus the weight-averaged experts (one row of a paired comparison):
    ``"keeps"`` (the loss is resolvably under ``KEEP_MARGIN``), ``"loses"`` (a resolved loss that may
    reach the margin) or ``"not resolved"``."""
    if pd.isna(deployment["ci_high"]):
        return "not resolved"
    if deployment["ci_high"] < KEEP_MARGIN:
        return "keeps"
    if deployment["ci_low"] > 0:
        return "loses"
    return "not resolved"


def c2(
    experts: pd.DataFrame,
    deployment: pd.DataFrame,
    complete: bool,
    *,
    speed: float | None = None,
    independent: pd.DataFrame | None = None,
) -> str:
    """C2, heads as experts: weight averaging keeps the experts' accuracy, and the experts help.

    ``experts``: four averaged experts (the reference) minus one expert (``tinyattn_e1``) and minus one
    expert trained as long (``tinyattn_e1_2x``); ``deployment``: the trained form (reference) minus
    each deployment, with a row ``"averaged"``, over the analysed runs; ``speed``: how many times as
    fast the averaged model serves; ``independent``: the same deployment comparison for independently
    initialised experts.
    """
    row = _row(deployment, "averaged")
    if row is None:
        return "**No verdict yet.** No analysed run compares the deployments."
    if experts.empty:
        return "**No verdict yet.** No finished run of four experts to compare with one."
    independent = None if independent is None else _row(independent, "averaged")
    kept = averaging(row)
    e1, e1_2x = _row(experts, "tinyattn_e1"), _row(experts, "tinyattn_e1_2x")
    lines = [
        "- the experts as trained minus their weight average: "
        + _interval(row)
        + (f"; the average serves {speed:.2f}x as fast" if speed else "")
    ]
    if e1 is not None:
        lines.append(f"- four averaged experts minus one expert: {_interval(e1)}")
    if e1_2x is not None:
        lines.append(f"- minus one expert trained as long (the same compute): {_interval(e1_2x)}")
    if independent is not None:
        lines.append(
            "- independently initialised experts, as trained minus averaged: "
            + _interval(independent)
        )
    helps = e1 is not None and outcome(e1) == "better"
    helps = helps and (e1_2x is None or outcome(e1_2x) == "better")  # not only through compute
    head = "" if complete else PROVISIONAL + " "
    if kept == "loses":
        head += "**C2 does not hold on MiniLM-L6**: averaging the experts' weights loses accuracy."
    elif kept == "not resolved":
        head += (
            "**C2 is not established on MiniLM-L6**: these runs do not resolve whether averaging "
            "keeps the experts' accuracy."
        )
    elif helps:
        head += (
            "**C2 holds on MiniLM-L6**: averaging keeps the experts' accuracy and the experts help."
        )
    else:
        head += (
            "**C2 holds only in part on MiniLM-L6**: averaging keeps the accuracy, but the experts "
            "do not resolvably beat one expert given the same training compute."
        )
    return head + "\n\n" + "\n".join(lines)


C3_TESTS = ("tinyattn_self", "bottleneck_matched", "bottleneck_10x")


def c3(comparison: pd.DataFrame, complete: bool) -> str:
    """C3, contexts matter more than parameters: tiny attention (``tinyattn_e1``) against the same
    adapter without context, a bottleneck adapter of its size, and one ten times larger.

    It holds if tiny attention resolvably beats both same-size variants and is not beaten by the larger
    one; it fails if either same-size variant beats it (context, or attention itself, then costs
    accuracy at equal parameters); it holds in a weak form if it beats the same-size variants but the
    larger adapter beats it.
    """
    rows = {m: _row(comparison, m) for m in C3_TESTS}
    missing = [m for m, row in rows.items() if row is None]
    if missing:
        return f"**No verdict yet.** No finished pair for {_names(missing)}."
    result = {m: outcome(row) for m, row in rows.items()}
    labels = {
        "tinyattn_self": "against the same adapter without context (same parameters)",
        "bottleneck_matched": "against a bottleneck adapter of the same size",
        "bottleneck_10x": "against one ten times larger",
    }
    phrase = {"better": "tiny attention better", "worse": "tiny attention worse"}
    lines = [
        f"- {labels[m]}: {phrase.get(result[m], result[m])} ({_interval(rows[m])})"
        for m in C3_TESTS
    ]
    same_size = (result["tinyattn_self"], result["bottleneck_matched"])
    head = "" if complete else PROVISIONAL + " "
    if "worse" in same_size:
        head += (
            "**C3 does not hold on MiniLM-L6**: at the same number of parameters, a variant without "
            "attention over the context does better."
        )
    elif same_size == ("better", "better"):
        head += (
            "**C3 holds on MiniLM-L6.**"
            if result["bottleneck_10x"] != "worse"
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
                if result["bottleneck_10x"] == "worse"
                else "."
            )
    return head + "\n\n" + "\n".join(lines)


def standing(table: pd.DataFrame) -> str:
    """Where tiny attention wins and fails, task by task, in one sentence: every task at its best and
    at its worst rank, and its widest gap to the best method.

    ``table``: ``tinyattn.aggregate.task_standing`` indexed by task (``rank``, ``methods``, ``best``,
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
# its per-round ratios (``tinyattn.bench``), e.g. ``{"median": 1.02, "q1": 1.0, "q3": 1.04}``.


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
