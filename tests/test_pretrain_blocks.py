"""Coprocessor pretraining in blocks of groups: every block size computes the sequential definition."""

from __future__ import annotations

import pytest
import torch

from latentreason.backbones import build_backbone
from latentreason.config import CoprocessorConfig, MethodConfig, ModelConfig
from latentreason.methods import build_method
from latentreason.methods.coprocessor_pretrain import pretrain_loss, pretrain_loss_sequential, sample_points

CORPUS = ["Every wumpus is a yumpus. Is Alex a yumpus?", "12 + 3 = 15", "### True", "### 15", "Alex is a wumpus."] * 4


def make(backbone: str, attention: str):
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone=backbone, n_layer=2, n_embd=32, n_head=2), corpus=CORPUS)
    with torch.no_grad():  # sharp logits, so equal losses mean something
        for p in bb.model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    method = build_method(MethodConfig(name="coprocessor", n_latents=2, coprocessor=CoprocessorConfig(variant="liu")), bb)
    for model in (method.model, method.coprocessor):
        model.config._attn_implementation = attention
    return method


@pytest.mark.parametrize("backbone,attention", [("gpt2-tiny", "sdpa"), ("llama-tiny", "eager")])
def test_every_block_size_equals_sequential(backbone, attention):
    method = make(backbone, attention)
    x = torch.randint(5, len(method.tokenizer), (2, 20))
    points = sample_points(2, 20, 5, 3, torch.Generator().manual_seed(1))
    sequential = pretrain_loss_sequential(method, x, points, 3)
    want = torch.autograd.grad(sequential, method.soft_tokens)[0]
    # 1 group per row, 2 (the last block padded with a repeated point), 3 (padded), all 5 in one row.
    for per_row in (1, 2, 3, 5):
        blocked = pretrain_loss(method, x, points, 3, groups_per_row=per_row)
        torch.testing.assert_close(blocked, sequential, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.autograd.grad(blocked, method.soft_tokens)[0], want, atol=1e-5, rtol=1e-4)
