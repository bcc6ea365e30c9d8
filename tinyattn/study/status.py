"""A study's status: which runs a profile plans, whether its learning rates are chosen, which runs
have finished (``profile_runs``, what the chapters and ``notebooks/aggregate.ipynb`` call), and the
runner's dry run (``plan``).

The flow is one way: ``profiles`` (what a study is) -> ``tuning`` (its learning rates) -> ``runner``
(records) -> ``aggregate`` (tables) -> this module and the chapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tinyattn.experiment import RunParams
from tinyattn.records import RUNS_DIR, record_status
from tinyattn.study.profiles import (
    as_profile,
    estimate_seconds,
    expand,
    load_profile,
    parse_shard,
    placeholder_rates,
    shard,
)
from tinyattn.study.rows import load_records
from tinyattn.study.tuning import TuningIncompleteError, learning_rates


@dataclass
class ProfileRuns:
    """A profile's status and its finished runs."""

    profile: dict  # the profile as loaded
    planned: list[RunParams]  # every planned run (placeholder learning rates while not tuned)
    tuned: bool  # the learning rates are settled (always, for a profile that names no tuning)
    waiting: str | None  # why nothing can run yet (the tuning grid is unfinished), else None
    runs: pd.DataFrame  # the finished records of the plan, as aggregate.load_records gives them
    done: int  # how many planned runs have finished
    complete: bool  # every planned run has finished

    @classmethod
    def of(
        cls, profile: dict, planned: list[RunParams], waiting: str | None, runs: pd.DataFrame
    ) -> ProfileRuns:
        """The status of a plan whose finished records are ``runs`` (none count while it waits)."""
        return cls(
            profile=profile,
            planned=planned,
            tuned=waiting is None,
            waiting=waiting,
            runs=runs,
            done=len(runs),
            complete=waiting is None and len(runs) == len(planned),
        )

    def complete_for(self, labels) -> bool:
        """Whether every planned run of these methods (profile labels) has finished: a verdict that
        reads only some of a profile's methods is final once those are, whatever else is pending."""
        wanted = {p.run_id for p in self.planned if p.label in set(labels)}
        if not wanted or not self.tuned:
            return False
        finished = set(self.runs["run_id"]) if not self.runs.empty else set()
        return wanted <= finished


def _plan(profile: dict, runs_dir: str) -> tuple[list[RunParams], str | None]:
    """Every planned run, and why nothing can run yet (None when the learning rates are chosen)."""
    try:
        rates, waiting = learning_rates(profile, runs_dir), None
    except TuningIncompleteError as err:
        rates, waiting = placeholder_rates(load_profile(profile["tuning"])), str(err)
    return expand(profile, rates, runs_dir), waiting


def profile_runs(name: str | Path | dict, runs_dir: str = RUNS_DIR) -> ProfileRuns:
    """A profile's status and finished runs (by name, path, or a loaded profile). While its tuning
    grid is unfinished, the plan uses placeholder learning rates and no run counts as its own."""
    profile = as_profile(name)
    planned, waiting = _plan(profile, str(runs_dir))
    runs = pd.DataFrame()
    if waiting is None:
        runs = load_records(runs_dir, run_ids={p.run_id for p in planned})
    return ProfileRuns.of(profile, planned, waiting, runs)


def plan(profile_name: str, out_dir: str = RUNS_DIR, shard_spec: str | None = None) -> dict:
    """The dry run: every run of the (shard of the) profile with its status, and the CPU time pending."""
    profile = load_profile(profile_name)
    planned, waiting = _plan(profile, out_dir)
    awaiting = waiting is not None  # planned with placeholder learning rates; nothing can run yet
    rows = []
    pending_seconds = 0.0
    for params in shard(planned, *parse_shard(shard_spec)):
        status = "awaiting tuning" if awaiting else record_status(params.run_id, out_dir)
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
