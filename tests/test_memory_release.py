"""return_freed_memory: the training loop hands glibc's free heap pages back to the OS every
`train.return_memory_every` steps."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from latentreason import training
from latentreason.config import load_config
from latentreason.training import return_freed_memory


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim")
def test_freed_heap_pages_go_back_to_the_os():
    blocks = [torch.ones(16 * 1024) for _ in range(4000)]  # 64 KB each, under glibc's mmap threshold: the heap
    pin = torch.ones(16 * 1024)  # allocated last: keeps the heap's top in use, so free() alone cannot shrink it
    del blocks  # ~250 MB free inside the heap, still resident
    before = resident_mb()
    assert return_freed_memory()
    assert before - resident_mb() > 100
    del pin


def test_the_loop_returns_memory_every_n_steps(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "return_freed_memory", lambda: calls.append(1) or True)
    cfg = load_config(None, [
        f"out_dir={tmp_path / 'run'}", "task.name=countdown", "task.branching=3", "task.train_size=32", "task.eval_size=4",
        "train.batch_size=4", "train.max_steps=6", "train.return_memory_every=2", "model.n_layer=1", "model.n_embd=32",
        "model.n_head=2", "model.tokenizer_vocab_size=300",
    ])
    training.train(cfg, progress=False, evaluate_at_end=False)
    assert len(calls) == 3
