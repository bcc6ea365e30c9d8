"""Study profiles: what a study is, read from ``profiles/<name>.yaml``, and what its runs will cost.

A profile names a backbone, tasks, methods, seeds and budgets. This module only reads and expands
profiles: it knows nothing of tuning results or of running (``tuning`` and ``runner`` sit on top).

- ``load_profile``: a profile by name or path, checked (a YAML error names the file and line);
- ``expand(profile, rates)``: every run of a profile as ``RunParams``, given the learning rates its
  tuning profile chose (``rates``) when it names one;
- ``shard``: the share of the runs one machine takes;
- ``estimate_seconds``: a planning estimate of a run's CPU time.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from tinyattn.data import get_task
from tinyattn.experiment import RunParams
from tinyattn.methods import get_method, method_options
from tinyattn.records import RUNS_DIR

REPO = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO / "profiles"

# Planning figures for the packaged MiniLM-L6 on a 2-core CPU (measured here; see the book's protocol).
# Mean tokens per example (MiniLM tokenizer) and full split sizes.
TASK_SIZES = {  # task: (train examples, dev examples, mean train tokens, mean dev tokens)
    "rte": (2490, 277, 66.6, 64.6),
    "mrpc": (3668, 408, 53.4, 53.2),
    "stsb": (5749, 1500, 27.6, 31.5),
    "cola": (8551, 1043, 12.3, 11.7),
    "sst2": (67349, 872, 13.2, 25.2),
    "qnli": (104743, 5463, 51.2, 51.2),
    "mnli": (392702, 9815, 39.0, 39.0),
    "qqp": (363846, 40430, 30.0, 30.0),
    # few-shot: the 32 FewGLUE training examples, SuperGLUE val (``tasks.FEWSHOT_TASKS``)
    "fewrte": (32, 277, 73.2, 68.2),
    "fewcb": (32, 56, 87.2, 93.3),
}
# Training throughput: each method's registry entry (``Method.train_tokens_per_second``: real tokens
# a second, one core per run, two runs at a time, calibrated on the `tune` and `cpu` records; a first
# calibration on an idle machine with both cores per run was 2.1-2.9 times too fast for that); this
# for a method without one. CPU time = wall time x threads.
DEFAULT_TRAIN_TOKENS_PER_SECOND = 800.0
EVAL_TOKENS_PER_SECOND = 1700.0
RUN_OVERHEAD_SECONDS = 20.0  # kernel start, imports, model and data loading
BACKBONE_SCALE = {"minilm-l6": 1.0, "roberta-base": 5.5, "bert-base": 5.5, "roberta-large": 18.0}
#: The roles a profile gives its variants (its ``roles:`` block): the analysis reads labels through
#: these, never types them, so renaming a label in one place is refused at load instead of emptying
#: a chapter. A role names one label, or a list of labels where marked ``[...]``.
ROLES = {
    "reference": "tiny attention with one expert: what the comparisons are made against",
    "experts": "four experts, weight-averaged for evaluation (claim C2's subject)",
    "expert_counts": "[...] tiny attention with 2, 4, 8 experts, averaged (the experts figure)",
    "compute_control": "one expert trained as long as a two-stage run (C2's compute-matched control)",
    "sequential": "four experts applied one after another, as the authors' code",
    "independent": "four experts initialised independently",
    "no_context": "the same adapter attending to its own token only (C3: no context)",
    "same_size_bottleneck": "a bottleneck adapter with the reference's parameters (C3)",
    "larger_bottleneck": "a bottleneck adapter about ten times as large (C3)",
    "study_bottleneck": "the GLUE study's bottleneck adapter at its own size (drawn beside C3's)",
    "head_dims": "[...] tiny attention with larger heads, one expert (the head-dimension sweep)",
}
LIST_ROLES = ("expert_counts", "head_dims")
#: What one run asks of a machine (a profile's ``resources:`` block, read by the Ray executor): one
#: CPU unless the profile says otherwise; a GPU profile says ``resources: {gpus: 1}``.
RESOURCES = {"cpus": 1, "gpus": 0}


def available_profiles() -> list[str]:
    """The names of the profiles in ``profiles/``."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name: str | Path) -> dict:
    """A profile by name (``profiles/<name>.yaml``) or by path to a YAML file, checked.

    Raises ``ValueError`` naming the problem: an unknown name, a YAML syntax error (with the file and
    line), or a profile without tasks, methods or seeds."""
    path = Path(name)
    if not path.suffix:
        path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown study profile {str(name)!r}; available: {', '.join(available_profiles())}"
        )
    try:
        profile = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(_yaml_error(path, err)) from None
    validate(profile, path)
    profile.setdefault("name", path.stem)
    return profile


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """One line naming the file, the line and column, and what the YAML parser found wrong."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(err, "problem", None) or str(err)
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context:
        problem += f" ({context}" + (f" from line {start.line + 1})" if start else ")")
    return f"profile {path}: invalid YAML{where}: {problem}".replace("\n", " ")


def validate(profile: object, path: str | Path = "<profile>") -> None:
    """A ``ValueError`` naming the first thing that makes ``profile`` unusable (the parameters of
    each run are checked when ``expand`` builds them)."""
    if not isinstance(profile, dict):
        raise ValueError(f"profile {path} is not a mapping of settings")
    for key, kind in (("tasks", dict), ("methods", dict), ("seeds", list)):
        if key not in profile:
            raise ValueError(f"profile {path} has no {key!r}")
        if not isinstance(profile[key], kind) or not profile[key]:
            raise ValueError(f"profile {path}: {key!r} must be a non-empty {kind.__name__}")
    code = profile.get("code")  # a pinned profile: the commit its records are rerun from
    if code is not None and not (isinstance(code, str) and re.fullmatch(r"[0-9a-f]{7,40}", code)):
        raise ValueError(
            f"profile {path}: 'code' must name a git commit, 7 to 40 lower-case hex digits "
            f"(quote it if it is all digits), got {code!r}"
        )
    frozen = profile.get("frozen")  # records kept as made, across commits: never remade
    if frozen is not None and not (isinstance(frozen, str) and frozen.strip()):
        raise ValueError(
            f"profile {path}: 'frozen' must say why its records are kept, got {frozen!r}"
        )
    if frozen is not None and code is not None:
        raise ValueError(
            f"profile {path}: a profile is either pinned ('code') or 'frozen', not both"
        )
    _check_methods(profile, path)
    _check_roles(profile, path)
    _check_resources(profile, path)


def _check_resources(profile: dict, path) -> None:
    found = profile.get("resources")
    if found is None:
        return
    if not isinstance(found, dict) or not set(found) <= set(RESOURCES):
        raise ValueError(
            f"profile {path}: 'resources' must map {' and/or '.join(RESOURCES)} to a number, "
            f"got {found!r}"
        )
    for key, value in found.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(
                f"profile {path}: resources {key!r} must be a number >= 0, got {value!r}"
            )
    if not any(found.get(key, RESOURCES[key]) for key in RESOURCES):
        raise ValueError(f"profile {path}: resources ask for nothing; a run needs a CPU or a GPU")


def resources(profile: str | Path | dict) -> dict[str, float]:
    """What one run of the profile asks of a machine: ``{"cpus": ..., "gpus": ...}``."""
    return {**RESOURCES, **(as_profile(profile).get("resources") or {})}


def _check_roles(profile: dict, path) -> None:
    """Each role is a known one and names variants of this profile."""
    found = profile.get("roles") or {}
    if not isinstance(found, dict):
        raise ValueError(f"profile {path}: 'roles' must map a role to a method label")
    for name, labels in found.items():
        if name not in ROLES:
            raise ValueError(f"profile {path}: unknown role {name!r}; known: {', '.join(ROLES)}")
        listed = labels if name in LIST_ROLES and isinstance(labels, list) else [labels]
        missing = [label for label in listed if label not in profile["methods"]]
        if missing:
            raise ValueError(
                f"profile {path}: role {name!r} names {', '.join(map(repr, missing))}, "
                f"which is not one of its methods"
            )


def role(profile: str | Path | dict, name: str) -> str | list[str]:
    """The label (or, for a list role, the labels) a profile gives role ``name`` (``ROLES``); a
    ``ValueError`` naming the profile when it gives the role to none."""
    if name not in ROLES:
        raise ValueError(f"unknown role {name!r}; known: {', '.join(ROLES)}")
    profile = as_profile(profile)
    labels = (profile.get("roles") or {}).get(name)
    if labels is None:
        raise ValueError(f"profile {profile.get('name')!r} gives no method the role {name!r}")
    return list(labels) if name in LIST_ROLES else labels


def _check_methods(profile: dict, path) -> None:
    """Each method's name and options, as every task merges them: a ``ValueError`` naming the file,
    the method's label and the option, when the profile loads rather than when its runs start."""
    for label, settings in profile["methods"].items():
        if settings is not None and not isinstance(settings, dict):
            raise ValueError(f"profile {path}: method {label!r} must be a mapping of settings")
        for task, task_settings in profile["tasks"].items():
            override = ((task_settings or {}).get("methods") or {}).get(label) or {}
            merged = {**(settings or {}), **override}
            try:
                method_options(merged.get("method", label), merged.get("method_options"))
            except ValueError as err:
                raise ValueError(f"profile {path}: method {label!r} ({task}): {err}") from None


def as_profile(profile: str | Path | dict) -> dict:
    """A profile given as a loaded dict, a name or a path."""
    return profile if isinstance(profile, dict) else load_profile(profile)


def expand(
    profile: dict, rates: dict[str, float] | None = None, out_dir: str = RUNS_DIR
) -> list[RunParams]:
    """Every run of a profile: tasks x seeds x methods, settings merged defaults < task < method.

    A method may give ``learning_rates: [...]`` (a tuning grid: one run per value). A profile that
    names ``tuning: <profile>`` takes each method's learning rate from ``rates`` (label -> rate, the
    tuning grid's choice; ``tuned_as: <label>`` borrows another method's); without ``rates`` such a
    profile raises ``ValueError`` (``tinyattn.study.tuning.planned_runs`` supplies them)."""
    runs = []
    defaults = dict(profile.get("defaults") or {})
    if "backbone" in profile:
        defaults["backbone"] = profile["backbone"]
    for task, task_settings in profile["tasks"].items():
        task_settings = dict(task_settings or {})
        per_method = task_settings.pop("methods", {}) or {}
        for seed in profile["seeds"]:
            for label, method_settings in profile["methods"].items():
                settings = {
                    **defaults,
                    **task_settings,
                    **dict(method_settings or {}),
                    **dict(per_method.get(label) or {}),
                }
                settings.setdefault("method", label)
                source = settings.pop("tuned_as", label)
                grid = settings.pop("learning_rates", None)
                if "tuning" in profile and "learning_rate" not in settings:
                    settings["learning_rate"] = _tuned_rate(profile, rates, label, source)
                for lr in grid or [settings.get("learning_rate")]:
                    if lr is not None:
                        settings["learning_rate"] = float(lr)
                    runs.append(
                        RunParams.from_dict(
                            {**settings, "task": task, "seed": seed, "label": label}
                            | {"out_dir": out_dir}
                        )
                    )
    ids = [r.run_id for r in runs]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(
            f"profile {profile['name']!r} defines the same run twice: {sorted(duplicates)}"
        )
    return runs


def _tuned_rate(profile: dict, rates: dict[str, float] | None, label: str, source: str) -> float:
    """The learning rate that the tuning grid chose for ``source`` (the method ``label`` borrows)."""
    if rates is None:
        raise ValueError(
            f"profile {profile['name']!r} takes its learning rates from tuning profile "
            f"{profile['tuning']!r}: pass them as rates (tinyattn.study.tuning.planned_runs does)"
        )
    if source not in rates:
        raise ValueError(
            f"profile {profile['name']!r}: method {label!r} has no tuned learning "
            f"rate in tuning profile {profile['tuning']!r} (tuned_as {source!r})"
        )
    return rates[source]


def placeholder_rates(tuning_profile: dict) -> dict[str, float]:
    """The middle of each method's learning-rate grid: planning figures while the grid runs."""
    grids = tuning_profile["methods"]
    return {
        label: float(sorted(m["learning_rates"])[len(m["learning_rates"]) // 2])
        for label, m in grids.items()
    }


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` -> (K, N); none -> (1, 1)."""
    if not text:
        return 1, 1
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard expects K/N (e.g. 2/4), got {text!r}") from err
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N")
    return k, n


def shard(runs: list[RunParams], k: int, n: int) -> list[RunParams]:
    """The runs of shard k of n: the (task, seed) groups whose position in the sorted list is k-1
    modulo n. Runs of one group stay together (two-stage runs need their twin), so the shards
    partition the grid and their results folders merge by copying files."""
    groups = sorted({(r.task, r.seed) for r in runs})
    mine = {g for i, g in enumerate(groups) if i % n == k - 1}
    return [r for r in runs if (r.task, r.seed) in mine]


def estimate_seconds(params: RunParams) -> float:
    """A planning estimate of one run's CPU time on this machine class (2 cores, packaged MiniLM)."""
    n_train, n_dev, train_len, dev_len = TASK_SIZES[get_task(params.task).name]
    n_train = min(n_train, params.max_train_samples or n_train)
    n_dev = min(n_dev, params.max_eval_samples or n_dev)
    steps = params.max_steps or math.ceil(params.epochs * n_train / params.batch_size)
    tokens = steps * params.batch_size * train_len
    speed = get_method(params.method).train_tokens_per_second or DEFAULT_TRAIN_TOKENS_PER_SECOND
    experts = params.method_options.get("experts", 1) if params.method == "tinyattn" else 1
    speed /= 1.0 + 0.05 * (experts - 1)
    evals = math.ceil(
        steps / max(1, math.ceil(n_train / params.batch_size)) * params.evals_per_epoch
    )
    seconds = (
        tokens / speed + evals * n_dev * dev_len / EVAL_TOKENS_PER_SECOND + RUN_OVERHEAD_SECONDS
    )
    # A two-stage run reuses the adapter its E = 1 twin saved (the twin runs first in its group), so
    # stage one is not counted again here.
    return seconds * BACKBONE_SCALE.get(params.backbone, 10.0)
