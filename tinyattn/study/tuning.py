"""The study's tuning protocol: each method's learning rate, chosen on held-out *training* data.

A tuning profile (``profiles/tune.yaml``) gives every method the same small grid of learning rates
(``learning_rates: [...]``) on the same tasks, one seed, with ``heldout_fraction`` set: each run trains on
the training set minus a stratified held-out slice and is evaluated on that slice, never on the dev set
that the study reports. The chosen rate of a method is the grid value with the highest held-out score at
the **end of training**, averaged over the tuning tasks (a tie goes to the smaller rate). A study
profile that names ``tuning: <profile>`` takes its learning rates from this choice: ``planned_runs``
expands it with them (``tinyattn.study.profiles.expand`` given the chosen rates).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tinyattn.experiment import RunParams
from tinyattn.records import RUNS_DIR, read_records, record_status
from tinyattn.study.profiles import as_profile, expand, load_profile, placeholder_rates
from tinyattn.study.rows import SCORE_SCALE, evaluation_rows


class TuningIncompleteError(ValueError):
    """A study asked for tuned learning rates before its tuning grid finished."""


def tuning_table(profile: str | Path | dict, out_dir: str = RUNS_DIR) -> pd.DataFrame:
    """One row per run of the tuning grid: label, learning rate, task, status, held-out scores."""
    profile = as_profile(profile)
    planned = expand(profile, None, out_dir)
    for params in planned:
        if params.heldout_fraction is None:
            raise ValueError(
                f"tuning profile {profile['name']!r} evaluates on the dev set: set heldout_fraction"
            )
    finished = {r["run_id"]: r for r in read_records(out_dir, run_ids=[p.run_id for p in planned])}
    rows = []
    for params in planned:
        record = finished.get(params.run_id)
        row = {
            "method": params.label,
            "learning_rate": params.learning_rate,
            "task": params.task,
            "seed": params.seed,
            "run_id": params.run_id,
            "status": "done" if record else _unfinished_status(params.run_id, out_dir),
            "final_score": float("nan"),
            "best_score": float("nan"),
        }
        if record:
            metric = record["select_metric"]
            row["metric"] = metric
            row["final_score"] = SCORE_SCALE * record["final"]["metrics"][metric]
            row["best_score"] = SCORE_SCALE * record["best"]["metrics"][metric]
            row["wall_seconds"] = record["wall_seconds"]
        rows.append(row)
    return pd.DataFrame(rows)


def _unfinished_status(run_id: str, out_dir: str) -> str:
    """``failed`` or ``pending`` for a run without a finished record."""
    return "failed" if record_status(run_id, out_dir) == "failed" else "pending"


def tuning_curves(profile: str | Path | dict, out_dir: str = RUNS_DIR) -> pd.DataFrame:
    """Every evaluation of every finished tuning run: its held-out score and training loss by epoch."""
    table = tuning_table(profile, out_dir)
    done = table[table["status"] == "done"]
    records = {r["run_id"]: r for r in read_records(out_dir, run_ids=done["run_id"])}
    rows = []
    for row in done.itertuples():
        for e in evaluation_rows(records[row.run_id]):
            e["heldout_score"] = e.pop("score")
            rows.append(
                {"method": row.method, "learning_rate": row.learning_rate, "task": row.task, **e}
            )
    return pd.DataFrame(rows)


def select_learning_rates(profile: str | Path | dict, out_dir: str = RUNS_DIR) -> dict[str, float]:
    """Each method's chosen learning rate; raises ``TuningIncompleteError`` until the grid is done."""
    name = profile["name"] if isinstance(profile, dict) else str(profile)
    table = tuning_table(profile, out_dir)
    missing = table[table["status"] != "done"]
    if not missing.empty:
        raise TuningIncompleteError(
            f"tuning profile {name!r} has {len(missing)} of {len(table)} runs not done "
            f"(e.g. {missing['run_id'].iloc[0]}: {missing['status'].iloc[0]}); "
            f"run `tinyattn study --profile {name}` first"
        )
    return {
        method: float(group["learning_rate"].iloc[0])
        for method, group in _mean_scores(table).groupby("method", sort=False)
    }


def learning_rates(
    profile: str | Path | dict, out_dir: str = RUNS_DIR, *, untuned_ok: bool = False
) -> dict[str, float] | None:
    """The learning rates a study profile takes from its ``tuning`` profile (None when it names
    none). Until that grid is done: ``TuningIncompleteError``, or with ``untuned_ok`` the middle of
    each method's grid as a placeholder (for planning only)."""
    profile = as_profile(profile)
    if "tuning" not in profile:
        return None
    try:
        return select_learning_rates(profile["tuning"], out_dir)
    except TuningIncompleteError:
        if not untuned_ok:
            raise
    return placeholder_rates(load_profile(profile["tuning"]))


def planned_runs(
    profile: str | Path | dict, out_dir: str = RUNS_DIR, *, untuned_ok: bool = False
) -> list[RunParams]:
    """Every run of a profile with its tuned learning rates (see ``learning_rates``)."""
    profile = as_profile(profile)
    return expand(profile, learning_rates(profile, out_dir, untuned_ok=untuned_ok), out_dir)


def _mean_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Per (method, rate): the held-out final score averaged over tasks, best rate first."""
    means = (
        table.groupby(["method", "learning_rate"], sort=False)["final_score"].mean().reset_index()
    )
    return means.sort_values(
        ["method", "final_score", "learning_rate"], ascending=[True, False, True]
    )


def selection_table(profile: str | Path | dict, out_dir: str = RUNS_DIR) -> pd.DataFrame:
    """Method x learning rate: held-out final score per task and their mean, the chosen rate marked,
    and whether the choice is the smallest or largest rate of the method's grid."""
    table = tuning_table(profile, out_dir)
    wide = table.pivot_table(
        index=["method", "learning_rate"], columns="task", values="final_score", sort=False
    )
    wide["mean"] = wide.mean(axis=1, skipna=False)  # only once every tuning task has its score
    finished = table.groupby("method")["status"].apply(lambda s: bool((s == "done").all()))
    best = _mean_scores(table).groupby("method").head(1)
    chosen = {
        (m, lr) for m, lr in zip(best["method"], best["learning_rate"], strict=True) if finished[m]
    }
    wide["chosen"] = [key in chosen for key in wide.index]
    grid = table.groupby("method")["learning_rate"].agg(["min", "max"])
    # a choice at the end of its grid: the best rate may lie outside the grid
    wide["at_grid_edge"] = [
        key in chosen and key[1] in (grid.loc[key[0], "min"], grid.loc[key[0], "max"])
        for key in wide.index
    ]
    order = {method: i for i, method in enumerate(dict.fromkeys(table["method"]))}
    return (
        wide.reset_index()
        .sort_values(
            ["method", "learning_rate"], key=lambda c: c.map(order) if c.name == "method" else c
        )
        .reset_index(drop=True)
    )
