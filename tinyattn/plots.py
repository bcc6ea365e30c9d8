"""Figures shared by the notebooks and the book."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def learning_curve(record: dict):
    """Training loss and the selection metric at every evaluation of one run."""
    rows = [
        {"step": e["step"], "train_loss": e["train_loss"], **e["metrics"]}
        for e in record["evaluations"]
    ]
    frame = pd.DataFrame(rows)
    metric = record["select_metric"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(frame["step"], frame["train_loss"], marker="o")
    left.set(xlabel="step", ylabel="training loss (since the last evaluation)")
    right.plot(frame["step"], frame[metric], marker="o", color="tab:green")
    best = record["best"]
    right.axvline(best["step"], color="grey", linestyle=":", label=f"best (step {best['step']})")
    right.set(xlabel="step", ylabel=f"dev {metric}")
    right.legend()
    params = record.get("params", {})
    fig.suptitle(
        f"{record.get('task')} · {params.get('label') or record.get('method')} · "
        f"seed {record.get('seed')}"
    )
    fig.tight_layout()
    return fig


def tuning_curves_figure(curves: pd.DataFrame, task: str, methods: list[str]):
    """One panel per method: held-out score (solid) by epoch at each learning rate of its grid."""
    import seaborn as sns

    part = curves[curves["task"] == task].copy()
    part["rate"] = part["learning_rate"].map(lambda v: f"{v:.0e}")
    order = [m for m in methods if m in set(part["method"])]
    grid = sns.relplot(
        data=part,
        x="epoch",
        y="heldout_score",
        hue="rate",
        col="method",
        col_order=order,
        col_wrap=min(5, max(1, len(order))),
        kind="line",
        marker="o",
        height=2.3,
        aspect=1.15,
        facet_kws={"sharey": True},
        palette="viridis",
    )
    grid.set_titles("{col_name}")
    grid.set_axis_labels("epoch", f"held-out {part['metric'].iloc[0]} (×100)")
    grid.figure.suptitle(f"{task}: learning curves of the tuning grid", y=1.03)
    return grid.figure


def ablation_sweep_figure(summary: pd.DataFrame, x_of: dict[str, float], xlabel: str):
    """Mean ± std over seeds against one varied setting (methods mapped to x by ``x_of``), per task."""
    part = summary[summary["method"].isin(list(x_of))].assign(x=lambda f: f["method"].map(x_of))
    tasks = list(dict.fromkeys(part["task"]))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.2 * max(1, len(tasks)), 3.3))
    for ax, task in zip(getattr(axes, "flat", [axes]), tasks):
        rows = part[part["task"] == task].sort_values("x")
        ax.errorbar(rows["x"], rows["mean"], yerr=rows["std"], marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(x_of.values()), [f"{v:g}" for v in sorted(x_of.values())])
        ax.set(title=task, xlabel=xlabel, ylabel=f"dev {rows['metric'].iloc[0]} (×100)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def study_curves_figure(curves: pd.DataFrame, methods: list[str]):
    """One panel per task: dev score by epoch, per method the mean over its seeds."""
    import seaborn as sns

    order = [m for m in methods if m in set(curves["method"])]
    tasks = list(dict.fromkeys(curves["task"]))
    grid = sns.relplot(
        data=curves,
        x="epoch",
        y="score",
        hue="method",
        hue_order=order,
        col="task",
        col_order=tasks,
        col_wrap=min(3, max(1, len(tasks))),
        kind="line",
        errorbar=None,
        marker="o",
        markersize=4,
        height=2.8,
        aspect=1.2,
        facet_kws={"sharey": False, "sharex": False},
        palette="tab20",
    )
    for task, ax in zip(tasks, grid.axes.flat):
        metric = curves.loc[curves["task"] == task, "metric"].iloc[0]
        ax.set(title=task, ylabel=f"dev {metric} (×100)")
        ax.grid(alpha=0.3)
    return grid.figure
