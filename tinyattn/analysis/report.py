"""Tables and sentences the chapters show, computed from aggregated runs.

One function per table, paragraph of numbers or sentence of a chapter in ``book/``, so that a chapter
only calls, displays and glues. Inputs: a profile's ``ProfileRuns`` (``tinyattn.study.status.profile_runs``),
analysis reports, benchmark files. The verdicts and their rules are in ``tinyattn.analysis.verdicts``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from tinyattn.adapter import paper_param_count, param_count
from tinyattn.analysis.aggregate import compute_table
from tinyattn.analysis.bench_report import (  # noqa: F401 (chapters)
    bench_numbers,
    bench_stages,
    gpu_numbers,
    processor_numbers,
)
from tinyattn.data import get_task
from tinyattn.inject import experts_averaged
from tinyattn.methods import METHODS, build_model, library_adapter_params
from tinyattn.model import count_parameters
from tinyattn.study.profiles import TASK_SIZES, as_profile, estimate_seconds, role
from tinyattn.study.status import profile_runs

# --------------------------------------------------------------------------- any study chapter


def progress(study) -> str:
    """``"12 of 84 runs of the `ablations` profile are done."``, and why the rest wait, if they do."""
    wait = f" (the rest wait: {study.waiting})" if study.waiting else ""
    runs = f"{study.done} of {len(study.planned)} runs"
    return f"{runs} of the `{study.profile['name']}` profile are done{wait}."


def compute_display(runs: pd.DataFrame) -> pd.DataFrame:
    """``aggregate.compute_table`` as the chapters show it: by method, rounded, its column names in
    words (the page wraps them at their spaces, so that the table fits the text column)."""
    words = {"minutes_per_run": "minutes per run", "tokens_per_second": "tokens per second"}
    return compute_table(runs).set_index("method").round(2).rename(columns=words)


# --------------------------------------------------------------------------- GLUE chapter (claim C1)


def pilot_numbers(pilot) -> dict:
    """The stopped RTE tuning pilot (a ``ProfileRuns``): runs done and planned, the range of their
    held-out scores, the held-out slice's size and the standard error of an accuracy near 50 % on it."""
    numbers = {"pilot_done": pilot.done, "pilot_planned": len(pilot.planned)}
    nan, runs = float("nan"), pilot.runs
    if runs.empty:
        return numbers | {"pilot_min": nan, "pilot_max": nan, "pilot_slice": 0, "pilot_se": nan}
    examples = int(runs["eval_examples"].min())
    return numbers | {
        "pilot_min": float(runs["final_score"].min()),
        "pilot_max": float(runs["final_score"].max()),
        "pilot_slice": examples,
        "pilot_se": float(100 * (0.25 / examples) ** 0.5),
    }


def rate_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Method x learning rate: the end-of-training score, rounded to 0.1 (one run per cell)."""
    return (
        runs.pivot_table(index="method", columns="learning_rate", values="final_score")
        .rename(columns=lambda v: f"{v:.0e}")
        .round(1)
    )


def mean_late_gain(gains: pd.DataFrame, reference: str) -> tuple[float, float]:
    """From ``aggregate.late_gain``: the reference's late gain averaged over its tasks, and the median
    of the other methods' averages (NaN, NaN without a run of the reference)."""
    by_method = gains.groupby("method")["gain"].mean()
    if reference not in by_method:
        return float("nan"), float("nan")
    return float(by_method[reference]), float(by_method.drop(reference).median())


def stage_one_numbers(table: pd.DataFrame, reference: str) -> tuple[dict, pd.DataFrame]:
    """From ``aggregate.stage_one_selection``: how many of the reference's runs started from a twin's
    checkpoint chosen on the dev set, of how many, the largest such gap; and those runs."""
    ours = table[table["method"] == reference] if not table.empty else table
    selected = ours[ours["selected"]] if not ours.empty else ours
    numbers = {
        "stage_one_selected": len(selected),
        "stage_one_runs": len(ours),
        "stage_one_gap": float(selected["twin_gap"].max()) if len(selected) else 0.0,
    }
    columns = ["task", "seed", "twin_best_step", "twin_steps", "twin_score", "twin_final_score"]
    return numbers, selected[columns] if len(selected) else selected


def budget_numbers(study) -> dict:
    """The compute a profile used: CPU-hours measured on this machine's CPU (wall-clock times the
    threads each run had), the runs still to do and the projected total, the sentence that says so,
    and the runs that ran on a GPU instead (count, tasks, minutes, the CPU-hours estimated for them)."""
    columns = ["run_id", "task", "device", "wall_seconds", "torch_threads"]
    runs = study.runs if not study.runs.empty else pd.DataFrame(columns=columns)
    planned = study.planned if study.tuned else []
    on_cpu, on_gpu = runs[runs["device"] == "cpu"], runs[runs["device"] != "cpu"]
    measured = float((on_cpu["wall_seconds"] * on_cpu["torch_threads"].fillna(1)).sum() / 3600)
    pending = [p for p in planned if p.run_id not in set(runs["run_id"])]
    projected = measured + sum(estimate_seconds(p) for p in pending) / 3600
    gpu_ids = set(on_gpu["run_id"])
    gpu_estimate = sum(estimate_seconds(p) for p in planned if p.run_id in gpu_ids) / 3600
    sentence = (
        f"all {len(on_cpu)} runs on this CPU are finished, and took {measured:.1f} CPU-hours."
    )
    if gpu_ids:
        sentence = (
            f"the {len(on_cpu)} runs on this CPU are finished, and took {measured:.1f} CPU-hours; "
            f"with the runner's estimate for the {len(gpu_ids)} that ran on a GPU instead "
            f"({gpu_estimate:.1f} CPU-hours), all {len(runs)} runs of the profile come to about "
            f"{measured + gpu_estimate:.0f} CPU-hours."
        )
    if pending:
        sentence = (
            f"the {len(on_cpu)} runs finished on this CPU took {measured:.1f} CPU-hours; with the "
            f"recalibrated estimate for the {len(pending)} still to run, the whole profile takes "
            f"about {projected:.0f} CPU-hours."
        )
    return {
        "budget_measured": measured,
        "budget_pending": len(pending),
        "budget_projected": projected,
        "budget_sentence": sentence,
        "budget_gpu_runs": len(gpu_ids),
        "budget_gpu_tasks": ", ".join(sorted(set(on_gpu["task"]))) if gpu_ids else "no task",
        "budget_gpu_minutes": float(on_gpu["wall_seconds"].sum() / 60) if gpu_ids else 0.0,
        "budget_gpu_cpu_estimate": gpu_estimate,
    }


# --------------------------------------------------------------------------- heads chapter (C2)

#: The roles of the ``ablations`` profile's runs that vary the experts, in the tables' order: one
#: expert, one trained as long, 2 / 4 / 8 experts, four initialised independently, four applied one
#: after another (as the authors' code).
EXPERT_ROLES = ("reference", "compute_control", "expert_counts", "independent", "sequential")


def expert_labels(profile) -> list[str]:
    """The labels a profile gives its ``EXPERT_ROLES``, in that order (roles it lacks left out)."""
    given = as_profile(profile).get("roles") or {}
    labels = []
    for name in EXPERT_ROLES:
        if name in given:
            found = role(profile, name)
            labels += found if isinstance(found, list) else [found]
    return list(dict.fromkeys(labels))


def expert_runs(study) -> tuple[pd.DataFrame, int]:
    """A profile's finished runs that vary the experts (``expert_labels``), and how many it plans."""
    labels, runs = expert_labels(study.profile), study.runs
    if not runs.empty:
        runs = runs[runs["method"].isin(labels)].reset_index(drop=True)
    return runs, sum(p.label in labels for p in study.planned)


def analysed_run_ids(ablations, glue_study) -> set[str]:
    """The runs whose experts analysis the heads chapter reads: the expert runs of the ablations (once
    tuned) and the four-expert runs (role ``experts``) of the GLUE study."""
    labels = expert_labels(ablations.profile)
    ids = {p.run_id for p in ablations.planned if ablations.tuned and p.label in labels}
    experts = role(glue_study.profile, "experts")
    return ids | {p.run_id for p in glue_study.planned if p.label == experts}


def deployment_table(variants: pd.DataFrame) -> pd.DataFrame:
    """Per initialisation and deployment variant, over the analysed runs: runs, mean and std score,
    mean latency per example, agreement with the trained form, encoder passes."""
    if variants.empty:
        return pd.DataFrame()
    return (
        variants.groupby(["init", "variant"], sort=False)
        .agg(
            runs=("run_id", "nunique"),
            score=("score", "mean"),
            score_std=("score", "std"),
            ms_per_example=("ms_per_example", "mean"),
            agreement=("agreement_with_trained", "mean"),
            encoder_passes=("encoder_passes", "first"),
        )
        .round(3)
    )


def serving_speedup(deployment: pd.DataFrame) -> float | None:
    """How many times as fast two-stage experts serve weight-averaged as in their trained form."""
    if deployment.empty or "two-stage" not in deployment.index:
        return None
    staged = deployment.loc["two-stage"]
    return staged.loc["trained_form", "ms_per_example"] / staged.loc["averaged", "ms_per_example"]


# --------------------------------------------------------------------------- parameters chapter


def _counted(experts: int) -> str:
    """The parameters table's row of tiny attention with ``experts`` experts."""
    return f"tinyattn_e{experts}"


def parameter_counts(pretrained, num_labels: int) -> tuple[pd.DataFrame, int]:
    """Every registered method (tiny attention with one and four experts) built on its own copy of
    ``pretrained`` and counted: adapter trained and deployed (experts averaged), its share of the
    backbone, the head, the method library's own count; and the backbone's parameter count."""
    variants = {name: (name, {}) for name in METHODS if name != "tinyattn"}
    variants |= {_counted(e): ("tinyattn", {"experts": e}) for e in (1, 4)}
    rows = {}
    for label, (method, options) in variants.items():
        model = build_model(method, copy.deepcopy(pretrained), num_labels, options)
        counts = count_parameters(model)
        with experts_averaged(model):
            deployed = count_parameters(model)["adapter_params"]
        library = library_adapter_params(model)
        rows[label] = {
            "adapter, trained": counts["adapter_params"],
            "adapter, deployed": deployed,
            "% of backbone": 100 * deployed / counts["backbone_params"],
            "head": counts["head_params"],
            "library's count": pd.NA if library is None else library,
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["library's count"] = table["library's count"].astype("Int64")
    return table, int(counts["backbone_params"])


def parameter_numbers(table: pd.DataFrame, config, backbone_params: int) -> dict:
    """The tiny-attention counts the text quotes, checked against the formula E L (7D + 3), and the
    authors' count L (7D + 11) on RoBERTa-base and -large (355 M parameters in all)."""
    layers, hidden = config.num_hidden_layers, config.hidden_size
    measured = int(table.loc[_counted(1), "adapter, trained"])
    e4 = int(table.loc[_counted(4), "adapter, trained"])
    if (measured, e4) != (layers * param_count(hidden), 4 * layers * param_count(hidden)):
        raise AssertionError(f"tiny attention's counts {measured}, {e4} do not follow E L (7D + 3)")
    roberta_large = 24 * paper_param_count(1024)
    prefix_length = METHODS["prefix"].defaults["prefix_length"]
    return {
        "backbone_params": backbone_params,
        "backbone_layers": int(layers),
        "backbone_hidden": int(hidden),
        "tinyattn_e1_params": measured,
        "tinyattn_e1_percent": float(table.loc[_counted(1), "% of backbone"]),
        "tinyattn_e4_training_params": e4,
        "tinyattn_paper_formula_params": int(layers * paper_param_count(hidden)),
        "roberta_base_paper_params": int(12 * paper_param_count(768)),
        "roberta_large_paper_params": int(roberta_large),
        "roberta_large_paper_percent": 100 * roberta_large / 355e6,
        "prefix_deployed_params": int(2 * layers * prefix_length * hidden),
    }


# --------------------------------------------------------------------------- profiles chapter


def planned_runs(profiles: list[str], runs_dir: str | Path) -> pd.DataFrame:
    """Every planned run of the profiles, one row each: its parameters, profile, CPU-hour estimate
    (MiniLM-L6 only) and whether its learning rate still waits for a tuning grid."""
    rows = []
    for name in profiles:
        study = profile_runs(name, runs_dir)
        waiting = "tuning" in study.profile and not study.tuned
        for r in study.planned:
            rows.append(
                {**asdict(r), "run_id": r.run_id, "profile": name}
                | {"cpu_hours": estimate_seconds(r) / 3600, "awaiting_tuning": waiting}
                | {"tuning": study.profile.get("tuning")}
            )
    runs = pd.DataFrame(rows)
    runs["cpu_hours"] = runs["cpu_hours"].where(runs["backbone"] == "minilm-l6")
    runs["max_train_samples"] = runs["max_train_samples"].astype("Int64")
    return runs


def _distinct(values) -> str:
    """The distinct values, in order of appearance, as one string (floats as ``%g``)."""
    return ", ".join(dict.fromkeys(f"{v:g}" if isinstance(v, float) else str(v) for v in values))


def _per_task(frame: pd.DataFrame, column: str) -> str:
    """One value, or "task: value" for each task where a profile sets it per task."""
    by_task = frame.groupby("task", sort=False)[column].agg(_distinct)
    if by_task.nunique() == 1:
        return by_task.iloc[0]
    return ", ".join(f"{task}: {value}" for task, value in by_task.items())


def budget_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per profile and task: backbone, training cap, epochs, batch, length, evaluations per epoch,
    warm-up, scheduler, weight decay, seeds, runs and estimated CPU-hours."""
    return runs.groupby(["profile", "task"], sort=False).agg(
        backbone=("backbone", "first"),
        train_cap=("max_train_samples", "first"),
        epochs=("epochs", "first"),
        batch=("batch_size", "first"),
        max_length=("max_length", "first"),
        evals_per_epoch=("evals_per_epoch", "first"),
        warmup_ratio=("warmup_ratio", _distinct),
        scheduler=("scheduler", _distinct),
        weight_decay=("weight_decay", _distinct),
        seeds=("seed", lambda s: _distinct(sorted(set(s)))),
        runs=("run_id", "size"),
        cpu_hours=("cpu_hours", lambda h: h.sum(min_count=1)),
    )


def merge_equal_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns that hold the same values (missing ones alike) merged into one, headed by their
    names joined with " = ", so that profiles sharing every learning rate take one column."""
    groups: dict[tuple, list[str]] = {}
    for column in frame.columns:
        groups.setdefault(tuple(frame[column].fillna("—")), []).append(column)
    return pd.DataFrame({" = ".join(cols): frame[cols[0]] for cols in groups.values()})


def learning_rate_table(runs: pd.DataFrame, profiles: list[str]) -> pd.DataFrame:
    """Method x profile: the learning rate (per task where it differs), or the tuning grid that will
    choose it while that grid is not done."""

    def rates(frame: pd.DataFrame) -> str:
        if frame["awaiting_tuning"].iloc[0]:
            return f"chosen by `{frame['tuning'].iloc[0]}` (pending)"
        return _per_task(frame, "learning_rate")

    return (
        runs.groupby(["label", "profile"], sort=False)
        .apply(rates)
        .unstack("profile")
        .reindex(columns=profiles)
        .rename_axis(index="method", columns=None)
    )


def task_table(tasks: list[str]) -> pd.DataFrame:
    """Per GLUE task: the full train and dev split sizes and the metric it is scored by."""
    return pd.DataFrame(
        {"train": TASK_SIZES[t][0], "dev": TASK_SIZES[t][1], "metric": get_task(t).metric}
        for t in tasks
    ).set_index(pd.Index(tasks, name="task"))


def profile_numbers(runs: pd.DataFrame) -> dict:
    """Per profile, the numbers the text quotes: runs, seeds, tasks, task names, CPU-hours (where
    every run has an estimate)."""
    numbers = {}
    for name, part in runs.groupby("profile", sort=False):
        numbers[f"{name}_profile_runs"] = int(len(part))
        numbers[f"{name}_profile_seeds"] = int(part["seed"].nunique())
        numbers[f"{name}_profile_tasks"] = int(part["task"].nunique())
        numbers[f"{name}_profile_task_names"] = ", ".join(dict.fromkeys(part["task"]))
        if part["cpu_hours"].notna().all():
            numbers[f"{name}_profile_cpu_hours"] = round(float(part["cpu_hours"].sum()), 1)
    return numbers
