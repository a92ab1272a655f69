"""The `method` section of a run config: which method, its latent budget, and each method's own options.

They live beside the methods (rather than in config.py) so a method's knobs are read next to its code; this
module must stay free of torch, because config.py imports it and a bad config is reported before the heavy
imports. config.py re-exports every name here (`from latentreason.config import CoconutConfig` keeps working).

Choice fields are `Literal`s, so the loader (`config.from_dict`) rejects an unknown value when the config is
loaded, with the FILE:LINE of the YAML key; checks that span several fields are in `check_method_options`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from latentreason.config_types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Range
from latentreason.errors import UserInputError

MethodName = Literal["no_cot", "cot", "soft_tokens", "coconut", "coprocessor", "looped"]
"""Must equal the keys of methods.registry.METHODS (tests/test_method_contract.py keeps them in step)."""
CoprocessorVariant = Literal["liu", "h1", "h2"]
"""liu (frozen Base, latents as input embeddings), h1 (frozen Base, per-layer KV concat), h2 (joint)."""
KVPolicy = Literal["recompute", "reuse", "per_loop"]
"""Looped: what deeper loops hold for a position that exited early."""
Placement = Literal["after_question", "prefix"]
"""Soft tokens: where the soft embeddings go."""


@dataclass
class CoconutConfig:
    """Coconut curriculum (Hao et al. 2024)."""

    thoughts_per_step: PositiveInt = 1
    """c: latent thoughts replacing each reasoning step."""
    epochs_per_stage: PositiveInt = 1
    """Epochs spent at each curriculum stage."""
    max_latent_stage: NonNegativeInt = 3
    """Last stage s that keeps text steps; stage s replaces the first s steps by s*c latents (all steps when
    fewer remain). From stage s + 1 on (and at evaluation) every step is removed, as in the reference.
    Overridden by `method.n_latents` > 0: max_latent_stage = n_latents / c (N_L = final-stage latents)."""
    first_stage: NonNegativeInt = 0
    """The stage the first epoch trains. 0: stage 0 (the CoT text) first; 1 skips it for a start that is already
    a CoT model, as the reference's GSM8K run does (`resume: 3` with 3 epochs per stage from its CoT checkpoint)."""
    mix_prob: Probability = 0.0
    """Probability of sampling a lower stage for an example (curriculum mixing)."""
    reset_optimizer: bool = True
    """Fresh optimizer state at each stage boundary, as in the reference implementation."""
    fixed_latents: bool = False
    """When true, ignore the curriculum and always use exactly `method.n_latents` latents and no steps."""
    pad_latent_to_max: bool = False
    """Reference-repo option: stage s always gets s*c latents, even when the example has fewer than s steps
    (default: min(s, #steps)*c). Gives every example exactly N_L latents at evaluation."""


@dataclass
class CoprocessorConfig:
    """Base + Coprocessor dual architecture (Liu et al. 2024; Coda-Forno et al. 2025)."""

    variant: CoprocessorVariant = "liu"
    """liu (frozen Base, latents as input embeddings), h1 (frozen Base, per-layer KV concat), h2 (joint)."""
    init: Literal["base", "fresh"] = "base"
    """Coprocessor weights: copy of the Base (`base`) or freshly initialised (`fresh`)."""
    injection: Literal["embeddings", "kv"] = "embeddings"
    """h2 only: how latents reach the Base, `embeddings` or `kv`."""
    lora_rank: NonNegativeInt = 0
    """h2 only: when > 0, train the Base through LoRA adapters of this rank instead of fully."""
    latent_scale: Literal["none", "rms", "learned"] = "rms"
    """Embeddings injection (liu, h2 default): the scale of the latents the Base reads. The Coprocessor's
    final-normed states arrive at 5-18x the RMS of token embeddings. `none`: as they come; `rms`: each
    latent rescaled to the RMS of the Base's token embeddings; `learned`: `rms` times a learned scalar gain
    that starts at 1. No effect with kv injection (h1), where the Base reads K/V, not Z. The 200-step
    experiment in results/coprocessor_latent_scale/ could not tell the three apart; `rms` keeps the Base's
    input at the scale it was trained on."""
    pretrain_points: PositiveInt = 4
    """Pretraining: augmentation points M per sequence."""
    pretrain_ahead: PositiveInt = 8
    """Pretraining: ahead tokens N_A predicted after each point."""
    pretrain_seq_len: PositiveInt = 64
    """Pretraining: tokens per packed text sequence (points are drawn inside it)."""
    pretrain_corpus: str = "task"
    """Pretraining text: `task` (the task's train split written out as question, steps, answer) or a .txt path."""


@dataclass
class LoopedConfig:
    """Ouro-style looped LM."""

    loops: PositiveInt = 4
    """T: times the shared layer stack is applied."""
    entropy_beta: NonNegativeFloat = 0.05
    """beta of the entropy regulariser on the exit distribution."""
    stage: Literal[1, 2] = 1
    """1: train model + gate with the expected loss; 2: freeze model, train the gate on loss improvement."""
    gate_threshold: float = 0.005
    """Stage II: improvement below which continuing is not worth it (target exit)."""
    gate_slope: PositiveFloat = 50.0
    """Stage II: slope of the sigmoid turning the improvement into a soft target."""
    exit_q: Annotated[float, Range(low=0, high=1, low_open=True)] = 1.0
    """Q-exit threshold at inference: exit at the first loop whose exit CDF reaches q (1.0 = all loops)."""
    kv_policy: KVPolicy = "reuse"
    """KV for positions that exited early: recompute, reuse (last computed loop), or per_loop."""
    use_steps: bool = True
    """Train on question -> steps + answer (like CoT); false trains on question -> answer only."""
    loop_norm: bool = True
    """Feed the final-normed state into the next loop, as Ouro does; false feeds the raw residual stream.
    Use false when the stack starts from a one-pass (T = 1) checkpoint: on ProsQA, T = 2 from No-CoT
    weights scored 0.26 with false against 0.07 with true (results/looped_loop_norm)."""


@dataclass
class CurriculumConfig:
    """A Coconut-style curriculum for methods with trainable latent slots (soft_tokens, coprocessor): starting
    from CoT weights, stage k replaces the first k reasoning steps by k*c latent slots (the remaining steps stay
    as text targets); after the last stage, N_L / c, every step is removed and the N_L slots stand alone, as at
    evaluation. Stage rules shared with Coconut (methods/curriculum.py). Coprocessor: at stage k it writes the
    first k*c of its N_L latents; liu and h1 (frozen Base) start at stage 1, since stage 0 trains nothing."""

    enabled: bool = False
    """Run the curriculum (train.init_from should then name a CoT run); false trains answer-only."""
    thoughts_per_step: PositiveInt = 1
    """c: latent slots per replaced step; method.n_latents must be a multiple of it."""
    epochs_per_stage: PositiveInt = 1
    """Epochs spent at each stage (the last, all-steps-removed stage lasts until training ends)."""
    reset_optimizer: bool = True
    """Fresh optimizer state at each stage boundary, as Coconut does."""
    first_stage: NonNegativeInt = 0
    """The stage the first epoch trains (1 skips the CoT stage 0, as `method.coconut.first_stage`; liu and h1 start
    at stage 1 or later whatever it says)."""
    control_stages: NonNegativeInt = 0
    """At N_L = 0 only: remove the steps over this many stages (stage k drops the first k steps, with nothing in
    their place), then the answer-only final stage: the no-latent control paced like a latent cell with
    N_L / c = control_stages (Coconut's "w/o thought" ablation), which gets as many answer-only steps as that cell.
    0 (default): one CoT stage, then answer-only. results.control_gains prefers this control where a sweep has it."""


CURRICULUM_METHODS = ("soft_tokens", "coprocessor")
"""Methods that implement `method.curriculum` (a method adds its name here when it does)."""
PRETRAINING_METHODS = ("coprocessor",)
"""Methods that `train.objective: pretrain` trains (Coprocessor pretraining on text: methods/coprocessor_pretrain.py)."""


@dataclass
class MethodConfig:
    """Which latent-reasoning method, and its latent budget."""

    name: MethodName = "cot"
    """Which method: a key of methods/registry.py's METHODS (the class that implements it)."""
    n_latents: NonNegativeInt = 0
    """N_L: latent slots per answer (the matched latent budget)."""
    placement: Placement = "after_question"
    """soft_tokens: where the soft embeddings go, `after_question` or `prefix`."""
    coconut: CoconutConfig = field(default_factory=CoconutConfig)
    coprocessor: CoprocessorConfig = field(default_factory=CoprocessorConfig)
    looped: LoopedConfig = field(default_factory=LoopedConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)


def check_method_options(method: MethodConfig) -> None:
    """The checks that span several `method.*` fields (single fields are checked against their annotations
    when the config loads). Called by config.validate, so they also run at load time."""
    if method.name == "coprocessor":
        if method.n_latents < 1 and method.coprocessor.variant != "h2":
            raise UserInputError(f"config key 'method.n_latents': the coprocessor needs at least 1 latent, got {method.n_latents} "
                                 "(N_L = 0, the no-latent control, only with variant h2, whose Base trains)")
        if method.coprocessor.lora_rank > 0 and method.coprocessor.variant != "h2":
            raise UserInputError(f"config key 'method.coprocessor.lora_rank': LoRA applies to the trained Base of variant h2 only, got variant {method.coprocessor.variant!r}")
    curriculum = method.curriculum
    if curriculum.enabled:
        if method.name not in CURRICULUM_METHODS:
            raise UserInputError(f"config key 'method.curriculum.enabled': method {method.name!r} has no such curriculum; "
                                 f"expected one of {list(CURRICULUM_METHODS)} (coconut has its own: method.coconut.*)")
        if method.name == "soft_tokens" and method.placement != "after_question":
            raise UserInputError(f"config key 'method.curriculum.enabled': the curriculum puts the latent slots where the "
                                 f"steps were, after the question; got method.placement={method.placement!r}")
        if method.n_latents % curriculum.thoughts_per_step:
            raise UserInputError(f"config key 'method.n_latents': {method.n_latents} is not a multiple of "
                                 f"method.curriculum.thoughts_per_step={curriculum.thoughts_per_step}")
    if curriculum.control_stages and (not curriculum.enabled or method.n_latents > 0):
        raise UserInputError(f"config key 'method.curriculum.control_stages': {curriculum.control_stages} paces a no-latent "
                             f"control's curriculum, so it needs method.curriculum.enabled=true and method.n_latents=0; got "
                             f"enabled={curriculum.enabled}, n_latents={method.n_latents} (a latent cell's stages are N_L / c)")
    coconut = method.coconut
    if method.name == "coconut" and method.n_latents > 0 and not coconut.fixed_latents and method.n_latents % coconut.thoughts_per_step:
        raise UserInputError(f"config key 'method.n_latents': {method.n_latents} is not a multiple of method.coconut.thoughts_per_step={coconut.thoughts_per_step}")
