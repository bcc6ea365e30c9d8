"""The datasets summary (``results/summary/datasets.json``): counted from the data, read by the book,
and enough for the chapters that quote it to execute with no data and no network."""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest
import yaml

from tinyattn.analysis import datasets_summary as ds
from tinyattn.data import DATA_DIR_ENV, get_task
from tinyattn.metrics import majority_score

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO / "book"
# What reads the data itself (the GLUE / FewGLUE files or the Hub): no chapter of the book may.
DATA_READERS = ("load_glue_task", "load_fewglue", "majority_score(", "load_dataset(", DATA_DIR_ENV)


def book_notebooks() -> list[Path]:
    """The notebooks the book executes at build time: those of ``_toc.yml`` less the execution
    excludes of ``_config.yml``."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for p in toc.get("parts", []) for c in p.get("chapters", [])]
    skip = yaml.safe_load((REPO / "_config.yml").read_text())["execute"].get("exclude_patterns", [])
    paths = [REPO / f"{f.removesuffix('.ipynb')}.ipynb" for f in files]
    return [p for p in paths if p.is_file() and not any(p.match(x) for x in skip)]


def code_of(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


# The chapters that quote the data's sizes or majority-class scores: they read the summary.
DATA_CHAPTERS = [p.name for p in book_notebooks() if "datasets_summary" in code_of(p)]


def _fake_glue(root: Path) -> Path:
    """RTE with 5 training rows (3 entailment) and 4 dev rows (1 entailment); MRPC dev only."""
    rte = root / "glue" / "RTE"
    rte.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    train = ["entailment", "entailment", "not_entailment", "entailment", "not_entailment"]
    dev = ["not_entailment", "entailment", "not_entailment", "not_entailment"]
    for name, labels in (("train.tsv", train), ("dev.tsv", dev)):
        rows = "".join(f"{i}\ta {i}\tb {i}\t{y}\n" for i, y in enumerate(labels))
        (rte / name).write_text(header + rows)
    mrpc = root / "glue" / "MRPC"
    mrpc.mkdir(parents=True)
    (mrpc / "dev.tsv").write_text(
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n0\t3\t4\tc\td\n"
    )
    return root


def test_summary_counts_splits_and_the_majority_class_score(tmp_path):
    data = _fake_glue(tmp_path / "data")
    path = ds.write_summary(tmp_path / "datasets.json", ["rte", "mrpc"], data)
    summary = json.loads(path.read_text())
    rte = summary["tasks"]["rte"]
    assert rte["sizes"] == {"train": 5, "validation": 4}
    # the majority training class is entailment (label 0); it is right on 1 of the 4 dev rows
    assert rte["label_counts"]["train"] == {"0": 3, "1": 2}
    assert rte["majority_score"] == pytest.approx(0.25)
    assert rte["majority_score"] == pytest.approx(majority_score("rte", data))
    mrpc = summary["tasks"]["mrpc"]
    assert mrpc["sizes"] == {"train": None, "validation": 2} and mrpc["majority_score"] is None
    assert "no local file" in mrpc["missing"]["train"] and str(data) not in json.dumps(summary)
    assert summary["source"] == "local GLUE files" and summary["format"] == ds.FORMAT

    assert ds.majority_scores(path=path) == {"rte": pytest.approx(25.0)}
    with pytest.raises(KeyError, match="no majority score for 'mrpc'"):
        ds.majority_scores(["mrpc"], path=path)
    with pytest.raises(KeyError, match="'cola' is not in the datasets summary"):
        ds.split_sizes(["cola"], path=path)
    table = ds.split_sizes(["mrpc", "rte"], path=path)
    assert list(table.index) == ["mrpc", "rte"]
    assert table.loc["rte", "train"] == 5 and table["train"].isna().tolist() == [True, False]
    assert table.loc["rte", "majority"] == 25.0 and table.loc["rte", "metric"] == "accuracy"

    assert ds.check_summary(data, path) == []
    (data / "glue" / "RTE" / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
    )
    problems = ds.check_summary(data, path)
    assert any(p.startswith("rte: sizes recorded") for p in problems), problems


def test_a_missing_or_foreign_summary_is_an_error_that_says_how_to_write_it(tmp_path):
    with pytest.raises(
        ds.SummaryMissingError, match="python -m tinyattn.analysis.datasets_summary"
    ):
        ds.load_summary(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ds.SummaryMissingError, match="not valid JSON"):
        ds.majority_scores(path=bad)
    bad.write_text(json.dumps({"tasks": {}}))
    with pytest.raises(ds.SummaryMissingError, match="not a format-1 datasets summary"):
        ds.split_sizes(path=bad)


def test_the_committed_summary_matches_the_data(data_dir):
    """``results/summary/datasets.json`` says what the local GLUE and FewGLUE files hold now."""
    summary = ds.load_summary()
    assert set(ds.glue_task_names()) <= set(summary["tasks"])
    assert {"fewrte", "fewcb"} <= set(ds.summary_task_names()) <= set(summary["tasks"])
    assert ds.check_summary(data_dir) == []


def test_the_few_shot_tasks_evaluation_label_counts_are_recorded():
    """The few-shot chapter's floors come from these counts (``fewshot.floors``): the SuperGLUE
    validation set of each few-shot task, every class counted, and as many rows as it has."""
    summary = ds.load_summary()
    counts = ds.label_counts(["fewrte", "fewcb"])
    for task, by_class in counts.items():
        assert set(by_class) == set(range(get_task(task).num_labels)), task
        assert sum(by_class.values()) == summary["tasks"][task]["sizes"]["validation"]
    with pytest.raises(KeyError, match="no train label counts for 'mnli'"):
        ds.label_counts(["mnli"], "train")


def test_no_chapter_reads_the_data_at_build_time():
    """``make book`` needs ``results/`` only: no notebook the book executes reads the data."""
    assert {"context.ipynb", "profiles.ipynb"} <= set(DATA_CHAPTERS)
    readers = {
        notebook.relative_to(REPO).as_posix(): [r for r in DATA_READERS if r in code_of(notebook)]
        for notebook in book_notebooks()
    }
    readers = {name: found for name, found in readers.items() if found}
    assert not readers, (
        f"chapters the book executes read the data (use tinyattn.analysis.datasets_summary): {readers}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("chapter", DATA_CHAPTERS)
def test_chapters_execute_without_the_data_and_offline(chapter, tmp_path, monkeypatch):
    """With an empty data folder and every hub offline, a chapter that quotes the data still runs:
    it reads the committed summary, never the GLUE files (the kernel inherits this environment)."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(empty))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    out = tmp_path / chapter
    papermill.execute_notebook(
        str(BOOK / chapter), str(out), cwd=str(BOOK), progress_bar=False, kernel_name="python3"
    )
    text = out.read_text()
    assert "Traceback" not in text and "FileNotFoundError" not in text
