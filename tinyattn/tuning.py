"""The study's tuning protocol: each method's learning rate, chosen on held-out *training* data.

A tuning profile (``profiles/tune.yaml``) gives every method the same small grid of learning rates
(``learning_rates: [...]``) on the same tasks, one seed, with ``heldout_fraction`` set: each run trains on
the training set minus a stratified held-out slice and is evaluated on that slice, never on the dev set
that the study reports. The chosen rate of a method is the grid value with the highest held-out score at
the **end of training**, averaged over the tuning tasks (a tie goes to the smaller rate). A study
profile that names ``tuning: <profile>`` takes its learning rates from this choice.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tinyattn.aggregate import SCORE_SCALE, evaluation_rows
from tinyattn.records import CorruptRecordError, read_record


class TuningIncompleteError(ValueError):
    """A study asked for tuned learning rates before its tuning grid finished."""


def tuning_table(profile_name: str, out_dir: str = "results/runs") -> pd.DataFrame:
    """One row per run of the tuning grid: label, learning rate, task, status, held-out scores."""
    from tinyattn.study import expand, load_profile  # the study module imports this one

    profile = load_profile(profile_name)
    rows = []
    for params in expand(profile, out_dir):
        if params.heldout_fraction is None:
            raise ValueError(
                f"tuning profile {profile['name']!r} evaluates on the dev set: set heldout_fraction"
            )
        path = Path(params.out_dir) / f"{params.run_id}.json"
        row = {
            "method": params.label,
            "learning_rate": params.learning_rate,
            "task": params.task,
            "seed": params.seed,
            "run_id": params.run_id,
            "status": "pending",
            "final_score": float("nan"),
            "best_score": float("nan"),
        }
        if path.exists():
            try:
                record = read_record(path)
            except CorruptRecordError:
                record = {"status": "failed"}
            row["status"] = record["status"]
            if record["status"] == "done":
                metric = record["select_metric"]
                row["metric"] = metric
                row["final_score"] = SCORE_SCALE * record["final"]["metrics"][metric]
                row["best_score"] = SCORE_SCALE * record["best"]["metrics"][metric]
                row["wall_seconds"] = record["wall_seconds"]
        rows.append(row)
    return pd.DataFrame(rows)


def tuning_curves(profile_name: str, out_dir: str = "results/runs") -> pd.DataFrame:
    """Every evaluation of every finished tuning run: its held-out score and training loss by epoch."""
    rows = []
    for row in tuning_table(profile_name, out_dir).itertuples():
        if row.status != "done":
            continue
        record = read_record(Path(out_dir) / f"{row.run_id}.json")
        for e in evaluation_rows(record):
            e["heldout_score"] = e.pop("score")
            rows.append(
                {"method": row.method, "learning_rate": row.learning_rate, "task": row.task, **e}
            )
    return pd.DataFrame(rows)


def select_learning_rates(profile_name: str, out_dir: str = "results/runs") -> dict[str, float]:
    """Each method's chosen learning rate; raises ``TuningIncompleteError`` until the grid is done."""
    table = tuning_table(profile_name, out_dir)
    missing = table[table["status"] != "done"]
    if not missing.empty:
        raise TuningIncompleteError(
            f"tuning profile {profile_name!r} has {len(missing)} of {len(table)} runs not done "
            f"(e.g. {missing['run_id'].iloc[0]}: {missing['status'].iloc[0]}); "
            f"run `tinyattn study --profile {profile_name}` first"
        )
    return {
        method: float(group["learning_rate"].iloc[0])
        for method, group in _mean_scores(table).groupby("method", sort=False)
    }


def _mean_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Per (method, rate): the held-out final score averaged over tasks, best rate first."""
    means = (
        table.groupby(["method", "learning_rate"], sort=False)["final_score"].mean().reset_index()
    )
    return means.sort_values(
        ["method", "final_score", "learning_rate"], ascending=[True, False, True]
    )


def selection_table(profile_name: str, out_dir: str = "results/runs") -> pd.DataFrame:
    """Method x learning rate: held-out final score per task and their mean, the chosen rate marked,
    and whether the choice is the smallest or largest rate of the method's grid."""
    table = tuning_table(profile_name, out_dir)
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
