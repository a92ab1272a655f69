"""The step-replacement curriculum of Coconut (Hao et al. 2024), shared by every method that runs one.

Stage s = 0 .. max_stage replaces the first s reasoning steps by latent slots (c per step); the remaining
steps stay as text targets. Stage 0 is CoT (the curriculum starts from CoT weights). After the last stage
(stage max_stage + 1, the "final" stage, which later epochs stay in) ALL remaining steps are removed, as the
reference implementation does (`n_skip_steps = 10000` once the scheduled stage exceeds max_latent_stage), so
the model is trained to answer right after its latents, exactly as it is evaluated.

Latents per example at stage s <= max_stage: min(s, #steps) * c, or s * c with `pad_latent_to_max`; at the
final stage: min(#steps, max_stage) * c, or max_stage * c with `pad_latent_to_max` (the reference's rule for
both). Methods with shared latent vectors (soft tokens) use `pad_latent_to_max`, so every row of a batch has
the same slots.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def final_stage(self) -> int:
        """The stage after the last one: every step removed. Evaluation always uses it."""
        return self.max_stage + 1

    def stage_at(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_stage, self.final_stage)

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
