"""The intro's results-at-a-glance figure (``plots.score_against_parameters``): what it draws."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tinyattn.analysis.plots import score_against_parameters  # noqa: E402


def _runs() -> pd.DataFrame:
    rows = []
    scores = {"tinyattn_e1": (80, 60), "lora": (70, 50), "full_ft": (90, 70)}
    params = {"tinyattn_e1": 1_000, "lora": 50_000, "full_ft": 20_000_000}
    for method, (a, b) in scores.items():
        for seed in (1, 2):
            for task, base in (("rte", a), ("stsb", b)):
                rows.append(
                    {"task": task, "method": method, "seed": seed, "metric": "accuracy"}
                    | {"final_score": base + seed, "adapter_plus_head_params": params[method]}
                )
    # a third seed of LoRA on one task only: not in the task average
    rows.append(rows[-1] | {"method": "lora", "seed": 3, "final_score": 0.0})
    return pd.DataFrame(rows)


def test_the_task_average_per_seed_its_mean_and_the_claim_line():
    fig = score_against_parameters(_runs(), highlight=("tinyattn_e1",), claim="the paper's claim")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "average over 2 tasks"
    dots = {tuple(np.round(c.get_offsets()[:, 1], 6)) for c in ax.collections}
    # per seed: mean over rte and stsb; LoRA's one-task seed 3 is left out
    assert dots == {(71.0, 72.0), (61.0, 62.0), (81.0, 82.0)}
    bars = {round(line.get_ydata()[0], 6) for line in ax.lines if len(line.get_ydata()) == 2}
    assert {71.5, 61.5, 81.5} <= bars
    claim = [t for t in ax.texts if t.get_text() == "the paper's claim"]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    # the line a highlighted method must clear: the best other method's mean (full_ft, 81.5)
    assert len(claim) == 1 and dashed and dashed[0].get_ydata()[0] == pytest.approx(81.5)
    labels = {t.get_text(): t for t in ax.texts}
    assert labels["tinyattn_e1"].get_fontweight() == "bold" and labels["lora"].get_color() == "0.35"


def test_one_panel_per_task_and_a_clear_error_for_other_input():
    fig = score_against_parameters(_runs(), per_task=True)
    assert [ax.get_title() for ax in fig.axes] == ["rte", "stsb"]
    with pytest.raises(ValueError, match="adapter_plus_head_params"):
        score_against_parameters(_runs().drop(columns="adapter_plus_head_params"))
    with pytest.raises(ValueError, match="no method finished every task"):
        score_against_parameters(
            _runs()
            .query("seed == 3 or task == 'rte'")
            .assign(task=lambda f: np.where(f["seed"] == 3, "stsb", "rte"), seed=lambda f: f.index)
        )


def test_cost_figure_draws_each_ratio_with_its_quartiles_and_refuses_an_old_file():
    from tinyattn.analysis.plots import cost_ratio_figure

    def quartiles(median):
        return {"q1": median - 0.1, "median": median, "q3": median + 0.2}

    bench = {
        "paired_inference_ratio": {"backbone": quartiles(1.0), "tinyattn_averaged": quartiles(1.5)},
        "paired_train_step_ratio": {"lora": quartiles(1.0), "tinyattn_e4": quartiles(2.0)},
        "peak_memory_mb": {"lora": 400.0, "tinyattn_e4": 300.0},
    }
    infer, train, memory = cost_ratio_figure(bench).axes
    medians = {
        tuple(np.round(c.get_offsets()[:, 0], 6)) for c in infer.collections if c.get_offsets().size
    }
    assert (1.0, 1.5) in medians  # from the bottom: the backbone, then tiny attention on top
    assert [t.get_text() for t in train.get_yticklabels()] == ["lora", "tinyattn_e4"]
    assert sorted(bar.get_width() for bar in memory.patches) == [300.0, 400.0]
    with pytest.raises(ValueError, match="peak_memory_mb"):
        cost_ratio_figure({k: v for k, v in bench.items() if k != "peak_memory_mb"})
