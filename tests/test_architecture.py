"""The package's shape, guarded: its modules import each other one way, each layer imports only the
layers below it, and no module outgrows the size budget.

The layers are the folders, from the bottom: the **method library** (``tinyattn/*.py``: what
``pip install tinyattn`` is for: the adapter, its fast path, injection, the PEFT route, models and
methods, one run and its training loop, data, tasks, metrics, the cloze protocol, the runs folder),
the **study** (``tinyattn/study/``: profiles, tuning, the runner, the runs table, a study's status,
reproduction, the cost benchmark) and the **analysis** the book reads (``tinyattn/analysis/``:
aggregate, statistics, verdicts, the chapters' numbers and figures). The CLI sits on top.
"""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import tinyattn

PACKAGE = Path(tinyattn.__file__).parent
#: The most lines a module may have: past it, split the module by concept.
MAX_LINES = 450
#: The layers from the bottom, as folders of the package ("" is the package's own folder).
LAYERS = ("", "study", "analysis")
TOP = {"cli", "__init__", "_moved"}
#: The public paths that stay where they were (the method library's, for PEFT users).
PUBLIC = ("tinyattn.peft", "tinyattn.adapter", "tinyattn.methods", "tinyattn.train")


def module_name(path: Path) -> str:
    """``tinyattn/study/runner.py`` -> ``study.runner``; ``tinyattn/adapter.py`` -> ``adapter``."""
    relative = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(part for part in relative.parts if part != "__init__") or "__init__"


def layer_of(name: str) -> str:
    first = name.split(".")[0]
    return first if first in LAYERS[1:] and "." in name else ""


def modules() -> dict[str, Path]:
    return {
        module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts
    }


def tinyattn_imports(path: Path, known: set[str]) -> set[str]:
    """The ``tinyattn`` modules a module imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tinyattn" and ".".join(parts[1:]) in known:
                found.add(".".join(parts[1:]))
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found) - {"__init__"}
    return {name: tinyattn_imports(path, known) for name, path in found.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles a depth-first walk of the import graph meets (empty when it has none)."""
    cycles, state = [], {}

    def walk(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            if state.get(other) == "open":
                cycles.append(trail[trail.index(other) :] + [other])
            elif other not in state:
                walk(other, trail + [other])
        state[module] = "closed"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    return cycles


def layer_breaches(imports: dict[str, set[str]]) -> list[str]:
    """Each import of a module by one in a lower layer (the CLI and the package's own files aside)."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    breaches = []
    for module, imported in sorted(imports.items()):
        if module in TOP or module in LAYERS:  # the CLI, and the packages' own __init__ files
            continue
        for other in sorted(imported):
            if rank[layer_of(other)] > rank[layer_of(module)]:
                breaches.append(f"{module} ({layer_of(module) or 'library'}) imports {other}")
    return breaches


def test_tinyattn_modules_import_each_other_one_way():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    imports = graph()
    assert {"study.profiles", "records", "experiment"} <= (
        imports["study.runner"] | imports["study.tuning"]
    )
    assert "study.tuning" not in imports["study.profiles"]
    assert "study.runner" not in imports["study.tuning"]
    assert not import_cycles(imports)


def test_the_layers_are_the_folders():
    names = set(modules())
    assert {"adapter", "fastpath", "peft", "train", "cloze"} <= names  # the library at the top
    assert {"study.profiles", "study.runner", "study.status"} <= names
    assert {"analysis.aggregate", "analysis.verdicts", "analysis.plots"} <= names
    assert {layer_of(n) for n in names} == set(LAYERS)
    assert not any(n.count(".") > 1 for n in names), (
        "one level of folders: library, study, analysis"
    )


def test_each_layer_imports_only_the_layers_below_it():
    assert not layer_breaches(graph())


def test_the_layer_rule_can_fail():
    """The rule reads real imports: a library module that imported the study would be caught."""
    fake = {"adapter": {"study.runner"}, "study.rows": {"analysis.aggregate", "records"}}
    assert layer_breaches(fake) == [
        "adapter (library) imports study.runner",
        "study.rows (study) imports analysis.aggregate",
    ]
    found = tinyattn_imports(PACKAGE / "analysis" / "budget.py", set(modules()))
    assert "analysis.aggregate" in found  # the reader sees real imports


def test_no_module_outgrows_the_size_budget():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"over {MAX_LINES} lines, split by concept: {over}"


@pytest.mark.parametrize("name", PUBLIC)
def test_the_method_library_keeps_its_public_paths(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        importlib.import_module(name)
    assert importlib.import_module("tinyattn.methods").build_model


def test_a_moved_module_still_imports_from_its_old_path_with_a_warning(monkeypatch):
    import sys

    from tinyattn.analysis import aggregate

    for old in ("tinyattn.aggregate", "tinyattn.profiles"):  # as if imported for the first time
        monkeypatch.delitem(sys.modules, old, raising=False)
    from tinyattn.study import status

    with pytest.warns(DeprecationWarning, match="tinyattn.analysis.aggregate"):
        old = importlib.import_module("tinyattn.aggregate")
    assert old is aggregate
    with pytest.warns(DeprecationWarning, match="tinyattn.study.profiles"):
        from tinyattn import profiles  # noqa: F401
    from tinyattn.study import profile_runs  # the study's entry point, re-exported

    assert profile_runs is status.profile_runs
