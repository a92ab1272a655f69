"""The one interface every latent-reasoning method implements, and the pieces they all share.

A method is an `nn.Module` owning its model(s) and trainable latent parameters:

    batch = method.collate(encoded_examples)      # method-specific layout (question | latents | steps | answer)
    loss = method(batch)                          # forward == loss, so DDP/FSDP can wrap the whole method
    out = method.generate(encoded_examples, n)    # batched, KV-cached greedy decoding + per-answer accounting
    z = method.trace(encoded_examples)            # [B, N_L, d] latent vectors for analysis

Curriculum methods change their layout with the epoch through `set_epoch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from latentreason.backbones import Backbone, count_parameters, embed_tokens, lm_forward, new_cache
from latentreason.config import MethodConfig
from latentreason.flops import ModelDims, decode_flops, prefix_decode_flops  # noqa: F401  (decode_flops: re-exported)
from latentreason.tokenization import EncodedExample, left_pad, positions_from_mask, right_pad, special_ids


@dataclass
class Generation:
    """Greedy answers for a batch plus what each answer cost."""

    token_ids: list[list[int]]
    """Generated tokens per example (prompt excluded, stopped at and excluding eos)."""
    forward_passes: list[int]
    """Sequential model calls each answer needed (prefill + latent passes + decode steps)."""
    latent_slots: list[int]
    """Latent vectors each answer used (N_L, Coconut thoughts, or loops beyond the first for looped)."""
    flops: list[float]
    """Analytic forward FLOPs per answer (the FLOP model in latentreason.flops)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Method-specific statistics (e.g. mean loops per token)."""


StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(inputs_embeds [B, t, d], attention_mask [B, past + t], position_ids [B, t]) -> logits [B, t, V]."""


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits at position i predict labels at i + 1 (-100 ignored)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


@torch.no_grad()
def greedy_decode(
    step: StepFn,
    embed: Callable[[torch.Tensor], torch.Tensor],
    first_logits: torch.Tensor,
    attention_mask: torch.Tensor,
    next_positions: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
) -> tuple[list[list[int]], list[int]]:
    """Batched greedy decoding on an already-filled cache.

    `first_logits` [B, V] are the logits after the prefix; each further token costs one cached call of
    `step`. Finished rows keep decoding pad-free until all rows hit eos (their output is cut at eos).
    Returns tokens per row and the number of decode calls each row actually needed.
    """
    batch = first_logits.shape[0]
    device = first_logits.device
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    logits = first_logits
    mask = attention_mask
    positions = next_positions.view(batch, 1).clone()
    for index in range(max_new_tokens):
        token = logits.argmax(-1)
        token = torch.where(finished, torch.full_like(token, eos_id), token)
        tokens.append(token)
        finished = finished | (token == eos_id)
        if bool(finished.all()) or index == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], dim=1)
        logits = step(embed(token.view(batch, 1)), mask, positions)[:, -1]
        positions = positions + 1
    generated = torch.stack(tokens, dim=1).tolist()
    out: list[list[int]] = []
    calls: list[int] = []
    for row in generated:
        cut = row.index(eos_id) if eos_id in row else len(row)
        out.append(row[:cut])
        calls.append(max(0, min(len(row), cut + 1) - 1))  # tokens after the first each needed one call
    return out, calls


class LatentMethod(nn.Module):
    """Base class: holds the backbone, special token ids and the shared prefix-then-decode path."""

    name: ClassVar[str] = ""

    # --- facts the rest of the code asks (so no method name is spelled outside methods/) -------------
    multi_pass: ClassVar[bool] = False
    """Runs every decoder layer several times per training step (FSDP2 then keeps those layers gathered)."""
    traces_normed: ClassVar[bool] = True
    """`trace()` returns states that already passed the final norm (else the logit lens applies it)."""
    reference_baseline: ClassVar[bool] = False
    """A no-latent reference (drawn as a horizontal line in accuracy-vs-N_L plots)."""
    identifying_keys: ClassVar[tuple[str, ...]] = ()
    """Config keys (flat, e.g. "method.looped.loops") that tell two configurations of this method apart
    beyond method.name and method.n_latents; for other methods these keys are noise."""
    trains_on_steps: ClassVar[bool] = True
    """Its training sequences contain the reasoning steps (as text, or replaced stage by stage)."""
    inserts_latent_slots: ClassVar[bool] = False
    """It places latent slots (plus at most two markers) between question and answer."""
    description: ClassVar[str] = ""
    """One paragraph for model cards (export.py): what the method is and where its weights are."""

    @classmethod
    def label(cls, config: MethodConfig) -> str:
        """Name of a configuration in tables and plots."""
        return cls.name

    @classmethod
    def identity_keys(cls, config: MethodConfig) -> tuple[str, ...]:
        """The identifying_keys that matter for this configuration (results.py compares configurations on
        them): all of them unless an option cannot change what trains (curriculum.py: thoughts per step at
        N_L = 0)."""
        return cls.identifying_keys

    @classmethod
    def latent_budget(cls, config: MethodConfig) -> int:
        """N_L of a configuration: the latent vectors one answer uses (Generation.latent_slots' convention)."""
        return config.n_latents

    @classmethod
    def uses_steps(cls, config: MethodConfig) -> bool:
        """Whether this configuration's training sequences contain the reasoning steps."""
        return cls.trains_on_steps

    @classmethod
    def replaces_steps(cls, config: MethodConfig) -> bool:
        """Whether training replaces the reasoning steps by latent slots stage by stage (a Coconut-style
        curriculum): the paper's curriculum regime, as opposed to answer-only training or a pretrained start."""
        return False

    @classmethod
    def control_overrides(cls, config: MethodConfig) -> dict[str, Any] | None:
        """Flat config keys that turn this latent configuration into its matched no-latent control (trained
        from the same start, for the same steps, on the same data: results.control_gains looks that cell up);
        None for a configuration without latents (it is a control); {} when no training could make a no-latent
        version differ from the start (a frozen Base), so the start run itself is the control. Default: the same
        configuration at N_L = 0."""
        return {"method.n_latents": 0} if cls.latent_budget(config) > 0 else None

    @classmethod
    def paced_control_overrides(cls, config: MethodConfig) -> dict[str, Any] | None:
        """A better-matched control than `control_overrides`'s, used when the sweep has it (curriculum.py: the
        N_L = 0 control that removes steps on the cell's schedule); None where there is none."""
        return None

    @classmethod
    def max_latent_positions(cls, config: MethodConfig) -> int:
        """Upper bound on the positions it adds between question and answer (latents and markers)."""
        return config.n_latents + 2 if cls.inserts_latent_slots else 0

    @classmethod
    def trace_slots(cls, config: MethodConfig) -> int:
        """Length of the slot axis of `trace()`'s [B, slots, d]: N_L unless the method says otherwise."""
        return cls.latent_budget(config)

    @classmethod
    def random_base_warning(cls, config: MethodConfig, backbone: str) -> str | None:
        """One warning line when this configuration freezes the backbone (the Base) and trains only what reads
        or writes for it, while that Base is the random from-scratch `backbone` (run_checks decides that it is
        random); None when the backbone trains."""
        return None

    def __init__(self, backbone: Backbone, config: MethodConfig):
        super().__init__()
        self.model = backbone.model
        self.tokenizer = backbone.tokenizer
        self.config = config
        self.ids = special_ids(backbone.tokenizer)
        self.dims = ModelDims.of(backbone.model)

    # --- the interface -------------------------------------------------------------------------------
    def collate(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(batch)

    def generate(self, examples: Sequence[EncodedExample], max_new_tokens: int) -> Generation:
        raise NotImplementedError

    def trace(self, examples: Sequence[EncodedExample]) -> torch.Tensor:
        """Latent vectors [B, N_L, d]; methods without latents return an empty slot axis."""
        return torch.zeros(len(examples), 0, self.dims.d_model)

    def set_epoch(self, epoch: int) -> bool:
        """Called at each epoch start; return True when the optimizer's moments should be reset (a new
        curriculum stage, if the method's config asks for it)."""
        return False

    def latent_models(self) -> dict[str, PreTrainedModel]:
        """Models whose final norm + LM head decode this method's latents (logit lens)."""
        return {"base": self.model}

    def parameter_counts(self) -> dict[str, int]:
        return count_parameters(self)

    # --- shared helpers --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return embed_tokens(self.model, ids)

    def model_step(self, cache: DynamicCache) -> StepFn:
        """A decode step function calling the backbone on `cache`."""
        return lambda embeds, mask, positions: lm_forward(self.model, embeds, mask, positions, cache).logits

    @torch.no_grad()
    def decode_after_prefix(
        self,
        prefix_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        cache: DynamicCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[list[list[int]], list[int]]:
        """Prefill a (left-padded) prefix on `cache` (fresh if None), then greedy-decode.

        `attention_mask` covers cached tokens + prefix. Returns tokens and decode calls per row.
        """
        cache = cache if cache is not None else new_cache(self.model)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)[:, -prefix_embeds.shape[1]:]
        logits = lm_forward(self.model, prefix_embeds, attention_mask, position_ids, cache, last_logits_only=True).logits[:, -1]
        return greedy_decode(
            self.model_step(cache), self.embed, logits, attention_mask, position_ids[:, -1] + 1,
            max_new_tokens, self.ids["eos"],
        )

    def question_answer_batch(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """Left-padded questions (so latent slots after them align across rows) and right-padded answers
        with their labels: the training batch of every method that supervises the answer only."""
        question_ids, question_mask = left_pad([e.question_ids for e in examples], self.ids["pad"])
        answer_ids, answer_mask = right_pad([e.answer_ids for e in examples], self.ids["pad"])
        labels = torch.where(answer_mask.bool(), answer_ids, torch.full_like(answer_ids, -100))
        return {"question_ids": question_ids, "question_mask": question_mask, "answer_ids": answer_ids,
                "answer_mask": answer_mask, "answer_labels": labels}

    def left_padded_prompts(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = left_pad(prompts, self.ids["pad"])
        return ids.to(self.device), mask.to(self.device)

    def prompt_only_generation(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, latent_slots: int = 0) -> Generation:
        """Generation for methods whose whole prefix is tokens: one prefill, then decoding."""
        ids, mask = self.left_padded_prompts(prompts)
        tokens, calls = self.decode_after_prefix(self.embed(ids), mask, max_new_tokens)
        flops = [prefix_decode_flops(self.dims, len(p), c) for p, c in zip(prompts, calls)]
        return Generation(tokens, [1 + c for c in calls], [latent_slots] * len(prompts), flops)
