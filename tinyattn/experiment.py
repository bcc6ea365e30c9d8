"""One run of the study: (task, method, seed, hyper-parameters) -> a trained model and its run record.

This is what the ``tinyattn train`` command and the training notebook call; everything a run depends on
is a field of ``RunParams``, and the record stores all of them.
"""

from __future__ import annotations

import sys
import time
import traceback
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from tinyattn.checkpoint import save_adapter
from tinyattn.data import (
    encode,
    get_task,
    load_glue_task,
    resolve_data_dir,
    split_train_heldout,
    subsample,
)
from tinyattn.inject import experts_averaged
from tinyattn.methods import build_model, method_options
from tinyattn.model import DEFAULT_BACKBONE, count_parameters, load_tokenizer, set_seed
from tinyattn.records import RECORD_VERSION, provenance, run_id, write_json_atomic
from tinyattn.train import TrainConfig, train

# Parameters that say where things are or what a run is called, not what it is: not in the run id.
_LOCATION_KEYS = ("label", "data_dir", "out_dir", "progress", "save_adapter")
# Parameters added after the first records were written: left out of the run id while at their
# default, so that every earlier record keeps its id.
_OMITTED_AT_DEFAULT = {"heldout_fraction": None, "restore_best": True}


@dataclass
class RunParams:
    task: str = "sst2"
    method: str = "tinyattn"
    backbone: str = DEFAULT_BACKBONE
    seed: int = 42
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    evals_per_epoch: int = 1
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    method_options: dict = field(default_factory=dict)
    # tinyattn with E > 1: start the experts from the trained E = 1 twin of this run (the authors'
    # two-stage recipe); the twin's adapter is reused when it was saved, else trained here first.
    two_stage: bool = False
    head_dropout: float = 0.1
    # Model selection without the dev set: hold out this fraction of the (capped) training set,
    # stratified, train on the rest and evaluate on the held-out part instead of the dev set.
    heldout_fraction: float | None = None
    # True: the run ends with its best evaluation's weights, which its saved adapter (and a two-stage
    # run's start) then are; False keeps the last step's, so that nothing chosen on the dev set
    # reaches a saved adapter or a later stage
    restore_best: bool = True
    label: str | None = None  # the method's name in a study profile, e.g. "tinyattn_e4"
    data_dir: str | None = None
    out_dir: str = "results/runs"
    save_adapter: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        get_task(self.task)  # unknown task -> ValueError naming it
        self.method_options = method_options(self.method, self.method_options)
        if self.two_stage and (self.method != "tinyattn" or self.method_options["experts"] < 2):
            raise ValueError("two_stage needs method 'tinyattn' with experts > 1")
        if self.heldout_fraction is not None and not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction!r}")

    @classmethod
    def names(cls) -> list[str]:
        """Every parameter's name (the training notebook's parameters cell defines each one)."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict) -> RunParams:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown run parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def identity(self) -> dict:
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in _LOCATION_KEYS
            and not (k in _OMITTED_AT_DEFAULT and v == _OMITTED_AT_DEFAULT[k])
        }

    @property
    def run_id(self) -> str:
        return run_id(self.identity())

    @property
    def adapter_dir(self) -> Path:
        return Path(self.out_dir) / "adapters" / self.run_id

    def stage_one(self) -> RunParams:
        """The single-expert twin whose trained adapter starts this run's experts."""
        options = {**self.method_options, "experts": 1, "init_from": None}
        return replace(self, two_stage=False, label=None, method_options=options, save_adapter=True)

    def train_config(self) -> TrainConfig:
        shared = {f.name for f in fields(TrainConfig)} & {f.name for f in fields(self)}
        return TrainConfig(**{name: getattr(self, name) for name in shared})


def _check_types(params: RunParams) -> None:
    """Papermill passes parameters through untyped: name any of the wrong type."""
    hints = typing.get_type_hints(RunParams)
    for f in fields(params):
        value, hint = getattr(params, f.name), hints[f.name]
        allowed = typing.get_args(hint) or (hint,)
        allowed = tuple(typing.get_origin(a) or a for a in allowed)
        if float in allowed:
            allowed += (int,)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok:
            names = " or ".join("None" if a is type(None) else a.__name__ for a in allowed)
            raise TypeError(f"run parameter {f.name!r} must be {names}, got {value!r}")


def run(params: RunParams, *, write: bool = True) -> tuple[dict, object]:
    """Train one run; write ``<out_dir>/<run_id>.json``; return (record, trained model or None).

    A failure is recorded (status ``failed`` with the error and traceback) and then re-raised.
    """
    started = time.time()
    record: dict = {
        "record_version": RECORD_VERSION,
        "run_id": params.run_id,
        "params": asdict(params),
        "status": "running",
        "provenance": provenance(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
    }
    out = Path(params.out_dir) / f"{params.run_id}.json"
    try:
        record.update(_train_and_measure(params))
        record["status"] = "done"
        model = record.pop("_model")
    except Exception as err:
        record.update(
            status="failed",
            error=_portable(f"{type(err).__name__}: {err}"),
            traceback=_portable(traceback.format_exc()),
        )
        record["wall_seconds"] = time.time() - started
        if write:
            write_json_atomic(out, record)
        raise
    record["wall_seconds"] = time.time() - started
    if write:
        write_json_atomic(out, record)
    return record, model


def _train_and_measure(params: RunParams) -> dict:
    spec = get_task(params.task)
    data_dir = resolve_data_dir(params.data_dir)
    train_rows = subsample(
        load_glue_task(spec.name, "train", data_dir), params.max_train_samples, params.seed
    )
    if params.heldout_fraction is None:
        eval_split = "validation"
        eval_rows = load_glue_task(spec.name, "validation", data_dir)
    else:
        eval_split = f"heldout {params.heldout_fraction:g} of train"
        train_rows, eval_rows = split_train_heldout(
            train_rows, params.heldout_fraction, params.seed
        )
    eval_rows = subsample(eval_rows, params.max_eval_samples, params.seed)
    tokenizer = load_tokenizer(params.backbone)
    train_data = encode(train_rows, spec, tokenizer, params.max_length)
    eval_data = encode(eval_rows, spec, tokenizer, params.max_length)

    options, stage_one = params.method_options, None
    if params.two_stage:
        options, stage_one = _stage_one(params)
    set_seed(params.seed)  # the head and adapter initialisation depend on it
    model = build_model(
        params.method, params.backbone, spec.num_labels, options, head_dropout=params.head_dropout
    )
    counts = count_parameters(model)
    result = train(
        model,
        spec.name,
        train_data,
        eval_data,
        tokenizer,
        params.train_config(),
        eval_context=experts_averaged,
    )
    if hasattr(model, "tiny_attention") and model.tiny_attention.config.experts > 1:
        with experts_averaged(model):
            counts["deployed_adapter_params"] = count_parameters(model)["adapter_params"]
        result["evaluated_as"] = "experts weight-averaged (deployed)"
    if params.save_adapter:
        save_adapter(
            model,
            Path(params.out_dir) / "adapters" / params.run_id,
            extra={"task": spec.name, "run_id": params.run_id},
        )
    if stage_one is not None:
        result["stage_one"] = stage_one
    return {
        "task": spec.name,
        "method": params.method,
        "seed": params.seed,
        "data_source": "local folder" if data_dir else "hub:nyu-mll/glue",
        "eval_split": eval_split,
        "params_count": counts,
        **result,
        "_model": model,
    }


def _portable(text: str) -> str:
    """Text for a record that others read: this machine's folders replaced by placeholders."""
    for folder, name in (
        (sys.prefix, "<env>"),
        (str(Path.cwd()), "<cwd>"),
        (str(Path.home()), "~"),
    ):
        text = text.replace(folder, name)
    return text


def _stage_one(params: RunParams) -> tuple[dict, dict]:
    """Options that start the experts from the E = 1 twin's adapter, training the twin if needed."""
    twin = params.stage_one()
    info = {"run_id": twin.run_id}
    if (twin.adapter_dir / "adapter_config.json").is_file():
        info["source"] = "saved adapter of the E=1 run"
    else:
        twin_record, _ = run(replace(twin, progress=params.progress), write=False)
        info.update(
            source="trained within this run",
            wall_seconds=twin_record["wall_seconds"],
            best=twin_record["best"],
            evaluations=twin_record["evaluations"],
        )
    return {**params.method_options, "init_from": str(twin.adapter_dir)}, info
