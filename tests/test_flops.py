"""The one FLOP model (latentreason.flops): a hand count on tiny models, and every method's Generation.flops
and the benchmarks counting through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from latentreason.backbones import build_backbone
from latentreason.config import CoconutConfig, CoprocessorConfig, LoopedConfig, MethodConfig, ModelConfig
from latentreason.flops import ModelDims, decode_flops, forward_flops, head_flops, prefix_decode_flops, stack_flops, train_flops
from latentreason.methods import build_method
from latentreason.tasks.base import Example
from latentreason.tokenization import encode_examples

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Numbers: 3 5 7. Target: 15.", "Numbers: 12 4. Target: 3.", "Is Sam a wumpus or a yumpus?"]
STEPS = [["3 + 5 = 8", "8 + 7 = 15"], ["12 / 4 = 3"], ["Sam is a wumpus."]]
ANSWERS = ["(3+5)+7", "12/4", "Sam is a wumpus."]
CORPUS = QUESTIONS + [s for steps in STEPS for s in steps] + ["### " + a for a in ANSWERS]
L, D = 2, 32

pytestmark = pytest.mark.usefixtures("one_thread")


def backbone(name: str = "gpt2-tiny"):
    torch.manual_seed(0)
    return build_backbone(ModelConfig(backbone=name, n_layer=L, n_embd=D, n_head=2, tokenizer_vocab_size=300), corpus=CORPUS)


def method_and_examples(config: MethodConfig, name: str = "gpt2-tiny"):
    bb = backbone(name)
    method = build_method(config, bb).eval()
    return method, encode_examples(bb.tokenizer, [Example(q, s, a) for q, s, a in zip(QUESTIONS, STEPS, ANSWERS)])


# ----------------------------------------------------------------------------- the model against a hand count


@pytest.mark.parametrize("name, per_layer, final_norm", [
    # GPT-2 block: ln_1 + ln_2 (2d each), c_attn d x 3d + 3d, attn c_proj d x d + d, c_fc d x 4d + 4d, mlp c_proj 4d x d + d
    ("gpt2-tiny", 12 * D * D + 13 * D, 2 * D),
    # Llama block (tied head, n_kv_heads = n_head, no biases): q/k/v/o 4 d x d, gate/up/down 3 d x 4d, two RMSNorms
    ("llama-tiny", 16 * D * D + 2 * D, D),
])
def test_forward_flops_match_a_hand_count(name, per_layer, final_norm):
    bb = backbone(name)
    vocab = len(bb.tokenizer)
    dims = ModelDims.of(bb.model)
    assert (dims.n_layer, dims.d_model, dims.vocab_size) == (L, D, vocab)
    params = L * per_layer + final_norm  # token (and GPT-2 position) embeddings and the tied head excluded
    assert dims.n_params_layers == params
    # 5 new tokens after 3 cached ones: each pays 2 FLOPs per parameter; the 5 queries attend 4, 5, 6, 7, 8
    # keys (30 pairs), each pair 2 matmuls of 2d per layer; the head on 2 positions.
    by_hand = 2 * params * 5 + 4 * L * D * (4 + 5 + 6 + 7 + 8) + 2 * D * vocab * 2
    assert forward_flops(dims, 5, 3, 2) == by_hand
    assert stack_flops(dims, 5, 30) + head_flops(dims, 2) == by_hand
    assert train_flops(by_hand) == 3 * by_hand


def test_a_decoupled_head_width_counts_its_own_params_and_query_key_products():
    """model.head_dim: 4 heads of 16 at d = 32 (attention width 64, twice d). q/k/v project d -> 64 and o 64 -> d,
    so the block has 4 * 64 d + 12 d^2 + 2 d parameters, and each (query, key) pair costs 4 * 64 per layer."""
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone="llama-tiny", n_layer=L, n_embd=D, n_head=4, head_dim=16,
                                    tokenizer_vocab_size=300), corpus=CORPUS)
    assert bb.model.model.layers[0].self_attn.q_proj.weight.shape == (64, D)
    dims = ModelDims.of(bb.model)
    params = L * (4 * 64 * D + 12 * D * D + 2 * D) + D
    assert (dims.n_params_layers, dims.attention_width) == (params, 64)
    assert forward_flops(dims, 5, 3, 2) == 2 * params * 5 + 4 * L * 64 * 30 + 2 * D * len(bb.tokenizer) * 2
    with torch.no_grad():  # and the model runs
        assert bb.model(torch.tensor([[5, 6, 7]])).logits.shape[:2] == (1, 3)


def test_gpt2_tiny_refuses_a_head_dim_it_cannot_have():
    from latentreason.config import load_config
    from latentreason.errors import UserInputError
    with pytest.raises(UserInputError, match="model.head_dim"):
        load_config(None, ["model.backbone=gpt2-tiny", "model.n_embd=64", "model.n_head=4", "model.head_dim=32"])
    assert load_config(None, ["model.backbone=llama-tiny", "model.n_embd=96", "model.n_head=5",
                              "model.head_dim=32"]).model.head_dim == 32  # n_embd need not divide by n_head then


def test_decode_flops_is_the_sum_of_single_token_calls():
    dims = ModelDims.of(backbone().model)
    assert decode_flops(dims, 10, 0) == 0.0
    assert decode_flops(dims, 10, 5) == pytest.approx(sum(forward_flops(dims, 1, 10 + t, 1) for t in range(5)), rel=1e-12)
    # A looped stack without early exit: T stack passes per call, one head.
    looped = sum(3 * stack_flops(dims, 1, 10 + t + 1) + head_flops(dims, 1) for t in range(5))
    assert decode_flops(dims, 10, 5, stack_passes=3) == pytest.approx(looped, rel=1e-12)
    assert prefix_decode_flops(dims, 7, 4) == forward_flops(dims, 7, 0, 1) + decode_flops(dims, 7, 4)


# ----------------------------------------------------------------------------- every method counts through it


@pytest.mark.parametrize("config, inserted", [
    (MethodConfig(name="no_cot"), 0),
    (MethodConfig(name="cot"), 0),
    (MethodConfig(name="soft_tokens", n_latents=3), 3),
])
def test_single_pass_methods_count_prefix_then_decode(config, inserted):
    """A prefix (question + the slots the method inserts) in one causal pass with one head, then decoding."""
    method, examples = method_and_examples(config)
    generation = method.generate(examples, 6)
    assert any(passes > 1 for passes in generation.forward_passes)
    expected = [prefix_decode_flops(method.dims, len(e.question_ids) + inserted, passes - 1)
                for e, passes in zip(examples, generation.forward_passes)]
    assert generation.flops == expected


def test_coconut_counts_its_prefix_passes_as_one_causal_pass():
    method, examples = method_and_examples(MethodConfig(name="coconut", n_latents=2, coconut=CoconutConfig(thoughts_per_step=1)))
    method.set_epoch(10)  # the last stage: every example's steps become latents
    generation = method.generate(examples, 6)
    assert max(generation.latent_slots) > 0
    # passes = k latents + 1 prefix pass + decode calls; the prefix holds <bot>, k latents and <eot>.
    expected = [prefix_decode_flops(method.dims, len(e.question_ids) + k + 2, passes - k - 1)
                for e, k, passes in zip(examples, generation.latent_slots, generation.forward_passes)]
    assert generation.flops == expected


@pytest.mark.parametrize("variant, lora_rank", [("liu", 0), ("h1", 0), ("h2", 2)])
def test_coprocessor_counts_three_passes_then_decode(variant, lora_rank):
    method, examples = method_and_examples(
        MethodConfig(name="coprocessor", n_latents=3, coprocessor=CoprocessorConfig(variant=variant, lora_rank=lora_rank)))
    generation = method.generate(examples, 6)
    n, dims, cdims = 3, method.dims, method.coprocessor_dims
    if lora_rank:
        assert dims.n_params_layers > cdims.n_params_layers  # unmerged adapters are computed, so counted
    for e, passes, flops in zip(examples, generation.forward_passes, generation.flops):
        q, calls = len(e.question_ids), passes - 3
        base_and_coprocessor = forward_flops(dims, q, 0, 0) + forward_flops(cdims, n, q, 0)
        # Neutral start: the Base's cache keeps the question but its last token, which is re-fed after the latents.
        if method.injection == "embeddings":  # the Base reads the N_L latents, then the last question token
            lead_in, context = forward_flops(dims, n + 1, q - 1, 1), q + n
        else:  # the Base reads the last question token after the latents' K/V
            lead_in, context = forward_flops(dims, 1, q - 1 + n, 1), q + n
        assert flops == base_and_coprocessor + lead_in + decode_flops(dims, context, calls)
        # The training-step count the benchmarks use: the same passes, teacher-forcing 4 answer tokens.
        lead = n + 1 if method.injection == "embeddings" else 1
        assert method.three_pass_flops(q, 4, lead + 4) == base_and_coprocessor + forward_flops(dims, lead + 4, context - lead, lead + 4)


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_looped_without_early_exit_costs_all_loops(name):
    method, examples = method_and_examples(MethodConfig(name="looped", looped=LoopedConfig(loops=3, exit_q=1.0)), name)
    out = method.decode(examples, 6)
    dims, T = method.dims, 3
    for e, loops_run, flops, all_loops in zip(examples, out.loops_run, out.flops, out.all_loops_flops):
        q, calls = len(e.question_ids), loops_run // T - 1
        by_model = T * forward_flops(dims, q, 0, 0) + head_flops(dims, 1) + decode_flops(dims, q, calls, stack_passes=T)
        assert all_loops == by_model
        assert flops == pytest.approx(by_model, rel=1e-12)  # summed per loop and step, same count


def test_looped_with_one_loop_costs_what_the_plain_model_costs():
    looped, examples = method_and_examples(MethodConfig(name="looped", looped=LoopedConfig(loops=1)))
    out = looped.generate(examples, 6)
    expected = [prefix_decode_flops(looped.dims, len(e.question_ids), passes - 1) for e, passes in zip(examples, out.forward_passes)]
    assert out.flops == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- no second FLOP formula


def python_files() -> list[Path]:
    return sorted([*(ROOT / "src" / "latentreason").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


def test_only_the_flop_model_reads_the_dimensions_it_counts_with():
    """A FLOP formula needs ModelDims' per-token parameter count or the head's vocabulary: only flops.py
    may read them, so a second formula cannot appear unnoticed."""
    offenders = []
    for path in python_files():
        if path.name == "flops.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("n_params_layers", "vocab_size"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_benchmarks_count_flops_through_the_model():
    for name in ("bench_train.py", "bench_eval.py", "bench_latent_step.py", "bench_pretrain.py"):
        tree = ast.parse((ROOT / "benchmarks" / name).read_text())
        imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert any(module == "latentreason.flops" for module, _ in imported), name
        assert not any(alias in ("forward_flops", "decode_flops") and module != "latentreason.flops" for module, alias in imported), name
