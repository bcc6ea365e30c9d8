"""Heads as experts (the paper's claim C2): what each tiny-attention expert attends to, how alike the
experts of a layer are, and how a model trained with E experts can be deployed.

Deployment variants (``VARIANTS``), scored with the training loop's ``predict`` and timed alike:

- ``averaged``: every layer's experts replaced by their element-wise weight average (the paper's
  deployment, and what training selected checkpoints on);
- ``trained_form``: all E experts, the mean of their updates, as trained;
- ``logit_ensemble``: E single-expert models (expert e in every layer), the mean of their logits;
- ``single_best``: the single-expert model that scores best on the evaluation set itself (optimistic);
- ``single_random``: the single-expert model of a seeded random expert.

Weights are compared in the form ``forward`` computes with: each expert's LayerNorm affine folded into
its q/k/v projection, so the all-ones LayerNorm gains that every expert starts from do not dominate
the cosine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tinyattn.adapter import TinyAttention
from tinyattn.bench import _rotated, _summary, _timed
from tinyattn.checkpoint import CONFIG_FILE, load_adapter
from tinyattn.data import (
    EncodedDataset,
    GlueCollator,
    encode,
    get_task,
    load_glue_task,
    make_dataloader,
    subsample,
)
from tinyattn.inject import PREFIX, TinyAttentionAdapters
from tinyattn.methods import build_model
from tinyattn.metrics import compute_metrics, main_metric
from tinyattn.model import EncoderClassifier, load_tokenizer, set_seed
from tinyattn.records import read_record, write_json_atomic
from tinyattn.train import predict

VARIANTS = ("averaged", "trained_form", "logit_ensemble", "single_best", "single_random")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
STATS = ("entropy", "entropy_uniform", "mean_distance", "special_share", "self_share")


# ----------------------------------------------------------------------------- loading a run
@dataclass
class ExpertRun:
    """A trained E > 1 tiny-attention run: its record, the trained model and the model it started from."""

    record: dict
    model: EncoderClassifier
    # the model as training started: stage-one copies (+ noise), or the seeded random init
    initial: EncoderClassifier | None = None

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    @property
    def experts(self) -> int:
        return adapters_of(self.model).config.experts

    @property
    def two_stage(self) -> bool:
        return bool(self.record["params"].get("two_stage"))


def adapter_folder(run_id: str, runs_dir: str | Path = "results/runs") -> Path:
    """Where ``save_adapter`` put a run's adapter: ``<runs_dir>/adapters/<run_id>``."""
    return Path(runs_dir) / "adapters" / run_id


def _require_adapter(run_id: str, runs_dir: str | Path, why: str) -> Path:
    folder = adapter_folder(run_id, runs_dir)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"run {run_id}: no saved adapter folder {folder} ({why}); train the run with "
            "save_adapter=True (tinyattn train --save-adapter, or save_adapter: true in its profile)"
        )
    return folder


def read_run(run_id: str, runs_dir: str | Path = "results/runs") -> dict:
    """The finished run record ``<runs_dir>/<run_id>.json``."""
    path = Path(runs_dir) / f"{run_id}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no run record {path}")
    record = read_record(path)
    if record["status"] != "done":
        raise ValueError(f"run {run_id} is not finished (status {record['status']!r})")
    return record


def find_expert_runs(
    runs_dir: str | Path = "results/runs", task: str | None = None
) -> pd.DataFrame:
    """Finished tiny-attention runs with E > 1 in ``runs_dir``, and whether their adapter was saved."""
    rows = []
    for path in sorted(Path(runs_dir).glob("*.json")):
        try:
            record = read_record(path)
        except ValueError:
            continue
        params = record.get("params", {})
        experts = params.get("method_options", {}).get("experts", 1)
        if record["status"] != "done" or params.get("method") != "tinyattn" or experts < 2:
            continue
        if task is not None and record.get("task") != get_task(task).name:
            continue
        rows.append(
            {
                "run_id": record["run_id"],
                "task": record.get("task"),
                "experts": experts,
                "two_stage": bool(params.get("two_stage")),
                "seed": params.get("seed"),
                "adapter_saved": (
                    adapter_folder(record["run_id"], runs_dir) / CONFIG_FILE
                ).is_file(),
                "best": record.get("best", {}).get("metrics", {}).get(record.get("select_metric")),
            }
        )
    columns = ["run_id", "task", "experts", "two_stage", "seed", "adapter_saved", "best"]
    return pd.DataFrame(rows, columns=columns)


def load_trained(record: dict, runs_dir: str | Path = "results/runs") -> EncoderClassifier:
    """The trained model of an E > 1 tiny-attention run, rebuilt from its saved adapter."""
    folder = _require_adapter(record["run_id"], runs_dir, "the trained experts")
    model = load_adapter(folder)
    if model.method != "tinyattn" or adapters_of(model).config.experts < 2:
        raise ValueError(f"run {record['run_id']}: expert analysis needs a tinyattn run with E > 1")
    return model.eval()


def load_initial(record: dict, runs_dir: str | Path = "results/runs") -> EncoderClassifier:
    """The run's model as training started: rebuilt exactly as ``experiment.run`` builds it."""
    params = record["params"]
    options = dict(params["method_options"])
    if params.get("two_stage"):
        twin = (record.get("stage_one") or {}).get("run_id")
        if twin is None:
            from tinyattn.experiment import RunParams

            twin = RunParams.from_dict(params).stage_one().run_id
        options["init_from"] = str(_require_adapter(twin, runs_dir, "the stage-one E=1 twin"))
    set_seed(params["seed"])  # as experiment.run: the head and adapter initialisation depend on it
    model = build_model(
        params["method"],
        params["backbone"],
        get_task(record["task"]).num_labels,
        options,
        head_dropout=params["head_dropout"],
    )
    return model.eval()


def load_run(
    run_id: str,
    runs_dir: str | Path = "results/runs",
    *,
    initial: bool = True,
    device: str | None = None,
) -> ExpertRun:
    """Record, trained model and (``initial=True``) starting model of an E > 1 tiny-attention run."""
    record = read_run(run_id, runs_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_trained(record, runs_dir).to(device)
    start = load_initial(record, runs_dir).to(device) if initial else None
    return ExpertRun(record, model, start)


def dev_data(
    record: dict, data_dir: str | Path | None = None, max_eval_samples: int | None = None
) -> tuple[EncodedDataset, object]:
    """The task's dev set (subsampled with the run's seed) encoded as the run encoded it; and the tokenizer."""
    params = record["params"]
    spec = get_task(record["task"])
    rows = subsample(
        load_glue_task(spec.name, "validation", data_dir), max_eval_samples, params["seed"]
    )
    tokenizer = load_tokenizer(params["backbone"])
    return encode(rows, spec, tokenizer, params["max_length"]), tokenizer


def example_batch(
    dataset: EncodedDataset, tokenizer, n: int, *, max_tokens: int | None = None
) -> tuple[dict, list[list[str]]]:
    """``n`` examples padded into one batch, and their tokens: the first ones in dataset order with at
    most ``max_tokens`` tokens (then longer ones, if too few are that short)."""
    lengths = dataset.lengths
    order = sorted(
        range(len(dataset)), key=lambda i: (max_tokens is not None and lengths[i] > max_tokens, i)
    )
    chosen = order[:n]
    if not chosen:
        raise ValueError("no examples to batch")
    batch = GlueCollator(tokenizer, dataset.task.is_regression)([dataset[i] for i in chosen])
    tokens = [tokenizer.convert_ids_to_tokens(dataset.features["input_ids"][i]) for i in chosen]
    return batch, tokens


def special_token_ids(tokenizer) -> list[int]:
    """The tokenizer's special tokens ([CLS], [SEP], ...) except padding (never attended to)."""
    return sorted(set(tokenizer.all_special_ids) - {tokenizer.pad_token_id})


# ----------------------------------------------------------------------------- attention
def adapters_of(model: EncoderClassifier) -> TinyAttentionAdapters:
    adapters = getattr(model, PREFIX, None)
    if adapters is None:
        raise ValueError("the model has no tiny-attention adapters")
    return adapters


def _inputs(batch: dict, device) -> dict:
    return {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}


@torch.no_grad()
def capture_attention(model: EncoderClassifier, batch: dict) -> list[torch.Tensor]:
    """Each adapter call's attention probabilities (B, E, T, T) on ``batch``, bottom layer first (CPU)."""
    captured: list[torch.Tensor] = []

    def record(module, args, kwargs, output):
        inputs = {k: v for k, v in kwargs.items() if k != "residual"}  # what attention reads
        captured.append(module.attention_probs(*args, **inputs).float().cpu())

    layers = adapters_of(model).layers
    handles = [layer.register_forward_hook(record, with_kwargs=True) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        model(**_inputs(batch, next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return captured


def attention_stats(
    probs_per_layer: list[torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_token_ids: Iterable[int] = (),
) -> pd.DataFrame:
    """One row per (layer, expert): means over the real (non-padding) query tokens of

    ``entropy`` (nats) of the attention distribution, ``entropy_uniform`` (that of uniform attention over
    the real tokens, for scale), ``mean_distance`` (expected |i - j|), ``special_share`` (attention on
    special tokens) and ``self_share`` (attention on the query token itself); ``queries`` counts them.
    """
    real = attention_mask.bool().cpu()  # (B, T)
    ids = input_ids.cpu()
    special = torch.isin(ids, torch.tensor(sorted(set(special_token_ids)), dtype=ids.dtype)) & real
    T = real.shape[1]
    pos = torch.arange(T, dtype=torch.float64)
    distance = (pos[:, None] - pos[None, :]).abs()  # (T, T)
    queries = real.sum()
    keys = real.sum(1, keepdim=True).clamp(min=1).double()  # real tokens of each sequence
    uniform = float((keys.log() * real).sum() / queries)

    def mean_over_queries(value: torch.Tensor) -> torch.Tensor:  # (B, E, T) -> (E,)
        return (value * real[:, None, :]).sum((0, 2)) / queries

    rows = []
    for layer, probs in enumerate(probs_per_layer):
        p = probs.double().cpu()  # (B, E, T, T)
        values = {
            "entropy": mean_over_queries(-torch.special.xlogy(p, p).sum(-1)),
            "entropy_uniform": torch.full((p.shape[1],), uniform, dtype=torch.float64),
            "mean_distance": mean_over_queries((p * distance).sum(-1)),
            "special_share": mean_over_queries((p * special[:, None, None, :]).sum(-1)),
            "self_share": mean_over_queries(p.diagonal(dim1=-2, dim2=-1)),
        }
        for e in range(p.shape[1]):
            row = {name: float(v[e]) for name, v in values.items()}
            rows.append({"layer": layer, "expert": e, **row, "queries": int(queries)})
    return pd.DataFrame(rows)


def dev_attention_stats(
    model: EncoderClassifier,
    dataset: EncodedDataset,
    tokenizer,
    n_examples: int | None = 256,
    batch_size: int = 32,
) -> pd.DataFrame:
    """``attention_stats`` over the first ``n_examples`` of ``dataset`` (None: all), batch by batch."""
    n = len(dataset) if n_examples is None else min(n_examples, len(dataset))
    special = special_token_ids(tokenizer)
    collate = GlueCollator(tokenizer, dataset.task.is_regression)
    parts = []
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, n))])
        probs = capture_attention(model, batch)
        parts.append(attention_stats(probs, batch["input_ids"], batch["attention_mask"], special))
    frame = pd.concat(parts)
    weighted = frame[list(STATS)].mul(frame["queries"], axis=0)
    weighted[["layer", "expert", "queries"]] = frame[["layer", "expert", "queries"]]
    total = weighted.groupby(["layer", "expert"], as_index=False).sum()
    total[list(STATS)] = total[list(STATS)].div(total["queries"], axis=0)
    return total[["layer", "expert", *STATS, "queries"]]


# ----------------------------------------------------------------------------- similarity
def expert_vectors(layer: TinyAttention) -> torch.Tensor:
    """Each expert's weights as one row (E, P): folded q/k/v weight and bias, output weight and bias."""
    w = layer.qkv_weight * layer.norm_weight[:, None, :]  # (E, 3d, D)
    b = layer.qkv_bias + torch.einsum("eod,ed->eo", layer.qkv_weight, layer.norm_bias)
    parts = (w.flatten(1), b, layer.out_weight.flatten(1), layer.out_bias)
    return torch.cat(parts, dim=1).detach().double().cpu()


def _cosine(vectors: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(vectors.double(), dim=1)
    return unit @ unit.T


def _attention_vectors(probs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, E, T, T) -> (E, N): each expert's probabilities at every real (query, key) pair."""
    real = attention_mask.bool().cpu()
    pairs = real[:, :, None] & real[:, None, :]  # (B, T, T)
    return probs.double().permute(1, 0, 2, 3)[:, pairs]


def _tidy(matrix: torch.Tensor, layer: int, kind: str) -> list[dict]:
    n = matrix.shape[0]
    return [
        {"layer": layer, "expert_i": i, "expert_j": j, "kind": kind, "cosine": float(matrix[i, j])}
        for i in range(n)
        for j in range(n)
    ]


def expert_similarity(
    model: EncoderClassifier,
    reference: EncoderClassifier | None = None,
    batch: dict | None = None,
) -> pd.DataFrame:
    """Pairwise cosine similarity of each layer's experts, as rows (layer, expert_i, expert_j, kind, cosine).

    Kinds: ``weights`` (trained); ``weights_reference`` (``reference``'s, when it has as many experts);
    ``updates`` (trained minus ``reference``, whose single expert is broadcast when it has one);
    ``attention`` and ``attention_reference`` (attention maps on ``batch``, real token pairs only).
    """
    layers = list(adapters_of(model).layers)
    ref_layers = list(adapters_of(reference).layers) if reference is not None else None
    rows: list[dict] = []
    for i, layer in enumerate(layers):
        trained = expert_vectors(layer)
        rows += _tidy(_cosine(trained), i, "weights")
        if ref_layers is not None:
            start = expert_vectors(ref_layers[i])
            if start.shape[0] == trained.shape[0]:
                rows += _tidy(_cosine(start), i, "weights_reference")
            rows += _tidy(_cosine(trained - start), i, "updates")
    if batch is not None:
        sources = [("attention", model)]
        experts = adapters_of(model).config.experts
        if reference is not None and adapters_of(reference).config.experts == experts:
            sources.append(("attention_reference", reference))
        for kind, source in sources:
            for i, probs in enumerate(capture_attention(source, batch)):
                rows += _tidy(_cosine(_attention_vectors(probs, batch["attention_mask"])), i, kind)
    return pd.DataFrame(rows, columns=["layer", "expert_i", "expert_j", "kind", "cosine"])


def similarity_summary(similarity: pd.DataFrame) -> pd.DataFrame:
    """Per (kind, layer): mean, min and max cosine between distinct experts."""
    pairs = similarity[similarity["expert_i"] < similarity["expert_j"]]
    return pairs.groupby(["kind", "layer"], as_index=False)["cosine"].agg(["mean", "min", "max"])


# ----------------------------------------------------------------------------- deployment
@contextmanager
def layers_installed(model: EncoderClassifier, layers: list[TinyAttention]):
    """Temporarily run ``model`` with ``layers`` (one module per adapter slot) as its adapters."""
    adapters = adapters_of(model)
    saved, experts = list(adapters.layers), adapters.config.experts
    if len(layers) != len(saved):
        raise ValueError(f"{len(layers)} layers for {len(saved)} adapter slots")
    for i, layer in enumerate(layers):
        adapters.layers[i] = layer
    adapters.config.experts = layers[0].experts
    try:
        yield model
    finally:
        for i, layer in enumerate(saved):
            adapters.layers[i] = layer
        adapters.config.experts = experts


def deployment_members(model: EncoderClassifier, variant: str | int) -> list[list[TinyAttention]]:
    """The adapter layers of each model whose logits a variant averages.

    ``variant``: ``"averaged"``, ``"trained_form"``, ``"logit_ensemble"``, or an expert index.
    """
    layers = list(adapters_of(model).layers)
    if variant == "averaged":
        return [[layer.average_experts() for layer in layers]]
    if variant == "trained_form":
        return [layers]
    if variant == "logit_ensemble":
        return [[layer.expert(e) for layer in layers] for e in range(layers[0].experts)]
    if isinstance(variant, int) and not isinstance(variant, bool):
        return [[layer.expert(variant) for layer in layers]]
    raise ValueError(
        f"unknown variant {variant!r}; choose averaged, trained_form, logit_ensemble or an expert index"
    )


def _on_device(batches: Iterable[dict], device) -> Iterator[dict]:
    for batch in batches:
        yield {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def members_logits(
    model: EncoderClassifier, members: list[list[TinyAttention]], batches: Iterable[dict]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean logits of the models made by installing each member's layers in turn; and the labels."""
    device = next(model.parameters()).device
    outputs, labels = [], None
    for layers in members:
        with layers_installed(model, layers):
            logits, labels = predict(model, _on_device(batches, device))
        outputs.append(logits)
    return np.mean(outputs, axis=0), labels


def variant_logits(
    model: EncoderClassifier, variant: str | int, batches: Iterable[dict]
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of one deployment variant (see ``deployment_members``) on ``batches``."""
    return members_logits(model, deployment_members(model, variant), batches)


def _score(task: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
    return compute_metrics(task, preds, labels)


class Deployment(NamedTuple):
    """``deployment_variants``' result: every single-expert model's scores, and the variants table."""

    singles: pd.DataFrame
    variants: pd.DataFrame


def deployment_variants(
    model: EncoderClassifier,
    dataset: EncodedDataset,
    tokenizer,
    task: str,
    *,
    batch_size: int = 128,
    repeats: int = 3,
    latency_batches: int | None = 2,
    seed: int = 0,
) -> Deployment:
    """Every single-expert model and every variant in ``VARIANTS`` scored on ``dataset``, each variant
    with its latency.

    Scores: one pass over ``dataset`` per model. The ensemble and the single-expert variants are made
    from the single-expert models' logits (the ensemble is their mean), so the dataset is passed over
    E + 2 times in all. Latency: median (and quartiles) of ``repeats`` timed passes over the first
    ``latency_batches`` pre-collated batches (all of them with ``None``; copies to the model's device
    included), the variants in an order rotated every repetition, after one warm-up batch each.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if latency_batches is not None and latency_batches < 1:
        raise ValueError(f"latency_batches must be at least 1 or None, got {latency_batches}")
    metric = main_metric(task)
    batches = list(make_dataloader(dataset, tokenizer, batch_size, shuffle=False))
    expert_count = adapters_of(model).config.experts
    per_expert = [variant_logits(model, e, batches) for e in range(expert_count)]
    singles = pd.DataFrame(
        [{"expert": e, **_score(task, *out)} for e, out in enumerate(per_expert)]
    )
    best = int(singles.loc[singles[metric].idxmax(), "expert"])
    drawn = random.Random(seed).randrange(expert_count)
    chosen = {"single_best": best, "single_random": drawn}
    labels = per_expert[0][1]
    outputs = {
        "averaged": variant_logits(model, "averaged", batches),
        "trained_form": variant_logits(model, "trained_form", batches),
        "logit_ensemble": (np.mean([logits for logits, _ in per_expert], axis=0), labels),
        **{name: per_expert[e] for name, e in chosen.items()},
    }
    members = {v: deployment_members(model, chosen.get(v, v)) for v in VARIANTS}
    timed = batches[:latency_batches]
    timed_examples = sum(len(b["labels"]) for b in timed)
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for layer_sets in members.values():  # warm-up
        members_logits(model, layer_sets, batches[:1])
    times: dict[str, list[float]] = {name: [] for name in members}
    for rep in range(repeats):
        for name, layer_sets in _rotated(members, rep):
            times[name].append(_timed(partial(members_logits, model, layer_sets, timed), sync))
    trained_logits = outputs["trained_form"][0]
    notes = {
        "averaged": "experts weight-averaged (the paper's deployment)",
        "trained_form": "all experts, mean of their updates (as trained)",
        "logit_ensemble": f"{expert_count} single-expert models, mean of logits",
        "single_best": f"expert {best}, chosen on this eval set (optimistic)",
        "single_random": f"expert {drawn}, drawn with seed {seed}",
    }
    rows = []
    for name in VARIANTS:
        logits, labels = outputs[name]
        timing = _summary(times[name])
        agree = np.nan
        if logits.shape[-1] > 1:
            agree = float((logits.argmax(-1) == trained_logits.argmax(-1)).mean())
        rows.append(
            {
                "variant": name,
                **_score(task, logits, labels),
                "expert": chosen.get(name, pd.NA),
                "encoder_passes": len(members[name]),
                "adapter_params": sum(
                    p.numel() for layers in members[name] for m in layers for p in m.parameters()
                ),
                "latency_s": timing["median_s"],
                "latency_q1_s": timing["q1_s"],
                "latency_q3_s": timing["q3_s"],
                "timed_examples": timed_examples,
                "ms_per_example": 1000 * timing["median_s"] / timed_examples,
                "agreement_with_trained": agree,
                "max_abs_logit_diff_vs_trained": float(np.abs(logits - trained_logits).max()),
                "note": notes[name],
                "device": str(device),
            }
        )
    variants = pd.DataFrame(rows).astype({"expert": "Int64"})
    return Deployment(singles, variants)


# ----------------------------------------------------------------------------- figures, report
def plot_attention_maps(
    probs_per_layer: list[torch.Tensor], tokens: list[list[str]], index: int = 0
):
    """One sentence's attention maps: a grid of layers (rows) by experts (columns), tokens on the axes,
    one colour scale for all panels."""
    words = tokens[index]
    n = len(words)
    vmax = max(float(p[index, :, :n, :n].max()) for p in probs_per_layer)
    layers, experts = len(probs_per_layer), probs_per_layer[0].shape[1]
    size = max(1.6, 0.16 * n + 0.8)
    fig, axes = plt.subplots(
        layers,
        experts,
        figsize=(size * experts, size * layers),
        squeeze=False,
        layout="constrained",
    )
    for layer, probs in enumerate(probs_per_layer):
        for e in range(experts):
            ax = axes[layer, e]
            image = ax.imshow(probs[index, e, :n, :n].numpy(), vmin=0, vmax=vmax, cmap="viridis")
            bottom, left = layer == layers - 1, e == 0  # token labels on the outer panels only
            ax.set_xticks(range(n), words if bottom else [], rotation=90, fontsize=6)
            ax.set_yticks(range(n), words if left else [], fontsize=6)
            if layer == 0:
                ax.set_title(f"expert {e}", fontsize=9)
            if e == 0:
                ax.set_ylabel(f"layer {layer}\nquery", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.5, label="attention")
    return fig


def _heatmap(ax, table: pd.DataFrame, *, cmap: str, vmin=None, vmax=None, annotate=True, fmt=".2f"):
    """``table`` as an annotated image on ``ax`` (plain matplotlib: seaborn's is far slower)."""
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    if annotate:
        for (i, j), value in np.ndenumerate(values):
            shade = float(image.norm(value))  # light text where the colour map is dark
            dark = shade < 0.5 if cmap == "viridis" else abs(shade - 0.5) > 0.3
            colour = "white" if dark else "black"
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=6, color=colour)
    ax.set_xticks(range(values.shape[1]), table.columns, fontsize=7)
    ax.set_yticks(range(values.shape[0]), table.index, fontsize=7)
    ax.set(xlabel=table.columns.name, ylabel=table.index.name)


def plot_stats(stats: pd.DataFrame):
    """Heatmaps (layer x expert) of the attention statistics, each on a scale from 0: entropy up to
    that of uniform attention, the shares up to 1."""
    ranges = {
        "entropy": stats["entropy_uniform"].max(),
        "mean_distance": stats["mean_distance"].max(),
        "special_share": 1.0,
        "self_share": 1.0,
    }
    fig, axes = plt.subplots(1, len(ranges), figsize=(3.2 * len(ranges), 3.2), layout="constrained")
    for ax, (name, top) in zip(axes, ranges.items()):
        table = stats.pivot(index="layer", columns="expert", values=name)
        _heatmap(ax, table, cmap="viridis", vmin=0, vmax=top, fmt=".3g")
        ax.set_title(name, fontsize=9)
    return fig


def plot_similarity(similarity: pd.DataFrame, title: str = ""):
    """E x E cosine heatmaps: one row per kind, one column per layer."""
    kinds = list(dict.fromkeys(similarity["kind"]))
    layers = sorted(similarity["layer"].unique())
    fig, axes = plt.subplots(
        len(kinds),
        len(layers),
        figsize=(1.8 * len(layers) + 0.6, 1.8 * len(kinds) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for row, kind in enumerate(kinds):
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            part = similarity[(similarity["kind"] == kind) & (similarity["layer"] == layer)]
            if part.empty:
                ax.axis("off")
                continue
            table = part.pivot(index="expert_i", columns="expert_j", values="cosine")
            _heatmap(ax, table, cmap="RdBu_r", vmin=-1, vmax=1, annotate=len(table) <= 4)
            ax.set(xlabel="", ylabel=kind if col == 0 else "")
            if row == 0:
                ax.set_title(f"layer {layer}", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def _records(value):
    """DataFrames (and nested dicts/lists of them) as JSON-ready lists of rows, NaN as None."""
    if isinstance(value, pd.DataFrame):
        return json.loads(value.to_json(orient="records"))
    if isinstance(value, dict):
        return {k: _records(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_records(v) for v in value]
    return value


def save_figure(fig, out_dir: str | Path, run_id: str, name: str, dpi: int = 120) -> Path:
    """Save ``fig`` as ``<out_dir>/<run_id>-<name>.png`` and close it; return the path."""
    path = Path(out_dir) / f"{run_id}-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(
    out_dir: str | Path, run_id: str, payload: dict, figures: dict | None = None
) -> Path:
    """Write ``<out_dir>/<run_id>.json``: ``payload`` (DataFrames as lists of rows) and, under
    ``figures``, the file names of the saved figures (name -> path, as ``save_figure`` returns)."""
    names = {name: Path(path).name for name, path in (figures or {}).items()}
    payload = {**_records(payload), "figures": names}
    return write_json_atomic(Path(out_dir) / f"{run_id}.json", payload)


# ----------------------------------------------------------------------------- many reports
def collect_reports(
    analysis_dir: str | Path, run_ids: set[str] | None = None
) -> dict[str, pd.DataFrame]:
    """Every report in ``analysis_dir`` (or those of ``run_ids``) as three tidy tables, each row
    tagged with the report's run id, task and the experts' initialisation ("two-stage" or
    "independent"): ``variants`` (score ×100 in ``score``), ``similarity`` (the per-layer summary)
    and ``attention`` (the per-layer, per-expert statistics of the report's main run)."""
    tables: dict[str, list[pd.DataFrame]] = {"variants": [], "similarity": [], "attention": []}
    for path in sorted(Path(analysis_dir).glob("*.json")):
        report = json.loads(path.read_text())
        if run_ids is not None and report["run_id"] not in run_ids:
            continue
        metric = get_task(report["task"]).metric
        parts = [report] + ([report["independent"]] if report.get("independent") else [])
        for part in parts:
            init = "two-stage" if part.get("two_stage") else "independent"
            tag = {"run_id": part["run_id"], "task": report["task"], "init": init}
            variants = pd.DataFrame(part["variants"]).assign(**tag)
            variants["score"] = 100.0 * variants[metric]
            tables["variants"].append(variants)
            tables["similarity"].append(pd.DataFrame(part["similarity_summary"]).assign(**tag))
        init = "two-stage" if report.get("two_stage") else "independent"
        tag = {"run_id": report["run_id"], "task": report["task"], "init": init}
        tables["attention"].append(pd.DataFrame(report["attention_stats"]).assign(**tag))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in tables.items()}


def deployment_comparison(variants: pd.DataFrame, init: str = "two-stage") -> pd.DataFrame:
    """The experts as trained (``trained_form``) minus each other deployment, paired on the analysed
    run, with a 95 % bootstrap interval: ``paired_comparison`` with runs in place of (task, seed).
    ``variants``: ``collect_reports(...)["variants"]``; ``init``: ``"two-stage"`` or ``"independent"``."""
    from tinyattn.aggregate import paired_comparison

    part = variants[variants["init"] == init] if not variants.empty else variants
    if part.empty or "trained_form" not in set(part["variant"]):
        return pd.DataFrame()
    runs = pd.DataFrame(
        {
            "task": part["task"],
            "seed": part["run_id"],
            "method": part["variant"],
            "score": part["score"],
        }
    )
    return paired_comparison(runs, "trained_form", "score")
