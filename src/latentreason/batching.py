"""Which training examples each step reads: the per-epoch shuffle and length bucketing (padding waste 18% -> 2%
on ProsQA, benchmarks/bench_train.py)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from latentreason.config import TrainConfig
from latentreason.tokenization import EncodedExample


def epoch_order(train_set: Sequence[EncodedExample], tc: TrainConfig, epoch: int) -> list[int]:
    """The order in which an epoch reads the training set: a seeded shuffle, bucketed by length when asked."""
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch)).tolist()
    if tc.bucket_by_length:
        order = bucket_by_length(order, [example_length(e) for e in train_set], tc.batch_size)
    return order


def example_length(example: EncodedExample) -> int:
    """Tokens of question + steps + answer: what sets an example's padded width in every method's layout."""
    return len(example.question_ids) + sum(len(s) for s in example.step_ids) + len(example.answer_ids)


BUCKET_WINDOW = 64
"""Micro-batches sorted together by bucket_by_length: enough for full buckets, few enough that the order stays
random at the scale of an epoch."""


def bucket_by_length(order: list[int], lengths: Sequence[int], batch: int, window: int = BUCKET_WINDOW) -> list[int]:
    """Reorder a shuffled `order` so that every aligned slice of `batch` indices holds similar lengths.

    Each window of `window * batch` consecutive indices is sorted by length and cut into batches, and those
    batches are put back in a shuffled order (a permutation seeded by the window's first index, so the
    result depends only on `order`). Slices stay aligned to `batch`, so micro-batches of grad_accum and of
    every process are still contiguous `batch`-sized slices; the epoch's multiset of indices is unchanged.
    """
    out: list[int] = []
    span = window * batch
    for lo in range(0, len(order), span):
        chunk = sorted(order[lo: lo + span], key=lambda i: lengths[i])
        batches = [chunk[j: j + batch] for j in range(0, len(chunk), batch)]
        full = [b for b in batches if len(b) == batch]  # a short tail batch stays last: the loop drops it
        shuffle = torch.randperm(len(full), generator=torch.Generator().manual_seed(order[lo])).tolist()
        out += [i for k in shuffle for i in full[k]] + [i for b in batches if len(b) < batch for i in b]
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch with its tensors on `device` (other entries, e.g. Python lists, as they are)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
