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
