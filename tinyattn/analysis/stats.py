"""The study's declared statistics: paired differences, their intervals, a rank-based check, Holm's
correction, and the policy for collapsed runs.

Everything here is fixed before it is applied (see the book's protocol, "The declared analysis"):

- **Pairs.** Two methods are compared on the (task, seed) pairs both finished: the reference's score
  minus the other's, in points. The pooled difference is the mean over all pairs, with a 95 %
  percentile bootstrap interval (pairs resampled with replacement).
- **Per task.** The same difference within each task, over its seeds, with a 95 % *t* interval (three
  seeds give a bootstrap only a handful of distinct means; the *t* interval is the honest, wide one).
- **Rank-based check.** A two-sided exact sign test over the pooled pairs (ties dropped). It uses only
  which method won each pair, so it is not moved by one collapsed run and does not mix the scales of
  MCC, Pearson and accuracy.
- **Multiple comparisons.** Holm's step-down correction over each claim's family of comparisons.
- **Resolved.** A comparison is resolved when its bootstrap interval excludes zero *and* its
  Holm-adjusted sign-test p-value is below ``ALPHA``.
- **Collapsed runs.** By behaviour, where a record says what its run predicted (records made from
  December 2026 on): at least ``COLLAPSE_SHARE`` of its dev predictions in one class, or (STS-B)
  predicted scores whose spread is below ``COLLAPSE_STD``: it answers the same whatever the input.
  Where the record does not say (every earlier record), by its score as before: it ends within
  ``COLLAPSE_MARGIN`` points of its task's majority-class score, or below the lowest seed of the linear
  probe (``PROBE``: the head alone on the frozen backbone) on its task: it learned (next to) nothing,
  or less than nothing added to the encoder. These are the book's two existing diagnostics ("Runs that learned nothing", "below the
  probe"). Every comparison is shown with all pairs and without the pairs in which either of its two
  runs collapsed; a (task, method) cell whose seeds are partly collapsed is bimodal and is summarised
  by its median, not by mean ± std.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

#: The level of every test and interval: 95 % intervals, p below 0.05 after Holm.
ALPHA = 0.05
#: A run ending at most this many points above its task's majority-class score has collapsed.
COLLAPSE_MARGIN = 1.0
#: The linear probe: a run ending below this method's lowest seed on its task has collapsed.
PROBE = "head_only"
#: Collapse by behaviour: at least this share of the dev predictions in one class ...
COLLAPSE_SHARE = 0.95
#: ... or, for a regression task (STS-B, scored 0-5), predicted scores with a spread below this.
COLLAPSE_STD = 0.1


def pair_differences(
    runs: pd.DataFrame,
    reference: str,
    score: str = "score",
    *,
    exclude: pd.Series | None = None,
) -> pd.DataFrame:
    """Long table of paired differences: task, seed, method, difference (reference minus method),
    one row per (task, seed) that both the reference and the method finished. ``exclude`` (booleans
    aligned with ``runs``, e.g. ``collapsed(...)``) drops each pair in which either run is flagged."""
    scores = runs.pivot_table(index=["task", "seed"], columns="method", values=score)
    if reference not in scores.columns:
        raise ValueError(f"no finished run of the reference method {reference!r}")
    others = [m for m in dict.fromkeys(runs["method"]) if m != reference]
    diffs = scores[others].rsub(scores[reference], axis=0)
    if exclude is not None:
        flags = runs.assign(_flag=exclude.astype(float)).pivot_table(
            index=["task", "seed"], columns="method", values="_flag"
        )
        flags = flags.reindex(index=diffs.index, columns=scores.columns).fillna(0.0)
        diffs = diffs.mask(flags[others].gt(0) | flags[[reference]].to_numpy().astype(bool))
    table = diffs.stack().dropna().rename("difference").reset_index()
    table.columns = ["task", "seed", "method", "difference"]
    return table


def bootstrap_interval(
    values: Sequence[float],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 1 - ALPHA,
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean, 95 % unless ``confidence`` says otherwise
    (NaN with fewer than two values; the value itself when all are equal)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    ci = sps.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    ).confidence_interval
    return float(ci.low), float(ci.high)


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95 % Student-t interval of the mean (NaN with fewer than two values)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    mean, sem = values.mean(), values.std(ddof=1) / np.sqrt(len(values))
    half = sps.t.ppf(1 - ALPHA / 2, len(values) - 1) * sem
    return float(mean - half), float(mean + half)


def sign_test(values: Sequence[float]) -> dict:
    """Two-sided exact sign test of "neither side wins more often": wins (> 0), losses (< 0), ties
    (dropped) and the p-value (1.0 when every pair is a tie)."""
    values = np.asarray(values, dtype=float)
    wins, losses = int((values > 0).sum()), int((values < 0).sum())
    ties = len(values) - wins - losses
    p = sps.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return {"wins": wins, "losses": losses, "ties": ties, "sign_p": float(p)}


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order (NaN stays NaN and does not count)."""
    p = np.asarray(list(pvalues), dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m, running = len(valid), 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def outcome(row) -> str:
    """``better`` / ``worse`` (resolved for / against the reference), ``not resolved`` or ``too few
    pairs`` under the declared rule: the interval excludes zero and Holm's p is below ``ALPHA``."""
    if pd.isna(row["ci_low"]) or pd.isna(row["ci_high"]):
        return "too few pairs"
    significant = row["holm_p"] < ALPHA
    if significant and row["ci_low"] > 0:
        return "better"
    if significant and row["ci_high"] < 0:
        return "worse"
    return "not resolved"


def within_family(comparison: pd.DataFrame, family: Sequence[str]) -> pd.DataFrame:
    """The rows of a pooled comparison (one per method, with ``sign_p``, ``ci_low`` and ``ci_high``)
    that belong to a claim's ``family``, in the family's order, with Holm's p recomputed over that
    family alone and the declared ``outcome``. Methods of the family without a row are left out."""
    table = comparison.reset_index() if "method" not in comparison.columns else comparison
    table = table.set_index("method")
    present = [m for m in family if m in table.index]
    table = table.loc[present].reset_index()
    if table.empty:
        return table.assign(holm_p=pd.Series(dtype=float), outcome=pd.Series(dtype=str))
    table["holm_p"] = holm(table["sign_p"])
    table["outcome"] = [outcome(row) for _, row in table.iterrows()]
    return table


def pooled_comparison(
    runs: pd.DataFrame,
    reference: str,
    family: Sequence[str] | None = None,
    score: str = "score",
    *,
    exclude: pd.Series | None = None,
    resamples: int = 10_000,
    confidence: float = 1 - ALPHA,
    seed: int = 0,
) -> pd.DataFrame:
    """The reference minus each method of ``family`` (default: every other method of ``runs``, in
    order of appearance), paired on (task, seed) and pooled: the number of pairs both finished, the
    mean and median difference, a percentile bootstrap interval of the mean (pairs resampled with
    replacement), the share of pairs the reference wins and the exact sign test (``wins``,
    ``losses``, ``ties``, ``sign_p``). ``exclude``: as in ``pair_differences``."""
    diffs = pair_differences(runs, reference, score, exclude=exclude)
    if family is None:
        family = [m for m in dict.fromkeys(runs["method"]) if m != reference]
    return _pool(diffs, family, resamples=resamples, confidence=confidence, seed=seed)


def _pool(
    diffs: pd.DataFrame,
    family: Sequence[str],
    *,
    resamples: int = 10_000,
    confidence: float = 1 - ALPHA,
    seed: int = 0,
) -> pd.DataFrame:
    """``pooled_comparison``'s rows from the paired differences (``pair_differences``)."""
    rows = []
    for method in family:
        values = diffs.loc[diffs["method"] == method, "difference"].to_numpy()
        low, high = bootstrap_interval(
            values, resamples=resamples, seed=seed, confidence=confidence
        )
        some = len(values) > 0
        rows.append(
            {
                "method": method,
                "pairs": len(values),
                "mean_difference": float(values.mean()) if some else float("nan"),
                "median_difference": float(np.median(values)) if some else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "reference_wins": float((values > 0).mean()) if some else float("nan"),
                **sign_test(values),
            }
        )
    return pd.DataFrame(rows)


def declared_comparison(
    runs: pd.DataFrame,
    reference: str,
    family: Sequence[str] | None = None,
    score: str = "score",
    *,
    exclude: pd.Series | None = None,
) -> pd.DataFrame:
    """``pooled_comparison`` over ``family`` (default: every method with a pair), with Holm's p over
    the family and the declared outcome (``within_family``)."""
    diffs = pair_differences(runs, reference, score, exclude=exclude)
    if family is None:
        family = list(dict.fromkeys(diffs["method"]))
    table = _pool(diffs, family)
    if table.empty:
        return table
    return within_family(table, family)


def per_task_differences(
    runs: pd.DataFrame, reference: str, score: str = "score", *, exclude: pd.Series | None = None
) -> pd.DataFrame:
    """Within each task: the reference minus each method over the seeds both finished, with the mean,
    a 95 % t interval and the number of seeds the reference wins."""
    diffs = pair_differences(runs, reference, score, exclude=exclude)
    rows = []
    for (task, method), group in diffs.groupby(["task", "method"], sort=False):
        values = group["difference"].to_numpy()
        low, high = t_interval(values)
        rows.append(
            {
                "task": task,
                "method": method,
                "seeds": len(values),
                "mean_difference": float(values.mean()),
                "ci_low": low,
                "ci_high": high,
                "reference_wins": int((values > 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def collapsed(
    runs: pd.DataFrame, majority: dict[str, float], score: str = "final_score"
) -> pd.Series:
    """Per run (aligned with ``runs``): whether it collapsed. By behaviour where the run's row says
    what it predicted (``<best|final>_top_share``, ``<best|final>_prediction_std`` from
    ``rows``): at least ``COLLAPSE_SHARE`` of its predictions in one class, or a spread of predicted
    scores below ``COLLAPSE_STD``. Else by score: it ended within ``COLLAPSE_MARGIN`` points of its
    task's majority-class score (``majority``: task -> points; a task without one is not judged by it)
    or below the lowest seed of the probe (``PROBE``) on its task."""
    floor = runs["task"].map(majority)
    near_majority = (runs[score] <= floor + COLLAPSE_MARGIN).fillna(False)
    probe_min = runs[runs["method"] == PROBE].groupby("task")[score].min()
    below_probe = (runs["method"] != PROBE) & (runs[score] < runs["task"].map(probe_min)).fillna(
        False
    )
    by_score = near_majority | below_probe
    which = "final" if score.startswith("final") else "best"
    nan = pd.Series(np.nan, index=runs.index)
    share = runs.get(f"{which}_top_share", nan)
    spread = runs.get(f"{which}_prediction_std", nan)
    said = share.notna() | spread.notna()
    by_behaviour = (share >= COLLAPSE_SHARE) | (spread < COLLAPSE_STD)
    return by_score.where(~said, by_behaviour).astype(bool)


def cell_summary(
    runs: pd.DataFrame, majority: dict[str, float], score: str = "final_score"
) -> pd.DataFrame:
    """Per (task, method): mean, std, median, seeds, collapsed seeds, and ``bimodal`` (some but not
    all seeds collapsed): such a cell is summarised by its median, not by mean ± std."""
    flagged = runs.assign(_collapsed=collapsed(runs, majority, score))
    table = flagged.groupby(["task", "method"], sort=False).agg(
        mean=(score, "mean"),
        std=(score, "std"),
        median=(score, "median"),
        seeds=(score, "size"),
        collapsed=("_collapsed", "sum"),
    )
    table["bimodal"] = (table["collapsed"] > 0) & (table["collapsed"] < table["seeds"])
    return table.reset_index()
