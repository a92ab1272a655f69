"""Regional compile with a KV cache (training.compile_layers), checked with dynamo's "eager" backend: the same
graph capture and guards as on a GPU, without code generation, so it runs on CPU in seconds.

On an H200 (2026-12-04) a 12-layer Coconut needed 72 compiled variants of its one layer function, past dynamo's
limit of 8, so most layers silently ran uncompiled. The variants must not grow with depth, and compiled layers
must compute what eager ones do.
"""

from __future__ import annotations

import pytest
import torch
from test_method_contract import MAX_NEW_TOKENS, build, method_config
from torch._dynamo.utils import counters

from latentreason.training import compile_layers


def train_step_and_decode(method, encoded):
    loss = method(method.collate(encoded))
    loss.backward()
    with torch.no_grad():
        return loss.detach(), method.generate(encoded, MAX_NEW_TOKENS).token_ids


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name,section", [("coconut", {"n_latents": 2}),
                                          pytest.param("coprocessor", {"n_latents": 2, "coprocessor": {"variant": "h2"}}, marks=pytest.mark.slow)])
def test_compiled_variants_do_not_grow_with_depth(fresh_dynamo, name, section):
    graphs = {}
    for n_layer in (2, 4):
        torch._dynamo.reset()
        counters.clear()
        method, encoded = build(name, method_config(name, section), n_layer=n_layer)
        compile_layers(method, backend="eager")
        train_step_and_decode(method, encoded)
        graphs[n_layer] = counters["stats"]["unique_graphs"]
    assert graphs[2] > 0 and graphs[4] == graphs[2], graphs  # before the fix: 12 -> 24 for Coconut


def test_compiled_layers_compute_what_eager_layers_do(fresh_dynamo):
    eager, encoded = build("coconut", method_config("coconut", {"n_latents": 2}))
    compiled, _ = build("coconut", method_config("coconut", {"n_latents": 2}))
    compile_layers(compiled, backend="eager")
    expected_loss, expected_answers = train_step_and_decode(eager, encoded)
    loss, answers = train_step_and_decode(compiled, encoded)
    torch.testing.assert_close(loss, expected_loss)
    assert answers == expected_answers
    for (key, a), b in zip(eager.named_parameters(), compiled.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, msg=lambda m: f"{key}: {m}")
