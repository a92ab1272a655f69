"""Base + Coprocessor: the three passes, what trains in each variant, h1's cache, generation, pretraining."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import COPROCESSOR_CORPUS, tiny_coprocessor
from latentreason.backbones import lm_forward, new_cache
from latentreason.checkpoint import load_run_weights
from latentreason.config import load_config
from latentreason.methods.coprocessor import Coprocessor
from latentreason.methods.coprocessor_pretrain import (
    no_latent_loss,
    pretrain_loss,
    pretrain_loss_sequential,
    sample_points,
)
from latentreason.pretraining import pretrain_coprocessor
from latentreason.tasks.base import Example
from latentreason.tokenization import encode_examples

CORPUS = COPROCESSOR_CORPUS
EXAMPLES = [
    Example("Every wumpus is a yumpus. Is Alex a yumpus?", [], "True"),
    Example("12 + 3 = ?", [], "15"),
    Example("Alex is a wumpus.", [], "False"),
]


make = tiny_coprocessor


def encoded(method: Coprocessor):
    return encode_examples(method.tokenizer, EXAMPLES)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, bool]:
    return {name: not torch.equal(before[name], p.detach()) for name, p in module.named_parameters()}


def optimise(method: Coprocessor, steps: int = 3) -> None:
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)  # no decay: only gradients move weights
    batch = method.collate(encoded(method))
    for _ in range(steps):
        method(batch).backward()
        optimizer.step()
        optimizer.zero_grad()


# ----------------------------------------------------------------------------- what trains


@pytest.mark.parametrize("backbone,variant", [("gpt2-tiny", "liu"), ("gpt2-tiny", "h1"), ("qwen3-tiny", "h1")])
def test_frozen_base_trains_only_the_coprocessor(backbone, variant):
    method = make(backbone, variant, sharpen=False)
    base, coprocessor = snapshot(method.model), snapshot(method.coprocessor)
    soft = method.soft_tokens.detach().clone()
    optimise(method)
    assert not any(changed(base, method.model).values()), "the frozen Base moved"
    assert not torch.equal(soft, method.soft_tokens.detach())
    moved = changed(coprocessor, method.coprocessor)
    trainable = {name for name, p in method.coprocessor.named_parameters() if p.requires_grad}
    assert trainable and all(moved[name] for name in trainable), [n for n in trainable if not moved[n]]
    assert not any(moved[name] for name in moved if name not in trainable)
    # Frozen = exactly what the loss cannot reach: token embeddings always; with h1 (kv) the parts of the
    # last layer after its K/V projections and the final norm.
    frozen = set(moved) - trainable
    embeddings = {n for n in moved if "wte" in n or "embed_tokens" in n}
    if variant == "liu":
        assert frozen == embeddings
    else:
        assert embeddings < frozen
        assert not any(".0." in n for n in frozen), "the first layer feeds the last layer's K/V and must train"
        assert any("mlp" in n and ".1." in n for n in frozen) and any(n.endswith(("ln_f.weight", "norm.weight")) and "layers" not in n for n in frozen)


def test_building_under_no_grad_still_freezes_unreachable():
    with torch.no_grad():
        method = make("gpt2-tiny", "h1", sharpen=False)
    assert not method.coprocessor.transformer.ln_f.weight.requires_grad
    assert method.coprocessor.transformer.h[0].attn.c_attn.weight.requires_grad


def test_h2_full_trains_base_and_coprocessor():
    method = make("qwen3-tiny", "h2", sharpen=False)
    base, coprocessor = snapshot(method.model), snapshot(method.coprocessor)
    optimise(method)
    assert all(changed(base, method.model).values())
    moved = changed(coprocessor, method.coprocessor)
    assert all(moved[n] for n, p in method.coprocessor.named_parameters() if p.requires_grad)


def test_h2_lora_trains_adapters_only_on_the_base():
    method = make("gpt2-tiny", "h2", lora_rank=2, injection="kv", sharpen=False)
    base, coprocessor = snapshot(method.model), snapshot(method.coprocessor)
    optimise(method, steps=4)  # LoRA B starts at 0, so A only moves from the second step on
    moved = changed(base, method.model)
    lora = [n for n in moved if "lora_" in n]
    assert lora and all(moved[n] for n in lora)
    assert not any(moved[n] for n in moved if "lora_" not in n)
    assert any(changed(coprocessor, method.coprocessor).values())
    counts = method.parameter_counts()
    assert counts["trainable"] < counts["total"]


# ----------------------------------------------------------------------------- h1 cache by hand


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "qwen3-tiny"])
def test_h1_equals_hand_built_cache(backbone):
    """The neutral-start read-out by hand: the Base's question K/V minus the last token, the Coprocessor's K/V
    at the latent slots, then the last question token re-fed at its own position and the answer after it."""
    method = make(backbone, "h1")
    example = encoded(method)[0]
    q = torch.tensor([example.question_ids])
    answer = torch.tensor([example.answer_ids])
    n, qlen = method.n_latents, q.shape[1]
    with torch.no_grad():
        # Base over the question; Coprocessor over the soft tokens at positions qlen.. on a copy of that cache.
        base_cache = new_cache(method.model)
        lm_forward(method.model, method.embed(q), torch.ones_like(q), torch.arange(qlen)[None], base_cache)
        copro_cache = new_cache(method.coprocessor)
        for i, layer in enumerate(base_cache.layers):
            copro_cache.update(layer.keys.clone(), layer.values.clone(), i)
        lm_forward(method.coprocessor, method.soft_tokens[None], torch.ones(1, qlen + n, dtype=torch.long), torch.arange(qlen, qlen + n)[None], copro_cache)
        # Hand-made Base cache: per layer, the question's K/V but the last token's, then the Coprocessor's K/V.
        hand = new_cache(method.model)
        for i, (b, c) in enumerate(zip(base_cache.layers, copro_cache.layers)):
            hand.update(torch.cat([b.keys[:, :, :-1], c.keys[:, :, qlen:]], 2), torch.cat([b.values[:, :, :-1], c.values[:, :, qlen:]], 2), i)
        tokens = torch.cat([q[:, -1:], answer], 1)  # the last question token, at position qlen - 1, then the answer
        length = tokens.shape[1]
        expected = lm_forward(method.model, method.embed(tokens), torch.ones(1, qlen - 1 + n + length, dtype=torch.long),
                              torch.arange(qlen - 1, qlen - 1 + length)[None], hand).logits[:, : answer.shape[1]]
        actual = method.answer_logits(method.collate([example]))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert expected.std() > 0.1  # sharpened: logits are far from uniform


# ----------------------------------------------------------------------------- generation


def slow_greedy(method: Coprocessor, example, max_new_tokens: int) -> list[int]:
    """One example, no padding, no incremental decoding: every step recomputes the Base's whole read."""
    q = torch.tensor([example.question_ids])
    qlen, n = q.shape[1], method.n_latents
    cache = method.question_cache(q, torch.ones_like(q))
    z, copro_cache = method.latents(cache, torch.ones_like(q))
    out: list[int] = []
    for _ in range(max_new_tokens):
        generated = method.embed(torch.tensor([out], dtype=torch.long).view(1, -1))
        # Positions: the question but its last token, the latents at qlen.., the last token again at qlen - 1,
        # then the answer at qlen, qlen + 1, ... (the positions the Base had without latents).
        answer_positions = torch.arange(qlen - 1, qlen + len(out))
        if method.injection == "embeddings":
            embeds = torch.cat([method.embed(q[:, :-1]), z, method.embed(q[:, -1:]), generated], 1)  # the Base recomputes its question K/V too
            positions = torch.cat([torch.arange(qlen - 1), torch.arange(qlen, qlen + n), answer_positions])[None]
            logits = lm_forward(method.model, embeds, torch.ones(1, embeds.shape[1], dtype=torch.long), positions).logits
        else:
            hand = new_cache(method.model)
            for i, (b, c) in enumerate(zip(cache.layers, copro_cache.layers)):
                hand.update(b.keys[:, :, :-1], b.values[:, :, :-1], i)
                hand.update(c.keys[:, :, qlen:], c.values[:, :, qlen:], i)
            embeds = torch.cat([method.embed(q[:, -1:]), generated], 1)
            length = embeds.shape[1]
            logits = lm_forward(method.model, embeds, torch.ones(1, qlen - 1 + n + length, dtype=torch.long), answer_positions[None], hand).logits
        token = int(logits[0, -1].argmax())
        if token == method.ids["eos"]:
            break
        out.append(token)
    return out


@pytest.mark.parametrize("backbone,variant", [("gpt2-tiny", "liu"), ("qwen3-tiny", "h1")])
def test_generate_equals_slow_reference(backbone, variant):
    method = make(backbone, variant).eval()
    examples = encoded(method)
    with torch.no_grad():
        generation = method.generate(examples, max_new_tokens=6)
        reference = [slow_greedy(method, e, 6) for e in examples]
    assert generation.token_ids == reference
    assert len({tuple(t) for t in reference}) > 1  # not a degenerate constant output
    assert generation.latent_slots == [3] * 3
    assert all(f > 0 for f in generation.flops)
    assert method.trace(examples).shape == (3, 3, 32)


# ----------------------------------------------------------------------------- pretraining


@pytest.mark.parametrize("backbone,attention", [("gpt2-tiny", "sdpa"), ("qwen3-tiny", "sdpa"), ("llama-tiny", "eager")])
def test_parallel_pretraining_equals_sequential(backbone, attention):
    method = make(backbone, "liu", n_latents=2)
    for model in (method.model, method.coprocessor):
        model.config._attn_implementation = attention
    x = torch.randint(5, len(method.tokenizer), (2, 16))
    points = sample_points(2, 16, 3, 3, torch.Generator().manual_seed(0))
    assert len(set(points.flatten().tolist())) > 2
    parallel = pretrain_loss(method, x, points, 3)
    sequential = pretrain_loss_sequential(method, x, points, 3)
    torch.testing.assert_close(parallel, sequential, atol=1e-5, rtol=1e-5)
    assert abs(parallel.detach().item() - no_latent_loss(method, x, points, 3).detach().item()) > 1e-3  # the latents matter
    # Gradients agree too (what the pretraining actually uses).
    grads = [torch.autograd.grad(loss, method.soft_tokens)[0] for loss in (parallel, sequential)]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- loading and the real loop


def test_plain_checkpoint_initialises_base_and_coprocessor():
    nocot = make("gpt2-tiny", sharpen=True).model.state_dict()  # stand-in for a No-CoT run's Base
    state = {"model." + k: v for k, v in nocot.items()}
    for cc in ({}, {"variant": "h2", "lora_rank": 2}):
        method = make("gpt2-tiny", sharpen=False, **cc)
        missing, _ = method.load_state_dict(state, strict=False)
        assert not [k for k in missing if k.startswith("model.")]
        copro = method.coprocessor.state_dict()
        assert all(torch.equal(copro[k], v) for k, v in nocot.items())
        weight = "transformer.h.0.attn.c_attn." + ("base_layer.weight" if cc else "weight")
        assert torch.equal(method.model.state_dict()[weight], nocot["transformer.h.0.attn.c_attn.weight"])
    # A full checkpoint round-trips strictly.
    again = make("gpt2-tiny", sharpen=False, variant="h2", lora_rank=2)
    again.load_state_dict(method.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), method.state_dict().values()))


def test_train_pretrain_finetune_chain(tmp_path):
    """No-CoT Base -> Coprocessor pretraining on task text -> h1 fine-tuning, through the real entry points."""
    from latentreason.training import train

    common = ["task.name=countdown", "task.branching=3", "task.train_size=16", "task.eval_size=4", "model.n_embd=32",
              "model.n_head=2", "train.batch_size=8", "train.max_steps=2", "train.warmup_steps=1", "eval.max_new_tokens=8"]
    train(load_config(None, [*common, f"out_dir={tmp_path / 'base'}", "method.name=no_cot"]), progress=False)
    summary = pretrain_coprocessor(load_config(None, [
        *common, f"out_dir={tmp_path / 'pre'}", "method.name=coprocessor", "method.n_latents=2", f"train.init_from={tmp_path / 'base'}",
        "method.coprocessor.pretrain_points=2", "method.coprocessor.pretrain_ahead=3", "method.coprocessor.pretrain_seq_len=24"]), progress=False)
    assert set(summary["before"]) == {"ppl_with_latents", "ppl_without_latents"}
    assert summary["before"]["ppl_without_latents"] == pytest.approx(summary["after"]["ppl_without_latents"])  # Base frozen
    result = train(load_config(None, [
        *common, f"out_dir={tmp_path / 'h1'}", "method.name=coprocessor", "method.n_latents=2", "method.coprocessor.variant=h1",
        f"train.init_from={tmp_path / 'pre'}"]), progress=False)
    assert result["latent_slots_per_answer"] == 2 and result["flops_per_answer"] > 0
    assert result["params_trainable"] < result["params_total"]
    assert json.loads((tmp_path / "h1" / "eval.json").read_text())["params_coprocessor"] > 0
    # The h1 run's Base is the No-CoT Base, untouched by pretraining and fine-tuning.
    base = load_run_weights(tmp_path / "base")
    final = load_run_weights(tmp_path / "h1")
    assert all(torch.equal(v, final[k]) for k, v in base.items())
