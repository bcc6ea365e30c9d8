"""Reproduce a profile: rerun its recorded runs into a fresh folder and compare each run with its
committed record, metric by metric, within a stated tolerance, saying why any run differs.

The policy (the book's Reproducing chapter): a profile that names ``code: <commit>`` is *pinned*: its
records were made with that commit's code and are rerun from a checkout of it. A profile that says
``frozen: <why>`` keeps its records as they were made, over several commits, because other profiles are
planned from them (``tune``: the ``cpu`` study's learning rates, hence its run ids); it is rerun from
today's code, and a difference the code explains is reported, not a failure. Any other profile must be
reproducible by today's code: when the code a run imports changes its numbers, the profile's records
are made again. So, per run:

- ``match``: every metric of the record's best and final evaluations within the tolerance;
- ``explained``: a metric differs by more, and the two runs' provenance says why (a pinned or frozen
  profile rerun from other code, other package versions, another device, processor or thread count);
- ``stale``: a metric differs by more and the code a run imports changed since the record was made,
  in a profile that is neither pinned nor frozen: the record must be made again (the check fails);
- ``unexplained``: a metric differs by more and nothing in the provenance differs (the check fails);
- ``failed``: the rerun did not finish (the check fails).

Only runs with a committed record are rerun. Their parameters (learning rates included, for a profile
that takes them from a tuning profile) are planned from the committed records, so each rerun has the
run id of the record it is compared with. When the runs must be made from another checkout (a pinned
commit's), a tuned profile's tuning records are copied into the fresh folder, so that ``tinyattn study
--out`` there plans the same runs; a folder rerun here holds reruns only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tinyattn.records import RUNS_DIR, read_records, record_path, record_status, write_json_atomic
from tinyattn.study.pins import PinnedCodeError, code_changes, pin_problem, short, training_paths
from tinyattn.study.profiles import as_profile
from tinyattn.study.rows import MATCH_TOLERANCE
from tinyattn.study.runner import execute, work_units
from tinyattn.study.status import profile_runs

# Largest difference allowed between a rerun's metric and its record's, in the metric's own units
# (accuracy, correlation: 1e-4 is 0.01 points). A rerun with the same code, versions and thread count
# on the same kind of CPU repeats its record to float rounding (the Reproducing chapter shows the
# measurement); the smallest change that matters, one SST-2 dev prediction, is 1.1e-3. Beyond it, a
# different thread count (which rounds differently, and training can carry that into a prediction)
# is an explanation, not a failure.
DEFAULT_TOLERANCE = MATCH_TOLERANCE
SUMMARY_DIR = Path("results") / "reproduce"
# Provenance whose difference can move a run's numbers beyond rounding.
_VERSION_KEYS = ("python", "torch", "transformers", "peft", "adapters", "accelerate", "datasets")
FAILING = ("stale", "unexplained", "failed")


# ----------------------------------------------------------------------------- comparing two runs
def metric_differences(record: dict, rerun: dict) -> list[dict]:
    """Every metric of the record's best and final evaluations beside the rerun's, and their
    difference (rerun - record, in the metric's units; NaN when the rerun lacks it)."""
    rows = []
    for which in ("best", "final"):
        for metric, recorded in sorted(((record.get(which) or {}).get("metrics") or {}).items()):
            again = ((rerun.get(which) or {}).get("metrics") or {}).get(metric)
            again = float("nan") if again is None else float(again)
            rows.append(
                {
                    "which": which,
                    "metric": metric,
                    "recorded": float(recorded),
                    "rerun": again,
                    "difference": again - float(recorded),
                }
            )
    return rows


def provenance_reasons(
    record: dict,
    rerun: dict,
    changes: Callable[[str, str | None], list[str] | None] = code_changes,
) -> list[dict]:
    """What differs between how the record and the rerun were made, each with whether it can move a
    metric beyond rounding (``explains``) and its ``kind`` (``code``, ``uncommitted``, ``versions``,
    ``device``, ``threads``, ``unknown``)."""
    reasons = []
    old, new = (_provenance(r) for r in (record, rerun))
    a, b = old["git"].get("commit"), new["git"].get("commit")
    if not a:
        reasons.append(_reason("unknown", "the record names no commit", True))
    elif a != b:
        files = changes(a, b)
        if files is None:
            text = f"the record was made at {short(a)}, a commit not in this checkout's history"
            reasons.append(_reason("code", text, True))
        elif files:
            text = (
                f"the record was made at {short(a)}, the rerun at {short(b)}; the code a run "
                f"imports changed between them: {', '.join(files)}"
            )
            reasons.append(_reason("code", text, True))
        else:
            text = f"the record was made at {short(a)}, the rerun at {short(b)}: same training code"
            reasons.append(_reason("code", text, False))
    for side, prov in (("record", old), ("rerun", new)):
        dirty = _uncommitted(prov["git"])
        if dirty:
            reasons.append(_reason("uncommitted", f"the {side} was made {dirty}", True))
    versions = [
        f"{k} {old['versions'].get(k)} -> {new['versions'].get(k)}"
        for k in _VERSION_KEYS
        if old["versions"].get(k) != new["versions"].get(k)
    ]
    if versions:
        reasons.append(_reason("versions", "versions differ: " + ", ".join(versions), True))
    devices = [
        f"{k} {old['machine'].get(k)} -> {new['machine'].get(k)}"
        for k in ("gpu", "processor")
        if old["machine"].get(k) != new["machine"].get(k)
    ]
    if record.get("device") != rerun.get("device"):
        devices.insert(0, f"device {record.get('device')} -> {rerun.get('device')}")
    if devices:
        reasons.append(_reason("device", "hardware differs: " + ", ".join(devices), True))
    threads = [old["machine"].get("torch_threads"), new["machine"].get("torch_threads")]
    if threads[0] != threads[1]:
        text = f"torch threads {threads[0]} -> {threads[1]} (float rounding differs)"
        reasons.append(_reason("threads", text, True))
    return reasons


def _provenance(record: dict) -> dict:
    prov = record.get("provenance") or {}
    return {
        "git": prov.get("git") or {},
        "versions": prov.get("versions") or {},
        "machine": prov.get("machine") or {},
    }


def _uncommitted(git: dict) -> str | None:
    """How a record's checkout differed from its commit in the training code (None: it did not)."""
    if not git.get("dirty"):
        return None
    listed = git.get("changed_files")
    if listed is None:
        return "from a checkout with uncommitted changes (not listed)"
    wanted = set(training_paths())
    touched = sorted(f for f in listed if f in wanted)
    return f"with uncommitted changes to {', '.join(touched)}" if touched else None


def _reason(kind: str, text: str, explains: bool) -> dict:
    return {"kind": kind, "text": text, "explains": explains}


def compare_run(
    record: dict,
    rerun: dict | None,
    tolerance: float = DEFAULT_TOLERANCE,
    pinned: str | None = None,
    changes: Callable[[str, str | None], list[str] | None] = code_changes,
    frozen: bool = False,
) -> dict:
    """One run's verdict: its metric differences, the provenance reasons, and a ``status`` (see the
    module's docstring). ``pinned``: the commit the profile is pinned to, if any; ``frozen``: whether
    its records are kept as made."""
    params = record.get("params") or {}
    row = {
        "run_id": record["run_id"],
        "task": record.get("task", params.get("task")),
        "label": params.get("label") or record.get("method"),
        "seed": record.get("seed", params.get("seed")),
        "record_commit": _provenance(record)["git"].get("commit"),
    }
    if rerun is None or rerun.get("status") != "done":
        error = (rerun or {}).get("error", "no record in the rerun folder")
        return row | {
            "rerun_commit": None,
            "status": "failed",
            "largest_difference": None,
            "metrics": [],
            "reasons": [_reason("failed", f"the rerun did not finish: {str(error)[:300]}", False)],
        }
    metrics = metric_differences(record, rerun)
    for m in metrics:
        m["within"] = bool(abs(m["difference"]) <= tolerance)  # NaN: False
    largest = max((abs(m["difference"]) for m in metrics), default=0.0)
    reasons = provenance_reasons(record, rerun, changes)
    if pinned and row["record_commit"] and not row["record_commit"].startswith(pinned):
        files = changes(pinned, row["record_commit"])
        same = "same training code" if files == [] else "training code differs"
        text = f"the record was made at {short(row['record_commit'])}, not the pinned {pinned} ({same})"
        reasons.append(_reason("pin", text, False))
    explaining = [r for r in reasons if r["explains"]]
    if all(m["within"] for m in metrics):
        status = "match"
    elif not explaining:
        status = "unexplained"
    elif not (pinned or frozen) and any(r["kind"] in ("code", "uncommitted") for r in explaining):
        status = "stale"
    else:
        status = "explained"
    return row | {
        "rerun_commit": _provenance(rerun)["git"].get("commit"),
        "status": status,
        "largest_difference": None if math.isnan(largest) else largest,
        "metrics": metrics,
        "reasons": reasons,
    }


# ----------------------------------------------------------------------------- the check
def select(planned: list, runs: Iterable[str] | None) -> list:
    """The planned runs that ``runs`` names (labels, tasks or run ids); all when it names none. An
    item that names no run is an error listing what may be named."""
    if not runs:
        return planned
    chosen = []
    for item in runs:
        hits = [p for p in planned if item in (p.label, p.task, p.run_id)]
        if not hits:
            labels = sorted({p.label for p in planned} | {p.task for p in planned})
            raise ValueError(f"--runs {item!r} names no recorded run; labels and tasks: {labels}")
        chosen += [p for p in hits if p not in chosen]
    return [p for p in planned if p in chosen]


def reproduce(
    profile_name: str | Path | dict,
    into: str | Path,
    *,
    runs: Iterable[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    records_dir: str | Path = RUNS_DIR,
    jobs: int = 1,
    executor: str = "notebook",
    any_code: bool = False,
    log=print,
) -> dict:
    """Rerun the profile's recorded runs (those ``runs`` names) into ``into`` and compare each with
    its record; the summary ``write_summary`` stores. Runs already done in ``into`` are not rerun, so
    a folder filled elsewhere (from a pinned commit's checkout) is only compared.

    A pinned profile whose runs would be rerun here from other code raises ``PinnedCodeError``
    naming the files and what to do, unless ``any_code`` (its differences are then explained by
    the code)."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ValueError(f"--tolerance must be a non-negative number, got {tolerance!r}")
    profile = as_profile(profile_name)
    name, pin = profile["name"], profile.get("code")
    status = profile_runs(profile, str(records_dir))
    if status.waiting:
        raise ValueError(f"profile {name!r} cannot be planned: {status.waiting}")
    recorded = set(status.runs["run_id"]) if not status.runs.empty else set()
    planned = select([p for p in status.planned if p.run_id in recorded], runs)
    if not planned:
        raise ValueError(f"profile {name!r} has no committed record to reproduce")
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    rerun_plan = [replace(p, out_dir=str(into)) for p in planned]
    todo = [p for p in rerun_plan if record_status(p.run_id, into) != "done"]
    problem = pin_problem(profile) if todo else None
    if problem and not any_code:
        _seed_tuning_records(profile, records_dir, into)  # `study --out` elsewhere plans from them
        raise PinnedCodeError(
            f"profile {name!r} is pinned (code: {pin}): its runs are rerun from a checkout of that "
            f"commit, and {problem}. From a checkout of {pin} (git worktree add <dir> {pin}) run "
            f"`tinyattn study --profile {name} --out {into}` ({into} now holds the records it "
            f"plans from), then here `tinyattn reproduce --profile {name} --into {into}` compares "
            "without running; or pass --any-code to rerun with this checkout's code"
        )
    log(
        f"reproduce {name}: {len(planned)} recorded runs, {len(planned) - len(todo)} already in "
        f"{into}, {len(todo)} to run"
    )
    tick = time.perf_counter()
    _execute_all(todo, jobs, executor, log)
    rerun = {"runs": len(todo), "jobs": jobs, "executor": executor}
    rerun["wall_seconds"] = round(time.perf_counter() - tick, 1)
    records = {r["run_id"]: r for r in read_records(records_dir, run_ids=recorded)}
    reruns = {r["run_id"]: r for r in read_records(into, status=None, run_ids=recorded)}
    frozen = bool(profile.get("frozen"))
    rows = [
        compare_run(records[p.run_id], reruns.get(p.run_id), tolerance, pin, frozen=frozen)
        for p in planned
    ]
    summary = summarise(name, pin, tolerance, rows, selected=list(runs or []))
    return summary | {"frozen": profile.get("frozen"), "rerun": rerun}


def _seed_tuning_records(profile: dict, records_dir: str | Path, into: Path) -> None:
    """Copy the tuning profile's committed records into ``into`` (a tuned profile plans from them)."""
    if "tuning" not in profile:
        return
    tuning = profile_runs(profile["tuning"], str(records_dir))
    for run_id in tuning.runs["run_id"] if not tuning.runs.empty else []:
        target = record_path(run_id, into)
        if not target.exists():
            shutil.copyfile(record_path(run_id, records_dir), target)


def _execute_all(todo: list, jobs: int, executor: str, log) -> None:
    """The runs, in the runner's units (a two-stage run after its one-expert twin), ``jobs`` at once."""
    if jobs > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))

    def unit(group: list) -> None:
        for params in group:
            record = execute(params, executor)
            log(f"{params.task} {params.label} seed {params.seed}: {record.get('status')}")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(unit, g) for g in work_units(todo)]:
            future.result()


def summarise(
    profile: str, pin: str | None, tolerance: float, rows: list[dict], selected: list[str]
) -> dict:
    """The check's result: per-run rows, counts by status, the largest difference, and ``passed``."""
    counts = {s: 0 for s in ("match", "explained", *FAILING)}
    for row in rows:
        counts[row["status"]] += 1
    largest = max(
        (r for r in rows if r["largest_difference"] is not None),
        key=lambda r: r["largest_difference"],
        default=None,
    )
    commits = sorted({r["rerun_commit"] for r in rows if r["rerun_commit"]})
    return {
        "profile": profile,
        "code": pin,
        "tolerance": tolerance,
        "checked_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000"),
        "rerun_commits": commits,
        "runs_selected": selected,
        "counts": counts,
        "largest_difference": None if largest is None else largest["largest_difference"],
        "largest_difference_run": None if largest is None else largest["run_id"],
        "passed": not any(counts[s] for s in FAILING),
        "runs": rows,
    }


def write_summary(summary: dict, path: str | Path | None = None) -> Path:
    """Store the summary (default ``results/reproduce/<profile>.json``)."""
    return write_json_atomic(path or SUMMARY_DIR / f"{summary['profile']}.json", summary)


def read_summary(path: str | Path) -> dict:
    """A stored summary (``write_summary``); a missing or malformed file is a ``ValueError`` naming it."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"reproduce summary {path}: cannot be read ({err})") from None
    if not isinstance(summary, dict) or not {"runs", "counts", "passed"} <= set(summary):
        raise ValueError(f"reproduce summary {path}: not a summary of `tinyattn reproduce`")
    return summary


def run_table(summary: dict) -> pd.DataFrame:
    """One row per run of a summary: status, largest difference, the two commits."""
    return pd.DataFrame(
        [
            {
                "task": r["task"],
                "method": r["label"],
                "status": r["status"],
                "largest |difference|": "-"
                if r["largest_difference"] is None
                else f"{r['largest_difference']:.1e}",
                "record made at": (r["record_commit"] or "?")[:7],
                "rerun at": (r["rerun_commit"] or "?")[:7],
            }
            for r in summary["runs"]
        ]
    )


def summary_numbers(summary: dict) -> dict[str, str]:
    """What the Reproducing chapter quotes from a summary: the verdict in words, the commits rerun
    from, the largest difference, the tolerance, the date and whether the check passed."""
    counts = {k: v for k, v in summary["counts"].items() if v}
    matched, total = summary["counts"]["match"], len(summary["runs"])
    profile = summary["profile"]
    verdict = (
        f"every one of the {total} recorded runs of `{profile}` matched its record"
        if matched == total
        else f"{matched} of the {total} recorded runs of `{profile}` matched their records ("
        + ", ".join(f"{n} {status}" for status, n in counts.items() if status != "match")
        + ")"
    )
    largest = summary["largest_difference"]
    return {
        "verdict": verdict,
        "commit": ", ".join(c[:7] for c in summary["rerun_commits"]),
        "largest": f"{largest:.1e}" if largest else "0 (identical)",
        "tolerance": f"{summary['tolerance']:g}",
        "date": summary["checked_at"][:10],
        "passed": "passed" if summary["passed"] else "failed",
        "wall": _wall(summary.get("rerun")),
    }


def _wall(rerun: dict | None) -> str:
    """How long the rerun took, as measured (a summary from before it was measured: not measured)."""
    if not rerun or not rerun.get("runs"):
        return "not measured (no run was rerun)" if rerun else "not measured"
    at_once = "one at a time" if rerun["jobs"] == 1 else f"{rerun['jobs']} at a time"
    return (
        f"{rerun['wall_seconds'] / 60:.1f} minutes of wall time for {rerun['runs']} runs, {at_once}"
    )


def format_summary(summary: dict) -> str:
    """The summary as the command prints it: one line per run, its differences and reasons."""
    lines = []
    for row in summary["runs"]:
        largest = row["largest_difference"]
        size = "-" if largest is None else f"{largest:.2e}"
        lines.append(
            f"{row['status']:11s} {row['task']:6s} {row['label']:14s} seed {row['seed']:<4} "
            f"largest |difference| {size}  ({row['run_id']})"
        )
        for m in row["metrics"]:
            if not m["within"]:
                lines.append(
                    f"    {m['which']} {m['metric']}: recorded {m['recorded']:.6f}, "
                    f"rerun {m['rerun']:.6f}, difference {m['difference']:+.6f}"
                )
        lines += [f"    - {r['text']}" for r in row["reasons"]]
    verdict = "passed" if summary["passed"] else "FAILED"
    lines.append(
        f"reproduce {summary['profile']}: {verdict} at tolerance {summary['tolerance']:g}; "
        f"{summary['counts']}; largest difference {summary['largest_difference']}"
        + (f" (pinned to {summary['code']})" if summary["code"] else "")
        + (" (frozen: records kept as made)" if summary.get("frozen") else "")
    )
    return "\n".join(lines)
