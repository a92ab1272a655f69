"""Typed run configuration: dataclasses with attribute docstrings, loadable from YAML with dotted overrides.

A run is fully described by one `RunConfig`; the resolved config is written as `config.yaml` in every run dir.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from latentreason.errors import UserInputError


@dataclass
class ModelConfig:
    """Which backbone LM to wrap."""

    backbone: str = "gpt2-tiny"
    """Registry name (gpt2-tiny, qwen3-tiny, llama-tiny, smollm2-135m), a local HF directory, or a hub id."""
    n_layer: int = 2
    """Layers of a from-scratch tiny model."""
    n_embd: int = 64
    """Hidden width of a from-scratch tiny model."""
    n_head: int = 4
    """Attention heads of a from-scratch tiny model."""
    max_positions: int = 512
    """Maximum sequence length of a from-scratch tiny model."""
    tokenizer_vocab_size: int = 1024
    """Vocabulary size of the offline BPE tokenizer trained for from-scratch models."""
    dropout: float = 0.0
    """Dropout of from-scratch models (0 keeps runs bit-reproducible across resume)."""


@dataclass
class TaskConfig:
    """Which task and data to use."""

    name: str = "prosqa"
    """Task registry name: prosqa, countdown, gsm8k."""
    train_path: str | None = None
    """File of training examples; when unset the task generator is used."""
    eval_path: str | None = None
    """File of evaluation examples; when unset the task generator is used (with a different seed)."""
    train_size: int = 2000
    """Number of generated training examples (or cap on loaded ones; 0 = all loaded)."""
    eval_size: int = 200
    """Number of generated evaluation examples (or cap on loaded ones; 0 = all loaded)."""
    seed: int = 0
    """Generator seed for the training split; the eval split uses seed + 1_000_003."""
    branching: int = 4
    """Countdown: number of input numbers (the branching factor)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Extra generator keyword arguments (task specific)."""


@dataclass
class CoconutConfig:
    """Coconut curriculum (Hao et al. 2024)."""

    thoughts_per_step: int = 1
    """c: latent thoughts replacing each reasoning step."""
    epochs_per_stage: int = 1
    """Epochs spent at each curriculum stage."""
    max_latent_stage: int = 3
    """Last stage s; stage s replaces the first s steps by s*c latents (all steps when fewer remain).
    Overridden by `method.n_latents` > 0: max_latent_stage = n_latents / c (N_L = final-stage latents)."""
    mix_prob: float = 0.0
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

    variant: str = "liu"
    """liu (frozen Base, latents as input embeddings), h1 (frozen Base, per-layer KV concat), h2 (joint)."""
    init: str = "base"
    """Coprocessor weights: copy of the Base (`base`) or freshly initialised (`fresh`)."""
    injection: str = "embeddings"
    """h2 only: how latents reach the Base, `embeddings` or `kv`."""
    lora_rank: int = 0
    """h2 only: when > 0, train the Base through LoRA adapters of this rank instead of fully."""
    pretrain_points: int = 4
    """Pretraining: augmentation points M per sequence."""
    pretrain_ahead: int = 8
    """Pretraining: ahead tokens N_A predicted after each point."""
    pretrain_seq_len: int = 64
    """Pretraining: tokens per packed text sequence (points are drawn inside it)."""
    pretrain_corpus: str = "task"
    """Pretraining text: `task` (the task's train split written out as question, steps, answer) or a .txt path."""


@dataclass
class LoopedConfig:
    """Ouro-style looped LM."""

    loops: int = 4
    """T: times the shared layer stack is applied."""
    entropy_beta: float = 0.05
    """beta of the entropy regulariser on the exit distribution."""
    stage: int = 1
    """1: train model + gate with the expected loss; 2: freeze model, train the gate on loss improvement."""
    gate_threshold: float = 0.005
    """Stage II: improvement below which continuing is not worth it (target exit)."""
    gate_slope: float = 50.0
    """Stage II: slope of the sigmoid turning the improvement into a soft target."""
    exit_q: float = 1.0
    """Q-exit threshold at inference: exit at the first loop whose exit CDF reaches q (1.0 = all loops)."""
    kv_policy: str = "reuse"
    """KV for positions that exited early: recompute, reuse (last computed loop), or per_loop."""
    use_steps: bool = True
    """Train on question -> steps + answer (like CoT); false trains on question -> answer only."""
    loop_norm: bool = True
    """Feed the final-normed state into the next loop, as Ouro does; false feeds the raw residual stream.
    Use false when the stack starts from a one-pass (T = 1) checkpoint: on ProsQA, T = 2 from No-CoT
    weights scored 0.26 with false against 0.07 with true (results/looped_loop_norm)."""


@dataclass
class MethodConfig:
    """Which latent-reasoning method, and its latent budget."""

    name: str = "cot"
    """Registry name: no_cot, cot, soft_tokens, coconut, coprocessor, looped."""
    n_latents: int = 0
    """N_L: latent slots per answer (the matched latent budget)."""
    placement: str = "after_question"
    """soft_tokens: where the soft embeddings go, `after_question` or `prefix`."""
    coconut: CoconutConfig = field(default_factory=CoconutConfig)
    coprocessor: CoprocessorConfig = field(default_factory=CoprocessorConfig)
    looped: LoopedConfig = field(default_factory=LoopedConfig)


@dataclass
class TrainConfig:
    """The one training loop."""

    epochs: int = 5
    """Passes over the training set (Coconut: total over all curriculum stages)."""
    max_steps: int = 0
    """Stop after this many optimizer steps when > 0 (used by tests and benchmarks)."""
    batch_size: int = 32
    """Examples per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.01
    warmup_steps: int = 20
    """Linear warmup steps before cosine decay to 10% of lr."""
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: str = "auto"
    """auto (bf16 on GPUs that support it, fp32 on CPU), fp32, bf16."""
    checkpoint_every: int = 0
    """Save a checkpoint every N optimizer steps (0: only at epoch ends and at the end)."""
    log_every: int = 10
    tensorboard: bool = False
    compile: bool = False
    """Regional torch.compile of the backbone's decoder layers (GPU only)."""
    find_unused_parameters: bool = False
    """Multi-process DDP: search the graph for trainable parameters that got no gradient this step. Only
    needed when a trainable parameter can sit out a step (frozen ones, requires_grad=False, never matter);
    costs one graph traversal per step. See docs/SCALE.md."""
    fsdp: bool = False
    """Multi-GPU: shard parameters, gradients and optimizer state with FSDP2 (accelerate, fsdp_version=2)
    instead of replicating them with DDP. Ignored (DDP or a single process) on CPU; no resume yet."""
    fsdp_reshard_after_forward: bool | None = None
    """FSDP2: free each layer's gathered parameters after its forward. None = auto: false for multi-pass
    methods (coconut, coprocessor, looped call every layer several times per step and would all-gather it
    each time), true for single-pass ones."""
    init_from: str | None = None
    """Run dir whose final weights initialise the model (e.g. Coconut from a CoT checkpoint)."""


@dataclass
class EvalConfig:
    batch_size: int = 64
    max_new_tokens: int = 64
    """Greedy decoding budget per answer."""


@dataclass
class RunConfig:
    """Everything one training + evaluation run needs."""

    out_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, checkpoints, eval.json."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------- loading


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the field's type, with an error that names the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise UserInputError(f"config key {where!r}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=where + ".")
    if origin is typing.Union or str(origin) == "types.UnionType" or (args and type(None) in args):
        if value is None or value == "null" or value == "None":
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
    elif annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
        except (TypeError, ValueError):
            pass
    elif origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise UserInputError(f"config key {where!r}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys are errors (typos must not pass silently)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserInputError(f"unknown config key(s) {sorted(prefix + k for k in unknown)}; expected one of {sorted(prefix + n for n in names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["train.lr=1e-3", "method.name=coconut"] into a nested dict (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise UserInputError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserInputError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserInputError("config file not found", path=str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise UserInputError(f"malformed YAML: {getattr(error, 'problem', error)}", path=str(path), line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise UserInputError("expected a YAML mapping at top level", path=str(path))
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = RunConfig) -> Any:
    """Config from an optional YAML file plus dotted `key=value` overrides."""
    data = read_yaml(path) if path else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    try:
        return from_dict(cls, data)
    except UserInputError as error:
        raise UserInputError(str(error), path=str(path) if path else None) from None


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
