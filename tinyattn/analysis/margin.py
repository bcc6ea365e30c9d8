"""The confirmatory rule: a paired comparison, blocked by task, that ends in one of four outcomes.

Declared before the runs it judges (``profiles/confirm.yaml``, its ``plan``; the book's "The
confirmatory plan"). A comparison is ``treatment - control`` in points on each (task, seed) pair:

- **Estimate.** The mean over tasks of each task's mean difference (every task weighs the same).
- **Spread.** Its standard error from the spreads within tasks, ``sqrt(sum_t s_t^2 / n_t) / T``, with
  Welch-Satterthwaite degrees of freedom (differences between tasks are not noise: blocking removes
  them).
- **Tests.** A two-sided *t* test of "no difference", and the two one-sided tests (TOST) of "the
  difference lies within ``±margin``".
- **Family.** Holm's correction over a claim's comparisons, for the difference tests and, separately,
  for the equivalence tests.
- **Outcome.** *ahead* or *behind* when the difference test's Holm p is below ``alpha`` (the side is the
  estimate's sign): the whole interval at that level lies on one side of 0. *Equivalent* when only the
  equivalence test's Holm p is below ``alpha``: the whole interval lies within ``±margin``. *Undecided*
  otherwise. ``within_margin`` says whether the equivalence test passed too (a decided difference
  smaller than the margin).

Robustness, reported beside each verdict and never replacing it: the exact sign test with Holm
(direction only), and a percentile bootstrap interval that resamples seeds within each task, at the
family's Bonferroni level (``alpha`` over the number of comparisons).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from tinyattn.analysis.stats import ALPHA, holm, sign_test

OUTCOMES = ("ahead", "behind", "equivalent", "undecided")


@dataclass(frozen=True)
class MarginRule:
    """The declared rule with an equivalence margin (points) and a level."""

    margin: float = 0.5
    alpha: float = ALPHA
    name: str = "task-blocked t, TOST margin"

    def pvalues(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, difference-test p, equivalence-test p) for pair differences shaped
        ``(..., tasks, seeds)`` (every task with the same number of seeds, two or more)."""
        n = d.shape[-1]
        est = d.mean(-1).mean(-1)
        v = d.var(-1, ddof=1) / n
        return (est, *_tests(est, v, np.full(v.shape, n - 1.0), self.margin))

    def outcomes(self, d: np.ndarray, family: int = 1) -> np.ndarray:
        """Outcome per simulated data set, each test at ``alpha / family`` (Holm's first, strictest
        step: what the design can decide however its family's other comparisons come out)."""
        est, p_diff, p_eq = self.pvalues(d)
        return _outcome(est, p_diff * family, p_eq * family, self.alpha)


@dataclass(frozen=True)
class SignRule:
    """The exploratory grids' declared rule (``stats.outcome``), through its sign-test half: a
    comparison is resolved only when the exact sign test's Holm p is below ``alpha``. The bootstrap
    half can only refuse more, so what this decides bounds what that rule can decide."""

    alpha: float = ALPHA
    name: str = "exact sign test (Holm)"

    def outcomes(self, d: np.ndarray, family: int = 1) -> np.ndarray:
        flat = d.reshape(*d.shape[:-2], -1)
        wins, losses = (flat > 0).sum(-1), (flat < 0).sum(-1)
        p = np.vectorize(_sign_p)(wins, losses) * family
        est = flat.mean(-1)
        return _outcome(est, p, np.ones_like(p), self.alpha)


def _sign_p(wins: int, losses: int) -> float:
    return sps.binomtest(int(wins), int(wins + losses), 0.5).pvalue if wins + losses else 1.0


def _tests(est, v, dof, margin):
    """Difference-test and equivalence-test p from the estimate and each task's variance of its mean
    ``v`` (shape ``(..., tasks)``) on ``dof`` degrees of freedom."""
    tasks = v.shape[-1]
    var = v.sum(-1) / tasks**2
    se = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = v.sum(-1) ** 2 / (v**2 / dof).sum(-1)
        df = np.where(np.isfinite(df), df, dof.sum(-1))
        t = est / se
        p_diff = np.where(se > 0, 2 * sps.t.sf(np.abs(t), df), np.where(est != 0, 0.0, 1.0))
        p_low = sps.t.sf((est + margin) / se, df)  # H0: difference <= -margin
        p_high = sps.t.cdf((est - margin) / se, df)  # H0: difference >= +margin
        p_eq = np.where(se > 0, np.maximum(p_low, p_high), np.where(abs(est) < margin, 0.0, 1.0))
    return p_diff, p_eq


def _outcome(est, p_diff, p_eq, alpha) -> np.ndarray:
    decided = p_diff < alpha
    return np.where(
        decided,
        np.where(est > 0, "ahead", "behind"),
        np.where(p_eq < alpha, "equivalent", "undecided"),
    )


def compare(diffs: pd.DataFrame, rule: MarginRule) -> dict:
    """One comparison under the rule, before Holm: ``diffs`` holds ``task``, ``seed``, ``difference``
    (pairs both runs finished; a task with fewer than two pairs is left out and counted)."""
    by_task = diffs.groupby("task", sort=False)["difference"]
    n = by_task.size()
    kept = n[n >= 2].index
    values = diffs[diffs["task"].isin(kept)]
    stats = values.groupby("task", sort=False)["difference"].agg(["mean", "var", "size"])
    row = {
        "pairs": int(len(diffs)),
        "tasks": int(len(kept)),
        "tasks_left_out": int(len(n) - len(kept)),
    }
    if stats.empty:
        return {
            **row,
            "estimate": np.nan,
            "p_diff": np.nan,
            "p_equiv": np.nan,
            "df": np.nan,
            "ci_low": np.nan,
            "ci_high": np.nan,
        }
    est = float(stats["mean"].mean())
    v = (stats["var"] / stats["size"]).to_numpy()
    dof = (stats["size"] - 1).to_numpy(dtype=float)
    p_diff, p_eq = _tests(np.float64(est), v, dof, rule.margin)
    se = float(np.sqrt(v.sum()) / len(v))
    df = float(v.sum() ** 2 / (v**2 / dof).sum()) if v.sum() > 0 else float(dof.sum())
    half = float(sps.t.ppf(1 - rule.alpha / 2, df)) * se
    return {
        **row,
        "estimate": est,
        "ci_low": est - half,
        "ci_high": est + half,
        "df": df,
        "p_diff": float(p_diff),
        "p_equiv": float(p_eq),
    }


def stratified_bootstrap(
    diffs: pd.DataFrame, *, resamples: int = 10_000, seed: int = 0, alpha: float = ALPHA
) -> tuple[float, float]:
    """Percentile interval of the task-blocked mean, resampling seeds within each task."""
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    groups = [g.to_numpy() for _, g in diffs.groupby("task", sort=False)["difference"]]
    for values in groups:
        picks = rng.integers(0, len(values), size=(resamples, len(values)))
        means += values[picks].mean(1)
    means /= len(groups)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def family_verdicts(comparisons: dict[str, pd.DataFrame], rule: MarginRule) -> pd.DataFrame:
    """Each comparison of one claim's family (name -> pair differences) under the rule, with Holm's
    correction over the family, the outcome, and what the sign test and the bootstrap would say."""
    rows = [{"comparison": name, **compare(d, rule)} for name, d in comparisons.items()]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["holm_p_diff"] = holm(table["p_diff"])
    table["holm_p_equiv"] = holm(table["p_equiv"])
    table["outcome"] = [
        str(_outcome(r.estimate, r.holm_p_diff, r.holm_p_equiv, rule.alpha))
        if r.pairs
        else "undecided"
        for r in table.itertuples()
    ]
    table["within_margin"] = table["holm_p_equiv"] < rule.alpha
    signs = [sign_test(comparisons[name]["difference"]) for name in table["comparison"]]
    table["wins"] = [s["wins"] for s in signs]
    table["losses"] = [s["losses"] for s in signs]
    table["sign_holm_p"] = holm([s["sign_p"] for s in signs])
    table["sign_outcome"] = [
        ("ahead" if r.estimate > 0 else "behind") if r.sign_holm_p < rule.alpha else "undecided"
        for r in table.itertuples()
    ]
    level = rule.alpha / len(table)  # Bonferroni: the bootstrap's interval for the whole family
    intervals = [stratified_bootstrap(comparisons[n], alpha=level) for n in table["comparison"]]
    table["boot_low"] = [lo for lo, _ in intervals]
    table["boot_high"] = [hi for _, hi in intervals]
    table["boot_outcome"] = [_interval_outcome(lo, hi, rule.margin) for lo, hi in intervals]
    direction = table["outcome"].where(table["outcome"].isin(["ahead", "behind"]), "undecided")
    table["another_test_differs"] = (table["sign_outcome"] != direction) | (
        table["boot_outcome"] != table["outcome"]
    )
    return table


def _interval_outcome(low: float, high: float, margin: float) -> str:
    if low > 0:
        return "ahead"
    if high < 0:
        return "behind"
    if -margin < low and high < margin:
        return "equivalent"
    return "undecided"
