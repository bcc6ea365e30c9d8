"""The study: grids of runs over the method library.

``profiles`` (what a study is: load, validate, expand, estimate; pure) -> ``tuning`` (its learning
rates) -> ``runner`` (records: locks, executors, resume; ``ray_executor`` for Ray) -> ``rows`` (the
records as a table) -> ``status`` (a profile's planned and finished runs). ``merge`` brings record
folders from other machines together; ``reproduce`` reruns recorded runs and compares them (``pins``:
pinned profiles); ``bench`` is the cost benchmark and ``gpu_bench`` the paper-scale GPU measurement;
``commands`` holds the study's subcommands. The study imports the method library, never the analysis
(``tests/test_architecture.py``).

``from tinyattn.study import profile_runs, plan`` keeps working (they live in ``status``).
"""

from __future__ import annotations

_STATUS = ("ProfileRuns", "profile_runs", "plan")


def __getattr__(name: str):  # lazy: importing ``tinyattn.study.profiles`` stays light
    if name in _STATUS:
        from tinyattn.study import status

        return getattr(status, name)
    raise AttributeError(f"module 'tinyattn.study' has no attribute {name!r}")
