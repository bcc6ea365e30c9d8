"""Study profiles -> runs; run them through papermill, resumably, in shards.

A profile (``profiles/<name>.yaml``) names a backbone, tasks, methods, seeds and budgets. Each run's
record lives at ``<out_dir>/<run_id>.json`` and its id is a hash of its parameters, so:

- a run whose record says ``done`` is never run again; killing the runner loses only the run in flight
  (it has no record yet, or a lock whose process is gone) and that run is redone;
- a truncated or unreadable record is moved aside and the run redone;
- ``--shard K/N`` gives each machine the (task, seed) groups whose position in the sorted list is
  K-1 modulo N: the shards partition the grid, and their ``results/runs`` merge by copying files.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import yaml

from tinyattn.data import get_task
from tinyattn.experiment import RunParams
from tinyattn.records import (
    CorruptRecordError,
    read_record,
    write_json_atomic,
    write_text_atomic,
)
from tinyattn.tuning import TuningIncompleteError, select_learning_rates

REPO = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO / "profiles"
TRAIN_NOTEBOOK = REPO / "notebooks" / "train.ipynb"
EXPERTS_NOTEBOOK = REPO / "notebooks" / "experts.ipynb"
EXECUTED_DIR = Path("results") / "executed"

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
}
# Training throughput in real tokens per second, per method (forward + backward + optimiser step), as
# the study runs: one core per run, two runs at a time (`--jobs 2`). Calibrated on the `tune` and `cpu`
# records (the median, per method, of measured over estimated time); a first calibration on an idle
# machine with both cores per run was 2.1-2.9 times too fast for that. CPU time = wall time x threads.
TRAIN_TOKENS_PER_SECOND = {
    "head_only": 1700.0,
    "full_ft": 420.0,
    "bitfit": 860.0,
    "lora": 840.0,
    "ia3": 990.0,
    "prefix": 620.0,
    "houlsby": 750.0,
    "pfeiffer": 740.0,
    "parallel": 860.0,
    "tinyattn": 760.0,
}
DEFAULT_TRAIN_TOKENS_PER_SECOND = 800.0
EVAL_TOKENS_PER_SECOND = 1700.0
RUN_OVERHEAD_SECONDS = 20.0  # kernel start, imports, model and data loading
BACKBONE_SCALE = {"minilm-l6": 1.0, "roberta-base": 5.5, "bert-base": 5.5, "roberta-large": 18.0}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name: str) -> dict:
    """A profile by name (``profiles/<name>.yaml``) or by path to a YAML file."""
    path = Path(name)
    if not path.suffix:
        path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown study profile {name!r}; available: {', '.join(available_profiles())}"
        )
    profile = yaml.safe_load(path.read_text())
    for key in ("tasks", "methods", "seeds"):
        if key not in profile:
            raise ValueError(f"profile {path} has no {key!r}")
    profile.setdefault("name", path.stem)
    return profile


def expand(
    profile: dict, out_dir: str = "results/runs", *, untuned_ok: bool = False
) -> list[RunParams]:
    """Every run of a profile: tasks x seeds x methods, settings merged defaults < task < method.

    A method may give ``learning_rates: [...]`` (a tuning grid: one run per value). A profile that
    names ``tuning: <profile>`` takes each method's learning rate from that tuning grid's choice
    (``tuned_as: <label>`` borrows another method's); until the grid is done this raises
    ``TuningIncompleteError``, or with ``untuned_ok`` uses the middle of the method's grid as a
    placeholder (for planning only).
    """
    runs = []
    defaults = dict(profile.get("defaults") or {})
    if "backbone" in profile:
        defaults["backbone"] = profile["backbone"]
    tuned = _tuned_rates(profile, out_dir, untuned_ok)
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
                if tuned is not None and "learning_rate" not in settings:
                    if source not in tuned:
                        raise ValueError(
                            f"profile {profile['name']!r}: method {label!r} has no tuned learning "
                            f"rate in tuning profile {profile['tuning']!r} (tuned_as {source!r})"
                        )
                    settings["learning_rate"] = tuned[source]
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


def _tuned_rates(profile: dict, out_dir: str, untuned_ok: bool) -> dict[str, float] | None:
    """The learning rates a profile's ``tuning`` profile chose (None when it names none)."""
    if "tuning" not in profile:
        return None
    try:
        return select_learning_rates(profile["tuning"], out_dir)
    except TuningIncompleteError:
        if not untuned_ok:
            raise
    grids = load_profile(profile["tuning"])["methods"]
    return {
        label: float(sorted(m["learning_rates"])[len(m["learning_rates"]) // 2])
        for label, m in grids.items()
    }


def parse_shard(text: str | None) -> tuple[int, int]:
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
    """The runs of shard k of n. Runs of one (task, seed) stay together (two-stage runs need their twin)."""
    groups = sorted({(r.task, r.seed) for r in runs})
    mine = {g for i, g in enumerate(groups) if i % n == k - 1}
    return [r for r in runs if (r.task, r.seed) in mine]


def run_status(params: RunParams) -> str:
    """``done``, ``failed`` or ``pending`` (no record, or a record that cannot be trusted)."""
    path = Path(params.out_dir) / f"{params.run_id}.json"
    if not path.exists():
        return "pending"
    try:
        status = read_record(path)["status"]
    except CorruptRecordError:
        return "pending"
    return status if status in ("done", "failed") else "pending"


def estimate_seconds(params: RunParams) -> float:
    """A planning estimate of one run's CPU time on this machine class (2 cores, packaged MiniLM)."""
    n_train, n_dev, train_len, dev_len = TASK_SIZES[get_task(params.task).name]
    n_train = min(n_train, params.max_train_samples or n_train)
    n_dev = min(n_dev, params.max_eval_samples or n_dev)
    steps = params.max_steps or math.ceil(params.epochs * n_train / params.batch_size)
    tokens = steps * params.batch_size * train_len
    speed = TRAIN_TOKENS_PER_SECOND.get(params.method, DEFAULT_TRAIN_TOKENS_PER_SECOND)
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


def plan(profile_name: str, out_dir: str = "results/runs", shard_spec: str | None = None) -> dict:
    """The dry run: every run of the (shard of the) profile with its status, and the CPU time pending."""
    profile = load_profile(profile_name)
    awaiting = False
    if "tuning" in profile:
        try:
            select_learning_rates(profile["tuning"], out_dir)
        except TuningIncompleteError:
            awaiting = True  # planned with placeholder learning rates; nothing can run yet
    runs = shard(expand(profile, out_dir, untuned_ok=True), *parse_shard(shard_spec))
    rows = []
    pending_seconds = 0.0
    for params in runs:
        status = "awaiting tuning" if awaiting else run_status(params)
        rows.append(
            {
                "run_id": params.run_id,
                "task": params.task,
                "method": params.label,
                "seed": params.seed,
                "status": status,
            }
        )
        if status != "done":
            pending_seconds += estimate_seconds(params)
    states = ("done", "pending", "failed") + (("awaiting tuning",) if awaiting else ())
    counts = {s: sum(r["status"] == s for r in rows) for s in states}
    return {
        "profile": profile["name"],
        "tuning": profile.get("tuning"),
        "shard": shard_spec or "1/1",
        "runs": rows,
        "counts": counts,
        "estimated_cpu_hours": round(pending_seconds / 3600, 3),
    }


# ----------------------------------------------------------------------------- execution
class RunLock:
    """An exclusive claim on one run, so two runners on one results folder never do it twice."""

    def __init__(self, params: RunParams) -> None:
        self.path = Path(params.out_dir) / ".locks" / f"{params.run_id}.lock"

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
            return True
        return False

    def _stale(self) -> bool:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return True
        if owner.get("host") != socket.gethostname():
            return False  # another machine's claim on a shared folder: respect it
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    @staticmethod
    def clear_stale(out_dir: str | Path) -> None:
        """Remove the locks that runners on this machine left when they were killed."""
        for path in (Path(out_dir) / ".locks").glob("*.lock"):
            lock = RunLock.__new__(RunLock)
            lock.path = path
            if lock._stale():
                path.unlink(missing_ok=True)


def _set_aside_corrupt(params: RunParams) -> None:
    path = Path(params.out_dir) / f"{params.run_id}.json"
    if path.exists():
        try:
            read_record(path)
        except CorruptRecordError:
            path.rename(path.with_name(f"{path.name}.corrupt-{int(time.time())}"))


def execute_run(
    params: RunParams, notebook: Path = TRAIN_NOTEBOOK, kernel: str = "python3"
) -> dict:
    """Run one training notebook through papermill; return its record (a failed one on error)."""
    import papermill

    record_path = Path(params.out_dir) / f"{params.run_id}.json"
    executed = EXECUTED_DIR / f"{params.run_id}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    parameters = {**asdict(params), "progress": False}
    declared = set(papermill.inspect_notebook(str(notebook)))
    missing = sorted(set(parameters) - declared)
    if missing:  # papermill would only warn, and the run would silently ignore them
        raise ValueError(
            f"notebook {notebook} has no parameter(s) {missing} in its parameters cell"
        )
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=parameters,
            kernel_name=kernel,
            progress_bar=False,
            cwd=str(Path.cwd()),
        )
    except Exception as err:  # the notebook normally records its own failure; make sure one exists
        if run_status(params) != "failed":
            write_json_atomic(
                record_path,
                {
                    "run_id": params.run_id,
                    "status": "failed",
                    "params": asdict(params),
                    "error": f"{type(err).__name__}: {str(err)[-2000:]}",
                },
            )
    return read_record(record_path) if record_path.exists() else {"status": "failed"}


def execute_process(params: RunParams) -> dict:
    """Run one run in a Python subprocess, without a notebook or a Jupyter kernel (for a machine that
    has neither, e.g. a GPU box); its output goes to ``results/executed/<run_id>.log``. Return its
    record (a failed one on error)."""
    record_path = Path(params.out_dir) / f"{params.run_id}.json"
    log_path = EXECUTED_DIR / f"{params.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import json, sys\n"
        "from tinyattn.experiment import RunParams, run\n"
        "run(RunParams.from_dict(json.loads(sys.argv[1])))\n"
    )
    parameters = json.dumps({**asdict(params), "progress": False})
    with open(log_path, "w") as log_file:
        finished = subprocess.run(
            [sys.executable, "-c", code, parameters],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(Path.cwd()),
        )
    if finished.returncode != 0 and run_status(params) != "failed":  # died before recording it
        tail = log_path.read_text()[-2000:]
        write_json_atomic(
            record_path,
            {
                "run_id": params.run_id,
                "status": "failed",
                "params": asdict(params),
                "error": f"exit status {finished.returncode}: {tail}",
            },
        )
    return read_record(record_path) if record_path.exists() else {"status": "failed"}


EXECUTORS = ("notebook", "process")


def run_study(
    profile_name: str,
    *,
    out_dir: str = "results/runs",
    shard_spec: str | None = None,
    retry_failed: bool = False,
    jobs: int = 1,
    notebook: Path = TRAIN_NOTEBOOK,
    executor: str = "notebook",
    time_limit: float | None = None,
    log=print,
) -> dict:
    """Run every pending run of the profile (shard); keep going past failures; return the counts.

    ``executor``: ``notebook`` runs each run's training notebook through papermill (an executed
    notebook per run), ``process`` runs it in a plain Python subprocess (a log per run); both write
    the same record. ``time_limit`` (seconds): start no run after this long, so that a machine lent
    for a fixed time ends with finished runs only; the rest stay pending for the next start."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    runs = shard(expand(load_profile(profile_name), out_dir), *parse_shard(shard_spec))
    todo = [
        r
        for r in runs
        if run_status(r) == "pending" or (retry_failed and run_status(r) == "failed")
    ]
    RunLock.clear_stale(out_dir)
    for params in todo:
        _set_aside_corrupt(params)
    total_estimate = sum(estimate_seconds(r) for r in todo)
    log(
        f"study {profile_name} shard {shard_spec or '1/1'}: {len(runs)} runs, "
        f"{len(runs) - len(todo)} already done or failed, {len(todo)} to run "
        f"(about {total_estimate / 60:.0f} CPU-minutes)"
    )
    if jobs > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    started, finished, estimated_done = time.time(), 0, 0.0
    outcome = {"done": 0, "failed": 0, "skipped": 0}
    if time_limit is not None:
        outcome["not_started"] = 0

    report_lock = threading.Lock()

    def one(params: RunParams) -> dict | None:
        lock = RunLock(params)
        if not lock.acquire():
            return None
        try:
            if run_status(params) == "done":  # finished by another runner meanwhile
                return None
            if executor == "process":
                return execute_process(params)
            return execute_run(params, notebook)
        finally:
            lock.release()

    def report(params: RunParams, record: dict | None) -> None:
        nonlocal finished, estimated_done
        with report_lock:
            finished += 1
            estimated_done += estimate_seconds(params)
            if record is None:
                outcome["skipped"] += 1
                status = "skipped (another runner has it, or it is done)"
            else:
                status = record["status"] if record["status"] in outcome else "failed"
                outcome[status] += 1
                if status == "done":
                    best = record["best"]["metrics"][record["select_metric"]]
                    status += (
                        f" {record['select_metric']}={best:.4f} in {record['wall_seconds']:.0f}s"
                    )
                else:
                    status += f": {record.get('error', '')[:200]}"
            elapsed = time.time() - started
            rate = elapsed / estimated_done if estimated_done else 1.0
            eta = (total_estimate - estimated_done) * rate / max(1, jobs)
            log(
                f"[{finished}/{len(todo)}] {params.task} {params.label} seed {params.seed}: {status}"
                f" | elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min"
            )

    def one_group(group: list[RunParams]) -> None:
        for params in group:  # in profile order: a two-stage run comes after its E=1 twin
            if time_limit is not None and time.time() - started > time_limit:
                with report_lock:
                    outcome["not_started"] += 1
                continue
            report(params, one(params))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one_group, g) for g in work_units(todo)]:
            future.result()
    return outcome


def work_units(todo: list[RunParams]) -> list[list[RunParams]]:
    """The runs in units that may run in parallel: each run alone, except that a two-stage run goes
    after its E = 1 twin in one unit when both are to run (so the twin's saved adapter is there).

    Tasks keep the profile's order; within a task the longest units go first, so that the task's
    last unit does not leave a job idle (and the two-stage runs, which the experts analysis reads,
    finish early)."""
    units: dict[str, list[RunParams]] = {p.run_id: [p] for p in todo}
    for params in todo:
        if params.two_stage:
            twin = params.stage_one().run_id
            if twin in units and params.run_id in units and units[twin] is not units[params.run_id]:
                units[twin].extend(units[params.run_id])
                units[params.run_id] = units[twin]
    unique = list({id(u): u for u in units.values()}.values())
    task_rank = {task: i for i, task in enumerate(dict.fromkeys(p.task for p in todo))}
    return sorted(
        unique,
        key=lambda u: (task_rank[u[0].task], -sum(estimate_seconds(p) for p in u)),
    )


def run_analyses(
    profile_name: str,
    *,
    out_dir: str = "results/runs",
    analysis_dir: str = "results/analysis",
    experts_label: str = "tinyattn_e4",
    independent_label: str = "tinyattn_e4_indep",
    force: bool = False,
    notebook_parameters: dict | None = None,
    notebook: Path = EXPERTS_NOTEBOOK,
    log=print,
) -> list[str]:
    """Run the experts analysis notebook on every finished ``experts_label`` run of a profile that
    saved its adapter, with the same task and seed's ``independent_label`` run beside it when there
    is one; the executed notebook and its report go to ``analysis_dir``. Returns the analysed run ids.
    A run analysed before is skipped unless ``force``, or unless its independent twin has finished
    since (the report is then redone with it). ``notebook_parameters`` override the notebook's other
    parameters (sample sizes, repeats)."""
    import papermill

    runs = expand(load_profile(profile_name), out_dir)
    independent = {(r.task, r.seed): r for r in runs if r.label == independent_label}
    analysed = []
    for params in [r for r in runs if r.label == experts_label]:
        if not _analysable(params):
            continue
        other = independent.get((params.task, params.seed))
        twin = other.run_id if other and _analysable(other) else None
        report = Path(analysis_dir) / f"{params.run_id}.json"
        if report.exists() and not force:
            if twin is None or json.loads(report.read_text()).get("independent"):
                continue
        parameters = {
            "task": params.task,
            "run_id": params.run_id,
            "independent_run_id": twin,
            "runs_dir": out_dir,
            "out_dir": analysis_dir,
            **(notebook_parameters or {}),
        }
        log(f"analysing {params.run_id} (independent: {parameters['independent_run_id']})")
        Path(analysis_dir).mkdir(parents=True, exist_ok=True)
        executed = Path(analysis_dir) / f"{params.run_id}.ipynb"
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=parameters,
            progress_bar=False,
            cwd=str(Path.cwd()),
        )
        portable_notebook(executed)
        analysed.append(params.run_id)
    return analysed


def installed_packages_dirs() -> list[Path]:
    """Where this interpreter's packages are installed, as named and with links resolved (a kernel
    may report either)."""
    paths = sysconfig.get_paths()
    dirs = {Path(paths[key]) for key in ("purelib", "platlib")}
    return sorted(dirs | {d.resolve() for d in dirs}, key=lambda d: -len(str(d)))


def portable_notebook(
    path: str | Path, root: Path = REPO, packages: list[Path] | None = None
) -> None:
    """Make an executed notebook fit to commit: no path of this machine in it. The installed packages'
    directory (library warnings name it) becomes ``<site-packages>``; the checkout's own location
    (papermill's input path) becomes relative to it."""
    path = Path(path)
    text = original = path.read_text()
    for folder in installed_packages_dirs() if packages is None else packages:
        text = text.replace(_json_spelling(f"{folder}/"), "<site-packages>/")
    text = text.replace(_json_spelling(f"{root.resolve()}/"), "")
    if text != original:
        write_text_atomic(path, text)


def _json_spelling(text: str) -> str:
    """``text`` as it is spelled inside a JSON string."""
    return json.dumps(text)[1:-1]


def _analysable(params: RunParams) -> bool:
    """Finished, with its trained adapter saved."""
    return run_status(params) == "done" and (params.adapter_dir / "adapter_config.json").is_file()
