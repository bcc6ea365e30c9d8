"""The README and the contributor guide name files and names that exist: a path in backticks is a file
or folder of the repository, and ``module.name`` of a tinyattn module is an attribute of it."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import tinyattn
from tinyattn.study.profiles import load_profile

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "CONTRIBUTING.md")
MODULES = {m.name for m in pkgutil.iter_modules(tinyattn.__path__)}
TOP = ("tinyattn/", "tests/", "profiles/", "book/", "notebooks/", "results/", ".ci/")
# made where the code runs, not committed
MADE_HERE = ("results/executed/", "results/runs/adapters/", "results/runs/.locks/")


def _spans(doc: str) -> list[str]:
    text = (REPO / doc).read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # commands, not names
    return re.findall(r"`([^`\n]+)`", text)


@pytest.mark.parametrize("doc", DOCS)
def test_paths_named_in_the_docs_exist(doc):
    paths = [s for s in _spans(doc) if s.startswith(TOP) and not re.search(r"[<>*\s]", s)]
    assert paths, doc
    missing = [p for p in paths if not (REPO / p).exists() and not p.startswith(MADE_HERE)]
    assert not missing, f"{doc} names {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_module_names_in_the_docs_exist(doc):
    names = [
        s.removesuffix("()")
        for s in _spans(doc)
        if re.fullmatch(r"(\w+)\.(\w+)(\(\))?", s)
        and s.split(".")[0] in MODULES
        and not re.search(r"\.(py|md|ipynb|yaml|json|csv|txt)$", s)  # a file, not a name
    ]
    assert names, doc
    missing = [
        n
        for n in names
        if not hasattr(importlib.import_module(f"tinyattn.{n.split('.')[0]}"), n.split(".")[1])
    ]
    assert not missing, f"{doc} names {missing}"


def test_the_readme_names_every_pinned_and_frozen_profile():
    """The README's reproduction policy lists each pinned profile with its commit, and each frozen one."""
    readme = (REPO / "README.md").read_text()
    policy = readme[readme.index("The policy:") : readme.index("## The batch runner")]
    for path in sorted((REPO / "profiles").glob("*.yaml")):
        profile = load_profile(path.stem)
        if profile.get("code") or profile.get("frozen"):
            assert f"`{path.stem}`" in policy, path.stem
        if profile.get("code"):
            assert profile["code"] in policy, (path.stem, profile["code"])
