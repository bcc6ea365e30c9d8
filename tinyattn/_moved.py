"""The import paths of modules that moved into ``tinyattn.study`` and ``tinyattn.analysis``.

``import tinyattn.aggregate`` (or ``from tinyattn import aggregate``) still works: it returns the moved
module itself, with a ``DeprecationWarning`` naming the new path. Installed by ``tinyattn/__init__``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

STUDY = ("profiles", "tuning", "runner", "rows", "reproduce", "bench")
ANALYSIS = (
    "aggregate",
    "stats",
    "margin",
    "decidability",
    "confirm",
    "verdicts",
    "claims",
    "report",
    "bench_report",
    "budget",
    "budget_report",
    "fewshot",
    "experts",
    "expert_stats",
    "deployment",
    "plots",
    "datasets_summary",
)
#: old name -> new name, e.g. ``tinyattn.aggregate`` -> ``tinyattn.analysis.aggregate``
MOVED = {
    **{f"tinyattn.{m}": f"tinyattn.study.{m}" for m in STUDY},
    **{f"tinyattn.{m}": f"tinyattn.analysis.{m}" for m in ANALYSIS},
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name]}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):  # the moved module is already executed
        pass


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
