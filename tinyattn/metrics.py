"""GLUE metrics (the official ones, as in the GLUE leaderboard and ``evaluate``'s ``glue`` metric).

* cola: Matthews correlation (+ accuracy)
* stsb: Pearson and Spearman correlation of predictions clipped to [0, 5], and their mean
* mrpc, qqp: accuracy and F1 of the positive class, and their mean
* sst2, mnli, qnli, rte: accuracy
* fewrte: accuracy; fewcb: accuracy, macro-F1 and their mean (PET's CB score; ``fewglue_metrics``)

Degenerate inputs give 0.0 instead of NaN: a constant prediction (or constant labels) has Matthews,
Pearson and Spearman correlation 0.0, and F1 is 0.0 when nothing is predicted or labelled positive.
Non-finite predictions (a diverged model) raise ValueError rather than produce a silent number.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from tinyattn.data import TaskSpec, get_task, load_glue_task, resolve_data_dir

STSB_RANGE = (0.0, 5.0)


def main_metric(task: str | TaskSpec) -> str:
    """The metric used for model selection and reporting: ``matthews_correlation`` for cola,
    ``pearson`` for stsb, ``accuracy`` otherwise."""
    return get_task(task).metric


def _as_1d(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (or (N, 1)), got shape {array.shape}")
    return array


def _class_ids(predictions: Any, spec: TaskSpec) -> np.ndarray:
    """Class ids from ids (1-D) or logits/probabilities (2-D, argmax over the last axis)."""
    array = np.asarray(predictions)
    if array.ndim == 2:
        if array.shape[1] != spec.num_labels:
            raise ValueError(
                f"{spec.name}: logits have {array.shape[1]} columns, expected {spec.num_labels}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{spec.name}: predictions contain NaN or infinite values")
        return array.argmax(axis=1)
    array = _as_1d(array, "predictions")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{spec.name}: 1-D predictions must be class ids, got {array[:5]}...")
    return array.astype(np.int64)


def _correlation(fn: Any, x: np.ndarray, y: np.ndarray) -> float:
    """``fn(x, y)`` statistic, 0.0 if either side is constant (where it is undefined)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    value = float(fn(x, y)[0])
    return 0.0 if math.isnan(value) else value


def compute_metrics(task: str | TaskSpec, predictions: Any, labels: Any) -> dict[str, float]:
    """The GLUE metrics of one task as plain floats.

    ``predictions``: class ids (1-D) or logits (2-D, argmax) for classification; float scores
    (1-D or (N, 1)) for stsb, clipped to [0, 5] before Pearson/Spearman. Constant predictions give a
    Matthews / Pearson / Spearman correlation of 0.0 rather than NaN.
    """
    spec = get_task(task)
    gold = _as_1d(labels, "labels")
    if spec.is_regression:
        preds = _as_1d(predictions, "predictions").astype(np.float64)
        if not np.all(np.isfinite(preds)):
            raise ValueError("stsb: predictions contain NaN or infinite values")
        preds = np.clip(preds, *STSB_RANGE)
        gold = gold.astype(np.float64)
    else:
        preds = _class_ids(predictions, spec)
        gold = gold.astype(np.int64)
    if len(preds) != len(gold):
        raise ValueError(f"{len(preds)} predictions but {len(gold)} labels")
    if len(gold) == 0:
        raise ValueError("no predictions to score")

    if spec.is_regression:
        pearson = _correlation(pearsonr, preds, gold)
        spearman = _correlation(spearmanr, preds, gold)
        return {"pearson": pearson, "spearman": spearman, "combined": (pearson + spearman) / 2}
    if spec.source == "fewglue":  # few-shot RTE / CB: PET's metrics (CB: accuracy, macro-F1, mean)
        from tinyattn.fewglue import fewglue_metrics

        return fewglue_metrics(spec.hub_config, preds, gold)
    out = {"accuracy": float(accuracy_score(gold, preds))}
    if spec.name == "cola":
        mcc = float(matthews_corrcoef(gold, preds))
        out["matthews_correlation"] = 0.0 if math.isnan(mcc) else mcc
    if spec.name in ("mrpc", "qqp"):
        out["f1"] = float(f1_score(gold, preds, pos_label=1, average="binary", zero_division=0.0))
        out["combined"] = (out["accuracy"] + out["f1"]) / 2
    return out


def prediction_summary(task: str | TaskSpec, predictions: Any) -> dict:
    """What a model predicted, in brief, for telling a collapsed run by its behaviour: per class the
    number of predictions (classification), or the mean and spread of the scores (stsb, clipped as
    scored). A run that learned nothing predicts one class, or one score, for every example."""
    spec = get_task(task)
    if spec.is_regression:
        preds = np.clip(_as_1d(predictions, "predictions").astype(np.float64), *STSB_RANGE)
        return {"mean": float(preds.mean()), "std": float(preds.std())}
    counts = Counter(int(y) for y in _class_ids(predictions, spec))
    return {"counts": {str(label): counts[label] for label in sorted(counts)}}


def majority_baseline(
    task: str | TaskSpec, train_labels: Any, eval_labels: Any
) -> dict[str, float]:
    """Metrics on ``eval_labels`` of always predicting the most frequent training class (ties: the
    lowest class id), or for stsb the training mean (whose correlations are 0.0 by convention)."""
    spec = get_task(task)
    train = _as_1d(train_labels, "train_labels")
    n_eval = len(_as_1d(eval_labels, "eval_labels"))
    if len(train) == 0:
        raise ValueError("no training labels")
    if spec.is_regression:
        constant: float | int = float(np.mean(train.astype(np.float64)))
    else:
        counts = Counter(int(y) for y in train)
        constant = min(counts, key=lambda c: (-counts[c], c))
    return compute_metrics(spec, np.full(n_eval, constant), eval_labels)


def majority_score(task: str | TaskSpec, data_dir: str | None = None) -> float:
    """The task's main metric on its dev set for the majority-class (or training-mean) predictor:
    the score of a model that learned nothing from the inputs."""
    spec = get_task(task)
    folder = resolve_data_dir(data_dir)
    train = [row["label"] for row in load_glue_task(spec.name, "train", folder)]
    dev = [row["label"] for row in load_glue_task(spec.name, "validation", folder)]
    return majority_baseline(spec, train, dev)[main_metric(spec)]
