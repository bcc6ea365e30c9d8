"""One run of the study: (task, method, seed, hyper-parameters) -> a trained model and its run record.

Protocols (``RunParams.protocol``): ``classification`` (default: encoder + classifier head) and ``cloze``
(claim C4's PET-style few-shot protocol on a masked LM, ``tinyattn.cloze``); one record format.

This is what the ``tinyattn train`` command and the training notebook call; everything a run depends on
is a field of ``RunParams``, and the record stores all of them. ``initial_model`` and ``eval_data`` give
a run's starting model and evaluation data exactly as the run had them (the experts analysis uses them).
"""

from __future__ import annotations

import sys
import time
import traceback
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from tinyattn.checkpoint import CONFIG_FILE, save_adapter, start_experts_from
from tinyattn.data import (
    EncodedDataset,
    TaskSpec,
    encode,
    get_task,
    load_glue_task,
    resolve_data_dir,
    split_train_heldout,
    subsample,
)
from tinyattn.inject import PREFIX, experts_averaged
from tinyattn.methods import RETIRED_OPTIONS, build_model, method_options
from tinyattn.model import DEFAULT_BACKBONE, count_parameters, load_tokenizer, set_seed
from tinyattn.records import (
    RECORD_VERSION,
    RUNS_DIR,
    adapter_dir,
    check_out_dir,
    provenance,
    run_id,
    write_json_atomic,
)
from tinyattn.train import TrainConfig, train

# Parameters that say where things are or what a run is called, not what it is: not in the run id.
_LOCATION_KEYS = ("label", "data_dir", "out_dir", "progress", "save_adapter")
# Parameters added after the first records were written: left out of the run id while at their
# default, so that every earlier record keeps its id.
_OMITTED_AT_DEFAULT = {
    "heldout_fraction": None,
    "restore_best": True,
    "max_grad_norm": 1.0,
    "select_metric": None,
    "protocol": "classification",
    "protocol_options": {},
}
PROTOCOLS = ("classification", "cloze")
# The cloze protocol's settings (``protocol_options``), the authors' recipe by default: loss "mlm" or
# "verbalizer" (PET's), variant "authors" or "adapter_only", decay_all (weight decay on everything),
# select_on None (keep the last epoch) or "dev32" (the epoch best on FewGLUE's dev32); see ``cloze``.
CLOZE_OPTIONS = {"loss": "mlm", "variant": "authors", "decay_all": True, "select_on": None}


@dataclass
class RunParams(TrainConfig):
    """Everything one run depends on: the training loop's settings (``TrainConfig``) and these."""

    task: str = "sst2"
    method: str = "tinyattn"
    backbone: str = DEFAULT_BACKBONE
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    method_options: dict = field(default_factory=dict)
    # tinyattn with E > 1: start the experts from the trained E = 1 twin of this run (the authors'
    # two-stage recipe); the twin's adapter is reused when it was saved, else trained here first.
    two_stage: bool = False
    head_dropout: float = 0.1
    # "classification" (encoder + classifier head) or "cloze" (masked LM, pattern and verbalizers)
    protocol: str = "classification"
    protocol_options: dict = field(default_factory=dict)  # the cloze protocol's (CLOZE_OPTIONS)
    # Model selection without the dev set: hold out this fraction of the (capped) training set,
    # stratified, train on the rest and evaluate on the held-out part instead of the dev set.
    heldout_fraction: float | None = None
    label: str | None = None  # the method's name in a study profile, e.g. "tinyattn_e4"
    data_dir: str | None = None
    out_dir: str = RUNS_DIR
    save_adapter: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        super().__post_init__()
        get_task(self.task)  # unknown task -> ValueError naming it
        self.method_options = method_options(self.method, self.method_options)
        if self.two_stage and (self.method != "tinyattn" or self.method_options["experts"] < 2):
            raise ValueError("two_stage needs method 'tinyattn' with experts > 1")
        if self.heldout_fraction is not None and not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {PROTOCOLS}")
        if self.protocol == "cloze":
            self.protocol_options = _cloze_options(self)
        elif self.protocol_options:
            raise ValueError(
                f"protocol_options {self.protocol_options} given, but the classification protocol "
                "has none (they are the cloze protocol's)"
            )

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

    @property
    def spec(self) -> TaskSpec:
        """The task, resolved."""
        return get_task(self.task)

    def identity(self) -> dict:
        """What the run id hashes: every parameter that changes what the run computes."""
        kept = {
            k: v
            for k, v in asdict(self).items()
            if k not in _LOCATION_KEYS
            and not (k in _OMITTED_AT_DEFAULT and v == _OMITTED_AT_DEFAULT[k])
        }
        kept["method_options"] = {**kept["method_options"], **RETIRED_OPTIONS.get(self.method, {})}
        return kept

    @property
    def run_id(self) -> str:
        return run_id(self.identity())

    @property
    def adapter_dir(self) -> Path:
        return adapter_dir(self.run_id, self.out_dir)

    def stage_one(self) -> RunParams:
        """The single-expert twin whose trained adapter starts this run's experts."""
        options = {**self.method_options, "experts": 1}
        return replace(self, two_stage=False, label=None, method_options=options, save_adapter=True)

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})


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


def _cloze_options(params: RunParams) -> dict:
    """The cloze protocol's options with their defaults, checked with the run's other settings."""
    unknown = set(params.protocol_options) - set(CLOZE_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown cloze protocol option(s) {sorted(unknown)}; known: {sorted(CLOZE_OPTIONS)}"
        )
    options = {**CLOZE_OPTIONS, **params.protocol_options}
    if params.spec.source != "fewglue":
        raise ValueError(
            f"the cloze protocol needs a few-shot task with a pattern (fewrte, fewcb), "
            f"not {params.task!r}"
        )
    if options["select_on"] not in (None, "dev32"):
        raise ValueError(f"select_on must be None or 'dev32', got {options['select_on']!r}")
    unsupported = {
        "two_stage": params.two_stage,
        "heldout_fraction": params.heldout_fraction,
        "max_steps": params.max_steps,
        "max_train_samples": params.max_train_samples,
        "max_eval_samples": params.max_eval_samples,
        "save_adapter": params.save_adapter,
    }
    given = sorted(name for name, value in unsupported.items() if value)
    if given:
        raise ValueError(f"the cloze protocol does not support {given} (the 32 examples train)")
    if params.epochs != int(params.epochs):
        raise ValueError(f"the cloze protocol trains whole epochs, got epochs={params.epochs!r}")
    return options


def initial_model(params: RunParams, runs_dir: str | Path | None = None):
    """The model exactly as the run's training starts: seeded, built, and for a two-stage run its
    experts started from the E = 1 twin's saved adapter in ``runs_dir`` (default ``params.out_dir``)."""
    set_seed(params.seed)  # the head and adapter initialisation depend on it
    model = build_model(
        params.method,
        params.backbone,
        params.spec.num_labels,
        params.method_options,
        head_dropout=params.head_dropout,
    )
    if params.two_stage:
        folder = adapter_dir(params.stage_one().run_id, runs_dir or params.out_dir)
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"run {params.run_id} starts its experts from its E=1 twin's adapter, but the folder "
                f"{folder} holds none; train the twin with save_adapter=True"
            )
        start_experts_from(model, folder)
    return model


def eval_data(
    params: RunParams, data_dir: str | Path | None = None, max_eval_samples: int | None = None
) -> tuple[EncodedDataset, object]:
    """The run's evaluation data encoded as the run encoded it, and the tokenizer.

    ``data_dir``: default ``params.data_dir``, else ``$TINYATTN_DATA_DIR``, else the Hub.
    ``max_eval_samples``: default the run's own cap; a number replaces it (same seeded subsample).
    """
    folder = resolve_data_dir(params.data_dir if data_dir is None else data_dir)
    _, rows, _ = _split(params, folder)
    limit = params.max_eval_samples if max_eval_samples is None else max_eval_samples
    tokenizer = load_tokenizer(params.backbone)
    rows = subsample(rows, limit, params.seed)
    return encode(rows, params.spec, tokenizer, params.max_length), tokenizer


def _split(params: RunParams, folder, train_rows: list | None = None):
    """(training rows, evaluation rows before the cap, the evaluation split's name), as the run has
    them; the training rows are read only when needed (a held-out split, or ``train_rows`` given)."""
    spec = params.spec
    if params.heldout_fraction is None:
        return train_rows, load_glue_task(spec.name, "validation", folder), "validation"
    if train_rows is None:
        train_rows = _train_rows(params, folder)
    train_rows, heldout = split_train_heldout(train_rows, params.heldout_fraction, params.seed)
    return train_rows, heldout, f"heldout {params.heldout_fraction:g} of train"


def _train_rows(params: RunParams, folder) -> list:
    rows = load_glue_task(params.spec.name, "train", folder)
    return subsample(rows, params.max_train_samples, params.seed)


def run(params: RunParams, *, write: bool = True) -> tuple[dict, object]:
    """Train one run; write ``<out_dir>/<run_id>.json``; return (record, trained model or None).

    A failure is recorded (status ``failed`` with the error and traceback) and then re-raised.
    """
    if write or params.save_adapter:
        check_out_dir(params.out_dir)
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
        measure = _cloze_run if params.protocol == "cloze" else _train_and_measure
        record.update(measure(params))
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
    spec = params.spec
    folder = resolve_data_dir(params.data_dir)
    train_rows, eval_rows, eval_split = _split(params, folder, _train_rows(params, folder))
    eval_rows = subsample(eval_rows, params.max_eval_samples, params.seed)
    tokenizer = load_tokenizer(params.backbone)
    train_data = encode(train_rows, spec, tokenizer, params.max_length)
    evaluation = encode(eval_rows, spec, tokenizer, params.max_length)

    stage_one = _prepare_twin(params) if params.two_stage else None
    model = initial_model(params)
    counts = count_parameters(model)
    adapters = getattr(model, PREFIX, None)
    experts = adapters is not None and adapters.config.experts > 1
    result = train(
        model,
        spec,
        train_data,
        evaluation,
        tokenizer,
        params.train_config(),
        eval_context=experts_averaged,
        plain_final=experts,
    )
    if experts:
        with experts_averaged(model):
            counts["deployed_adapter_params"] = count_parameters(model)["adapter_params"]
        result["evaluated_as"] = "experts weight-averaged (deployed)"
        # the end-of-training weights as trained, every expert active: what averaging costs
        result["final_unaveraged"] = result.pop("final_plain")
    if params.save_adapter:
        save_adapter(model, params.adapter_dir, extra={"task": spec.name, "run_id": params.run_id})
    if stage_one is not None:
        result["stage_one"] = stage_one
    if spec.source == "fewglue":  # the majority-class and random-guess floors
        from tinyattn.fewglue import baseline_metrics

        labels = [[row["label"] for row in rows] for rows in (train_rows, eval_rows)]
        result["baselines"] = baseline_metrics(spec.hub_config, *labels)
    return {
        "task": spec.name,
        "method": params.method,
        "seed": params.seed,
        "data_source": _data_source(spec, folder),
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


def _prepare_twin(params: RunParams) -> dict:
    """Make sure the E = 1 twin's adapter is saved, training the twin if needed; say where it came from."""
    twin = params.stage_one()
    info = {"run_id": twin.run_id}
    if (twin.adapter_dir / CONFIG_FILE).is_file():
        info["source"] = "saved adapter of the E=1 run"
    else:
        twin_record, _ = run(replace(twin, progress=params.progress), write=False)
        info.update(
            source="trained within this run",
            wall_seconds=twin_record["wall_seconds"],
            best=twin_record["best"],
            evaluations=twin_record["evaluations"],
        )
    return info


def _data_source(spec: TaskSpec, folder) -> str:
    if folder:
        return "local folder"
    return "hub:juny116/few_glue + super_glue" if spec.source == "fewglue" else "hub:nyu-mll/glue"


def _cloze_run(params: RunParams) -> dict:
    """A cloze run (``cloze.run_cloze``) as an ordinary record: ``metrics`` are the SuperGLUE val set's
    (``metrics_by_split`` adds dev32's), ``best`` the evaluation whose weights were kept."""
    from tinyattn.cloze import ClozeTrainConfig, run_cloze  # the masked-LM side, only when asked

    spec, options = params.spec, params.protocol_options
    folder = resolve_data_dir(params.data_dir)
    steps_per_epoch = -(-32 // params.batch_size)  # FewGLUE: 32 training examples per task
    config = ClozeTrainConfig(
        learning_rate=params.learning_rate,
        epochs=int(params.epochs),
        batch_size=params.batch_size,
        eval_batch_size=params.eval_batch_size,
        weight_decay=params.weight_decay,
        decay_all=options["decay_all"],
        warmup_steps=round(params.warmup_ratio * int(params.epochs) * steps_per_epoch),
        scheduler=params.scheduler,
        max_grad_norm=params.max_grad_norm,
        loss=options["loss"],
        seed=params.seed,
        select_on=options["select_on"],
    )
    splits = ("val", "dev32") if options["select_on"] else ("val",)
    model, result = run_cloze(
        spec.hub_config,
        params.backbone,
        params.method,
        options=params.method_options,
        variant=options["variant"],
        config=config,
        eval_splits=splits,
        data_dir=folder,
        max_length=params.max_length,
    )
    evaluations = [
        {**e, "metrics": e["metrics"]["val"], "metrics_by_split": e["metrics"]}
        for e in result["evaluations"]
    ]
    kept = result["best"] or result["evaluations"][-1]
    best = next(e for e in evaluations if e["epoch"] == kept["epoch"])
    counts = count_parameters(model)
    return {
        "task": spec.name,
        "method": params.method,
        "seed": params.seed,
        "protocol": "cloze",
        "data_source": _data_source(spec, folder),
        "eval_split": "val",
        "params_count": {**counts, "cloze": result["trainable"]},
        "select_metric": spec.metric,
        "kept_weights": result["kept_weights"],
        "evaluations": evaluations,
        "best": best,
        "final": evaluations[-1],
        "steps": result["steps"],
        "steps_per_epoch": steps_per_epoch,
        "epochs_run": float(config.epochs),
        "train_examples": result["train_examples"],
        "eval_examples": result["eval_examples"]["val"],
        "train_seconds": result["train_seconds"],
        "eval_seconds": result["eval_seconds"],
        "tokens_per_second": None,
        "device": str(next(model.parameters()).device),
        "config": result["config"],
        "loss": result["loss"],
        "variant": result["variant"],
        "backbone": result["backbone"],
        "baselines": result["baselines"],
        "_model": model,
    }
