"""CUDA computes what the CPU computes (skipped where no GPU is visible; `benchmarks/gpu.sh` runs it on a lent one).

- Every configuration of the method contract, on the same weights on CPU and on CUDA in fp32 (TF32 off): the same
  loss and gradients to float tolerance, and the same greedy answers, forward-pass counts, latent slots and FLOPs.
- The same method trained a few fused-AdamW steps on CUDA under bf16 autocast (the training loop's GPU setting):
  finite losses, and a lower fp32 loss after the steps than before.
- The training loop end to end on CUDA (bf16 autocast, regional compile), one method per family: it learns,
  evaluates, and a killed-and-resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from test_foundation import tiny_run
from test_method_contract import CASES, MAX_NEW_TOKENS, build, case_id, method_config, tiny_backbone

import helpers
from latentreason.batching import to_device
from latentreason.methods import method_class

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 matmuls as fp32 (no TF32), so CPU and GPU differ only by summation order."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("backbone", ["llama-tiny", "gpt2-tiny"])
def test_cuda_matches_cpu(case, backbone):
    name, section = case
    config = method_config(name, section)
    on_cpu, encoded = build(name, config, backbone=backbone)
    helpers.fit(on_cpu, encoded, steps=8)  # away from the initial weights, so greedy answers are not one token
    on_gpu = copy.deepcopy(on_cpu).to(CUDA)

    # Loss and gradients in training mode.
    losses, grads = [], []
    for method, device in ((on_cpu, torch.device("cpu")), (on_gpu, CUDA)):
        method.train()
        method.zero_grad(set_to_none=True)
        loss = method(to_device(method.collate(encoded), device))
        loss.backward()
        losses.append(loss.detach().cpu())
        grads.append({n: p.grad.detach().cpu() for n, p in method.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-3, atol=1e-5, msg=lambda m: f"{key}: {m}")

    # Greedy answers and their accounting.
    on_cpu.eval()
    on_gpu.eval()
    with torch.no_grad():
        expected, got = on_cpu.generate(encoded, MAX_NEW_TOKENS), on_gpu.generate(encoded, MAX_NEW_TOKENS)
        traced = on_gpu.trace(encoded)
    assert got.token_ids == expected.token_ids
    assert got.forward_passes == expected.forward_passes and got.latent_slots == expected.latent_slots
    assert got.flops == pytest.approx(expected.flops)
    assert torch.isfinite(traced).all()  # trace hands its vectors back on the CPU, for the analyses
    torch.testing.assert_close(traced.cpu(), on_cpu.trace(encoded), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_methods_build_on_a_backbone_already_on_cuda(case):
    """A Base moved to the GPU before the method is built (as the benchmarks share one): building works (the
    Coprocessor's construction-time probe pass used to run on CPU tensors) and the method then trains there."""
    name, section = case
    config = method_config(name, section)
    backbone = tiny_backbone(0)
    backbone.model.to(CUDA)
    method = method_class(name)(backbone, config).to(CUDA)
    method.set_epoch(100)
    _, encoded = build(name, config)
    loss = method(to_device(method.collate(encoded), CUDA))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("section", [{"name": "coconut", "n_latents": 2},
                                     {"name": "coprocessor", "n_latents": 2, "coprocessor": {"variant": "h2"}}], ids=["coconut", "coprocessor-h2"])
def test_compiled_layers_with_a_cache_stay_compiled_at_twelve_layers(section):
    """Regional compile of a 12-layer stack called with a KV cache: dynamo specialises the layer per index and
    cache state; past its recompile limit it would quietly fall back to eager. Made to raise instead."""
    from latentreason.training import compile_layers

    name = section["name"]
    method, encoded = build(name, method_config(name, {k: v for k, v in section.items() if k != "name"}), n_layer=12)
    method.to(CUDA)
    compile_layers(method)
    dynamo = torch._dynamo.config
    flag = "fail_on_recompile_limit_hit" if hasattr(dynamo, "fail_on_recompile_limit_hit") else "fail_on_cache_limit_hit"
    before = getattr(dynamo, flag)
    setattr(dynamo, flag, True)
    try:
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                method(to_device(method.collate(encoded), CUDA)).backward()
            with torch.no_grad():
                method.generate(encoded, MAX_NEW_TOKENS)
    finally:
        setattr(dynamo, flag, before)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_bf16_autocast_steps_lower_the_loss_on_cuda(case):
    name, section = case
    method, encoded = build(name, method_config(name, section))
    method.to(CUDA).train()
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, fused=True)  # what the loop uses on CUDA
    batch = to_device(method.collate(encoded), CUDA)
    with torch.no_grad():
        before = method(batch).item()  # fp32: a frozen random Base (liu) moves its loss by < 1%, below bf16's noise
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = method(batch)
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = method(batch).item()
    assert after < before, (before, after)


LOOP_METHODS = [
    ["method.name=cot"],
    ["method.name=coconut", "method.n_latents=2"],
    ["method.name=soft_tokens", "method.n_latents=2"],
    ["method.name=coprocessor", "method.n_latents=2", "method.coprocessor.variant=h2"],
    ["method.name=looped", "method.looped.loops=2"],
]


@pytest.mark.parametrize("overrides", LOOP_METHODS, ids=[o[0].split("=")[1] + (f"-{o[-1].split('=')[1]}" if len(o) > 2 else "") for o in LOOP_METHODS])
def test_training_loop_on_cuda_with_bf16_and_compile(tmp_path, overrides):
    cfg = tiny_run(tmp_path, "train.precision=bf16", "train.compile=true", *overrides)
    from latentreason.training import train

    summary = train(cfg, progress=False)
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    losses = [r["loss"] for r in records if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["forward_passes_per_answer"] >= 1


def test_resume_on_cuda_equals_uninterrupted(tmp_path):
    """The checkpoint carries the CUDA state too (weights, fused-AdamW moments, RNG): bf16, two epochs, killed after 5 steps."""
    torch.use_deterministic_algorithms(True, warn_only=True)  # atomics in embedding backward would differ run to run
    try:
        helpers.resume_matches_uninterrupted(tiny_run(tmp_path / "a", "train.epochs=3", "train.precision=bf16"),
                                             tiny_run(tmp_path / "b", "train.epochs=3", "train.precision=bf16"))
    finally:
        torch.use_deterministic_algorithms(False)
