"""GLUE data: task specs, loading (local GLUE files or the Hugging Face Hub), held-out splits.

Two sources give the same list-of-dicts examples, ``{<text keys>..., "label", "idx"}``, with labels in
the Hugging Face ``nyu-mll/glue`` convention (see ``TaskSpec.label_names``):

* a local folder (argument ``data_dir`` or the environment variable ``TINYATTN_DATA_DIR``) laid out
  as ``<data_dir>/glue/<TASK>/<file>``, the original GLUE files (see ``LOCAL_FILES``), parsed with
  plain Python: tab-separated with no quoting (GLUE texts contain bare ``"`` characters), and
* otherwise the Hub, through ``datasets.load_dataset("nyu-mll/glue", <config>, split=...)``.

Tokenisation and batching, the next step, live in ``tinyattn.batching`` (``encode``,
``EncodedDataset``, ``make_dataloader``, ``GlueCollator``: also importable from here).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyattn.batching import (  # noqa: F401 (re-exported for importers of tinyattn.data)
    EncodedDataset,
    GlueCollator,
    check_seed,
    encode,
    make_dataloader,
)

DATA_DIR_ENV = "TINYATTN_DATA_DIR"
HUB_DATASET = "nyu-mll/glue"
SPLITS = ("train", "validation")


class DataFormatError(ValueError):
    """A data row that cannot be parsed; the message names the file (or Hub split) and the line."""

    def __init__(self, source: str | os.PathLike, line: int, problem: str) -> None:
        self.source = str(source)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.source}: line {line}: {problem}")


@dataclass(frozen=True)
class TaskSpec:
    """What the code needs to know about one GLUE task."""

    name: str
    text_keys: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metric: str
    hub_config: str
    dev_split: str

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "cola",
            ("sentence",),
            2,
            ("unacceptable", "acceptable"),
            "matthews_correlation",
            "cola",
            "validation",
        ),
        TaskSpec(
            "sst2", ("sentence",), 2, ("negative", "positive"), "accuracy", "sst2", "validation"
        ),
        TaskSpec(
            "mrpc",
            ("sentence1", "sentence2"),
            2,
            ("not_equivalent", "equivalent"),
            "accuracy",
            "mrpc",
            "validation",
        ),
        TaskSpec("stsb", ("sentence1", "sentence2"), 1, (), "pearson", "stsb", "validation"),
        TaskSpec(
            "qqp",
            ("question1", "question2"),
            2,
            ("not_duplicate", "duplicate"),
            "accuracy",
            "qqp",
            "validation",
        ),
        TaskSpec(
            "mnli",
            ("premise", "hypothesis"),
            3,
            ("entailment", "neutral", "contradiction"),
            "accuracy",
            "mnli",
            "validation_matched",
        ),
        TaskSpec(
            "qnli",
            ("question", "sentence"),
            2,
            ("entailment", "not_entailment"),
            "accuracy",
            "qnli",
            "validation",
        ),
        TaskSpec(
            "rte",
            ("sentence1", "sentence2"),
            2,
            ("entailment", "not_entailment"),
            "accuracy",
            "rte",
            "validation",
        ),
    )
}


@dataclass(frozen=True)
class _LocalLayout:
    """Where a task's local files are and how their columns map to example keys.

    ``columns`` maps each text key and ``"label"`` to a header name (files with a header) or a
    0-based column number (files without one, where ``n_fields`` is then required).
    """

    folder: str
    files: Mapping[str, str]  # split -> file name
    columns: Mapping[str, str | int]
    n_fields: int | None = None  # only for header-less files

    @property
    def has_header(self) -> bool:
        return self.n_fields is None


LOCAL_FILES: dict[str, _LocalLayout] = {
    "cola": _LocalLayout(
        "CoLA",
        {"train": "train.tsv", "validation": "dev.tsv"},
        {"sentence": 3, "label": 1},
        n_fields=4,  # source, label, original judgement, sentence
    ),
    "sst2": _LocalLayout(
        "SST-2",
        {"train": "train.tsv", "validation": "dev.tsv"},
        {"sentence": "sentence", "label": "label"},
    ),
    "mrpc": _LocalLayout(
        "MRPC",
        {"train": "train.tsv", "validation": "dev.tsv"},
        {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    ),
    "stsb": _LocalLayout(
        "STS-B",
        {"train": "train.tsv", "validation": "dev.tsv"},
        {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
    ),
    "qqp": _LocalLayout(
        "QQP",
        {"train": "train.tsv", "validation": "dev.tsv"},
        {"question1": "question1", "question2": "question2", "label": "is_duplicate"},
    ),
    # MNLI is stored as compact jsonl {premise, hypothesis, label}, not the GLUE tsv with parses.
    "mnli": _LocalLayout(
        "MNLI",
        {"train": "train.jsonl", "validation": "dev_matched.jsonl"},
        {"premise": "premise", "hypothesis": "hypothesis", "label": "label"},
    ),
    "qnli": _LocalLayout(
        "QNLI",
        {"train": "train.tsv", "validation": "dev.tsv"},
        {"question": "question", "sentence": "sentence", "label": "label"},
    ),
    "rte": _LocalLayout(
        "RTE",
        {"train": "train.tsv", "validation": "dev.tsv"},
        {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
    ),
}


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The spec of a GLUE task; case-insensitive, ``-``/``_`` ignored (``"SST-2"``, ``"sts-b"``)."""
    if isinstance(name, TaskSpec):
        return name
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The local data folder: ``data_dir`` if given, else ``$TINYATTN_DATA_DIR``, else None (the Hub).

    Raises FileNotFoundError if the folder chosen does not exist.
    """
    origin = "data_dir argument"
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
        origin = f"environment variable {DATA_DIR_ENV}"
    if data_dir is None:
        return None
    path = pathlib.Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data folder {str(path)!r} (from the {origin}) does not exist or is not a folder; "
            "expected a folder containing glue/<TASK>/... (e.g. glue/RTE/train.tsv), "
            f"or unset {DATA_DIR_ENV} and pass no data_dir to load from the Hugging Face Hub"
        )
    return path


def _normalise_split(split: str) -> str:
    s = split.strip().lower()
    if s in ("dev", "validation_matched"):
        s = "validation"
    if s not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} (or 'dev')")
    return s


def load_glue_task(
    task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Examples of one GLUE task split: dicts with the task's text keys, ``"label"`` and ``"idx"``.

    ``split`` is ``"train"`` or ``"validation"`` (alias ``"dev"``; MNLI's is the matched dev set).
    ``label`` is the class index in the ``nyu-mll/glue`` order (``spec.label_names``), or a float
    score for STS-B; ``idx`` is the 0-based example number in the file (or the Hub's ``idx``).
    The source is the local folder from ``resolve_data_dir(data_dir)`` if any, else the Hub.

    Raises FileNotFoundError for a missing local file and DataFormatError for a malformed row.
    """
    spec = get_task(task)
    split = _normalise_split(split)
    root = resolve_data_dir(data_dir)
    if root is None:
        return _load_from_hub(spec, split)
    layout = LOCAL_FILES[spec.name]
    path = root / "glue" / layout.folder / layout.files[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"no local file for GLUE task {spec.name!r} split {split!r}: {str(path)!r} does not exist "
            f"(expected layout <data_dir>/glue/{layout.folder}/{layout.files[split]}; "
            f"unset {DATA_DIR_ENV} and pass no data_dir to load from the Hugging Face Hub)"
        )
    if path.suffix == ".jsonl":
        return _read_jsonl(path, spec, layout)
    return _read_tsv(path, spec, layout)


def _parse_label(raw: Any, spec: TaskSpec) -> int | float:
    """A label from a file or the Hub: a class name or integer in range, or an STS-B score in [0, 5]."""
    if spec.is_regression:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"unparseable score {raw!r} (expected a number in [0, 5])") from None
        if not (0.0 <= value <= 5.0):  # also rejects NaN
            raise ValueError(f"score {raw!r} outside [0, 5]")
        return value
    if isinstance(raw, str):
        text = raw.strip()
        if text in spec.label_names:
            return spec.label_names.index(text)
        try:
            raw = int(text)
        except ValueError:
            raise ValueError(
                f"unknown label {raw!r} (expected one of {spec.label_names} "
                f"or an integer in [0, {spec.num_labels - 1}])"
            ) from None
    if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)):
        raise ValueError(f"unknown label {raw!r}")
    if not 0 <= int(raw) < spec.num_labels:
        raise ValueError(f"label {raw!r} out of range [0, {spec.num_labels - 1}]")
    return int(raw)


def _make_example(
    fields: Mapping[str, Any], spec: TaskSpec, idx: int, source: Any, line: int
) -> dict[str, Any]:
    example: dict[str, Any] = {}
    for key in spec.text_keys:
        text = fields[key]
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(source, line, f"empty or missing text for {key!r}")
        example[key] = text
    try:
        example["label"] = _parse_label(fields["label"], spec)
    except ValueError as err:
        raise DataFormatError(source, line, str(err)) from None
    example["idx"] = idx
    return example


def _iter_lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for each line, split on ``\\n`` only; BOM and ``\\r`` removed.

    A final empty line (the file ending with a newline) is not yielded.
    """
    with open(path, "rb") as f:
        data = f.read()
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataFormatError(path, number, f"not valid UTF-8 ({err.reason})") from None
        if number == 1:
            text = text.removeprefix("\ufeff")
        yield number, text.removesuffix("\r")


def _read_tsv(path: pathlib.Path, spec: TaskSpec, layout: _LocalLayout) -> list[dict[str, Any]]:
    """Parse a GLUE tsv: split on tabs only (no CSV quoting), check every row's field count."""
    lines = _iter_lines(path)
    if layout.has_header:
        first = next(lines, None)
        if first is None:
            raise DataFormatError(path, 1, "empty file (expected a header row)")
        header = [name.strip() for name in first[1].split("\t")]
        positions: dict[str, int] = {}
        for key, name in layout.columns.items():
            if name not in header:
                raise DataFormatError(path, 1, f"header {header} has no column {name!r}")
            positions[key] = header.index(name)
        n_fields = len(header)
    else:
        positions = {key: int(col) for key, col in layout.columns.items()}
        n_fields = int(layout.n_fields or 0)
    examples: list[dict[str, Any]] = []
    for number, text in lines:
        parts = text.split("\t")
        if len(parts) != n_fields:
            raise DataFormatError(
                path, number, f"expected {n_fields} tab-separated fields, found {len(parts)}"
            )
        fields = {key: parts[col] for key, col in positions.items()}
        examples.append(_make_example(fields, spec, len(examples), path, number))
    return examples


def _read_jsonl(path: pathlib.Path, spec: TaskSpec, layout: _LocalLayout) -> list[dict[str, Any]]:
    """Parse a jsonl file of objects holding the layout's keys."""
    examples: list[dict[str, Any]] = []
    for number, text in _iter_lines(path):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, number, f"invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataFormatError(path, number, "expected a JSON object")
        missing = [name for name in layout.columns.values() if name not in record]
        if missing:
            raise DataFormatError(path, number, f"missing key(s) {missing}")
        fields = {key: record[name] for key, name in layout.columns.items()}
        examples.append(_make_example(fields, spec, len(examples), path, number))
    return examples


def _load_from_hub(spec: TaskSpec, split: str) -> list[dict[str, Any]]:
    """The split from the Hub dataset ``nyu-mll/glue`` (downloaded and cached by ``datasets``)."""
    import datasets  # heavy import, only needed for this path

    hub_split = spec.dev_split if split == "validation" else split
    ds = datasets.load_dataset(HUB_DATASET, spec.hub_config, split=hub_split)
    source = f"{HUB_DATASET}/{spec.hub_config} split {hub_split!r}"
    columns = {key: list(ds[key]) for key in (*spec.text_keys, "label")}
    ids = list(ds["idx"]) if "idx" in ds.column_names else list(range(len(columns["label"])))
    examples = []
    for row in range(len(ids)):
        fields = {key: values[row] for key, values in columns.items()}
        if spec.is_regression:  # float32 on the Hub: 3.8 -> 3.799999952...; recover the decimals
            fields["label"] = round(float(fields["label"]), 6)
        example = _make_example(fields, spec, int(ids[row]), source, row + 1)
        examples.append(example)
    return examples


def split_train_heldout(
    examples: Sequence[dict[str, Any]], heldout_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministically split a training set into (train, heldout) for model selection.

    ``round(heldout_fraction * n)`` examples (at least 1, at most n - 1) go to heldout. With integer
    labels the split is stratified: each class contributes in proportion to its size (largest
    remainders get the rounding). Both parts keep the original order.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    n = len(examples)
    if n < 2:
        raise ValueError(f"need at least 2 examples to split, got {n}")
    rng = random.Random(check_seed(seed))
    n_heldout = min(max(round(heldout_fraction * n), 1), n - 1)
    labels = [ex.get("label") for ex in examples]
    stratify = all(isinstance(y, (int, np.integer)) and not isinstance(y, bool) for y in labels)
    groups: dict[Any, list[int]] = {}
    if stratify:
        for i, y in enumerate(labels):
            groups.setdefault(int(y), []).append(i)
    else:
        groups[None] = list(range(n))
    keys = sorted(groups)
    quotas = {k: n_heldout * len(groups[k]) / n for k in keys}
    takes = {k: math.floor(quotas[k]) for k in keys}
    by_remainder = sorted(keys, key=lambda k: (-(quotas[k] - takes[k]), k))
    for k in by_remainder[: n_heldout - sum(takes.values())]:
        takes[k] += 1
    heldout_ids: set[int] = set()
    for k in keys:
        members = list(groups[k])
        rng.shuffle(members)
        heldout_ids.update(members[: takes[k]])
    train = [ex for i, ex in enumerate(examples) if i not in heldout_ids]
    heldout = [ex for i, ex in enumerate(examples) if i in heldout_ids]
    return train, heldout


def subsample(
    examples: Sequence[dict[str, Any]], max_samples: int | None, seed: int
) -> list[dict[str, Any]]:
    """A deterministic random subset of ``max_samples`` examples, in their original order.

    ``None`` or ``max_samples >= len(examples)`` returns all examples unchanged.
    """
    if max_samples is None or max_samples >= len(examples):
        return list(examples)
    if max_samples < 1:
        raise ValueError(f"max_samples must be positive or None, got {max_samples!r}")
    chosen = sorted(random.Random(check_seed(seed)).sample(range(len(examples)), max_samples))
    return [examples[i] for i in chosen]
