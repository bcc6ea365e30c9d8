"""Tests of tinyattn.metrics on hand-checkable examples and on the real RTE labels."""

from __future__ import annotations

import math
import os
import pathlib
import warnings

import numpy as np
import pytest

from tinyattn.data import get_task
from tinyattn.metrics import compute_metrics, main_metric, majority_baseline, prediction_summary


def _data_dir() -> pathlib.Path | None:
    repo = pathlib.Path(__file__).resolve().parents[1]
    candidate = pathlib.Path(os.environ.get("TINYATTN_DATA_DIR") or repo.parent / "shared" / "data")
    return candidate if (candidate / "glue" / "RTE").is_dir() else None


DATA_DIR = _data_dir()


def _confusion(tp: int, tn: int, fp: int, fn: int) -> tuple[list[int], list[int]]:
    labels = [1] * tp + [0] * tn + [0] * fp + [1] * fn
    preds = [1] * tp + [0] * tn + [1] * fp + [0] * fn
    return preds, labels


def test_matthews_matches_formula() -> None:
    tp, tn, fp, fn = 6, 3, 1, 2
    preds, labels = _confusion(tp, tn, fp, fn)
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    out = compute_metrics("cola", preds, labels)
    assert set(out) == {"matthews_correlation", "accuracy"}
    assert out["matthews_correlation"] == pytest.approx(expected)
    assert out["accuracy"] == pytest.approx(9 / 12)
    assert compute_metrics("cola", labels, labels)["matthews_correlation"] == pytest.approx(1.0)


def test_mrpc_f1_accuracy_combined() -> None:
    preds, labels = _confusion(tp=2, tn=3, fp=1, fn=1)
    out = compute_metrics("mrpc", preds, labels)
    assert set(out) == {"accuracy", "f1", "combined"}
    assert out["accuracy"] == pytest.approx(5 / 7)
    assert out["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert out["combined"] == pytest.approx((5 / 7 + 4 / 6) / 2)
    assert set(compute_metrics("qqp", preds, labels)) == {"accuracy", "f1", "combined"}


def test_accuracy_only_tasks() -> None:
    out = compute_metrics("mnli", [0, 1, 2, 2], [0, 1, 1, 2])
    assert out == {"accuracy": 0.75}
    assert set(compute_metrics("rte", [0, 1], [0, 0])) == {"accuracy"}


def test_logits_equal_ids() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3))
    labels = rng.integers(0, 3, size=50)
    assert compute_metrics("mnli", logits, labels) == compute_metrics(
        "mnli", logits.argmax(1), labels
    )
    binary = rng.normal(size=(40, 2))
    gold = rng.integers(0, 2, size=40)
    for task in ("cola", "mrpc"):
        assert compute_metrics(task, binary, gold) == compute_metrics(task, binary.argmax(1), gold)
    with pytest.raises(ValueError, match="columns"):
        compute_metrics("rte", logits, labels)  # 3 logits for a 2-class task


def test_stsb_clipping_changes_pearson() -> None:
    labels = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    preds = np.array([-3.0, 1.2, 1.9, 3.1, 4.2, 9.0])
    clipped = np.clip(preds, 0, 5)
    raw_pearson = float(np.corrcoef(preds, labels)[0, 1])
    clipped_pearson = float(np.corrcoef(clipped, labels)[0, 1])
    assert abs(raw_pearson - clipped_pearson) > 0.01  # the example is one where clipping matters
    out = compute_metrics("stsb", preds, labels)
    assert set(out) == {"pearson", "spearman", "combined"}
    assert out["pearson"] == pytest.approx(clipped_pearson)
    assert out["spearman"] == pytest.approx(1.0)
    assert out["combined"] == pytest.approx((clipped_pearson + 1.0) / 2)
    # (N, 1) regression outputs are accepted as they come from a model head.
    assert compute_metrics("sts-b", preds[:, None], labels) == out


def test_constant_predictions_give_zero_not_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning / UndefinedMetricWarning either
        cola = compute_metrics("cola", [1, 1, 1, 1], [0, 1, 1, 0])
        stsb = compute_metrics("stsb", [2.5, 2.5, 2.5], [0.0, 2.0, 4.0])
        mrpc = compute_metrics("mrpc", [0, 0, 0], [1, 0, 1])
    assert cola["matthews_correlation"] == 0.0 and cola["accuracy"] == 0.5
    assert stsb == {"pearson": 0.0, "spearman": 0.0, "combined": 0.0}
    assert mrpc["f1"] == 0.0


def test_values_are_python_floats() -> None:
    for task, preds, labels in [
        ("cola", np.array([1, 0, 1]), np.array([1, 0, 0])),
        ("stsb", np.array([1.0, 2.0, 4.0], dtype=np.float32), np.array([1.0, 3.0, 4.0])),
        ("mrpc", np.array([1, 0, 1]), np.array([1, 0, 0])),
    ]:
        assert all(type(v) is float for v in compute_metrics(task, preds, labels).values())


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="wnli"):
        compute_metrics("wnli", [0], [0])
    with pytest.raises(ValueError, match="2 predictions but 3 labels"):
        compute_metrics("rte", [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics("stsb", [1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="class ids"):
        compute_metrics("rte", [0.3, 0.7], [0, 1])


def test_main_metric() -> None:
    assert main_metric("cola") == "matthews_correlation"
    assert main_metric("STS-B") == "pearson"
    for task in ("sst2", "mrpc", "qqp", "mnli", "qnli", "rte"):
        assert main_metric(task) == "accuracy"
    # The main metric is always among the computed ones.
    for task, preds, labels in [("cola", [0, 1], [0, 1]), ("stsb", [1.0, 2.0], [1.0, 3.0])]:
        assert main_metric(task) in compute_metrics(task, preds, labels)
    with pytest.raises(ValueError, match="nope"):
        main_metric("nope")


def test_a_task_spec_is_taken_as_resolved() -> None:
    """The task travels as its spec once resolved; names and specs give the same metrics."""
    spec = get_task("STS-B")
    assert main_metric(spec) == main_metric("stsb") == "pearson"
    preds, labels = [1.0, 2.0, 4.5], [1.0, 3.0, 4.0]
    assert compute_metrics(spec, preds, labels) == compute_metrics("stsb", preds, labels)
    assert majority_baseline(get_task("rte"), [0, 0, 1], [0, 1]) == {"accuracy": 0.5}


def test_majority_baseline_synthetic() -> None:
    out = majority_baseline("mrpc", [1, 1, 0, 1], [1, 0, 0, 0, 1])
    assert out["accuracy"] == pytest.approx(2 / 5)
    assert out["f1"] == pytest.approx(2 * 2 / (2 * 2 + 3))
    assert majority_baseline("rte", [0, 1], [1, 1])["accuracy"] == 0.0  # tie -> lowest class id
    cola = majority_baseline("cola", [1, 1, 0], [1, 0, 1])
    assert cola["matthews_correlation"] == 0.0
    assert majority_baseline("stsb", [1.0, 3.0], [0.0, 5.0, 2.0]) == {
        "pearson": 0.0,
        "spearman": 0.0,
        "combined": 0.0,
    }


@pytest.mark.skipif(DATA_DIR is None, reason="local GLUE data (glue/RTE) not found")
def test_majority_baseline_on_rte_dev() -> None:
    from tinyattn.data import load_glue_task

    train = [ex["label"] for ex in load_glue_task("rte", "train", DATA_DIR)]
    dev = [ex["label"] for ex in load_glue_task("rte", "validation", DATA_DIR)]
    # Train: 1249 entailment (0) vs 1241 -> always predict entailment; dev has 146 of 277.
    assert majority_baseline("rte", train, dev) == {"accuracy": pytest.approx(146 / 277)}
    assert 146 / 277 == pytest.approx(0.5271, abs=1e-4)


@pytest.mark.skipif(DATA_DIR is None, reason="local GLUE data (glue/RTE) not found")
def test_majority_score_reads_the_task_and_names_its_main_metric() -> None:
    from tinyattn.metrics import majority_score

    assert majority_score("rte", DATA_DIR) == pytest.approx(146 / 277)  # as above
    # MRPC: more paraphrases than not in train; 279 of the 408 dev pairs are paraphrases
    assert majority_score("mrpc", DATA_DIR) == pytest.approx(279 / 408)
    assert majority_score("stsb", DATA_DIR) == 0.0  # a constant has no correlation
    with pytest.raises(FileNotFoundError, match="data folder"):
        majority_score("rte", str(DATA_DIR / "nope"))


def test_prediction_summary_tells_a_one_class_run_from_its_predictions() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    assert prediction_summary("rte", logits) == {"counts": {"0": 1, "1": 3}}
    assert prediction_summary("cola", np.array([1, 1, 1])) == {"counts": {"1": 3}}
    scores = prediction_summary("stsb", np.array([2.0, 2.0, 7.0, -1.0]))  # clipped to [0, 5]
    assert scores["mean"] == 2.25 and scores["std"] == pytest.approx(np.std([2, 2, 5, 0]))
