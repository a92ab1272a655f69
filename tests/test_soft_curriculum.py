"""Soft tokens with Coconut's step-replacement curriculum (method.curriculum): layouts at every stage, stage 0
is CoT, the final stage is the answer-only soft-token layout that generation uses, stage changes, config checks."""

from __future__ import annotations

import pytest
import torch

from latentreason.backbones import build_backbone
from latentreason.config import MethodConfig, ModelConfig, load_config
from latentreason.errors import UserInputError
from latentreason.methods.cot import CoT
from latentreason.methods.options import CurriculumConfig
from latentreason.methods.soft_tokens import SoftTokens
from latentreason.tasks import Example
from latentreason.tokenization import encode_examples

EXAMPLES = [
    Example("Numbers: 36 23 70. Target: 11.", ["36 + 23 = 59", "70 - 59 = 11"], "(70-(36+23))"),
    Example("Numbers: 5 8. Target: 40.", ["5 * 8 = 40"], "(5*8)"),
    Example("Numbers: 12 3 4 7 9. Target: 25.", ["12 / 3 = 4", "4 + 4 = 8", "8 + 9 = 17", "17 + 7 = 24"], "(((12/3)+4)+9)"),
]
CORPUS = [e.question for e in EXAMPLES] + [s for e in EXAMPLES for s in e.steps] + ["### " + e.answer for e in EXAMPLES]


def make(n_latents: int = 4, curriculum: bool = True, **options):
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone="gpt2-tiny", n_layer=2, n_embd=32, n_head=2), corpus=CORPUS)
    config = MethodConfig(name="soft_tokens", n_latents=n_latents, curriculum=CurriculumConfig(enabled=curriculum, **options))
    return SoftTokens(bb, config).eval(), bb, encode_examples(bb.tokenizer, EXAMPLES)


def flat(steps: list[list[int]]) -> list[int]:
    return [t for step in steps for t in step]


def rows(batch: dict, method: SoftTokens) -> list[tuple[list[int], int, list[int]]]:
    """(question, soft slots, supervised targets) of each row, padding removed."""
    out = []
    for row in range(batch["question_ids"].shape[0]):
        question = batch["question_ids"][row][batch["question_mask"][row].bool()].tolist()
        targets = batch["answer_labels"][row][batch["answer_labels"][row] != -100].tolist()
        out.append((question, batch["n_slots"], targets))
    return out


def test_layouts_at_every_stage_and_after_the_last() -> None:
    method, _, encoded = make(n_latents=4, thoughts_per_step=2)  # max stage 2
    assert method.curriculum.max_stage == 2
    for stage, (slots, kept) in enumerate([(0, 0), (2, 1), (4, 2)]):
        method.stage = stage
        for (question, n_slots, targets), e in zip(rows(method.collate(encoded), method), encoded):
            assert question == e.question_ids and n_slots == slots
            assert targets == flat(e.step_ids[min(kept, len(e.step_ids)):]) + e.answer_ids  # steps beyond the stage stay text
    for epoch in (6, 7, 100):  # after the last stage: every step removed, all N_L slots, as at evaluation
        method.set_epoch(epoch)
        assert method.stage == 3
        assert all(n == 4 and t == e.answer_ids for (_, n, t), e in zip(rows(method.collate(encoded), method), encoded))


def test_set_epoch_changes_stage_and_resets_at_boundaries() -> None:
    method, _, _ = make(n_latents=2, thoughts_per_step=1, epochs_per_stage=2)
    resets = [method.set_epoch(epoch) for epoch in range(9)]
    assert resets == [False, False, True, False, True, False, True, False, False]  # stages 0 0 1 1 2 2 3 3 3
    method.set_epoch(3)  # a resumed run decides from the epoch alone
    assert method.stage == 1
    kept, _, _ = make(n_latents=2, reset_optimizer=False)
    assert not any(kept.set_epoch(epoch) for epoch in range(5))
    plain, _, _ = make(n_latents=2, curriculum=False)
    assert plain.set_epoch(3) is False and plain.curriculum is None


def test_stage_zero_is_cot_and_the_final_stage_is_answer_only_soft_tokens() -> None:
    method, bb, encoded = make(n_latents=4, thoughts_per_step=2)
    cot = CoT(bb, MethodConfig(name="cot"))  # the same backbone: the CoT start the curriculum continues
    with torch.no_grad():
        method.set_epoch(0)
        torch.testing.assert_close(method(method.collate(encoded)), cot(cot.collate(encoded)), atol=1e-5, rtol=1e-5)
        method.set_epoch(10)
        plain = SoftTokens(bb, MethodConfig(name="soft_tokens", n_latents=4))
        plain.latents.data.copy_(method.latents.data)
        torch.testing.assert_close(method(method.collate(encoded)), plain(plain.collate(encoded)), atol=1e-6, rtol=1e-6)
        generated = method.generate(encoded, max_new_tokens=6)
    assert generated.latent_slots == [4, 4, 4]


def test_gradients_reach_only_the_slots_in_use() -> None:
    method, _, encoded = make(n_latents=4, thoughts_per_step=2)
    method.train()
    method.set_epoch(1)  # stage 1: the first c = 2 slots replace the first step
    method(method.collate(encoded)).backward()
    grad = method.latents.grad
    assert grad[:2].abs().sum() > 0 and grad[2:].abs().sum() == 0


def test_facts_and_config_checks() -> None:
    on = MethodConfig(name="soft_tokens", n_latents=4, curriculum=CurriculumConfig(enabled=True))
    assert SoftTokens.uses_steps(on) and SoftTokens.label(on) == "soft_tokens+curriculum"
    assert not SoftTokens.uses_steps(MethodConfig(name="soft_tokens", n_latents=4))
    load_config(None, ["method.name=soft_tokens", "method.n_latents=4", "method.curriculum.enabled=true"])
    for bad in (["method.name=coconut", "method.n_latents=4"],
                ["method.name=soft_tokens", "method.n_latents=4", "method.placement=prefix"],
                ["method.name=soft_tokens", "method.n_latents=3", "method.curriculum.thoughts_per_step=2"]):
        with pytest.raises(UserInputError, match="method"):
            load_config(None, [*bad, "method.curriculum.enabled=true"])


def test_without_latents_thoughts_per_step_changes_nothing_so_one_control_serves_every_setting() -> None:
    """At N_L = 0 every thoughts_per_step trains the same batches at every epoch (CoT, then answer-only), so the
    matched-control lookup (results._method_identity) ignores it there, and only there."""
    from latentreason.results import _method_identity

    batches = {}
    for c in (2, 4):
        method, _, encoded = make(n_latents=0, thoughts_per_step=c)
        batches[c] = []
        for epoch in range(5):
            method.set_epoch(epoch)
            batches[c].append({k: v.tolist() if torch.is_tensor(v) else v for k, v in method.collate(encoded).items()})
    assert batches[2] == batches[4]

    def identity(n_latents: int, c: int) -> tuple:
        return _method_identity({"method.name": "soft_tokens", "method.n_latents": n_latents,
                                 "method.curriculum.enabled": True, "method.curriculum.thoughts_per_step": c})

    assert identity(0, 2) == identity(0, 4)
    assert identity(8, 2) != identity(8, 4)


def test_a_paced_control_removes_the_steps_on_the_latent_cells_schedule_with_no_slot() -> None:
    """method.curriculum.control_stages at N_L = 0: at every epoch the control trains the same targets as the
    N_L = 4, c = 2 cell (stage k drops the first k steps), with no soft slot in their place; the plain N_L = 0
    control goes answer-only after one CoT epoch."""
    cell, _, encoded = make(n_latents=4, thoughts_per_step=2)
    paced, _, _ = make(n_latents=0, control_stages=2)
    plain, _, _ = make(n_latents=0)
    assert paced.curriculum.max_stage == 2 and plain.curriculum.max_stage == 0
    for epoch in range(5):
        for method in (cell, paced, plain):
            method.set_epoch(epoch)
        cell_rows, paced_rows, plain_rows = (rows(m.collate(encoded), m) for m in (cell, paced, plain))
        assert [t for _, _, t in paced_rows] == [t for _, _, t in cell_rows]
        assert all(n == 0 for _, n, _ in paced_rows) and cell_rows[0][1] == 2 * min(epoch, 2)
        answer_only = [t == e.answer_ids for (_, _, t), e in zip(plain_rows, encoded)]
        assert all(answer_only) == (epoch >= 1)
    assert paced.stage == paced.curriculum.final_stage == 3
    paced.train()
    assert torch.isfinite(paced.loss(paced.collate(encoded)))


def test_first_stage_moves_a_latent_cell_and_its_paced_control_together() -> None:
    """method.curriculum.first_stage = 1: the cell and its paced control both start by dropping the first step."""
    cell, _, encoded = make(n_latents=4, thoughts_per_step=2, first_stage=1)
    paced, _, _ = make(n_latents=0, control_stages=2, first_stage=1)
    for epoch in range(3):
        cell.set_epoch(epoch)
        paced.set_epoch(epoch)
        assert cell.stage == paced.stage == min(epoch + 1, 3)
        cell_rows, paced_rows = rows(cell.collate(encoded), cell), rows(paced.collate(encoded), paced)
        assert [t for _, _, t in paced_rows] == [t for _, _, t in cell_rows]
        assert cell_rows[0][1] == 2 * min(epoch + 1, 2)


def test_control_stages_only_at_n_latents_zero_with_a_curriculum_and_labels_the_control() -> None:
    paced = load_config(None, ["method.name=soft_tokens", "method.n_latents=0", "method.curriculum.enabled=true",
                               "method.curriculum.control_stages=3"]).method
    assert SoftTokens.label(paced) == "soft_tokens+curriculum(paced 3)"
    cell = MethodConfig(name="soft_tokens", n_latents=6, curriculum=CurriculumConfig(enabled=True, thoughts_per_step=2))
    assert SoftTokens.paced_control_overrides(cell) == {"method.n_latents": 0, "method.curriculum.control_stages": 3}
    assert SoftTokens.paced_control_overrides(MethodConfig(name="soft_tokens", n_latents=6)) is None
    for bad in (["method.n_latents=4", "method.curriculum.enabled=true"], ["method.n_latents=0"]):
        with pytest.raises(UserInputError, match="'method.curriculum.control_stages'"):
            load_config(None, ["method.name=soft_tokens", *bad, "method.curriculum.control_stages=2"])
