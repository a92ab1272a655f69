"""The one explicit training loop (Accelerate): AdamW, warmup + cosine, grad accumulation, curriculum
epochs, JSONL metrics, atomic checkpoints that resume bit-exactly, then evaluation.

Run dir layout: config.yaml, tokenizer/, metrics.jsonl, checkpoint.safetensors (latest, for resume),
model.safetensors (final weights; older runs: model.pt), done.json, eval.json, predictions.jsonl,
learning_curves.png (curves.py; fresh-data streaming: data.ExampleStream). File formats, atomic writes and corrupt-file errors: checkpoint.py; the run-dir lock: runlock.py; Ctrl-C and
SIGTERM at step boundaries: interrupts.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.utils import DistributedDataParallelKwargs
from tqdm.auto import tqdm

from latentreason import checkpoint as ckpt
from latentreason.backbones import TINY_BACKBONES, build_backbone
from latentreason.config import RunConfig, TrainConfig, deep_merge, read_yaml, save_config, to_dict
from latentreason.data import ExampleStream, load_splits, stream_enabled, vocabulary_texts
from latentreason.errors import UserInputError
from latentreason.curves import json_line, learning_curve_step, plot_baselines, plot_learning_curves
from latentreason.evaluation import evaluate, task_baselines
from latentreason.methods import LatentMethod, build_method
from latentreason.tasks import Task, get_task
from latentreason.interrupts import StopRequest, TrainingInterrupted, deferred_stop
from latentreason.runlock import RunLock, config_differences, is_main_rank
from latentreason.tokenization import EncodedExample, encode_examples, example_texts, load_tokenizer
from latentreason.validation import check_sequence_lengths
from latentreason.run_checks import check_init_from, check_weight_shapes, warn_random_frozen_base
from latentreason.tracking import PROJECT_NAME as TRACKER_PROJECT, resolve_trackers, tracker_config, tracker_init_kwargs


@dataclass
class Run:
    """Everything built from a RunConfig before the loop starts."""

    config: RunConfig
    task: Task
    method: LatentMethod
    train_set: list[EncodedExample]
    eval_set: list[EncodedExample]
    train_stream: ExampleStream | None = None
    """Fresh training examples (task.stream); train_set is then its first virtual epoch."""


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
            break
    seed_everything(cfg.train.seed)  # model init depends only on the seed, not on what ran before
    corpus = example_texts(train_examples) + vocabulary_texts(cfg.task.name) if cfg.model.backbone in TINY_BACKBONES and tokenizer is None else None
    backbone = build_backbone(cfg.model, corpus=corpus, tokenizer=tokenizer)
    method = build_method(cfg.method, backbone)
    if cfg.train.init_from:
        load_weights(method, ckpt.weights_path(cfg.train.init_from), strict=False)
    train_set, eval_set = encode_examples(backbone.tokenizer, train_examples), encode_examples(backbone.tokenizer, eval_examples)
    check_sequence_lengths(cfg, backbone.model, train_set, eval_set)  # a clear error now, not an IndexError mid-training
    stream = ExampleStream(cfg.task, encode=lambda chunk: encode_examples(backbone.tokenizer, chunk)) if stream_enabled(cfg.task) else None
    return Run(cfg, task, method, train_set, eval_set, stream)


def load_weights(method: LatentMethod, path: Path, strict: bool = True) -> None:
    if not path.exists():
        raise UserInputError("no final weights to load (did that run finish?)", path=str(path))
    state = ckpt.read_weights(path, remedy=f"delete {path.parent} and train that run again")
    check_weight_shapes(method.state_dict(), state, path)
    missing, unexpected = method.load_state_dict(state, strict=False)
    model_missing = [k for k in missing if k.startswith("model.")]
    if (strict and (missing or unexpected)) or model_missing:
        raise UserInputError(f"weights do not match method {method.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}", path=str(path))


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file then rename: a crash mid-write never leaves a truncated file (a full disk:
    one line, temp file removed). Weights and checkpoints use checkpoint.save_weights / save_checkpoint."""
    ckpt.atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def epoch_order(train_set: Sequence[EncodedExample], tc: TrainConfig, epoch: int) -> list[int]:
    """The order in which an epoch reads the training set: a seeded shuffle, bucketed by length when asked."""
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch)).tolist()
    if tc.bucket_by_length:
        order = bucket_by_length(order, [example_length(e) for e in train_set], tc.batch_size)
    return order


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


def example_length(example: EncodedExample) -> int:
    """Tokens of question + steps + answer: what sets an example's padded width in every method's layout."""
    return len(example.question_ids) + sum(len(s) for s in example.step_ids) + len(example.answer_ids)


BUCKET_WINDOW = 64
"""Micro-batches sorted together by bucket_by_length: enough for full buckets, few enough that the order stays
random at the scale of an epoch."""


def bucket_by_length(order: list[int], lengths: Sequence[int], batch: int, window: int = BUCKET_WINDOW) -> list[int]:
    """Reorder a shuffled `order` so that every aligned slice of `batch` indices holds similar lengths.

    Each window of `window * batch` consecutive indices is sorted by length and cut into batches, and those
    batches are put back in a shuffled order (a permutation seeded by the window's first index, so the
    result depends only on `order`). Slices stay aligned to `batch`, so micro-batches of grad_accum and of
    every process are still contiguous `batch`-sized slices; the epoch's multiset of indices is unchanged.
    """
    out: list[int] = []
    span = window * batch
    for lo in range(0, len(order), span):
        chunk = sorted(order[lo: lo + span], key=lambda i: lengths[i])
        batches = [chunk[j: j + batch] for j in range(0, len(chunk), batch)]
        full = [b for b in batches if len(b) == batch]  # a short tail batch stays last: the loop drops it
        shuffle = torch.randperm(len(full), generator=torch.Generator().manual_seed(order[lo])).tolist()
        out += [i for k in shuffle for i in full[k]] + [i for b in batches if len(b) < batch for i in b]
    return out


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def mixed_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16"}.get(precision) or _bad_precision(precision)


def _bad_precision(precision: str) -> str:
    raise UserInputError(f"train.precision={precision!r}; expected auto, fp32 or bf16")


def train(cfg: RunConfig, progress: bool = True, stop_after_steps: int | None = None, evaluate_at_end: bool = True) -> dict:
    """Train (resuming from out_dir's checkpoint when present), save final weights, evaluate.

    The run dir is locked for the whole command (runlock.py). An unfinished run dir (interrupted or
    failed) resumes only under the same config; Ctrl-C or SIGTERM stops at the next step boundary with
    a checkpoint and raises TrainingInterrupted; a non-finite loss or gradient raises TrainingDiverged
    (train.nonfinite=stop) and never saves non-finite weights.

    `stop_after_steps` returns right after the checkpoint of that step, as if the process were killed
    there (tests use it to check that resuming equals an uninterrupted run).
    """
    out = Path(cfg.out_dir)
    refuse_finished_run(out)
    main = is_main_rank()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, "train") if main else nullcontext(), deferred_stop() as stop:
        refuse_finished_run(out)  # again under the lock: another `train` may have finished it meanwhile
        if main:
            check_resumable(out, cfg)
            ckpt.remove_stale_temp_files(out)  # a killed writer's *.tmp<PID>: nobody else writes here now
        return _train(cfg, progress, stop_after_steps, evaluate_at_end, stop)


def refuse_finished_run(out: Path) -> None:
    if (out / "done.json").exists():
        raise UserInputError("this run already finished; choose a new out_dir (nothing was overwritten)", path=str(out))


def check_resumable(out: Path, cfg: RunConfig) -> None:
    """An unfinished run dir (config.yaml, no done.json) is reused only under the config it started with,
    up to keys that do not change what is computed (runlock.RESUME_IGNORED_KEYS: out_dir, so a moved dir
    resumes; eval.*; logging)."""
    if not (out / "config.yaml").exists():
        return
    fresh = f"resume it with its own config (latentreason train {out}/config.yaml out_dir={out}), or start fresh with `rm -r {out}` or another out_dir"
    try:
        # Keys added to the config since that run started take their defaults (an old checkpoint still resumes).
        saved = deep_merge(to_dict(RunConfig()), read_yaml(out / "config.yaml"))
    except UserInputError as error:
        raise UserInputError(f"{error}; this run dir is unusable: start fresh with `rm -r {out}` or another out_dir") from None
    differences = config_differences(saved, to_dict(cfg))
    if differences:
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        raise UserInputError(f"an unfinished run with another config is here ({shown}); {fresh}", path=str(out / "config.yaml"))


def _train(cfg: RunConfig, progress: bool, stop_after_steps: int | None, evaluate_at_end: bool, stop: StopRequest) -> dict:
    """The body of `train`, run with the run dir locked and SIGINT/SIGTERM handled by `stop`."""
    out = Path(cfg.out_dir)
    warn_random_frozen_base(cfg)
    checkpoint_path = ckpt.checkpoint_path(out)  # None: a fresh start
    tc = cfg.train
    trackers = resolve_trackers(tc.trackers, tc.tensorboard)  # before any work: a missing package is a user error
    accelerator = Accelerator(mixed_precision=mixed_precision(tc.precision), cpu=not torch.cuda.is_available(),
                              log_with=trackers or None, project_dir=str(out), **distributed_kwargs(cfg))
    sharded = accelerator.is_fsdp2
    if sharded and checkpoint_path is not None:
        raise UserInputError("resuming an FSDP2 run is not supported yet (its checkpoint has no optimizer state); restart it or resume with train.fsdp=false", path=str(checkpoint_path))
    run = build_run(cfg, out)
    method = run.method
    # Every rank builds its run before the main one writes tokenizer/ (a late rank would read it half-written).
    accelerator.wait_for_everyone()
    if sharded:  # one FSDP2 unit per decoder layer, found by the backbone's own block class names
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = list(method.model._no_split_modules or [])
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        method.tokenizer.save_pretrained(str(out / "tokenizer"))
    if tc.compile and torch.cuda.is_available():
        compile_layers(method)

    world = accelerator.num_processes
    per_step = tc.batch_size * tc.grad_accum * world
    n_train = len(run.train_set)
    if n_train < per_step:
        raise UserInputError(f"{n_train} training examples is fewer than one optimizer step needs ({per_step} = batch_size x grad_accum x processes)")
    steps_per_epoch = n_train // per_step
    total_steps = steps_per_epoch * tc.epochs
    if tc.max_steps > 0:
        total_steps = min(total_steps, tc.max_steps)

    trainable = [p for p in method.parameters() if p.requires_grad]
    fused = torch.cuda.is_available()
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95), fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc.warmup_steps, total_steps))
    model, optimizer = accelerator.prepare(method, optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]  # FSDP2 replaces parameters by sharded DTensors

    # train_seconds sums every segment of a resumed run (up to each one's last checkpoint).
    state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "train_seconds": 0.0, "nonfinite_skipped": 0}
    if checkpoint_path is not None:
        weights, checkpoint = ckpt.load_checkpoint(checkpoint_path)
        accelerator.unwrap_model(model).load_state_dict(weights)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state |= checkpoint["state"]
        random.setstate(checkpoint["rng"]["python"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
    if accelerator.is_main_process:  # rows after the checkpoint's step are trained and logged again: no duplicates
        ckpt.truncate_metrics(out / "metrics.jsonl", state["global_step"])
    seconds_before = state["train_seconds"]
    checkpointed_step = state["global_step"] if checkpoint_path is not None else None

    def save_checkpoint() -> None:
        nonlocal checkpointed_step
        accelerator.wait_for_everyone()
        weights = accelerator.get_state_dict(model)  # under FSDP2 a collective that gathers full weights: all ranks call it
        if accelerator.is_main_process:
            state["train_seconds"] = seconds_before + time.perf_counter() - began
            ckpt.save_checkpoint(out / ckpt.CHECKPOINT_FILE, weights, {
                "optimizer": None if sharded else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": dict(state),
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            })
        checkpointed_step = state["global_step"]

    metrics_file = open(out / "metrics.jsonl", "a") if accelerator.is_main_process else None
    accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(to_dict(cfg)), init_kwargs=tracker_init_kwargs(out))
    bar = tqdm(total=total_steps, initial=state["global_step"], desc=f"train {method.name}", disable=not (progress and accelerator.is_main_process))
    curve_baselines = plot_baselines(task_baselines(run.task, run.eval_set[: tc.eval_every_size or None])) if tc.eval_every and accelerator.is_main_process else {}
    began = time.perf_counter()
    model.train()
    stop.deferring = True  # from here a Ctrl-C / SIGTERM waits for the end of the current step
    try:
        for epoch in range(state["epoch"], tc.epochs):
            if state["global_step"] >= total_steps or state.get("early_stopped"):
                break
            stage_changed = method.set_epoch(epoch)
            if stage_changed and epoch > 0 and state["step_in_epoch"] == 0 and cfg.method.coconut.reset_optimizer:
                optimizer.optimizer.state.clear()  # fresh Adam moments per curriculum stage, as in Coconut
            examples, order = epoch_examples(run, tc, epoch, steps_per_epoch * per_step)
            for step_in_epoch in range(state["step_in_epoch"], steps_per_epoch):
                if state["global_step"] >= total_steps or state.get("early_stopped"):
                    break
                step_ids = order[step_in_epoch * per_step: (step_in_epoch + 1) * per_step]
                total_loss = 0.0
                for micro in range(tc.grad_accum):
                    start = (micro * world + accelerator.process_index) * tc.batch_size
                    batch = method.collate([examples[i] for i in step_ids[start: start + tc.batch_size]])
                    batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    sync = nullcontext() if micro == tc.grad_accum - 1 else accelerator.no_sync(model)
                    with sync, accelerator.autocast():
                        loss = model(batch) / tc.grad_accum
                        accelerator.backward(loss)
                    total_loss += loss.item()
                grad_norm = accelerator.clip_grad_norm_(trainable, tc.max_grad_norm)
                if finite_everywhere(accelerator, total_loss, grad_norm):
                    optimizer.step()
                elif tc.nonfinite == "skip":
                    state["nonfinite_skipped"] += 1  # this batch changes no weight; the schedule moves on
                else:
                    if metrics_file:
                        metrics_file.write(json_line({"step": state["global_step"] + 1, "epoch": epoch, "loss": total_loss,
                                                      "grad_norm": float(grad_norm), "nonfinite": True}))
                    kept = f"the last good checkpoint (step {checkpointed_step}) is kept" if checkpointed_step is not None else "no checkpoint was written yet"
                    raise ckpt.TrainingDiverged(
                        f"{out}: non-finite loss ({total_loss}) or gradient norm ({float(grad_norm)}) at step {state['global_step'] + 1}; "
                        f"stopped without applying it, {kept}; lower train.lr (now {tc.lr}), or resume past such batches with train.nonfinite=skip")
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["global_step"] += 1
                state["epoch"], state["step_in_epoch"] = epoch, step_in_epoch + 1
                if state["step_in_epoch"] == steps_per_epoch:
                    state["epoch"], state["step_in_epoch"] = epoch + 1, 0
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss:.4f}")
                if metrics_file and (state["global_step"] % tc.log_every == 0 or state["global_step"] == total_steps):
                    record = {"step": state["global_step"], "epoch": epoch, "loss": total_loss, "lr": scheduler.get_last_lr()[0],
                              "grad_norm": float(grad_norm), "elapsed_s": seconds_before + time.perf_counter() - began}
                    metrics_file.write(json_line(record))  # strict JSON: a NaN loss is written as null
                    metrics_file.flush()
                    accelerator.log({f"train/{key}": record[key] for key in ("loss", "lr", "grad_norm")}, step=record["step"])
                if tc.eval_every and (state["global_step"] % tc.eval_every == 0 or state["global_step"] == total_steps):
                    if learning_curve_step(accelerator, model, run, state, epoch, metrics_file, curve_baselines):
                        state["early_stopped"] = True  # checkpointed: a resumed run stops too
                at_epoch_end = state["step_in_epoch"] == 0
                if (tc.checkpoint_every and state["global_step"] % tc.checkpoint_every == 0) or at_epoch_end:
                    save_checkpoint()
                if stop_after_steps is not None and state["global_step"] >= stop_after_steps:
                    save_checkpoint()
                    return {"stopped_at_step": state["global_step"]}
                if any_process(accelerator, stop.requested):  # Ctrl-C / SIGTERM: this step is complete, stop here
                    if checkpointed_step != state["global_step"]:
                        save_checkpoint()
                    raise TrainingInterrupted(
                        f"interrupted ({stop.signal_name or 'another process'}) at step {state['global_step']}/{total_steps}; checkpoint saved; "
                        f"resume with: latentreason train {out}/config.yaml out_dir={out}")
    finally:
        stop.deferring = False
        bar.close()
        if run.train_stream is not None:
            run.train_stream.close()
        if metrics_file:
            metrics_file.close()
        # Not accelerator.end_training(): it also destroys the process group, which the rest of train() needs.
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers.clear()

    method = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()
    if sharded:  # FSDP2 parameters are shards: gather them (collective) into an unsharded copy to save and evaluate
        weights = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            method = build_run(cfg, out).method.to(accelerator.device)
            method.load_state_dict(weights)
    summary: dict = {"steps": state["global_step"], "train_seconds": seconds_before + time.perf_counter() - began}
    if state["nonfinite_skipped"]:
        summary["nonfinite_skipped"] = state["nonfinite_skipped"]
    if state.get("early_stopped"):
        summary |= {"early_stopped": True, "best_eval_step": state.get("best_eval_step"), "best_eval_accuracy": state.get("best_eval_accuracy")}
    if run.train_stream is not None:  # seconds training waited for chunk generation (this process, this session)
        summary |= {"train_examples_seen": state["global_step"] * per_step, "stream_wait_seconds": run.train_stream.wait_seconds}
    if accelerator.is_main_process:
        ckpt.save_weights(method.state_dict(), out / ckpt.WEIGHTS_FILE)
        if evaluate_at_end:
            summary |= evaluate(method, run.task, run.eval_set, cfg.eval.batch_size, cfg.eval.max_new_tokens, out, progress)
        plot_learning_curves(out, plot_baselines(summary) if evaluate_at_end else curve_baselines)
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


MULTI_PASS_METHODS = ("coconut", "coprocessor", "looped")
"""Methods that run every decoder layer several times per training step (FSDP2 keeps those layers gathered)."""


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
        reshard = cfg.method.name not in MULTI_PASS_METHODS
    kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=reshard, auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT",
    )
    return kwargs


def compile_layers(method: LatentMethod) -> None:
    """Regional compilation: compile each decoder layer once (fast to compile, reused across loops/passes)."""
    for module in method.modules():
        layers = getattr(module, "layers", None) or getattr(getattr(module, "transformer", None), "h", None)
        if isinstance(layers, torch.nn.ModuleList):
            for layer in layers:
                layer.compile()


def load_finished_run(run_dir: str | Path, overrides: dict | None = None, device: str | None = None) -> Run:
    """A finished run rebuilt from its config.yaml + tokenizer/, with its final weights loaded, in eval mode.

    `overrides` (a nested dict) change the config, e.g. another eval set or decoding budget.
    """
    from latentreason.config import deep_merge, from_dict

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UserInputError("not a run directory (no config.yaml)", path=str(run_dir))
    weights = ckpt.weights_path(run_dir)  # model.safetensors, or an older run's model.pt
    if not weights.exists():
        raise UserInputError(f"this run has no final weights ({weights.name}); did it finish?", path=str(run_dir))
    cfg = from_dict(RunConfig, deep_merge(read_yaml(run_dir / "config.yaml"), overrides or {}))
    cfg.train.init_from = None  # the final weights hold every weight; the init run may be gone
    run = build_run(cfg, run_dir)
    load_weights(run.method, weights)
    run.method.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return run


def evaluate_run(run_dir: str | Path, overrides: dict | None = None, progress: bool = True, eval_name: str = "eval") -> dict:
    """Re-evaluate a finished run's final weights (e.g. with another eval set or decoding budget).

    Results go to RUN_DIR/<eval_name>/, so several re-evaluations (e.g. one per exit threshold) can coexist;
    a name that would write over the run's own files is refused. The run dir is locked meanwhile.
    """
    check_eval_name(run_dir, eval_name)
    if not Path(run_dir).is_dir():
        raise UserInputError("not a run directory (no such directory)", path=str(run_dir))
    with RunLock(run_dir, "eval"):
        run = load_finished_run(run_dir, overrides)
        cfg = run.config
        return evaluate(run.method, run.task, run.eval_set, cfg.eval.batch_size, cfg.eval.max_new_tokens, Path(run_dir) / eval_name, progress)


RUN_DIR_ENTRIES = ("config.yaml", "tokenizer", "metrics.jsonl", "done.json", "eval.json", "predictions.jsonl", "analysis", "tb",
                   ckpt.WEIGHTS_FILE, ckpt.LEGACY_WEIGHTS_FILE, ckpt.CHECKPOINT_FILE, ckpt.LEGACY_CHECKPOINT_FILE)
"""What `train` and `analyze` write in a run dir: a re-evaluation's results folder must be none of them."""


def check_eval_name(run_dir: str | Path, eval_name: str) -> None:
    """`eval --name` is one plain folder name inside the run dir, never the run dir itself or one of its files
    (`--name ""` would overwrite the run's own eval.json and predictions.jsonl)."""
    name = str(eval_name)
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or name in RUN_DIR_ENTRIES \
            or (Path(run_dir) / name).is_file():
        raise UserInputError(f"eval --name {name!r}: expected a plain folder name for the results (default: eval), not empty, "
                             f"not a path and none of the run's own files {list(RUN_DIR_ENTRIES)}", path=str(run_dir))
