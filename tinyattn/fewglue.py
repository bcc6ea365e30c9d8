"""FewGLUE / SuperGLUE data for the few-shot protocol (claim C4): tasks, loaders, cloze inputs, metrics.

Three splits per task, each a list of dicts ``{<text keys>..., "label": int, "idx": int}``:

* ``train``: the 32 FewGLUE training examples (Schick & Schuetze 2021, ``timoschick/fewglue``);
* ``dev32``: the 32-example FewGLUE_32dev set (Liu et al. 2021, P-tuning), for selection where a
  protocol selects; no overlap with ``train`` or ``val``;
* ``val``: the SuperGLUE validation set, used for evaluation (SuperGLUE's test labels are hidden).

Sources, as for GLUE in ``tinyattn.data`` (the shared pieces are in ``tinyattn.tasks``): the local folder (argument ``data_dir`` or the environment
variable ``TINYATTN_DATA_DIR``) laid out as ``<data_dir>/fewglue/<TASK>/{train,dev32}.jsonl`` and
``<data_dir>/superglue/<TASK>/val.jsonl``; otherwise the Hugging Face Hub: ``train`` and ``dev32`` from
``juny116/few_glue`` (its ``train`` and ``validation`` splits, the copy the tiny-attention authors
loaded; its ``test`` split is the SuperGLUE val set) and ``val`` from ``super_glue`` (``validation``).

Labels are class ids in a fixed order per task, the SuperGLUE / Hugging Face ``super_glue`` order:
RTE entailment=0, not_entailment=1; CB entailment=0, contradiction=1, neutral=2; BoolQ False=0,
True=1 (PET's ``BoolQProcessor`` label list ``["False", "True"]``; the files store JSON booleans).

Cloze inputs (``ClozePattern``, used by ``tinyattn.cloze``): each task's pattern renders an example as
one text with exactly one mask token. RTE and CB exactly as the tiny-attention authors' few-shot script:
``premise + "?" + mask + ". " + hypothesis``, verbalizers yes / no (RTE: entailment, not_entailment) and
yes / no / maybe (CB: entailment, contradiction, neutral). BoolQ: PET's ``BoolQPVP`` pattern 0,
``passage + ". Question: " + question + "? Answer: " + mask + "."`` with No / Yes, rendered as one string
like the authors' RTE/CB text (PET tokenises the parts separately). Too long an input loses words from
the end of the premise (passage) first; the mask and the hypothesis (question) are never cut. The
verbalizer token is the word-initial form of the word, the tokenisation of ``" " + word`` (BERT ``yes``,
ALBERT ``▁yes``, RoBERTa ``Ġyes``, as PET's ``add_prefix_space``): it must be exactly one known token.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from tinyattn.tasks import DATA_DIR_ENV, DataFormatError, make_example, resolve_data_dir

HUB_FEWGLUE = "juny116/few_glue"
HUB_SUPERGLUE = "super_glue"
SPLITS = ("train", "dev32", "val")
#: split -> (local sub-folder, file name, Hub repository, Hub split)
SPLIT_SOURCES = {
    "train": ("fewglue", "train.jsonl", HUB_FEWGLUE, "train"),
    "dev32": ("fewglue", "dev32.jsonl", HUB_FEWGLUE, "validation"),
    "val": ("superglue", "val.jsonl", HUB_SUPERGLUE, "validation"),
}


@dataclass(frozen=True)
class FewGlueTask:
    """What the code needs to know about one FewGLUE task, its cloze pattern included.

    ``pattern`` is a ``str.format`` template over the text keys and ``{mask}`` (the tokenizer's mask
    token); ``shorten`` the field that loses words when an input is too long; ``verbalizers`` one word
    per class id (see ``tinyattn.cloze``).
    """

    name: str  # lower case, as the Hub configs: "rte", "cb", "boolq"
    folder: str  # the local folder name: "RTE", "CB", "BoolQ"
    text_keys: tuple[str, ...]
    label_names: tuple[str, ...]  # class id -> name
    metrics: tuple[str, ...]  # what ``fewglue_metrics`` reports
    main_metric: str  # the one number for selection and summaries
    pattern: str
    shorten: str
    verbalizers: tuple[str, ...]
    pattern_source: str

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


_AUTHORS = "Zhao, Tan & Mei (2022) code, rewriter/run/train_few_shot.py"
FEWGLUE_TASKS: dict[str, FewGlueTask] = {
    task.name: task
    for task in (
        FewGlueTask(
            "rte",
            "RTE",
            ("premise", "hypothesis"),
            ("entailment", "not_entailment"),
            ("accuracy",),
            "accuracy",
            "{premise}?{mask}. {hypothesis}",
            "premise",
            ("yes", "no"),
            _AUTHORS,
        ),
        # PET reports CB as accuracy / macro-F1; the SuperGLUE CB score is their mean ("combined").
        FewGlueTask(
            "cb",
            "CB",
            ("premise", "hypothesis"),
            ("entailment", "contradiction", "neutral"),
            ("accuracy", "f1_macro", "combined"),
            "combined",
            "{premise}?{mask}. {hypothesis}",
            "premise",
            ("yes", "no", "maybe"),
            _AUTHORS,
        ),
        # PET's BoolQPVP pattern 0 with its VERBALIZER_A, as one string (PET joins token ids of parts)
        FewGlueTask(
            "boolq",
            "BoolQ",
            ("question", "passage"),
            ("False", "True"),
            ("accuracy",),
            "accuracy",
            "{passage}. Question: {question}? Answer: {mask}.",
            "passage",
            ("No", "Yes"),
            "Schick & Schuetze (2021), PET pet/pvp.py BoolQPVP pattern 0",
        ),
    )
}


#: Published FewGLUE results (32 training examples), Schick & Schütze (NAACL 2021), Table 1. The table
#: has two blocks: ``dev``, the official SuperGLUE validation set (the split this project scores, so
#: the one it compares with), and ``test``, the hidden test set scored by the leaderboard (shown beside
#: it). GPT-3: 175 B parameters, primed with 32 examples (Brown et al. 2020, whose Table 3.8 gives the
#: same test row); PET / iPET: ALBERT-xxlarge-v2. RTE accuracy; CB accuracy and macro-F1, reported
#: separately (the tiny-attention authors' few-shot script reports CB's accuracy only) and, as
#: ``combined``, their mean, this project's CB metric.
#: ``checked`` says when and against what the values were read; while it is empty the book withholds
#: them and decides nothing against them (``tinyattn.analysis.fewshot.published``).
PUBLISHED = {
    "citation": "Schick & Schütze (2021), Table 1",
    "checked": (
        "2026-12-07: every value read against Table 1 (page 6) of the paper's PDF "
        "(arXiv:2009.07118v2, NAACL 2021)"
    ),
    "compared": "dev",
    "splits": {"dev": "SuperGLUE validation", "test": "SuperGLUE test"},
    "rows": {
        "dev": {
            "GPT-3": {"rte": {"accuracy": 72.9}, "cb": {"accuracy": 82.1, "f1_macro": 57.2}},
            "PET": {"rte": {"accuracy": 69.8}, "cb": {"accuracy": 85.1, "f1_macro": 59.4}},
            "iPET": {"rte": {"accuracy": 74.0}, "cb": {"accuracy": 92.9, "f1_macro": 92.4}},
        },
        "test": {
            "GPT-3": {"rte": {"accuracy": 69.0}, "cb": {"accuracy": 75.6, "f1_macro": 52.0}},
            "PET": {"rte": {"accuracy": 67.2}, "cb": {"accuracy": 87.2, "f1_macro": 60.2}},
            "iPET": {"rte": {"accuracy": 70.8}, "cb": {"accuracy": 88.8, "f1_macro": 79.9}},
        },
    },
}


def published_scores(block: str | None = None) -> dict[str, dict[str, float]]:
    """task -> {system: score}: each published row's main metric (RTE accuracy, CB combined), from
    one block of the table (default: the compared one, ``dev``)."""
    block = block or PUBLISHED["compared"]
    if block not in PUBLISHED["rows"]:
        raise ValueError(f"Table 1 has blocks {sorted(PUBLISHED['rows'])}, not {block!r}")
    out: dict[str, dict[str, float]] = {}
    for system, tasks in PUBLISHED["rows"][block].items():
        for task, scores in tasks.items():
            if "f1_macro" in scores:
                scores = {**scores, "combined": (scores["accuracy"] + scores["f1_macro"]) / 2}
            main = FEWGLUE_TASKS[task].main_metric
            out.setdefault(task, {})[system] = scores[main]
    return out


def get_fewglue_task(name: str | FewGlueTask) -> FewGlueTask:
    """The spec of a FewGLUE task, case-insensitive (``"RTE"``, ``"cb"``, ``"BoolQ"``)."""
    if isinstance(name, FewGlueTask):
        return name
    key = str(name).strip().lower()
    if key not in FEWGLUE_TASKS:
        raise ValueError(f"unknown FewGLUE task {name!r}; known tasks: {', '.join(FEWGLUE_TASKS)}")
    return FEWGLUE_TASKS[key]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(
            f"unknown FewGLUE split {split!r}; expected one of {SPLITS} (train: 32 FewGLUE examples, "
            "dev32: FewGLUE_32dev, val: SuperGLUE validation)"
        )
    return split


def local_path(task: str | FewGlueTask, split: str, data_dir: str | os.PathLike) -> pathlib.Path:
    """Where a split lives in a local data folder (the file may not exist)."""
    spec = get_fewglue_task(task)
    folder, filename, _, _ = SPLIT_SOURCES[_check_split(split)]
    return pathlib.Path(data_dir) / folder / spec.folder / filename


def load_fewglue(
    task: str | FewGlueTask, split: str, data_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """The examples of one split (``train``, ``dev32`` or ``val``) of a FewGLUE task.

    The source is the local folder from ``tinyattn.tasks.resolve_data_dir(data_dir)`` if any, else the
    Hub. Raises FileNotFoundError naming a missing local file and ``DataFormatError`` (file and line)
    for a malformed row: invalid JSON, a missing or empty field, an unknown label.
    """
    spec = get_fewglue_task(task)
    _check_split(split)
    root = resolve_data_dir(data_dir)
    if root is None:
        return _load_from_hub(spec, split)
    path = local_path(spec, split, root)
    if not path.is_file():
        folder, filename, _, _ = SPLIT_SOURCES[split]
        raise FileNotFoundError(
            f"no local file for FewGLUE task {spec.name!r} split {split!r}: {str(path)!r} does not "
            f"exist (expected layout <data_dir>/{folder}/{spec.folder}/{filename}; unset "
            f"{DATA_DIR_ENV} and pass no data_dir to load from the Hugging Face Hub)"
        )
    return _read_jsonl(path, spec)


def parse_label(raw: Any, spec: FewGlueTask) -> int:
    """A class id from a label name (``"entailment"``), a JSON boolean (BoolQ) or an id in range."""
    names = spec.label_names
    if isinstance(raw, bool):
        if names != ("False", "True"):
            raise ValueError(
                f"boolean label {raw!r} for task {spec.name!r} (expected one of {names})"
            )
        return int(raw)
    if isinstance(raw, str) and raw.strip() in names:
        return names.index(raw.strip())
    if isinstance(raw, (int, np.integer)) and 0 <= int(raw) < len(names):
        return int(raw)
    raise ValueError(
        f"unknown label {raw!r} (expected one of {names} or an id in [0, {len(names) - 1}])"
    )


def _make_example(
    record: Mapping[str, Any], spec: FewGlueTask, row: int, source: Any, line: int
) -> dict[str, Any]:
    """``tasks.make_example`` with this task's labels; ``idx`` from the record, else the row."""
    idx = record.get("idx", row)
    idx = int(idx) if isinstance(idx, (int, np.integer)) and not isinstance(idx, bool) else row
    return make_example(record, spec, idx, source, line, lambda raw: parse_label(raw, spec))


def _read_jsonl(path: pathlib.Path, spec: FewGlueTask) -> list[dict[str, Any]]:
    """One JSON object per line; a blank last line is allowed, any other blank line is an error."""
    examples: list[dict[str, Any]] = []
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
        except UnicodeDecodeError as err:
            raise DataFormatError(path, number, f"not valid UTF-8 ({err.reason})") from None
        except json.JSONDecodeError as err:
            raise DataFormatError(path, number, f"invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataFormatError(path, number, "expected a JSON object")
        examples.append(_make_example(record, spec, len(examples), path, number))
    return examples


def _load_from_hub(spec: FewGlueTask, split: str) -> list[dict[str, Any]]:
    """The split from the Hub (downloaded and cached by ``datasets``).

    ``juny116/few_glue`` is a script dataset, which ``datasets`` >= 4 no longer runs; when the script
    is refused, the same split is read from the Hub's Parquet export of that repository.
    """
    import datasets  # heavy import, only needed for this path

    _, _, repo, hub_split = SPLIT_SOURCES[split]
    source = f"{repo}/{spec.name} split {hub_split!r}"
    try:
        ds = datasets.load_dataset(repo, spec.name, split=hub_split)
    except RuntimeError:
        if repo != HUB_FEWGLUE:
            raise
        files = f"hf://datasets/{repo}@refs%2Fconvert%2Fparquet/{spec.name}/{hub_split}/*.parquet"
        ds = datasets.load_dataset("parquet", data_files={hub_split: files}, split=hub_split)
        source = f"{files} (Parquet export of {repo})"
    label_feature = ds.features.get("label") if getattr(ds, "features", None) else None
    names = getattr(label_feature, "names", None)
    examples = []
    for row, record in enumerate(ds):
        record = dict(record)
        if names is not None and isinstance(record.get("label"), (int, np.integer)):
            record["label"] = names[int(record["label"])]  # the dataset's own id -> name
        examples.append(_make_example(record, spec, row, source, row + 1))
    return examples


# ----------------------------------------------------------------------------- cloze inputs
class VerbalizerError(ValueError):
    """A verbalizer word that is not exactly one known token of the backbone's vocabulary."""


def verbalizer_ids(tokenizer, words: tuple[str, ...] | list[str]) -> list[int]:
    """The token id of each word in its word-initial form (``" " + word``); one known token each."""
    name = getattr(tokenizer, "name_or_path", "") or "?"
    ids = []
    for word in words:
        found = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(found) != 1 or found[0] == tokenizer.unk_token_id:
            pieces = tokenizer.convert_ids_to_tokens(found)
            raise VerbalizerError(
                f"verbalizer {word!r} is not a single token of the tokenizer {name!r} "
                f"({type(tokenizer).__name__}): ' {word}' becomes {pieces}; choose a word the "
                "vocabulary holds as one token"
            )
        ids.append(found[0])
    if len(set(ids)) != len(ids):
        raise VerbalizerError(f"verbalizers {list(words)} share a token in tokenizer {name!r}")
    return ids


class ClozePattern:
    """Renders and encodes the examples of one task for one tokenizer.

    ``encode(example)`` -> ``{"input_ids", "mask_index", "label", "idx", "text"}``; the input has at
    most ``max_length`` tokens (special tokens included) and exactly one mask token.
    """

    def __init__(self, task: str | FewGlueTask, tokenizer, max_length: int = 512) -> None:
        self.task = get_fewglue_task(task)
        self.tokenizer = tokenizer
        self.max_length = max_length
        for role in ("mask", "pad"):
            if getattr(tokenizer, f"{role}_token") is None:
                raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {role} token")
        self.mask_token_id, self.pad_token_id = tokenizer.mask_token_id, tokenizer.pad_token_id
        self.label_token_ids = verbalizer_ids(tokenizer, self.task.verbalizers)

    def render(self, example: dict[str, Any], **override: str) -> str:
        """The pattern's text for ``example`` (fields in ``override`` replace the example's)."""
        fields = {key: example[key] for key in self.task.text_keys} | override
        return self.task.pattern.format(mask=self.tokenizer.mask_token, **fields)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]

    def encode(self, example: dict[str, Any]) -> dict[str, Any]:
        text = self.render(example)
        ids = self._ids(text)
        if len(ids) > self.max_length:
            text, ids = self._shortened(example)
        where = [i for i, token in enumerate(ids) if token == self.mask_token_id]
        if len(where) != 1:
            raise ValueError(
                f"example {example.get('idx')}: the pattern gives {len(where)} mask tokens, not 1 "
                "(does the text itself contain the mask token?)"
            )
        return {
            "input_ids": ids,
            "mask_index": where[0],
            "label": int(example["label"]),
            "idx": example.get("idx"),
            "text": text,
        }

    def _shortened(self, example: dict[str, Any]) -> tuple[str, list[int]]:
        """Keep the most leading words of the shortenable field that let the input fit."""
        field = self.task.shorten
        full = example[field]
        cuts = [0] + [m.start() for m in re.finditer(r"\s+", full)]  # word-prefix ends

        def attempt(k: int) -> tuple[str, list[int]]:
            text = self.render(example, **{field: full[: cuts[k]]})
            return text, self._ids(text)

        low, high = 0, len(cuts) - 1  # the largest k that fits, by bisection
        best = attempt(0)
        if len(best[1]) > self.max_length:
            raise ValueError(
                f"example {example.get('idx')}: even with the {field} removed the pattern has "
                f"{len(best[1])} tokens, more than max_length={self.max_length}"
            )
        while low < high:
            mid = (low + high + 1) // 2
            candidate = attempt(mid)
            if len(candidate[1]) <= self.max_length:
                low, best = mid, candidate
            else:
                high = mid - 1
        return best


# ----------------------------------------------------------------------------- metrics
def fewglue_metrics(
    task: str | FewGlueTask, predictions: Sequence[int], labels: Sequence[int]
) -> dict[str, float]:
    """Accuracy; for CB also macro-F1 over the classes present (sklearn's default, as PET computes
    it) and ``combined`` = their mean, the SuperGLUE CB score."""
    spec = get_fewglue_task(task)
    preds, gold = np.asarray(predictions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if preds.shape != gold.shape or preds.ndim != 1 or len(gold) == 0:
        raise ValueError(
            f"need equally many predictions and labels, got {preds.shape}, {gold.shape}"
        )
    out = {"accuracy": float(np.mean(preds == gold))}
    if "f1_macro" in spec.metrics:
        out["f1_macro"] = float(f1_score(gold, preds, average="macro", zero_division=0.0))
        out["combined"] = (out["accuracy"] + out["f1_macro"]) / 2
    return out


def baseline_metrics(
    task: str | FewGlueTask, train_labels: Sequence[int], eval_labels: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Two floors for any few-shot score on ``eval_labels``.

    ``majority``: always the most frequent training class (ties: the lowest id).
    ``random``: the expectation of a uniformly random guess: accuracy 1/K and, per class with
    evaluation frequency p, F1 = 2 p (1/K) / (p + 1/K) (precision p, recall 1/K), macro-averaged over
    the classes present in ``eval_labels``.
    """
    spec = get_fewglue_task(task)
    counts = Counter(int(y) for y in train_labels)
    if not counts:
        raise ValueError("no training labels")
    majority = min(counts, key=lambda c: (-counts[c], c))
    gold = [int(y) for y in eval_labels]
    out = {"majority": fewglue_metrics(spec, [majority] * len(gold), gold)}
    k = spec.num_labels
    random = {"accuracy": 1.0 / k}
    if "f1_macro" in spec.metrics:
        freq = [n / len(gold) for n in Counter(gold).values()]
        random["f1_macro"] = float(np.mean([2 * p / k / (p + 1 / k) for p in freq]))
        random["combined"] = (random["accuracy"] + random["f1_macro"]) / 2
    out["random"] = random
    return out
