"""Run records -> tidy tables and the main comparison figure (what the aggregation notebook calls)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tinyattn.analysis import stats
from tinyattn.records import RUNS_DIR
from tinyattn.study.rows import (  # noqa: F401  (load_records, evaluation_rows: re-exported for the notebooks)
    SCORE_SCALE,
    done_records,
    evaluation_rows,
    load_records,
)


def learning_curves(
    runs_dir: str | Path = RUNS_DIR, run_ids: set[str] | None = None
) -> pd.DataFrame:
    """Every evaluation of every finished run (optionally only the given run ids), one row each."""
    rows = [
        {
            "run_id": record["run_id"],
            "task": record["task"],
            "method": record["params"].get("label") or record["method"],
            "seed": record["seed"],
            **row,
        }
        for record in done_records(runs_dir, run_ids)
        for row in evaluation_rows(record)
    ]
    return pd.DataFrame(rows)


def late_gain(curves: pd.DataFrame) -> pd.DataFrame:
    """Per task x method: how much the score still moved at the end of training, in points. ``gain``:
    the last evaluation minus the one before it (mean over seeds; half an epoch at two evaluations per
    epoch); ``from_best``: the last evaluation minus the run's best one (mean over seeds; 0 when the
    run ended at its best). A large gain says the budget stopped a method while it was still learning."""
    ordered = curves.sort_values("step")
    per_run = ordered.groupby(["task", "method", "seed"], sort=False)["score"].agg(
        last="last",
        before=lambda s: s.iloc[-2] if len(s) > 1 else np.nan,
        best="max",
    )
    per_run["gain"] = per_run["last"] - per_run["before"]
    per_run["from_best"] = per_run["last"] - per_run["best"]
    table = per_run.groupby(["task", "method"], sort=False)[["gain", "from_best"]].mean()
    return table.reset_index()


# The two selection protocols a run record supports (both columns of ``load_records``):
PROTOCOLS = {
    "score": "best dev checkpoint (the papers' protocol: selects on the dev set it reports)",
    "final_score": "end of training (nothing selected on the dev set)",
}


def summarise(runs: pd.DataFrame, score: str = "score") -> pd.DataFrame:
    """Per task x method: mean and std over seeds of a score column (``score``: best dev checkpoint;
    ``final_score``: end of training), n seeds, parameters, compute."""
    if score not in PROTOCOLS:
        raise ValueError(f"unknown score column {score!r}; choose one of {sorted(PROTOCOLS)}")
    grouped = runs.groupby(["task", "method"], sort=False)
    summary = grouped.agg(
        metric=("metric", "first"),
        mean=(score, "mean"),
        std=(score, "std"),
        n_seeds=("seed", "nunique"),
        adapter_params=("adapter_params", "first"),
        adapter_plus_head_params=("adapter_plus_head_params", "first"),
        adapter_percent=("adapter_percent", "first"),
        cpu_hours=("compute_seconds", lambda s: s.sum() / 3600),
    ).reset_index()
    summary["std"] = summary["std"].fillna(0.0)  # one seed: no spread to report
    return summary


def score_table(
    summary: pd.DataFrame, method_order: list[str] | None = None, cells: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Methods x tasks of "mean ± std" ("mean" alone for one seed; "—" where a run is missing), the
    number of seeds, and the average over tasks of the values the cells show (only for methods run on
    every task). ``cells`` (``stats.cell_summary`` of the same score): a bimodal cell shows its median,
    marked ‡, and so does an average that includes one."""
    tasks = list(dict.fromkeys(summary["task"]))
    bimodal = {} if cells is None else cells.set_index(["task", "method"])

    def is_bimodal(row) -> bool:
        key = (row["task"], row["method"])
        return key in getattr(bimodal, "index", ()) and bool(bimodal.loc[key, "bimodal"])

    flagged = summary.apply(is_bimodal, axis=1).astype(bool)
    medians = [
        bimodal.loc[(t, m), "median"] if f else np.nan
        for t, m, f in zip(summary["task"], summary["method"], flagged)
    ]
    values = summary.assign(median=flagged, shown=summary["mean"].where(~flagged, medians))

    def cell(row) -> str:  # a bimodal cell shows its median, marked
        if row["median"]:
            return f"{row['shown']:.1f} ‡"
        return f"{row['mean']:.1f}" + (f" ± {row['std']:.1f}" if row["n_seeds"] > 1 else "")

    cells = values.assign(cell=values.apply(cell, axis=1))
    table = cells.pivot(index="method", columns="task", values="cell")[tasks].fillna("—")
    means = values.pivot(index="method", columns="task", values="shown")[tasks]
    marked = values.pivot(index="method", columns="task", values="median")[tasks].fillna(False)
    table["avg"] = [
        "—" if pd.isna(v) else f"{v:.1f}" + (" ‡" if mark else "")
        for v, mark in zip(
            means.mean(axis=1).where(means.notna().all(axis=1)), marked.any(axis=1).astype(bool)
        )
    ]
    per_method = summary.groupby("method")
    params = per_method.agg(  # the head is largest for classification (STS-B's has one output)
        adapter_params=("adapter_params", "first"),
        adapter_plus_head_params=("adapter_plus_head_params", "max"),
        adapter_percent=("adapter_percent", "first"),
    )
    table.insert(0, "adapter params", params["adapter_params"].map(lambda v: f"{int(v):,}"))
    table.insert(1, "with head", params["adapter_plus_head_params"].map(lambda v: f"{int(v):,}"))
    table.insert(2, "% of backbone", params["adapter_percent"].map(lambda v: f"{v:.3f}"))
    table.insert(3, "seeds", per_method["n_seeds"].min())
    order = method_order or list(dict.fromkeys(summary["method"]))
    table = table.loc[[m for m in order if m in table.index]]
    return table.rename_axis(index=None, columns=None)


def below_probe(runs: pd.DataFrame, score: str = "final_score", probe: str = "head_only"):
    """Runs that scored below the linear probe on their task: the ``probe`` method's lowest seed.

    The probe trains the head alone on the frozen backbone, so an adapter run below every probe seed
    learned less than nothing added to the encoder; such a run (a collapse, a diverged seed) is kept in
    every mean, and this table names it. Columns: task, method, seed, the run's score, the probe's
    lowest and mean score. Empty where the probe has not run on a task.
    """
    columns = ["task", "method", "seed", score, "probe_min", "probe_mean"]
    probes = runs[runs["method"] == probe].groupby("task")[score].agg(["min", "mean"])
    if probes.empty:
        return pd.DataFrame(columns=columns)
    probes = probes.rename(columns={"min": "probe_min", "mean": "probe_mean"})
    others = runs[runs["method"] != probe].join(probes, on="task", how="inner")
    low = others[others[score] < others["probe_min"]]
    return low[columns].sort_values(["task", "method", "seed"]).reset_index(drop=True)


def near_majority(
    runs: pd.DataFrame, majority: dict[str, float], score: str = "final_score", margin: float = 1.0
) -> pd.DataFrame:
    """Runs that ended no more than ``margin`` points above their task's majority-class score
    (``majority``: task -> score in points), i.e. that learned (next to) nothing from the inputs: a
    diverged or collapsed run. Kept in every mean; this table names them. Columns: task, method,
    seed, the run's score, the majority score."""
    columns = ["task", "method", "seed", score, "majority"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    known = runs[runs["task"].isin(list(majority))].copy()
    known["majority"] = known["task"].map(majority)
    low = known[known[score] <= known["majority"] + margin]
    return low[columns].sort_values(["task", "method", "seed"]).reset_index(drop=True)


def task_average(runs: pd.DataFrame, score: str = "score") -> pd.DataFrame:
    """Per method: the average over tasks, as mean ± std over seeds of each seed's task average.

    Only (method, seed) pairs that finished every task of the study count, so the average is never
    taken over a different set of tasks for different methods.
    """
    tasks = runs["task"].nunique()
    per_seed = runs.groupby(["method", "seed"], sort=False).agg(
        tasks=("task", "nunique"), average=(score, "mean")
    )
    per_seed = per_seed[per_seed["tasks"] == tasks].reset_index()
    out = per_seed.groupby("method", sort=False)["average"].agg(["mean", "std", "count"])
    return out.rename(columns={"count": "n_seeds"}).fillna({"std": 0.0}).reset_index()


def paired_comparison(
    runs: pd.DataFrame,
    reference: str,
    score: str = "score",
    *,
    exclude: pd.Series | None = None,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """The reference method minus each other method, paired on (task, seed): the declared analysis
    (``tinyattn.analysis.stats``) pooled over the pairs.

    For each other method: the number of (task, seed) pairs both finished, the mean and median
    difference in points, a percentile bootstrap interval of the mean (pairs resampled with
    replacement), the share of pairs the reference wins, and the exact sign test (``wins``,
    ``losses``, ``ties``, ``sign_p``). Positive: the reference scored higher. Holm's correction
    belongs to a claim's family of comparisons, so ``tinyattn.analysis.verdicts`` adds it (``stats.within_family``).
    ``exclude`` (booleans aligned with ``runs``, e.g. ``stats.collapsed``) drops every pair that
    holds a flagged run.
    """
    return stats.pooled_comparison(
        runs,
        reference,
        score=score,
        exclude=exclude,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )


def per_task_table(per_task: pd.DataFrame, method_order: list[str] | None = None) -> pd.DataFrame:
    """``stats.per_task_differences`` as methods x tasks, each cell "mean (low, high)" in points with
    its 95 % t interval, so the pooled comparison's source is visible task by task."""

    def cell(row) -> str:
        if pd.isna(row["ci_low"]):
            return f"{row['mean_difference']:+.1f}"
        return f"{row['mean_difference']:+.1f} ({row['ci_low']:.1f}, {row['ci_high']:.1f})"

    cells = per_task.assign(cell=per_task.apply(cell, axis=1))
    table = cells.pivot(index="method", columns="task", values="cell")
    table = table[list(dict.fromkeys(per_task["task"]))]
    order = method_order or list(dict.fromkeys(per_task["method"]))
    return table.reindex([m for m in order if m in table.index]).rename_axis(
        index=None, columns=None
    )


def results_table(runs: pd.DataFrame, majority: dict[str, float]) -> pd.DataFrame:
    """The main results, one row per task x method, as the chapters' downloadable CSV: metric, seeds,
    for each protocol (end of training, best dev checkpoint) the mean, std and median over seeds,
    the seeds that collapsed at the end of training (``stats.collapsed``), whether the cell is
    bimodal, and the adapter's deployed parameters and share of the backbone."""
    cells = stats.cell_summary(runs, majority, "final_score").set_index(["task", "method"])
    best = runs.groupby(["task", "method"], sort=False)["score"].agg(["mean", "std", "median"])
    first = runs.groupby(["task", "method"], sort=False).agg(
        metric=("metric", "first"),
        adapter_params=("adapter_params", "first"),
        adapter_percent=("adapter_percent", "first"),
    )
    table = pd.concat(
        [
            first["metric"],
            cells[["seeds", "mean", "std", "median", "collapsed", "bimodal"]].add_prefix("final_"),
            best.add_prefix("best_dev_"),
            first[["adapter_params", "adapter_percent"]],
        ],
        axis=1,
    )
    table = table.rename(
        columns={
            "final_seeds": "seeds",
            "final_collapsed": "collapsed_seeds",
            "final_bimodal": "bimodal",
        }
    )
    return table.reset_index()


def stage_one_selection(runs: pd.DataFrame) -> pd.DataFrame:
    """Every two-stage run that started from its one-expert twin's saved adapter, with the twin's best
    and last evaluation. The training loop ends a run by restoring its best dev evaluation, so the saved
    adapter is the twin's best dev checkpoint: ``selected`` marks the runs whose starting point was
    therefore chosen on the dev set (the twin's best evaluation was not its last), ``twin_gap`` how
    far the twin's best lay above its end (points)."""
    staged = runs[runs["stage_one_run_id"].notna()]
    twins = runs.set_index("run_id")[["best_step", "steps", "score", "final_score"]]
    table = staged[["run_id", "task", "method", "seed", "stage_one_run_id"]].join(
        twins.add_prefix("twin_"), on="stage_one_run_id", how="inner"
    )
    table["selected"] = table["twin_best_step"] != table["twin_steps"]
    table["twin_gap"] = table["twin_score"] - table["twin_final_score"]
    return table.reset_index(drop=True)


def compute_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method and device: runs finished, wall-clock hours in all (two-stage runs with their E = 1
    stage) and minutes per run, training throughput. Where each run had one CPU thread (the `cpu`
    study), hours are CPU-hours; on a GPU that ran several runs at once, they are hours of runs that
    shared it, not GPU-hours."""
    grouped = runs.groupby(["method", "device"], sort=False)
    table = grouped.agg(
        runs=("run_id", "count"),
        hours=("compute_seconds", lambda s: s.sum() / 3600),
        minutes_per_run=("compute_seconds", lambda s: s.mean() / 60),
        tokens_per_second=("tokens_per_second", "median"),
    )
    return table.reset_index()


def difference_to(summary: pd.DataFrame, reference: str, method_order: list[str] | None = None):
    """Each method's mean score minus the reference method's, per task (NaN where either is missing)."""
    means = summary.pivot(index="method", columns="task", values="mean")
    order = method_order or list(dict.fromkeys(summary["method"]))
    means = means.reindex([m for m in order if m in means.index])
    if reference not in means.index:
        raise ValueError(f"no finished run of the reference method {reference!r}")
    return means.sub(means.loc[reference], axis=1).rename_axis(index=None, columns=None)


def task_standing(summary: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per task: where the reference stands among the methods by mean score (rank 1 = best, ties share
    the better rank), how many methods ran, the methods ahead of it, and its gap to the best (points,
    zero when it is the best). Where the claim fails, by task."""
    rows = []
    for task, group in summary.groupby("task", sort=False):
        means = group.set_index("method")["mean"]
        if reference not in means.index:
            continue
        ahead = means[means > means[reference]].sort_values(ascending=False)
        rows.append(
            {
                "task": task,
                "rank": len(ahead) + 1,
                "methods": len(means),
                "best": means.idxmax(),
                "gap_to_best": float(means.max() - means[reference]),
                "ahead": ", ".join(ahead.index),
            }
        )
    if not rows:
        raise ValueError(f"no finished run of the reference method {reference!r}")
    return pd.DataFrame(rows)


def comparison_figure(summary: pd.DataFrame):
    """Score vs trainable parameters (% of the backbone, log scale), one panel per task."""
    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    methods = list(dict.fromkeys(summary["method"]))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, task in zip(axes[0], tasks):
        part = summary[summary["task"] == task]
        for _, row in part.iterrows():
            x = max(row["adapter_percent"], 1e-3)  # the linear probe has no adapter
            ax.errorbar(
                x,
                row["mean"],
                yerr=row["std"],
                fmt="o",
                color=colours[row["method"]],
                capsize=3,
                label=row["method"],
            )
        ax.set_xscale("log")
        ax.set(
            title=task,
            xlabel="trainable parameters outside the head (% of backbone)",
            ylabel=f"dev {part['metric'].iloc[0]} (×100)",
        )
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=min(len(labels), 6),
        frameon=False,
        bbox_to_anchor=(0.5, 1.08),
    )
    fig.tight_layout()
    return fig
