"""GLUE data: loading (local GLUE files or the Hugging Face Hub), held-out splits.

The task specs (``TaskSpec``, ``get_task``, ``GLUE_TASKS``, ``FEWSHOT_TASKS``) live in
``tinyattn.tasks`` and are importable from here too. ``load_glue_task`` also serves the few-shot
classification tasks (``fewrte``, ``fewcb``) through the FewGLUE loader: ``train`` is their 32 FewGLUE
examples, ``validation`` the SuperGLUE val set, ``dev32`` FewGLUE's 32-example dev set.

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
from tinyattn.tasks import (  # noqa: F401 (re-exported: task specs lived here before tinyattn.tasks)
    DATA_DIR_ENV,
    FEWSHOT_TASKS,
    GLUE_TASKS,
    DataFormatError,
    TaskSpec,
    get_task,
    make_example,
    parse_label,
    resolve_data_dir,
)

HUB_DATASET = "nyu-mll/glue"
SPLITS = ("train", "validation")


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
    if spec.source == "fewglue":
        from tinyattn.fewglue import load_fewglue  # FewGLUE's loader imports this module's helpers

        few_split = {"train": "train", "validation": "val", "dev": "val", "dev32": "dev32"}
        if split.strip().lower() not in few_split:
            raise ValueError(
                f"unknown split {split!r} of few-shot task {spec.name!r}; expected one of "
                f"{sorted(few_split)}"
            )
        return load_fewglue(spec.hub_config, few_split[split.strip().lower()], data_dir)
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
        examples.append(make_example(fields, spec, len(examples), path, number))
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
        examples.append(make_example(fields, spec, len(examples), path, number))
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
        example = make_example(fields, spec, int(ids[row]), source, row + 1)
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
