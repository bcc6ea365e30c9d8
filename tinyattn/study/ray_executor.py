"""The Ray executor: a profile's pending runs as Ray tasks, on one machine, a cluster, or inside Slurm.

``tinyattn study --profile P --executor ray [--address auto]`` hands each unit of runs (a run, or an
E = 1 twin and its two-stage run; ``runner.work_units``) to Ray as one task that asks for the
profile's ``resources`` (a GPU per run on GPU profiles, CPUs otherwise). The driver keeps what the
other executors keep:

- **the driver writes the records.** A task trains its runs in a temporary folder on its worker and
  returns their records and saved adapters; the driver writes them into the runs folder (adapter
  files first, the record last, atomically). Workers need no shared filesystem; with one, nothing
  changes. A two-stage run's E = 1 twin adapter, when it is already saved, travels with the task.
- **resume and the lock.** The driver claims each run (``locks.RunLock``) before it submits it and
  skips a run another runner holds or has done, so two drivers on one grid never run a run twice.
- **a lost worker.** A task whose worker dies is retried by Ray (``max_retries``); only its returned
  result is written, so a retry neither loses nor duplicates a run. A task that still fails gets a
  failed record naming the error, as with the other executors.
- **``--time-limit``**: the driver submits units only while there is time left, and a task starts no
  run after the time its driver had left when it submitted it.

``ray`` comes with the ``tinyattn[ray]`` extra; the core install does not pull it in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tinyattn.experiment import RunParams
from tinyattn.records import (
    adapter_dir,
    record_path,
    record_status,
    write_bytes_atomic,
    write_json_atomic,
)

#: How often Ray reruns a task whose worker died (a node lost, a process killed).
MAX_RETRIES = 3
#: The environment a worker needs to find data and stay offline, forwarded from the driver's (Ray
#: itself gives each task as many threads as the CPUs it asked for).
FORWARDED_ENV = ("TINYATTN_", "HF_", "TRANSFORMERS_", "HUGGINGFACE_")


def connect(address: str | None = None):
    """The ``ray`` module, connected: to ``address`` (``auto``: the cluster this machine belongs to;
    ``ray://host:port``: a remote one), else to a running instance or a new local one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    return ray


def worker_env() -> dict[str, str]:
    """The driver's settings a worker needs (the data folder, offline switches)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


# ----------------------------------------------------------------------------- on a worker
def train_unit(units: list[dict], shipped: dict[str, bytes], seconds_left: float | None) -> dict:
    """Train a unit's runs, in order, in a fresh folder; return what they wrote there.

    ``units``: the runs' parameters; ``shipped``: files to place in the folder first (the saved
    adapter of a two-stage run's twin), by relative path. Returns ``{"records": [...], "files":
    {relative path: bytes}, "not_started": [run ids]}`` (records of every run the unit made, its
    twin's included when it had to train it)."""
    import tempfile

    from tinyattn.experiment import run

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tinyattn-ray-") as folder:
        out = Path(folder) / "runs"
        for name, content in shipped.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(content)
        not_started = []
        for data in units:
            params = RunParams.from_dict({**data, "out_dir": str(out)})
            if seconds_left is not None and time.time() - started > seconds_left:
                not_started.append(params.run_id)
                continue
            try:
                run(params)
            except Exception:  # noqa: BLE001 - the run recorded its failure; the next run goes on
                pass
        records = [_read_json(path) for path in sorted(out.glob("*.json"))]
        files = {
            str(path.relative_to(out)): path.read_bytes()
            for path in sorted((out / "adapters").rglob("*"))
            if path.is_file() and str(path.relative_to(out)) not in shipped
        }
    return {"records": records, "files": files, "not_started": not_started}


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- on the driver
def run_units(
    units: list[list[RunParams]],
    *,
    out_dir: str,
    resources: dict[str, float],
    claim: Callable[[RunParams], object | None],
    report: Callable[[RunParams, dict | None], None],
    not_started: Callable[[RunParams], None],
    time_limit: float | None = None,
    address: str | None = None,
) -> None:
    """Run ``units`` as Ray tasks asking for ``resources`` (per run); write what they return.

    ``claim(params)`` returns a held lock (with ``release()``), or None when the run is another
    runner's or done; ``report`` and ``not_started`` count outcomes as the scheduler does."""
    ray = connect(address)
    # max_calls=1: a fresh process per task, so no memory (GPU or host) is carried from run to run
    remote = ray.remote(max_calls=1)(train_unit).options(
        num_cpus=resources["cpus"],
        num_gpus=resources["gpus"],
        max_retries=MAX_RETRIES,
        runtime_env={"env_vars": worker_env()},
    )
    slots = _slots(ray, resources)
    started, queue, in_flight = time.time(), list(units), {}
    while queue or in_flight:
        while queue and len(in_flight) < slots:
            unit = queue.pop(0)
            left = None if time_limit is None else time_limit - (time.time() - started)
            if left is not None and left < 0:
                for params in unit:
                    not_started(params)
                continue
            claimed = []
            for params in unit:
                lock = claim(params)
                if lock is None:
                    report(params, None)
                else:
                    claimed.append((params, lock))
            if claimed:
                shipped = _twin_adapters([p for p, _ in claimed], out_dir)
                units_data = [asdict(p) for p, _ in claimed]
                in_flight[remote.remote(units_data, shipped, left)] = claimed
        if not in_flight:
            continue
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        claimed = in_flight.pop(ready[0])
        try:
            _write_results(ray.get(ready[0]), claimed, out_dir, report, not_started)
        except Exception as err:  # noqa: BLE001 - the task failed past its retries
            for params, _ in claimed:
                if record_status(params.run_id, out_dir) != "done":
                    error = f"ray task failed: {type(err).__name__}: {str(err)[-2000:]}"
                    record = {"run_id": params.run_id, "status": "failed", "params": asdict(params)}
                    write_json_atomic(
                        record_path(params.run_id, out_dir), record | {"error": error}
                    )
                    report(params, record | {"error": error})
        finally:
            for _, lock in claimed:
                lock.release()


def _slots(ray, resources: dict[str, float]) -> int:
    """How many tasks the cluster can run at once, at ``resources`` each (at least one)."""
    total = ray.cluster_resources()
    fits = [
        total.get(key.upper() if key == "gpus" else "CPU", 0) / need
        for key, need in (("cpus", resources["cpus"]), ("gpus", resources["gpus"]))
        if need
    ]
    return max(1, int(min(fits)))


def _twin_adapters(runs: list[RunParams], out_dir: str) -> dict[str, bytes]:
    """The saved E = 1 twin adapters the unit's two-stage runs start from, by relative path."""
    shipped = {}
    for params in runs:
        if not params.two_stage:
            continue
        folder = adapter_dir(params.stage_one().run_id, out_dir)
        for path in sorted(Path(folder).rglob("*")) if Path(folder).is_dir() else []:
            if path.is_file():
                shipped[str(path.relative_to(out_dir))] = path.read_bytes()
    return shipped


def _write_results(result: dict, claimed, out_dir: str, report, not_started) -> None:
    """Write a finished task's adapter files, then its records (never replacing a done record of a
    run this driver did not claim), and count the claimed runs' outcomes."""
    mine = {params.run_id: params for params, _ in claimed}
    for name, content in result["files"].items():
        path = Path(out_dir) / name
        if not path.exists():
            write_bytes_atomic(path, content)
    for record in result["records"]:
        run_id = record["run_id"]
        if run_id not in mine and record_status(run_id, out_dir) != "pending":
            continue  # a twin trained on the way, already recorded here
        record["params"]["out_dir"] = out_dir
        write_json_atomic(record_path(run_id, out_dir), record)
        if run_id in mine:
            report(mine.pop(run_id), record)
    for run_id in result["not_started"]:
        not_started(mine.pop(run_id))
    for params in mine.values():  # claimed, yet no record came back: count it failed
        report(params, {"status": "failed", "error": "the task returned no record"})
