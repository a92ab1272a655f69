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


COPROCESSOR_CORPUS = ["Every wumpus is a yumpus. Is Alex a yumpus?", "12 + 3 = 15", "### True", "### 15", "Alex is a wumpus."] * 4
"""Tokenizer corpus of the tiny Base + Coprocessor tests."""


def tiny_coprocessor(backbone: str = "gpt2-tiny", variant: str = "liu", n_latents: int = 3, sharpen: bool = True, **cc):
    """A tiny Base + Coprocessor (2 layers x 32); `sharpen` scales weights up so logits are far from uniform
    (then equalities between two computations mean something)."""
    import torch

    from latentreason.backbones import build_backbone
    from latentreason.config import CoprocessorConfig, MethodConfig, ModelConfig
    from latentreason.methods import build_method
    from latentreason.methods.coprocessor import Coprocessor

    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone=backbone, n_layer=2, n_embd=32, n_head=2), corpus=COPROCESSOR_CORPUS)
    if sharpen:
        with torch.no_grad():
            for p in bb.model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.3)
    method = build_method(MethodConfig(name="coprocessor", n_latents=n_latents, coprocessor=CoprocessorConfig(variant=variant, **cc)), bb)
    assert isinstance(method, Coprocessor)
    return method
