"""The step-replacement curriculum of Coconut (Hao et al. 2024), shared by every method that runs one.

Stage s = 0 .. max_stage replaces the first s reasoning steps by latent slots (c per step); the remaining
steps stay as text targets. Stage 0 is CoT (the curriculum starts from CoT weights). After the last stage
(stage max_stage + 1, the "final" stage, which later epochs stay in) ALL remaining steps are removed, as the
reference implementation does (`n_skip_steps = 10000` once the scheduled stage exceeds max_latent_stage), so
the model is trained to answer right after its latents, exactly as it is evaluated.

Latents per example at stage s <= max_stage: min(s, #steps) * c, or s * c with `pad_latent_to_max`; at the
final stage: min(#steps, max_stage) * c, or max_stage * c with `pad_latent_to_max` (the reference's rule for
both). Methods with shared latent vectors (soft tokens, the Coprocessor's soft-token queries) use
`pad_latent_to_max`, so every row of a batch has the same slots.

`first_stage` > 0 skips the early stages: a method whose stage 0 would train nothing (a frozen Base whose
Coprocessor writes no latent at stage 0) starts at stage 1, and so does a run told to (`method.coconut.first_stage`,
`method.curriculum.first_stage`: its start is already a CoT model, as in the reference's GSM8K run).
`stage_batch` lays out the batch of a method that reads "question | latent slots | remaining steps + answer"
(soft tokens, the Coprocessor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from latentreason.tokenization import EncodedExample, left_pad, right_pad


@dataclass(frozen=True)
class Plan:
    """How one example is laid out at its stage."""

    n_latents: int
    """k: latent slots that take the removed steps' place."""
    n_removed: int
    """Reasoning steps replaced by the latents (the rest stay as text)."""


@dataclass(frozen=True)
class StepCurriculum:
    """Which stage an epoch trains and what a stage does to one example."""

    thoughts_per_step: int
    """c: latent slots per replaced step."""
    epochs_per_stage: int
    """Epochs spent at each stage (the final stage lasts until training ends)."""
    max_stage: int
    """The last stage that keeps text steps (N_L = max_stage * c latents at the final stage)."""
    reset_optimizer: bool = True
    """Fresh optimizer moments when an epoch starts a new stage."""
    pad_latent_to_max: bool = False
    """Latents = stage * c even where an example has fewer steps (max_stage * c at the final stage)."""
    first_stage: int = 0
    """The stage epoch 0 trains (0: CoT first, as Coconut; 1 where stage 0 would train nothing)."""

    @property
    def final_stage(self) -> int:
        """The stage after the last one: every step removed. Evaluation always uses it."""
        return self.max_stage + 1

    def stage_at(self, epoch: int) -> int:
        return min(self.first_stage + epoch // self.epochs_per_stage, self.final_stage)

    def resets_optimizer_at(self, epoch: int) -> bool:
        """True exactly when `epoch` starts a new stage and fresh moments are asked for. Depends on `epoch`
        alone, so a resumed run decides the same."""
        return self.reset_optimizer and epoch > 0 and self.stage_at(epoch) != self.stage_at(epoch - 1)

    def plan(self, n_steps: int, stage: int) -> Plan:
        """Latents and removed steps for an example with `n_steps` reasoning steps at `stage`."""
        c = self.thoughts_per_step
        if stage > self.max_stage:
            return Plan((self.max_stage if self.pad_latent_to_max else min(n_steps, self.max_stage)) * c, n_steps)
        removed = min(stage, n_steps)
        return Plan((stage if self.pad_latent_to_max else removed) * c, removed)


def stage_batch(curriculum: StepCurriculum, stage: int, examples: Sequence[EncodedExample], pad_id: int) -> dict:
    """The batch at `stage` of a method that puts its latent slots right after the question: left-padded
    questions (so the slots align across rows), right-padded targets = the steps not yet replaced + the answer,
    their labels, and `n_slots`, the latent slots of this stage (the same for every row: `pad_latent_to_max`)."""
    assert curriculum.pad_latent_to_max, "one slot count per batch needs pad_latent_to_max"
    plans = [curriculum.plan(len(e.step_ids), stage) for e in examples]
    targets = [[t for step in e.step_ids[p.n_removed:] for t in step] + e.answer_ids for e, p in zip(examples, plans)]
    question_ids, question_mask = left_pad([e.question_ids for e in examples], pad_id)
    target_ids, target_mask = right_pad(targets, pad_id)
    labels = torch.where(target_mask.bool(), target_ids, torch.full_like(target_ids, -100))
    return {"question_ids": question_ids, "question_mask": question_mask, "answer_ids": target_ids,
            "answer_mask": target_mask, "answer_labels": labels, "n_slots": plans[0].n_latents if plans else 0}


CURRICULUM_KEYS = ("method.curriculum.enabled", "method.curriculum.thoughts_per_step", "method.curriculum.epochs_per_stage",
                   "method.curriculum.first_stage", "method.curriculum.control_stages")
"""The `method.curriculum` keys that tell configurations apart (part of a method's identifying_keys)."""


class CurriculumStages:
    """What a method that may run `method.curriculum` shares (soft tokens, the dual models): `start_curriculum`
    sets `self.curriculum` (None without one) and `self.stage`, and the loop moves the stage through `set_epoch`."""

    curriculum: StepCurriculum | None
    stage: int

    @classmethod
    def identity_keys(cls, config) -> tuple[str, ...]:
        """Without latents no step gets slots, so every `thoughts_per_step` trains the same run
        (`epochs_per_stage` epochs of CoT, then every step removed): an N_L = 0 curriculum control serves the cells of
        every thoughts_per_step. `control_stages` exists only at N_L = 0 (a latent cell's stages are N_L / c).
        `first_stage` counts only when set (> 0), so runs made before it existed keep their identity and titles."""
        unused = {"method.curriculum.thoughts_per_step" if cls.latent_budget(config) == 0 else "method.curriculum.control_stages"}
        if not config.curriculum.first_stage:
            unused.add("method.curriculum.first_stage")
        return tuple(k for k in cls.identifying_keys if k not in unused)

    @classmethod
    def curriculum_label(cls, label: str, config) -> str:
        """`label` with the curriculum marked: "+curriculum", and "(paced K)" for a control paced over K stages."""
        if not config.curriculum.enabled:
            return label
        paced = config.curriculum.control_stages
        return f"{label}+curriculum" + (f"(paced {paced})" if paced else "")

    @classmethod
    def paced_control_overrides(cls, config) -> dict | None:
        """The no-latent control that removes the steps on this cell's schedule (N_L / c stages, nothing in their
        place), so it trains answer-only exactly as long as the cell; None without a curriculum or latents, or for a
        frozen Base (its control is the start)."""
        overrides = cls.control_overrides(config)
        if not overrides or not config.curriculum.enabled:
            return None
        return overrides | {"method.curriculum.control_stages": config.n_latents // config.curriculum.thoughts_per_step}

    @classmethod
    def uses_steps(cls, config) -> bool:
        return config.curriculum.enabled  # the curriculum trains on the steps it has not replaced yet

    @classmethod
    def replaces_steps(cls, config) -> bool:
        return config.curriculum.enabled

    def start_curriculum(self, config, n_latents: int, first_stage: int = 0) -> None:
        """The stage rules of `config.curriculum` over N_L = `n_latents` latents, with `pad_latent_to_max` (one slot
        count per batch: the first k of the N_L slots), and the final stage, which generation always uses. The first
        epoch trains the later of `first_stage` (the method's own minimum) and `curriculum.first_stage`."""
        cc = config.curriculum
        # A paced control (N_L = 0, control_stages K) runs K stages that remove steps with no slot in their place.
        slots_per_step = cc.thoughts_per_step if n_latents else 0
        stages = n_latents // cc.thoughts_per_step if n_latents else cc.control_stages
        self.curriculum = StepCurriculum(slots_per_step, cc.epochs_per_stage, stages, cc.reset_optimizer,
                                         pad_latent_to_max=True, first_stage=max(first_stage, cc.first_stage)) if cc.enabled else None
        self.stage = self.curriculum.final_stage if self.curriculum else 0

    def set_epoch(self, epoch: int) -> bool:
        """Enter the curriculum stage of `epoch` (no-op without a curriculum); True when a new stage starts and
        `method.curriculum.reset_optimizer` asks for fresh optimizer moments."""
        if self.curriculum is None:
            return False
        self.stage = self.curriculum.stage_at(epoch)
        return self.curriculum.resets_optimizer_at(epoch)
