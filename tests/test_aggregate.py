"""Aggregation: records -> tidy tables, on hand-made records."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tinyattn.analysis.aggregate import (
    below_probe,
    compute_table,
    difference_to,
    late_gain,
    learning_curves,
    load_records,
    near_majority,
    score_table,
    stage_one_selection,
    summarise,
    task_standing,
)
from tinyattn.records import write_json_atomic
from tinyattn.study.rows import repeats


def record(run_id, task, label, seed, score, wall=10.0, stage_one=None, status="done"):
    metric = "accuracy"
    rec = {
        "run_id": run_id,
        "status": status,
        "task": task,
        "method": "x",
        "seed": seed,
        "select_metric": metric,
        "params": {"label": label, "backbone": "minilm-l6", "learning_rate": 1e-3},
        "params_count": {"adapter_params": 100, "head_params": 10, "backbone_params": 10_000},
        "best": {"step": 5, "metrics": {metric: score}},
        "final": {"step": 9, "metrics": {metric: score}},
        "steps": 9,
        "epochs_run": 1.0,
        "train_examples": 50,
        "eval_examples": 20,
        "train_seconds": wall / 2,
        "eval_seconds": 1.0,
        "wall_seconds": wall,
        "tokens_per_second": 1.0,
    }
    if stage_one:
        rec["stage_one"] = {"run_id": stage_one, "source": "saved adapter of the E=1 run"}
    return rec


@pytest.fixture
def runs_dir(tmp_path):
    for rec in [
        record("a1", "sst2", "a", 1, 0.80),
        record("a2", "sst2", "a", 2, 0.90),
        record("a3", "rte", "a", 1, 0.60),
        record("b1", "sst2", "b", 1, 0.70, wall=5.0, stage_one="a1"),
        record("c1", "sst2", "c", 1, 0.99, status="failed"),
    ]:
        write_json_atomic(tmp_path / f"{rec['run_id']}.json", rec)
    (tmp_path / "broken.json").write_text('{"run_id": "z", "sta')
    return tmp_path


def test_tables(runs_dir):
    runs = load_records(runs_dir)
    assert set(runs["run_id"]) == {"a1", "a2", "a3", "b1"}  # failed and unreadable records left out
    assert runs.set_index("run_id").loc["b1", "compute_seconds"] == 15.0  # its stage one counted
    summary = summarise(runs).set_index(["task", "method"])
    assert summary.loc[("sst2", "a"), "mean"] == pytest.approx(85.0)
    assert summary.loc[("sst2", "a"), "std"] == pytest.approx(7.0710678)
    assert summary.loc[("sst2", "a"), "n_seeds"] == 2
    table = score_table(summary.reset_index(), method_order=["a", "b"])
    assert table.loc["a", "sst2"] == "85.0 ± 7.1" and table.loc["b", "sst2"] == "70.0"
    assert table.loc["b", "rte"] == "—" and table.loc["b", "avg"] == "—"
    assert table.loc["a", "avg"] == "72.5" and table.loc["b", "seeds"] == 1
    diff = difference_to(summary.reset_index(), "a")
    assert diff.loc["b", "sst2"] == pytest.approx(-15.0)
    with pytest.raises(ValueError, match="reference method 'zzz'"):
        difference_to(summary.reset_index(), "zzz")


def test_task_standing_names_the_methods_ahead_per_task():
    import pandas as pd

    summary = pd.DataFrame(
        [
            ("rte", "ref", 60.0),
            ("rte", "x", 65.0),
            ("rte", "y", 55.0),
            ("rte", "z", 62.0),
            ("sst2", "ref", 90.0),
            ("sst2", "x", 88.0),
            ("sst2", "y", 90.0),
            ("cola", "x", 30.0),  # the reference did not run here: no row
        ],
        columns=["task", "method", "mean"],
    )
    standing = task_standing(summary, "ref").set_index("task")
    assert list(standing.index) == ["rte", "sst2"]
    assert standing.loc["rte", "rank"] == 3 and standing.loc["rte", "methods"] == 4
    assert standing.loc["rte", "ahead"] == "x, z" and standing.loc["rte", "best"] == "x"
    assert standing.loc["rte", "gap_to_best"] == pytest.approx(5.0)
    # a tie shares the better rank, and nothing is ahead of it
    assert standing.loc["sst2", "rank"] == 1 and standing.loc["sst2", "ahead"] == ""
    assert standing.loc["sst2", "gap_to_best"] == 0.0
    with pytest.raises(ValueError, match="reference method 'nope'"):
        task_standing(summary, "nope")


def test_selected_run_ids_only(runs_dir):
    assert set(load_records(runs_dir, run_ids={"a1"})["run_id"]) == {"a1"}


def synthetic_runs(shift: float, noise: float, seeds=range(5), tasks=("rte", "sst2")):
    """Method ref = method other + shift, plus seeded noise, on every (task, seed)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for task in tasks:
        for seed in seeds:
            base = 70.0 + rng.normal()
            rows.append({"task": task, "seed": seed, "method": "other", "score": base})
            value = base + shift + noise * rng.normal()
            rows.append({"task": task, "seed": seed, "method": "ref", "score": value})
    return pd.DataFrame(rows).assign(final_score=lambda f: f["score"] - 1.0)


def test_paired_comparison_finds_a_real_difference_and_not_a_spurious_one():
    from tinyattn.analysis.aggregate import paired_comparison

    (clear,) = paired_comparison(synthetic_runs(2.0, 0.3), "ref").to_dict("records")
    assert clear["pairs"] == 10 and clear["reference_wins"] == 1.0
    assert 1.5 < clear["ci_low"] < clear["mean_difference"] < clear["ci_high"] < 2.5
    (null,) = paired_comparison(synthetic_runs(0.0, 1.0), "ref").to_dict("records")
    assert null["ci_low"] < 0 < null["ci_high"]  # no difference: the interval covers zero
    partial = synthetic_runs(2.0, 0.3)
    partial = partial[~((partial["method"] == "other") & (partial["seed"] == 0))]
    assert paired_comparison(partial, "ref")["pairs"].item() == 8  # only pairs both finished
    with pytest.raises(ValueError, match="reference method 'zzz'"):
        paired_comparison(partial, "zzz")


def test_task_average_counts_only_seeds_that_finished_every_task():
    from tinyattn.analysis.aggregate import summarise, task_average

    runs = synthetic_runs(2.0, 0.0, seeds=range(3))
    runs = runs[~((runs["method"] == "other") & (runs["task"] == "rte") & (runs["seed"] == 2))]
    avg = task_average(runs).set_index("method")
    assert avg.loc["other", "n_seeds"] == 2 and avg.loc["ref", "n_seeds"] == 3
    final = task_average(runs, "final_score").set_index("method")
    assert final.loc["ref", "mean"] == pytest.approx(avg.loc["ref", "mean"] - 1.0)
    with pytest.raises(ValueError, match="unknown score column"):
        summarise(runs, "dev")


def test_below_probe_names_runs_under_every_probe_seed(tmp_path):
    for i, (task, label, seed, score) in enumerate(
        [
            ("rte", "head_only", 1, 0.60),
            ("rte", "head_only", 2, 0.64),
            ("rte", "lora", 1, 0.70),
            ("rte", "lora", 2, 0.50),  # collapsed: below both probe seeds
            ("rte", "prefix", 1, 0.62),  # between the probe seeds: not flagged
            ("sst2", "lora", 1, 0.10),  # no probe on this task: nothing to compare with
        ]
    ):
        write_json_atomic(tmp_path / f"r{i}.json", record(f"r{i}", task, label, seed, score))
    low = below_probe(load_records(tmp_path))
    assert low[["task", "method", "seed"]].values.tolist() == [["rte", "lora", 2]]
    assert low.loc[0, "probe_min"] == pytest.approx(60.0)
    assert low.loc[0, "probe_mean"] == pytest.approx(62.0)
    assert below_probe(load_records(tmp_path), probe="nothing").empty


def test_near_majority_names_runs_that_learned_nothing(tmp_path):
    for i, (task, label, seed, score) in enumerate(
        [
            ("mrpc", "d64", 1, 0.6838),  # exactly the majority class
            ("mrpc", "d64", 2, 0.6900),  # within a point of it
            ("mrpc", "e1", 1, 0.7800),
            ("sst2", "d64", 1, 0.40),  # below it
            ("rte", "e1", 1, 0.10),  # no majority score given for the task: not judged
        ]
    ):
        write_json_atomic(tmp_path / f"r{i}.json", record(f"r{i}", task, label, seed, score))
    runs = load_records(tmp_path)
    low = near_majority(runs, {"mrpc": 68.38, "sst2": 50.92})
    assert low[["task", "method", "seed"]].values.tolist() == [
        ["mrpc", "d64", 1],
        ["mrpc", "d64", 2],
        ["sst2", "d64", 1],
    ]
    assert low["majority"].tolist() == [68.38, 68.38, 50.92]
    assert near_majority(runs, {"mrpc": 68.38}, margin=0.0)["seed"].tolist() == [1]
    assert near_majority(runs.iloc[0:0], {"mrpc": 68.38}).empty


def test_compute_table_keeps_devices_apart(tmp_path):
    gpu = record("g", "sst2", "e1", 1, 0.8, wall=7200.0)
    gpu["device"] = "cuda:0"
    gpu["provenance"] = {"machine": {"gpu": "NVIDIA H100"}}
    for rec in (
        record("c1", "sst2", "e1", 1, 0.8, wall=3600.0),
        record("c2", "sst2", "e1", 2, 0.8),
        gpu,
    ):
        write_json_atomic(tmp_path / f"{rec['run_id']}.json", rec)
    table = compute_table(load_records(tmp_path)).set_index(["method", "device"])
    assert table.loc[("e1", "cpu"), "runs"] == 2
    assert table.loc[("e1", "cpu"), "hours"] == pytest.approx((3600 + 10) / 3600)
    assert table.loc[("e1", "NVIDIA H100"), "hours"] == pytest.approx(2.0)
    assert table.loc[("e1", "NVIDIA H100"), "minutes_per_run"] == pytest.approx(120.0)


def test_learning_curves_and_late_gain(tmp_path):
    def with_curve(rec, scores):
        rec["evaluations"] = [
            {
                "epoch": 0.5 * (i + 1),
                "step": 10 * (i + 1),
                "train_loss": 1.0 / (i + 1),
                "metrics": {"accuracy": s},
            }
            for i, s in enumerate(scores)
        ]
        return rec

    for rec in [
        with_curve(record("a1", "sst2", "a", 1, 0.80), [0.50, 0.70, 0.80]),  # still climbing
        with_curve(record("a2", "sst2", "a", 2, 0.90), [0.60, 0.95, 0.90]),  # ended below its best
        with_curve(record("b1", "sst2", "b", 1, 0.70), [0.70]),  # one evaluation: no gain
        with_curve(record("c1", "sst2", "c", 1, 0.99, status="failed"), [0.1, 0.99]),
    ]:
        write_json_atomic(tmp_path / f"{rec['run_id']}.json", rec)
    curves = learning_curves(tmp_path)
    assert set(curves["run_id"]) == {"a1", "a2", "b1"}  # failed runs left out
    assert len(curves) == 7 and curves["score"].max() == pytest.approx(95.0)
    assert list(learning_curves(tmp_path, {"b1"})["run_id"]) == ["b1"]
    gain = late_gain(curves).set_index("method")
    assert gain.loc["a", "gain"] == pytest.approx((10.0 - 5.0) / 2)
    assert gain.loc["a", "from_best"] == pytest.approx((0.0 - 5.0) / 2)
    assert gain["gain"].isna()["b"] and gain.loc["b", "from_best"] == 0.0


def test_stage_one_selection_marks_starts_chosen_on_the_dev_set(tmp_path):
    ended_at_best = record("e1a", "sst2", "e1", 1, 0.80)
    ended_at_best["best"]["step"] = 9  # its best evaluation was its last
    peaked_early = record("e1b", "sst2", "e1", 2, 0.85)  # best at step 5 of 9
    peaked_early["final"]["metrics"]["accuracy"] = 0.82
    for rec in [
        ended_at_best,
        peaked_early,
        record("e4a", "sst2", "e4", 1, 0.81, stage_one="e1a"),
        record("e4b", "sst2", "e4", 2, 0.86, stage_one="e1b"),
        record("e4c", "sst2", "e4", 3, 0.86, stage_one="gone"),  # its twin's record is missing
    ]:
        write_json_atomic(tmp_path / f"{rec['run_id']}.json", rec)
    table = stage_one_selection(load_records(tmp_path)).set_index("run_id")
    assert list(table.index) == ["e4a", "e4b"]
    assert not table.loc["e4a", "selected"] and table.loc["e4a", "twin_gap"] == 0.0
    assert table.loc["e4b", "selected"] and table.loc["e4b", "twin_gap"] == pytest.approx(3.0)


def test_paired_comparison_adds_the_sign_test_and_drops_flagged_pairs():
    from tinyattn.analysis.aggregate import paired_comparison

    runs = synthetic_runs(2.0, 0.3)
    (row,) = paired_comparison(runs, "ref").to_dict("records")
    assert (row["wins"], row["losses"], row["ties"]) == (10, 0, 0)
    assert row["sign_p"] == pytest.approx(2 / 2**10)
    assert "holm_p" not in row  # Holm belongs to a claim's family (tinyattn.analysis.verdicts)
    flagged = (runs["method"] == "other") & (runs["seed"] < 3)  # 3 of 5 seeds, on both tasks
    (fewer,) = paired_comparison(runs, "ref", exclude=flagged).to_dict("records")
    assert fewer["pairs"] == 4 and fewer["wins"] == 4


def _cells(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["task", "method", "seed", "score", "final_score"]).assign(
        metric="accuracy", adapter_params=100, adapter_plus_head_params=110, adapter_percent=0.5
    )


def test_results_table_and_bimodal_cells_show_medians():
    from tinyattn.analysis.aggregate import results_table

    runs = _cells(
        [
            ("rte", "m", 1, 60.0, 53.0),  # within a point of the majority class (52.7)
            ("rte", "m", 2, 62.0, 60.0),
            ("rte", "m", 3, 63.0, 61.0),
            ("rte", "head_only", 1, 55.0, 54.0),
            ("rte", "head_only", 2, 56.0, 55.0),
        ]
    )
    table = results_table(runs, {"rte": 52.7}).set_index(["task", "method"])
    m = table.loc[("rte", "m")]
    assert (m["seeds"], m["collapsed_seeds"], bool(m["bimodal"])) == (3, 1, True)
    assert m["final_median"] == 60.0 and m["final_mean"] == pytest.approx(58.0)
    assert m["best_dev_mean"] == pytest.approx(61.667, abs=1e-3)
    assert not table.loc[("rte", "head_only"), "bimodal"]
    summary = summarise(runs.assign(n=1, compute_seconds=1.0), "final_score")
    from tinyattn.analysis.stats import cell_summary

    cells = cell_summary(runs, {"rte": 52.7}, "final_score")
    shown = score_table(summary, cells=cells)
    assert shown.loc["m", "rte"] == "60.0 ‡"
    assert shown.loc["head_only", "rte"] == "54.5 ± 0.7"
    # the average over tasks averages what the cells show: the bimodal cell's median, marked
    assert shown.loc["m", "avg"] == "60.0 ‡" and shown.loc["head_only", "avg"] == "54.5"
    two = _cells(
        [
            (t, "m", s, 0.0, v)
            for t, vals in (("rte", (53.0, 60.0, 61.0)), ("mrpc", (70.0, 72.0, 74.0)))
            for s, v in enumerate(vals, 1)
        ]
    )
    majority = {"rte": 52.7, "mrpc": 68.4}
    table = score_table(
        summarise(two.assign(n=1, compute_seconds=1.0), "final_score"),
        cells=cell_summary(two, majority, "final_score"),
    )
    assert table.loc["m", "avg"] == f"{(60.0 + 72.0) / 2:.1f} ‡"  # the mean of the means: 65.0


def test_per_task_table_puts_each_task_interval_in_a_cell():
    import pandas as pd

    from tinyattn.analysis.aggregate import per_task_table

    per_task = pd.DataFrame(
        {
            "task": ["rte", "sst2", "rte"],
            "method": ["a", "a", "b"],
            "mean_difference": [1.25, -0.5, 2.0],
            "ci_low": [-1.0, -0.75, float("nan")],
            "ci_high": [3.5, -0.25, float("nan")],
        }
    )
    table = per_task_table(per_task, ["b", "a"])
    assert list(table.index) == ["b", "a"] and list(table.columns) == ["rte", "sst2"]
    assert table.loc["a", "rte"] == "+1.2 (-1.0, 3.5)"
    assert table.loc["b", "rte"] == "+2.0" and pd.isna(table.loc["b", "sst2"])


def test_what_a_run_predicted_comes_from_a_rerun_that_repeats_it(tmp_path):
    """Records made before evaluations summarised their predictions take them from a rerun in
    ``rederive/<profile>/`` beside the runs folder, but only from one that repeats every metric."""
    runs, reruns = tmp_path / "runs", tmp_path / "rederive" / "cpu"
    said = {"counts": {"0": 97, "1": 3}}
    for rec in [record("a1", "sst2", "a", 1, 0.50), record("a2", "sst2", "a", 2, 0.52)]:
        write_json_atomic(runs / f"{rec['run_id']}.json", rec)
        again = json.loads(json.dumps(rec))  # the rerun: same metrics, and what it predicted
        for which in ("best", "final"):
            again[which]["predictions"] = said
        if rec["run_id"] == "a2":
            again["final"]["metrics"]["accuracy"] += 2e-4  # beyond the tolerance: another run
        write_json_atomic(reruns / f"{rec['run_id']}.json", again)
    table = load_records(runs).set_index("run_id")
    assert table.loc["a1", "behaviour_source"] == "rerun"
    assert table.loc["a1", "final_top_share"] == pytest.approx(0.97)
    assert table.loc["a2", "behaviour_source"] == "rerun differs"
    assert np.isnan(table.loc["a2", "final_top_share"])
    assert not repeats(json.loads((runs / "a2.json").read_text()), {"best": {}, "final": {}})
    # without reruns the columns say nothing, as for every record made before
    (reruns / "a1.json").unlink()
    table = load_records(runs).set_index("run_id")
    assert pd.isna(table.loc["a1", "behaviour_source"]) and np.isnan(
        table.loc["a1", "final_top_share"]
    )
