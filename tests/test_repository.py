"""One setting for the repository's address (``_config.yml`` ``repository.url``): the book's buttons
read it, the notebooks' install cells and Colab badges are written from it, and no other file in the
repository holds a copy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tinyattn import repository as rp

REPO = Path(__file__).resolve().parent.parent
OLD = "https://github.com/someone/proj"  # an address the setting no longer names


def _notebook(*cells: tuple[str, str]) -> str:
    """A notebook's text in nbformat's layout (indent 1), with (cell_type, source) cells."""
    nb = {
        "cells": [
            {"cell_type": kind, "id": f"c{i}", "metadata": {}, "source": src.splitlines(True)}
            | ({"execution_count": None, "outputs": []} if kind == "code" else {})
            for i, (kind, src) in enumerate(cells)
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1) + "\n"


def _project(root: Path, url: str = "https://github.com/me/proj", branch: str = "dev") -> Path:
    """A git checkout with the setting, a synced-to-be notebook, and a page with a stray copy."""
    root.mkdir()
    (root / "_config.yml").write_text(
        f"repository:\n  url: &repository_url {url}\n  branch: {branch}\n"
        "parse:\n  myst_substitutions:\n    repository_url: *repository_url\n"
    )
    (root / "notebooks").mkdir()
    install = f'{rp.INSTALL_MARK}.\nsubprocess.run(["pip", "install", "git+{OLD}.git"])\n'
    badge = f'# Train\n\n<a href="{rp.COLAB}someone/proj/blob/main/notebooks/train.ipynb">Colab</a>'
    other = f"# elsewhere in the notebook: {OLD}\nx = 1\n"
    clone = f'repository = "{OLD}.git"  # {rp.SYNC_NOTE}\n'

    (root / "notebooks" / "train.ipynb").write_text(
        _notebook(("markdown", badge), ("code", install), ("code", other), ("code", clone))
    )
    (root / "results").mkdir()
    (root / "results" / "executed.ipynb").write_text(f"ran with git+{OLD}.git")
    (root / "book.md").write_text(f"Clone it:\n`git clone {url}`\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    return root


def test_the_setting_and_what_follows_from_it(tmp_path):
    root = _project(tmp_path / "p", url="https://github.com/me/proj.git/")
    repo = rp.repository(root / "_config.yml")
    assert (repo.url, repo.branch, repo.slug) == (
        "https://github.com/me/proj",
        "dev",
        "me/proj",
    )
    assert repo.pip_url == "git+https://github.com/me/proj.git"
    assert repo.colab("notebooks/x.ipynb") == (
        "https://colab.research.google.com/github/me/proj/blob/dev/notebooks/x.ipynb"
    )
    (root / "_config.yml").write_text("repository:\n  url: https://gitlab.com/me/proj\n")
    with pytest.raises(
        ValueError, match="repository.url must be https://github.com/<owner>/<name>"
    ):
        rp.repository(root / "_config.yml")
    with pytest.raises(FileNotFoundError, match="_config.yml"):
        rp.repository(tmp_path / "nowhere" / "_config.yml")


def test_sync_writes_the_marked_cells_only_and_the_scan_finds_every_other_copy(tmp_path):
    root = _project(tmp_path / "p")
    notebook = root / "notebooks" / "train.ipynb"
    assert rp.sync_notebooks(root, write=False) == [notebook]
    assert notebook.read_text().count(OLD) == 3  # nothing written yet

    copies = rp.hard_coded_copies(root)
    # the page's copy, and the unmarked notebook cell's; the setting and results/ are not copies
    assert [c.split(":")[0] for c in copies] == ["book.md", "notebooks/train.ipynb"], copies

    assert rp.sync_notebooks(root) == [notebook]
    cells = json.loads(notebook.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells]
    assert "git+https://github.com/me/proj.git" in sources[1]
    assert f"{rp.COLAB}me/proj/blob/dev/notebooks/train.ipynb" in sources[0]
    assert OLD in sources[2]  # another cell is not touched
    assert 'repository = "https://github.com/me/proj.git"' in sources[3]
    assert rp.sync_notebooks(root) == []  # idempotent


def test_the_repository_holds_one_copy_of_its_address():
    """The book's setting is the only place the address is written by hand: the notebooks' install
    cells and badges are in step with it, and no page, script or module spells it out."""
    config = (REPO / "_config.yml").read_text()
    url = rp.repository_url()
    assert config.count(url) == 1, "the setting must be written once (the substitutions alias it)"
    settings = yaml.safe_load(config)
    assert settings["parse"]["myst_substitutions"]["repository_url"] == url
    stale = rp.sync_notebooks(write=False)
    assert not stale, f"run `python -m tinyattn.repository --sync`: {stale} differ from {url}"
    synced = rp.notebooks_with_addresses()
    assert {p.name for p in synced} >= {"train.ipynb", "peft_quickstart.ipynb", "experts.ipynb"}
    copies = rp.hard_coded_copies()
    assert not copies, (
        "hard-coded copies of the repository address (quote {{ repository_url }} in a page; "
        "in a notebook, start the install cell with tinyattn.repository.INSTALL_MARK):\n"
        + "\n".join(copies)
    )
