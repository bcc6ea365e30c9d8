"""Figures shared by the notebooks and the book: a run's learning curve, the tuning grid's and the
study's curves, ablation sweeps, and the experts analysis' attention maps, statistics and similarities."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
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


def score_against_parameters(
    runs: pd.DataFrame,
    *,
    score: str = "final_score",
    highlight: tuple[str, ...] = (),
    per_task: bool = False,
    claim: str | None = None,
    title: str = "",
):
    """Each method's dev score against its trainable parameters at deployment (adapter + head, log
    axis): one dot per seed, the mean over seeds as a bar; ``highlight`` in colour, the rest grey.

    ``per_task=False``: one panel, each seed's average over the tasks (only seeds that finished every
    task of ``runs``, so no average is over other tasks); ``True``: one panel per task. Methods with
    equal counts are spread sideways a little so that their dots do not hide each other. ``claim``:
    the paper's claim, drawn as a dashed line at the best non-highlighted mean (what a highlighted
    method must beat), with this text as its label."""
    columns = ["task", "method", "seed", "metric", score, "adapter_plus_head_params"]
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise ValueError(f"runs lack column(s) {missing} (expected aggregate.load_records rows)")
    frame = runs[columns].rename(columns={score: "value", "adapter_plus_head_params": "params"})
    if per_task:
        panels = {t: part for t, part in frame.groupby("task", sort=False)}
    else:
        n_tasks = frame["task"].nunique()
        seeds = frame.groupby(["method", "seed"], sort=False).agg(
            tasks=("task", "nunique"), value=("value", "mean"), params=("params", "first")
        )
        panels = {f"average over {n_tasks} tasks": seeds[seeds["tasks"] == n_tasks].reset_index()}
    if not any(len(p) for p in panels.values()):
        raise ValueError("no method finished every task for any seed: nothing to draw")
    width = 4.2 * len(panels) if per_task else 8.0
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.6), squeeze=False)
    for ax, (name, part) in zip(axes.flat, panels.items()):
        means = part.groupby("method", sort=False).agg(
            value=("value", "mean"), params=("params", "first")
        )
        # methods with the same count side by side (a factor 10^0.06 apart on the log axis)
        shift = (
            means.groupby("params").cumcount()
            - (means.groupby("params")["value"].transform("size") - 1) / 2
        )
        means["x"] = means["params"] * 10 ** (0.06 * shift)
        # labels: nudged upwards where two of them, close on the x axis, would overlap
        gap = 0.04 * (part["value"].max() - part["value"].min() or 1.0)
        placed: list[tuple[float, float]] = []
        for method, row in means.sort_values("value").iterrows():
            y, log_x = row["value"], np.log10(row["x"])
            for other_x, other_y in placed:
                if abs(log_x - other_x) < 0.6 and y < other_y + gap:
                    y = other_y + gap
            placed.append((log_x, y))
            means.loc[method, "label_y"] = y
        for method, row in means.iterrows():
            focus = method in highlight
            colour = f"C{highlight.index(method) % 10}" if focus else "0.55"
            values = part.loc[part["method"] == method, "value"]
            ax.scatter(
                [row["x"]] * len(values),
                values,
                s=22 if focus else 14,
                color=colour,
                alpha=0.75,
                zorder=3 if focus else 2,
                linewidths=0,
            )
            ax.plot(
                [row["x"] / 1.12, row["x"] * 1.12],
                [row["value"]] * 2,
                color=colour,
                lw=3 if focus else 2,
                zorder=4,
            )
            ax.annotate(
                method,
                (row["x"] * 1.14, row["label_y"]),
                fontsize=8 if focus else 7,
                va="center",
                color="black" if focus else "0.35",
                fontweight="bold" if focus else "normal",
            )
        others = means.loc[[m not in highlight for m in means.index], "value"]
        if claim and not others.empty:
            ax.axhline(others.max(), color="C3", ls="--", lw=1, zorder=1)
            ax.annotate(
                claim,
                (0.01, others.max()),
                xycoords=("axes fraction", "data"),
                xytext=(0, 3),
                textcoords="offset points",
                fontsize=7.5,
                color="C3",
                va="bottom",
            )
            low, high = ax.get_ylim()  # room above the line for the claim's text
            room = 0.05 * (high - low) * (claim.count("\n") + 2)
            ax.set_ylim(low, max(high, others.max()) + room)
        ax.set_xscale("log")
        ax.set_xlim(means["x"].min() / 2.5, means["x"].max() * 8)
        metric = part["metric"].iloc[0] if per_task else "GLUE metric"
        ax.set(title=name, ylabel=f"dev {metric} (×100), end of training")
        ax.grid(alpha=0.3, which="major")
    fig.supxlabel("trainable parameters at deployment (adapter + head, log scale)", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def cost_ratio_figure(bench: dict):
    """Three panels from one ``tinyattn bench`` file: inference time per pass × the backbone's, a
    training step's time × LoRA's (both the median of per-round ratios, bars to the quartiles), and a
    training step's memory beyond the weights (MB). Tiny-attention rows in colour; a line at 1."""
    panels = [
        ("paired_inference_ratio", "inference × backbone (median, quartiles)", 1.0),
        ("paired_train_step_ratio", "training step × LoRA (median, quartiles)", 1.0),
        ("peak_memory_mb", "training memory beyond the weights (MB)", None),
    ]
    missing = [key for key, _, _ in panels if key not in bench]
    if missing:
        raise ValueError(f"the benchmark lacks {missing} (written by an older `tinyattn bench`?)")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, (key, label, reference) in zip(axes, panels):
        values = bench[key]
        methods = sorted(values, key=lambda m: (not m.startswith("tinyattn"), m), reverse=True)
        colours = ["C0" if m.startswith("tinyattn") else "0.6" for m in methods]
        if reference is None:
            ax.barh(methods, [values[m] for m in methods], color=colours)
        else:
            frame = pd.DataFrame(values).T.loc[methods]
            errors = [frame["median"] - frame["q1"], frame["q3"] - frame["median"]]
            ax.errorbar(frame["median"], methods, xerr=errors, fmt="none", ecolor="0.3", capsize=3)
            ax.scatter(frame["median"], methods, color=colours, zorder=3)
            ax.axvline(reference, color="0.3", lw=0.8, ls=":")
        ax.set_xlabel(label, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, axis="x")
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


def budget_curves_figure(curves: pd.DataFrame, methods: list[str], short_epochs: dict[str, float]):
    """One panel per task: dev score by epoch at the long budget, each seed a faint line and each
    method's mean over its seeds a bold one, with a dotted line where the short budget ended."""
    tasks = list(dict.fromkeys(curves["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.4), squeeze=False)
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, task in zip(axes[0], tasks):
        part = curves[curves["task"] == task]
        for method in [m for m in methods if m in set(part["method"])]:
            runs = part[part["method"] == method]
            for _, run in runs.groupby("seed"):
                ax.plot(run["epoch"], run["score"], color=colours[method], alpha=0.25, lw=0.8)
            mean = runs.groupby("epoch")["score"].mean()
            seeds = runs["seed"].nunique()
            label = f"{method} ({seeds})"
            ax.plot(mean.index, mean, color=colours[method], marker="o", ms=3, label=label)
        if task in short_epochs:
            ax.axvline(short_epochs[task], color="grey", ls=":", label="short budget ends")
        ax.set(title=task, xlabel="epoch", ylabel=f"dev {part['metric'].iloc[0]} (×100)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="method (seeds)", title_fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- experts analysis
def plot_attention_maps(probs_per_layer: list, tokens: list[list[str]], index: int = 0):
    """One sentence's attention maps: a grid of layers (rows) by experts (columns), tokens on the axes,
    one colour scale for all panels. ``probs_per_layer``: (B, E, T, T) per layer, as
    ``expert_stats.capture_attention`` gives them; ``tokens``: each example's tokens."""
    words = tokens[index]
    n = len(words)
    vmax = max(float(p[index, :, :n, :n].max()) for p in probs_per_layer)
    layers, experts = len(probs_per_layer), probs_per_layer[0].shape[1]
    size = max(1.6, 0.16 * n + 0.8)
    fig, axes = plt.subplots(
        layers,
        experts,
        figsize=(size * experts, size * layers),
        squeeze=False,
        layout="constrained",
    )
    for layer, probs in enumerate(probs_per_layer):
        for e in range(experts):
            ax = axes[layer, e]
            image = ax.imshow(probs[index, e, :n, :n].numpy(), vmin=0, vmax=vmax, cmap="viridis")
            bottom, left = layer == layers - 1, e == 0  # token labels on the outer panels only
            ax.set_xticks(range(n), words if bottom else [], rotation=90, fontsize=6)
            ax.set_yticks(range(n), words if left else [], fontsize=6)
            if layer == 0:
                ax.set_title(f"expert {e}", fontsize=9)
            if e == 0:
                ax.set_ylabel(f"layer {layer}\nquery", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.5, label="attention")
    return fig


def _heatmap(ax, table: pd.DataFrame, *, cmap: str, vmin=None, vmax=None, annotate=True, fmt=".2f"):
    """``table`` as an annotated image on ``ax`` (plain matplotlib: seaborn's is far slower)."""
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    if annotate:
        for (i, j), value in np.ndenumerate(values):
            shade = float(image.norm(value))  # light text where the colour map is dark
            dark = shade < 0.5 if cmap == "viridis" else abs(shade - 0.5) > 0.3
            colour = "white" if dark else "black"
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=6, color=colour)
    ax.set_xticks(range(values.shape[1]), table.columns, fontsize=7)
    ax.set_yticks(range(values.shape[0]), table.index, fontsize=7)
    ax.set(xlabel=table.columns.name, ylabel=table.index.name)


def plot_stats(stats: pd.DataFrame):
    """Heatmaps (layer x expert) of the attention statistics, each on a scale from 0: entropy up to
    that of uniform attention, the shares up to 1."""
    ranges = {
        "entropy": stats["entropy_uniform"].max(),
        "mean_distance": stats["mean_distance"].max(),
        "special_share": 1.0,
        "self_share": 1.0,
    }
    fig, axes = plt.subplots(1, len(ranges), figsize=(3.2 * len(ranges), 3.2), layout="constrained")
    for ax, (name, top) in zip(axes, ranges.items()):
        table = stats.pivot(index="layer", columns="expert", values=name)
        _heatmap(ax, table, cmap="viridis", vmin=0, vmax=top, fmt=".3g")
        ax.set_title(name, fontsize=9)
    return fig


def plot_similarity(similarity: pd.DataFrame, title: str = ""):
    """E x E cosine heatmaps: one row per kind, one column per layer."""
    kinds = list(dict.fromkeys(similarity["kind"]))
    layers = sorted(similarity["layer"].unique())
    fig, axes = plt.subplots(
        len(kinds),
        len(layers),
        figsize=(1.8 * len(layers) + 0.6, 1.8 * len(kinds) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for row, kind in enumerate(kinds):
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            part = similarity[(similarity["kind"] == kind) & (similarity["layer"] == layer)]
            if part.empty:
                ax.axis("off")
                continue
            table = part.pivot(index="expert_i", columns="expert_j", values="cosine")
            _heatmap(ax, table, cmap="RdBu_r", vmin=-1, vmax=1, annotate=len(table) <= 4)
            ax.set(xlabel="", ylabel=kind if col == 0 else "")
            if row == 0:
                ax.set_title(f"layer {layer}", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig, out_dir: str | Path, run_id: str, name: str, dpi: int = 120) -> Path:
    """Save ``fig`` as ``<out_dir>/<run_id>-<name>.png`` and close it; return the path."""
    path = Path(out_dir) / f"{run_id}-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def forest_plot(
    per_task: pd.DataFrame,
    pooled: pd.DataFrame,
    method_order: list[str] | None = None,
    *,
    clip: float = 12.0,
    columns: int = 3,
    xlabel: str = "reference minus method (points)",
):
    """Paired differences (reference minus each method, points), one panel per method: each task's
    mean with its 95 % t interval (``stats.per_task_differences``) and, at the bottom, the pooled mean
    with its bootstrap interval (a ``paired_comparison`` row, coloured by its ``outcome`` where it
    has one). Right of zero: the reference ahead. Intervals reaching past ``clip`` points end in an
    arrow at the axis' edge, so that one diverged seed does not hide the rest."""
    order = method_order or list(dict.fromkeys(pooled["method"]))
    methods = [m for m in order if m in set(pooled["method"])]
    tasks = list(dict.fromkeys(per_task["task"]))
    rows = -(-len(methods) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.1 * columns, 0.3 * (len(tasks) + 1) * rows + 0.9 * rows),
        sharex=True, squeeze=False,
    )  # fmt: skip
    colours = {"better": "tab:green", "worse": "tab:red"}
    pooled = pooled.set_index("method")
    for ax, method in zip(axes.flat, methods):
        part = per_task[per_task["method"] == method].set_index("task").reindex(tasks)
        y = np.arange(len(tasks), 0, -1)
        ax.axvline(0, color="grey", linewidth=0.8)
        for yi, (_, row) in zip(y, part.iterrows()):
            if pd.isna(row["mean_difference"]):
                continue
            _clipped_interval(ax, yi, row, clip, "tab:blue", "o")
        whole = pooled.loc[method]
        colour = colours.get(whole.get("outcome"), "black")
        _clipped_interval(ax, 0, whole, clip, colour, "D")
        ax.set_yticks([*y, 0], [*tasks, "pooled"], fontsize=8)
        ax.set_title(method, fontsize=9)
        ax.set_xlim(-1.1 * clip, 1.1 * clip)  # room for the arrows at ±clip
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    fig.tight_layout()
    return fig


def _clipped_interval(ax, y: float, row, clip: float, colour, marker: str) -> None:
    """One mean and interval at height ``y``, the interval cut at ±``clip`` with an arrow there."""
    low, high, mean = row["ci_low"], row["ci_high"], row["mean_difference"]
    if not pd.isna(low):
        ax.plot([max(low, -clip), min(high, clip)], [y, y], color=colour, linewidth=1.5)
        for end, side in ((low, -1), (high, 1)):
            if side * end > clip:
                ax.plot(side * clip, y, marker="<" if side < 0 else ">", color=colour, ms=5)
    ax.plot(np.clip(mean, -clip, clip), y, marker=marker, color=colour, ms=5)
