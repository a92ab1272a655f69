"""Unified soft-embedding baseline: N_L trainable input embeddings, one forward pass, jointly trained.

Layout of one training row (question left-padded, so the soft slots sit at the same columns in every row):

    after_question:  pad .. pad | question | z_1 .. z_N_L | answer pad ..
    prefix:          z_1 .. z_N_L | pad .. pad | question | answer pad ..

The soft slots are `nn.Parameter` vectors shared by every example (no per-example computation feeds them),
so the whole sequence is one forward pass; the loss covers the answer tokens only (no CoT steps).
With N_L = 0 this is exactly No-CoT (same loss, same generations; see tests/test_soft_tokens.py).

With `method.curriculum.enabled` (Coconut's curriculum, methods/curriculum.py, started from CoT weights),
stage k trains

    pad .. pad | question | z_1 .. z_kc | steps[k:] answer pad ..

(the first k*c soft slots in place of the first k steps, loss on the remaining steps and the answer): stage 0
is exactly CoT, and after the last stage (k > N_L / c) every step is removed and all N_L slots stand alone,
the answer-only layout above, which evaluation always uses.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from latentreason.backbones import Backbone, lm_forward
from latentreason.config import MethodConfig
from latentreason.errors import UserInputError
from latentreason.flops import prefix_decode_flops
from latentreason.methods.base import Generation, LatentMethod, causal_lm_loss
from latentreason.methods.curriculum import CURRICULUM_KEYS, CurriculumStages, stage_batch
from latentreason.tokenization import EncodedExample, positions_from_mask

PLACEMENTS = ("after_question", "prefix")


class SoftTokens(CurriculumStages, LatentMethod):
    """N_L trainable soft embeddings placed after the question (or before it) and trained with the model."""

    name = "soft_tokens"
    trains_on_steps = False
    inserts_latent_slots = True
    identifying_keys = CURRICULUM_KEYS
    description = ("Soft tokens: N_L trainable input embeddings placed after the question (in `latent_method.safetensors` "
                   "as `latents`), trained jointly with the backbone; one forward pass.")

    @classmethod
    def label(cls, config: MethodConfig) -> str:
        return cls.curriculum_label(cls.name, config)

    def __init__(self, backbone: Backbone, config: MethodConfig):
        super().__init__(backbone, config)
        if config.placement not in PLACEMENTS:
            raise UserInputError(f"method.placement={config.placement!r}; expected one of {list(PLACEMENTS)}")
        if config.n_latents < 0:
            raise UserInputError(f"method.n_latents={config.n_latents}; expected >= 0")
        self.n_latents = config.n_latents
        self.placement = config.placement
        # Same scale as the token embedding table, so the soft slots start "in distribution".
        scale = float(self.model.get_input_embeddings().weight.detach().float().std())
        self.latents = nn.Parameter(torch.randn(self.n_latents, self.dims.d_model) * scale)
        self.start_curriculum(config, self.n_latents)  # the slots are shared vectors: every row gets the stage's k*c

    # --- layout -----------------------------------------------------------------------------------------
    def prefix(self, examples: Sequence[EncodedExample]) -> tuple[torch.Tensor, torch.Tensor, slice]:
        """Embeddings [B, P, d] and mask [B, P] of question + soft slots, and the slots' column range."""
        ids, mask = self.left_padded_prompts([e.question_ids for e in examples])
        return self._with_latents(self.embed(ids), mask)

    def _with_latents(self, question_embeds: torch.Tensor, question_mask: torch.Tensor,
                      n_slots: int | None = None) -> tuple[torch.Tensor, torch.Tensor, slice]:
        """Question + the first `n_slots` soft slots (all N_L when None)."""
        batch, length = question_mask.shape
        n_slots = self.n_latents if n_slots is None else n_slots
        soft = self.latents[:n_slots].to(question_embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        ones = torch.ones(batch, n_slots, dtype=question_mask.dtype, device=question_mask.device)
        if self.placement == "prefix":
            return torch.cat([soft, question_embeds], 1), torch.cat([ones, question_mask], 1), slice(0, n_slots)
        return torch.cat([question_embeds, soft], 1), torch.cat([question_mask, ones], 1), slice(length, length + n_slots)

    # --- training ---------------------------------------------------------------------------------------
    def collate(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """Left-padded questions and right-padded answers; the soft slots are inserted in `loss`. Under the
        curriculum the "answer" part is the steps not yet replaced + the answer, and `n_slots` says how many
        soft slots the current stage inserts (the same for every row)."""
        if self.curriculum is None:
            return self.question_answer_batch(examples)
        return stage_batch(self.curriculum, self.stage, examples, self.ids["pad"])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        prefix_embeds, prefix_mask, _ = self._with_latents(self.embed(batch["question_ids"]), batch["question_mask"], batch.get("n_slots"))
        embeds = torch.cat([prefix_embeds, self.embed(batch["answer_ids"])], 1)
        mask = torch.cat([prefix_mask, batch["answer_mask"]], 1)
        labels = torch.cat([torch.full_like(prefix_mask, -100), batch["answer_labels"]], 1)
        logits = lm_forward(self.model, embeds, mask, positions_from_mask(mask)).logits
        return causal_lm_loss(logits, labels)

    # --- inference --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, examples: Sequence[EncodedExample], max_new_tokens: int) -> Generation:
        embeds, mask, _ = self.prefix(examples)
        tokens, calls = self.decode_after_prefix(embeds, mask, max_new_tokens)
        prompt = [len(e.question_ids) + self.n_latents for e in examples]
        flops = [prefix_decode_flops(self.dims, p, c) for p, c in zip(prompt, calls)]
        return Generation(tokens, [1 + c for c in calls], [self.n_latents] * len(examples), flops)

    @torch.no_grad()
    def trace(self, examples: Sequence[EncodedExample]) -> torch.Tensor:
        """Last-layer hidden states at the soft slots, [B, N_L, d] (what the answer reads from them)."""
        embeds, mask, slots = self.prefix(examples)
        out = lm_forward(self.model, embeds, mask, positions_from_mask(mask), output_hidden_states=True)
        return out.hidden_states[-1][:, slots].float().cpu()
