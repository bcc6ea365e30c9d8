"""Run records: what a run was (parameters), how it went (metrics), and how it was made (provenance).

Records are JSON, written atomically (temporary file in the same folder, then rename), so a reader
never sees half a record; a record that cannot be read back is reported as such, not trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

#: Where a study's run records (and their adapter folders) live, relative to the repository.
RUNS_DIR = "results/runs"
#: Where the runner writes each analysed run's experts report (``<run_id>.json``).
ANALYSIS_DIR = "results/analysis"

RECORD_VERSION = 1
_PACKAGES = ("tinyattn", "torch", "transformers", "peft", "adapters", "accelerate", "datasets")


class CorruptRecordError(ValueError):
    """A record file exists but is truncated, unparseable, or not a run record."""


def run_id(params: dict, ignore: tuple[str, ...] = ()) -> str:
    """A readable, deterministic id: ``<task>-<method>-s<seed>-<hash of every parameter>``."""
    kept = {k: v for k, v in params.items() if k not in ignore}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()
    return f"{params.get('task', 'run')}-{params.get('method', 'x')}-s{params.get('seed', 0)}-{digest[:10]}"


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit(path: str | Path = ".") -> dict:
    """The commit of the checkout that ran the code, and which tracked files differed from it.

    ``TINYATTN_GIT_COMMIT``, when set, names the code instead: for a copy whose git metadata is missing
    or is not that of the code that runs (a copy sent to another machine, an unpacked archive)."""
    if os.environ.get("TINYATTN_GIT_COMMIT"):
        return _commit_from_environment()
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return _commit_from_environment()
    if commit.returncode != 0:
        return _commit_from_environment()
    changed = [line[3:] for line in status.stdout.splitlines() if line.strip()]
    return {"commit": commit.stdout.strip(), "dirty": bool(changed), "changed_files": changed}


def _commit_from_environment() -> dict:
    """The commit named by ``TINYATTN_GIT_COMMIT``, if whoever copied the code set that variable."""
    commit = os.environ.get("TINYATTN_GIT_COMMIT")
    if not commit:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": None, "source": "TINYATTN_GIT_COMMIT"}


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": None,
        "gpu": None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict:
    return {
        "versions": versions(),
        "git": git_commit(),
        "machine": machine(),
    }


def write_bytes_atomic(path: str | Path, data: bytes, *, replace: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader never sees half of
    it. ``replace=False``: ``path`` must not exist, and an existing file is never replaced
    (``FileExistsError``; the file appears through a hard link, which fails where one exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; records are for everyone to read
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str, *, replace: bool = True) -> Path:
    """``write_bytes_atomic`` of ``text`` (UTF-8)."""
    return write_bytes_atomic(path, text.encode(), replace=replace)


def write_json_atomic(path: str | Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_record(path: str | Path) -> dict:
    """A record read back; ``CorruptRecordError`` if it is truncated or not a run record."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptRecordError(f"{path}: unreadable run record ({err})") from err
    if not isinstance(record, dict) or "run_id" not in record or "status" not in record:
        raise CorruptRecordError(f"{path}: not a run record (no run_id/status)")
    return record


# Where records and adapters live: the one place that spells out the layout of a runs folder.
ADAPTERS_SUBDIR = "adapters"


def record_path(run_id: str, runs_dir: str | Path = RUNS_DIR) -> Path:
    """A run's record: ``<runs_dir>/<run_id>.json``."""
    return Path(runs_dir) / f"{run_id}.json"


def adapter_dir(run_id: str, runs_dir: str | Path = RUNS_DIR) -> Path:
    """Where a run's trained adapter is saved (``--save-adapter``): ``<runs_dir>/adapters/<run_id>``."""
    return Path(runs_dir) / ADAPTERS_SUBDIR / run_id


def record_status(run_id: str, runs_dir: str | Path = RUNS_DIR) -> str:
    """``done``, ``failed`` or ``pending`` (no record, one still running, or one that cannot be trusted)."""
    path = record_path(run_id, runs_dir)
    if not path.exists():
        return "pending"
    try:
        status = read_record(path)["status"]
    except CorruptRecordError:
        return "pending"
    return status if status in ("done", "failed") else "pending"


def read_records(
    runs_dir: str | Path = RUNS_DIR,
    *,
    status: str | None = "done",
    run_ids: Iterable[str] | None = None,
    where: Callable[[dict], bool] | None = None,
) -> list[dict]:
    """The records in ``runs_dir`` (sorted by file name): by default the finished ones (``status``
    None: all), optionally only ``run_ids`` and those for which ``where(record)`` is true. A record that
    cannot be read back is passed over: it is not a result."""
    wanted = None if run_ids is None else set(run_ids)
    found = []
    for path in sorted(Path(runs_dir).glob("*.json")):
        if wanted is not None and path.stem not in wanted:
            continue
        try:
            record = read_record(path)
        except CorruptRecordError:
            continue
        if status is not None and record["status"] != status:
            continue
        if where is not None and not where(record):
            continue
        found.append(record)
    return found


def read_run(run_id: str, runs_dir: str | Path = RUNS_DIR) -> dict:
    """One finished run's record; an error naming the run if it has none or it is not finished."""
    path = record_path(run_id, runs_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no run record {path}")
    record = read_record(path)
    if record["status"] != "done":
        raise ValueError(f"run {run_id} is not finished (status {record['status']!r})")
    return record


def check_out_dir(folder: str | Path) -> None:
    """Fail now, before any training, unless run records can be written to ``folder`` (created)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot write run records to the folder {str(folder)!r}: {err.strerror or err}"
        ) from err


def read_reports(
    analysis_dir: str | Path = ANALYSIS_DIR, run_ids: Iterable[str] | None = None
) -> list[dict]:
    """Every experts-analysis report (``<run_id>.json``) in ``analysis_dir``, or those of
    ``run_ids``, in file-name order: the one reader of the reports. A file that is not JSON, or is
    not a report of a run, is a ``ValueError`` naming it."""
    keep = None if run_ids is None else set(run_ids)
    reports = []
    for path in sorted(Path(analysis_dir).glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f"analysis report {path}: not valid JSON ({err.msg} at line {err.lineno})"
            ) from None
        if not isinstance(report, dict) or "run_id" not in report or "task" not in report:
            raise ValueError(f"analysis report {path}: not a report of a run (no run_id / task)")
        if keep is None or report["run_id"] in keep:
            reports.append(report)
    return reports
