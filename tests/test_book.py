"""The built book, checked in a real browser (headless Debian Chromium) and for dead internal links.

Builds the book first when ``_build/html`` is missing or older than any of its sources. Skips locally
when Chromium is not installed; fails in CI (``CI=true``), where ``.ci/run`` installs it.

The reader's view (issue 21), page by page in a 1400 x 900 window, measured by a script the test server
adds to each page (``PROBE``) after the page and its images have loaded:

* every results chapter (``RESULTS_CHAPTERS``) opens with its verdict: in the source, the first
  paragraph after the title pastes a glued value (a ``{glue:...}`` role); in the browser, the first
  block after the title is that paragraph, with a number in it and no unrendered role;
* plumbing is collapsed, on the study's chapters (``book/``): a code cell tagged ``hide-input`` shows
  its source only behind a closed toggle, and no code cell whose source is shown calls ``glue(`` or
  holds only imports;
* every image of the book's own loads (``naturalWidth > 0``), on every page;
* no table is wider than the content column or scrolls sideways in it, on every page.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
HTML = REPO / "_build" / "html"
# One worker builds the book and runs every test of this file (the build is the expensive fixture).
pytestmark = pytest.mark.xdist_group("book")
RESULTS_PAGE = "book/results_quick.html"
METHOD_PAGE = "book/method.html"
CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Everything the book is made of: a change to any of these makes the built HTML stale.
SOURCES = (
    "_config.yml",
    "_toc.yml",
    "book/**/*",
    "notebooks/*.ipynb",
    "profiles/*.yaml",
    "results/runs/*.json",
    "results/summary/datasets.json",  # the rest of results/summary is what the build itself writes
    "results/bench/**/*.json",
    "tinyattn/**/*.py",
)
# The chapters that report results: each opens with one glued sentence, its verdict and strongest number.
RESULTS_CHAPTERS = [
    "book/results_quick",
    "book/glue",
    "book/heads",
    "book/context",
    "book/efficiency",
    "book/budget",
    "book/fewshot",
]
WINDOW = "--window-size=1400,900"


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
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
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
    """Serves the built book; a page asked for with ``?probe`` comes with ``PROBE`` added."""

    def log_message(self, *args) -> None:  # keep pytest's output readable
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.query != "probe" or not parts.path.endswith(".html"):
            return super().do_GET()
        page = Path(self.directory) / unquote(parts.path).lstrip("/")
        if not page.is_file():
            return self.send_error(404)
        body = page.read_text(encoding="utf-8").replace(
            "</body>", f"<script>{PROBE}</script></body>", 1
        )
        data = body.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# Measures one page once it and its images have loaded; leaves the result as JSON in <pre id=...>.
PROBE = r"""
// The reader's view of one page, measured after it has loaded (tests/test_book.py injects this).
(function () {
  function text(el) { return (el.textContent || "").replace(/\s+/g, " ").trim(); }
  function visible(el) { return !!(el.offsetParent || el.getClientRects().length); }
  function measure() {
    var article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
    var out = {width: window.innerWidth, article: Math.round(article.getBoundingClientRect().width)};
    // the first block after the page's title
    var h1 = article.querySelector("h1");
    out.title = h1 ? text(h1).replace(/#$/, "").trim() : null;
    var next = h1 ? h1.nextElementSibling : null;
    while (next && !text(next) && !next.querySelector("img")) { next = next.nextElementSibling; }
    out.first_tag = next ? next.tagName.toLowerCase() : null;
    out.first_text = next ? text(next).slice(0, 600) : null;
    // code cells: is each one's source shown, and is a hidden one behind a closed toggle?
    out.cells = [];
    article.querySelectorAll("div.cell").forEach(function (cell) {
      var input = cell.querySelector(".cell_input");
      if (!input) { return; }
      var details = input.closest("details");
      out.cells.push({
        tags: Array.from(cell.classList).filter(function (c) { return c.indexOf("tag_") === 0; }),
        source: (input.textContent || "").slice(0, 3000),
        toggle: !!details,
        open: details ? details.open : null,
        shown: !(details && !details.open) && visible(input) &&
          (!input.checkVisibility || input.checkVisibility({checkVisibilityCSS: true})) &&
          input.getBoundingClientRect().height > 0,
      });
    });
    // images: loaded, with a size (the book's own; others cannot load offline)
    out.images = Array.from(document.images).map(function (img) {
      return {src: img.currentSrc || img.src, local: new URL(img.src, location.href).origin === location.origin,
              complete: img.complete, width: img.naturalWidth, shown: visible(img)};
    });
    // tables: wider than the content column, or scrolling sideways inside it
    var right = article.getBoundingClientRect().right;
    out.tables = [];
    article.querySelectorAll("table").forEach(function (table) {
      if (!visible(table) || table.parentElement.closest("table")) { return; }
      var box = table.getBoundingClientRect(), scrolls = [];
      for (var el = table; el && el !== article; el = el.parentElement) {
        if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== "visible") {
          scrolls.push(el.tagName.toLowerCase() + "." + Array.from(el.classList).join(".") +
                       " (" + el.scrollWidth + " in " + el.clientWidth + " px)");
        }
      }
      out.tables.push({head: text(table).slice(0, 80), width: Math.round(box.width),
                       content: table.scrollWidth,
                       overflow: Math.round(box.right - right), scrolls: scrolls});
    });
    var pre = document.createElement("pre");
    pre.id = "tinyattn-probe";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  function eager() {  // lazy images below the fold would never load in a headless window
    var images = Array.from(document.images);
    images.forEach(function (img) { img.loading = "eager"; });
    return Promise.all(images.map(function (img) {
      return img.complete ? null : new Promise(function (done) {
        img.addEventListener("load", done); img.addEventListener("error", done);
      });
    }));
  }
  window.addEventListener("load", function () {
    eager().then(function () { setTimeout(measure, 300); });
  });
})();
"""


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


# --------------------------------------------------------------------------- the reader's view


def book_pages() -> list[str]:
    """Every page of the book in the order of ``_toc.yml`` (``book/glue``, ``notebooks/aggregate``...)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [chapter["file"] for chapter in part.get("chapters", [])]
    return [page.removesuffix(".md").removesuffix(".ipynb") for page in pages]


def opening_source(page: str) -> str:
    """The source of the first paragraph after the page's title (Markdown cells, in order)."""
    path = next(p for p in (REPO / f"{page}.ipynb", REPO / f"{page}.md") if p.is_file())
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
    paragraph: list[str] = []
    for line in lines[start + 1 :] if start is not None else []:
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            break
    return "\n".join(paragraph)


@pytest.fixture(scope="module")
def reader_view(server, tmp_path_factory) -> dict[str, dict]:
    """Per page of the book: what ``PROBE`` measured in a 1400 x 900 window."""
    profiles = tmp_path_factory.mktemp("chromium")
    views = {}
    for page in book_pages():
        for attempt in range(2):  # a second try for a page whose loading outlasted the time budget
            profile = profiles / f"{page.replace('/', '-')}-{attempt}"
            dom = chromium(f"{server}/{page}.html?probe", profile, WINDOW, "--dump-dom").stdout
            found = re.search(r'<pre id="tinyattn-probe"[^>]*>(.*?)</pre>', dom, re.S)
            if found:
                break
        assert found, f"the probe did not finish on {page}.html (page or images still loading?)"
        views[page] = json.loads(unescape(found.group(1)))
    return views


def _imports_only(source: str) -> bool:
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    return bool(lines) and all(
        line.startswith(("import ", "from ", "#", ")")) or line.endswith(",") for line in lines
    )


def test_results_chapters_open_with_their_glued_verdict(reader_view):
    problems = []
    for page in RESULTS_CHAPTERS:
        source = opening_source(page)
        if "{glue" not in source:
            problems.append(f"{page}: the first paragraph after the title pastes no glued value")
        view = reader_view[page]
        shown = view["first_text"] or ""
        if view["first_tag"] != "p" or len(shown) < 40 or not re.search(r"\d", shown):
            problems.append(
                f"{page}: after the title comes <{view['first_tag']}> {shown[:120]!r}, not the "
                "verdict sentence with its number"
            )
        if "{glue" in shown:
            problems.append(f"{page}: an unrendered glue role in {shown[:120]!r}")
    assert not problems, "\n".join(problems)


def test_plumbing_cells_are_collapsed(reader_view):
    """On the study's chapters (``book/``; the tutorial and analysis notebooks under ``notebooks/``
    show their code on purpose)."""
    problems = []
    for page, view in reader_view.items():
        if not page.startswith("book/"):
            continue
        for cell in view["cells"]:
            head = " ".join(cell["source"].split())[:70]
            if "tag_hide-input" in cell["tags"] and (
                not cell["toggle"] or cell["open"] or cell["shown"]
            ):
                problems.append(f"{page}: hide-input cell not behind a closed toggle: {head}")
            if cell["shown"] and ("glue(" in cell["source"] or _imports_only(cell["source"])):
                problems.append(f"{page}: plumbing shown (glue or imports only): {head}")
    assert not problems, "\n".join(problems)


def test_every_image_of_the_book_loads(reader_view):
    broken = [
        f"{page}: {image['src']}"
        for page, view in reader_view.items()
        for image in view["images"]
        if image["local"] and not (image["complete"] and image["width"] > 0)
    ]
    figures = sum(image["local"] for view in reader_view.values() for image in view["images"])
    assert figures >= len(RESULTS_CHAPTERS), f"only {figures} images in the whole book"
    assert not broken, "images that did not load:\n" + "\n".join(broken)


def test_no_table_is_wider_than_the_content_column(reader_view):
    wide = [
        f"{page}: {table['content']} px of table in {table['width']} px, "
        f"{table['overflow']:+d} px past a {view['article']} px column"
        f"{', scrolls in ' + ', '.join(table['scrolls']) if table['scrolls'] else ''}: "
        f"{table['head'][:60]!r}"
        for page, view in reader_view.items()
        for table in view["tables"]
        if table["overflow"] > 1 or table["scrolls"]
    ]
    assert all(view["width"] == 1400 for view in reader_view.values()), "window is not 1400 px"
    assert not wide, "tables that do not fit at 1400 px:\n" + "\n".join(wide)


# --------------------------------------------------------------------------- running the big profiles
SCALE_PAGE = "book/scale.html"


def test_the_scale_page_shows_gpu_hours_only_once_they_are_measured(html):
    """Before ``results/bench/gpu.json`` exists the page says the GPU-hours are pending, names the
    script that measures them and shows none; once it exists, its table has them."""
    page = (html / SCALE_PAGE).read_text(encoding="utf-8")
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", page)).split())
    cost = next(t for t in parse(page).tables if "paper_budget" in t and "CPU-hours" in t)
    for profile in ("paper", "paper_budget", "fewglue"):
        assert profile in cost, f"no row for {profile} on {SCALE_PAGE}"
    if (REPO / "results" / "bench" / "gpu.json").is_file():
        assert "GPU-hours" in cost and "GPU-hours: pending" not in text
    else:
        assert "GPU-hours" not in cost, "GPU figures shown before any GPU measured them"
        assert "GPU-hours: pending." in text and "bash scripts/gpu_measure.sh" in text
    assert "{glue" not in text, "an unrendered glue role"
