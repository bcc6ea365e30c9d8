"""How a model trained with E tiny-attention experts can be deployed, each form scored and timed.

Deployment variants (``VARIANTS``), scored with the training loop's ``predict`` and timed alike
(``tinyattn.measure``: rotated order, medians and quartiles):

- ``averaged``: every layer's experts replaced by their element-wise weight average (the paper's
  deployment, and what training selected checkpoints on);
- ``trained_form``: all E experts, the mean of their updates, as trained;
- ``logit_ensemble``: E single-expert models (expert e in every layer), the mean of their logits;
- ``single_best``: the single-expert model that scores best on the evaluation set itself (optimistic);
- ``single_random``: the single-expert model of a seeded random expert.

Every variant is a list of *members*, each one set of adapter layers (one per adapter slot); a
variant's logits are the mean of its members' logits, each computed with the member's layers
installed in the model in turn. The averaged and single-expert layers come from ``TinyAttention``'s
own ``average_experts`` and ``expert``, the same functions that ``inject.average_experts`` deploys with.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from functools import partial
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from tinyattn.adapter import TinyAttention
from tinyattn.analysis.expert_stats import adapters_of
from tinyattn.data import EncodedDataset, TaskSpec, make_dataloader
from tinyattn.inject import layers_installed
from tinyattn.measure import rotated, summary, synchronizer, timed
from tinyattn.metrics import compute_metrics, main_metric
from tinyattn.model import EncoderClassifier
from tinyattn.train import predict

VARIANTS = ("averaged", "trained_form", "logit_ensemble", "single_best", "single_random")


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


def time_members(
    model: EncoderClassifier,
    members: dict[str, list[list[TinyAttention]]],
    batches: list[dict],
    repeats: int,
) -> dict[str, dict]:
    """Each variant's passes over ``batches`` (copies to the model's device included), timed
    ``repeats`` times in an order rotated every repetition after one warm-up batch each:
    ``measure.summary`` per variant."""
    sync = synchronizer(next(model.parameters()).device)
    for layer_sets in members.values():  # warm-up
        members_logits(model, layer_sets, batches[:1])
    times: dict[str, list[float]] = {name: [] for name in members}
    for rep in range(repeats):
        for name, layer_sets in rotated(members, rep):
            times[name].append(timed(partial(members_logits, model, layer_sets, batches), sync))
    return {name: summary(t) for name, t in times.items()}


class Deployment(NamedTuple):
    """``deployment_variants``' result: every single-expert model's scores, and the variants table."""

    singles: pd.DataFrame
    variants: pd.DataFrame


def deployment_variants(
    model: EncoderClassifier,
    dataset: EncodedDataset,
    tokenizer,
    task: str | TaskSpec,
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
    E + 2 times in all. Latency (``time_members``): median (and quartiles) of ``repeats`` timed passes
    over the first ``latency_batches`` pre-collated batches (all of them with ``None``).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if latency_batches is not None and latency_batches < 1:
        raise ValueError(f"latency_batches must be at least 1 or None, got {latency_batches}")
    batches = list(make_dataloader(dataset, tokenizer, batch_size, shuffle=False))
    expert_count = adapters_of(model).config.experts
    per_expert = [variant_logits(model, e, batches) for e in range(expert_count)]
    singles = pd.DataFrame(
        [{"expert": e, **compute_metrics(task, *out)} for e, out in enumerate(per_expert)]
    )
    best = int(singles.loc[singles[main_metric(task)].idxmax(), "expert"])
    drawn = random.Random(seed).randrange(expert_count)
    chosen = {"single_best": best, "single_random": drawn}
    outputs = {
        "averaged": variant_logits(model, "averaged", batches),
        "trained_form": variant_logits(model, "trained_form", batches),
        "logit_ensemble": (np.mean([lg for lg, _ in per_expert], axis=0), per_expert[0][1]),
        **{name: per_expert[e] for name, e in chosen.items()},
    }
    members = {v: deployment_members(model, chosen.get(v, v)) for v in VARIANTS}
    timed_batches = batches[:latency_batches]
    timed_examples = sum(len(b["labels"]) for b in timed_batches)
    timings = time_members(model, members, timed_batches, repeats)
    notes = {
        "averaged": "experts weight-averaged (the paper's deployment)",
        "trained_form": "all experts, mean of their updates (as trained)",
        "logit_ensemble": f"{expert_count} single-expert models, mean of logits",
        "single_best": f"expert {best}, chosen on this eval set (optimistic)",
        "single_random": f"expert {drawn}, drawn with seed {seed}",
    }
    trained_logits = outputs["trained_form"][0]
    device = str(next(model.parameters()).device)
    rows = []
    for name in VARIANTS:
        logits, labels = outputs[name]
        timing = timings[name]
        agree = np.nan
        if logits.shape[-1] > 1:
            agree = float((logits.argmax(-1) == trained_logits.argmax(-1)).mean())
        rows.append(
            {
                "variant": name,
                **compute_metrics(task, logits, labels),
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
                "device": device,
            }
        )
    variants = pd.DataFrame(rows).astype({"expert": "Int64"})
    return Deployment(singles, variants)
