"""Every registered method through one contract (issue 12): what the training loop, evaluation, analysis and
checkpoints rely on, checked the same way for all of them on a tiny model.

- a finite loss whose gradient reaches every trainable parameter;
- `generate`: one entry per example in every Generation list, each answer within the token budget, at least
  one forward pass per generated token, finite positive FLOPs, latent slots within the method's N_L;
- `trace`: [B, trace_slots, d] (N_L slots, except looped's one state per loop), finite;
- state_dict round trip into a freshly initialised instance: the same loss and the same generations;
- N_L = 0: No-CoT where the method reduces to it, a clear UserInputError where it cannot run without latents.

A new method must add its configurations to CONFIGS and its N_L = 0 behaviour to ZERO_BUDGET (a test checks
that both cover the registry).
"""

from __future__ import annotations

import contextlib
import math
import typing
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

from helpers import fit
from latentreason.backbones import Backbone, build_backbone
from latentreason.config import MethodConfig, ModelConfig, from_dict, load_config
from latentreason.errors import UserInputError
from latentreason.methods import method_class
from latentreason.methods.options import MethodName
from latentreason.methods.registry import METHODS
from latentreason.tasks import Example
from latentreason.tokenization import encode_examples

EXAMPLES = [
    Example("Numbers: 36 23 70. Target: 11.", ["36 + 23 = 59", "70 - 59 = 11"], "(70-(36+23))"),
    Example("Numbers: 5 8. Target: 40.", ["5 * 8 = 40"], "(5*8)"),
    Example("Numbers: 12 3 4. Target: 8.", ["12 / 3 = 4", "4 + 4 = 8"], "((12/3)+4)"),
]
CORPUS = [e.question for e in EXAMPLES] + [s for e in EXAMPLES for s in e.steps] + ["### " + e.answer for e in EXAMPLES]
MAX_NEW_TOKENS = 6

CONFIGS: dict[str, list[dict[str, Any]]] = {
    "no_cot": [{}],
    "cot": [{}],
    "soft_tokens": [{"n_latents": 2}, {"n_latents": 2, "placement": "prefix"}],
    "coconut": [{"n_latents": 2}, {"n_latents": 0, "coconut": {"max_latent_stage": 2}}],  # N_L set by the curriculum
    "coprocessor": [{"n_latents": 2, "coprocessor": {"variant": variant}} for variant in ("liu", "h1", "h2")]
                   + [{"n_latents": 2, "coprocessor": {"variant": "h2", "injection": "kv"}}]
                   + [{"n_latents": 2, "coprocessor": {"variant": variant}, "curriculum": {"enabled": True}} for variant in ("h1", "h2")],
    "looped": [{"looped": {"loops": 3}}],
}
"""`method` sections (besides the name) each registered method is checked with."""

ZERO_BUDGET: dict[str, tuple[str, dict[str, Any]]] = {
    "soft_tokens": ("no_cot", {"n_latents": 0}),
    "looped": ("no_cot", {"looped": {"loops": 1, "use_steps": False}}),  # T = 1: one ordinary pass
    "coconut": ("zero_slots", {"n_latents": 0, "coconut": {"fixed_latents": True}}),  # <bot><eot>, no latent between
    "coprocessor": ("error", {"n_latents": 0}),
}
"""N_L = 0 behaviour of each method with a latent budget: `no_cot` (same loss and answers as No-CoT on the same
weights), `zero_slots` (runs, with no latent slot and an empty trace), or `error` (a UserInputError)."""

CASES = [(name, section) for name in METHODS for section in CONFIGS.get(name, [])]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, section = case
    details = "-".join(f"{k}={v}" for k, v in section.items() if not isinstance(v, dict))
    nested = "-".join(f"{k}={v}" for value in section.values() if isinstance(value, dict) for k, v in value.items())
    return "-".join(part for part in (name, details, nested) if part)


def method_config(name: str, section: dict[str, Any]) -> MethodConfig:
    """Through the loader, as a config file would give it (its Literal and Range checks included)."""
    return from_dict(MethodConfig, {"name": name, **section}, prefix="method.")


def tiny_backbone(seed: int, backbone: str = "llama-tiny", n_layer: int = 2):
    torch.manual_seed(seed)
    return build_backbone(ModelConfig(backbone=backbone, n_layer=n_layer, n_embd=32, n_head=2), corpus=CORPUS)


def build(name: str, config: MethodConfig, seed: int = 0, backbone: str = "llama-tiny", n_layer: int = 2):
    bb = tiny_backbone(seed, backbone, n_layer)
    torch.manual_seed(seed)
    method = method_class(name)(bb, config)
    method.set_epoch(100)  # a curriculum's final stage (the layout evaluation uses)
    return method, encode_examples(bb.tokenizer, EXAMPLES)


@contextlib.contextmanager
def head_positions(method: torch.nn.Module):
    """Collects, for every call of any LM head (output embedding) inside `method`, how many positions it ran on."""
    heads = {id(m.get_output_embeddings()): m.get_output_embeddings() for m in method.modules()
             if isinstance(m, PreTrainedModel) and m.get_output_embeddings() is not None}
    positions: list[int] = []
    hooks = [head.register_forward_hook(lambda _m, args, _out: positions.append(args[0].shape[-2] if args[0].ndim == 3 else 1)) for head in heads.values()]
    try:
        yield positions
    finally:
        for hook in hooks:
            hook.remove()


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    yield


# ----------------------------------------------------------------------------- the registry


def test_registry_names_match_classes_and_the_config_literal():
    assert set(typing.get_args(MethodName)) == set(METHODS)
    for name, cls in METHODS.items():
        assert cls.name == name and method_class(name) is cls
        assert cls.description, f"{name}: no description for model cards"
    with pytest.raises(UserInputError, match="unknown method 'telepathy'"):
        method_class("telepathy")


def test_every_method_is_covered_by_the_contract():
    assert set(CONFIGS) == set(METHODS), "add the new method's configurations to CONFIGS"
    with_budget = {name for name, cls in METHODS.items() if not cls.reference_baseline}
    assert set(ZERO_BUDGET) == with_budget, "add the new method's N_L = 0 behaviour to ZERO_BUDGET"


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_method_contract(case):
    name, section = case
    config = method_config(name, section)
    cls = method_class(name)
    budget = cls.latent_budget(config)
    method, encoded = build(name, config)

    # Loss: finite, and its gradient reaches every trainable parameter.
    method.train()
    loss = method(method.collate(encoded))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = {n: p for n, p in method.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    method.zero_grad(set_to_none=True)

    # Generation: one row per example in every list, within budgets.
    method.eval()
    with torch.no_grad():
        eval_loss = method(method.collate(encoded))
        with head_positions(method) as positions:
            generation = method.generate(encoded, MAX_NEW_TOKENS)
        traced = method.trace(encoded)
    # The LM head runs on one position per row per call, as the FLOP model counts it (flops.py): a prefill
    # that computed every position's logits cost GBs of memory at a 49k vocabulary (session 29).
    assert positions and max(positions) == 1, f"LM head ran on {max(positions)} positions in one call"
    rows = len(encoded)
    assert [len(generation.token_ids), len(generation.forward_passes), len(generation.latent_slots), len(generation.flops)] == [rows] * 4
    for tokens, passes, slots, flops in zip(generation.token_ids, generation.forward_passes, generation.latent_slots, generation.flops):
        assert len(tokens) <= MAX_NEW_TOKENS and all(isinstance(t, int) for t in tokens)
        assert passes >= max(1, len(tokens))  # the prefix pass, then one call per further token at least
        assert 0 <= slots <= budget
        assert math.isfinite(flops) and flops > 0

    # Trace: [B, slots, d], finite.
    assert tuple(traced.shape) == (rows, cls.trace_slots(config), method.dims.d_model)
    assert torch.isfinite(traced).all()

    # Checkpoint round trip: a freshly initialised instance given the state_dict computes the same thing.
    other, _ = build(name, config, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(method.state_dict().values(), other.state_dict().values()))
    other.load_state_dict(method.state_dict())
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(other.collate(encoded)), eval_loss, rtol=0, atol=0)
        assert other.generate(encoded, MAX_NEW_TOKENS).token_ids == generation.token_ids


@pytest.mark.parametrize("name", sorted(ZERO_BUDGET))
def test_zero_latent_budget(name):
    behaviour, section = ZERO_BUDGET[name]
    if behaviour == "error":
        with pytest.raises(UserInputError, match="'method.n_latents'"):
            load_config(None, [f"method.name={name}", *(f"method.{k}={v}" for k, v in section.items())])
        config = MethodConfig(name=name, **section)  # built directly, past the loader: the class refuses too
        with pytest.raises(UserInputError):
            build(name, config)
        return
    config = method_config(name, section)
    assert method_class(name).latent_budget(config) == 0
    method, encoded = build(name, config)
    fit(method, encoded, steps=8)  # away from the initial weights, so equal answers are not all one token
    with torch.no_grad():
        generation = method.generate(encoded, MAX_NEW_TOKENS)
        traced = method.trace(encoded)
    assert generation.latent_slots == [0] * len(encoded)
    if behaviour == "zero_slots":
        assert traced.shape[1] == 0
        return
    assert behaviour == "no_cot"
    same_weights = Backbone(method.model, method.tokenizer, from_scratch=True)
    no_cot = method_class("no_cot")(same_weights, MethodConfig(name="no_cot")).eval()
    with torch.no_grad():
        torch.testing.assert_close(method(method.collate(encoded)), no_cot(no_cot.collate(encoded)), atol=1e-5, rtol=1e-5)
        assert generation.token_ids == no_cot.generate(encoded, MAX_NEW_TOKENS).token_ids


def test_contract_holds_on_gpt2_learned_positions():
    """The contract's core on the other position scheme (GPT-2's learned table), one latent method per family."""
    for name, section in [("soft_tokens", {"n_latents": 2}), ("coconut", {"n_latents": 2}),
                          ("coprocessor", {"n_latents": 2, "coprocessor": {"variant": "h1"}}), ("looped", {"looped": {"loops": 2}})]:
        config = method_config(name, section)
        method, encoded = build(name, config, backbone="gpt2-tiny")
        method.train()
        loss = method(method.collate(encoded))
        loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for p in method.parameters() if p.requires_grad), name
        method.eval()
        with torch.no_grad():
            generation = method.generate(encoded, MAX_NEW_TOKENS)
            traced = method.trace(encoded)
        assert len(generation.token_ids) == len(encoded) and max(generation.latent_slots) <= method_class(name).latent_budget(config)
        assert tuple(traced.shape) == (len(encoded), method_class(name).trace_slots(config), method.dims.d_model), name
