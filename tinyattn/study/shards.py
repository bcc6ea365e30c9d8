"""Running the big profiles away from here: one shard of a profile on a machine lent for a while (a
Colab session, ``notebooks/shard_colab.ipynb``), the zip of its records that ``tinyattn merge`` takes
back, and what the book's page "Running the big profiles" tabulates per profile.

- ``study_command``: the ``tinyattn study`` command line of a shard (``--shard K/N``, an executor, a
  ``--time-limit``, or ``--dry-run``); ``merge_command`` the ``tinyattn merge`` that brings an earlier
  session's zip back first; ``run_command`` runs one and shows its output as it comes.
- ``zip_shard``: the shard's finished records, each with its adapter folder, in
  ``records-<profile>-shard-<k>-of-<n>.zip`` (``runs/<run_id>.json``, ``runs/adapters/<run_id>/``:
  the layout ``tinyattn merge`` reads). Only ``done`` records go in: a failed run stays out of the
  merged folder and is retried where the shard runs again (``--retry-failed``).
- ``gpu_estimates`` and ``scale_table``: per profile, its runs, what one run asks of a machine
  (``resources``), the runner's CPU-hour estimate and, once ``results/bench/gpu.json`` exists
  (``scripts/gpu_measure.sh``), the measured GPU-hours (``gpu_bench.gpu_hours``); ``gpu_status`` is
  the page's sentence about them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tinyattn.records import RUNS_DIR, adapter_dir, record_path, record_status
from tinyattn.study.profiles import as_profile, parse_shard, resources, shard
from tinyattn.study.tuning import planned_runs

#: The profiles meant for GPUs that the book's page "Running the big profiles" covers.
SCALE_PROFILES = ("paper", "paper_budget", "fewglue")
#: Where ``scripts/gpu_measure.sh`` leaves a real (not tiny) GPU measurement.
GPU_MEASUREMENT = Path("results") / "bench" / "gpu.json"
#: Inside a shard's zip, the folder that holds its records (and ``adapters/`` beside them).
ZIP_FOLDER = "runs"
#: Where Google Drive is mounted in Colab (a runs folder under it outlives the session).
DRIVE = Path("/content/drive")


# ----------------------------------------------------------------------------- one shard
def profile_name(profile: str | Path | dict) -> str:
    """The profile's name (its file's stem unless the YAML names it)."""
    return as_profile(profile)["name"]


def archive_name(profile: str | Path | dict, shard_spec: str | None) -> str:
    """``records-<profile>-shard-<k>-of-<n>.zip``."""
    k, n = parse_shard(shard_spec)
    return f"records-{profile_name(profile)}-shard-{k}-of-{n}.zip"


def shard_runs(
    profile: str | Path | dict, shard_spec: str | None, runs_dir: str | Path = RUNS_DIR
) -> list:
    """The planned runs of the shard (``--shard K/N``: whole (task, seed) groups)."""
    return shard(planned_runs(profile, str(runs_dir)), *parse_shard(shard_spec))


def study_command(
    profile: str | Path,
    shard_spec: str | None,
    *,
    runs_dir: str | Path = RUNS_DIR,
    executor: str = "process",
    time_limit: float | None = None,
    jobs: int = 1,
    retry_failed: bool = False,
    dry_run: bool = False,
) -> list[str]:
    """The ``tinyattn study`` command of the shard, as an argument list for this Python. A dry run
    only lists the shard's runs and their status; the others run what is pending, resumably."""
    command = [sys.executable, "-m", "tinyattn.cli", "study", "--profile", str(profile)]
    command += ["--shard", shard_spec or "1/1", "--out", str(runs_dir)]
    if dry_run:
        return [*command, "--dry-run"]
    command += ["--executor", executor, "--jobs", str(jobs)]
    if time_limit is not None:
        command += ["--time-limit", f"{time_limit:g}"]
    return [*command, "--retry-failed"] if retry_failed else command


def merge_command(sources: list[str | Path], into: str | Path) -> list[str]:
    """The ``tinyattn merge`` command that brings zips or folders of records into ``into``."""
    return [sys.executable, "-m", "tinyattn.cli", "merge", *map(str, sources), "--into", str(into)]


def run_command(command: list[str], log=print) -> int:
    """Run a command, passing each line of its output to ``log`` as it comes; its exit status."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        for line in process.stdout:
            log(line.rstrip("\n"))
    return process.returncode


@dataclass
class ShardArchive:
    """A shard's zip: its path, the shard's planned runs, the run ids of the records in it, how
    many adapter folders went with them, and the runs left out (failed, or not run yet)."""

    path: Path
    planned: int
    records: list[str] = field(default_factory=list)
    adapters: int = 0
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what the zip holds, and what it leaves out."""
        left = f"{len(self.failed)} failed and {len(self.pending)} pending runs left out"
        return (
            f"{self.path.name}: {len(self.records)} of the shard's {self.planned} runs "
            f"({self.adapters} with their adapter); {left}"
        )


def zip_shard(
    profile: str | Path | dict,
    shard_spec: str | None,
    runs_dir: str | Path = RUNS_DIR,
    into: str | Path = ".",
) -> ShardArchive:
    """Zip the shard's done records, each with its adapter folder when it has one, into
    ``into/<archive_name>`` (written whole, replacing an older zip of the shard)."""
    runs = shard_runs(profile, shard_spec, runs_dir)
    target = Path(into) / archive_name(profile, shard_spec)
    archive = ShardArchive(target, planned=len(runs))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as bundle:
            for params in runs:
                status = record_status(params.run_id, runs_dir)
                if status != "done":
                    (archive.failed if status == "failed" else archive.pending).append(
                        params.run_id
                    )
                    continue
                bundle.write(
                    record_path(params.run_id, runs_dir), f"{ZIP_FOLDER}/{params.run_id}.json"
                )
                archive.records.append(params.run_id)
                folder = adapter_dir(params.run_id, runs_dir)
                files = sorted(p for p in folder.rglob("*") if p.is_file())
                for path in files:
                    inside = Path(ZIP_FOLDER) / path.relative_to(Path(runs_dir))
                    bundle.write(path, inside.as_posix())
                archive.adapters += bool(files)
        os.chmod(partial, 0o644)  # mkstemp makes it private; the zip is for whoever merges it
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return archive


def in_colab() -> bool:
    """Whether this Python runs in a Colab runtime (its kernel has ``google.colab``)."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no ``google`` package at all
        return False


def prepare_runs_dir(runs_dir: str | Path) -> Path:
    """The runs folder, made; in Colab, Google Drive is mounted first when the folder is on it (a
    folder there keeps the records when the session ends, so the next session resumes)."""
    runs_dir = Path(runs_dir)
    if in_colab() and runs_dir.is_relative_to(DRIVE) and not (DRIVE / "MyDrive").is_dir():
        from google.colab import drive  # noqa: PLC0415 - only in Colab

        drive.mount(str(DRIVE))
    runs_dir.mkdir(parents=True, exist_ok=True)
    return runs_dir


def offer_download(path: str | Path) -> bool:
    """In Colab, hand the file to the browser as a download (True); elsewhere leave it (False)."""
    if not in_colab():
        return False
    from google.colab import files  # noqa: PLC0415 - only in Colab

    files.download(str(path))
    return True


# ----------------------------------------------------------------------------- the book's table
def gpu_estimates(
    profiles: tuple[str, ...] | list[str] = SCALE_PROFILES,
    measurement: str | Path = GPU_MEASUREMENT,
) -> dict | None:
    """``gpu_bench.gpu_hours`` of each profile from the measurement file, with the measurement's
    device, commit and completeness under ``"measurement"``; None while the file does not exist.
    A tiny or CPU measurement there is an error (``gpu_hours`` refuses it)."""
    if not Path(measurement).is_file():
        return None
    from tinyattn.study.gpu_bench import gpu_hours, read_measurement  # torch: only when needed

    measured = read_measurement(measurement)
    git = measured.get("git") or {}
    about = {
        "file": str(measurement),
        "device": measured["device"]["name"],
        "commit": (git.get("commit") or "unknown")[:7],
        "complete": bool(measured.get("complete")),
        "started_at": measured.get("started_at"),
    }
    return {"measurement": about} | {p: gpu_hours(p, measured) for p in profiles}


def scale_table(
    planned: pd.DataFrame, done: dict[str, int], gpu: dict | None = None
) -> pd.DataFrame:
    """Per profile: backbone, tasks, runs (and how many are done), GPUs per run, the runner's
    CPU-hour estimate (``planned``'s ``cpu_hours``, as the profiles page sums them: empty where a
    run has none) and, when ``gpu`` holds estimates, their GPU-hours (empty where the measurement
    has no configuration of the profile's backbone and protocol)."""
    rows = []
    for name, part in planned.groupby("profile", sort=False):
        row = {
            "profile": name,
            "backbone": part["backbone"].iloc[0],
            "tasks": ", ".join(dict.fromkeys(part["task"])),
            "runs": int(len(part)),
            "done": int(done.get(name, 0)),
            "GPUs per run": resources(name)["gpus"],
            "CPU-hours": part["cpu_hours"].sum(min_count=len(part)),
        }
        if gpu is not None:
            row["GPU-hours"] = gpu[name]["gpu_hours"] if name in gpu else None
        rows.append(row)
    table = pd.DataFrame(rows).set_index("profile")
    table["CPU-hours"] = table["CPU-hours"].astype(float)
    if gpu is not None:
        table["GPU-hours"] = table["GPU-hours"].astype(float)
    return table


def gpu_status(gpu: dict | None, script: str = "scripts/gpu_measure.sh") -> str:
    """The page's sentence about the GPU-hours: pending (and what makes them), or where they come
    from, and which profiles the measurement does not cover."""
    if gpu is None:
        return (
            f"**GPU-hours: pending.** No GPU has measured the paper-scale path yet "
            f"(`{GPU_MEASUREMENT.as_posix()}` does not exist), so the table shows none. "
            f"`bash {script}` on a GPU machine makes the file; this table then gains its GPU-hour "
            "column when the book is built again, with no edit."
        )
    about = gpu["measurement"]
    text = (
        f"**GPU-hours** measured on {about['device']} (code {about['commit']}, "
        f"`{Path(about['file']).as_posix()}`"
        + ("" if about["complete"] else "; the measurement was cut short")
        + "): each planned run's optimiser steps times the measured seconds per step "
        "(`tinyattn.study.gpu_bench.RULES`), without evaluation or model loading."
    )
    missing = [
        f"`{name}` ({estimate['reason']})"
        for name, estimate in gpu.items()
        if name != "measurement" and estimate.get("gpu_hours") is None
    ]
    if missing:
        text += " None for " + "; ".join(missing) + "."
    return text
