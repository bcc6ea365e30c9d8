"""The project's own address: one setting, ``repository.url`` (and ``repository.branch``) in the book's
``_config.yml``, drives every link to the repository.

* The book reads it directly: Jupyter Book builds its repository button and its Colab launch buttons
  from it, and pages can quote it as the MyST substitutions ``{{ repository_url }}`` and
  ``{{ repository_branch }}`` (``parse.myst_substitutions`` in ``_config.yml``, YAML aliases of the
  setting, not copies).
* A notebook opened in Colab has no checkout to read it from, so its install cell (marked with
  ``INSTALL_MARK``; any other cell that names it: ``SYNC_NOTE`` in a comment) and its "Open in Colab"
  badge carry the address written out. They are written from the setting by ``sync_notebooks``
  (``python -m tinyattn.repository --sync``); ``--check`` and the tests fail when one differs from the
  setting, and ``hard_coded_copies`` finds the address anywhere else in the tracked files.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "_config.yml"
NOTEBOOKS = REPO / "notebooks"
#: The first line of a notebook's install cell, whose repository address ``sync_notebooks`` writes.
INSTALL_MARK = "# On a fresh Colab runtime, install the project first"
#: Any other code cell that names the repository says so in a comment with these words.
SYNC_NOTE = "written from _config.yml (repository.url)"
COLAB = "https://colab.research.google.com/github/"

# A pip requirement on the repository (``git+<url>.git``), a clone address (``<url>.git``) and a
# Colab link to a file of it.
_PIP = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+?\.git")
_CLONE = re.compile(r"(?<!git\+)https://github\.com/[\w.-]+/[\w.-]+?\.git\b")
_COLAB_LINK = re.compile(
    r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/"
)


@dataclass(frozen=True)
class Repository:
    url: str  # https://github.com/<owner>/<name>, no trailing slash or .git
    branch: str

    @property
    def slug(self) -> str:
        """``<owner>/<name>``."""
        return self.url.removeprefix("https://github.com/")

    @property
    def pip_url(self) -> str:
        """The pip requirement URL: ``git+<url>.git``."""
        return f"git+{self.url}.git"

    def colab(self, path: str) -> str:
        """The Colab address that opens ``path`` (relative to the repository root) on the branch."""
        return f"{COLAB}{self.slug}/blob/{self.branch}/{path.lstrip('/')}"


def repository(config: str | Path = CONFIG) -> Repository:
    """The setting, read from ``_config.yml`` (a checkout is needed: the file is not packaged)."""
    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(
            f"no {config.name} at {config}: the repository setting lives in the checkout's _config.yml"
        )
    settings = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("repository") or {}
    url = str(settings.get("url") or "").rstrip("/").removesuffix(".git")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(
            f"{config}: repository.url must be https://github.com/<owner>/<name>, got {url!r}"
        )
    return Repository(url=url, branch=str(settings.get("branch") or "main"))


def repository_url(config: str | Path = CONFIG) -> str:
    """``repository.url`` of ``_config.yml``."""
    return repository(config).url


def _marked_cells(notebook_text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the cells whose repository address is written from the setting:
    the install cell (its source begins with ``INSTALL_MARK``), a code cell whose comment says
    ``SYNC_NOTE``, and Markdown cells with a Colab badge."""
    import json

    spans = []
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\n  \{\n", notebook_text):  # a cell, in nbformat's layout (indent 1)
        start = match.start() + 1
        cell, end = decoder.raw_decode(notebook_text, start + 2)
        source = "".join(cell.get("source", ""))
        if (
            source.startswith(INSTALL_MARK)
            or SYNC_NOTE in source
            or (cell.get("cell_type") == "markdown" and COLAB in source)
        ):
            spans.append((start, end))
    return spans


def sync_text(notebook_text: str, repo: Repository) -> str:
    """The notebook's text with the marked cells' addresses written from ``repo``: the pip
    requirement and the Colab link's repository and branch (the file it opens is kept); every other
    byte unchanged."""
    pieces, last = [], 0
    for start, end in _marked_cells(notebook_text):
        cell = notebook_text[start:end]
        cell = _PIP.sub(repo.pip_url, cell)
        cell = _CLONE.sub(f"{repo.url}.git", cell)
        cell = _COLAB_LINK.sub(repo.colab(""), cell)
        pieces += [notebook_text[last:start], cell]
        last = end
    return "".join(pieces) + notebook_text[last:]


def notebooks_with_addresses(root: str | Path = REPO) -> list[Path]:
    """The notebooks under ``notebooks/`` that have an install cell or a Colab badge."""
    return sorted(
        p for p in (Path(root) / "notebooks").glob("*.ipynb") if _marked_cells(p.read_text())
    )


def sync_notebooks(root: str | Path = REPO, *, write: bool = True) -> list[Path]:
    """Write the setting into every notebook's install cell and Colab badge; return the notebooks
    that changed (with ``write=False``: that would change)."""
    root = Path(root)
    repo = repository(root / "_config.yml")
    changed = []
    for path in notebooks_with_addresses(root):
        text = path.read_text(encoding="utf-8")
        new = sync_text(text, repo)
        if new != text:
            changed.append(path)
            if write:
                path.write_text(new, encoding="utf-8")
    return changed


def _tracked_files(root: Path) -> list[Path]:
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, text=True, check=True
    )
    return [root / name for name in listed.stdout.split("\0") if name]


#: Records of past executions (executed notebooks, logs) keep the address they ran with.
RECORDS = ("results/",)


def hard_coded_copies(root: str | Path = REPO) -> list[str]:
    """Every place in the tracked files (records under ``results/`` aside) that writes a GitHub
    address of this repository, or a Colab link to one, outside the setting and the marked notebook
    cells: ``"<path>:<line>: <text>"``. Empty when the setting is the one copy."""
    root = Path(root)
    repo = repository(root / "_config.yml")
    name = repo.slug.split("/")[1]
    # this address, or any GitHub address of a repository of the same name (an older guess)
    pattern = re.compile(
        rf"(?:github\.com|colab\.research\.google\.com/github)/"
        rf"(?:{re.escape(repo.slug)}|[\w.-]+/{re.escape(name)})\b"
    )
    found = []
    for path in _tracked_files(root):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(RECORDS) or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        allowed = _marked_cells(text) if path.suffix == ".ipynb" else []
        setting = relative == "_config.yml"
        for match in pattern.finditer(text):
            if any(start <= match.start() < end for start, end in allowed):
                continue
            line_start = text.rfind("\n", 0, match.start()) + 1
            line_end = text.find("\n", match.start())
            line = text[line_start : line_end if line_end >= 0 else None]
            if setting and re.match(r"\s*url:\s*&?\w*\s*https://github\.com/", line):
                continue
            number = text.count("\n", 0, match.start()) + 1
            found.append(f"{relative}:{number}: {line.strip()[:160]}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyattn.repository",
        description="The repository address (_config.yml repository.url) in the notebooks' install "
        "cells and Colab badges.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sync", action="store_true", help="write the setting into the notebooks")
    group.add_argument("--check", action="store_true", help="fail if a notebook or file differs")
    args = parser.parse_args(argv)
    if args.sync:
        changed = sync_notebooks()
        print("\n".join(f"rewrote {p.relative_to(REPO)}" for p in changed) or "nothing to change")
        return 0
    if args.check:
        stale = sync_notebooks(write=False)
        copies = hard_coded_copies()
        for path in stale:
            print(f"{path.relative_to(REPO)}: differs from the setting (run with --sync)")
        for copy in copies:
            print(f"{copy}: a hard-coded copy (use the setting instead)")
        return 1 if stale or copies else 0
    print(repository_url())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
