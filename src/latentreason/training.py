"""The one explicit training loop (Accelerate): AdamW, warmup + cosine, grad accumulation, curriculum
epochs, JSONL metrics, atomic checkpoints that resume bit-exactly, then evaluation.

`train` runs five named phases over a shared `Loop`: prepare_run -> build_optimizer -> resume -> run_steps ->
evaluate_and_finish. It trains a method's own loss, or an `Objective` that holds the method (coprocessor
pretraining on text: pretraining.py), which then gets everything the loop does.

Run dir layout: config.yaml, tokenizer/, metrics.jsonl, checkpoint.safetensors (latest, for resume),
model.safetensors (final weights; older runs: model.pt), done.json, eval.json, predictions.jsonl,
environment.jsonl (what each segment ran on: environment.py), learning_curves.png (curves.py; fresh-data streaming: data.ExampleStream). File formats, atomic writes and corrupt-file errors: checkpoint.py; the run-dir lock: runlock.py; Ctrl-C and
SIGTERM at step boundaries: interrupts.py.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import random
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.utils import DistributedDataParallelKwargs
from tqdm.auto import tqdm

from latentreason import checkpoint as ckpt
from latentreason.backbones import TINY_BACKBONES, build_backbone
from latentreason.batching import bucket_by_length, epoch_order, example_length, to_device
from latentreason.config import RunConfig, TrainConfig, deep_merge, read_yaml, save_config, to_dict
from latentreason.curves import json_line, learning_curve_step, plot_baselines, plot_learning_curves
from latentreason.data import ExampleStream, load_splits, made_up_words, stream_enabled, vocabulary_texts
from latentreason.environment import record_segment
from latentreason.errors import UserInputError
from latentreason.evaluation import evaluate, task_baselines
from latentreason.interrupts import StopRequest, TrainingInterrupted, deferred_stop
from latentreason.methods import LatentMethod, build_method, method_class
from latentreason.run_checks import check_init_from, check_weight_shapes, missing_weights_remedy, warn_random_frozen_base
from latentreason.runlock import RunLock, config_differences, is_main_rank
from latentreason.tasks import Task, get_task
from latentreason.tokenization import EncodedExample, encode_examples, example_texts, load_tokenizer, splits_digits_with_spaces
from latentreason.tracking import PROJECT_NAME as TRACKER_PROJECT
from latentreason.tracking import resolve_trackers, tracker_config, tracker_init_kwargs
from latentreason.validation import check_sequence_lengths, warn_short_decoding_budget


class Objective(Protocol):
    """What the loop can train besides a method's own loss (e.g. coprocessor pretraining on text): an
    nn.Module holding the method, so it trains the method's parameters, with a LatentMethod's collate /
    forward (= loss) / set_epoch, and its own measurement in place of the task evaluation."""

    name: str

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]: ...

    def set_epoch(self, epoch: int) -> bool: ...

    def measure(self) -> dict:
        """Taken on the starting and on the final weights (done.json's `before` and `after`)."""
        ...

    def facts(self) -> dict:
        """What done.json says about the data and model besides the measurements."""
        ...


@dataclass
class Run:
    """Everything built from a RunConfig before the loop starts."""

    config: RunConfig
    task: Task
    method: LatentMethod
    train_set: Sequence[Any]
    """Encoded training examples (or, with an objective, the items its collate takes)."""
    eval_set: list[EncodedExample]
    train_stream: ExampleStream | None = None
    """Fresh training examples (task.stream); train_set is then its first virtual epoch."""
    objective: Objective | None = None
    """What the loop trains instead of the method's own loss (None: the method)."""

    @property
    def trained(self) -> Any:
        """The module the loop trains: the objective, or the method itself."""
        return self.method if self.objective is None else self.objective


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_run(cfg: RunConfig, out_dir: Path | None = None) -> Run:
    """Data, tokenizer, backbone and method for `cfg`. Reuses a tokenizer saved in the run dir or init run."""
    check_init_from(cfg)  # another size / task / tokenizer: one line now, not a state_dict traceback later
    task = get_task(cfg.task.name)
    train_examples, eval_examples = load_splits(cfg.task)
    tokenizer = None
    for candidate in [out_dir, Path(cfg.train.init_from) if cfg.train.init_from else None]:
        if candidate is not None and (candidate / "tokenizer").is_dir():
            tokenizer = load_tokenizer(candidate / "tokenizer")
            if task.numeric_answers and splits_digits_with_spaces(tokenizer):
                warnings.warn(f"{candidate / 'tokenizer'}: this tokenizer (made before 2026-12-02) decodes 81 as '8 1', so "
                              f"no {task.name} answer written with it can verify: the run's scores are 0 whatever its model "
                              "learned. Train it again in a new run dir (which gets the fixed tokenizer).", stacklevel=2)
            break
    seed_everything(cfg.train.seed)  # model init depends only on the seed, not on what ran before
    corpus = example_texts(train_examples) + vocabulary_texts(cfg.task.name) if cfg.model.backbone in TINY_BACKBONES and tokenizer is None else None
    words = made_up_words(cfg.task.name) if cfg.model.word_tokens else ()
    backbone = build_backbone(cfg.model, corpus=corpus, tokenizer=tokenizer, words=words)
    method = build_method(cfg.method, backbone)
    if cfg.train.init_from:
        load_weights(method, ckpt.weights_path(cfg.train.init_from), strict=False)
    train_set, eval_set = encode_examples(backbone.tokenizer, train_examples), encode_examples(backbone.tokenizer, eval_examples)
    check_sequence_lengths(cfg, backbone.model, train_set, eval_set)  # a clear error now, not an IndexError mid-training
    warn_short_decoding_budget(cfg, eval_set)  # cut-off answers would read as a model that did not learn
    stream = ExampleStream(cfg.task, encode=lambda chunk: encode_examples(backbone.tokenizer, chunk)) if stream_enabled(cfg.task) else None
    return Run(cfg, task, method, train_set, eval_set, stream)


def load_weights(method: LatentMethod, path: Path, strict: bool = True) -> None:
    if not path.exists():
        raise UserInputError(f"no final weights to load: {missing_weights_remedy(path.parent)}", path=str(path))
    state = ckpt.read_weights(path, remedy=f"delete {path.parent} and train that run again")
    own = method.state_dict()
    state = {key: value for key, value in state.items() if not _slots_this_run_lacks(own.get(key), value)}
    check_weight_shapes(own, state, path)
    missing, unexpected = method.load_state_dict(state, strict=False)
    model_missing = [k for k in missing if k.startswith("model.")]
    if (strict and (missing or unexpected)) or model_missing:
        raise UserInputError(f"weights do not match method {method.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}", path=str(path))


def _slots_this_run_lacks(own: torch.Tensor | None, loaded: torch.Tensor) -> bool:
    """A per-slot table (one row per latent slot, e.g. soft tokens) that this run has with zero rows: a no-latent
    control (N_L = 0) started from the same run as its latent cell, e.g. a pretraining cell, takes the rest of
    that run and leaves its slots, which it has nowhere to put."""
    return own is not None and own.dim() == loaded.dim() >= 1 and own.shape[0] == 0 < loaded.shape[0] and own.shape[1:] == loaded.shape[1:]


@functools.cache
def _glibc_malloc_trim() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other libcs: no malloc_trim
        return None


def return_freed_memory() -> bool:
    """Hand the pages that glibc's allocator holds free back to the OS (`malloc_trim(0)`); False where there is none.

    Batches of varying length leave glibc's heap fragmented on CPU: a default-size SmolLM2 ProsQA run grew from 12 to
    22 GB resident over 60 steps and was OOM-killed at 24 GB; resumed later and trimmed after every step, it stayed at 5-13.8 GB
    (docs/LOG.md, session 39). The loop calls it every `train.return_memory_every` steps."""
    trim = _glibc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file then rename: a crash mid-write never leaves a truncated file (a full disk:
    one line, temp file removed). Weights and checkpoints use checkpoint.save_weights / save_checkpoint."""
    ckpt.atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def epoch_examples(run: Run, tc: TrainConfig, epoch: int, per_epoch: int) -> tuple[Sequence[EncodedExample], list[int]]:
    """What epoch `epoch` reads, and in which order (indices into it).

    Fixed data: the training set, shuffled per epoch. Streaming: the virtual epoch's own slice of the stream
    (examples epoch*per_epoch ..), read in stream order (fresh i.i.d. examples need no shuffle), so step s
    always reads stream examples s*P .. (s+1)*P - 1; with bucket_by_length the slice is held in memory and
    bucketed like the fixed set.
    """
    if run.train_stream is None:
        return run.train_set, epoch_order(run.train_set, tc, epoch)
    window = run.train_stream.window(epoch * per_epoch, per_epoch)
    if not tc.bucket_by_length:
        return window, list(range(per_epoch))
    held = list(window)
    return held, bucket_by_length(list(range(per_epoch)), [example_length(e) for e in held], tc.batch_size)


def curve_train_sample(run: Run, examples: Sequence[EncodedExample], trained_order: list[int], size: int) -> list[EncodedExample]:
    """What the learning curve's `train_accuracy` scores: the first `size` examples of a fixed split, or on
    fresh data the last `size` this epoch trained on (under a stream curriculum, the current phase's)."""
    if not size:
        return []
    if run.train_stream is None:
        return list(run.train_set[:size])
    return [examples[i] for i in trained_order[-size:]]


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Linear warmup, then cosine decay to 10% of the peak (`cosine`), or the peak held until the last 20% of
    the steps and a linear decay to 10% there (`wsd`, warmup-stable-decay)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "wsd":
        return 1.0 - 0.9 * max(0.0, progress - 0.8) / 0.2
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def mixed_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16"}.get(precision) or _bad_precision(precision)


def _bad_precision(precision: str) -> str:
    raise UserInputError(f"train.precision={precision!r}; expected auto, fp32 or bf16")


def train(cfg: RunConfig, progress: bool = True, stop_after_steps: int | None = None, evaluate_at_end: bool = True,
          build: Callable[[RunConfig, Path], Run] | None = None, command: str = "train") -> dict:
    """Train (resuming from out_dir's checkpoint when present), save final weights, evaluate.

    The run dir is locked for the whole command (runlock.py). An unfinished run dir (interrupted or
    failed) resumes only under the same config; Ctrl-C or SIGTERM stops at the next step boundary with
    a checkpoint and raises TrainingInterrupted; a non-finite loss or gradient raises TrainingDiverged
    (train.nonfinite=stop) and never saves non-finite weights.

    `stop_after_steps` returns right after the checkpoint of that step, as if the process were killed
    there (tests use it to check that resuming equals an uninterrupted run). `build` makes the run from the
    config (default build_run; pretraining.py passes one whose run trains an Objective); `command` is the
    CLI command that resumes the run, named in messages and recorded in its checkpoints. A config with
    `train.objective: pretrain` (and no `build`) is handed to pretraining.pretrain_coprocessor, so a sweep
    cell or `latentreason train` runs it as `latentreason pretrain-coprocessor` would.
    """
    if build is None and cfg.train.objective == "pretrain":  # a pretraining config, wherever it is trained (a sweep cell)
        from latentreason.pretraining import pretrain_coprocessor  # built on this loop: imported when asked

        return pretrain_coprocessor(cfg, progress, stop_after_steps, evaluate_at_end)
    out = Path(cfg.out_dir)
    refuse_finished_run(out)
    main = is_main_rank()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, command) if main else nullcontext(), deferred_stop() as stop:
        refuse_finished_run(out)  # again under the lock: another `train` may have finished it meanwhile
        if main:
            check_resumable(out, cfg, command)
            ckpt.remove_stale_temp_files(out)  # a killed writer's *.tmp<PID>: nobody else writes here now
        loop = prepare_run(cfg, build or build_run)  # late lookup: tests replace build_run on the module
        build_optimizer(loop)
        resume(loop, command)
        stopped = run_steps(loop, progress, stop_after_steps, stop, command)
        return stopped if stopped is not None else evaluate_and_finish(loop, progress, evaluate_at_end)


def refuse_finished_run(out: Path) -> None:
    if (out / "done.json").exists():
        raise UserInputError("this run already finished; choose a new out_dir (nothing was overwritten)", path=str(out))


def check_resumable(out: Path, cfg: RunConfig, command: str = "train") -> None:
    """An unfinished run dir (config.yaml, no done.json) is reused only under the config it started with,
    up to keys that do not change what is computed (runlock.RESUME_IGNORED_KEYS: out_dir, so a moved dir
    resumes; eval.*; logging)."""
    if not (out / "config.yaml").exists():
        return
    fresh = f"resume it with its own config (latentreason {command} {out}/config.yaml out_dir={out}), or start fresh with `rm -r {out}` or another out_dir"
    try:
        # Keys added to the config since that run started take their defaults (an old checkpoint still resumes).
        saved = deep_merge(to_dict(RunConfig()), read_yaml(out / "config.yaml"))
    except UserInputError as error:
        raise UserInputError(f"{error}; this run dir is unusable: start fresh with `rm -r {out}` or another out_dir") from None
    differences = config_differences(saved, to_dict(cfg))
    if differences:
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        raise UserInputError(f"an unfinished run with another config is here ({shown}); {fresh}", path=str(out / "config.yaml"))


# ----------------------------------------------------------------------------- the phases of train()


@dataclass
class Loop:
    """What the phases of one training command share: made by prepare_run, completed by build_optimizer and
    resume, advanced by run_steps, read by evaluate_and_finish."""

    config: RunConfig
    run: Run
    build: Callable[[RunConfig, Path], Run]
    """How `run` was built (FSDP2 builds an unsharded copy with it at the end)."""
    accelerator: Accelerator
    checkpoint: Path | None
    """The run dir's checkpoint to resume from (None: a fresh start)."""
    steps_per_epoch: int
    total_steps: int
    examples_per_step: int
    """batch_size x grad_accum x processes."""
    model: Any = None
    """The trained module (run.trained) as Accelerate prepared it: DDP / FSDP2-wrapped with several processes."""
    optimizer: Any = None
    scheduler: Any = None
    trainable: list = field(default_factory=list)
    state: dict = field(default_factory=lambda: {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "train_seconds": 0.0, "nonfinite_skipped": 0})
    """Saved in every checkpoint. train_seconds sums every segment of a resumed run (up to each one's last checkpoint)."""
    seconds_before: float = 0.0
    """train_seconds of the segments before this one."""
    began: float = 0.0
    checkpointed_step: int | None = None
    """The step of the newest checkpoint on disk (None: none yet)."""
    metrics_file: Any = None
    curve_baselines: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.began


def prepare_run(cfg: RunConfig, build: Callable[[RunConfig, Path], Run]) -> Loop:
    """Phase 1: the Accelerator, the run (data, tokenizer, method), config.yaml + tokenizer/ in the run dir,
    and the run length in optimizer steps."""
    out = Path(cfg.out_dir)
    warn_random_frozen_base(cfg)
    checkpoint = ckpt.checkpoint_path(out)  # None: a fresh start
    tc = cfg.train
    trackers = resolve_trackers(tc.trackers, tc.tensorboard)  # before any work: a missing package is a user error
    accelerator = Accelerator(mixed_precision=mixed_precision(tc.precision), cpu=not torch.cuda.is_available(),
                              log_with=trackers or None, project_dir=str(out), **distributed_kwargs(cfg))
    if accelerator.is_fsdp2 and checkpoint is not None:
        raise UserInputError("resuming an FSDP2 run is not supported yet (its checkpoint has no optimizer state); restart it or resume with train.fsdp=false", path=str(checkpoint))
    run = build(cfg, out)
    # Every rank builds its run before the main one writes tokenizer/ (a late rank would read it half-written).
    accelerator.wait_for_everyone()
    if accelerator.is_fsdp2:  # one FSDP2 unit per decoder layer, found by the backbone's own block class names
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = list(run.method.model._no_split_modules or [])
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        run.method.tokenizer.save_pretrained(str(out / "tokenizer"))
    if tc.compile and torch.cuda.is_available():
        compile_layers(run.method)

    per_step = tc.batch_size * tc.grad_accum * accelerator.num_processes
    n_train = len(run.train_set)
    if n_train < per_step:
        raise UserInputError(f"{n_train} training examples is fewer than one optimizer step needs ({per_step} = batch_size x grad_accum x processes)")
    steps_per_epoch = n_train // per_step
    total_steps = steps_per_epoch * tc.epochs
    if tc.max_steps > 0:
        total_steps = min(total_steps, tc.max_steps)
    return Loop(cfg, run, build, accelerator, checkpoint, steps_per_epoch, total_steps, per_step)


def build_optimizer(loop: Loop) -> None:
    """Phase 2: AdamW over the trainable parameters with its warmup + cosine schedule; Accelerate wraps the
    trained module and the optimizer (device, DDP / FSDP2, mixed precision)."""
    tc = loop.config.train
    trainable = [p for p in loop.run.trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95), fused=torch.cuda.is_available())
    loop.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc.warmup_steps, loop.total_steps, tc.lr_schedule))
    loop.model, loop.optimizer = loop.accelerator.prepare(loop.run.trained, optimizer)
    loop.trainable = [p for p in loop.model.parameters() if p.requires_grad]  # FSDP2 replaces parameters by sharded DTensors


def resume(loop: Loop, command: str) -> None:
    """Phase 3: from the run dir's checkpoint, when there is one: weights, optimizer moments, schedule,
    counters and RNG states (metrics.jsonl rows after its step are trained and logged again, so they go).
    A fresh start of an Objective takes its measurement of the starting weights instead."""
    accelerator, state, out = loop.accelerator, loop.state, loop.out
    state["command"] = command
    if loop.checkpoint is not None:
        weights, checkpoint = ckpt.load_checkpoint(loop.checkpoint)
        started_by = checkpoint["state"].get("command", "train")
        if started_by != command:  # its weights belong to another trained module (e.g. a pretraining objective)
            raise UserInputError(f"this unfinished run was started by `latentreason {started_by}`; resume it with "
                                 f"latentreason {started_by} {out}/config.yaml out_dir={out}", path=str(loop.checkpoint))
        accelerator.unwrap_model(loop.model).load_state_dict(weights)
        loop.optimizer.load_state_dict(checkpoint["optimizer"])
        loop.scheduler.load_state_dict(checkpoint["scheduler"])
        state |= checkpoint["state"]
        random.setstate(checkpoint["rng"]["python"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        loop.checkpointed_step = state["global_step"]
    elif loop.run.objective is not None and accelerator.is_main_process and not accelerator.is_fsdp2:
        state["before"] = loop.run.objective.measure()  # kept in the checkpoints: a resumed run reports the same
    if accelerator.is_main_process:
        ckpt.truncate_metrics(out / "metrics.jsonl", state["global_step"])
        record_segment(out, state["global_step"], accelerator.num_processes)
    loop.seconds_before = state["train_seconds"]


def run_steps(loop: Loop, progress: bool, stop_after_steps: int | None, stop: StopRequest, command: str) -> dict | None:
    """Phase 4, the step loop: epochs of optimizer steps with logging, learning curves, early stop,
    checkpoints and stop requests. Returns {"stopped_at_step": n} when `stop_after_steps` ends it."""
    accelerator, run, state, tc, out = loop.accelerator, loop.run, loop.state, loop.config.train, loop.out
    per_step = loop.examples_per_step
    loop.metrics_file = open(out / "metrics.jsonl", "a") if accelerator.is_main_process else None
    accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(to_dict(loop.config)), init_kwargs=tracker_init_kwargs(out))
    bar = tqdm(total=loop.total_steps, initial=state["global_step"], desc=f"train {run.trained.name}", disable=not (progress and accelerator.is_main_process))
    if tc.eval_every and accelerator.is_main_process:
        loop.curve_baselines = plot_baselines(task_baselines(run.task, run.eval_set[: tc.eval_every_size or None]))
    loop.began = time.perf_counter()
    loop.model.train()
    stop.deferring = True  # from here a Ctrl-C / SIGTERM waits for the end of the current step
    try:
        for epoch in range(state["epoch"], tc.epochs):
            if state["global_step"] >= loop.total_steps or state.get("early_stopped"):
                break
            reset_optimizer = run.trained.set_epoch(epoch)
            if reset_optimizer and state["step_in_epoch"] == 0:
                loop.optimizer.optimizer.state.clear()  # fresh Adam moments per curriculum stage, as in Coconut
            examples, order = epoch_examples(run, tc, epoch, loop.steps_per_epoch * per_step)
            for step_in_epoch in range(state["step_in_epoch"], loop.steps_per_epoch):
                if state["global_step"] >= loop.total_steps or state.get("early_stopped"):
                    break
                loss, grad_norm = optimizer_step(loop, examples, order[step_in_epoch * per_step: (step_in_epoch + 1) * per_step], epoch)
                state["global_step"] += 1
                if tc.return_memory_every and state["global_step"] % tc.return_memory_every == 0:
                    return_freed_memory()
                state["epoch"], state["step_in_epoch"] = epoch, step_in_epoch + 1
                if state["step_in_epoch"] == loop.steps_per_epoch:
                    state["epoch"], state["step_in_epoch"] = epoch + 1, 0
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                log_step(loop, epoch, loss, grad_norm)
                if tc.eval_every and (state["global_step"] % tc.eval_every == 0 or state["global_step"] == loop.total_steps):
                    sample = curve_train_sample(run, examples, order[: (step_in_epoch + 1) * per_step], tc.eval_train_size)
                    if learning_curve_step(accelerator, loop.model, run, state, epoch, loop.metrics_file, loop.curve_baselines, sample):
                        state["early_stopped"] = True  # checkpointed: a resumed run stops too
                at_epoch_end = state["step_in_epoch"] == 0
                if (tc.checkpoint_every and state["global_step"] % tc.checkpoint_every == 0) or at_epoch_end:
                    save_checkpoint(loop)
                if stop_after_steps is not None and state["global_step"] >= stop_after_steps:
                    save_checkpoint(loop)
                    return {"stopped_at_step": state["global_step"]}
                if any_process(accelerator, stop.requested):  # Ctrl-C / SIGTERM: this step is complete, stop here
                    if loop.checkpointed_step != state["global_step"]:
                        save_checkpoint(loop)
                    raise TrainingInterrupted(
                        f"interrupted ({stop.signal_name or 'another process'}) at step {state['global_step']}/{loop.total_steps}; checkpoint saved; "
                        f"resume with: latentreason {command} {out}/config.yaml out_dir={out}")
    finally:
        stop.deferring = False
        bar.close()
        if run.train_stream is not None:
            run.train_stream.close()
        if loop.metrics_file:
            loop.metrics_file.close()
        # Not accelerator.end_training(): it also destroys the process group, which the rest of train() needs.
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers.clear()
    return None


def optimizer_step(loop: Loop, examples: Sequence[Any], step_ids: list[int], epoch: int) -> tuple[float, Any]:
    """One optimizer step over `step_ids` (indices into `examples`): this process's micro-batches (gradients
    synchronised on the last), clipping, then AdamW, or at a non-finite loss or gradient a skipped batch
    (train.nonfinite=skip) or TrainingDiverged. Returns the step's loss and gradient norm."""
    accelerator, tc = loop.accelerator, loop.config.train
    total_loss = 0.0
    for micro in range(tc.grad_accum):
        start = (micro * accelerator.num_processes + accelerator.process_index) * tc.batch_size
        batch = loop.run.trained.collate([examples[i] for i in step_ids[start: start + tc.batch_size]])
        batch = to_device(batch, accelerator.device)
        sync = nullcontext() if micro == tc.grad_accum - 1 else accelerator.no_sync(loop.model)
        with sync, accelerator.autocast():
            loss = loop.model(batch) / tc.grad_accum
            accelerator.backward(loss)
        total_loss += loss.item()
    grad_norm = accelerator.clip_grad_norm_(loop.trainable, tc.max_grad_norm)
    if finite_everywhere(accelerator, total_loss, grad_norm):
        loop.optimizer.step()
    elif tc.nonfinite == "skip":
        loop.state["nonfinite_skipped"] += 1  # this batch changes no weight; the schedule moves on
    else:
        step = loop.state["global_step"] + 1
        if loop.metrics_file:
            loop.metrics_file.write(json_line({"step": step, "epoch": epoch, "loss": total_loss, "grad_norm": float(grad_norm), "nonfinite": True}))
        kept = f"the last good checkpoint (step {loop.checkpointed_step}) is kept" if loop.checkpointed_step is not None else "no checkpoint was written yet"
        raise ckpt.TrainingDiverged(
            f"{loop.out}: non-finite loss ({total_loss}) or gradient norm ({float(grad_norm)}) at step {step}; "
            f"stopped without applying it, {kept}; lower train.lr (now {tc.lr}), or resume past such batches with train.nonfinite=skip")
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    return total_loss, grad_norm


def log_step(loop: Loop, epoch: int, loss: float, grad_norm: Any) -> None:
    """A metrics.jsonl row (strict JSON: a NaN loss is written as null) and tracker values, every
    train.log_every steps and at the last one."""
    step = loop.state["global_step"]
    if loop.metrics_file and (step % loop.config.train.log_every == 0 or step == loop.total_steps):
        record = {"step": step, "epoch": epoch, "loss": loss, "lr": loop.scheduler.get_last_lr()[0],
                  "grad_norm": float(grad_norm), "elapsed_s": loop.seconds()}
        loop.metrics_file.write(json_line(record))
        loop.metrics_file.flush()
        loop.accelerator.log({f"train/{key}": record[key] for key in ("loss", "lr", "grad_norm")}, step=step)


def save_checkpoint(loop: Loop) -> None:
    """Weights, optimizer moments, schedule, counters and RNG states at this step boundary (atomic; the
    main process writes, every process takes part)."""
    accelerator = loop.accelerator
    accelerator.wait_for_everyone()
    weights = accelerator.get_state_dict(loop.model)  # under FSDP2 a collective that gathers full weights: all ranks call it
    if accelerator.is_main_process:
        loop.state["train_seconds"] = loop.seconds()
        ckpt.save_checkpoint(loop.out / ckpt.CHECKPOINT_FILE, weights, {
            "optimizer": None if accelerator.is_fsdp2 else loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(),
            "state": dict(loop.state),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        })
    loop.checkpointed_step = loop.state["global_step"]


def evaluate_and_finish(loop: Loop, progress: bool, evaluate_at_end: bool) -> dict:
    """Phase 5: final weights (model.safetensors), the evaluation (the task's answers, or an Objective's own
    measurement), learning_curves.png and done.json; the resume checkpoint goes."""
    accelerator, run, state, out, cfg = loop.accelerator, loop.run, loop.state, loop.out, loop.config
    method = accelerator.unwrap_model(loop.model) if run.objective is None else run.method  # an Objective trains its method in place
    accelerator.wait_for_everyone()
    if accelerator.is_fsdp2:  # FSDP2 parameters are shards: gather them (collective) into an unsharded copy to save and evaluate
        weights = accelerator.get_state_dict(loop.model)
        if accelerator.is_main_process:
            run = loop.build(cfg, out)
            run.trained.to(accelerator.device).load_state_dict(weights)
            method = run.method
    summary: dict = {"steps": state["global_step"], "train_seconds": loop.seconds()}
    if state["nonfinite_skipped"]:
        summary["nonfinite_skipped"] = state["nonfinite_skipped"]
    if state.get("early_stopped"):
        summary |= {"early_stopped": True, "best_eval_step": state.get("best_eval_step"), "best_eval_accuracy": state.get("best_eval_accuracy")}
    if loop.run.train_stream is not None:  # seconds training waited for chunk generation (this process, this session)
        summary |= {"train_examples_seen": state["global_step"] * loop.examples_per_step, "stream_wait_seconds": loop.run.train_stream.wait_seconds}
    if accelerator.is_main_process:
        ckpt.save_weights(method.state_dict(), out / ckpt.WEIGHTS_FILE)
        if evaluate_at_end and run.objective is None:
            summary |= evaluate(method, run.task, run.eval_set, cfg.eval.batch_size, cfg.eval.max_new_tokens, out, progress)
        elif evaluate_at_end:
            summary |= run.objective.facts() | {"before": state.get("before"), "after": run.objective.measure()}
        plot_learning_curves(out, plot_baselines(summary) if evaluate_at_end else loop.curve_baselines)
        ckpt.atomic_write(out / "done.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
        for name in (ckpt.CHECKPOINT_FILE, ckpt.LEGACY_CHECKPOINT_FILE):
            (out / name).unlink(missing_ok=True)
    return summary


def finite_everywhere(accelerator: Accelerator, loss: float, grad_norm: Any) -> bool:
    """Loss and gradient norm finite on every process (all take the same branch: collectives follow)."""
    finite = math.isfinite(loss) and math.isfinite(float(grad_norm))
    return not any_process(accelerator, not finite)


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """`flag` on any process (one tiny all-reduce when there are several)."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")
    return bool(total.item() > 0)


def distributed_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Accelerator arguments for multi-process runs: DDP options, plus an FSDP2 plugin when asked on GPUs.

    Single-process runs ignore both. Accelerate runs FSDP on GPUs only, so on CPU `train.fsdp` falls back
    to DDP with a warning.
    """
    tc = cfg.train
    kwargs: dict[str, Any] = {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=tc.find_unused_parameters)]}
    if not tc.fsdp:
        return kwargs
    if not torch.cuda.is_available():
        warnings.warn("train.fsdp=true needs GPUs (accelerate shards on GPUs only); training with DDP / one process instead")
        return kwargs
    reshard = tc.fsdp_reshard_after_forward
    if reshard is None:
        reshard = not method_class(cfg.method.name).multi_pass  # multi-pass methods keep layers gathered
    kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=reshard, auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT",
    )
    return kwargs


def compile_layers(method: LatentMethod, backend: str = "inductor") -> None:
    """Regional compilation: compile each decoder layer once (fast to compile, reused across loops/passes).

    Layers called with a KV cache (multi-pass methods, decoding) would otherwise be specialised per layer index
    and cache state (dynamo guards on `layer_idx` and on `cache.layers[i].is_initialized`): a 12-layer Coconut
    needed 72 graphs, and past dynamo's limit of 8 variants per function it silently ran the rest eagerly (seen
    on an H200, 2026-12-04). So the cache update runs eagerly, integer module attributes such as `layer_idx` are
    not specialised, and the number of variants no longer grows with depth (tests/test_compile.py);
    what is left (grad mode, static then dynamic shapes, optional arguments) fits a raised limit.
    `backend`: torch.compile's (tests use "eager": the same graphs, no code generation).
    """
    keep_cache_updates_eager()
    dynamo = torch._dynamo.config
    dynamo.allow_unspec_int_on_nn_module = True
    limit_name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.6
    setattr(dynamo, limit_name, max(getattr(dynamo, limit_name), 32))
    stacks = [getattr(module, "layers", None) or getattr(getattr(module, "transformer", None), "h", None) for module in method.modules()]
    for layer in [layer for stack in stacks if isinstance(stack, torch.nn.ModuleList) for layer in stack]:
        layer.compile(backend=backend)


def keep_cache_updates_eager() -> None:
    """Exclude transformers' KV-cache `update` methods from compilation (a graph break around a list append;
    traced, they specialise every compiled layer on its index). Idempotent; eager execution is unchanged."""
    import transformers.cache_utils as cache_utils

    for cls in vars(cache_utils).values():
        if isinstance(cls, type) and issubclass(cls, (cache_utils.Cache, cache_utils.CacheLayerMixin)) and "update" in vars(cls):
            if not getattr(cls.update, "_latentreason_eager", False):
                cls.update = torch.compiler.disable(cls.update)
                cls.update._latentreason_eager = True
