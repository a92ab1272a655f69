"""The one adapter for HF internals (backbones.decoder_parts, backbones.layer_attention_mask): the parts are the
model's own modules, running them by hand reproduces the model, and its users (logit lens, Coprocessor's
Base-side states) go through it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentreason.analysis.capture import base_side_states, has_base_and_coprocessor
from latentreason.analysis.logit_lens import find_final_norm_and_head
from latentreason.backbones import build_backbone, decoder_parts, layer_attention_mask, lm_forward
from latentreason.config import CoprocessorConfig, MethodConfig, ModelConfig
from latentreason.errors import UserInputError
from latentreason.methods import build_method
from latentreason.tasks.base import Example
from latentreason.tokenization import encode_examples, positions_from_mask

CORPUS = ["Every wumpus is a yumpus. Is Alex a yumpus?", "12 + 3 = 15", "### True", "### 15", "Alex is a wumpus."] * 4
BACKBONES = ["gpt2-tiny", "llama-tiny", "qwen3-tiny"]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str):
    torch.manual_seed(0)
    return build_backbone(ModelConfig(backbone=name, n_layer=2, n_embd=32, n_head=2), corpus=CORPUS)


@pytest.mark.parametrize("name", BACKBONES)
def test_parts_are_the_models_own_modules(name):
    model = tiny(name).model
    parts = decoder_parts(model)
    inner = model.transformer if name == "gpt2-tiny" else model.model
    assert parts.embed is model.get_input_embeddings() and parts.head is model.get_output_embeddings()
    assert len(parts.layers) == 2 and parts.layers is (inner.h if name == "gpt2-tiny" else inner.layers)
    assert parts.norm is (inner.ln_f if name == "gpt2-tiny" else inner.norm)
    assert (parts.wpe is not None, parts.drop is not None, parts.rotary is not None) == (
        (True, True, False) if name == "gpt2-tiny" else (False, False, True))
    assert parts.full_attention


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", BACKBONES)
def test_running_the_parts_by_hand_reproduces_the_model(name, attention):
    """embed (+ wpe) -> layers with the adapter's mask -> norm -> head equals the model's own forward,
    left padding included (what the looped stack relies on)."""
    model = tiny(name).model.eval()
    model.config._attn_implementation = attention
    parts = decoder_parts(model)
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    positions = positions_from_mask(mask)
    with torch.no_grad():
        expected = lm_forward(model, parts.embed(ids), mask, positions).logits
        x = parts.embed(ids)
        if parts.wpe is not None:
            x = parts.drop(x + parts.wpe(positions))
        valid = mask.bool()
        allowed = valid[:, None, :] & (positions[:, None, :] <= positions[:, :, None])
        allowed = (allowed | ~valid[:, :, None])[:, None]  # padding queries attend everywhere (outputs unused)
        extra = {} if parts.rotary is None else {"position_ids": positions, "position_embeddings": parts.rotary(x, positions)}
        for layer in parts.layers:
            x = layer(x, attention_mask=layer_attention_mask(model, allowed, x.dtype), **extra)
        logits = parts.head(parts.norm(x))
    torch.testing.assert_close(logits[valid], expected[valid], rtol=1e-4, atol=1e-5)


def test_attention_mask_forms():
    model = tiny("gpt2-tiny").model
    allowed = torch.tensor([[True, False], [True, True]]).view(1, 1, 2, 2)
    model.config._attn_implementation = "sdpa"
    assert layer_attention_mask(model, allowed, torch.float32) is allowed
    model.config._attn_implementation = "eager"
    additive = layer_attention_mask(model, allowed, torch.bfloat16)
    assert additive.dtype == torch.bfloat16
    assert additive[allowed].eq(0).all() and additive[~allowed].eq(torch.finfo(torch.bfloat16).min).all()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UserInputError, match="sdpa or eager"):
        layer_attention_mask(model, allowed, torch.float32)


def test_unsupported_layouts_fail_clearly():
    with pytest.raises(UserInputError, match="GPT-2 .* Llama-style"):
        decoder_parts(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="final norm"):  # the logit lens's error, from the adapter's
        find_final_norm_and_head(nn.Linear(4, 4))


def test_sliding_window_layers_are_reported():
    bb = tiny("qwen3-tiny")
    bb.model.config.layer_types = ["full_attention", "sliding_attention"]
    assert not decoder_parts(bb.model).full_attention
    with pytest.raises(UserInputError, match="sliding-window"):
        build_method(MethodConfig(name="looped"), bb)


def test_lora_injected_model_keeps_its_parts():
    pytest.importorskip("peft")
    from latentreason.methods.coprocessor import add_lora

    model = tiny("llama-tiny").model
    before = decoder_parts(model)
    add_lora(model, 2)
    after = decoder_parts(model)
    assert after.layers is before.layers and after.norm is before.norm and after.head is before.head


@pytest.mark.parametrize("variant", ["liu", "h1"])
def test_base_side_states_come_from_the_coprocessor(variant):
    """capture.base_side_states asks the Coprocessor (no rebuilt passes): the Base's final-normed states
    at the latent slots (liu) or at the re-fed last question token (h1), equal to running the three passes by hand."""
    bb = tiny("gpt2-tiny")
    method = build_method(MethodConfig(name="coprocessor", n_latents=3, coprocessor=CoprocessorConfig(variant=variant)), bb).eval()
    examples = encode_examples(bb.tokenizer, [Example("Every wumpus is a yumpus. Is Alex a yumpus?", [], "True"), Example("12 + 3 = ?", [], "15")])
    assert has_base_and_coprocessor(method) and not has_base_and_coprocessor(build_method(MethodConfig(name="cot"), tiny("gpt2-tiny")))
    states = base_side_states(method, examples, batch_size=1, progress=False)
    assert states.shape == (2, 3 if variant == "liu" else 1, 32)
    with torch.no_grad():
        ids, mask = method.left_padded_prompts([e.question_ids for e in examples])
        read, _ = method.passes(ids, mask)  # the neutral start's lead-in: latents (liu) and the re-fed last question token
        by_hand = lm_forward(method.model, read.embeds, read.mask, read.positions, read.cache, output_hidden_states=True).hidden_states[-1]
        by_hand = by_hand[:, :3] if variant == "liu" else by_hand
    torch.testing.assert_close(states, by_hand.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_smollm2_is_read_through_the_llama_layout():
    """SmolLM2-135M (read offline from its GGUF file) is a Llama: same parts, and running them by hand
    reproduces its logits."""
    pytest.importorskip("gguf")
    model = build_backbone(ModelConfig(backbone="smollm2-135m")).model.eval()
    parts = decoder_parts(model)
    assert parts.layers is model.model.layers and parts.norm is model.model.norm and parts.rotary is model.model.rotary_emb
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])
    positions = torch.arange(5).view(1, 5)
    with torch.no_grad():
        expected = lm_forward(model, parts.embed(ids), torch.ones_like(ids), positions).logits
        x = parts.embed(ids)
        mask = layer_attention_mask(model, torch.ones(5, 5, dtype=torch.bool).tril().view(1, 1, 5, 5), x.dtype)
        embeddings = parts.rotary(x, positions)
        for layer in parts.layers:
            x = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=embeddings)
        logits = parts.head(parts.norm(x))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
