"""The maths of the heads-as-experts analysis: what each tiny-attention expert attends to, and how
alike the experts of a layer are.

Weights are compared in the form ``forward`` computes with: each expert's LayerNorm affine folded into
its q/k/v projection, so the all-ones LayerNorm gains that every expert starts from do not dominate
the cosine.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
import torch.nn.functional as F

from tinyattn.adapter import TinyAttention
from tinyattn.data import EncodedDataset, GlueCollator
from tinyattn.inject import PREFIX, TinyAttentionAdapters
from tinyattn.model import EncoderClassifier

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
STATS = ("entropy", "entropy_uniform", "mean_distance", "special_share", "self_share")
SIMILARITY_COLUMNS = ["layer", "expert_i", "expert_j", "kind", "cosine"]


def adapters_of(model: EncoderClassifier) -> TinyAttentionAdapters:
    """The model's tiny-attention adapters; an error if it has none."""
    adapters = getattr(model, PREFIX, None)
    if adapters is None:
        raise ValueError("the model has no tiny-attention adapters")
    return adapters


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
@torch.no_grad()
def capture_attention(model: EncoderClassifier, batch: dict) -> list[torch.Tensor]:
    """Each adapter call's attention probabilities (B, E, T, T) on ``batch``, bottom layer first (CPU)."""
    captured: list[torch.Tensor] = []

    def record(module, args, kwargs):
        # before the call: without gradients the adapter may write its result into the tensor it
        # was handed, which is its input too when it sits after the attention
        inputs = {k: v for k, v in kwargs.items() if k not in ("residual", "reuse_residual")}
        captured.append(module.attention_probs(*args, **inputs).float().cpu())

    layers = adapters_of(model).layers
    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        model(**{k: batch[k].to(device) for k in MODEL_INPUTS if k in batch})
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


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every two rows of ``vectors`` (N, P) -> (N, N)."""
    unit = F.normalize(vectors.double(), dim=1)
    return unit @ unit.T


def attention_vectors(probs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
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
        rows += _tidy(cosine_matrix(trained), i, "weights")
        if ref_layers is not None:
            start = expert_vectors(ref_layers[i])
            if start.shape[0] == trained.shape[0]:
                rows += _tidy(cosine_matrix(start), i, "weights_reference")
            rows += _tidy(cosine_matrix(trained - start), i, "updates")
    if batch is not None:
        sources = [("attention", model)]
        experts = adapters_of(model).config.experts
        if reference is not None and adapters_of(reference).config.experts == experts:
            sources.append(("attention_reference", reference))
        for kind, source in sources:
            for i, probs in enumerate(capture_attention(source, batch)):
                vectors = attention_vectors(probs, batch["attention_mask"])
                rows += _tidy(cosine_matrix(vectors), i, kind)
    return pd.DataFrame(rows, columns=SIMILARITY_COLUMNS)


def similarity_summary(similarity: pd.DataFrame) -> pd.DataFrame:
    """Per (kind, layer): mean, min and max cosine between distinct experts."""
    pairs = similarity[similarity["expert_i"] < similarity["expert_j"]]
    return pairs.groupby(["kind", "layer"], as_index=False)["cosine"].agg(["mean", "min", "max"])
