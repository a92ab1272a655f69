"""Soft tokens: N_L = 0 is No-CoT, batching/padding does not change results, gradients reach the latents."""

from __future__ import annotations

import pytest
import torch

from helpers import fit
from latentreason.backbones import build_backbone, lm_forward
from latentreason.config import MethodConfig, ModelConfig
from latentreason.methods.cot import NoCoT
from latentreason.methods.soft_tokens import SoftTokens
from latentreason.tasks import Example
from latentreason.tokenization import encode_examples

EXAMPLES = [
    Example("Numbers: 36 23 70. Target: 11.", ["36 + 23 = 59", "70 - 59 = 11"], "(70-(36+23))"),
    Example("Numbers: 5 8. Target: 40.", ["5 * 8 = 40"], "(5*8)"),
    Example("Numbers: 12 3 4 7 9. Target: 25.", ["12 / 3 = 4", "4 + 4 = 8"], "(((12/3)+4)+9)"),
]
CORPUS = [e.question for e in EXAMPLES] + [s for e in EXAMPLES for s in e.steps] + ["### " + e.answer for e in EXAMPLES]


def make(backbone: str = "gpt2-tiny", n_latents: int = 0, placement: str = "after_question"):
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone=backbone, n_layer=2, n_embd=32, n_head=2), corpus=CORPUS)
    method = SoftTokens(bb, MethodConfig(name="soft_tokens", n_latents=n_latents, placement=placement))
    return method.eval(), bb, encode_examples(bb.tokenizer, EXAMPLES)


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "llama-tiny"])
def test_zero_latents_is_no_cot(backbone: str) -> None:
    soft, bb, encoded = make(backbone, n_latents=0)
    fit(soft, encoded)
    no_cot = NoCoT(bb, MethodConfig(name="no_cot")).eval()  # same backbone object: identical weights
    with torch.no_grad():
        torch.testing.assert_close(soft.loss(soft.collate(encoded)), no_cot.loss(no_cot.collate(encoded)), atol=1e-5, rtol=1e-5)
        a, b = soft.generate(encoded, 12), no_cot.generate(encoded, 12)
    assert a.token_ids == b.token_ids and a.forward_passes == b.forward_passes and a.flops == b.flops
    assert a.latent_slots == [0, 0, 0]
    assert soft.trace(encoded).shape == (3, 0, soft.dims.d_model)


@pytest.mark.parametrize("placement", ["after_question", "prefix"])
def test_batch_equals_single_examples(placement: str) -> None:
    """Left padding keeps the soft slots aligned: batched loss/generation/trace == one example at a time."""
    soft, _, encoded = make("qwen3-tiny", n_latents=3, placement=placement)
    fit(soft, encoded, steps=25)
    with torch.no_grad():
        batch = soft.collate(encoded)
        batch_loss = soft.loss(batch)
        counts = [len(e.answer_ids) for e in encoded]  # every answer token is a next-token target
        singles = [soft.loss(soft.collate([e])) for e in encoded]
        weighted = sum(loss * n for loss, n in zip(singles, counts)) / sum(counts)
        torch.testing.assert_close(batch_loss, weighted, atol=1e-5, rtol=1e-5)
        generation = soft.generate(encoded, 12)
        traced = soft.trace(encoded)
        for row, example in enumerate(encoded):
            single = soft.generate([example], 12)
            assert single.token_ids[0] == generation.token_ids[row]
            torch.testing.assert_close(soft.trace([example])[0], traced[row], atol=1e-5, rtol=1e-5)
    assert len({tuple(t) for t in generation.token_ids}) > 1
    assert generation.latent_slots == [3, 3, 3]
    assert traced.shape == (3, 3, soft.dims.d_model)


def test_layout_and_gradients() -> None:
    soft, _, encoded = make("gpt2-tiny", n_latents=2)
    embedding_std = float(soft.model.get_input_embeddings().weight.detach().std())
    assert 0.3 * embedding_std < float(soft.latents.detach().std()) < 3 * embedding_std
    batch = soft.collate(encoded)
    # Loss on answer tokens only: labels are exactly the answers.
    labels = batch["answer_labels"]
    assert [row[row != -100].tolist() for row in labels] == [e.answer_ids for e in encoded]
    soft.train()
    loss = soft(batch)
    loss.backward()
    assert soft.latents.grad is not None and (soft.latents.grad.abs().sum(-1) > 0).all()
    assert soft.model.get_input_embeddings().weight.grad.abs().sum() > 0
    # The soft slots are the inputs right after each (left-padded) question, and the trace reads them.
    with torch.no_grad():
        embeds, mask, slots = soft.prefix(encoded)
        assert slots == slice(embeds.shape[1] - 2, embeds.shape[1])
        torch.testing.assert_close(embeds[:, slots], soft.latents.expand(3, -1, -1))
        hidden = lm_forward(soft.model, embeds, mask, torch.cumsum(mask, 1).clamp(min=1) - 1, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(soft.trace(encoded), hidden[:, -2:])


def test_prefix_placement_puts_latents_first() -> None:
    soft, _, encoded = make("gpt2-tiny", n_latents=2, placement="prefix")
    with torch.no_grad():
        embeds, mask, slots = soft.prefix(encoded)
    assert slots == slice(0, 2)
    torch.testing.assert_close(embeds[:, :2], soft.latents.expand(3, -1, -1))
    assert (mask[:, :2] == 1).all() and (mask[:, 2:].sum(1) == torch.tensor([len(e.question_ids) for e in encoded])).all()
