"""The one training loop (``fit``), for every method and protocol: AdamW, warm-up + linear/cosine
decay, grad-norm clipping, evaluation K times per epoch, best-checkpoint selection, through Hugging Face
Accelerate (so the same code runs on CPU, one GPU, or several GPUs under ``accelerate launch``).
``train`` runs the classification protocol through it, ``cloze.train_cloze`` the cloze protocol."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from tinyattn.data import EncodedDataset, TaskSpec, get_task, make_dataloader
from tinyattn.metrics import compute_metrics, main_metric, prediction_summary
from tinyattn.model import EncoderClassifier

SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    """The training loop's settings; ``experiment.RunParams`` extends them with the run's own."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32
    eval_batch_size: int = 128
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    max_grad_norm: float = 1.0
    evals_per_epoch: int = 1  # 0: evaluate once, after the last step (no curve, nothing to select)
    select_metric: str | None = None  # default: the task's main GLUE metric
    seed: int = 42
    progress: bool = True
    # end the run with its best evaluation's weights (the papers' protocol), or keep the last step's
    restore_best: bool = True

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULES:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {SCHEDULES}")
        for name in ("learning_rate", "epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.evals_per_epoch < 0:
            raise ValueError(f"evals_per_epoch must be >= 0, got {self.evals_per_epoch!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on trainable weights; none on biases and normalisation parameters (as HF Trainer)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            skip = "bias" in name or "norm" in name.lower()
            (no_decay if skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def compute_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:  # regression (STS-B)
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "example_index")}


@torch.no_grad()
def predict(model, loader, accelerator: Accelerator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every example, in the dataset's order (the loader may reorder them)."""
    was_training = model.training
    model.eval()
    logits_all, labels_all, index_all = [], [], []
    for batch in loader:
        logits = model(**_model_inputs(batch))
        values = (logits, batch["labels"], batch["example_index"])
        if accelerator is not None:
            values = accelerator.gather_for_metrics(values)
        for store, value in zip((logits_all, labels_all, index_all), values):
            store.append(value.float().cpu() if value.is_floating_point() else value.cpu())
    model.train(was_training)
    order = torch.cat(index_all).argsort()
    return torch.cat(logits_all)[order].numpy(), torch.cat(labels_all)[order].numpy()


def evaluate(
    model, task: str | TaskSpec, loader, accelerator: Accelerator | None = None
) -> dict[str, float]:
    return evaluate_with_predictions(model, task, loader, accelerator)[0]


def evaluate_with_predictions(
    model, task: str | TaskSpec, loader, accelerator: Accelerator | None = None
) -> tuple[dict[str, float], dict]:
    """The metrics, and what the model predicted in brief (``metrics.prediction_summary``)."""
    logits, labels = predict(model, loader, accelerator)
    preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
    return compute_metrics(task, preds, labels), prediction_summary(task, preds)


@dataclass
class Loop:
    """How ``fit`` trains: AdamW over ``groups``, the schedule (one of ``SCHEDULES``; ``warmup_steps``
    of warm-up, then over ``total_steps``), grad-norm clipping (0: none), and when to evaluate:
    ``evals_per_epoch`` evenly spaced points in each epoch of ``steps_per_epoch`` steps, and the last
    step (0: the last step only)."""

    groups: list[dict]
    learning_rate: float
    scheduler: str
    warmup_steps: int
    max_grad_norm: float
    steps_per_epoch: int
    total_steps: int
    evals_per_epoch: int


@dataclass
class EvalPoint:
    """Where training stands at an evaluation: the step, the training losses of the steps since the
    previous evaluation (in order), and the learning rate the scheduler set last."""

    step: int
    losses: list[float]
    learning_rate: float

    @property
    def mean_loss(self) -> float:
        total = 0.0
        for value in self.losses:  # summed in order, one step at a time
            total += value
        return total / max(len(self.losses), 1)


@dataclass
class Fitted:
    """What ``fit`` did: every evaluation's entry, the best (None when nothing was selected) and the
    final ones, whether the best one's weights were kept, and the counts and timings."""

    evaluations: list[dict]
    best: dict | None
    final: dict
    kept_best: bool
    steps: int
    train_seconds: float
    eval_seconds: float
    tokens: int  # real (non-padding) tokens trained on
    last_step: Any = None  # what ``at_last_step`` returned


def fit(
    model: torch.nn.Module,
    loop: Loop,
    batches: Callable[[int], Iterable[dict]],
    loss: Callable[[torch.nn.Module, dict], torch.Tensor],
    evaluation: Callable[[torch.nn.Module, EvalPoint], dict],
    accelerator: Accelerator,
    *,
    score: Callable[[dict], float] | None = None,
    keep_best: bool = True,
    at_last_step: Callable[[torch.nn.Module], Any] | None = None,
    bar=None,
) -> Fitted:
    """The one training loop, every protocol's: ``model``, its optimiser and scheduler prepared by
    ``accelerator``; steps with ``accelerator.backward`` and ``clip_grad_norm_``.

    ``batches(epoch)``: that epoch's batches (with ``attention_mask``), on the accelerator's device;
    ``loss(model, batch)``: the batch's loss; ``evaluation(model, point)``: the evaluation's entry.
    ``score(entry)``: what the best entry maximises (strictly: the first of equals wins); None selects
    nothing. ``keep_best``: end with the best entry's weights (else the last step's).
    ``at_last_step(model)``: called on the last step's weights, before the best ones are restored.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(loop.groups, lr=loop.learning_rate)
    scheduler = get_scheduler(
        loop.scheduler if loop.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=loop.warmup_steps,
        num_training_steps=loop.total_steps,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    per_epoch, k, total_steps = loop.steps_per_epoch, loop.evals_per_epoch, loop.total_steps

    def is_eval_step(step: int) -> bool:  # K evenly spaced points per epoch, and the last step
        return (step * k) // per_epoch > ((step - 1) * k) // per_epoch or step == total_steps

    evaluations: list[dict] = []
    best: dict | None = None
    best_state: dict | None = None
    train_seconds = eval_seconds = 0.0
    tokens, losses = 0, []
    step, epoch = 0, 0
    model.train()
    while step < total_steps:
        tick = time.perf_counter()
        for batch in batches(epoch):
            value = loss(model, batch)
            accelerator.backward(value)
            if loop.max_grad_norm:
                accelerator.clip_grad_norm_(trainable, loop.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += int(batch["attention_mask"].sum())
            losses.append(value.item())
            if bar is not None:
                bar.update(1)
            if is_eval_step(step):
                train_seconds += time.perf_counter() - tick
                tick = time.perf_counter()
                entry = evaluation(model, EvalPoint(step, losses, scheduler.get_last_lr()[0]))
                eval_seconds += time.perf_counter() - tick
                evaluations.append(entry)
                losses = []
                if score is not None and (best is None or score(entry) > score(best)):
                    best = entry
                    if keep_best:
                        unwrapped = accelerator.unwrap_model(model)
                        best_state = {
                            n: p.detach().clone()
                            for n, p in unwrapped.named_parameters()
                            if p.requires_grad
                        }
                tick = time.perf_counter()
            if step >= total_steps:
                break
        train_seconds += time.perf_counter() - tick
        epoch += 1

    final, last_step = evaluations[-1], None
    if at_last_step is not None:
        tick = time.perf_counter()
        last_step = at_last_step(model)
        eval_seconds += time.perf_counter() - tick
    if best_state is not None and best is not final:
        params = dict(accelerator.unwrap_model(model).named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                params[name].copy_(value)
    return Fitted(
        evaluations=evaluations,
        best=best,
        final=final,
        kept_best=best_state is not None,
        steps=step,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        tokens=tokens,
        last_step=last_step,
    )


def train(
    model: EncoderClassifier,
    task: str | TaskSpec,
    train_data: EncodedDataset,
    eval_data: EncodedDataset,
    tokenizer,
    config: TrainConfig,
    eval_context: Callable | None = None,
    plain_final: bool = False,
) -> dict:
    """Train ``model``'s trainable parameters on ``task`` (a name or its ``TaskSpec``); leave it at the
    best evaluation (or the last step, see ``restore_best``); return the record.

    The record holds every evaluation (step, epoch, train loss, metrics), the best and the final ones,
    timings, and throughput in real (non-padding) tokens per second of training.
    ``eval_context(model)``: a context manager under which the model is evaluated (e.g. with its
    experts weight-averaged, so that selection uses the deployed model).
    ``plain_final``: also evaluate the last step's weights without ``eval_context`` (the record's
    ``final_plain``: for experts, the model as trained, before averaging).
    """
    eval_context = eval_context or (lambda m: contextlib.nullcontext(m))
    spec = get_task(task)  # resolved once; the spec travels from here
    select = config.select_metric or main_metric(spec)
    accelerator = Accelerator()
    train_loader = make_dataloader(
        train_data, tokenizer, config.batch_size, shuffle=True, seed=config.seed
    )
    eval_loader = make_dataloader(eval_data, tokenizer, config.eval_batch_size, shuffle=False)
    steps_per_epoch = len(train_loader)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    train_loader, eval_loader = accelerator.prepare(train_loader, eval_loader)
    bar = tqdm(total=total_steps, desc=f"{spec.name}", disable=not config.progress, leave=False)

    def batches(epoch: int):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        return train_loader

    def loss(model, batch: dict) -> torch.Tensor:
        return compute_loss(model(**_model_inputs(batch)), batch["labels"])

    def evaluation(model, point: EvalPoint) -> dict:
        with eval_context(accelerator.unwrap_model(model)):
            metrics, predicted = evaluate_with_predictions(model, spec, eval_loader, accelerator)
        bar.set_postfix({select: f"{metrics[select]:.4f}"})
        return {
            "step": point.step,
            "epoch": round(point.step / steps_per_epoch, 4),
            "train_loss": point.mean_loss,
            "learning_rate": point.learning_rate,
            "metrics": metrics,
            "predictions": predicted,  # in brief: class counts, or the scores' mean and spread
        }

    def evaluate_plain(model) -> dict:  # without eval_context
        return evaluate(model, spec, eval_loader, accelerator)

    loop = Loop(
        groups=decay_groups(model, config.weight_decay),
        learning_rate=config.learning_rate,
        scheduler=config.scheduler,
        warmup_steps=int(config.warmup_ratio * total_steps),
        max_grad_norm=config.max_grad_norm,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        evals_per_epoch=config.evals_per_epoch,
    )
    fitted = fit(
        model,
        loop,
        batches,
        loss,
        evaluation,
        accelerator,
        score=lambda entry: entry["metrics"][select],
        keep_best=config.restore_best,
        at_last_step=evaluate_plain if plain_final else None,
        bar=bar,
    )
    bar.close()
    step, train_seconds = fitted.steps, fitted.train_seconds
    final_plain = {"step": step, "metrics": fitted.last_step} if plain_final else None
    return {
        "select_metric": select,
        "kept_weights": "best evaluation" if fitted.kept_best else "last step",
        "evaluations": fitted.evaluations,
        "best": copy.deepcopy(fitted.best),
        "final": copy.deepcopy(fitted.final),
        **({"final_plain": final_plain} if final_plain is not None else {}),
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "epochs_run": round(step / steps_per_epoch, 4),
        "train_examples": len(train_data),
        "eval_examples": len(eval_data),
        "train_seconds": train_seconds,
        "eval_seconds": fitted.eval_seconds,
        "train_tokens": fitted.tokens,
        "tokens_per_second": fitted.tokens / train_seconds if train_seconds > 0 else None,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "config": asdict(config),
    }
