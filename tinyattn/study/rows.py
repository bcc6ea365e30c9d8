"""Finished runs as a table: one row per record, the columns every study and chapter reads.

The study's layer (``study``, ``tuning``) and the analysis (``aggregate`` and the chapters) both read
runs through ``load_records``; it sits below both, on the records folder alone.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tinyattn.records import RUNS_DIR, CorruptRecordError, read_record, read_records

SCORE_SCALE = 100.0  # GLUE convention: scores in points
# Largest difference between two runs' metric for one to repeat the other, in the metric's units
# (accuracy, correlation: 1e-4 is 0.01 points); ``reproduce``'s default tolerance.
MATCH_TOLERANCE = 1e-4
# Beside a runs folder: reruns, one folder per profile, of records made before evaluations said
# what the model predicted (``tinyattn reproduce --into <runs folder>/../rederive/<profile>``).
REDERIVED = "rederive"


def done_records(runs_dir: str | Path, run_ids: set[str] | None = None) -> list[dict]:
    """Every finished run's record (``status == done``), optionally only the given run ids."""
    return read_records(runs_dir, run_ids=run_ids)


def load_records(runs_dir: str | Path = RUNS_DIR, run_ids: set[str] | None = None) -> pd.DataFrame:
    """One row per finished run (``status == done``), optionally only the given run ids."""
    records = done_records(runs_dir, run_ids)
    frame = pd.DataFrame([_row(record) for record in records])
    if frame.empty:
        return frame
    frame = _rederived_behaviour(frame, records, Path(runs_dir).parent / REDERIVED)
    # A two-stage run's compute includes its E = 1 twin's when it started from the twin's adapter.
    walls = {r["run_id"]: r.get("wall_seconds", 0.0) for r in read_records(runs_dir, status=None)}
    frame["compute_seconds"] = frame["wall_seconds"] + frame["stage_one_run_id"].map(
        lambda rid: walls.get(rid, 0.0) if isinstance(rid, str) else 0.0
    )
    return frame


def _row(record: dict) -> dict:
    params, counts = record["params"], record["params_count"]
    metric = record["select_metric"]
    row = {
        "run_id": record["run_id"],
        "task": record["task"],
        "method": params.get("label") or record["method"],
        "library_method": record["method"],
        "seed": record["seed"],
        "backbone": params["backbone"],
        "metric": metric,
        "score": SCORE_SCALE * record["best"]["metrics"][metric],
        "final_score": SCORE_SCALE * record["final"]["metrics"][metric],
        "best_step": record["best"]["step"],
        "steps": record["steps"],
        "epochs": record["epochs_run"],
        "train_examples": record["train_examples"],
        "eval_examples": record["eval_examples"],
        "learning_rate": params["learning_rate"],
        "adapter_params": counts.get("deployed_adapter_params", counts["adapter_params"]),
        "adapter_params_training": counts["adapter_params"],
        "head_params": counts["head_params"],
        "backbone_params": counts["backbone_params"],
        "train_seconds": record["train_seconds"],
        "eval_seconds": record["eval_seconds"],
        "wall_seconds": record["wall_seconds"],
        "tokens_per_second": record["tokens_per_second"],
        "stage_one_run_id": _reused_stage_one(record),
        "commit": record.get("provenance", {}).get("git", {}).get("commit"),
        "machine": record.get("provenance", {}).get("machine", {}).get("processor"),
        "device": _device(record),
        "torch_threads": record.get("provenance", {}).get("machine", {}).get("torch_threads"),
    }
    unaveraged = record.get("final_unaveraged")  # experts: the last step's weights, not averaged
    row["final_unaveraged_score"] = (
        SCORE_SCALE * unaveraged["metrics"][metric] if unaveraged else float("nan")
    )
    row["adapter_plus_head_params"] = row["adapter_params"] + row["head_params"]
    row["adapter_percent"] = 100.0 * row["adapter_params"] / row["backbone_params"]
    for name, value in record["best"]["metrics"].items():
        row[f"best_{name}"] = SCORE_SCALE * value
    for which in ("best", "final"):  # what it predicted (records made from 2026-12 on; else NaN)
        row[f"{which}_top_share"], row[f"{which}_prediction_std"] = _behaviour(record[which])
    return row


def _behaviour(evaluation: dict) -> tuple[float, float]:
    """The share of predictions in the most predicted class, and the spread of predicted scores
    (STS-B), from an evaluation's ``predictions`` summary; NaN where it has none."""
    summary, nan = evaluation.get("predictions") or {}, float("nan")
    counts = summary.get("counts")
    top = max(counts.values()) / sum(counts.values()) if counts else nan
    return top, summary.get("std", nan)


def _rederived_behaviour(frame: pd.DataFrame, records: list[dict], folder: Path) -> pd.DataFrame:
    """What each run predicted: from its record (``behaviour_source`` "record"), else from a rerun in
    ``folder`` that repeats every metric of its best and final evaluations within
    ``MATCH_TOLERANCE`` ("rerun"); a rerun that does not repeat it says nothing about the run
    ("rerun differs", behaviour left NaN); no rerun: NaN."""
    said = frame[["best_top_share", "best_prediction_std"]].notna().any(axis=1)
    frame["behaviour_source"] = said.map({True: "record", False: None})
    reruns = (
        {path.stem: path for path in sorted(folder.glob("*/*.json"))} if folder.is_dir() else {}
    )
    for index, record in zip(frame.index, records):
        path = reruns.get(record["run_id"])
        if said[index] or path is None:
            continue
        try:
            rerun = read_record(path)
        except CorruptRecordError:
            rerun = {"status": "unreadable"}
        if rerun["status"] != "done" or not repeats(record, rerun):
            frame.loc[index, "behaviour_source"] = "rerun differs"
            continue
        known = {which: _behaviour(rerun[which]) for which in ("best", "final")}
        if all(pd.isna(value) for pair in known.values() for value in pair):
            continue  # a copy of a record made before predictions were summarised: says nothing
        for which, (share, spread) in known.items():
            frame.loc[index, [f"{which}_top_share", f"{which}_prediction_std"]] = share, spread
        frame.loc[index, "behaviour_source"] = "rerun"
    return frame


def repeats(record: dict, rerun: dict, tolerance: float = MATCH_TOLERANCE) -> bool:
    """Whether ``rerun`` has every metric of ``record``'s best and final evaluations, each within
    ``tolerance``, at the same steps."""
    for which in ("best", "final"):
        mine, again = record[which], rerun.get(which) or {}
        if mine.get("step") != again.get("step"):
            return False
        for metric, value in mine["metrics"].items():
            other = (again.get("metrics") or {}).get(metric)
            if other is None or not abs(float(other) - float(value)) <= tolerance:
                return False
    return True


def _device(record: dict) -> str:
    """Where the run trained: ``cpu``, or the GPU's name."""
    device = str(record.get("device", "cpu"))
    if device.startswith("cuda"):
        return record.get("provenance", {}).get("machine", {}).get("gpu") or device
    return device


def evaluation_rows(record: dict) -> list[dict]:
    """One row per evaluation of a run: epoch, step, its selection metric (x100) and training loss."""
    metric = record["select_metric"]
    return [
        {
            "epoch": e["epoch"],
            "step": e["step"],
            "score": SCORE_SCALE * e["metrics"][metric],
            "train_loss": e["train_loss"],
            "metric": metric,
        }
        for e in record["evaluations"]
    ]


def _reused_stage_one(record: dict) -> str | None:
    stage = record.get("stage_one")
    return stage["run_id"] if stage and stage.get("source", "").startswith("saved") else None
