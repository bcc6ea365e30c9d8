"""The code a run runs, and the pins: which files can change a run's numbers (``training_paths``),
which of them differ between two commits (``code_changes``), why this checkout may not rerun a pinned
profile (``pin_problem``), and where each pinned or frozen profile's records were made
(``pins_table``, the Reproducing chapter's table)."""

from __future__ import annotations

import ast
import functools
import subprocess
from pathlib import Path

import pandas as pd

from tinyattn.records import RUNS_DIR, read_records
from tinyattn.study.profiles import REPO, available_profiles, load_profile

# Besides the modules ``tinyattn.experiment`` imports: what the runner executes for each run.
RUN_ENTRY = "tinyattn/experiment.py"
RUN_NOTEBOOK = "notebooks/train.ipynb"
# Imported by a run, but computing nothing a metric depends on: it writes the record and its provenance.
PROVENANCE_ONLY = ("tinyattn/records.py",)


class PinnedCodeError(ValueError):
    """A pinned profile's runs would be rerun from code other than the commit it is pinned to."""


@functools.cache
def training_paths(root: Path = REPO) -> list[str]:
    """The files whose change can change a run's numbers: ``tinyattn/experiment.py``, every module of
    the package it imports (at any depth, imports inside functions included; ``PROVENANCE_ONLY``
    left out), and the training notebook. Paths relative to the repository."""
    seen: set[str] = set()
    todo = [RUN_ENTRY]
    while todo:
        path = todo.pop()
        if path in seen or not (root / path).is_file():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse((root / path).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("tinyattn."):
                    todo.append(name.replace(".", "/") + ".py")
    return sorted(seen - set(PROVENANCE_ONLY)) + [RUN_NOTEBOOK]  # noqa: RUF005


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60
    )


def code_changes(old: str, new: str | None, root: Path = REPO) -> list[str] | None:
    """The training files (``training_paths``) that differ between commit ``old`` and commit
    ``new`` (None: this checkout's working tree, uncommitted changes included). None when a commit
    is not in this checkout's history (or there is no git)."""
    try:
        for commit in (old, new):
            if (
                commit is not None
                and _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode
            ):
                return None
        found = _git(
            root, "diff", "--name-only", old, *([new] if new else []), "--", *training_paths(root)
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return None if found.returncode else sorted(found.stdout.split())


def short(commit: str | None) -> str:
    return commit[:7] if commit else "unknown"


def pin_problem(profile: dict, root: Path = REPO) -> str | None:
    """Why this checkout may not rerun a pinned profile's runs (None: it may, or it is not pinned)."""
    pin = profile.get("code")
    if not pin:
        return None
    files = code_changes(pin, None, root)
    if files == []:
        return None
    if files is None:
        return f"its pinned commit {pin} is not in this checkout's history"
    return f"this checkout's code differs from commit {pin} in {', '.join(files)}"


def pins_table(runs_dir: str | Path = RUNS_DIR) -> pd.DataFrame:
    """Per pinned (``code``) or frozen profile: its code, how many records it has, how many were made
    at the pinned commit and at which other commits (the first three named)."""
    from tinyattn.study.status import profile_runs

    rows = []
    for name in available_profiles():
        profile = load_profile(name)
        pin, frozen = profile.get("code"), profile.get("frozen")
        if not (pin or frozen):
            continue
        done = profile_runs(name, runs_dir).runs
        ids = set(done["run_id"]) if not done.empty else set()
        commits = [
            r["provenance"]["git"].get("commit") or "?" for r in read_records(runs_dir, run_ids=ids)
        ]
        at_pin = sum(c.startswith(pin) for c in commits) if pin else 0
        others = sorted({c[:7] for c in commits if not (pin and c.startswith(pin))})
        listed = ", ".join(others[:3]) + (f", … {len(others)} commits" if len(others) > 3 else "")
        rows.append(
            {
                "profile": name,
                "code": pin or "frozen",
                "records": len(commits),
                "made at the pinned commit": at_pin if pin else "—",
                "made at other commits": f"{len(commits) - at_pin} ({listed})" if others else 0,
                "commits": len(set(commits)),
            }
        )
    return pd.DataFrame(rows)
