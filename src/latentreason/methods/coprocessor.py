"""Base + Coprocessor dual architecture: Liu et al. 2024 ("Deliberation in latent space via differentiable
cache augmentation") and two hypotheses about why it helps.

Every variant runs three separate passes, so the Base can never compute the latents itself:

    1. Base        over the (left-padded) question           -> question cache (DynamicCache)
    2. Coprocessor over N_L soft tokens, attending to a copy  -> Z [B, N_L, d] (its last-layer hidden states)
       of that cache, at positions q_len .. q_len + N_L - 1     and its own K/V at the N_L latent slots
    3. Base        over the question cache minus its last     -> loss on answer tokens / greedy decoding
       token, then the latents, then the last question
       token again, then the answer

Step 3 is the neutral start (issue 13): the first answer token is read from the last question token, at its
own position q_len - 1, exactly where the Base (a No-CoT model) was trained to read it; the answer keeps its
positions q_len, q_len + 1, ... The latents sit between the cached question prefix and that re-fed token,
at the positions the Coprocessor wrote them at (q_len .. q_len + N_L - 1). So with latents the Base ignores
(`mask_latents`, or N_L = 0 where allowed) the method is exactly the Base on question + answer, for RoPE
and learned absolute positions alike (tests/test_neutral_start.py). The earlier design read the first answer
token from an untrained `<eot>` after the latents, which alone raised a frozen No-CoT Base's answer loss
from 1.19 to 2.40 on ProsQA.

How step 3 reads the latents (the injection):

    embeddings (liu, h2):  Base input = Z at the latent slots (the Base computes its own K/V for them), after
                           `latent_scale` (Z comes out of the Coprocessor's final norm, ~15x the norm of
                           token embeddings; `rms` rescales each latent to the embeddings' RMS).
    kv         (h1, h2):   the Coprocessor's per-layer K/V at the latent slots are appended to the Base's
                           question-prefix cache at every layer (keys already rotated for their positions).

Variants: `liu` and `h1` freeze the Base (gradients still flow *through* it into the Coprocessor);
`h2` trains both, fully or through LoRA adapters on the Base (PEFT, injected in place).

Curriculum (`method.curriculum.enabled`, Coconut's stages, methods/curriculum.py; the run starts from CoT
weights through train.init_from): stage s replaces the first s reasoning steps by k = s*c latents, and step 3
reads

    question[:-1] (cached) | z_1 .. z_k | last question token | steps[s:] answer

with the loss on the remaining steps and the answer (positions as above: the steps continue at q_len). The
Coprocessor's N_L soft-token queries are one fixed set and stage s uses the first k of them: the Coprocessor is
causal, so its first k latents are the same whether or not the later queries run, and stage s computes
exactly the first k of the N_L latents the final stage (and evaluation) computes. After the last stage
(s > N_L / c) every step is removed and all N_L latents are read: the answer-only layout that generation
always uses. Stage 0 (no latent) is exactly the Base's CoT loss. Liu and h1 freeze the Base, so stage 0
would train nothing: their curriculum starts at stage 1 (`StepCurriculum.first_stage`). h2 trains the
Base alone at stage 0 (the Coprocessor is not run; under DDP that needs train.find_unused_parameters).

Loading: the Base is `model.*` (the same names as every other method), so a No-CoT checkpoint given as
`train.init_from` loads into the Base; when the checkpoint has no `coprocessor.*` weights and
`init: base`, the Coprocessor is initialised from the same checkpoint (see `load_state_dict`).
Pretraining on plain text lives in coprocessor_pretrain.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from latentreason.backbones import Backbone, body, count_parameters, lm_forward, new_cache
from latentreason.batching import to_device
from latentreason.config import MethodConfig
from latentreason.errors import UserInputError
from latentreason.flops import ModelDims, decode_flops, forward_flops
from latentreason.methods.base import Generation, LatentMethod
from latentreason.methods.curriculum import CURRICULUM_KEYS, CurriculumStages, stage_batch
from latentreason.tokenization import EncodedExample, positions_from_mask

VARIANTS = ("liu", "h1", "h2")
FROZEN_BASE_VARIANTS = ("liu", "h1")
"""Variants that train only the Coprocessor (and its soft tokens) over a frozen Base."""
INITS = ("base", "fresh")
INJECTIONS = ("embeddings", "kv")
LATENT_SCALES = ("none", "rms", "learned")


def copy_cache(cache: DynamicCache, model: PreTrainedModel) -> DynamicCache:
    """A fresh DynamicCache holding `cache`'s per-layer K/V.

    Updating the copy concatenates into new tensors, so the source cache is never mutated and the Base's
    later pass still sees only its own question K/V.
    """
    fresh = new_cache(model)
    for index, layer in enumerate(cache.layers):
        fresh.update(layer.keys, layer.values, index)
    return fresh


def cache_prefix(cache: DynamicCache, model: PreTrainedModel, length: int) -> DynamicCache:
    """A fresh DynamicCache holding the first `length` positions of `cache` (the question minus its last
    token). Sliced views, so `cache` itself is left as it was."""
    prefix = new_cache(model)
    for index, layer in enumerate(cache.layers):
        prefix.update(layer.keys[:, :, :length], layer.values[:, :, :length], index)
    return prefix


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over the last axis, kept as a size-1 axis."""
    return x.float().pow(2).mean(-1, keepdim=True).sqrt().to(x.dtype)


@dataclass
class ReadIn:
    """Step 3's input before the answer: what the Base reads after the question prefix."""

    cache: DynamicCache
    """The Base's cache of the question minus its last token (+ the latents' K/V with kv injection)."""
    embeds: torch.Tensor
    """[B, L, d]: the latents then the last question token (embeddings, L = N_L + 1) or that token alone (kv)."""
    mask: torch.Tensor
    """[B, cached + L]: attention mask over cache + embeds (latent columns 0 when the latents are masked)."""
    positions: torch.Tensor
    """[B, L]: position ids of `embeds` (latents at the Coprocessor's slots, the last token at its own)."""
    next_position: torch.Tensor
    """[B]: position of the first answer token (= the question's length; the latents shift nothing)."""


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


class Coprocessor(CurriculumStages, LatentMethod):
    """A frozen or trained Base plus a same-architecture Coprocessor that writes N_L latents for it."""

    name = "coprocessor"
    multi_pass = True
    trains_on_steps = False
    inserts_latent_slots = True
    identifying_keys = ("method.coprocessor.variant", *CURRICULUM_KEYS)
    description = ("Base + Coprocessor (Liu et al. 2024): the Coprocessor (`coprocessor/`) reads the Base's question cache "
                   "and N_L soft tokens (`soft_tokens` in `latent_method.safetensors`) and writes N_L latents the Base "
                   "(this directory's model) reads before answering.")

    @classmethod
    def control_overrides(cls, config: MethodConfig) -> dict[str, Any] | None:
        """h2: the same configuration at N_L = 0 (the Base trained alone for the same steps). liu and H1 keep the
        Base frozen, so without latents nothing would train: their control is the start run itself ({})."""
        if cls.latent_budget(config) < 1:
            return None
        return {} if config.coprocessor.variant in FROZEN_BASE_VARIANTS else {"method.n_latents": 0}

    @classmethod
    def label(cls, config: MethodConfig) -> str:
        return cls.curriculum_label(f"coprocessor-{config.coprocessor.variant}", config)

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
        for key, value, allowed in (("variant", cc.variant, VARIANTS), ("init", cc.init, INITS), ("injection", cc.injection, INJECTIONS),
                                    ("latent_scale", cc.latent_scale, LATENT_SCALES)):
            if value not in allowed:
                raise UserInputError(f"method.coprocessor.{key}={value!r}; expected one of {list(allowed)}")
        if config.n_latents < 1 and cc.variant in FROZEN_BASE_VARIANTS:
            raise UserInputError(f"method.n_latents={config.n_latents}; the coprocessor needs at least 1 latent "
                                 f"(N_L = 0 only with variant h2, whose Base trains)")
        if cc.lora_rank < 0 or (cc.lora_rank > 0 and cc.variant != "h2"):
            raise UserInputError(f"method.coprocessor.lora_rank={cc.lora_rank}; LoRA applies to the trained Base of h2 only")
        self.variant = cc.variant
        self.injection = {"liu": "embeddings", "h1": "kv"}.get(cc.variant, cc.injection)
        self.traces_normed = self.injection == "embeddings"  # kv: Z is the pre-norm input of the top layer
        self.n_latents = config.n_latents
        self.latent_scale = cc.latent_scale
        self.mask_latents = False
        """Diagnostic switch (tests/test_neutral_start.py): True sets the latents' attention-mask columns to 0,
        so the Base reads nothing from them and the method computes exactly the Base on question + answer."""

        # Same architecture as the Base: a copy of it, or the same config freshly initialised.
        if cc.init == "base":
            self.coprocessor = copy.deepcopy(self.model)
        else:
            self.coprocessor = type(self.model)(copy.deepcopy(self.model.config))
        scale = float(self.model.get_input_embeddings().weight.detach().float().std())
        self.soft_tokens = nn.Parameter(torch.randn(self.n_latents, self.dims.d_model) * scale)
        if self.latent_scale == "learned" and self.injection == "embeddings":
            # A gain on the RMS-matched latents, log-parametrised: exp(0) = 1 starts exactly at `rms`.
            self.latent_log_gain = nn.Parameter(torch.zeros(()))

        if self.variant in FROZEN_BASE_VARIANTS:
            self.model.requires_grad_(False)
        elif cc.lora_rank > 0:
            add_lora(self.model, cc.lora_rank)
            self.dims = ModelDims.of(self.model)  # unmerged adapters cost FLOPs too
        self.coprocessor_dims = ModelDims.of(self.coprocessor)
        # Frozen-Base variants start at stage 1: at stage 0 nothing they train is reached.
        self.start_curriculum(config, self.n_latents, first_stage=1 if self.variant in FROZEN_BASE_VARIANTS else 0)
        # A Base already on a GPU: the parameters made here join it, so the probe pass below runs on one device.
        self.to(next(self.model.parameters()).device)
        self._freeze_unreachable()

    def _freeze_unreachable(self) -> None:
        """Freeze the Coprocessor parameters the loss never reaches, so trainable counts are honest.

        Always its token embeddings and LM head (it reads soft tokens and hands over hidden states or K/V);
        with kv injection also everything after the last layer's K/V projections. Found with one probe
        backward on a 2-token question (graph structure only: no weights or RNG state change).
        """
        eos = self.ids["eos"]
        probe = EncodedExample(question_ids=[eos, eos], step_ids=[], answer_ids=[eos, eos], example=None)  # type: ignore[arg-type]
        stage, self.stage = self.stage, self.curriculum.final_stage if self.curriculum else 0  # every latent in use
        with torch.random.fork_rng(devices=[]), torch.enable_grad():  # callers may build us under no_grad
            self.loss(to_device(self.collate([probe]), self.device)).backward()
        self.stage = stage
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

    def latents(self, cache: DynamicCache, question_mask: torch.Tensor, n_slots: int | None = None) -> tuple[torch.Tensor, DynamicCache]:
        """Pass 2: the Coprocessor over the soft tokens (the first `n_slots` of them, all N_L when None: a
        curriculum stage), attending to a copy of the Base's question cache.

        Returns Z [B, N_L, d] (embeddings injection: after `latent_scale`, what the Base reads) and the
        Coprocessor's cache (question K/V + its own K/V at the latent slots, computed at positions
        q_len .. q_len + N_L - 1 so RoPE keys are already right for the Base). N_L = 0 skips the pass.
        """
        batch, k = question_mask.shape[0], self.n_latents if n_slots is None else n_slots
        own = copy_cache(cache, self.coprocessor)
        if k == 0:
            return self.soft_tokens.new_zeros(batch, 0, self.dims.d_model), own
        soft = self.soft_tokens[:k].unsqueeze(0).expand(batch, -1, -1)
        mask = torch.cat([question_mask, question_mask.new_ones(batch, k)], dim=1)
        positions = positions_from_mask(mask)[:, -k:]
        if self.injection == "embeddings":
            z = lm_forward(body(self.coprocessor), soft, mask, positions, own).last_hidden_state
            return self.scaled(z), own
        # kv injection: the Base reads the K/V of every Coprocessor layer at the latent slots, the deepest
        # computed from the residual stream entering the top layer; its output (attention out, MLP, final
        # norm) reaches nothing, so Z (for analysis) is that top-layer input.
        out = lm_forward(body(self.coprocessor), soft, mask, positions, own, output_hidden_states=True)
        return out.hidden_states[-2], own

    def embedding_rms(self) -> torch.Tensor:
        """RMS of the Base's token embeddings over all entries (a scalar; read live, so a checkpoint loaded
        after construction, or h2's training embeddings, set it; no gradient flows into the embeddings)."""
        return self.model.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt()

    def scaled(self, z: torch.Tensor) -> torch.Tensor:
        """Z at the scale `method.coprocessor.latent_scale` asks: as is (`none`), each latent rescaled to
        the embeddings' RMS (`rms`), or that times a learned gain starting at 1 (`learned`)."""
        if self.latent_scale == "none":
            return z
        target = self.embedding_rms().to(z.dtype)
        if self.latent_scale == "learned":
            target = target * self.latent_log_gain.exp().to(z.dtype)
        return z / rms(z).clamp_min(1e-6) * target

    def read_in(
        self, question_ids: torch.Tensor, question_mask: torch.Tensor, cache: DynamicCache, z: torch.Tensor, coprocessor_cache: DynamicCache
    ) -> ReadIn:
        """Step 3's lead-in (the neutral start): the Base's cache of the question minus its last token, the
        latents (embeddings, or K/V appended to that cache), then the last question token re-fed at its own
        position, which predicts the first answer token. `question_ids` are left-padded, so every row's last
        token is the last column."""
        batch, q_len = question_ids.shape
        k = z.shape[1]  # N_L, or a curriculum stage's k
        prefix = cache_prefix(cache, self.model, q_len - 1)
        latent_mask = question_mask.new_full((batch, k), 0 if self.mask_latents else 1)
        mask = torch.cat([question_mask[:, :-1], latent_mask, question_mask[:, -1:]], dim=1)
        last_position = positions_from_mask(question_mask)[:, -1:]
        last = self.embed(question_ids[:, -1:])
        if self.injection == "embeddings":
            embeds = torch.cat([z, last], dim=1)
            latent_positions = last_position + 1 + torch.arange(k, device=question_ids.device)
            positions = torch.cat([latent_positions, last_position], dim=1)
        else:
            append_kv(prefix, coprocessor_cache, start=q_len)
            embeds, positions = last, last_position
        return ReadIn(prefix, embeds, mask, positions, last_position[:, 0] + 1)

    def passes(self, question_ids: torch.Tensor, question_mask: torch.Tensor, n_slots: int | None = None) -> tuple[ReadIn, torch.Tensor]:
        """Passes 1 and 2 and step 3's lead-in: (the read-in, Z), with `n_slots` latents (all N_L when None)."""
        cache = self.question_cache(question_ids, question_mask)
        z, coprocessor_cache = self.latents(cache, question_mask, n_slots)
        return self.read_in(question_ids, question_mask, cache, z, coprocessor_cache), z

    # --- training --------------------------------------------------------------------------------------
    def collate(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """Left-padded questions (latent slots align across rows) and right-padded answers; no CoT steps.
        Under the curriculum the "answer" part is the steps not yet replaced + the answer, and `n_slots` says
        how many latents the current stage has the Coprocessor write (the same for every row)."""
        if self.curriculum is None:
            return self.question_answer_batch(examples)
        return stage_batch(self.curriculum, self.stage, examples, self.ids["pad"])

    def answer_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, A, V] predicting each answer token (teacher forcing through the three passes)."""
        read, _ = self.passes(batch["question_ids"], batch["question_mask"], batch.get("n_slots"))
        answer_ids = batch["answer_ids"]
        embeds = torch.cat([read.embeds, self.embed(answer_ids)], dim=1)
        mask = torch.cat([read.mask, batch["answer_mask"]], dim=1)
        answer_positions = read.next_position.view(-1, 1) + torch.arange(answer_ids.shape[1], device=answer_ids.device)
        positions = torch.cat([read.positions, answer_positions], dim=1)
        logits = lm_forward(self.model, embeds, mask, positions, read.cache).logits
        first = read.embeds.shape[1] - 1  # the re-fed last question token predicts the first answer token
        return logits[:, first: first + answer_ids.shape[1]]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.answer_logits(batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["answer_labels"].reshape(-1), ignore_index=-100)

    # --- inference -------------------------------------------------------------------------------------
    def _prepare(self, examples: Sequence[EncodedExample]) -> tuple[ReadIn, torch.Tensor]:
        """Passes 1 and 2 plus the lead-in for a list of examples: (the read-in, Z)."""
        question_ids, question_mask = self.left_padded_prompts([e.question_ids for e in examples])
        return self.passes(question_ids, question_mask)

    @torch.no_grad()
    def generate(self, examples: Sequence[EncodedExample], max_new_tokens: int) -> Generation:
        read, _ = self._prepare(examples)
        tokens, calls = self.decode_after_prefix(read.embeds, read.mask, max_new_tokens, cache=read.cache, position_ids=read.positions)
        flops = [self.answer_flops(len(e.question_ids), c) for e, c in zip(examples, calls)]
        # Sequential calls: Base prefill, Coprocessor (none at N_L = 0), Base lead-in, then one per further token.
        passes = 3 if self.n_latents else 2
        return Generation(tokens, [passes + c for c in calls], [self.n_latents] * len(examples), flops)

    def answer_flops(self, question_len: int, decode_calls: int) -> float:
        """Analytic FLOPs of one answer: the three passes with one head (the re-fed last question token),
        then decoding after question + latents."""
        return self.three_pass_flops(question_len, 0, 1) + decode_flops(self.dims, question_len + self.n_latents, decode_calls)

    def three_pass_flops(self, question_len: int, answer_tokens: int, head_tokens: int) -> float:
        """Forward FLOPs of the three passes for one example: Base prefill over the question (no head),
        Coprocessor over N_L tokens past the question (no head), Base over the lead-in (N_L latents and the
        re-fed last question token, or that token alone after the injected K/V) plus `answer_tokens`
        teacher-forced tokens, with the head on `head_tokens` positions. The re-fed token is the neutral
        start's one extra token: its K/V were computed in the prefill and are dropped."""
        n, q = self.n_latents, question_len
        past = q - 1 if self.injection == "embeddings" else q - 1 + n  # kv: the latents' K/V are in the cache
        return (forward_flops(self.dims, q, 0, 0) + forward_flops(self.coprocessor_dims, n, q, 0)
                + forward_flops(self.dims, self.lead_in_length + answer_tokens, past, head_tokens))

    @property
    def lead_in_length(self) -> int:
        """Positions the Base reads between the cached question prefix and the answer: the N_L latents and
        the re-fed last question token (embeddings), or that token alone (kv)."""
        return self.n_latents + 1 if self.injection == "embeddings" else 1

    @torch.no_grad()
    def base_read_states(self, examples: Sequence[EncodedExample]) -> torch.Tensor:
        """The Base's last-layer (final-normed) hidden states where it reads the latents, [B, L, d]: at the
        N_L latent slots (embeddings injection) or at the re-fed last question token (kv injection, L = 1:
        the Base has no state at a latent slot). The same passes as generation."""
        read, _ = self._prepare(examples)
        states = lm_forward(self.model, read.embeds, read.mask, read.positions, read.cache, output_hidden_states=True).hidden_states[-1]
        return states[:, : self.n_latents] if self.injection == "embeddings" else states

    @torch.no_grad()
    def trace(self, examples: Sequence[EncodedExample]) -> torch.Tensor:
        """Z [B, N_L, d] at the latent slots, what the Base reads: with embeddings injection the Coprocessor's
        final states after `latent_scale`; with kv injection the residual stream entering its top layer
        (the deepest K/V the Base reads come from it; pre-norm, so `traces_normed` is False)."""
        _, z = self._prepare(examples)
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
