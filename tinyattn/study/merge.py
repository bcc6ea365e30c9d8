"""Merging run records from several machines, Colab shards or contributors into one runs folder
(``tinyattn merge SRC... --into DIR``).

A source is a folder of records (its ``<run_id>.json`` files, as a runs folder holds them) or a
``.zip`` of one (a Colab shard's download: records are found anywhere inside it, e.g.
``runs/<id>.json`` or ``results/runs/<id>.json``, but not under an ``adapters/`` folder). A run's
adapter is the folder ``adapters/<run_id>/`` beside its record. Each record is checked first, and
*refused* (reported, never copied) when

- it cannot be read back (truncated, not JSON) or is not a run record (no ``run_id`` and ``status``);
- it is not ``done`` or ``failed`` (only finished runs are merged);
- its run id is not its file's name, or not the id its own parameters give (``params`` through
  ``RunParams.run_id``), or the training settings it ran with (``config``) are not its parameters';
- a done record lacks its best and final metrics, or its provenance (its commit and package versions);
- it belongs to a pinned profile (``code: <commit>``) and names a commit other than the pin, unless
  that commit's training code (``pins.training_paths``) is the pin's (``tinyattn study`` makes a
  pinned profile's runs from such a checkout too), or was made with uncommitted changes to that code.

Then the accepted records of each run, from the sources and from DIR, are weighed together:

- **new**: DIR has no record of the run; one is copied, with its adapter folder when a source has one;
- **duplicate**: DIR's record and the incoming ones agree (or all failed); nothing is copied but a
  missing adapter folder;
- **conflicting**: two done records disagree; neither is copied, and DIR's record, if any, stays as
  it is. A failed record in DIR beside an incoming done one is a conflict too, since nothing in DIR
  is overwritten: remove the failed record and merge again.

Two done records **agree** when their best and final evaluations report the same metrics, each within
``AGREEMENT_TOLERANCE`` (10⁻⁴ in the metric's units, ``reproduce``'s tolerance: a rerun with the same
code and thread count repeats its record to rounding); NaN agrees with NaN. A done record wins over a
failed one: the failed records of a run that has a done one are dropped, and a failed record is
copied only when no record of the run is done and DIR has none.

The summary counts, per committed profile, the runs it plans (``tuning.planned_runs``, with learning
rates from the records as they are after the merge, else from the repository's); a run of several
profiles counts under each, a run of none under "no profile". It holds counts, never metric values.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

from tinyattn.experiment import RunParams
from tinyattn.records import (
    ADAPTERS_SUBDIR,
    RUNS_DIR,
    adapter_dir,
    read_record,
    record_path,
    write_bytes_atomic,
)
from tinyattn.study.pins import code_changes, short, training_paths
from tinyattn.study.profiles import REPO, available_profiles, load_profile
from tinyattn.study.reproduce import DEFAULT_TOLERANCE
from tinyattn.study.tuning import TuningIncompleteError, planned_runs
from tinyattn.train import TrainConfig

#: Largest difference between two records' metrics (best and final) for them to agree.
AGREEMENT_TOLERANCE = DEFAULT_TOLERANCE
KINDS = ("new", "duplicate", "conflicting", "refused")
NO_PROFILE = "no profile"
#: The training settings ``config`` holds that must equal the parameters' (``progress`` is display).
_COMPARED = sorted({f.name for f in fields(TrainConfig)} - {"progress"})


@dataclass
class Candidate:
    """One record file of a source: its name as reported (the file, or ``<zip>:<path in it>``), the
    file on this machine, its bytes (copied as they are), and why it is refused (None: it is not)."""

    name: str
    path: Path
    data: bytes
    record: object = None
    problem: str | None = None

    @property
    def run_id(self) -> str:
        """The run the file says it holds: its record's ``run_id``, else its file's name."""
        found = self.record.get("run_id") if isinstance(self.record, dict) else None
        return found if isinstance(found, str) else self.path.stem

    @property
    def adapter(self) -> Path | None:
        """The run's adapter folder beside the record in its source, if there is one."""
        folder = self.path.parent / ADAPTERS_SUBDIR / self.run_id
        return folder if folder.is_dir() else None


@dataclass
class Outcome:
    """What the merge does with one run (or, when ``refused``, one file): its kind (``KINDS``), one
    line naming the files (never a metric value) and the profiles that plan the run."""

    kind: str
    run_id: str
    text: str
    profiles: list[str] = field(default_factory=list)


@dataclass
class MergeReport:
    """A merge's outcomes, the sources it could not read, and what it copied (or would copy)."""

    into: str
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # sources that could not be read
    notes: list[str] = field(default_factory=list)  # worth knowing, not a failure
    records_copied: int = 0
    adapters_copied: int = 0

    @property
    def ok(self) -> bool:
        """Every source read, nothing refused or conflicting."""
        return not self.problems()

    def problems(self) -> list[str]:
        """One line per unreadable source, refused file and conflicting run."""
        bad = [o for o in self.outcomes if o.kind in ("conflicting", "refused")]
        return self.errors + [f"{o.kind}: {o.text}" for o in bad]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per profile (and ``all``, each run or file once): how many runs of each kind."""
        table: dict[str, dict[str, int]] = {}
        for outcome in self.outcomes:
            for name in [*(outcome.profiles or [NO_PROFILE]), "all"]:
                table.setdefault(name, dict.fromkeys(KINDS, 0))[outcome.kind] += 1
        return table


# ----------------------------------------------------------------------------- agreement
def _metrics(record: dict) -> dict[tuple[str, str], float]:
    """Every metric of a record's best and final evaluations, keyed by (evaluation, metric)."""
    return {
        (which, name): math.nan if value is None else float(value)
        for which in ("best", "final")
        for name, value in record[which]["metrics"].items()
    }


def agree(a: dict, b: dict, tolerance: float = AGREEMENT_TOLERANCE) -> bool:
    """Whether two done records of a run agree: the same metrics in their best and final
    evaluations, each within ``tolerance`` (NaN agrees with NaN)."""
    first, second = _metrics(a), _metrics(b)
    return first.keys() == second.keys() and all(
        abs(first[k] - second[k]) <= tolerance or (math.isnan(first[k]) and math.isnan(second[k]))
        for k in first
    )


# ----------------------------------------------------------------------------- reading sources
def gather(sources: list[str | Path], workdir: Path, report: MergeReport) -> list[Candidate]:
    """The record files of every source, in order: a folder's ``*.json``; a zip's ``*.json``
    anywhere but under ``adapters/`` (extracted into ``workdir``). A source that cannot be read is
    a line in ``report.errors``."""
    found = []
    for number, source in enumerate(map(Path, sources)):
        if source.is_dir():
            paths = [p for p in sorted(source.glob("*.json")) if not p.name.startswith(".")]
            found += [_candidate(p, str(p)) for p in paths]
        elif source.is_file() and zipfile.is_zipfile(source):
            root = workdir / f"source-{number}"
            try:
                with zipfile.ZipFile(source) as archive:
                    archive.extractall(root)  # names that would leave ``root`` are made safe
            except (zipfile.BadZipFile, OSError) as err:
                report.errors.append(f"source {source}: cannot be unpacked ({err})")
                continue
            parts = {
                p: p.relative_to(root).parts for p in sorted(root.rglob("*.json")) if p.is_file()
            }
            paths = [
                p
                for p, inside in parts.items()
                if ADAPTERS_SUBDIR not in inside[:-1]
                and not any(part.startswith((".", "__MACOSX")) for part in inside)
            ]
            found += [_candidate(p, f"{source}:{p.relative_to(root)}") for p in paths]
        elif source.exists():
            report.errors.append(f"source {source}: neither a folder of records nor a .zip of one")
        else:
            report.errors.append(f"source {source}: no such folder or file")
    return found


def _candidate(path: Path, name: str) -> Candidate:
    data = path.read_bytes()
    try:
        return Candidate(name, path, data, record=json.loads(data))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        return Candidate(name, path, data, problem=f"unreadable: truncated or not JSON ({err})")


# ----------------------------------------------------------------------------- checks
def check_record(candidate: Candidate) -> str | None:
    """Why a record file is refused before its provenance is weighed (None: it is not): it is not a
    finished run record, its run id is not its file's name or its parameters', or it is incomplete."""
    record = candidate.record
    if candidate.problem:
        return candidate.problem
    if not isinstance(record, dict) or "run_id" not in record or "status" not in record:
        return "not a run record (no run_id/status)"
    if record["status"] not in ("done", "failed"):
        return f"not finished (status {record['status']!r}): only done and failed runs are merged"
    if record["run_id"] != candidate.path.stem:
        return f"its run id {record['run_id']!r} is not its file's name"
    if not isinstance(record.get("params"), dict):
        return "it holds no parameters (params)"
    try:
        params = RunParams.from_dict(dict(record["params"]))
    except (TypeError, ValueError) as err:
        return f"its parameters do not make a run ({err})"
    if params.run_id != record["run_id"]:
        return f"its run id is not the one its parameters give ({params.run_id})"
    config = _mapping(record.get("config"))
    differ = [k for k in _COMPARED if k in config and config[k] != getattr(params, k)]
    if differ:
        return f"it trained with other settings than its parameters say ({', '.join(differ)})"
    if record["status"] == "done" and not all(_numbers(record.get(w)) for w in ("best", "final")):
        return "a done record without its best and final metrics"
    return None


def _numbers(evaluation: object) -> bool:
    """Whether an evaluation holds a mapping of metrics whose values are numbers (or None)."""
    metrics = _mapping(evaluation).get("metrics")
    return isinstance(metrics, dict) and all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool))
        for v in metrics.values()
    )


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def provenance_problem(record: dict, pins: dict[str, str]) -> str | None:
    """Why a record's provenance is refused (None: it is not). A done record names its commit and
    package versions; a record of pinned profiles (``pins``: profile name -> commit) that names its
    commit was made with the code of one of their pins (``same_code``), with no uncommitted change
    to the training code."""
    provenance = _mapping(record.get("provenance"))
    git, versions = _mapping(provenance.get("git")), _mapping(provenance.get("versions"))
    commit = git.get("commit") if isinstance(git.get("commit"), str) else None
    if record["status"] == "done" and not (commit and versions.get("torch")):
        return "its provenance names no commit or no package versions"
    if not pins or not commit:
        return None
    named = ", ".join(f"{name} (code: {pin})" for name, pin in sorted(pins.items()))
    if not any(same_code(pin, commit) for pin in pins.values()):
        return f"it was made at {short(commit)}, not with the code of its pinned profile {named}"
    changed = git.get("changed_files")
    if git.get("dirty") and not (
        isinstance(changed, list) and not set(changed) & set(training_paths())
    ):
        return f"it was made with uncommitted changes to the training code of pinned {named}"
    return None


@functools.cache
def same_code(pin: str, commit: str) -> bool:
    """Whether ``commit`` is the pinned commit, or one whose training code is the same as the pin's
    (False for a commit this checkout's history lacks)."""
    return commit.startswith(pin) or code_changes(pin, commit) == []


# ----------------------------------------------------------------------------- profiles
def profile_membership(
    profiles: list[str | Path], folders: list[Path], report: MergeReport
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Which profiles plan each run (run id -> profile names), and the pinned ones' commits.

    A tuned profile is planned from the first of ``folders`` that holds its tuning records; one that
    none holds is a note in ``report``, and its runs count under no profile."""
    members: dict[str, list[str]] = {}
    pins: dict[str, str] = {}
    for ref in profiles:
        profile, planned = load_profile(ref), None
        for folder in folders:
            try:
                planned = planned_runs(profile, str(folder))
                break
            except TuningIncompleteError:
                continue
        if planned is None:
            report.notes.append(f"profile {profile['name']!r} not planned: no tuning records")
            continue
        if profile.get("code"):
            pins[profile["name"]] = profile["code"]
        for params in planned:
            members.setdefault(params.run_id, []).append(profile["name"])
    return members, pins


def _planning_folder(into: Path, accepted: list[Candidate], workdir: Path) -> Path:
    """The records as they are after the merge, as links in a folder: DIR's, then the incoming."""
    view = workdir / "planning"
    view.mkdir()
    for path in [*sorted(into.glob("*.json")), *(c.path for c in accepted)]:
        if not (view / path.name).exists():
            (view / path.name).symlink_to(path.resolve())
    return view


# ----------------------------------------------------------------------------- the merge
def merge(
    sources: list[str | Path],
    into: str | Path = RUNS_DIR,
    *,
    dry_run: bool = False,
    tolerance: float = AGREEMENT_TOLERANCE,
    profiles: list[str | Path] | None = None,
    any_code: bool = False,
) -> MergeReport:
    """Merge the records of ``sources`` (folders, or .zip files of them) into ``into`` as the
    module's docstring says, never overwriting a file there; ``dry_run`` writes nothing.
    ``profiles``: those the summary counts runs under (default: every committed profile);
    ``any_code``: accept records of pinned profiles made with other training code (as ``tinyattn
    study --any-code`` makes them)."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ValueError(f"--tolerance must be a non-negative number, got {tolerance!r}")
    into = Path(into)
    if into.exists() and not into.is_dir():
        raise ValueError(f"--into {into}: not a folder")
    report = MergeReport(str(into), dry_run)
    with tempfile.TemporaryDirectory(prefix="tinyattn-merge-") as work:
        candidates = gather(sources, Path(work), report)
        for candidate in candidates:
            candidate.problem = check_record(candidate)
        accepted = [c for c in candidates if c.problem is None]
        folders = [_planning_folder(into, accepted, Path(work)), REPO / RUNS_DIR]
        members, pins = profile_membership(profiles or available_profiles(), folders, report)
        by_run: dict[str, list[Candidate]] = {}
        for candidate in candidates:
            of = members.get(candidate.run_id, [])
            if candidate.problem is None:
                pinned = {} if any_code else {name: pins[name] for name in of if name in pins}
                candidate.problem = provenance_problem(candidate.record, pinned)
            if candidate.problem:
                text = f"{candidate.name}: {candidate.problem}".replace("\n", " ")
                report.outcomes.append(Outcome("refused", candidate.run_id, text, of))
            else:
                by_run.setdefault(candidate.run_id, []).append(candidate)
        for run_id, group in sorted(by_run.items()):
            outcome = _merge_run(run_id, group, into, tolerance, report)
            report.outcomes.append(outcome)
            outcome.profiles = members.get(run_id, [])
    return report


def _merge_run(
    run_id: str, group: list[Candidate], into: Path, tolerance: float, report: MergeReport
) -> Outcome:
    """Weigh one run's incoming records against each other and DIR's, and copy it if it is new."""
    target = record_path(run_id, into)
    names = ", ".join(c.name for c in group)
    done = [c for c in group if c.record["status"] == "done"]
    if target.exists():
        try:
            existing = read_record(target)
        except (OSError, ValueError) as err:
            return Outcome("conflicting", run_id, f"{err}; it is kept, {names} not copied")
        if existing["status"] == "done":
            comparable = all(_numbers(existing.get(w)) for w in ("best", "final"))
            differing = [
                c.name for c in done if not (comparable and agree(existing, c.record, tolerance))
            ]
            if differing:
                text = f"{', '.join(differing)} and {target} disagree; {target} is kept as it is"
                return Outcome("conflicting", run_id, text)
            copied = _adapter(run_id, done, into, report)
            return Outcome("duplicate", run_id, f"{names}: in {target}{copied}")
        if done:
            text = (
                f"{target} is a {existing['status']} record and {done[0].name} a done one; "
                f"{target} is not overwritten: remove it and merge again"
            )
            return Outcome("conflicting", run_id, text)
        return Outcome("duplicate", run_id, f"{names}: failed, as {target} is")
    for i, first in enumerate(done):
        for second in done[i + 1 :]:
            if not agree(first.record, second.record, tolerance):
                return Outcome(
                    "conflicting",
                    run_id,
                    f"{first.name} and {second.name} disagree; neither copied",
                )
    chosen = (done or group)[0]
    copied = _adapter(
        run_id, done or [chosen], into, report
    )  # first: a record never lacks its adapter
    if not report.dry_run:
        try:
            write_bytes_atomic(target, chosen.data, replace=False)
        except FileExistsError:
            return Outcome("conflicting", run_id, f"{target} appeared during the merge: kept")
    report.records_copied += 1
    return Outcome("new", run_id, f"{chosen.name} -> {target}{copied}")


def _adapter(run_id: str, group: list[Candidate], into: Path, report: MergeReport) -> str:
    """Copy the first adapter folder ``group``'s sources hold, unless DIR has one for the run; a
    note for the outcome's line."""
    source = next((c.adapter for c in group if c.adapter), None)
    target = adapter_dir(run_id, into)
    if source is None or target.exists():
        return ""
    if not report.dry_run:
        partial = target.with_name(f".{target.name}.merging-{os.getpid()}")
        shutil.copytree(source, partial)
        os.rename(partial, target)  # appears whole, or not at all
    report.adapters_copied += 1
    return " (with its adapter)"


def format_summary(report: MergeReport) -> str:
    """The summary the command prints: counts per profile (never a metric value), what was copied."""
    lines = [f"merge into {report.into}" + (" (dry run: nothing written)" * report.dry_run)]
    table = report.counts()
    lines.append(f"{'profile':16s}" + "".join(f"{k:>12s}" for k in KINDS))
    for name in [*sorted(set(table) - {NO_PROFILE, "all"}), NO_PROFILE, "all"]:
        if name in table:
            label = "all (each once)" if name == "all" else name
            lines.append(f"{label:16s}" + "".join(f"{table[name][k]:12d}" for k in KINDS))
    verb = "would copy" if report.dry_run else "copied"
    lines.append(f"{verb} {report.records_copied} record(s), {report.adapters_copied} adapter(s)")
    return "\n".join(lines + [f"note: {note}" for note in report.notes])
