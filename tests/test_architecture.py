"""The package's shape, guarded: its modules import each other one way, each layer imports only the
layers below it, and no module outgrows the size budget.

The layers, from the bottom: the **method library** (what ``pip install tinyattn`` is for: the
adapter, its fast path, injection, the PEFT route, models and methods, one run and its training loop,
data, tasks, metrics, the cloze protocol, the runs folder), the **study** (profiles, tuning, the
runner, the runs table, a study's status, reproduction, the cost benchmark) and the **analysis** the
book reads (aggregate, statistics, verdicts, the chapters' numbers and figures). The CLI sits on top.
A new module is placed in one of them here, or this test fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tinyattn

PACKAGE = Path(tinyattn.__file__).parent
#: The most lines a module may have: past it, split the module by concept.
MAX_LINES = 450

LIBRARY = {
    "adapter",
    "fastpath",
    "inject",
    "peft",
    "peft_convert",
    "checkpoint",
    "model",
    "methods",
    "experiment",
    "train",
    "data",
    "batching",
    "tasks",
    "metrics",
    "fewglue",
    "cloze",
    "records",
    "measure",
    "repository",
    "registry",
}
STUDY = {"profiles", "tuning", "runner", "rows", "study", "reproduce", "bench"}
ANALYSIS = {
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
}
TOP = {"cli", "__init__"}
#: What each layer may import besides itself.
ALLOWED = {
    "library": set(),
    "study": LIBRARY,
    "analysis": LIBRARY | STUDY,
}


def tinyattn_imports(path: Path) -> set[str]:
    """The ``tinyattn`` modules a module imports, anywhere in it (inside functions too)."""
    package = {p.stem for p in path.parent.glob("*.py")}
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
            if parts[0] == "tinyattn" and len(parts) > 1 and parts[1] in package:
                found.add(parts[1])
    return found - {path.stem}


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


def test_tinyattn_modules_import_each_other_one_way():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    imports = graph()
    assert {"profiles", "records", "experiment"} <= imports["runner"] | imports["tuning"]
    assert "tuning" not in imports["profiles"] and "runner" not in imports["tuning"]
    assert not import_cycles(imports)


def graph() -> dict[str, set[str]]:
    return {path.stem: tinyattn_imports(path) for path in PACKAGE.glob("*.py")}


def test_every_module_has_one_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    layers = [LIBRARY, STUDY, ANALYSIS, TOP]
    assert sum(len(layer) for layer in layers) == len(set().union(*layers))  # none in two
    assert modules == set().union(*layers), (
        f"place each new module in a layer: {sorted(modules - set().union(*layers))}; "
        f"gone: {sorted(set().union(*layers) - modules)}"
    )


def test_each_layer_imports_only_the_layers_below_it():
    imports = graph()
    for name, members in (("library", LIBRARY), ("study", STUDY), ("analysis", ANALYSIS)):
        for module in sorted(members):
            above = imports[module] - members - ALLOWED[name]
            assert not above, f"{name} module {module} imports {sorted(above)}"


def test_the_layer_rule_can_fail():
    """The rule reads real imports: a library module that imported the study would be caught."""
    fake = {"adapter": {"study"}}
    assert fake["adapter"] - LIBRARY - ALLOWED["library"] == {"study"}
    assert "aggregate" in tinyattn_imports(PACKAGE / "budget.py")  # the reader sees imports


def test_no_module_outgrows_the_size_budget():
    sizes = {path.stem: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"over {MAX_LINES} lines, split by concept: {over}"
