"""Heads as experts (the paper's claim C2): one trained E > 1 tiny-attention run, loaded for analysis,
and the reports the analysis writes.

The analysis is split by job; ``notebooks/experts.ipynb`` calls them in turn:

- ``experts`` (this module): find and load a run (its record, trained model, starting model and
  evaluation data, all through ``records`` and ``experiment``), and write / collect the reports;
- ``expert_stats``: what each expert attends to, and how alike a layer's experts are;
- ``deployment``: the deployment variants (weight-averaged, as trained, ensembles, single experts),
  scored and timed;
- ``plots``: the figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from tinyattn.analysis.aggregate import paired_comparison
from tinyattn.analysis.expert_stats import adapters_of, similarity_summary
from tinyattn.checkpoint import CONFIG_FILE, load_adapter
from tinyattn.data import EncodedDataset, get_task
from tinyattn.experiment import RunParams, eval_data, initial_model
from tinyattn.model import EncoderClassifier
from tinyattn.records import (
    RUNS_DIR,
    adapter_dir,
    read_records,
    read_reports,
    read_run,
    write_json_atomic,
)


# ----------------------------------------------------------------------------- loading a run
@dataclass
class ExpertRun:
    """A trained E > 1 tiny-attention run: its record, the trained model and the model it started from."""

    record: dict
    model: EncoderClassifier
    # the model as training started: stage-one copies (+ noise), or the seeded random init
    initial: EncoderClassifier | None = None

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    @property
    def experts(self) -> int:
        return adapters_of(self.model).config.experts

    @property
    def two_stage(self) -> bool:
        return bool(self.record["params"].get("two_stage"))


def _has_adapter(run_id: str, runs_dir: str | Path) -> bool:
    return (adapter_dir(run_id, runs_dir) / CONFIG_FILE).is_file()


def _is_expert_run(record: dict) -> bool:
    params = record.get("params", {})
    experts = params.get("method_options", {}).get("experts", 1)
    return params.get("method") == "tinyattn" and experts > 1


def find_expert_runs(runs_dir: str | Path = RUNS_DIR, task: str | None = None) -> pd.DataFrame:
    """Finished tiny-attention runs with E > 1 in ``runs_dir``, and whether their adapter was saved."""
    name = None if task is None else get_task(task).name
    records = read_records(
        runs_dir, where=lambda r: _is_expert_run(r) and name in (None, r.get("task"))
    )
    rows = [
        {
            "run_id": r["run_id"],
            "task": r.get("task"),
            "experts": r["params"]["method_options"]["experts"],
            "two_stage": bool(r["params"].get("two_stage")),
            "seed": r["params"].get("seed"),
            "adapter_saved": _has_adapter(r["run_id"], runs_dir),
            "best": r.get("best", {}).get("metrics", {}).get(r.get("select_metric")),
        }
        for r in records
    ]
    columns = ["run_id", "task", "experts", "two_stage", "seed", "adapter_saved", "best"]
    return pd.DataFrame(rows, columns=columns)


def choose_run(candidates: pd.DataFrame, task: str, runs_dir: str | Path = RUNS_DIR) -> str:
    """The first two-stage run with a saved adapter among ``find_expert_runs``' ``candidates``."""
    usable = candidates[candidates["adapter_saved"] & candidates["two_stage"]]
    if usable.empty:
        raise RuntimeError(
            f"no finished two-stage E > 1 tinyattn run of {task!r} with a saved adapter in "
            f"{runs_dir}; train one with save_adapter=True"
        )
    return str(usable["run_id"].iloc[0])


def load_trained(record: dict, runs_dir: str | Path = RUNS_DIR) -> EncoderClassifier:
    """The trained model of an E > 1 tiny-attention run, rebuilt from its saved adapter."""
    folder = adapter_dir(record["run_id"], runs_dir)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"run {record['run_id']}: no saved adapter folder {folder} (the trained experts); train "
            "the run with save_adapter=True (tinyattn train --save-adapter, or save_adapter: true in "
            "its profile)"
        )
    model = load_adapter(folder)
    if model.method != "tinyattn" or adapters_of(model).config.experts < 2:
        raise ValueError(f"run {record['run_id']}: expert analysis needs a tinyattn run with E > 1")
    return model.eval()


def load_initial(record: dict, runs_dir: str | Path = RUNS_DIR) -> EncoderClassifier:
    """The run's model as training started (``experiment.initial_model``), the E = 1 twin's saved
    adapter read from ``runs_dir`` for a two-stage run."""
    return initial_model(RunParams.from_dict(record["params"]), runs_dir).eval()


def load_run(
    run_id: str,
    runs_dir: str | Path = RUNS_DIR,
    *,
    task: str | None = None,
    initial: bool = True,
    device: str | None = None,
) -> ExpertRun:
    """Record, trained model and (``initial=True``) starting model of an E > 1 tiny-attention run;
    with ``task``, an error unless the run is of that task."""
    record = read_run(run_id, runs_dir)
    if task is not None and record["task"] != get_task(task).name:
        raise ValueError(f"run {run_id} is a {record['task']} run, not {task}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_trained(record, runs_dir).to(device)
    start = load_initial(record, runs_dir).to(device) if initial else None
    return ExpertRun(record, model, start)


def load_beside(run_id: str, main: ExpertRun, runs_dir: str | Path = RUNS_DIR) -> ExpertRun:
    """Another run to compare with ``main`` on the same data: an error unless its task, backbone and
    maximum length are ``main``'s."""
    other = load_run(run_id, runs_dir)
    same = ("task", "backbone", "max_length")
    if [other.record["params"][k] for k in same] != [main.record["params"][k] for k in same]:
        raise ValueError(f"{run_id} differs from {main.run_id} in task, backbone or max_length")
    return other


def dev_data(
    record: dict, data_dir: str | Path | None = None, max_eval_samples: int | None = None
) -> tuple[EncodedDataset, object]:
    """The run's evaluation data encoded as the run encoded it (``experiment.eval_data``; a number
    ``max_eval_samples`` caps it, with the run's seed), and the tokenizer."""
    return eval_data(RunParams.from_dict(record["params"]), data_dir, max_eval_samples)


# ----------------------------------------------------------------------------- reports
def run_tables(run: ExpertRun, similarity, singles, variants) -> dict:
    """What a report holds for one analysed run: its similarities and deployment variants."""
    return {
        "run_id": run.run_id,
        "two_stage": run.two_stage,
        "similarity_summary": similarity_summary(similarity),
        "similarity": similarity,
        "single_experts": singles,
        "variants": variants,
    }


def report_payload(
    run: ExpertRun,
    eval_examples: int,
    stats,
    similarity,
    singles,
    variants,
    independent: dict | None = None,
) -> dict:
    """The report of ``run``: its record's summary, ``run_tables`` and the attention statistics, and
    under ``independent`` the ``run_tables`` of a run with independently initialised experts."""
    return {
        **run_tables(run, similarity, singles, variants),
        "task": run.record["task"],
        "experts": run.experts,
        "stage_one": run.record.get("stage_one"),
        "eval_examples": eval_examples,
        "record_best": run.record["best"],
        "attention_stats": stats,
        "independent": independent,
    }


def _records(value):
    """DataFrames (and nested dicts/lists of them) as JSON-ready lists of rows, NaN as None."""
    if isinstance(value, pd.DataFrame):
        return json.loads(value.to_json(orient="records"))
    if isinstance(value, dict):
        return {k: _records(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_records(v) for v in value]
    return value


def write_report(
    out_dir: str | Path, run_id: str, payload: dict, figures: dict | None = None
) -> Path:
    """Write ``<out_dir>/<run_id>.json``: ``payload`` (DataFrames as lists of rows) and, under
    ``figures``, the file names of the saved figures (name -> path, as ``plots.save_figure`` returns)."""
    names = {name: Path(path).name for name, path in (figures or {}).items()}
    payload = {**_records(payload), "figures": names}
    return write_json_atomic(Path(out_dir) / f"{run_id}.json", payload)


def collect_reports(
    analysis_dir: str | Path, run_ids: set[str] | None = None
) -> dict[str, pd.DataFrame]:
    """Every report in ``analysis_dir`` (or those of ``run_ids``) as three tidy tables, each row
    tagged with the report's run id, task and the experts' initialisation ("two-stage" or
    "independent"): ``variants`` (score ×100 in ``score``), ``similarity`` (the per-layer summary)
    and ``attention`` (the per-layer, per-expert statistics of the report's main run)."""
    tables: dict[str, list[pd.DataFrame]] = {"variants": [], "similarity": [], "attention": []}
    for report in read_reports(analysis_dir, run_ids):
        metric = get_task(report["task"]).metric
        parts = [report] + ([report["independent"]] if report.get("independent") else [])
        for part in parts:
            init = "two-stage" if part.get("two_stage") else "independent"
            tag = {"run_id": part["run_id"], "task": report["task"], "init": init}
            variants = pd.DataFrame(part["variants"]).assign(**tag)
            variants["score"] = 100.0 * variants[metric]
            tables["variants"].append(variants)
            tables["similarity"].append(pd.DataFrame(part["similarity_summary"]).assign(**tag))
        init = "two-stage" if report.get("two_stage") else "independent"
        tag = {"run_id": report["run_id"], "task": report["task"], "init": init}
        tables["attention"].append(pd.DataFrame(report["attention_stats"]).assign(**tag))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in tables.items()}


def deployment_scores(variants: pd.DataFrame, init: str = "two-stage") -> pd.DataFrame:
    """Each analysed run's score (points) under each deployment: one row per (task, run id), one
    column per variant (``trained_form``, ``averaged``, ...). ``variants``:
    ``collect_reports(...)["variants"]``; ``init``: ``"two-stage"`` or ``"independent"``."""
    part = variants[variants["init"] == init] if not variants.empty else variants
    if part.empty:
        return pd.DataFrame()
    return part.pivot_table(
        index=["task", "run_id"], columns="variant", values="score", aggfunc="first"
    )


def deployment_comparison(variants: pd.DataFrame, init: str = "two-stage") -> pd.DataFrame:
    """The experts as trained (``trained_form``) minus each other deployment, paired on the analysed
    run, with a 95 % bootstrap interval: ``paired_comparison`` with runs in place of (task, seed).
    ``variants``: ``collect_reports(...)["variants"]``; ``init``: ``"two-stage"`` or ``"independent"``."""
    scores = deployment_scores(variants, init)
    if "trained_form" not in scores.columns:
        return pd.DataFrame()
    runs = (
        scores.rename_axis(columns="method")
        .stack()
        .rename("score")
        .reset_index()
        .rename(columns={"run_id": "seed"})
    )
    return paired_comparison(runs, "trained_form", "score")
