"""The PET-style cloze protocol for FewGLUE (claim C4): the masked-LM side, for any registry method.

An example becomes one text with exactly one mask token (``fewglue.ClozePattern``: the authors'
``premise + "?" + mask + ". " + hypothesis`` for RTE and CB, verbalizers yes/no(/maybe)); a masked LM
scores the vocabulary at the mask and the prediction is the verbalizer with the highest logit there.

* **Model** (``ClozeModel``): the masked LM split into ``encoder`` (its base model) and ``head`` (its MLM
  head), the two attributes ``EncoderClassifier`` has, so every method of ``tinyattn.methods`` applies
  to it unchanged. The head runs on the hidden state at the mask only (it is position-wise).
* **Loss**: by default the authors' ordinary MLM cross-entropy over the whole vocabulary at the mask
  (what a masked LM with labels -100 everywhere but the mask computes); ``"verbalizer"`` is PET's
  cross-entropy over the verbalizer tokens only.
* **Trainable variants**: ``"authors"`` also trains the MLM head's transform (dense, LayerNorm) and
  output bias and, for ALBERT, ``embedding_hidden_mapping_in``, which the authors' script leaves
  trainable (1.08 M parameters on ALBERT-xxlarge-v2, far more than the adapter); BERT and RoBERTa have
  no embedding projection, so only their head transform and bias are added. ``"adapter_only"`` trains
  the method's parameters alone. Full fine-tuning trains everything under either variant.
* **Training** (``train_cloze``): the authors' recipe by default (``ClozeTrainConfig``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoConfig, AutoModelForMaskedLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from tinyattn.fewglue import ClozePattern, baseline_metrics, fewglue_metrics, load_fewglue
from tinyattn.methods import get_method, method_options
from tinyattn.model import (
    EncoderClassifier,
    backbone_identity,
    load_tokenizer,
    resolve_backbone,
    set_seed,
)
from tinyattn.train import EvalPoint, Loop, decay_groups, fit

#: model type -> (attribute of the masked LM holding its MLM head, the decoder inside that head)
MLM_HEADS = {
    "albert": ("predictions", "decoder"),
    "bert": ("cls", "predictions.decoder"),
    "roberta": ("lm_head", "decoder"),
}
LOSSES = ("mlm", "verbalizer")
VARIANTS = ("authors", "adapter_only")


def collate(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: ``input_ids``, ``attention_mask``, ``mask_index``, ``labels``."""
    ids = [torch.tensor(row["input_ids"]) for row in rows]
    lengths = torch.tensor([len(x) for x in ids])
    padded = pad_sequence(ids, batch_first=True, padding_value=pad_token_id)
    return {
        "input_ids": padded,
        "attention_mask": (torch.arange(padded.shape[1]) < lengths[:, None]).long(),
        "mask_index": torch.tensor([row["mask_index"] for row in rows]),
        "labels": torch.tensor([row["label"] for row in rows]),
    }


# ----------------------------------------------------------------------------- model
def load_masked_lm(backbone: str, *, dtype: torch.dtype | None = None, weights: bool = True):
    """A pretrained masked LM (ALBERT, BERT or RoBERTa) with its MLM head.

    Refuses a checkpoint without a pretrained MLM head (the packaged MiniLM-L6 has none), which
    ``from_pretrained`` would otherwise fill with random weights. ``weights=False``: random weights
    from the config (for parameter accounting).
    """
    path = resolve_backbone(backbone)
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in MLM_HEADS:
        raise ValueError(
            f"backbone {backbone!r} is a {config.model_type!r} model; the cloze protocol supports "
            f"the masked-LM families {sorted(MLM_HEADS)}"
        )
    if not weights:
        mlm = AutoModelForMaskedLM.from_config(config)
    else:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the refusal below replaces the "newly initialized" warning
        try:
            mlm, info = AutoModelForMaskedLM.from_pretrained(
                path, config=config, torch_dtype=dtype, output_loading_info=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        head = MLM_HEADS[config.model_type][0] + "."
        missing = sorted(k for k in info["missing_keys"] if k.startswith(head))
        if missing:
            raise ValueError(
                f"backbone {backbone!r} has no pretrained masked-LM head (its checkpoint lacks "
                f"{missing[:3]}{' ...' if len(missing) > 3 else ''}); the cloze protocol needs one, "
                "e.g. albert-xxlarge; use a classification head for this backbone instead"
            )
    mlm.config.tinyattn_backbone = backbone
    return mlm


class MaskedLMHead(nn.Module):
    """A masked LM's own head (transform + decoder to the vocabulary), unchanged."""

    def __init__(self, head: nn.Module, decoder_path: str) -> None:
        super().__init__()
        self.mlm_head = head
        self.decoder_path = decoder_path

    @property
    def decoder(self) -> nn.Linear:
        return self.mlm_head.get_submodule(self.decoder_path)

    @property
    def weight(self) -> torch.Tensor:  # where add_tiny_attention reads the device and dtype
        return self.decoder.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(hidden)


class ClozeModel(nn.Module):
    """A masked LM as ``encoder`` + ``head``, the shape of ``EncoderClassifier``, so that every method
    of the registry applies to it unchanged. ``forward`` returns the vocabulary logits at each row's
    mask token, (B, V); ``verbalizer_logits`` the columns of the verbalizers, (B, K)."""

    # borrowed, not copied: the HF encoder beneath a peft wrapper; modules a library added inside it
    base_encoder = EncoderClassifier.base_encoder
    added_modules = EncoderClassifier.added_modules

    def __init__(self, mlm: PreTrainedModel, label_token_ids: list[int], mask_token_id: int):
        super().__init__()
        kind = mlm.config.model_type
        if kind not in MLM_HEADS:
            raise ValueError(f"model type {kind!r} is not one of {list(MLM_HEADS)}")
        head_name, decoder_path = MLM_HEADS[kind]
        self.encoder = mlm.base_model
        self.head = MaskedLMHead(getattr(mlm, head_name), decoder_path)
        self.register_buffer("label_token_ids", torch.tensor(label_token_ids), persistent=False)
        self.mask_token_id = mask_token_id
        self.num_labels = len(label_token_ids)
        self.backbone_dropout = True

    def train(self, mode: bool = True):
        """As ``EncoderClassifier.train``: with ``backbone_dropout`` off the encoder stays in eval
        mode while training; modules a library added inside it and the head follow ``mode``."""
        super().train(mode)
        if mode and not self.backbone_dropout:
            self.encoder.eval()
            for module in self.added_modules():
                module.train(mode)
        return self

    def forward(self, input_ids, attention_mask=None, mask_index=None, **_) -> torch.Tensor:
        batch = torch.arange(len(input_ids), device=input_ids.device)
        if mask_index is None:
            rows, mask_index = (input_ids == self.mask_token_id).nonzero(as_tuple=True)
            if not torch.equal(rows, batch):
                raise ValueError("every row needs exactly one mask token")
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        at_mask = hidden[batch, mask_index]
        return self.head(at_mask)  # the head is position-wise: the mask's row of the full logits

    def verbalizer_logits(self, vocab_logits: torch.Tensor) -> torch.Tensor:
        return vocab_logits[:, self.label_token_ids]


def cloze_loss(
    vocab_logits: torch.Tensor, labels: torch.Tensor, label_token_ids: torch.Tensor, kind="mlm"
) -> torch.Tensor:
    """``"mlm"``: cross-entropy over the whole vocabulary with the label's verbalizer as target (the
    authors'); ``"verbalizer"``: cross-entropy over the verbalizer logits only (PET's)."""
    if kind == "mlm":
        return F.cross_entropy(vocab_logits.float(), label_token_ids[labels])
    if kind == "verbalizer":
        return F.cross_entropy(vocab_logits[:, label_token_ids].float(), labels)
    raise ValueError(f"unknown cloze loss {kind!r}; choose one of {LOSSES}")


def authors_extra_parameters(model: ClozeModel) -> dict[str, nn.Parameter]:
    """What the authors' variant trains besides the method: the MLM head's parameters except the
    decoder weight (tied to the input embeddings) and ALBERT's ``embedding_hidden_mapping_in``."""
    decoder_weight = model.head.decoder.weight
    extra = {f"head.{n}": p for n, p in model.head.named_parameters() if p is not decoder_weight}
    mapping = getattr(model.base_encoder.encoder, "embedding_hidden_mapping_in", None)
    if mapping is not None:
        extra |= {f"embedding_hidden_mapping_in.{n}": p for n, p in mapping.named_parameters()}
    return extra


def build_cloze_model(
    method: str,
    mlm: PreTrainedModel,
    pattern: ClozePattern,
    options: dict | None = None,
    *,
    variant: str = "authors",
) -> ClozeModel:
    """The masked LM with ``method`` applied inside it; trainable: the method's parameters, plus the
    authors' extras for ``variant="authors"`` (see ``authors_extra_parameters``).

    Order: the head is frozen, the method applied (exactly as to an ``EncoderClassifier``; full
    fine-tuning unfreezes everything), then the variant's extras unfrozen. ``mlm`` is modified in place.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown trainable variant {variant!r}; choose one of {VARIANTS}")
    spec, opts = get_method(method), method_options(method, options)
    model = ClozeModel(mlm, pattern.label_token_ids, pattern.mask_token_id)
    identity = backbone_identity(model.encoder)
    for param in model.head.parameters():
        param.requires_grad_(False)
    spec.apply(model, opts)
    model.method_parameter_names = frozenset(
        n for n, p in model.named_parameters() if p.requires_grad
    )
    if variant == "authors":
        for param in authors_extra_parameters(model).values():
            param.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"method {method!r} with variant {variant!r} leaves nothing to train")
    model.method, model.method_options, model.variant = method, opts, variant
    model.backbone_identity = identity
    return model


def trainable_counts(model: ClozeModel) -> dict[str, int]:
    """Trainable parameters of this model and of each variant of its method.

    ``method``: what the method itself trains (``adapter_only``); ``authors_extra``: what the authors'
    variant adds to that (0 for full fine-tuning, which trains it already); ``authors``: their sum;
    ``trainable``: this model's count; ``total``: every parameter.
    """
    params = dict(model.named_parameters())
    method_names = model.method_parameter_names
    extra_ids = {id(p) for p in authors_extra_parameters(model).values()}
    method_ids = {id(params[name]) for name in method_names}
    method = sum(params[name].numel() for name in method_names)
    extra = sum(p.numel() for p in params.values() if id(p) in extra_ids - method_ids)
    return {
        "method": method,
        "authors_extra": extra,
        "adapter_only": method,
        "authors": method + extra,
        "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "total": sum(p.numel() for p in params.values()),
    }


# ----------------------------------------------------------------------------- training
@dataclass
class ClozeTrainConfig:
    """The authors' recipe by default: batch 1, lr 1e-3, constant schedule, 20 epochs, AdamW with
    weight decay 0.02 on every trainable parameter, grad-norm clipping at 1, whole-vocabulary loss.

    ``decay_all=False`` exempts biases and normalisation weights (``train.decay_groups``, the rest of
    the project's convention). ``select_on`` names an evaluation set (e.g. ``"dev32"``) whose main
    metric picks the epoch whose weights are kept; None keeps the last epoch (the authors' report).
    """

    learning_rate: float = 1e-3
    epochs: int = 20
    batch_size: int = 1
    eval_batch_size: int = 16
    weight_decay: float = 0.02
    decay_all: bool = True
    warmup_steps: int = 0
    scheduler: str = "constant"
    max_grad_norm: float = 1.0
    loss: str = "mlm"
    seed: int = 1
    evaluate_every_epoch: bool = True
    select_on: str | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown cloze loss {self.loss!r}; choose one of {LOSSES}")
        if self.scheduler not in ("constant", "linear", "cosine"):
            raise ValueError(f"unknown scheduler {self.scheduler!r}")
        for name in ("learning_rate", "epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")


@torch.no_grad()
def predict(model: ClozeModel, rows: list[dict], pad_token_id: int, batch_size: int = 16):
    """Verbalizer logits (N, K) and labels (N,) of encoded rows, in their order."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    logits, labels = [], []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_token_id)
        vocab = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
        logits.append(model.verbalizer_logits(vocab).float().cpu())
        labels.append(batch["labels"])
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate_cloze(model: ClozeModel, pattern: ClozePattern, rows: list[dict], batch_size=16):
    """The task's metrics on rows encoded by ``pattern.encode``: the prediction is the verbalizer
    with the highest logit at the mask (ties: the lowest label id)."""
    logits, labels = predict(model, rows, pattern.pad_token_id, batch_size)
    return fewglue_metrics(pattern.task, logits.argmax(-1).numpy(), labels.numpy())


def train_cloze(
    model: ClozeModel,
    pattern: ClozePattern,
    train_examples: list[dict],
    eval_sets: dict[str, list[dict]],
    config: ClozeTrainConfig | None = None,
) -> dict:
    """Train ``model``'s trainable parameters on the cloze task; evaluate every eval set after each
    epoch (or only at the end); return the record (every evaluation, the final and the kept one).

    Trains through the project's one loop (``train.fit``, with Accelerate); what is the cloze
    protocol's own is given to it: the batches (a fresh ``config.seed``-seeded order every epoch, on
    one process: they are not sharded), the loss, the evaluation of every eval set, the selection."""
    config = config or ClozeTrainConfig()
    if config.select_on is not None and config.select_on not in eval_sets:
        raise ValueError(
            f"select_on={config.select_on!r} is not one of the eval sets {list(eval_sets)}"
        )
    train_rows = [pattern.encode(example) for example in train_examples]
    eval_rows = {
        name: [pattern.encode(e) for e in examples] for name, examples in eval_sets.items()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": trainable, "weight_decay": config.weight_decay}]
    if not config.decay_all:
        groups = decay_groups(model, config.weight_decay)
    steps_per_epoch = -(-len(train_rows) // config.batch_size)
    accelerator = Accelerator()
    generator = torch.Generator().manual_seed(config.seed)

    def batches(epoch: int):  # the next order from the one generator, whatever the epoch
        order = torch.randperm(len(train_rows), generator=generator).tolist()
        for start in range(0, len(order), config.batch_size):
            rows = [train_rows[i] for i in order[start : start + config.batch_size]]
            batch = collate(rows, pattern.pad_token_id)
            yield {k: v.to(accelerator.device) for k, v in batch.items()}

    def loss(net, batch: dict) -> torch.Tensor:  # net: the model as Accelerate prepared it
        vocab = net(batch["input_ids"], batch["attention_mask"], batch["mask_index"])
        return cloze_loss(vocab, batch["labels"], model.label_token_ids, config.loss)

    def evaluation(net, point: EvalPoint) -> dict:
        metrics = {
            name: evaluate_cloze(model, pattern, rows, config.eval_batch_size)
            for name, rows in eval_rows.items()
        }
        losses = point.losses[-steps_per_epoch:]  # the epoch's, when not every epoch is evaluated
        return {
            "epoch": point.step // steps_per_epoch,
            "step": point.step,
            "train_loss": sum(losses) / len(losses),
            "metrics": metrics,
        }

    main, select_on = pattern.task.main_metric, config.select_on
    loop = Loop(
        groups=groups,
        learning_rate=config.learning_rate,
        scheduler=config.scheduler,
        warmup_steps=config.warmup_steps,
        max_grad_norm=config.max_grad_norm,
        steps_per_epoch=steps_per_epoch,
        total_steps=config.epochs * steps_per_epoch,
        evals_per_epoch=1 if config.evaluate_every_epoch else 0,
    )
    fitted = fit(
        model,
        loop,
        batches,
        loss,
        evaluation,
        accelerator,
        score=(lambda entry: entry["metrics"][select_on][main]) if select_on else None,
    )
    return {
        "task": pattern.task.name,
        "loss": config.loss,
        "kept_weights": f"best {select_on} epoch" if select_on else "last epoch",
        "evaluations": fitted.evaluations,
        "final": copy.deepcopy(fitted.final),
        "best": copy.deepcopy(fitted.best),
        "steps": fitted.steps,
        "train_examples": len(train_rows),
        "eval_examples": {name: len(rows) for name, rows in eval_rows.items()},
        "trainable": trainable_counts(model),
        "train_seconds": fitted.train_seconds,
        "eval_seconds": fitted.eval_seconds,
        "config": asdict(config),
    }


def run_cloze(
    task: str,
    backbone: str | PreTrainedModel,
    method: str,
    *,
    tokenizer=None,
    options: dict | None = None,
    variant: str = "authors",
    config: ClozeTrainConfig | None = None,
    eval_splits: tuple[str, ...] = ("val",),
    data_dir=None,
    max_length: int = 512,
) -> tuple[ClozeModel, dict]:
    """One cloze run end to end: seed, data (FewGLUE ``train``; ``eval_splits``), tokenizer, masked LM
    (a name, or a model object with ``tokenizer`` given), method, training; the record gains the
    majority / random baselines of the first eval split. Returns the trained model and the record."""
    if tokenizer is None and not isinstance(backbone, str):
        raise ValueError("a masked LM given as a model needs its tokenizer")
    config = config or ClozeTrainConfig()
    set_seed(config.seed)
    tokenizer = tokenizer or load_tokenizer(backbone)
    pattern = ClozePattern(task, tokenizer, max_length)
    mlm = load_masked_lm(backbone) if isinstance(backbone, str) else backbone
    model = build_cloze_model(method, mlm, pattern, options, variant=variant)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    train = load_fewglue(task, "train", data_dir)
    evals = {split: load_fewglue(task, split, data_dir) for split in eval_splits}
    record = train_cloze(model, pattern, train, evals, config)
    first = evals[eval_splits[0]]
    record["baselines"] = baseline_metrics(
        task, [e["label"] for e in train], [e["label"] for e in first]
    )
    record.update(method=method, method_options=model.method_options, variant=variant)
    record["backbone"] = model.backbone_identity
    return model, record
