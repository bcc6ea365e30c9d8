"""The runner: a profile's planned runs -> records, resumably, in shards, one or more at a time.

Each run's record lives at ``<out_dir>/<run_id>.json`` and its id is a hash of its parameters, so:

- a run whose record says ``done`` is never run again; killing the runner loses only the run in flight
  (it has no record yet, or a lock whose process is gone) and that run is redone;
- a truncated or unreadable record is moved aside and the run redone;
- ``--shard K/N`` gives each machine the (task, seed) groups whose position in the sorted list is
  K-1 modulo N: the shards partition the grid, and their ``results/runs`` merge by copying files.

A run goes through an executor (its training notebook through papermill, or a plain Python process);
the run writes its own record, and ``execute`` records a failure for a run that died before it could.
``run_analyses`` runs the experts analysis notebook on a profile's finished four-expert runs.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import sysconfig
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from tinyattn.experiment import RunParams
from tinyattn.records import (
    ANALYSIS_DIR,
    RUNS_DIR,
    CorruptRecordError,
    adapter_dir,
    read_record,
    record_path,
    record_status,
    write_json_atomic,
    write_text_atomic,
)
from tinyattn.study.locks import RunLock
from tinyattn.study.profiles import REPO, estimate_seconds, parse_shard, shard
from tinyattn.study.tuning import planned_runs

TRAIN_NOTEBOOK = REPO / "notebooks" / "train.ipynb"
EXPERTS_NOTEBOOK = REPO / "notebooks" / "experts.ipynb"
EXECUTED_DIR = Path("results") / "executed"
EXECUTORS = ("notebook", "process", "ray")
# What the process executor runs: one run, from its parameters as JSON.
PROCESS_CODE = (
    "import json, sys\n"
    "from tinyattn.experiment import RunParams, run\n"
    "run(RunParams.from_dict(json.loads(sys.argv[1])))\n"
)


def _set_aside_corrupt(params: RunParams) -> None:
    """Move a record that cannot be read back out of the way (kept beside it, not deleted)."""
    path = record_path(params.run_id, params.out_dir)
    if path.exists():
        try:
            read_record(path)
        except CorruptRecordError:
            path.rename(path.with_name(f"{path.name}.corrupt-{int(time.time())}"))


# ----------------------------------------------------------------------------- executors
def execute(
    params: RunParams,
    executor: str = "notebook",
    notebook: Path = TRAIN_NOTEBOOK,
    kernel: str = "python3",
    gpu: str | None = None,
) -> dict:
    """Run one run with ``executor`` and return its record (a failed one on error); ``gpu``: the
    process executor's run sees only this GPU (``CUDA_VISIBLE_DEVICES``).

    The run records its own outcome; a run that died before it could (a dead kernel or process)
    gets a failed record here, naming the error: the one place where the runner records a failure."""
    if executor == "notebook":
        error = _run_notebook(params, notebook, kernel)
    elif executor == "process":
        error = _run_process(params, gpu)
    else:
        raise ValueError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    path = record_path(params.run_id, params.out_dir)
    if error is not None and record_status(params.run_id, params.out_dir) != "failed":
        record = {"run_id": params.run_id, "status": "failed", "params": asdict(params)}
        write_json_atomic(path, record | {"error": error})
    return read_record(path) if path.exists() else {"status": "failed"}


def _run_notebook(params: RunParams, notebook: Path, kernel: str) -> str | None:
    """Run the training notebook through papermill (the executed notebook is kept under
    ``results/executed``); None, or the error it ended with."""
    import papermill

    from tinyattn.study.priority import NiceKernelManager

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
            kernel_manager_class=NiceKernelManager,  # under `nice`, the kernel is too
        )
    except Exception as err:
        return f"{type(err).__name__}: {str(err)[-2000:]}"
    return None


def _run_process(params: RunParams, gpu: str | None = None) -> str | None:
    """Run the run in a Python subprocess, without a notebook or a Jupyter kernel (for a machine that
    has neither, e.g. a GPU box), on GPU ``gpu`` alone when one is given; its output goes to
    ``results/executed/<run_id>.log``. None, or the exit status and the log's tail."""
    log_path = EXECUTED_DIR / f"{params.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parameters = json.dumps({**asdict(params), "progress": False})
    env = None if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    with open(log_path, "w") as log_file:
        if gpu is not None:
            log_file.write(f"CUDA_VISIBLE_DEVICES={gpu}\n")
            log_file.flush()
        finished = subprocess.run(
            [sys.executable, "-c", PROCESS_CODE, parameters],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(Path.cwd()),
            env=env,
        )
    if finished.returncode != 0:
        return f"exit status {finished.returncode}: {log_path.read_text()[-2000:]}"
    return None


# ----------------------------------------------------------------------------- scheduler
def run_study(
    profile_name: str,
    *,
    out_dir: str = RUNS_DIR,
    shard_spec: str | None = None,
    retry_failed: bool = False,
    jobs: int = 1,
    notebook: Path = TRAIN_NOTEBOOK,
    executor: str = "notebook",
    time_limit: float | None = None,
    address: str | None = None,
    log=print,
) -> dict:
    """Run every pending run of the profile (shard); keep going past failures; return the counts.

    ``executor``: ``notebook`` runs each run's training notebook through papermill (an executed
    notebook per run), ``process`` runs it in a plain Python subprocess (a log per run); both write
    the same record. ``time_limit`` (seconds): start no run after this long, so that a machine lent
    for a fixed time ends with finished runs only; the rest stay pending for the next start."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    runs = shard(planned_runs(profile_name, out_dir), *parse_shard(shard_spec))
    status = {r.run_id: record_status(r.run_id, out_dir) for r in runs}
    todo = [
        r
        for r in runs
        if status[r.run_id] == "pending" or (retry_failed and status[r.run_id] == "failed")
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

    def claim(params: RunParams) -> RunLock | None:
        """The run's lock, held; None when another runner has it or has done it meanwhile."""
        lock = RunLock(params)
        if not lock.acquire():
            return None
        if record_status(params.run_id, out_dir) == "done":
            lock.release()
            return None
        return lock

    # Several GPUs and several jobs with the process executor: each job's runs get a GPU of their own.
    devices = visible_gpus() if executor == "process" and jobs > 1 else []
    free = queue.Queue()
    for slot in range(jobs if devices else 0):
        free.put(devices[slot % len(devices)])

    def one(params: RunParams) -> dict | None:
        lock = claim(params)
        if lock is None:
            return None
        gpu = free.get() if devices else None
        try:
            return execute(params, executor, notebook, gpu=gpu)
        finally:
            lock.release()
            if gpu is not None:
                free.put(gpu)

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
                not_started(params)
                continue
            report(params, one(params))

    def not_started(params: RunParams) -> None:
        with report_lock:
            outcome["not_started"] += 1

    if executor == "ray":
        from tinyattn.study.profiles import resources
        from tinyattn.study.ray_executor import run_units

        run_units(
            work_units(todo),
            out_dir=out_dir,
            resources=resources(profile_name),
            claim=claim,
            report=report,
            not_started=not_started,
            time_limit=time_limit,
            address=address,
        )
        return outcome
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one_group, g) for g in work_units(todo)]:
            future.result()
    return outcome


def visible_gpus() -> list[str]:
    """The GPUs this machine lets a run use, by the ids ``CUDA_VISIBLE_DEVICES`` gives them (empty
    without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


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


# ----------------------------------------------------------------------------- analyses
def run_analyses(
    profile_name: str,
    *,
    out_dir: str = RUNS_DIR,
    analysis_dir: str = ANALYSIS_DIR,
    experts_label: str = "tinyattn_e4",
    independent_label: str = "tinyattn_e4_indep",
    other_labels: tuple[str, ...] = ("tinyattn_e4_seq",),
    force: bool = False,
    notebook_parameters: dict | None = None,
    notebook: Path = EXPERTS_NOTEBOOK,
    log=print,
) -> list[str]:
    """Run the experts analysis notebook on every finished ``experts_label`` run of a profile that
    saved its adapter, with the same task and seed's ``independent_label`` run beside it when there
    is one, and of every ``other_labels`` run (the authors' sequential experts), alone; the executed
    notebook and its report go to ``analysis_dir``. Returns the analysed run ids.
    A run analysed before is skipped unless ``force``, or unless its independent twin has finished
    since (the report is then redone with it). ``notebook_parameters`` override the notebook's other
    parameters (sample sizes, repeats)."""
    import papermill

    from tinyattn.study.priority import NiceKernelManager

    runs = planned_runs(profile_name, out_dir)
    independent = {(r.task, r.seed): r for r in runs if r.label == independent_label}
    analysed = []
    for params in [r for r in runs if r.label in (experts_label, *other_labels)]:
        if not _analysable(params):
            continue
        other = (
            independent.get((params.task, params.seed)) if params.label == experts_label else None
        )
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
            kernel_manager_class=NiceKernelManager,
        )
        portable_notebook(executed)
        analysed.append(params.run_id)
    return analysed


def _analysable(params: RunParams) -> bool:
    """Finished, with its trained adapter saved."""
    return (
        record_status(params.run_id, params.out_dir) == "done"
        and (adapter_dir(params.run_id, params.out_dir) / "adapter_config.json").is_file()
    )


# ----------------------------------------------------------------------------- executed notebooks
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
