"""The one training loop, for every method: AdamW, warm-up + linear/cosine decay, grad-norm clipping,
evaluation K times per epoch, best-checkpoint selection, through Hugging Face Accelerate (so the same
code runs on CPU, one GPU, or several GPUs under ``accelerate launch``)."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from tinyattn.data import EncodedDataset, TaskSpec, get_task, make_dataloader
from tinyattn.metrics import compute_metrics, main_metric
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
    logits, labels = predict(model, loader, accelerator)
    preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
    return compute_metrics(task, preds, labels)


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
    k = config.evals_per_epoch

    def is_eval_step(step: int) -> bool:  # K evenly spaced points per epoch, and the last step
        return (step * k) // steps_per_epoch > (
            (step - 1) * k
        ) // steps_per_epoch or step == total_steps

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(decay_groups(model, config.weight_decay), lr=config.learning_rate)
    scheduler = get_scheduler(
        config.scheduler if config.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )

    evaluations: list[dict] = []
    best: dict | None = None
    best_state: dict | None = None
    train_seconds = eval_seconds = 0.0
    tokens = 0
    loss_sum, loss_count = 0.0, 0
    step, epoch = 0, 0
    bar = tqdm(total=total_steps, desc=f"{spec.name}", disable=not config.progress, leave=False)
    model.train()
    while step < total_steps:
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        tick = time.perf_counter()
        for batch in train_loader:
            logits = model(**_model_inputs(batch))
            loss = compute_loss(logits, batch["labels"])
            accelerator.backward(loss)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += int(batch["attention_mask"].sum())
            loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
            bar.update(1)
            if is_eval_step(step):
                train_seconds += time.perf_counter() - tick
                tick = time.perf_counter()
                with eval_context(accelerator.unwrap_model(model)):
                    metrics = evaluate(model, spec, eval_loader, accelerator)
                eval_seconds += time.perf_counter() - tick
                entry = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "train_loss": loss_sum / max(loss_count, 1),
                    "learning_rate": scheduler.get_last_lr()[0],
                    "metrics": metrics,
                }
                evaluations.append(entry)
                loss_sum, loss_count = 0.0, 0
                bar.set_postfix({select: f"{metrics[select]:.4f}"})
                if best is None or metrics[select] > best["metrics"][select]:
                    best = entry
                    if config.restore_best:
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
    bar.close()

    final = evaluations[-1]
    unwrapped = accelerator.unwrap_model(model)
    final_plain = None
    if plain_final:
        tick = time.perf_counter()
        final_plain = {"step": step, "metrics": evaluate(model, spec, eval_loader, accelerator)}
        eval_seconds += time.perf_counter() - tick
    if best_state is not None and best is not final:
        params = dict(unwrapped.named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                params[name].copy_(value)
    return {
        "select_metric": select,
        "kept_weights": "best evaluation" if best_state is not None else "last step",
        "evaluations": evaluations,
        "best": copy.deepcopy(best),
        "final": copy.deepcopy(final),
        **({"final_plain": final_plain} if final_plain is not None else {}),
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "epochs_run": round(step / steps_per_epoch, 4),
        "train_examples": len(train_data),
        "eval_examples": len(eval_data),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "train_tokens": tokens,
        "tokens_per_second": tokens / train_seconds if train_seconds > 0 else None,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "config": asdict(config),
    }
