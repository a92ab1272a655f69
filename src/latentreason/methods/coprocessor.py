"""Base + Coprocessor dual architecture: Liu et al. 2024 ("Deliberation in latent space via differentiable
cache augmentation") and two hypotheses about why it helps.

Every variant runs three separate passes, so the Base can never compute the latents itself:

    1. Base        over the (left-padded) question           -> question cache (DynamicCache)
    2. Coprocessor over N_L soft tokens, attending to a copy  -> Z [B, N_L, d] (its last-layer hidden states)
       of that cache, at positions q_len .. q_len + N_L - 1     and its own K/V at the N_L latent slots
    3. Base        reads the latents, then the answer          -> loss on answer tokens / greedy decoding

How step 3 reads the latents (the injection):

    embeddings (liu, h2):  Base input = Z at the latent slots (the Base computes its own K/V for them);
                           the last latent predicts the first answer token, exactly as in Liu's pretraining.
    kv         (h1, h2):   the Coprocessor's per-layer K/V at the latent slots are appended to the Base's
                           question cache at every layer (keys already rotated for their positions); the
                           Base then reads `<eot>` at position q_len + N_L, which predicts the first answer
                           token (no Base hidden state exists at a latent slot to predict it from).

Variants: `liu` and `h1` freeze the Base (gradients still flow *through* it into the Coprocessor);
`h2` trains both, fully or through LoRA adapters on the Base (PEFT, injected in place).

Loading: the Base is `model.*` (the same names as every other method), so a No-CoT checkpoint given as
`train.init_from` loads into the Base; when the checkpoint has no `coprocessor.*` weights and
`init: base`, the Coprocessor is initialised from the same checkpoint (see `load_state_dict`).
Pretraining on plain text lives in coprocessor_pretrain.py.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from latentreason.backbones import Backbone, body, count_parameters, lm_forward, new_cache
from latentreason.config import MethodConfig
from latentreason.errors import UserInputError
from latentreason.flops import ModelDims, decode_flops, forward_flops
from latentreason.methods.base import Generation, LatentMethod
from latentreason.tokenization import EncodedExample, positions_from_mask

VARIANTS = ("liu", "h1", "h2")
FROZEN_BASE_VARIANTS = ("liu", "h1")
"""Variants that train only the Coprocessor (and its soft tokens) over a frozen Base."""
INITS = ("base", "fresh")
INJECTIONS = ("embeddings", "kv")


def copy_cache(cache: DynamicCache, model: PreTrainedModel) -> DynamicCache:
    """A fresh DynamicCache holding `cache`'s per-layer K/V.

    Updating the copy concatenates into new tensors, so the source cache is never mutated and the Base's
    later pass still sees only its own question K/V.
    """
    fresh = new_cache(model)
    for index, layer in enumerate(cache.layers):
        fresh.update(layer.keys, layer.values, index)
    return fresh


def append_kv(cache: DynamicCache, source: DynamicCache, start: int) -> None:
    """Append, at every layer, `source`'s K/V from column `start` on to `cache` (h1's channel)."""
    for index, layer in enumerate(source.layers):
        cache.update(layer.keys[:, :, start:], layer.values[:, :, start:], index)


def add_lora(model: PreTrainedModel, rank: int) -> None:
    """Inject LoRA adapters into every linear layer of `model`, in place (the model stays an HF model,
    so it is still driven through lm_forward). PEFT leaves only the adapters trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2 stores linear weights transposed (Conv1D)
    )
    inject_adapter_in_model(config, model)


class Coprocessor(LatentMethod):
    """A frozen or trained Base plus a same-architecture Coprocessor that writes N_L latents for it."""

    name = "coprocessor"
    multi_pass = True
    trains_on_steps = False
    inserts_latent_slots = True
    identifying_keys = ("method.coprocessor.variant",)
    description = ("Base + Coprocessor (Liu et al. 2024): the Coprocessor (`coprocessor/`) reads the Base's question cache "
                   "and N_L soft tokens (`soft_tokens` in `latent_method.safetensors`) and writes N_L latents the Base "
                   "(this directory's model) reads before answering.")

    @classmethod
    def label(cls, config: MethodConfig) -> str:
        return f"coprocessor-{config.coprocessor.variant}"

    @classmethod
    def random_base_warning(cls, config: MethodConfig, backbone: str) -> str | None:
        variant = config.coprocessor.variant
        if variant not in FROZEN_BASE_VARIANTS:
            return None
        return (f"warning: method.coprocessor.variant={variant} freezes the Base, and this Base is a random {backbone} "
                "(no train.init_from): the Coprocessor learns to help a model that never learned the task; "
                "set train.init_from to a finished no_cot run")

    def __init__(self, backbone: Backbone, config: MethodConfig):
        super().__init__(backbone, config)
        cc = config.coprocessor
        for key, value, allowed in (("variant", cc.variant, VARIANTS), ("init", cc.init, INITS), ("injection", cc.injection, INJECTIONS)):
            if value not in allowed:
                raise UserInputError(f"method.coprocessor.{key}={value!r}; expected one of {list(allowed)}")
        if config.n_latents < 1:
            raise UserInputError(f"method.n_latents={config.n_latents}; the coprocessor needs at least 1 latent")
        if cc.lora_rank < 0 or (cc.lora_rank > 0 and cc.variant != "h2"):
            raise UserInputError(f"method.coprocessor.lora_rank={cc.lora_rank}; LoRA applies to the trained Base of h2 only")
        self.variant = cc.variant
        self.injection = {"liu": "embeddings", "h1": "kv"}.get(cc.variant, cc.injection)
        self.n_latents = config.n_latents

        # Same architecture as the Base: a copy of it, or the same config freshly initialised.
        if cc.init == "base":
            self.coprocessor = copy.deepcopy(self.model)
        else:
            self.coprocessor = type(self.model)(copy.deepcopy(self.model.config))
        scale = float(self.model.get_input_embeddings().weight.detach().float().std())
        self.soft_tokens = nn.Parameter(torch.randn(self.n_latents, self.dims.d_model) * scale)

        if self.variant in FROZEN_BASE_VARIANTS:
            self.model.requires_grad_(False)
        elif cc.lora_rank > 0:
            add_lora(self.model, cc.lora_rank)
            self.dims = ModelDims.of(self.model)  # unmerged adapters cost FLOPs too
        self.coprocessor_dims = ModelDims.of(self.coprocessor)
        self._freeze_unreachable()

    def _freeze_unreachable(self) -> None:
        """Freeze the Coprocessor parameters the loss never reaches, so trainable counts are honest.

        Always its token embeddings and LM head (it reads soft tokens and hands over hidden states or K/V);
        with kv injection also everything after the last layer's K/V projections. Found with one probe
        backward on a 1-token example (graph structure only: no weights or RNG state change).
        """
        eos = self.ids["eos"]
        probe = EncodedExample(question_ids=[eos], step_ids=[], answer_ids=[eos, eos], example=None)  # type: ignore[arg-type]
        with torch.random.fork_rng(devices=[]), torch.enable_grad():  # callers may build us under no_grad
            self.loss(self.collate([probe])).backward()
        for parameter in self.coprocessor.parameters():
            if parameter.grad is None:
                parameter.requires_grad_(False)
        self.zero_grad(set_to_none=True)

    # --- the three passes ------------------------------------------------------------------------------
    def question_cache(self, question_ids: torch.Tensor, question_mask: torch.Tensor) -> DynamicCache:
        """Pass 1: the Base over the left-padded question, filling a fresh cache (no logits needed)."""
        cache = new_cache(self.model)
        lm_forward(body(self.model), self.embed(question_ids), question_mask, positions_from_mask(question_mask), cache)
        return cache

    def latents(self, cache: DynamicCache, question_mask: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
        """Pass 2: the Coprocessor over the soft tokens, attending to a copy of the Base's question cache.

        Returns Z [B, N_L, d] and the Coprocessor's cache (question K/V + its own K/V at the latent slots,
        computed at positions q_len .. q_len + N_L - 1 so RoPE keys are already right for the Base).
        """
        batch = question_mask.shape[0]
        own = copy_cache(cache, self.coprocessor)
        soft = self.soft_tokens.unsqueeze(0).expand(batch, -1, -1)
        mask = torch.cat([question_mask, question_mask.new_ones(batch, self.n_latents)], dim=1)
        positions = positions_from_mask(mask)[:, -self.n_latents:]
        z = lm_forward(body(self.coprocessor), soft, mask, positions, own).last_hidden_state
        return z, own

    def lead_in(
        self, question_mask: torch.Tensor, cache: DynamicCache, z: torch.Tensor, coprocessor_cache: DynamicCache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the Base reads before the answer: embeddings [B, L, d] and the mask over cache + them.

        embeddings injection: L = N_L latents. kv injection: the latent K/V are appended to `cache` here
        and L = 1 (`<eot>`).
        """
        batch = question_mask.shape[0]
        latent_mask = question_mask.new_ones(batch, self.n_latents)
        if self.injection == "embeddings":
            return z, torch.cat([question_mask, latent_mask], dim=1)
        append_kv(cache, coprocessor_cache, start=question_mask.shape[1])
        eot = torch.full((batch, 1), self.ids["<eot>"], dtype=torch.long, device=question_mask.device)
        return self.embed(eot), torch.cat([question_mask, latent_mask, question_mask.new_ones(batch, 1)], dim=1)

    # --- training --------------------------------------------------------------------------------------
    def collate(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """Left-padded questions (latent slots align across rows) and right-padded answers; no CoT steps."""
        return self.question_answer_batch(examples)

    def answer_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, A, V] predicting each answer token (teacher forcing through the three passes)."""
        question_mask = batch["question_mask"]
        cache = self.question_cache(batch["question_ids"], question_mask)
        z, coprocessor_cache = self.latents(cache, question_mask)
        lead, lead_mask = self.lead_in(question_mask, cache, z, coprocessor_cache)
        embeds = torch.cat([lead, self.embed(batch["answer_ids"])], dim=1)
        mask = torch.cat([lead_mask, batch["answer_mask"]], dim=1)
        positions = positions_from_mask(mask)[:, -embeds.shape[1]:]
        logits = lm_forward(self.model, embeds, mask, positions, cache).logits
        first = lead.shape[1] - 1  # the last lead-in position predicts the first answer token
        return logits[:, first: first + batch["answer_ids"].shape[1]]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.answer_logits(batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["answer_labels"].reshape(-1), ignore_index=-100)

    # --- inference -------------------------------------------------------------------------------------
    def _prepare(self, examples: Sequence[EncodedExample]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Passes 1 and 2 plus the lead-in: (Base cache, lead-in embeds, mask over cache + lead-in, Z)."""
        question_ids, question_mask = self.left_padded_prompts([e.question_ids for e in examples])
        cache = self.question_cache(question_ids, question_mask)
        z, coprocessor_cache = self.latents(cache, question_mask)
        lead, mask = self.lead_in(question_mask, cache, z, coprocessor_cache)
        return cache, lead, mask, z

    @torch.no_grad()
    def generate(self, examples: Sequence[EncodedExample], max_new_tokens: int) -> Generation:
        cache, lead, mask, _ = self._prepare(examples)
        positions = positions_from_mask(mask)[:, -lead.shape[1]:]
        tokens, calls = self.decode_after_prefix(lead, mask, max_new_tokens, cache=cache, position_ids=positions)
        flops = [self.answer_flops(len(e.question_ids), c) for e, c in zip(examples, calls)]
        # Sequential calls: Base prefill, Coprocessor, Base lead-in, then one per further token.
        return Generation(tokens, [3 + c for c in calls], [self.n_latents] * len(examples), flops)

    def answer_flops(self, question_len: int, decode_calls: int) -> float:
        """Analytic FLOPs of one answer: the three passes with one head (the lead-in's last position), then
        decoding after the lead-in."""
        context = question_len + self.n_latents + (0 if self.injection == "embeddings" else 1)
        return self.three_pass_flops(question_len, 0, 1) + decode_flops(self.dims, context, decode_calls)

    def three_pass_flops(self, question_len: int, answer_tokens: int, head_tokens: int) -> float:
        """Forward FLOPs of the three passes for one example: Base prefill over the question (no head),
        Coprocessor over N_L tokens past the question (no head), Base over the lead-in (N_L latents, or
        <eot> after the injected K/V) plus `answer_tokens` teacher-forced tokens, with the head on
        `head_tokens` positions."""
        n, q = self.n_latents, question_len
        past = q if self.injection == "embeddings" else q + n  # kv: the latents' K/V are in the cache
        return (forward_flops(self.dims, q, 0, 0) + forward_flops(self.coprocessor_dims, n, q, 0)
                + forward_flops(self.dims, self.lead_in_length + answer_tokens, past, head_tokens))

    @property
    def lead_in_length(self) -> int:
        """Positions the Base reads between question and answer: the N_L latents, or `<eot>` (kv)."""
        return self.n_latents if self.injection == "embeddings" else 1

    @torch.no_grad()
    def base_read_states(self, examples: Sequence[EncodedExample]) -> torch.Tensor:
        """The Base's last-layer (final-normed) hidden states where it reads the latents, [B, L, d]: at the
        N_L latent slots (embeddings injection) or at `<eot>` (kv injection, L = 1: the Base has no state
        at a latent slot). The same passes as generation."""
        cache, lead, mask, _ = self._prepare(examples)
        positions = positions_from_mask(mask)[:, -lead.shape[1]:]
        return lm_forward(self.model, lead, mask, positions, cache, output_hidden_states=True).hidden_states[-1]

    @torch.no_grad()
    def trace(self, examples: Sequence[EncodedExample]) -> torch.Tensor:
        """Z [B, N_L, d]: the Coprocessor's last-layer hidden states at the latent slots."""
        _, _, _, z = self._prepare(examples)
        return z.float().cpu()

    def latent_models(self) -> dict[str, PreTrainedModel]:
        return {"base": self.model, "coprocessor": self.coprocessor}

    def parameter_counts(self) -> dict[str, int]:
        counts = count_parameters(self)
        counts["base"] = count_parameters(self.model)["total"]
        counts["coprocessor"] = count_parameters(self.coprocessor)["total"] + self.soft_tokens.numel()
        return counts

    # --- loading ---------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load, also accepting a plain-LM checkpoint (e.g. a No-CoT run's model.safetensors):

        - no `coprocessor.*` weights and `init: base`: the Coprocessor starts as a copy of that checkpoint's
          Base (so it is initialised from the trained Base, after loading, not from the random one);
        - Base with LoRA adapters: plain names map to PEFT's `base_layer` names and the adapters keep their
          fresh initialisation.
        """
        state = dict(state_dict)
        if self.config.coprocessor.init == "base" and not any(k.startswith("coprocessor.") for k in state):
            state.update({"coprocessor." + k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")})
        own = self.state_dict()
        lora_names = {k.replace(".base_layer.", "."): k for k in own if ".base_layer." in k}
        state = {lora_names.get(k, k) if k not in own else k: v for k, v in state.items()}
        for key, value in own.items():
            if ".lora_" in key and key not in state:
                state[key] = value
        return super().load_state_dict(state, strict=strict, assign=assign)
