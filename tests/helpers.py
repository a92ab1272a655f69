"""Small helpers shared by test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def fit(method, encoded, steps: int = 12, lr: float = 1e-2) -> None:
    """A few AdamW steps on `encoded`, so greedy outputs vary and are not one constant token."""
    method.train()
    optimizer = torch.optim.AdamW(method.parameters(), lr=lr)
    for _ in range(steps):
        loss = method(method.collate(encoded))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()


def resume_matches_uninterrupted(straight, resumed, stop_after: int = 5, train=None) -> list[float]:
    """Train `straight` to the end; train `resumed` (same config, another out_dir), stop it after `stop_after`
    steps as if killed, resume it; assert bit-equal final weights and identical loss logs. Returns the losses.
    `train`: the entry point (default training.train; e.g. pretraining.pretrain_coprocessor)."""
    from latentreason.checkpoint import load_run_weights

    if train is None:
        from latentreason.training import train

    train(straight, progress=False, evaluate_at_end=False)
    assert train(resumed, progress=False, stop_after_steps=stop_after) == {"stopped_at_step": stop_after}
    assert (Path(resumed.out_dir) / "checkpoint.safetensors").exists()
    train(resumed, progress=False, evaluate_at_end=False)
    a, b = load_run_weights(Path(straight.out_dir)), load_run_weights(Path(resumed.out_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(x)["loss"] for x in open(Path(cfg.out_dir) / "metrics.jsonl")] for cfg in (straight, resumed)]
    assert losses[0] == losses[1]
    return losses[0]
