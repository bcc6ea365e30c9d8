"""What the book needs to know about the GLUE and FewGLUE data, recorded with the results.

The chapters quote each task's split sizes and judge collapsed runs against its majority-class score
(the score of always predicting the most frequent training label, or the training mean for STS-B);
the few-shot chapter reads its floors (chance, the evaluation set's majority class) from the label
counts of the few-shot tasks' evaluation split (the SuperGLUE validation set). All of it comes from
the data files, which a reader of the repository may not have: so they are counted once, by
``write_summary`` (``python -m tinyattn.analysis.datasets_summary``, or ``make datasets-summary``),
into ``results/summary/datasets.json``, and the chapters read that file (``load_summary``,
``majority_scores``, ``split_sizes``, ``label_counts``). The book then builds from ``results/`` alone,
offline.

The file says how it was made: the data source (local GLUE files or the Hub, never a machine path),
the package versions and the git commit.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tinyattn.data import GLUE_TASKS, HUB_DATASET, get_task, load_glue_task, resolve_data_dir
from tinyattn.fewglue import HUB_FEWGLUE, HUB_SUPERGLUE
from tinyattn.metrics import main_metric, majority_baseline
from tinyattn.records import git_commit, versions, write_json_atomic
from tinyattn.tasks import FEWSHOT_TASKS

REPO = Path(__file__).resolve().parents[2]
SUMMARY_FILE = REPO / "results" / "summary" / "datasets.json"
SPLITS = ("train", "validation")
FORMAT = 1  # the file's layout version


class SummaryMissingError(FileNotFoundError):
    """The datasets summary is absent or unusable; the message says how to write it."""


def glue_task_names() -> list[str]:
    """The GLUE tasks the library knows (FewGLUE tasks have their own files and are not counted)."""
    return [name for name, spec in GLUE_TASKS.items() if getattr(spec, "source", "glue") == "glue"]


def summary_task_names() -> list[str]:
    """The tasks the summary counts by default: every GLUE task, then the few-shot tasks (FewGLUE's
    32 training examples, the SuperGLUE validation set as their evaluation split)."""
    return glue_task_names() + list(FEWSHOT_TASKS)


def _label_counts(labels: list) -> dict[str, int]:
    return {str(label): n for label, n in sorted(Counter(labels).items())}


def summarise_task(task: str, data_dir: str | Path | None = None) -> dict[str, Any]:
    """One task: its metric, the size of each split found, the label counts of classification
    splits, and the majority-class (STS-B: training-mean) predictor's dev score on the task's main
    metric, as a fraction (``metrics.majority_baseline``). A split without a local file is ``None``
    (its reason under ``missing``); the majority score needs both splits."""
    spec = get_task(task)
    labels: dict[str, list | None] = {}
    missing: dict[str, str] = {}
    for split in SPLITS:
        try:
            labels[split] = [row["label"] for row in load_glue_task(spec.name, split, data_dir)]
        except FileNotFoundError as err:
            labels[split], missing[split] = None, str(err).split(":")[0]
    entry: dict[str, Any] = {
        "metric": main_metric(spec),
        "sizes": {split: None if rows is None else len(rows) for split, rows in labels.items()},
        "majority_score": None,
    }
    if not spec.is_regression:
        entry["label_counts"] = {
            split: None if rows is None else _label_counts(rows) for split, rows in labels.items()
        }
    if labels["train"] is not None and labels["validation"] is not None:
        entry["majority_score"] = majority_baseline(spec, labels["train"], labels["validation"])[
            main_metric(spec)
        ]
    if missing:
        entry["missing"] = missing
    return entry


def summarise(tasks: list[str] | None = None, data_dir: str | Path | None = None) -> dict:
    """The datasets summary for ``tasks`` (default: every GLUE and few-shot task), with how it was
    made."""
    folder = resolve_data_dir(data_dir)
    names = [get_task(t).name for t in (tasks or summary_task_names())]
    few = any(get_task(name).source == "fewglue" for name in names)
    hubs = f"{HUB_DATASET}; {HUB_FEWGLUE}, {HUB_SUPERGLUE}" if few else HUB_DATASET
    local = "local GLUE and FewGLUE files" if few else "local GLUE files"
    return {
        "format": FORMAT,
        "source": local if folder is not None else f"Hugging Face Hub ({hubs})",
        "written": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {
            k: v for k, v in versions().items() if k in ("python", "tinyattn", "datasets")
        },
        "git": {k: v for k, v in git_commit().items() if k in ("commit", "dirty")},
        "tasks": {name: summarise_task(name, folder) for name in names},
    }


def write_summary(
    path: str | Path = SUMMARY_FILE,
    tasks: list[str] | None = None,
    data_dir: str | Path | None = None,
) -> Path:
    """Count the data and write the summary (atomically) to ``path``."""
    return write_json_atomic(path, summarise(tasks, data_dir))


def load_summary(path: str | Path = SUMMARY_FILE) -> dict:
    """The recorded summary; a missing or malformed file is an error naming it and the fix."""
    import json

    path = Path(path)
    fix = "write it with `python -m tinyattn.analysis.datasets_summary` (needs the GLUE data)"
    if not path.is_file():
        raise SummaryMissingError(f"no datasets summary at {path}: {fix}")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SummaryMissingError(f"{path} is not valid JSON ({err.msg}): {fix}") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT or "tasks" not in summary:
        raise SummaryMissingError(f"{path} is not a format-{FORMAT} datasets summary: {fix}")
    return summary


def _task_entry(summary: dict, task: str, path: str | Path) -> dict:
    name = get_task(task).name
    if name not in summary["tasks"]:
        raise KeyError(f"task {name!r} is not in the datasets summary {path}; rewrite it")
    return summary["tasks"][name]


def majority_scores(tasks=None, path: str | Path = SUMMARY_FILE) -> dict[str, float]:
    """Task -> the majority-class predictor's dev score in points (×100, the chapters' scale), for
    ``tasks`` (default: every task of the summary that has one). A requested task without a recorded
    score is an error."""
    summary = load_summary(path)
    names = list(summary["tasks"]) if tasks is None else [get_task(t).name for t in tasks]
    scores = {}
    for name in names:
        value = _task_entry(summary, name, path)["majority_score"]
        if value is None and tasks is not None:
            raise KeyError(f"the datasets summary {path} has no majority score for {name!r}")
        if value is not None:
            scores[name] = 100.0 * float(value)
    return scores


def split_sizes(tasks=None, path: str | Path = SUMMARY_FILE) -> pd.DataFrame:
    """Per task (rows, in the order given): train and dev examples, the metric, and the
    majority-class dev score in points; ``NaN`` where a split was not counted."""
    summary = load_summary(path)
    names = list(summary["tasks"]) if tasks is None else [get_task(t).name for t in tasks]
    rows = []
    for name in names:
        entry = _task_entry(summary, name, path)
        majority = entry["majority_score"]
        rows.append(
            {
                "task": name,
                "train": entry["sizes"]["train"],
                "dev": entry["sizes"]["validation"],
                "metric": entry["metric"],
                "majority": np.nan if majority is None else round(100.0 * majority, 1),
            }
        )
    table = pd.DataFrame(rows).set_index("task")
    return table.astype({"train": "Int64", "dev": "Int64"})


def label_counts(
    tasks, split: str = "validation", path: str | Path = SUMMARY_FILE
) -> dict[str, dict[int, int]]:
    """Task -> {class id: examples} of one split (default: the evaluation split, ``validation``; for
    a few-shot task the SuperGLUE validation set), as recorded, for the classification ``tasks`` given.
    A task whose split was not counted is an error."""
    summary = load_summary(path)
    counts = {}
    for task in tasks:
        name = get_task(task).name
        recorded = (_task_entry(summary, name, path).get("label_counts") or {}).get(split)
        if not recorded:
            raise KeyError(f"the datasets summary {path} has no {split} label counts for {name!r}")
        counts[name] = {int(label): int(n) for label, n in recorded.items()}
    return counts


def check_summary(data_dir: str | Path | None = None, path: str | Path = SUMMARY_FILE) -> list[str]:
    """The differences between the recorded summary and the data as it is now (empty: in step)."""
    recorded = load_summary(path)["tasks"]
    problems = []
    for name, entry in recorded.items():
        now = summarise_task(name, data_dir)
        for key in ("sizes", "majority_score", "label_counts"):
            if now.get(key) != entry.get(key):
                problems.append(f"{name}: {key} recorded {entry.get(key)}, now {now.get(key)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyattn.analysis.datasets_summary",
        description="Count the GLUE and few-shot splits, their labels and the majority-class "
        "scores the book quotes, into results/summary/datasets.json.",
    )
    parser.add_argument(
        "--data-dir", help="local GLUE folder (default: $TINYATTN_DATA_DIR, else the Hub)"
    )
    parser.add_argument(
        "--tasks", nargs="+", help="tasks (default: every GLUE task and the few-shot tasks)"
    )
    parser.add_argument("--out", default=str(SUMMARY_FILE), help="where to write the summary")
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare the recorded file with the data; write nothing",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check_summary(args.data_dir, args.out)
        print("\n".join(problems) or f"{args.out} matches the data")
        return 1 if problems else 0
    print(f"wrote {write_summary(args.out, args.tasks, args.data_dir)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = [
    "SUMMARY_FILE",
    "SummaryMissingError",
    "check_summary",
    "glue_task_names",
    "label_counts",
    "load_summary",
    "majority_scores",
    "split_sizes",
    "summarise",
    "summarise_task",
    "summary_task_names",
    "write_summary",
]
