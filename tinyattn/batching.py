"""Encoded GLUE examples and their batches: tokenisation, length-bucketed sampling, padding.

The step after ``tinyattn.data`` (which loads the examples and knows each task's ``TaskSpec``):
``encode`` turns examples into an ``EncodedDataset``; ``make_dataloader`` serves it in dynamically
padded batches, by default length-bucketed, so that examples of similar length share a batch, which
removes most of the padding. Every batch carries an ``"example_index"`` tensor (positions in the
``EncodedDataset``) so that predictions can be mapped back to examples; the training loop must pop it
before calling the model. This module imports nothing from ``tinyattn``: a task is any object with a
``TaskSpec``'s ``name``, ``text_keys`` and ``is_regression``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class Task(Protocol):
    """What encoding and batching read of a ``tinyattn.data.TaskSpec``."""

    name: str
    text_keys: tuple[str, ...]

    @property
    def is_regression(self) -> bool: ...


def check_seed(seed: int) -> int:
    """``seed`` as an int, or ValueError unless it is a non-negative integer."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


class EncodedDataset(Dataset):
    """Tokenised examples: ``features`` holds equal-length lists (input_ids, attention_mask,
    token_type_ids if the tokenizer gives them, labels). Item ``i`` is one example's dict plus
    ``"example_index": i``; ``example_ids`` keeps each example's ``idx`` from the source."""

    def __init__(
        self, features: dict[str, list[Any]], task: Task, example_ids: list[int] | None = None
    ) -> None:
        n = len(features["input_ids"])
        for key, values in features.items():
            if len(values) != n:
                raise ValueError(f"feature {key!r} has {len(values)} entries, expected {n}")
        self.features = features
        self.task = task
        self.example_ids = list(range(n)) if example_ids is None else list(example_ids)

    def __len__(self) -> int:
        return len(self.features["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {key: values[i] for key, values in self.features.items()}
        item["example_index"] = i
        return item

    @property
    def lengths(self) -> list[int]:
        """Token count of each example (before padding)."""
        return [len(ids) for ids in self.features["input_ids"]]

    @property
    def labels(self) -> list[int | float]:
        return self.features["labels"]


def encode(
    examples: Sequence[dict[str, Any]], task: Task, tokenizer: Any, max_length: int = 128
) -> EncodedDataset:
    """Tokenise examples (one batched tokenizer call, truncation to ``max_length``, no padding).

    ``task`` is the task's spec (``tinyattn.data.get_task(name)``), not its name.
    """
    if isinstance(task, str):
        raise TypeError(f"encode takes a task spec, not the name {task!r}: pass get_task({task!r})")
    if not examples:
        raise ValueError(f"no examples to encode for task {task.name!r}")
    for key in (*task.text_keys, "label"):
        if key not in examples[0]:
            raise ValueError(f"examples for task {task.name!r} lack the key {key!r}")
    texts = [[ex[key] for ex in examples] for key in task.text_keys]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    features = {
        key: list(encoded[key])
        for key in ("input_ids", "attention_mask", "token_type_ids")
        if key in encoded
    }
    cast = float if task.is_regression else int
    features["labels"] = [cast(ex["label"]) for ex in examples]
    return EncodedDataset(features, task, [int(ex.get("idx", i)) for i, ex in enumerate(examples)])


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; every index exactly once per epoch.

    * ``shuffle`` and ``bucket``: a random permutation is cut into mega-batches of
      ``mega_batch_mult * batch_size`` examples, each is sorted by length (longest first) and chunked
      into batches, and the order of all batches is shuffled.
    * ``shuffle`` only: a random permutation chunked into batches.
    * ``bucket`` only: all examples sorted by length (longest first, ties by index) and chunked.
    * neither: indices in order, chunked.

    The randomness of an epoch depends only on ``(seed, epoch)``. Each pass uses the current epoch
    and advances it by one when its first batch is drawn, so successive epochs differ without any call;
    ``set_epoch(e)`` (as on ``DistributedSampler``) fixes the epoch of the next iteration.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        bucket: bool = True,
        mega_batch_mult: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if mega_batch_mult < 1:
            raise ValueError(f"mega_batch_mult must be positive, got {mega_batch_mult}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = check_seed(seed)
        self.bucket = bucket
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def _generator(self) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, dtype=np.uint64)
        return torch.Generator().manual_seed(int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF)

    def _chunk(self, order: torch.Tensor) -> list[list[int]]:
        return [chunk.tolist() for chunk in torch.split(order, self.batch_size)]

    def _by_length(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` sorted by length, longest first; stable, so ties keep their order in ``ids``."""
        return ids[torch.sort(self.lengths[ids], descending=True, stable=True).indices]

    def batches(self) -> list[list[int]]:
        """The batches of the current epoch (does not advance the epoch)."""
        n = len(self.lengths)
        if not self.shuffle:
            order = torch.arange(n)
            return self._chunk(self._by_length(order) if self.bucket else order)
        g = self._generator()
        perm = torch.randperm(n, generator=g)
        if not self.bucket:
            return self._chunk(perm)
        mega = self.mega_batch_mult * self.batch_size
        batches = [b for m in torch.split(perm, mega) for b in self._chunk(self._by_length(m))]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the epoch is read and advanced at the first batch drawn, not when the iterator
        # is created (a multi-worker DataLoader creates, and drops, an extra one per epoch).
        batches = self.batches()
        self.epoch += 1
        yield from batches


class GlueCollator:
    """Pads token features to the longest in the batch (``DataCollatorWithPadding``) and adds
    ``labels`` (long, or float for regression) and ``example_index`` (long) tensors."""

    def __init__(
        self, tokenizer: Any, is_regression: bool, pad_to_multiple_of: int | None = None
    ) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(
            tokenizer, padding="longest", pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"
        )
        self.label_dtype = torch.float32 if is_regression else torch.long

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        token_keys = [k for k in items[0] if k not in ("labels", "example_index")]
        batch = dict(self.pad([{k: item[k] for k in token_keys} for item in items]))
        batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=self.label_dtype)
        batch["example_index"] = torch.tensor(
            [item["example_index"] for item in items], dtype=torch.long
        )
        return batch


class GlueDataLoader(DataLoader):
    """A DataLoader whose ``set_epoch(epoch)`` forwards to its ``LengthBucketBatchSampler``."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def make_dataloader(
    dataset: EncodedDataset,
    tokenizer: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    bucket: bool = True,
    num_workers: int = 0,
    pad_to_multiple_of: int | None = None,
    pin_memory: bool = False,
) -> GlueDataLoader:
    """A DataLoader of dynamically padded batches, length-bucketed unless ``bucket=False``.

    Batch keys: input_ids, attention_mask, (token_type_ids), labels, example_index. Pop
    ``example_index`` before the model call; ``predictions[example_index] = ...`` restores the
    dataset order. The batch sampler is ``loader.batch_sampler`` (a ``LengthBucketBatchSampler``);
    ``loader.set_epoch(e)`` fixes the next epoch's order, and without it each pass advances the epoch.
    """
    sampler = LengthBucketBatchSampler(
        dataset.lengths, batch_size, shuffle=shuffle, seed=seed, bucket=bucket
    )
    collator = GlueCollator(tokenizer, dataset.task.is_regression, pad_to_multiple_of)
    return GlueDataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
