"""Looped LM (Ouro-style): equivalences, Q-exit that stops computing, the loss and stage II."""

from __future__ import annotations

import math

import pytest
import torch

from latentreason.backbones import Backbone, build_backbone, lm_forward
from latentreason.config import LoopedConfig, MethodConfig, ModelConfig
from latentreason.methods import build_method
from latentreason.methods.base import causal_lm_loss
from latentreason.methods.looped import KV_POLICIES, Looped, exit_distribution, expected_loss, gate_targets
from latentreason.tasks import Example
from latentreason.tokenization import encode_examples

QUESTIONS = ["Numbers: 3 5 7. Target: 15.", "Numbers: 12 4. Target: 3.", "Is Sam a wumpus or a yumpus?"]
STEPS = [["3 + 5 = 8", "8 + 7 = 15"], ["12 / 4 = 3"], ["Sam is a wumpus."]]
ANSWERS = ["(3+5)+7", "12/4", "Sam is a wumpus."]
CORPUS = QUESTIONS + [s for steps in STEPS for s in steps] + ["### " + a for a in ANSWERS]
BACKBONES = ["gpt2-tiny", "qwen3-tiny", "llama-tiny"]

pytestmark = pytest.mark.usefixtures("one_thread")


def make(backbone: str = "gpt2-tiny", seed: int = 0, **looped) -> tuple[Looped, list]:
    torch.manual_seed(seed)
    bb = build_backbone(ModelConfig(backbone=backbone, n_layer=2, n_embd=32, n_head=2, tokenizer_vocab_size=300), corpus=CORPUS)
    method = build_method(MethodConfig(name="looped", looped=LoopedConfig(**looped)), bb)
    examples = encode_examples(bb.tokenizer, [Example(q, s, a) for q, s, a in zip(QUESTIONS, STEPS, ANSWERS)])
    return method.eval(), examples


def spread_gate(method: Looped, scale: float = 4.0, bias: float = 0.0) -> None:
    """A random, sharp gate so that tokens exit at different loops."""
    with torch.no_grad():
        method.gate.weight.normal_(0, scale)
        method.gate.bias.fill_(bias)


def calibrate_gate(method: Looped, examples, q: float, max_new: int) -> None:
    """Random sharp gate whose bias puts the median generated token right at the loop-1 exit threshold,
    so that some tokens exit at loop 1 and others continue (whatever the backbone)."""
    spread_gate(method)
    generated = method.decode(examples, max_new, exit_q=1.0).tokens
    with torch.no_grad():
        scores = []
        for example, tokens in zip(examples, generated):
            ids = torch.tensor([example.question_ids + tokens])
            states = method.loop_states(ids, torch.ones_like(ids), torch.arange(ids.shape[1]).view(1, -1))
            scores.append(method.gate(method.parts.norm(states[0][0, len(example.question_ids) - 1:])).squeeze(-1))
        # Cut halfway between the two middle scores, not on the median itself: a token sitting exactly on the
        # threshold exits one way or the other by float rounding (the cached and uncached paths disagreed).
        ordered = torch.cat(scores).sort().values
        middle = len(ordered) // 2
        method.gate.bias.fill_(math.log(q / (1 - q)) - float(ordered[middle - 1] + ordered[middle]) / 2)


@torch.no_grad()
def q_exit_reference(method: Looped, examples, max_new: int, q: float):
    """Uncached, unbatched: recompute every loop over the full sequence at each step, Q-exit the last position."""
    results = []
    for example in examples:
        ids = list(example.question_ids)
        tokens, logits_seq, exits = [], [], []
        for _ in range(max_new):
            x = torch.tensor([ids])
            states = method.loop_states(x, torch.ones_like(x), torch.arange(len(ids)).view(1, -1))
            exit_at = method.loops - 1
            if q < 1:
                survive = 1.0
                for t, h in enumerate(states[:-1]):
                    survive = survive * (1 - method.exit_lambda(h[:, -1]))
                    if float(1 - survive) >= q:  # same rule as decode: CDF(t) >= q
                        exit_at = t
                        break
            logits = method.logits(states[exit_at][0, -1])
            token = int(logits.argmax())
            tokens.append(token), logits_seq.append(logits), exits.append(exit_at + 1)
            if token == method.ids["eos"]:
                break
            ids.append(token)
        results.append((tokens, logits_seq, exits))
    return results


def assert_matches_reference(out, reference, eos: int) -> None:
    for row, (tokens, logits_seq, exits) in enumerate(reference):
        assert out.tokens[row] == [t for t in tokens if t != eos]
        assert out.exit_loops[row] == exits
        for step, logits in enumerate(logits_seq):
            torch.testing.assert_close(out.step_logits[step][row], logits, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("backbone", BACKBONES)
def test_one_loop_equals_plain_model(backbone):
    method, examples = make(backbone, loops=1)
    batch = method.collate(examples)  # right-padded, different lengths
    with torch.no_grad():
        states = method.loop_states(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        ours = method.logits(states[-1])
        hf = lm_forward(method.model, method.embed(batch["input_ids"]), batch["attention_mask"], batch["position_ids"]).logits
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(ours[real], hf[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(method.loss(batch), causal_lm_loss(hf, batch["labels"]), atol=1e-5, rtol=1e-5)
    # Decoding with one loop is the plain model's cached greedy decoding, with the same accounting as CoT.
    cot = build_method(MethodConfig(name="cot"), Backbone(method.model, method.tokenizer, from_scratch=True))
    plain, looped = cot.generate(examples, 8), method.generate(examples, 8)
    assert looped.token_ids == plain.token_ids
    assert looped.forward_passes == plain.forward_passes
    assert looped.flops == pytest.approx(plain.flops)
    assert looped.extra["mean_loops"] == 1 and looped.extra["flops_saved_fraction"] == pytest.approx(0)


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "qwen3-tiny"])
def test_q1_cached_equals_uncached_all_loops(backbone):
    method, examples = make(backbone, loops=3, exit_q=1.0)
    spread_gate(method, bias=30.0)  # a gate that wants to exit at loop 1: q = 1 must ignore it
    reference = q_exit_reference(method, examples, 7, q=1.0)
    for policy in KV_POLICIES:
        out = method.decode(examples, 7, kv_policy=policy)
        assert_matches_reference(out, reference, method.ids["eos"])
        assert all(loop == 3 for row in out.exit_loops for loop in row)
    gen = method.generate(examples, 7)
    assert gen.extra["mean_loops"] == 3 and gen.extra["flops_saved_fraction"] == pytest.approx(0)


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "llama-tiny"])
def test_recompute_q_exit_equals_uncached_q_exit(backbone):
    """recompute keeps every loop's K/V exact, so Q-exit decoding equals per-step full recomputation."""
    method, examples = make(backbone, seed=1, loops=3, kv_policy="recompute", exit_q=0.6)
    calibrate_gate(method, examples, 0.6, 7)
    batch_sizes: list[int] = []
    handle = method.parts.layers[0].register_forward_hook(lambda m, args, out: batch_sizes.append(args[0].shape[0]))
    out = method.decode(examples, 7)
    handle.remove()
    assert_matches_reference(out, q_exit_reference(method, examples, 7, q=0.6), method.ids["eos"])
    loops_used = {loop for row in out.exit_loops for loop in row}
    assert len(loops_used) > 1, "the test gate should make tokens exit at different loops"
    assert min(batch_sizes) < len(examples), "deeper loops should run on a sub-batch"


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "qwen3-tiny"])
def test_exit_at_loop_one_skips_deeper_layers(backbone):
    T, n_layer, max_new = 4, 2, 6
    method, examples = make(backbone, loops=T, exit_q=0.5)
    spread_gate(method, scale=0.0, bias=50.0)  # lambda_1 = 1: every token exits after loop 1
    calls = [0] * n_layer
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1)) for i, layer in enumerate(method.parts.layers)]
    for policy in KV_POLICIES:
        calls[:] = [0] * n_layer
        out = method.decode(examples, max_new, kv_policy=policy)
        decode_steps = len(out.step_logits) - 1
        assert calls == [T + decode_steps] * n_layer, policy  # prefill runs all loops; each decode step loop 1 only
        assert out.loops_run == [T + len(e) - 1 for e in out.exit_loops]
    for h in handles:
        h.remove()
    gen = method.generate(examples, max_new)
    assert gen.extra["mean_loops"] == 1
    assert gen.latent_slots == [0] * len(examples)
    assert 0 < gen.extra["flops_saved_fraction"] < 1


def test_mixed_exits_every_policy_saves_compute():
    method, examples = make("qwen3-tiny", seed=1, loops=3, exit_q=0.6)
    calibrate_gate(method, examples, 0.6, 7)
    full = method.decode(examples, 7, exit_q=1.0)
    for policy in KV_POLICIES:
        out = method.decode(examples, 7, kv_policy=policy)
        assert all(torch.isfinite(logits).all() for logits in out.step_logits)
        assert len({loop for row in out.exit_loops for loop in row}) > 1
        # The first token comes from the (full-depth) prefill, so it is the same under every policy.
        assert [row[:1] for row in out.tokens] == [row[:1] for row in full.tokens]
        assert sum(out.flops) < sum(full.flops) and sum(out.loops_run) < sum(full.loops_run)
        assert out.all_loops_flops[0] >= out.flops[0]


def test_trains_end_to_end(tmp_path):
    from latentreason.config import load_config
    from latentreason.finished_run import evaluate_run
    from latentreason.training import train

    cfg = load_config(None, [
        f"out_dir={tmp_path / 'run'}", "method.name=looped", "method.looped.loops=2", "task.name=countdown",
        "task.branching=3", "task.train_size=32", "task.eval_size=4", "train.batch_size=16", "train.epochs=1",
        "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=300", "eval.max_new_tokens=4",
    ])
    summary = train(cfg, progress=False)
    assert summary["mean_loops"] == 2 and summary["n"] == 4
    again = evaluate_run(tmp_path / "run", {"method": {"looped": {"exit_q": 0.5}}}, progress=False, eval_name="eval_q0.5")
    assert (tmp_path / "run" / "eval_q0.5" / "eval.json").exists() and 1 <= again["mean_loops"] <= 2


# ----------------------------------------------------------------------------- objectives


def test_loss_matches_hand_computation():
    lambdas = torch.tensor([0.5, 0.25])  # T = 3
    p = exit_distribution(lambdas)
    torch.testing.assert_close(p, torch.tensor([0.5, 0.5 * 0.25, 0.5 * 0.75]))
    ce = torch.tensor([2.0, 1.0, 0.5])
    entropy = -(0.5 * math.log(0.5) + 0.125 * math.log(0.125) + 0.375 * math.log(0.375))
    hand = 0.5 * 2.0 + 0.125 * 1.0 + 0.375 * 0.5 - 0.1 * entropy
    assert float(expected_loss(p, ce, beta=0.1)) == pytest.approx(hand, abs=1e-6)
    assert float(exit_distribution(torch.zeros(0)).sum()) == 1.0  # T = 1: all mass on the only loop
    # Stage II targets: gate after loop t exits when loop t+1 brings < threshold improvement.
    targets = gate_targets(torch.tensor([2.0, 1.0, 0.999]), threshold=0.005, slope=50.0)
    torch.testing.assert_close(targets, 1 - torch.sigmoid(torch.tensor([50 * (1.0 - 0.005), 50 * (0.001 - 0.005)])))


def test_method_loss_matches_per_token_hand_computation():
    method, examples = make(loops=3, entropy_beta=0.2)
    spread_gate(method, scale=1.0)
    batch = method.collate(examples[:2])
    with torch.no_grad():
        loss = float(method.loss(batch))
        states = method.loop_states(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        total, count = 0.0, 0
        for b in range(2):
            for i in range(batch["input_ids"].shape[1] - 1):
                label = int(batch["labels"][b, i + 1])
                if label == -100:
                    continue
                lam = [float(method.exit_lambda(h[b, i])) for h in states[:-1]]
                p = [lam[0], (1 - lam[0]) * lam[1], (1 - lam[0]) * (1 - lam[1])]
                ce = [float(-torch.log_softmax(method.logits(h[b, i]), -1)[label]) for h in states]
                entropy = -sum(x * math.log(x) for x in p if x > 0)
                total += sum(pi * ci for pi, ci in zip(p, ce)) - 0.2 * entropy
                count += 1
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_stage_two_trains_only_the_gate():
    method, examples = make(loops=3, stage=2)
    method.train()
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    gate_before = method.gate.weight.clone()
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in method.gate.parameters()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(3):
        loss = method(method.collate(examples))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in method.model.state_dict().items())
    assert not torch.equal(gate_before, method.gate.weight)


def test_trace_gives_one_state_per_loop():
    method, examples = make(loops=3)
    z = method.trace(examples)
    assert z.shape == (len(examples), 3, 32)
    assert not torch.allclose(z[:, 0], z[:, 1])


@pytest.mark.slow
def test_pretrained_smollm2_one_loop_equals_plain_model_and_two_loops_run():
    """The looped stack wraps a real pretrained LM (SmolLM2-135M, Llama layout, read offline from GGUF)."""
    pytest.importorskip("gguf")
    bb = build_backbone(ModelConfig(backbone="smollm2-135m"))
    examples = encode_examples(bb.tokenizer, [Example(q, s, a) for q, s, a in zip(QUESTIONS, STEPS, ANSWERS)])
    one = build_method(MethodConfig(name="looped", looped=LoopedConfig(loops=1)), bb).eval()
    batch = one.collate(examples)
    with torch.no_grad():
        ours = one.logits(one.loop_states(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[-1])
        hf = lm_forward(one.model, one.embed(batch["input_ids"]), batch["attention_mask"], batch["position_ids"]).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], hf[real], atol=1e-4, rtol=1e-4)
    two = build_method(MethodConfig(name="looped", looped=LoopedConfig(loops=2)), bb).eval()
    out = two.generate(examples[:1], 4)
    assert out.extra["mean_loops"] == 2 and len(out.token_ids[0]) <= 4
