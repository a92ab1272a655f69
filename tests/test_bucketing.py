"""train.bucket_by_length: batches of similar lengths, same examples per epoch, deterministic."""

from __future__ import annotations

import random

from latentreason.batching import bucket_by_length


def padded_tokens(order: list[int], lengths: list[int], batch: int) -> int:
    return sum(max(lengths[i] for i in order[j: j + batch]) * len(order[j: j + batch]) for j in range(0, len(order), batch))


def test_bucketing_keeps_the_examples_and_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 100) for _ in range(1000)]
    order = list(range(1000))
    rng.shuffle(order)
    bucketed = bucket_by_length(order, lengths, batch=8, window=16)
    assert sorted(bucketed) == sorted(order)  # a permutation of the epoch
    assert bucketed == bucket_by_length(order, lengths, batch=8, window=16)  # deterministic
    useful = sum(lengths)
    assert useful / padded_tokens(bucketed, lengths, 8) > 0.9 > useful / padded_tokens(order, lengths, 8)
    # Only the order within a window changes: window w of the output holds window w of the input.
    span = 8 * 16
    for lo in range(0, 1000, span):
        assert sorted(bucketed[lo: lo + span]) == sorted(order[lo: lo + span])
    # The batches' order within a window is shuffled, not sorted by length.
    first_window = [max(lengths[i] for i in bucketed[j: j + 8]) for j in range(0, span, 8)]
    assert first_window != sorted(first_window)
