"""FewGLUE / SuperGLUE loading (local files and a mocked Hub), the error contract, and the metrics."""

from __future__ import annotations

import json
import sys
import types

import pytest

from tinyattn.data import DataFormatError
from tinyattn.fewglue import (
    FEWGLUE_TASKS,
    HUB_FEWGLUE,
    HUB_SUPERGLUE,
    baseline_metrics,
    fewglue_metrics,
    get_fewglue_task,
    load_fewglue,
    local_path,
)

#: (task, split) -> rows and label counts by class id, from ../shared/data/SOURCES.md and the files
EXPECTED = {
    ("rte", "train"): (32, {0: 13, 1: 19}),
    ("rte", "dev32"): (32, {0: 21, 1: 11}),
    ("rte", "val"): (277, {0: 146, 1: 131}),
    ("cb", "train"): (32, {0: 19, 1: 10, 2: 3}),
    ("cb", "dev32"): (32, {0: 17, 1: 13, 2: 2}),
    ("cb", "val"): (56, {0: 23, 1: 28, 2: 5}),
    ("boolq", "train"): (32, {0: 14, 1: 18}),
    ("boolq", "val"): (3270, {0: 1237, 1: 2033}),
}


@pytest.fixture(scope="module")
def fewglue_dir(data_dir):
    if not (data_dir / "fewglue").is_dir() or not (data_dir / "superglue").is_dir():
        pytest.skip(f"no fewglue/ and superglue/ under {data_dir}")
    return data_dir


@pytest.mark.parametrize(("task", "split"), sorted(EXPECTED))
def test_local_files_load_with_the_fixed_label_order(task, split, fewglue_dir):
    examples = load_fewglue(task, split, fewglue_dir)
    rows, counts = EXPECTED[(task, split)]
    assert len(examples) == rows
    found: dict[int, int] = {}
    for example in examples:
        found[example["label"]] = found.get(example["label"], 0) + 1
    assert found == counts
    spec = get_fewglue_task(task)
    assert set(examples[0]) == {*spec.text_keys, "label", "idx"}
    first = json.loads(local_path(task, split, fewglue_dir).read_text().splitlines()[0])
    assert examples[0]["idx"] == first["idx"]
    assert spec.label_names[examples[0]["label"]] == str(first["label"])


def test_the_environment_variable_names_the_folder(fewglue_dir, monkeypatch):
    monkeypatch.setenv("TINYATTN_DATA_DIR", str(fewglue_dir))
    assert len(load_fewglue("CB", "train")) == 32


def test_task_and_split_names_are_checked():
    assert get_fewglue_task("BoolQ") is FEWGLUE_TASKS["boolq"]
    with pytest.raises(ValueError, match="unknown FewGLUE task 'wic'"):
        get_fewglue_task("wic")
    with pytest.raises(ValueError, match="unknown FewGLUE split 'validation'"):
        load_fewglue("rte", "validation", "/")


def _write(root, task_folder, split_file, lines):
    folder = root / ("superglue" if split_file == "val.jsonl" else "fewglue") / task_folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / split_file
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 4})


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    _write(tmp_path, "RTE", "train.jsonl", [GOOD])
    assert load_fewglue("rte", "train", tmp_path) == [
        {"premise": "p", "hypothesis": "h", "label": 0, "idx": 4}
    ]
    with pytest.raises(FileNotFoundError, match=r"superglue/RTE/val\.jsonl"):
        load_fewglue("rte", "val", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fewglue("rte", "train", tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ('{"premise": "p", "hypothesis": ', "invalid JSON"),
        ('["premise"]', "expected a JSON object"),
        ('{"premise": "p", "label": "entailment"}', r"missing field\(s\) \['hypothesis'\]"),
        ('{"premise": " ", "hypothesis": "h", "label": 0}', "empty or missing text for 'premise'"),
        ('{"premise": "p", "hypothesis": "h", "label": "neutral"}', "unknown label 'neutral'"),
        ('{"premise": "p", "hypothesis": "h", "label": 2}', "unknown label 2"),
        ('{"premise": "p", "hypothesis": "h", "label": true}', "boolean label True"),
    ],
)
def test_a_malformed_row_is_an_error_naming_file_and_line(bad, problem, tmp_path):
    path = _write(tmp_path, "RTE", "dev32.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataFormatError, match=f"line 3: {problem}") as err:
        load_fewglue("rte", "dev32", tmp_path)
    assert err.value.source == str(path) and err.value.line == 3


def test_boolq_labels_are_json_booleans(tmp_path):
    row = {"question": "is it", "passage": "it is", "idx": 0}
    lines = [json.dumps({**row, "label": value}) for value in (False, True, "True", 0)]
    _write(tmp_path, "BoolQ", "train.jsonl", lines)
    assert [e["label"] for e in load_fewglue("boolq", "train", tmp_path)] == [0, 1, 1, 0]


# ----------------------------------------------------------------------------- Hub (mocked)
class FakeDataset(list):
    def __init__(self, rows, names=None):
        super().__init__(rows)
        label = types.SimpleNamespace(names=names) if names else object()
        self.features = {"label": label}


@pytest.fixture
def fake_hub(monkeypatch):
    """``datasets.load_dataset`` replaced: records each call; ``refuse`` makes the repo's call fail
    like ``datasets`` >= 4 refusing a script dataset."""
    calls, state = [], {"refuse": None, "names": ["entailment", "contradiction", "neutral"]}
    rows = [
        {"premise": "a", "hypothesis": "b", "label": 1, "idx": 7},
        {"premise": "c", "hypothesis": "d", "label": 0, "idx": 9},
    ]

    def load_dataset(path, name=None, split=None, data_files=None):
        calls.append({"path": path, "name": name, "split": split, "data_files": data_files})
        if path == state["refuse"]:
            raise RuntimeError("Dataset scripts are no longer supported, but found few_glue.py")
        return FakeDataset(rows, names=state["names"])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("TINYATTN_DATA_DIR", raising=False)
    return calls, state


def test_hub_splits_come_from_the_authors_copy_and_super_glue(fake_hub):
    calls, _ = fake_hub
    train = load_fewglue("cb", "train")
    load_fewglue("cb", "dev32")
    val = load_fewglue("cb", "val")
    assert [(c["path"], c["name"], c["split"]) for c in calls] == [
        (HUB_FEWGLUE, "cb", "train"),
        (HUB_FEWGLUE, "cb", "validation"),
        (HUB_SUPERGLUE, "cb", "validation"),
    ]
    assert (
        train
        == val
        == [
            {"premise": "a", "hypothesis": "b", "label": 1, "idx": 7},
            {"premise": "c", "hypothesis": "d", "label": 0, "idx": 9},
        ]
    )


def test_a_refused_script_dataset_is_read_from_its_parquet_export(fake_hub):
    calls, state = fake_hub
    state["refuse"], state["names"] = HUB_FEWGLUE, None  # plain ids, no ClassLabel names
    assert [e["label"] for e in load_fewglue("rte", "dev32")] == [1, 0]
    files = calls[-1]["data_files"]["validation"]
    assert calls[-1]["path"] == "parquet"
    assert files == f"hf://datasets/{HUB_FEWGLUE}@refs%2Fconvert%2Fparquet/rte/validation/*.parquet"
    state["refuse"] = HUB_SUPERGLUE  # no fallback for super_glue: the error surfaces
    with pytest.raises(RuntimeError, match="no longer supported"):
        load_fewglue("rte", "val")


def test_a_hub_label_the_task_does_not_know_is_an_error(fake_hub):
    # RTE has two classes; the fake dataset's id 1 is "contradiction", not an RTE label name
    with pytest.raises(DataFormatError, match="line 1: unknown label 'contradiction'"):
        load_fewglue("rte", "train")


# ----------------------------------------------------------------------------- metrics
def test_cb_metrics_are_accuracy_macro_f1_and_their_mean():
    gold = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 0, 2]
    # per class F1: 0 -> p 1/2 r 1/2 = 1/2; 1 -> p 2/3 r 1 = 4/5; 2 -> p 1 r 1/2 = 2/3
    f1 = (1 / 2 + 4 / 5 + 2 / 3) / 3
    out = fewglue_metrics("cb", pred, gold)
    assert out == pytest.approx({"accuracy": 4 / 6, "f1_macro": f1, "combined": (4 / 6 + f1) / 2})
    assert fewglue_metrics("rte", [0, 1, 1], [0, 1, 0]) == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="equally many"):
        fewglue_metrics("rte", [0, 1], [0])


def test_baselines_majority_and_expected_random_guess():
    out = baseline_metrics("cb", [0, 0, 1, 2], [1, 1, 1, 0])
    assert out["majority"]["accuracy"] == 0.25
    assert out["majority"]["f1_macro"] == pytest.approx((0.4 + 0.0) / 2)  # class 0: p 1/4, r 1
    assert out["random"]["accuracy"] == pytest.approx(1 / 3)
    f1 = [2 * p / 3 / (p + 1 / 3) for p in (0.75, 0.25)]
    assert out["random"]["f1_macro"] == pytest.approx(sum(f1) / 2)
    assert baseline_metrics("rte", [1, 1, 0], [0, 1])["majority"] == {"accuracy": 0.5}
