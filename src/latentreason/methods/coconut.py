"""Coconut: chain of continuous thought (Hao et al. 2024), with its step-replacement curriculum.

Sequence of one example at curriculum stage s:

    question <bot> [latent] x k <eot> steps[r:] answer

where the first r = min(s, #steps) reasoning steps are removed and k = r*c latent slots take their place
(c = thoughts_per_step; with `pad_latent_to_max` k = s*c even when fewer steps exist). After the last stage
(s > max_latent_stage) every remaining step is removed, as in the reference implementation, and evaluation
uses that layout (methods/curriculum.py holds the stage rules). The input embedding of a latent slot is the
last-layer hidden state at the position before it, so k latents need k+1 sequential passes. All passes share
ONE growing DynamicCache.

Batched layout (columns), which makes every pass a plain slice of one padded tensor:

    [0, L0)         question + <bot>, LEFT-padded: every row's <bot> is at column L0-1
    [L0, L0+K)      latent slot j at column L0+j; a row with k_i < K latents has K-k_i masked "holes"
                    (attention_mask 0, skipped by position ids) after its latents
    [L0+K, T)       <eot> + remaining steps + answer, right-padded

Passes: 0 runs [0, L0); pass j (1 <= j < K) runs column L0+j-1; the final pass runs [L0+K-1, T). The
first column of each pass after the first is filled out of place with
`torch.where(row_has_latent, previous_last_hidden, token_embedding)`, so no sequence is rebuilt per token.

Latent budget N_L (`method.n_latents`): the number of latent slots at the final stage. When N_L > 0 it
overrides the stage count: max_latent_stage = N_L / c (N_L must be a multiple of c). With
`coconut.fixed_latents` the curriculum is skipped: always N_L latents and no steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from latentreason.backbones import Backbone, body, lm_forward, new_cache
from latentreason.batching import to_device
from latentreason.config import MethodConfig
from latentreason.errors import UserInputError
from latentreason.flops import prefix_decode_flops
from latentreason.methods.base import Generation, LatentMethod, causal_lm_loss, greedy_decode
from latentreason.methods.curriculum import Plan, StepCurriculum
from latentreason.tokenization import EncodedExample, left_pad, positions_from_mask, right_pad


@dataclass
class ContinuousOutput:
    """Result of the multi-pass forward over a Coconut batch."""

    logits: list[torch.Tensor]
    """Logits of the final pass (the only ones the loss and decoding read); with `all_logits=True`, of
    every pass in column order (concatenate along dim 1 for the full [B, T, V])."""
    thoughts: torch.Tensor
    """[B, K, d] inputs placed in the latent slots (token embeddings at holes)."""
    cache: DynamicCache
    passes: int


class Coconut(LatentMethod):
    """Continuous thought: last hidden states fed back as the next inputs between <bot> and <eot>."""

    name = "coconut"
    multi_pass = True
    inserts_latent_slots = True
    identifying_keys = ("method.coconut.first_stage",)
    description = ("Coconut (Hao et al. 2024): the last hidden state is fed back as the next input embedding for N_L "
                   "continuous thoughts before the answer; the backbone holds every weight.")

    @classmethod
    def latent_budget(cls, config: MethodConfig) -> int:
        """method.n_latents, or with n_latents = 0 (and a curriculum) the final stage's max_latent_stage * c."""
        cc = config.coconut
        if cc.fixed_latents or config.n_latents:
            return config.n_latents
        return cc.max_latent_stage * cc.thoughts_per_step

    @classmethod
    def identity_keys(cls, config: MethodConfig) -> tuple[str, ...]:
        """`coconut.first_stage` tells configurations apart only when set (> 0): runs made before it keep theirs."""
        return cls.identifying_keys if config.coconut.first_stage else ()

    @classmethod
    def max_latent_positions(cls, config: MethodConfig) -> int:
        return cls.latent_budget(config) + 2  # the latents between <bot> and <eot>

    @classmethod
    def replaces_steps(cls, config: MethodConfig) -> bool:
        return not config.coconut.fixed_latents

    @classmethod
    def control_overrides(cls, config: MethodConfig) -> dict[str, Any] | None:
        """CoT continued from the same start (the CoT run) for the same steps: what the curriculum's extra
        training gives without any continuous thought."""
        return {"method.name": "cot"} if cls.latent_budget(config) > 0 else None

    def __init__(self, backbone: Backbone, config: MethodConfig):
        super().__init__(backbone, config)
        cc = config.coconut
        self.c = cc.thoughts_per_step
        if self.c < 1 or cc.epochs_per_stage < 1:
            raise UserInputError("method.coconut.thoughts_per_step and epochs_per_stage must be >= 1")
        if config.n_latents < 0:
            raise UserInputError(f"method.n_latents={config.n_latents}; expected >= 0")
        if config.n_latents > 0 and not cc.fixed_latents:
            if config.n_latents % self.c:
                raise UserInputError(
                    f"method.n_latents={config.n_latents} must be a multiple of coconut.thoughts_per_step={self.c} "
                    "(N_L = max_latent_stage * c at the final stage)"
                )
            self.max_stage = config.n_latents // self.c
        else:
            self.max_stage = cc.max_latent_stage
        self.n_latents = config.n_latents if cc.fixed_latents else self.max_stage * self.c
        """Latent slots at the final stage (an upper bound per example unless pad_latent_to_max/fixed)."""
        self.curriculum = StepCurriculum(self.c, cc.epochs_per_stage, self.max_stage, cc.reset_optimizer, cc.pad_latent_to_max,
                                         first_stage=cc.first_stage)
        self.stage = 0

    # --- curriculum -------------------------------------------------------------------------------------
    def stage_at(self, epoch: int) -> int:
        """Stage 0..max_stage, then the final stage max_stage + 1 (every step removed) from there on."""
        return self.curriculum.stage_at(epoch)

    def set_epoch(self, epoch: int) -> bool:
        """Enter the stage of `epoch`; True exactly when `epoch` starts a new stage (the final one included)
        and `coconut.reset_optimizer` asks for fresh Adam moments per stage, as in Coconut.

        Depends only on `epoch` (not on the previous call), so a resumed run makes the same decision.
        """
        self.stage = self.stage_at(epoch)
        return not self.config.coconut.fixed_latents and self.curriculum.resets_optimizer_at(epoch)

    def plan(self, example: EncodedExample, stage: int) -> Plan:
        """Latent count and removed steps for `example` at curriculum `stage`."""
        if self.config.coconut.fixed_latents:
            return Plan(self.config.n_latents, len(example.step_ids))
        return self.curriculum.plan(len(example.step_ids), stage)

    def training_stage(self) -> int:
        """The stage of one training example: the current one, or with prob mix_prob a random lower one."""
        mix = self.config.coconut.mix_prob
        if self.stage > 0 and mix > 0 and random.random() < mix:  # global RNG: seeded and checkpointed by the loop
            return random.randrange(self.stage)
        return self.stage

    # --- layout -----------------------------------------------------------------------------------------
    def layout(self, examples: Sequence[EncodedExample], plans: Sequence[Plan], with_targets: bool = True) -> dict[str, Any]:
        """The three-part batch described in the module docstring.

        With `with_targets` the right part holds <eot> + remaining steps + answer (labels on steps + answer);
        without, only <eot> (the generation prompt, so every row ends at the same column).
        """
        pad, width = self.ids["pad"], max([p.n_latents for p in plans], default=0)
        left_ids, left_mask = left_pad([e.question_ids + [self.ids["<bot>"]] for e in examples], pad)
        slot_mask = torch.tensor([[j < p.n_latents for j in range(width)] for p in plans], dtype=torch.bool).view(len(plans), width)
        slot_ids = torch.where(slot_mask, self.ids["<latent>"], pad)
        targets = [
            [t for step in e.step_ids[p.n_removed:] for t in step] + e.answer_ids if with_targets else []
            for e, p in zip(examples, plans)
        ]
        right_ids, right_mask = right_pad([[self.ids["<eot>"]] + t for t in targets], pad)
        labels = torch.full_like(right_ids, -100)
        for row, target in enumerate(targets):
            labels[row, 1: 1 + len(target)] = torch.tensor(target, dtype=torch.long)
        ids = torch.cat([left_ids, slot_ids, right_ids], 1)
        mask = torch.cat([left_mask, slot_mask.long(), right_mask], 1)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions_from_mask(mask),
            "labels": torch.cat([torch.full((len(plans), left_ids.shape[1] + width), -100, dtype=torch.long), labels], 1),
            "latent_mask": slot_mask,
            "latent_start": left_ids.shape[1],
        }

    def collate(self, examples: Sequence[EncodedExample]) -> dict[str, Any]:
        stage = lambda: self.training_stage() if self.training else self.stage  # noqa: E731
        return self.layout(examples, [self.plan(e, stage()) for e in examples])

    def eval_plans(self, examples: Sequence[EncodedExample]) -> list[Plan]:
        """Evaluation always uses the final stage (every step removed; its latents, or the fixed N_L)."""
        return [self.plan(e, self.curriculum.final_stage) for e in examples]

    # --- the multi-pass forward -------------------------------------------------------------------------
    def continuous_forward(self, batch: dict[str, Any], cache: DynamicCache | None = None, all_logits: bool = False,
                           last_logits_only: bool = False) -> ContinuousOutput:
        """K+1 sequential passes over one growing cache; returns the final pass's logits (every pass's with
        `all_logits`; only its last position's with `last_logits_only`, all decoding needs) and the thoughts.
        Passes before the last only need their last hidden state, so they run the decoder stack without the
        LM head."""
        embeds = self.embed(batch["input_ids"])
        mask, positions, has_latent = batch["attention_mask"], batch["position_ids"], batch["latent_mask"]
        start, width = batch["latent_start"], has_latent.shape[1]
        cache = cache if cache is not None else new_cache(self.model)
        if width == 0:  # no latent in any row (stage 0): one ordinary pass
            logits = lm_forward(self.model, embeds, mask, positions, cache, last_logits_only=last_logits_only).logits
            return ContinuousOutput([logits], embeds[:, start:start], cache, 1)
        bounds = [(0, start)] + [(start + j, start + j + 1) for j in range(width - 1)] + [(start + width - 1, embeds.shape[1])]
        logits_parts: list[torch.Tensor] = []
        thoughts: list[torch.Tensor] = []
        hidden = None
        for index, (lo, hi) in enumerate(bounds):
            x = embeds[:, lo:hi]
            if hidden is not None:
                # Column lo is latent slot index-1: the previous pass's last hidden state where the row has
                # that latent, the (masked) hole's token embedding otherwise. Out of place, autograd-friendly.
                thought = torch.where(has_latent[:, index - 1, None], hidden.to(x.dtype), x[:, 0])
                thoughts.append(thought)
                x = torch.cat([thought.unsqueeze(1), x[:, 1:]], 1)
            last = index == len(bounds) - 1
            if last or all_logits:
                out = lm_forward(self.model, x, mask[:, :hi], positions[:, lo:hi], cache, output_hidden_states=not last,
                                 last_logits_only=last and last_logits_only)
                logits_parts.append(out.logits)
                if not last:
                    hidden = out.hidden_states[-1][:, -1]
            else:
                hidden = lm_forward(body(self.model), x, mask[:, :hi], positions[:, lo:hi], cache).last_hidden_state[:, -1]
        return ContinuousOutput(logits_parts, torch.stack(thoughts, 1), cache, len(bounds))

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        out = self.continuous_forward(batch)
        final = out.logits[-1]  # labels start after <eot>, which the final pass covers
        return causal_lm_loss(final, batch["labels"][:, -final.shape[1]:])

    # --- inference --------------------------------------------------------------------------------------
    def prompt_batch(self, examples: Sequence[EncodedExample]) -> tuple[dict[str, Any], list[Plan]]:
        plans = self.eval_plans(examples)
        batch = self.layout(examples, plans, with_targets=False)
        return to_device(batch, self.device), plans

    @torch.no_grad()
    def generate(self, examples: Sequence[EncodedExample], max_new_tokens: int) -> Generation:
        """Continuous thoughts, then batched cached greedy decoding of the remaining steps + answer."""
        batch, plans = self.prompt_batch(examples)
        out = self.continuous_forward(batch, last_logits_only=True)
        positions = batch["position_ids"][:, -1] + 1
        tokens, calls = greedy_decode(
            self.model_step(out.cache), self.embed, out.logits[-1][:, -1], batch["attention_mask"], positions,
            max_new_tokens, self.ids["eos"],
        )
        passes, flops = [], []
        for example, plan, n_calls in zip(examples, plans, calls):
            # What this answer needs on its own: k+1 prefix passes (holes are batching overhead, not counted).
            # The prefix passes sum to one causal pass over question, <bot>, k latents, <eot>; only the last
            # pass's logits are used (latent passes need only hidden states).
            prompt = len(example.question_ids) + plan.n_latents + 2
            passes.append(plan.n_latents + 1 + n_calls)
            flops.append(prefix_decode_flops(self.dims, prompt, n_calls))
        return Generation(tokens, passes, [p.n_latents for p in plans], flops, {"batch_prefix_passes": out.passes})

    @torch.no_grad()
    def trace(self, examples: Sequence[EncodedExample]) -> torch.Tensor:
        """The continuous thoughts fed back as inputs, [B, N_L, d]; zeros where a row has fewer latents."""
        batch, _ = self.prompt_batch(examples)
        thoughts = self.continuous_forward(batch).thoughts
        thoughts = thoughts * batch["latent_mask"].unsqueeze(-1).to(thoughts.dtype)
        if thoughts.shape[1] < self.n_latents:  # pad the slot axis to N_L so traces of a run stack
            pad = thoughts.new_zeros(thoughts.shape[0], self.n_latents - thoughts.shape[1], thoughts.shape[2])
            thoughts = torch.cat([thoughts, pad], 1)
        return thoughts.float().cpu()
