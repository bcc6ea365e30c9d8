"""The built book, checked in a real browser (headless Debian Chromium) and for dead internal links.

Builds the book first when ``_build/html`` is missing or older than any of its sources. Skips locally
when Chromium is not installed; fails in CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
HTML = REPO / "_build" / "html"
RESULTS_PAGE = "book/results_quick.html"
METHOD_PAGE = "book/method.html"
CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Everything the book is made of: a change to any of these makes the built HTML stale.
SOURCES = (
    "_config.yml",
    "_toc.yml",
    "book/**/*",
    "notebooks/aggregate.ipynb",
    "profiles/*.yaml",
    "results/runs/*.json",
    "tinyattn/*.py",
)


def _unavailable(reason: str):
    """Fail in CI (the tool must be there), skip elsewhere."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def _newest_source_mtime() -> float:
    files = [path for pattern in SOURCES for path in REPO.glob(pattern) if path.is_file()]
    return max(path.stat().st_mtime for path in files)


@pytest.fixture(scope="module")
def html() -> Path:
    """The built book, rebuilt (as `make book` does) when missing or stale."""
    stamp = HTML / "index.html"
    if stamp.is_file() and stamp.stat().st_mtime >= _newest_source_mtime():
        return HTML
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    if not jupyter_book.exists():
        _unavailable(
            f"jupyter-book is not installed beside {sys.executable} (pip install -e '.[book]')"
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        str(jupyter_book),
        "build",
        ".",
        "--all",
        "--warningiserror",
        "--keep-going",
        "--quiet",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"book build failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    return HTML


@pytest.fixture(scope="module")
def server(html: Path):
    """A local HTTP server for the built book on a free port."""
    handler = functools.partial(_QuietHandler, directory=str(html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output readable
        pass


def chromium(url: str, profile_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium on one URL, with every host but the local server unreachable."""
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} not found: apt-get install -y --no-install-recommends chromium")
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=15000",
        f"--user-data-dir={profile_dir}",
        *extra,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"chromium failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return done


class _Page(HTMLParser):
    """Tables (as text), images and links of one HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "table":
            if self._depth == 0:
                self.tables.append("")
            self._depth += 1
        if tag in ("img", "script", "source") and attrs.get("src"):
            self.images.append(attrs["src"]) if tag == "img" else self.links.append(attrs["src"])
        if tag in ("a", "link") and attrs.get("href"):
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "table" and self._depth:
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.tables[-1] += data


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _local_target(page: Path, reference: str) -> Path | None:
    """The file an internal href/src points to (None for external or in-page references)."""
    parts = urlsplit(reference)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    path = unquote(parts.path)
    target = (HTML / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
    target = target.resolve()
    return target / "index.html" if target.is_dir() else target


def test_results_page_renders_table_and_figure(server, tmp_path):
    dom = chromium(f"{server}/{RESULTS_PAGE}", tmp_path / "profile", "--dump-dom").stdout
    page = parse(dom)
    main_tables = [t for t in page.tables if "tinyattn_e1" in t and "lora" in t]
    assert main_tables, f"no table with the method names on {RESULTS_PAGE}; tables: {page.tables}"
    figures = [src for src in page.images if "_images/" in src and src.endswith(".png")]
    assert figures, f"no figure image on {RESULTS_PAGE}; images: {page.images}"
    for src in figures:
        target = _local_target(HTML / RESULTS_PAGE, src)
        assert target is not None and target.is_file(), f"{src} -> {target} does not exist"
        assert target.stat().st_size > 0, f"{target} is empty"

    shot = tmp_path / "results_quick.png"
    chromium(
        f"{server}/{RESULTS_PAGE}",
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        "--hide-scrollbars",
    )
    assert shot.is_file() and shot.stat().st_size > 10_000, "screenshot missing or blank"
    keep = HTML.parent / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / shot.name)


def test_equations_render_offline(server, tmp_path):
    """MathJax ships with the book: equations typeset with every external host unreachable."""
    dom = chromium(f"{server}/{METHOD_PAGE}", tmp_path / "profile", "--dump-dom").stdout
    page = parse(dom)
    assert "mjx-container" in page.tags, f"MathJax did not typeset {METHOD_PAGE}"
    assert "placement.svg" in " ".join(page.images), "the placement diagram is missing"


def test_internal_links_and_images_resolve(html):
    # the built pages (_static holds the themes' Jinja macro files, which are not pages)
    pages = sorted(p for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts)
    assert len(pages) >= 10, f"only {len(pages)} pages built"
    missing = []
    for page_path in pages:
        page = parse(page_path.read_text(encoding="utf-8"))
        for reference in page.links + page.images:
            target = _local_target(page_path, reference)
            if target is not None and not target.exists():
                missing.append(f"{page_path.relative_to(html)}: {reference}")
    assert not missing, "dead internal references:\n" + "\n".join(missing)
