"""Base + Coprocessor with Coconut's step-replacement curriculum (method.curriculum, issue 13 item 2a), every
variant: the stage plans (which tokens are targets, how many latents the Coprocessor writes), stage 0 is the
Base's CoT loss, masked latents at stage s are the Base's CoT loss without the replaced steps, the final stage
is the answer-only method evaluation uses, what trains (and what a frozen Base keeps), a resumed run crossing
stage boundaries, the sweep's grouping and the config checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import fit, resume_matches_uninterrupted
from latentreason.backbones import build_backbone
from latentreason.config import CoprocessorConfig, MethodConfig, ModelConfig, load_config
from latentreason.errors import UserInputError
from latentreason.methods import build_method
from latentreason.methods.coprocessor import Coprocessor
from latentreason.methods.cot import CoT
from latentreason.methods.options import CurriculumConfig
from latentreason.results import aggregate, method_label
from latentreason.tasks import Example
from latentreason.tokenization import encode_examples

EXAMPLES = [
    Example("Numbers: 36 23 70. Target: 11.", ["36 + 23 = 59", "70 - 59 = 11"], "(70-(36+23))"),
    Example("Numbers: 5 8. Target: 40.", ["5 * 8 = 40"], "(5*8)"),
    Example("Numbers: 12 3 4 7 9. Target: 25.", ["12 / 3 = 4", "4 + 4 = 8", "8 + 9 = 17", "17 + 7 = 24"], "(((12/3)+4)+9)"),
]
CORPUS = [e.question for e in EXAMPLES] + [s for e in EXAMPLES for s in e.steps] + ["### " + e.answer for e in EXAMPLES]

VARIANTS = [("liu", {}), ("h1", {}), ("h2", {}), ("h2", {"injection": "kv"})]
VARIANT_IDS = ["liu", "h1", "h2", "h2-kv"]
FROZEN = ("liu", "h1")


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    yield


def make(variant: str, options: dict[str, Any] | None = None, n_latents: int = 4, thoughts_per_step: int = 2,
         backbone: str = "llama-tiny", curriculum: bool = True):
    """A tiny Base + Coprocessor with the curriculum (N_L = 4, c = 2: stages 0, 1, 2, then the final stage 3);
    weights scaled up so logits are far from uniform and equalities between two computations mean something."""
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone=backbone, n_layer=2, n_embd=32, n_head=2), corpus=CORPUS)
    with torch.no_grad():
        for p in bb.model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    config = MethodConfig(name="coprocessor", n_latents=n_latents, coprocessor=CoprocessorConfig(variant=variant, **(options or {})),
                          curriculum=CurriculumConfig(enabled=curriculum, thoughts_per_step=thoughts_per_step))
    method = build_method(config, bb)
    assert isinstance(method, Coprocessor)
    return method.eval(), bb, encode_examples(bb.tokenizer, EXAMPLES)


def flat(steps: list[list[int]]) -> list[int]:
    return [t for step in steps for t in step]


def rows(batch: dict) -> list[tuple[list[int], list[int]]]:
    """(question, supervised targets) of each row, padding removed."""
    out = []
    for row in range(batch["question_ids"].shape[0]):
        question = batch["question_ids"][row][batch["question_mask"][row].bool()].tolist()
        out.append((question, batch["answer_labels"][row][batch["answer_labels"][row] != -100].tolist()))
    return out


def loss_at(method: Coprocessor, stage: int, encoded) -> torch.Tensor:
    method.stage = stage
    with torch.no_grad():
        return method(method.collate(encoded))


# ----------------------------------------------------------------------------- stage plans


@pytest.mark.parametrize("variant, options", VARIANTS, ids=VARIANT_IDS)
def test_stage_plans_per_variant(variant, options) -> None:
    method, _, encoded = make(variant, options)
    assert method.curriculum.max_stage == 2 and method.curriculum.final_stage == 3
    stages, resets = [], []
    for epoch in range(6):
        resets.append(method.set_epoch(epoch))
        stages.append(method.stage)
    if variant in FROZEN:  # stage 0 would train nothing of a frozen-Base variant: it starts at stage 1
        assert stages == [1, 2, 3, 3, 3, 3] and resets == [False, True, True, False, False, False]
    else:
        assert stages == [0, 1, 2, 3, 3, 3] and resets == [False, True, True, True, False, False]

    # Stage s: the Coprocessor writes s*c latents; the targets are the steps from s on, then the answer.
    # Final stage: all N_L latents, the answer alone (every remaining step removed, as at evaluation).
    for stage, slots, kept in [(0, 0, 0), (1, 2, 1), (2, 4, 2), (3, 4, None)]:
        method.stage = stage
        batch = method.collate(encoded)
        assert batch["n_slots"] == slots
        for (question, targets), e in zip(rows(batch), encoded):
            assert question == e.question_ids
            assert targets == (e.answer_ids if kept is None else flat(e.step_ids[kept:]) + e.answer_ids)
        with torch.no_grad():
            read, z = method.passes(batch["question_ids"], batch["question_mask"], batch["n_slots"])
        assert z.shape[:2] == (len(encoded), slots)
        lead_in = slots + 1 if method.injection == "embeddings" else 1  # kv: the latents sit in the cache
        assert read.embeds.shape[1] == lead_in and read.mask.shape[1] == batch["question_ids"].shape[1] + slots


# ----------------------------------------------------------------------------- what each stage computes


@pytest.mark.parametrize("backbone", ["llama-tiny", "gpt2-tiny"])
@pytest.mark.parametrize("variant, options", VARIANTS, ids=VARIANT_IDS)
def test_stage_zero_is_the_bases_cot_loss_and_masked_latents_drop_the_replaced_steps(variant, options, backbone) -> None:
    """Stage 0 (no latent; the neutral start re-feeds the last question token) is exactly the Base's CoT loss
    on question -> steps -> answer, for RoPE and learned positions. At stage s with the latents masked out, it
    is exactly the Base's CoT loss on question -> steps[s:] -> answer; unmasked, the latents change it."""
    method, bb, encoded = make(variant, options, backbone=backbone)
    cot = CoT(bb, MethodConfig(name="cot")).eval()  # the same Base object the method reads with
    with torch.no_grad():
        torch.testing.assert_close(loss_at(method, 0, encoded), cot(cot.collate(encoded)), atol=1e-5, rtol=1e-5)
        for stage in (1, 2):
            shortened = [dataclasses.replace(e, step_ids=e.step_ids[stage:]) for e in encoded]
            method.mask_latents = True
            masked = loss_at(method, stage, encoded)
            torch.testing.assert_close(masked, cot(cot.collate(shortened)), atol=1e-5, rtol=1e-5)
            method.mask_latents = False
            assert abs(float(loss_at(method, stage, encoded) - masked)) > 1e-4


@pytest.mark.parametrize("variant, options", VARIANTS, ids=VARIANT_IDS)
def test_final_stage_is_the_answer_only_method_and_evaluation_ignores_the_stage(variant, options) -> None:
    method, bb, encoded = make(variant, options)
    plain, _, _ = make(variant, options, curriculum=False)
    plain.load_state_dict(method.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loss_at(method, 3, encoded), plain(plain.collate(encoded)), atol=0, rtol=0)
        expected = plain.generate(encoded, max_new_tokens=6)
        method.set_epoch(0)  # training at an early stage: evaluation still reads all N_L latents
        generated = method.generate(encoded, max_new_tokens=6)
        assert generated.token_ids == expected.token_ids and generated.latent_slots == [4, 4, 4]
        torch.testing.assert_close(method.trace(encoded), plain.trace(encoded), atol=0, rtol=0)


def test_a_stage_computes_the_first_latents_of_the_final_stage() -> None:
    """The N_L soft-token queries are one fixed set: stage s's s*c latents are the first s*c of the N_L the
    final stage writes (the Coprocessor is causal), so the stages train the latents evaluation reads."""
    method, _, encoded = make("h1")
    batch = method.collate(encoded)
    with torch.no_grad():
        _, all_latents = method.passes(batch["question_ids"], batch["question_mask"])
        _, first_two = method.passes(batch["question_ids"], batch["question_mask"], 2)
    # float32 defaults (atol 1e-5): 2 and 4 query rows take different matmul kernels, which differ by ~6e-6 on
    # some CPUs; a wrong latent would differ by O(1).
    torch.testing.assert_close(first_two, all_latents[:, :2])


# ----------------------------------------------------------------------------- what trains


def parameters(method: Coprocessor, prefix: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.named_parameters() if n.startswith(prefix)}


@pytest.mark.parametrize("variant, options", VARIANTS, ids=VARIANT_IDS)
def test_what_trains_at_the_first_stage(variant, options) -> None:
    """Frozen-Base variants (first stage 1): the Coprocessor and the first c soft tokens learn, the Base never
    changes. h2 (first stage 0, CoT): the Base learns alone; the Coprocessor is not run, so it stays as it was."""
    method, _, encoded = make(variant, options)
    method.set_epoch(0)
    method.train()
    method(method.collate(encoded)).backward()
    grad = method.soft_tokens.grad
    if variant in FROZEN:
        assert method.stage == 1 and grad[:2].abs().sum() > 0 and grad[2:].abs().sum() == 0  # c = 2 slots in use
        assert all(p.grad is None for p in method.model.parameters())
    else:
        assert method.stage == 0 and grad is None and all(p.grad is None for p in method.coprocessor.parameters())
    method.zero_grad(set_to_none=True)

    before = {prefix: parameters(method, prefix) for prefix in ("model.", "coprocessor.", "soft_tokens")}
    fit(method, encoded, steps=3)
    changed = {prefix: {n for n, p in parameters(method, prefix).items() if not torch.equal(p, old[n])}
               for prefix, old in before.items()}
    if variant in FROZEN:
        assert not changed["model."] and changed["coprocessor."] and changed["soft_tokens"]
    else:
        assert changed["model."] and not changed["coprocessor."] and not changed["soft_tokens"]


# ----------------------------------------------------------------------------- the training loop


TINY = [
    "task.name=countdown", "task.branching=3", "task.train_size=16", "task.eval_size=4", "task.stream=false",
    "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=300",
    "method.name=coprocessor", "method.n_latents=2", "method.curriculum.enabled=true",
    "train.batch_size=4", "train.epochs=4", "train.warmup_steps=1", "train.lr=3e-3", "train.log_every=1", "eval.max_new_tokens=4",
]
"""4 steps per epoch, one epoch per stage, N_L = 2 with c = 1: stages 0 (h2 only), 1, 2, then every step removed."""


@pytest.mark.parametrize("variant, stop_after", [("h2", 4), ("h1", 6)])
def test_resumed_run_crosses_stage_boundaries_like_an_uninterrupted_one(tmp_path: Path, monkeypatch, variant, stop_after) -> None:
    """Stopped exactly at a stage boundary (h2, step 4: the resumed run makes the optimizer reset itself) or
    inside a stage (h1, step 6: the checkpoint carries the moments since the reset), then resumed through the
    later boundaries: bit-equal weights and losses."""
    monkeypatch.setattr("latentreason.training.plot_learning_curves", lambda *args, **kwargs: None)

    def tiny(name: str):
        return load_config(None, [*TINY, f"method.coprocessor.variant={variant}", f"out_dir={tmp_path / name}"])

    losses = resume_matches_uninterrupted(tiny("straight"), tiny("resumed"), stop_after=stop_after)
    assert len(losses) == 16 and all(torch.isfinite(torch.tensor(losses)))


# ----------------------------------------------------------------------------- facts, grouping, config checks


def test_facts_label_and_identifying_keys() -> None:
    on = MethodConfig(name="coprocessor", n_latents=4, coprocessor=CoprocessorConfig(variant="h1"), curriculum=CurriculumConfig(enabled=True))
    off = MethodConfig(name="coprocessor", n_latents=4, coprocessor=CoprocessorConfig(variant="h1"))
    assert Coprocessor.label(on) == "coprocessor-h1+curriculum" and Coprocessor.label(off) == "coprocessor-h1"
    assert Coprocessor.uses_steps(on) and not Coprocessor.uses_steps(off)
    assert {"method.curriculum.enabled", "method.curriculum.thoughts_per_step", "method.curriculum.epochs_per_stage"} <= set(Coprocessor.identifying_keys)


def test_the_sweep_keeps_curriculum_cells_apart_and_merges_seeds() -> None:
    def cell(seed: int, enabled: bool, epochs_per_stage: int = 1) -> dict[str, Any]:
        return {"run": f"h1_{seed}_{enabled}_{epochs_per_stage}", "task.name": "prosqa", "method.name": "coprocessor",
                "method.n_latents": 4, "method.coprocessor.variant": "h1", "method.curriculum.enabled": enabled,
                "method.curriculum.thoughts_per_step": 1, "method.curriculum.epochs_per_stage": epochs_per_stage,
                "train.seed": seed, "train.init_from": None, "accuracy": 0.5 + 0.1 * seed, "accuracy_ci95": [0.4, 0.6]}

    rows = [cell(seed, enabled) for seed in (0, 1) for enabled in (False, True)] + [cell(0, True, 2)]
    table = aggregate(rows)
    groups = {(e["method.curriculum.enabled"], e["method.curriculum.epochs_per_stage"]): e["seeds"] for e in table}
    assert groups == {(False, 1): 2, (True, 1): 2, (True, 2): 1}
    assert {method_label(r) for r in rows} == {"coprocessor-h1", "coprocessor-h1+curriculum"}


@pytest.mark.parametrize("variant", ["liu", "h1", "h2"])
def test_config_accepts_every_variant(variant) -> None:
    config = load_config(None, ["method.name=coprocessor", "method.n_latents=4", f"method.coprocessor.variant={variant}",
                                "method.curriculum.enabled=true", "method.curriculum.thoughts_per_step=2"])
    assert config.method.curriculum.enabled


@pytest.mark.parametrize("overrides, key", [
    (["method.name=looped"], "'method.curriculum.enabled'"),
    (["method.name=cot"], "'method.curriculum.enabled'"),
    (["method.name=coconut", "method.n_latents=4"], "'method.curriculum.enabled'"),
    (["method.name=coprocessor", "method.n_latents=3", "method.curriculum.thoughts_per_step=2"], "'method.n_latents'"),
])
def test_curriculum_where_it_cannot_run_is_a_user_error_naming_the_key(overrides, key) -> None:
    with pytest.raises(UserInputError, match=key):
        load_config(None, [*overrides, "method.curriculum.enabled=true"])


def test_model_card_title_names_the_curriculum_only_when_it_is_on() -> None:
    from latentreason.export import identity_parts

    def parts(*overrides: str) -> list[str]:
        config = load_config(None, ["method.name=coprocessor", "method.n_latents=2", "method.coprocessor.variant=h1", *overrides])
        return identity_parts(config, Coprocessor.identity_keys(config.method))

    assert parts() == ["h1"]
    assert parts("method.curriculum.enabled=true", "method.curriculum.thoughts_per_step=2") == [
        "h1", "curriculum.enabled=True", "curriculum.thoughts_per_step=2", "curriculum.epochs_per_stage=1"]


def test_h2_paced_control_at_n_latents_zero_drops_steps_without_running_the_coprocessor() -> None:
    """H2 at N_L = 0 with control_stages = 2 (the control paced like an N_L = 4, c = 2 cell): stage k trains the
    steps after the first k with no latent, and the loss is the Base's alone (the Coprocessor gets no gradient)."""
    method, _, encoded = make("h2", n_latents=0)
    paced = dataclasses.replace(method.config, curriculum=CurriculumConfig(enabled=True, control_stages=2))
    method.start_curriculum(paced, 0)
    assert method.curriculum.max_stage == 2
    method.train()
    for stage in range(4):
        method.stage = stage
        batch = method.collate(encoded)
        assert batch["n_slots"] == 0
        kept = [t for _, t in rows(batch)]
        removed = [len(e.step_ids) if stage > 2 else min(stage, len(e.step_ids)) for e in encoded]  # stage 3: all
        assert kept == [flat(e.step_ids[r:]) + e.answer_ids for e, r in zip(encoded, removed)]
        method.zero_grad()
        method(batch).backward()
        assert all(p.grad is None or not p.grad.any() for p in method.coprocessor.parameters())
