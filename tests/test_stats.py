"""The declared statistics against hand computations."""

import math

import numpy as np
import pandas as pd
import pytest

from tinyattn.analysis import stats


def _runs(scores: dict[str, list[float]], tasks=("a", "b", "c"), seeds=(1, 2, 3)) -> pd.DataFrame:
    """Runs of each method over tasks x seeds, scores given in task-major order."""
    rows = []
    for method, values in scores.items():
        pairs = [(t, s) for t in tasks for s in seeds]
        for (task, seed), value in zip(pairs, values, strict=True):
            rows.append({"task": task, "seed": seed, "method": method, "score": value})
    return pd.DataFrame(rows)


def test_holm_matches_the_step_down_by_hand():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> raised to 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    nan_kept = stats.holm([0.01, float("nan"), 0.02])
    assert math.isnan(nan_kept[1]) and nan_kept[[0, 2]] == pytest.approx([0.02, 0.02])


def test_sign_test_is_the_exact_binomial():
    # 13 wins of 15: 2 * (C(15,13) + C(15,14) + C(15,15)) / 2^15
    result = stats.sign_test([1.0] * 13 + [-1.0] * 2)
    assert (result["wins"], result["losses"], result["ties"]) == (13, 2, 0)
    assert result["sign_p"] == pytest.approx(2 * (105 + 15 + 1) / 2**15)
    tied = stats.sign_test([0.0, 0.0, 2.0])
    assert tied["ties"] == 2 and tied["sign_p"] == pytest.approx(1.0)  # one win of one
    assert stats.sign_test([0.0, 0.0])["sign_p"] == 1.0


def test_t_interval_by_hand():
    low, high = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) x sd 1 / sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert all(math.isnan(v) for v in stats.t_interval([1.0]))


def test_bootstrap_interval_brackets_the_mean_and_handles_degenerate_input():
    low, high = stats.bootstrap_interval(np.arange(20.0))
    assert low < 9.5 < high
    assert stats.bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in stats.bootstrap_interval([1.0]))


def test_pair_differences_pairs_on_task_and_seed_only():
    runs = _runs({"ref": [10.0] * 9, "other": [9.0] * 8 + [12.0]})
    runs = runs.drop(runs.index[(runs["method"] == "other") & (runs["seed"] == 1)])  # unpaired
    diffs = stats.pair_differences(runs, "ref")
    assert len(diffs) == 6 and set(diffs["seed"]) == {2, 3}
    assert diffs.set_index(["task", "seed"]).loc[("c", 3), "difference"] == -2.0
    with pytest.raises(ValueError, match="'missing'"):
        stats.pair_differences(runs, "missing")


def test_declared_comparison_needs_interval_and_holm():
    clear = [10.0 + i for i in range(9)]
    runs = _runs(
        {
            "ref": clear,
            "weaker": [v - 1.0 - 0.1 * i for i, v in enumerate(clear)],  # loses every pair
            "mixed": [v + (1.0 if i % 2 else -1.0) for i, v in enumerate(clear)],
            "stronger": [v + 2.0 for v in clear],
        }
    )
    table = stats.declared_comparison(runs, "ref").set_index("method")
    assert table.loc["weaker", "outcome"] == "better"
    assert table.loc["stronger", "outcome"] == "worse"
    assert table.loc["mixed", "outcome"] == "not resolved"
    # 9 of 9 pairs: p = 2 / 2^9; three comparisons: Holm multiplies the smallest by 3
    assert table.loc["weaker", "sign_p"] == pytest.approx(2 / 2**9)
    assert table.loc[["weaker", "stronger"], "holm_p"].min() == pytest.approx(3 * 2 / 2**9)
    # a family restricts both the rows and Holm's multiplier
    alone = stats.declared_comparison(runs, "ref", family=["weaker"]).set_index("method")
    assert list(alone.index) == ["weaker"]
    assert alone.loc["weaker", "holm_p"] == pytest.approx(2 / 2**9)


def test_a_single_large_loss_moves_the_mean_not_the_sign_test():
    ref = [50.0] * 9
    other = [49.0] * 8 + [90.0]  # the reference wins 8 of 9 pairs but loses one by 40 points
    table = stats.declared_comparison(_runs({"ref": ref, "other": other}), "ref")
    row = table.iloc[0]
    assert row["mean_difference"] < 0 < row["median_difference"]
    assert row["wins"] == 8 and row["sign_p"] == pytest.approx(2 * 10 / 2**9)


def test_per_task_differences_use_t_intervals():
    runs = _runs({"ref": [1.0, 2.0, 3.0] * 3, "zero": [0.0] * 9})
    table = stats.per_task_differences(runs, "ref").set_index("task")
    assert table.loc["a", "mean_difference"] == 2.0 and table.loc["a", "seeds"] == 3
    assert (table.loc["a", "ci_low"], table.loc["a", "ci_high"]) == pytest.approx(
        stats.t_interval([1.0, 2.0, 3.0])
    )


def test_collapse_policy_flags_runs_near_the_majority_class_or_below_the_probe():
    runs = pd.DataFrame(
        {
            "task": ["rte", "rte", "rte", "stsb", "stsb", "stsb", "stsb", "cola"],
            "seed": [1, 2, 3, 1, 2, 1, 2, 1],
            "method": ["m", "m", "m", "m", "m", "head_only", "head_only", "m"],
            "final_score": [53.0, 60.0, 54.0, 16.9, 80.0, 40.3, 41.6, 0.0],
        }
    )
    majority = {"rte": 52.7, "stsb": 0.0}  # no entry for cola: judged by the probe alone (none)
    flags = stats.collapsed(runs, majority)
    # rte seed 1 is within a point of the majority class; stsb seed 1 is below the probe's lowest
    # seed (40.3); the probe itself is never below itself; cola has neither criterion
    assert flags.tolist() == [True, False, False, True, False, False, False, False]
    cells = stats.cell_summary(runs, majority).set_index(["task", "method"])
    assert bool(cells.loc[("rte", "m"), "bimodal"]) and cells.loc[("rte", "m"), "median"] == 54.0
    assert bool(cells.loc[("stsb", "m"), "bimodal"])
    assert not bool(cells.loc[("stsb", "head_only"), "bimodal"])


def test_a_run_that_says_what_it_predicted_is_judged_by_its_behaviour():
    """Where a record says what its run predicted, collapse is one class (or one score) for almost
    every input, whatever the score: a 53.8 on RTE from mixed predictions has not collapsed, a 60.0
    from 96 % of one class has; a row without predictions is judged by its score as before."""
    nan = float("nan")
    runs = pd.DataFrame(
        {
            "task": ["rte", "rte", "rte", "stsb", "stsb", "rte"],
            "seed": [1, 2, 3, 1, 2, 4],
            "method": ["m"] * 6,
            "final_score": [53.0, 60.0, 53.8, 10.0, 80.0, 53.0],
            "final_top_share": [0.70, 0.96, 0.55, nan, nan, nan],
            "final_prediction_std": [nan, nan, nan, 0.05, 1.2, nan],
        }
    )
    flags = stats.collapsed(runs, {"rte": 52.7, "stsb": 0.0})
    assert flags.tolist() == [False, True, False, True, False, True]
    best = runs.rename(columns={"final_score": "score"}).assign(best_top_share=nan)
    assert stats.collapsed(best, {"rte": 52.7}, score="score").tolist()[:3] == [True, False, False]


def test_excluding_collapsed_runs_drops_only_the_pairs_that_hold_one():
    runs = _runs({"ref": [10.0] * 9, "a": [9.0] * 9, "b": [11.0] * 9})
    flags = (runs["method"] == "a") & (runs["task"] == "a") & (runs["seed"] == 1)
    flags |= (runs["method"] == "ref") & (runs["task"] == "c") & (runs["seed"] == 3)
    diffs = stats.pair_differences(runs, "ref", exclude=flags)
    per = diffs.groupby("method").size()
    assert per["a"] == 7  # its own collapsed run and the reference's
    assert per["b"] == 8  # only the reference's: a's collapse does not touch the ref-vs-b pairs
    table = stats.declared_comparison(runs, "ref", exclude=flags).set_index("method")
    assert table.loc["a", "pairs"] == 7 and table.loc["b", "pairs"] == 8


def test_within_family_recomputes_holm_over_the_family_only():
    clear = [10.0 + i for i in range(9)]
    runs = _runs(
        {
            "ref": clear,
            "weaker": [v - 1.0 for v in clear],  # loses every pair: p = 2 / 2^9
            "other": [v - 1.0 for v in clear],
            "third": [v - 1.0 for v in clear],
        }
    )
    table = stats.declared_comparison(runs, "ref")
    assert table["holm_p"].tolist() == pytest.approx([3 * 2 / 2**9] * 3)
    two = stats.within_family(table, ["third", "weaker", "missing"])
    assert list(two["method"]) == ["third", "weaker"]  # the family's order; absent methods left out
    assert two["holm_p"].tolist() == pytest.approx([2 * 2 / 2**9] * 2)
    assert (two["outcome"] == "better").all()
    assert stats.within_family(table, ["missing"]).empty


def test_bootstrap_interval_narrows_with_a_lower_confidence():
    values = np.arange(20.0)
    wide = stats.bootstrap_interval(values)
    narrow = stats.bootstrap_interval(values, confidence=0.5)
    assert wide[0] < narrow[0] < 9.5 < narrow[1] < wide[1]
