"""Coconut: multi-pass == one full pass, gradients through the thoughts, curriculum layouts, generation."""

from __future__ import annotations

import random

import pytest
import torch

import helpers
from latentreason.backbones import build_backbone, lm_forward
from latentreason.config import CoconutConfig, MethodConfig, ModelConfig, load_config
from latentreason.export import identity_parts
from latentreason.methods.base import causal_lm_loss
from latentreason.methods.coconut import Coconut, Plan
from latentreason.tasks import Example
from latentreason.tokenization import EncodedExample, encode_examples

EXAMPLES = [
    Example("Numbers: 36 23 70. Target: 11.", ["36 + 23 = 59", "70 - 59 = 11"], "(70-(36+23))"),
    Example("Numbers: 5 8. Target: 40.", ["5 * 8 = 40"], "(5*8)"),
    Example("Numbers: 12 3 4 7 9. Target: 25.", ["12 / 3 = 4", "4 + 4 = 8", "8 + 9 = 17", "17 + 7 = 24"], "(((12/3)+4)+9)"),
    Example("Numbers: 2 2. Target: 4.", ["2 + 2 = 4", "4 - 0 = 4", "4 * 1 = 4"], "(2+2)"),
]
CORPUS = [e.question for e in EXAMPLES] + [s for e in EXAMPLES for s in e.steps] + ["### " + e.answer for e in EXAMPLES]


def make(backbone: str = "gpt2-tiny", **coconut) -> tuple[Coconut, list[EncodedExample]]:
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone=backbone, n_layer=2, n_embd=32, n_head=2), corpus=CORPUS)
    n_latents = coconut.pop("n_latents", 0)
    method = Coconut(bb, MethodConfig(name="coconut", n_latents=n_latents, coconut=CoconutConfig(**coconut)))
    return method.eval(), encode_examples(bb.tokenizer, EXAMPLES)


def full_pass_embeds(method: Coconut, batch: dict, thoughts: torch.Tensor) -> torch.Tensor:
    """The final sequence's embeddings: token embeddings with the latent columns replaced by `thoughts`."""
    embeds = method.embed(batch["input_ids"])
    start, width = batch["latent_start"], thoughts.shape[1]
    return torch.cat([embeds[:, :start], thoughts, embeds[:, start + width:]], 1)


MIXED_PLANS = [Plan(3, 2), Plan(1, 1), Plan(0, 0), Plan(2, 3)]
"""Different k_i per row (one row without latents) and different question lengths."""


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "qwen3-tiny", "llama-tiny"])
def test_multipass_equals_one_full_pass(backbone: str) -> None:
    method, encoded = make(backbone)
    batch = method.layout(encoded, MIXED_PLANS)
    assert len({len(e.question_ids) for e in encoded}) > 1
    with torch.no_grad():
        out = method.continuous_forward(batch, all_logits=True)
        multi = torch.cat(out.logits, 1)
        assert out.passes == 3 + 1  # K = max k_i = 3 latents -> 4 passes
        # The default skips the LM head on the passes before the last: same thoughts, same final logits.
        lean = method.continuous_forward(batch)
        assert len(lean.logits) == 1 and lean.passes == out.passes
        torch.testing.assert_close(lean.thoughts, out.thoughts, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lean.logits[0], out.logits[-1], atol=1e-6, rtol=1e-6)
        embeds = full_pass_embeds(method, batch, out.thoughts)
        full = lm_forward(method.model, embeds, batch["attention_mask"], batch["position_ids"], output_hidden_states=True)
    valid = batch["attention_mask"].bool()
    assert multi.shape == full.logits.shape
    torch.testing.assert_close(multi[valid], full.logits[valid], atol=1e-5, rtol=1e-5)
    # Each thought is the full pass's last hidden state one column earlier (the fixed point Coconut defines).
    start, hidden = batch["latent_start"], full.hidden_states[-1]
    for j in range(out.thoughts.shape[1]):
        rows = batch["latent_mask"][:, j]
        torch.testing.assert_close(out.thoughts[rows, j], hidden[rows, start + j - 1], atol=1e-5, rtol=1e-5)
    # One growing cache holds the whole sequence.
    assert out.cache.get_seq_length() == batch["input_ids"].shape[1]


def test_gradients_flow_through_the_chain_of_thoughts() -> None:
    method, encoded = make("gpt2-tiny")
    method.train()
    batch = method.layout(encoded, MIXED_PLANS)
    params = [p for p in method.model.parameters()]
    names = [n for n, _ in method.model.named_parameters()]

    out = method.continuous_forward(batch)
    loss = method.loss(batch)  # only positions after <eot> carry labels
    torch.testing.assert_close(loss, causal_lm_loss(out.logits[-1], batch["labels"][:, -out.logits[-1].shape[1]:]))
    g_multi = torch.autograd.grad(loss, params, allow_unused=True)

    # Direct part: the same loss as one full pass with the thoughts as constant inputs; and dL/dthoughts.
    thoughts = out.thoughts.detach().requires_grad_()
    embeds = full_pass_embeds(method, batch, thoughts)
    logits = lm_forward(method.model, embeds, batch["attention_mask"], batch["position_ids"]).logits
    direct_loss = causal_lm_loss(logits, batch["labels"])
    torch.testing.assert_close(direct_loss, loss, atol=1e-5, rtol=1e-5)
    *g_direct, g_thoughts = torch.autograd.grad(direct_loss, params + [thoughts], allow_unused=True)
    has = batch["latent_mask"]
    assert (g_thoughts[has].abs().sum(-1) > 0).all(), "every real thought influences the answer loss"
    assert (g_thoughts[~has] == 0).all(), "holes are masked: no gradient"

    # Chain part: dL/dthoughts pulled back through the thoughts (each one computed from the previous).
    g_chain = torch.autograd.grad(method.continuous_forward(batch).thoughts, params, grad_outputs=g_thoughts, allow_unused=True)
    zero = lambda g, p: torch.zeros_like(p) if g is None else g  # noqa: E731
    for name, p, gm, gd, gc in zip(names, params, g_multi, g_direct, g_chain):
        torch.testing.assert_close(zero(gm, p), zero(gd, p) + zero(gc, p), atol=1e-6, rtol=1e-4, msg=name)
    wte = names.index("transformer.wte.weight")
    first_layer = names.index("transformer.h.0.attn.c_attn.weight")
    assert g_chain[wte] is not None and g_chain[wte].abs().sum() > 0
    assert g_chain[first_layer] is not None and g_chain[first_layer].abs().sum() > 0
    # Question token embeddings get gradient through the thoughts too (not only through attention).
    question_rows = torch.tensor(sorted({t for e in encoded for t in e.question_ids}))
    assert g_chain[wte][question_rows].abs().sum() > 0


def unpadded(batch: dict, row: int, key: str = "input_ids") -> list[int]:
    return batch[key][row][batch["attention_mask"][row].bool()].tolist()


def test_curriculum_layouts() -> None:
    method, encoded = make("gpt2-tiny", max_latent_stage=3, thoughts_per_step=1)
    bot, eot, lat = method.ids["<bot>"], method.ids["<eot>"], method.ids["<latent>"]
    e = encoded[2]  # four steps
    flat = lambda steps: [t for s in steps for t in s]  # noqa: E731
    for stage in range(4):
        batch = method.layout([e], [method.plan(e, stage)])
        assert unpadded(batch, 0) == e.question_ids + [bot] + [lat] * stage + [eot] + flat(e.step_ids[stage:]) + e.answer_ids
        labels = batch["labels"][0][batch["labels"][0] != -100].tolist()
        assert labels == flat(e.step_ids[stage:]) + e.answer_ids
    # Fewer steps than the stage: all steps removed, latents = #steps * c (or s*c with pad_latent_to_max).
    short = encoded[1]  # one step
    assert method.plan(short, 3) == Plan(1, 1)
    batch = method.layout([short], [method.plan(short, 3)])
    assert unpadded(batch, 0) == short.question_ids + [bot, lat, eot] + short.answer_ids
    padded, _ = make("gpt2-tiny", max_latent_stage=3, thoughts_per_step=2, pad_latent_to_max=True)
    assert padded.plan(short, 3) == Plan(6, 1) and padded.plan(e, 2) == Plan(4, 2)
    # Mixed batch: latent j is at the same column in every row; holes are masked and skipped by positions.
    batch = method.layout(encoded, [method.plan(x, 2) for x in encoded])
    start = batch["latent_start"]
    assert batch["latent_mask"].tolist() == [[True, True], [True, False], [True, True], [True, True]]
    assert (batch["input_ids"][:, start - 1] == bot).all()
    assert batch["attention_mask"][1, start + 1] == 0
    positions = batch["position_ids"][1][batch["attention_mask"][1].bool()]
    assert positions.tolist() == list(range(len(positions)))


def test_after_the_last_stage_every_step_is_removed() -> None:
    """As in the reference: stages 0..max keep steps[s:] as text; from max + 1 on (and at evaluation) none."""
    method, encoded = make("gpt2-tiny", max_latent_stage=2, thoughts_per_step=2)
    bot, eot, lat = method.ids["<bot>"], method.ids["<eot>"], method.ids["<latent>"]
    e = encoded[2]  # four steps, more than the last stage replaces
    flat = lambda steps: [t for s in steps for t in s]  # noqa: E731
    for epoch, (stage, text_steps) in enumerate([(0, e.step_ids), (1, e.step_ids[1:]), (2, e.step_ids[2:]), (3, []), (3, [])]):
        method.set_epoch(epoch)
        assert method.stage == stage
        batch = method.collate([e])
        assert unpadded(batch, 0) == e.question_ids + [bot] + [lat] * 2 * min(stage, 2) + [eot] + flat(text_steps) + e.answer_ids
        assert batch["labels"][0][batch["labels"][0] != -100].tolist() == flat(text_steps) + e.answer_ids
    # Every example at the final stage: min(#steps, max) * c latents, the answer right after <eot>.
    assert [method.plan(x, 3) for x in encoded] == [Plan(4, 2), Plan(2, 1), Plan(4, 4), Plan(4, 3)]
    padded, _ = make("gpt2-tiny", max_latent_stage=2, thoughts_per_step=2, pad_latent_to_max=True)
    assert [padded.plan(x, 3) for x in encoded] == [Plan(4, 2), Plan(4, 1), Plan(4, 4), Plan(4, 3)]


def test_generation_prompt_is_the_final_stage_training_prefix() -> None:
    """What generation feeds (question <bot> latents <eot>) is what the last stage trained on, and the
    training target after it is the answer alone: the model is never asked for steps it was not taught."""
    method, encoded = make("gpt2-tiny", max_latent_stage=2)
    method.set_epoch(100)
    train_batch = method.collate(encoded)
    prompt, plans = method.prompt_batch(encoded)
    assert plans == [method.plan(x, 3) for x in encoded]
    for row, example in enumerate(encoded):
        trained = unpadded(train_batch, row)
        assert trained == unpadded(prompt, row) + example.answer_ids
    with torch.no_grad():
        generation = method.generate(encoded, max_new_tokens=4)
    assert generation.latent_slots == [min(2, len(x.step_ids)) for x in encoded]


def test_set_epoch_returns_true_exactly_at_stage_changes() -> None:
    method, _ = make("gpt2-tiny", max_latent_stage=2, epochs_per_stage=2)
    changes = [method.set_epoch(epoch) for epoch in range(10)]
    # Stages 0, 0, 1, 1, 2, 2, then the final stage 3 (every step removed) from epoch 6 on.
    assert changes == [False, False, True, False, True, False, True, False, False, False]
    assert method.stage == 3
    method.set_epoch(3)  # resuming in the middle of the curriculum decides from the epoch alone
    assert method.stage == 1 and method.set_epoch(4) is True


def test_first_stage_skips_the_cot_stage_and_a_resume_decides_the_same() -> None:
    """coconut.first_stage = 1 (the reference's GSM8K run from a CoT checkpoint): epoch 0 already replaces the first
    step, every later stage comes one epoch earlier, and the curriculum's last stage and evaluation are unchanged."""
    method, encoded = make("gpt2-tiny", max_latent_stage=2, first_stage=1)
    changes = [method.set_epoch(epoch) for epoch in range(4)]
    assert [method.stage_at(epoch) for epoch in range(4)] == [1, 2, 3, 3]
    assert changes == [False, True, True, False]  # epoch 0 starts with fresh moments anyway
    method.set_epoch(0)
    method.train()
    plans = [method.plan(x, method.training_stage()) for x in encoded]
    assert [p.n_removed for p in plans] == [min(1, len(x.step_ids)) for x in encoded]
    assert method.eval_plans(encoded) == make("gpt2-tiny", max_latent_stage=2)[0].eval_plans(encoded)
    assert Coconut.identity_keys(method.config) == ("method.coconut.first_stage",)  # another configuration in reports
    assert Coconut.identity_keys(make("gpt2-tiny")[0].config) == ()  # unset: the identity of runs made before it
    config = load_config(None, ["method.name=coconut", "method.coconut.first_stage=1"])
    assert identity_parts(config, Coconut.identity_keys(config.method)) == ["first_stage=1"]  # model card title


def test_n_latents_sets_the_final_stage() -> None:
    method, encoded = make("gpt2-tiny", n_latents=4, thoughts_per_step=2, max_latent_stage=9, pad_latent_to_max=True)
    assert method.max_stage == 2 and method.n_latents == 4
    assert {p.n_latents for p in method.eval_plans(encoded)} == {4}
    with pytest.raises(Exception):
        make("gpt2-tiny", n_latents=3, thoughts_per_step=2)
    fixed, encoded = make("gpt2-tiny", n_latents=3, fixed_latents=True)
    assert fixed.set_epoch(5) is False
    assert all(p == Plan(3, len(e.step_ids)) for p, e in zip(fixed.eval_plans(encoded), encoded))


def test_mix_prob_samples_lower_stages_in_training_only() -> None:
    method, encoded = make("gpt2-tiny", max_latent_stage=3, mix_prob=0.5)
    method.set_epoch(3)
    method.train()
    random.seed(0)
    stages = [method.training_stage() for _ in range(400)]
    assert set(stages) == {0, 1, 2, 3}
    assert 0.4 < stages.count(3) / len(stages) < 0.6
    method.eval()
    batch = method.collate(encoded * 5)
    assert batch["latent_mask"].sum(1).tolist() == [min(3, len(e.step_ids)) for e in encoded * 5]
    never, _ = make("gpt2-tiny", max_latent_stage=3, mix_prob=0.0)
    never.set_epoch(2)
    never.train()
    assert {never.training_stage() for _ in range(50)} == {2}


def slow_reference(method: Coconut, example: EncodedExample, n_latents: int, max_new_tokens: int) -> list[int]:
    """One example, no cache, no padding: recompute the whole sequence for every thought and token."""
    ids = lambda xs: torch.tensor([xs])  # noqa: E731
    seq = method.embed(ids(example.question_ids + [method.ids["<bot>"]]))
    run = lambda s: lm_forward(method.model, s, torch.ones(1, s.shape[1], dtype=torch.long),  # noqa: E731
                               torch.arange(s.shape[1]).view(1, -1), output_hidden_states=True)
    for _ in range(n_latents):
        seq = torch.cat([seq, run(seq).hidden_states[-1][:, -1:]], 1)
    seq = torch.cat([seq, method.embed(ids([method.ids["<eot>"]]))], 1)
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(run(seq).logits[0, -1].argmax())
        if token == method.ids["eos"]:
            break
        out.append(token)
        seq = torch.cat([seq, method.embed(ids([token]))], 1)
    return out


def fit(method: Coconut, encoded: list[EncodedExample], steps: int) -> None:
    """A few optimizer steps at the final stage, so greedy outputs vary and stop at different lengths."""
    method.set_epoch(100)
    helpers.fit(method, encoded, steps)


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "qwen3-tiny"])
def test_generate_equals_slow_reference(backbone: str) -> None:
    method, encoded = make(backbone, max_latent_stage=3)  # k_i = min(3, #steps): 2, 1, 3, 3
    fit(method, encoded, 20)  # enough steps that rows differ and stop at different lengths on both backbones
    budget = 16
    with torch.no_grad():
        generation = method.generate(encoded, max_new_tokens=budget)
        plans = method.eval_plans(encoded)
        assert generation.latent_slots == [2, 1, 3, 3]
        assert len({tuple(t) for t in generation.token_ids}) > 1
        for row, (example, plan) in enumerate(zip(encoded, plans)):
            assert generation.token_ids[row] == slow_reference(method, example, plan.n_latents, budget)
            calls = len(generation.token_ids[row]) - (1 if len(generation.token_ids[row]) == budget else 0)
            assert generation.forward_passes[row] == plan.n_latents + 1 + calls
        traced = method.trace(encoded)
    assert traced.shape == (4, 3, method.dims.d_model)
    assert (traced[1, 1:] == 0).all()
    assert all(f > 0 for f in generation.flops)


def test_train_loss_decreases_and_state_dict_matches_cot() -> None:
    method, encoded = make("gpt2-tiny", max_latent_stage=2)
    assert all(k.startswith("model.") for k in method.state_dict())  # init_from a CoT run loads everything
    method.set_epoch(2)
    method.train()
    optimizer = torch.optim.AdamW(method.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = method(method.collate(encoded))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
