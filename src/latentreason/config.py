"""Typed run configuration: dataclasses with attribute docstrings, loadable from YAML with dotted overrides.

A run is fully described by one `RunConfig`; the resolved config is written as `config.yaml` in every run dir.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from latentreason.config_types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Range
from latentreason.errors import UserInputError
from latentreason.methods.options import (
    PRETRAINING_METHODS,
    CoconutConfig,
    CoprocessorConfig,
    LoopedConfig,
    MethodConfig,
    MethodName,
    check_method_options,
)

# The field types (config_types.py) and the `method` section with each method's own options (methods/options.py,
# beside the methods) live in torch-free modules of their own; re-exported so `from latentreason.config import
# MethodConfig, CoconutConfig, PositiveInt, ...` keeps working.
__all__ = [
    "CoconutConfig", "CoprocessorConfig", "EvalConfig", "LoopedConfig", "MethodConfig", "MethodName", "ModelConfig",
    "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "Probability", "Range", "RunConfig",
    "TaskConfig", "TaskName", "TrainConfig", "deep_merge", "from_dict", "load_config", "parse_overrides", "read_yaml",
    "save_config", "to_dict", "validate",
]

TaskName = Literal["prosqa", "countdown", "gsm8k"]
"""Must equal the keys of tasks.TASKS (a test keeps them in step)."""
WordTokenInit = Literal["piece_mean", "vocab_word"]
"""Where added name tokens start (`ModelConfig.word_token_init`)."""


@dataclass
class ModelConfig:
    """Which backbone LM to wrap."""

    backbone: str = "gpt2-tiny"
    """Registry name (gpt2-tiny, qwen3-tiny, llama-tiny, smollm2-135m), a local HF directory, or a hub id."""
    n_layer: PositiveInt = 2
    """Layers of a from-scratch tiny model."""
    n_embd: PositiveInt = 64
    """Hidden width of a from-scratch tiny model."""
    n_head: PositiveInt = 4
    """Attention heads of a from-scratch tiny model."""
    head_dim: PositiveInt | None = None
    """Width of each attention head of a from-scratch llama-tiny / qwen3-tiny model (default n_embd // n_head).
    Many heads of 32 dims get a tiny model past the ProsQA binding plateau sooner (docs/LOG.md, 2026-12-02);
    setting it lets the head count grow without widening the model. gpt2-tiny cannot decouple it."""
    max_positions: PositiveInt = 512
    """Maximum sequence length of a from-scratch tiny model."""
    tokenizer_vocab_size: PositiveInt = 1024
    """Vocabulary size of the offline BPE tokenizer trained for from-scratch models."""
    dropout: Annotated[float, Range(low=0, high=1, high_open=True)] = 0.0
    """Dropout of from-scratch models (0 keeps runs bit-reproducible across resume)."""
    word_tokens: bool = False
    """Give each made-up name of the task (ProsQA's concept names, e.g. " wumpus") one token of its own where the
    tokenizer splits it (SmolLM2: into 2-4 pieces, " w|ump|us", that many names share), its embedding started
    at the mean of those pieces' (or see `word_token_init`). A name is then one token to copy from the facts
    instead of a few pieces that differ only in the first, and default-size prompts are ~30% shorter. Started at
    the piece mean it did not make default-size ProsQA learn faster (results/prosqa_smollm2, session 39); started
    at distinct words it rose sooner and ended at 0.754 / 0.718 over two draws against 0.706 (session 41). Tasks
    without made-up names (Countdown, GSM8K) reject it, and so do tokenizers that add a space before every piece
    of text (tiny backbones' own, which learn the names from the task's text anyway)."""
    word_token_init: WordTokenInit = "piece_mean"
    """Where each added name token's embedding starts (`model.word_tokens`). `piece_mean`: the mean of its pieces'
    rows, so the model first reads it roughly as the pieces; names that share all pieces but the first (" w|ump|us",
    " y|ump|us") then start nearly equal. `vocab_word`: a copy of a distinct lowercase word the tokenizer already
    has as one token (a fixed draw), so every name starts as a different, well-trained embedding to match and copy."""


@dataclass
class TaskConfig:
    """Which task and data to use."""

    name: TaskName = "prosqa"
    """Which task: a key of tasks.TASKS."""
    train_path: str | None = None
    """File of training examples; when unset the task generator is used."""
    eval_path: str | None = None
    """File of evaluation examples; when unset the task generator is used (with a different seed)."""
    train_size: NonNegativeInt = 2000
    """Number of generated training examples (or cap on loaded ones; 0 = all loaded)."""
    eval_size: NonNegativeInt = 200
    """Number of generated evaluation examples (or cap on loaded ones; 0 = all loaded)."""
    max_reasoning_steps: NonNegativeInt = 0
    """Loaded files only: keep the examples whose solution has at most this many reasoning steps (0: all),
    before `train_size` / `eval_size` cap them, e.g. GSM8K's one- and two-step problems, where a latent budget
    of N_L = 2c covers every step. Generated splits set their size through the generator's own params."""
    seed: int = 0
    """Generator seed for the training split; the eval split uses seed + 1_000_003."""
    branching: int = 4
    """Countdown: number of input numbers (the branching factor)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Extra generator keyword arguments (task specific)."""
    stream: bool | None = None
    """Train on fresh generated examples every step instead of cycling `train_size` of them (data.ExampleStream).
    None = stream exactly when the training split is generated (train_path unset). A run's length is the same
    rule either way: epochs x (train_size // examples per step) steps, capped by train.max_steps; with the
    stream an epoch is a virtual one (the next train_size examples), which Coconut's curriculum counts."""
    stream_chunk_size: PositiveInt = 256
    """Streaming: examples generated per chunk (chunk k uses a seed hashed from task.seed and k). Part of
    the stream's definition: another value gives other examples."""
    stream_start: NonNegativeInt = 0
    """Streaming: the training loop reads the stream from example N on (its first virtual epoch is examples
    N .. N + train_size - 1), e.g. past the problems a `train.init_from` run already trained on, so that a
    continuation sees fresh problems while `task.seed`, and with it the held-out split, stays the same.
    Stream-curriculum phases keep counting from example 0 of the stream, and the train split (a from-scratch
    tokenizer's corpus) stays examples 0 .. train_size - 1, so a continuation's tokenizer is its start's."""
    stream_prefetch: bool = True
    """Streaming: generate the next chunk in a worker process while training reads the current one."""
    stream_curriculum: list[dict[str, Any]] = field(default_factory=list)
    """Streaming: a curriculum over generator parameters, e.g. `[{examples: 64000, params: {n_nodes: 4,
    max_depth: 1}}, ...]`: the stream's first `examples` examples are generated with that entry's params
    (over `task.params`), the next ones with the next entry's, and after the last entry with `task.params`,
    which the eval split always uses. Counted in stream examples (rounded to whole chunks), so it is
    independent of batch size and process count, and a resumed run reads the same examples."""


@dataclass
class TrainConfig:
    """The one training loop."""

    epochs: PositiveInt = 5
    """Passes over the training set (Coconut: total over all curriculum stages)."""
    max_steps: NonNegativeInt = 0
    """Stop after this many optimizer steps when > 0 (used by tests and benchmarks)."""
    batch_size: PositiveInt = 32
    """Examples per micro-batch per process."""
    grad_accum: PositiveInt = 1
    """Micro-batches per optimizer step."""
    lr: PositiveFloat = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: NonNegativeFloat = 0.01
    warmup_steps: NonNegativeInt = 20
    """Linear warmup steps before cosine decay to 10% of lr."""
    lr_schedule: Literal["cosine", "wsd"] = "cosine"
    """After warmup: `cosine` decay to 10% of lr, or `wsd` (warmup-stable-decay): lr held until the last 20% of
    the steps, then a linear decay to 10%. A plateau that breaks late (ProsQA's binding step) needs the full lr
    when it breaks; cosine has cut it to a quarter by 75% of the run."""
    max_grad_norm: PositiveFloat = 1.0
    nonfinite: Literal["stop", "skip"] = "stop"
    """At a non-finite loss or gradient norm: `stop` (exit 3, the last good checkpoint kept; resume with
    `skip` to go past it) or `skip` (that batch changes no weight; counted in done.json `nonfinite_skipped`)."""
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto (bf16 on GPUs that support it, fp32 on CPU), fp32, bf16."""
    checkpoint_every: NonNegativeInt = 0
    """Save a checkpoint every N optimizer steps (0: only at epoch ends and at the end)."""
    return_memory_every: NonNegativeInt = 0
    """Every N optimizer steps hand the CPU allocator's free pages back to the OS (glibc's malloc_trim; 0: never).
    Variable-length batches fragment glibc's heap: a default-size SmolLM2 ProsQA run grew to 20-24 GB resident
    and was OOM-killed; resumed with 1, the same steps stayed at 5-14 GB but took ~1.1x the time (freed pages are
    faulted in again; docs/LOG.md, session 39). Training arithmetic is unchanged (equal losses), so a resume may
    switch it."""
    log_every: PositiveInt = 10
    eval_every: NonNegativeInt = 0
    """Learning curves: every N optimizer steps (and at the last one) score the held-out eval split and a
    train sample into metrics.jsonl (`eval_accuracy`, `eval_well_formed_rate`, ...) and redraw
    RUN_DIR/learning_curves.png (0: no periodic evaluation)."""
    eval_every_size: NonNegativeInt = 0
    """Learning curves: score only the first N eval examples each time, for speed (0: the whole eval split)."""
    eval_train_size: NonNegativeInt = 64
    """Learning curves: also score N training examples (0: skip): the first N of a fixed training split; on
    fresh data (task.stream) the last N the loop trained on, so that under a stream curriculum they come
    from the current phase, not the first."""
    early_stop_patience: NonNegativeInt = 0
    """Stop training after this many periodic evaluations in a row without a new best eval accuracy
    (needs eval_every > 0; 0: never stop early). The final weights are the last ones, not the best."""
    trackers: str = "auto"
    """Experiment trackers (Accelerate's): `auto` (TensorBoard in RUN_DIR/tb/ when the tensorboard package is
    installed, else none), `none`, or a comma list such as `tensorboard,wandb` or `mlflow` (each must be
    installed). metrics.jsonl is written either way."""
    tensorboard: bool = False
    """Old switch, kept so existing run configs load: true asks for TensorBoard (an error when not installed)."""
    compile: bool = False
    """Regional torch.compile of the backbone's decoder layers (GPU only)."""
    bucket_by_length: bool = False
    """Batch examples of similar length together (within windows of 64 micro-batches of the shuffled order;
    the batches' order stays random), so less compute goes to padding (ProsQA: ~20% of a random batch).
    Changes which examples share a batch, so a run with it is a different run. See benchmarks/bench_train.py."""
    find_unused_parameters: bool = False
    """Multi-process DDP: search the graph for trainable parameters that got no gradient this step. Only
    needed when a trainable parameter can sit out a step (frozen ones, requires_grad=False, never matter);
    costs one graph traversal per step. See docs/SCALE.md."""
    fsdp: bool = False
    """Multi-GPU: shard parameters, gradients and optimizer state with FSDP2 (accelerate, fsdp_version=2)
    instead of replicating them with DDP. Ignored (DDP or a single process) on CPU; no resume yet."""
    fsdp_reshard_after_forward: bool | None = None
    """FSDP2: free each layer's gathered parameters after its forward. None = auto: false for methods whose
    `multi_pass` fact is true (Coconut, the Coprocessor and looped call every layer several times per step and
    would all-gather it each time), true for single-pass ones."""
    init_from: str | None = None
    """Run dir whose final weights initialise the model (e.g. Coconut from a CoT checkpoint)."""
    objective: Literal["task", "pretrain"] = "task"
    """What the run trains: `task` (the method's loss on the task's examples, then the task evaluation) or
    `pretrain` (method.name=coprocessor only: Coprocessor pretraining on text with method.coprocessor.pretrain_*,
    as `latentreason pretrain-coprocessor` runs it, measured by ahead-token perplexity instead of accuracy).
    A sweep cell with `pretrain` is a pretraining cell that fine-tuning cells start from (`train.init_from`)."""


@dataclass
class EvalConfig:
    batch_size: PositiveInt = 64
    max_new_tokens: PositiveInt = 64
    """Greedy decoding budget per answer."""


@dataclass
class RunConfig:
    """Everything one training + evaluation run needs."""

    out_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, checkpoints, eval.json."""
    tag: str = ""
    """A free label that changes nothing a run does. In a sweep it names a cell apart from one that differs only in
    what it starts from (a cell's name leaves its `{cell:...}` start out), e.g. H2's N_L = 0 controls from the
    N_L = 4 and the N_L = 8 pretraining cells: `tag: [from-pretrain-nl8]` puts `tag-from-pretrain-nl8` in its name."""
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
    if origin is Annotated:  # a base type plus a Range beside the field
        value = _coerce(value, args[0], where)
        for check in args[1:]:
            if isinstance(check, Range) and value is not None and not check.holds(value):
                raise UserInputError(f"config key {where!r}: expected a value {check.describe()}, got {value!r}")
        return value
    if origin is Literal:
        for choice in args:  # exact type too: True must not pass as 1, nor "1" as 1
            if type(value) is type(choice) and value == choice:
                return value
        section, _, leaf = where.rpartition(".")
        noun = section.rpartition(".")[2] if leaf == "name" and section else leaf  # "unknown task 'x'"
        raise UserInputError(f"config key {where!r}: unknown {noun} {value!r}; expected one of {list(args)}")
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
        if annotation is not str and isinstance(value, bool):  # YAML reads yes/no/true as booleans
            raise UserInputError(f"config key {where!r}: expected {annotation.__name__}, got {value!r} (a yes/no value)")
        if isinstance(value, (dict, list)):
            raise UserInputError(f"config key {where!r}: expected {annotation.__name__}, got {value!r}")
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            converted = annotation(value)
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            if isinstance(converted, float) and not math.isfinite(converted):
                raise UserInputError(f"config key {where!r}: expected a finite number, got {value!r}")
            return converted
    elif origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise UserInputError(f"config key {where!r}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys are errors (typos must not pass silently).

    Every value is checked against its field's type, Literal choices and Range; a whole RunConfig also
    gets the checks that span several fields (`validate`), so nothing bad reaches data generation or training.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserInputError(f"unknown config key(s) {sorted(prefix + k for k in unknown)}; expected one of {sorted(prefix + n for n in names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    config = cls(**kwargs)
    if cls is RunConfig:
        validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Checks that span several fields (single fields are checked by the loader against their annotations)."""
    from latentreason.backbone_names import PRETRAINED_ALIASES, TINY_BACKBONE_NAMES, backbone_kind  # light: no torch

    model = config.model
    if model.backbone in TINY_BACKBONE_NAMES:
        if model.head_dim is not None and model.backbone == "gpt2-tiny" and model.head_dim * model.n_head != model.n_embd:
            raise UserInputError(f"config key 'model.head_dim': gpt2-tiny splits n_embd={model.n_embd} evenly over its "
                                 f"n_head={model.n_head} heads, so head_dim must be unset or n_embd // n_head; got "
                                 f"{model.head_dim} (llama-tiny and qwen3-tiny accept any even head_dim)")
        if model.head_dim is None and model.n_embd % model.n_head:
            raise UserInputError(f"config key 'model.n_embd': {model.n_embd} is not divisible by model.n_head={model.n_head} "
                                 "(or set model.head_dim for llama-tiny / qwen3-tiny)")
        head_dim = model.head_dim or model.n_embd // model.n_head
        if model.backbone != "gpt2-tiny" and head_dim % 2:
            raise UserInputError(f"config key 'model.{'head_dim' if model.head_dim else 'n_embd'}': {model.backbone} needs an even head size (rotary embeddings), got {head_dim}")
        if model.backbone == "qwen3-tiny" and model.n_head % max(1, model.n_head // 2):
            raise UserInputError(f"config key 'model.n_head': qwen3-tiny uses n_head // 2 key-value heads, which must divide n_head={model.n_head}")
    elif model.backbone not in PRETRAINED_ALIASES:
        # A local HF directory (must hold config.json) or a hub id such as `gpt2` or `org/name`; whether a hub
        # id can be loaded (cache / network) is checked by the CLI and build_backbone, not here.
        backbone_kind(model.backbone)
    if model.word_token_init != "piece_mean" and not model.word_tokens:
        raise UserInputError(f"config key 'model.word_token_init': {model.word_token_init} starts the added name tokens, but "
                             "model.word_tokens is off, so none are added; set model.word_tokens=true")
    check_generator_params(config.task)
    check_method_options(config.method)  # methods/options.py: the checks across method.* fields
    if config.train.objective == "pretrain":
        if config.method.name not in PRETRAINING_METHODS:
            raise UserInputError(f"config key 'train.objective': pretrain trains the Base + Coprocessor; it needs method.name="
                                 f"{' or '.join(PRETRAINING_METHODS)}, got {config.method.name!r}")
        if config.method.curriculum.enabled:
            raise UserInputError("config key 'train.objective': pretraining reads plain text, with no reasoning steps to "
                                 "replace: leave method.curriculum.enabled off")
        if config.train.eval_every or config.train.bucket_by_length:
            raise UserInputError("config key 'train.objective': pretraining has no task answers to score (train.eval_every) and "
                                 "equal-length sequences (train.bucket_by_length): leave both off")


def check_generator_params(task: TaskConfig) -> None:
    """`task.params` must name parameters of the task's generator (its keyword-only arguments), so a typo
    fails when the config loads, not when a sweep reaches the cell. Skipped when both splits come from files
    (the generator is never called then)."""
    import inspect

    from latentreason.tasks import get_task  # light: no torch

    for index, phase in enumerate(task.stream_curriculum):
        where = f"config key 'task.stream_curriculum[{index}]"
        if not isinstance(phase, dict) or set(phase) - {"examples", "params"} or "examples" not in phase:
            raise UserInputError(f"{where}': expected a mapping {{examples: N, params: {{...}}}}, got {phase!r}")
        examples = phase["examples"]
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise UserInputError(f"{where}.examples': expected an integer >= 1, got {examples!r}")
        if not isinstance(phase.get("params") or {}, dict):
            raise UserInputError(f"{where}.params': expected a mapping of generator parameters, got {phase['params']!r}")
    if task.stream_curriculum and task.train_path:
        raise UserInputError("config key 'task.stream_curriculum': needs generated training data (task.train_path is set)")
    if task.train_path and task.eval_path:
        return  # the generator is never called (and a curriculum with train_path was refused above)
    phases = [(f"task.stream_curriculum[{i}].params", phase.get("params") or {}) for i, phase in enumerate(task.stream_curriculum)]
    if not task.params and not phases:
        return
    generator = get_task(task.name)
    for key in generator.training_only_params:
        if task.params.get(key):
            raise UserInputError(f"config key 'task.params.{key}': a training crutch of the {task.name} generator, and "
                                 "task.params also makes the eval split; set it in a task.stream_curriculum phase instead")
    parameters = inspect.signature(generator.iter_generate).parameters.values()
    accepted = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for prefix, params in [("task.params", task.params), *phases]:
        for key in params:
            if key not in accepted:
                expected = f"one of {accepted}" if accepted else "none (its generator takes no parameters)"
                raise UserInputError(f"config key '{prefix}.{key}': unknown {task.name} generator parameter {key!r}; expected {expected}")


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
    """A YAML file's top-level mapping. Missing, a directory, not UTF-8, malformed or empty: a UserInputError."""
    path = Path(path)
    if not path.exists():
        raise UserInputError("config file not found", path=str(path))
    if path.is_dir():
        raise UserInputError("is a directory; expected a YAML config file", path=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserInputError(f"not UTF-8 text (byte {error.start}); expected a YAML config file", path=str(path)) from None
    except OSError as error:
        raise UserInputError(f"cannot read config file: {error.strerror}", path=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise UserInputError(f"malformed YAML: {getattr(error, 'problem', error)}", path=str(path), line=mark.line + 1 if mark else None) from None
    if data is None:  # an empty file: never fall back to defaults silently (a truncated run dir config looks like this)
        raise UserInputError("empty config file; expected a YAML mapping (use `{}` for all defaults)", path=str(path))
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
        line = _key_line(path, str(error)) if path else None
        raise UserInputError(str(error), path=str(path) if path else None, line=line) from None


_KEY_IN_MESSAGE = re.compile(r"^config key '([\w.]+)'")


def _key_line(path: str | Path, message: str) -> int | None:
    """The line of the YAML key a config error names (`config key 'train.lr': ...`), for FILE:LINE errors;
    None when the key comes from an override or a default."""
    match = _KEY_IN_MESSAGE.match(message)
    if not match:
        return None
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for part in match.group(1).split("."):
        if not isinstance(node, yaml.MappingNode):
            return line
        found = next(((key, value) for key, value in node.value if getattr(key, "value", None) == part), None)
        if found is None:
            return line
        line, node = found[0].start_mark.line + 1, found[1]
    return line


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
