"""Task specs: what the code knows of each task, and the pieces every loader shares.

* ``TaskSpec`` and the registries ``GLUE_TASKS`` (the eight GLUE tasks) and ``FEWSHOT_TASKS`` (FewGLUE
  RTE and CB as ordinary classification tasks: their 32 FewGLUE training examples, evaluated on the
  SuperGLUE val set; ``fewrte``, ``fewcb``); ``get_task`` resolves a name in either;
* ``resolve_data_dir`` (the local data folder or the Hub), ``DataFormatError`` (a bad row, named by
  file and line) and ``make_example`` (one checked example from one parsed row), used by the GLUE
  loader (``tinyattn.data``) and the FewGLUE loader (``tinyattn.fewglue``) alike.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

DATA_DIR_ENV = "TINYATTN_DATA_DIR"


class DataFormatError(ValueError):
    """A data row that cannot be parsed; the message names the file (or Hub split) and the line."""

    def __init__(self, source: str | os.PathLike, line: int, problem: str) -> None:
        self.source = str(source)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.source}: line {line}: {problem}")


@dataclass(frozen=True)
class TaskSpec:
    """What the code needs to know about one task (GLUE, or a FewGLUE task as a classification task)."""

    name: str
    text_keys: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metric: str
    hub_config: str
    dev_split: str
    # where the examples come from: "glue" (``data.load_glue_task``), or "fewglue" (the 32 FewGLUE
    # training examples and the SuperGLUE val set of the task ``hub_config``, ``fewglue.load_fewglue``)
    source: str = "glue"

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


# FewGLUE RTE and CB as classification tasks (the offline substitute for the cloze protocol): the keys
# and label order of ``fewglue.FEWGLUE_TASKS``, the split names of ``fewglue.SPLITS`` ("val" is the
# SuperGLUE validation set). CB's main metric is PET's: the mean of accuracy and macro-F1.
FEWSHOT_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "fewrte",
            ("premise", "hypothesis"),
            2,
            ("entailment", "not_entailment"),
            "accuracy",
            "rte",
            "val",
            source="fewglue",
        ),
        TaskSpec(
            "fewcb",
            ("premise", "hypothesis"),
            3,
            ("entailment", "contradiction", "neutral"),
            "combined",
            "cb",
            "val",
            source="fewglue",
        ),
    )
}


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The spec of a task; case-insensitive, ``-``/``_`` ignored (``"SST-2"``, ``"sts-b"``, ``"few-cb"``)."""
    if isinstance(name, TaskSpec):
        return name
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    spec = GLUE_TASKS.get(key) or FEWSHOT_TASKS.get(key)
    if spec is None:
        raise ValueError(
            f"unknown GLUE task {name!r}; known tasks: {', '.join(GLUE_TASKS)}; "
            f"few-shot tasks: {', '.join(FEWSHOT_TASKS)}"
        )
    return spec


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


def parse_label(raw: Any, spec: TaskSpec) -> int | float:
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


def make_example(
    fields: Mapping[str, Any],
    spec: Any,
    idx: int,
    source: Any,
    line: int,
    label_parser: Callable[[Any], int | float] | None = None,
) -> dict[str, Any]:
    """One example ``{<text keys>..., "label", "idx"}`` from a parsed row, checked: every text key of
    ``spec`` present and non-empty text, the label parsed by ``label_parser`` (default
    ``parse_label(raw, spec)``). Anything wrong is a ``DataFormatError`` naming ``source`` and ``line``.
    """
    missing = [key for key in (*spec.text_keys, "label") if key not in fields]
    if missing:
        raise DataFormatError(source, line, f"missing field(s) {missing}")
    example: dict[str, Any] = {}
    for key in spec.text_keys:
        text = fields[key]
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(source, line, f"empty or missing text for {key!r}")
        example[key] = text
    try:
        raw = fields["label"]
        example["label"] = label_parser(raw) if label_parser else parse_label(raw, spec)
    except ValueError as err:
        raise DataFormatError(source, line, str(err)) from None
    example["idx"] = idx
    return example
