"""Supervised baselines: No-CoT (question -> answer) and CoT (question -> steps -> answer)."""

from __future__ import annotations

from typing import Sequence

import torch

from latentreason.backbones import lm_forward
from latentreason.config import MethodConfig
from latentreason.methods.base import Generation, LatentMethod, causal_lm_loss
from latentreason.tokenization import EncodedExample, supervised_sequences


class CoT(LatentMethod):
    """Chain of thought: the model writes the reasoning steps in tokens before the answer."""

    name = "cot"
    use_steps = True
    reference_baseline = True
    description = "CoT baseline: the backbone is trained on question -> reasoning steps -> answer."

    @classmethod
    def uses_steps(cls, config: MethodConfig) -> bool:
        return cls.use_steps

    @classmethod
    def latent_budget(cls, config: MethodConfig) -> int:
        return 0

    def target_ids(self, example: EncodedExample) -> list[int]:
        steps = [t for step in example.step_ids for t in step] if self.use_steps else []
        return steps + example.answer_ids

    def collate(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        return supervised_sequences([e.question_ids for e in examples], [self.target_ids(e) for e in examples], self.ids["pad"])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        embeds = self.embed(batch["input_ids"])
        logits = lm_forward(self.model, embeds, batch["attention_mask"], batch["position_ids"]).logits
        return causal_lm_loss(logits, batch["labels"])

    def generate(self, examples: Sequence[EncodedExample], max_new_tokens: int) -> Generation:
        return self.prompt_only_generation([e.question_ids for e in examples], max_new_tokens)


class NoCoT(CoT):
    """Direct answer: trained on question -> answer only."""

    name = "no_cot"
    use_steps = False
    description = "No-CoT baseline: the backbone is trained to map a question straight to its answer."
