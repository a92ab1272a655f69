"""The one explicit training loop (Accelerate): AdamW, warmup + cosine, grad accumulation, curriculum
epochs, JSONL metrics, atomic checkpoints that resume bit-exactly, then evaluation.

Run dir layout: config.yaml, tokenizer/, metrics.jsonl, checkpoint.pt (latest, for resume), model.pt
(final weights), done.json, eval.json, predictions.jsonl.
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
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.utils import DistributedDataParallelKwargs
from tqdm.auto import tqdm

from latentreason.backbones import TINY_BACKBONES, build_backbone
from latentreason.config import RunConfig, read_yaml, save_config, to_dict
from latentreason.data import load_splits
from latentreason.errors import UserInputError
from latentreason.evaluation import evaluate
from latentreason.methods import LatentMethod, build_method
from latentreason.tasks import Task, get_task
from latentreason.tokenization import EncodedExample, encode_examples, example_texts, load_tokenizer


@dataclass
class Run:
    """Everything built from a RunConfig before the loop starts."""

    config: RunConfig
    task: Task
    method: LatentMethod
    train_set: list[EncodedExample]
    eval_set: list[EncodedExample]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_run(cfg: RunConfig, out_dir: Path | None = None) -> Run:
    """Data, tokenizer, backbone and method for `cfg`. Reuses a tokenizer saved in the run dir or init run."""
    task = get_task(cfg.task.name)
    train_examples, eval_examples = load_splits(cfg.task)
    tokenizer = None
    for candidate in [out_dir, Path(cfg.train.init_from) if cfg.train.init_from else None]:
        if candidate is not None and (candidate / "tokenizer").is_dir():
            tokenizer = load_tokenizer(candidate / "tokenizer")
            break
    seed_everything(cfg.train.seed)  # model init depends only on the seed, not on what ran before
    corpus = example_texts(train_examples) if cfg.model.backbone in TINY_BACKBONES and tokenizer is None else None
    backbone = build_backbone(cfg.model, corpus=corpus, tokenizer=tokenizer)
    method = build_method(cfg.method, backbone)
    if cfg.train.init_from:
        load_weights(method, Path(cfg.train.init_from) / "model.pt", strict=False)
    return Run(cfg, task, method, encode_examples(backbone.tokenizer, train_examples), encode_examples(backbone.tokenizer, eval_examples))


def load_weights(method: LatentMethod, path: Path, strict: bool = True) -> None:
    if not path.exists():
        raise UserInputError("no final weights to load (did that run finish?)", path=str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = method.load_state_dict(state, strict=False)
    model_missing = [k for k in missing if k.startswith("model.")]
    if (strict and (missing or unexpected)) or model_missing:
        raise UserInputError(f"weights do not match method {method.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}", path=str(path))


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file then rename: a crash mid-write never leaves a truncated checkpoint."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
    """Train (resuming from out_dir/checkpoint.pt when present), save final weights, evaluate.

    `stop_after_steps` returns right after the checkpoint of that step, as if the process were killed
    there (tests use it to check that resuming equals an uninterrupted run).
    """
    out = Path(cfg.out_dir)
    if (out / "done.json").exists():
        raise UserInputError("this run already finished; choose a new out_dir (nothing was overwritten)", path=str(out))
    checkpoint_path = out / "checkpoint.pt"
    if checkpoint_path.exists() and (out / "config.yaml").exists():
        saved = read_yaml(out / "config.yaml")
        if saved != to_dict(cfg):
            raise UserInputError("a checkpoint with a different config exists here; resume with the same config or use a new out_dir", path=str(out / "config.yaml"))
    tc = cfg.train
    accelerator = Accelerator(mixed_precision=mixed_precision(tc.precision), cpu=not torch.cuda.is_available(), **distributed_kwargs(cfg))
    sharded = accelerator.is_fsdp2
    if sharded and checkpoint_path.exists():
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

    state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        accelerator.unwrap_model(model).load_state_dict(checkpoint["method"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = checkpoint["state"]
        random.setstate(checkpoint["rng"]["python"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        torch.set_rng_state(checkpoint["rng"]["torch"])

    def save_checkpoint() -> None:
        accelerator.wait_for_everyone()
        weights = accelerator.get_state_dict(model)  # under FSDP2 a collective that gathers full weights: all ranks call it
        if accelerator.is_main_process:
            atomic_save({
                "method": weights,
                "optimizer": None if sharded else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": dict(state),
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            }, checkpoint_path)

    metrics_file = open(out / "metrics.jsonl", "a") if accelerator.is_main_process else None
    writer = tensorboard_writer(out) if tc.tensorboard and accelerator.is_main_process else None
    bar = tqdm(total=total_steps, initial=state["global_step"], desc=f"train {method.name}", disable=not (progress and accelerator.is_main_process))
    began = time.perf_counter()
    model.train()
    try:
        for epoch in range(state["epoch"], tc.epochs):
            if state["global_step"] >= total_steps:
                break
            stage_changed = method.set_epoch(epoch)
            if stage_changed and epoch > 0 and state["step_in_epoch"] == 0 and cfg.method.coconut.reset_optimizer:
                optimizer.optimizer.state.clear()  # fresh Adam moments per curriculum stage, as in Coconut
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch)).tolist()
            for step_in_epoch in range(state["step_in_epoch"], steps_per_epoch):
                if state["global_step"] >= total_steps:
                    break
                step_ids = order[step_in_epoch * per_step: (step_in_epoch + 1) * per_step]
                total_loss = 0.0
                for micro in range(tc.grad_accum):
                    start = (micro * world + accelerator.process_index) * tc.batch_size
                    batch = method.collate([run.train_set[i] for i in step_ids[start: start + tc.batch_size]])
                    batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    sync = nullcontext() if micro == tc.grad_accum - 1 else accelerator.no_sync(model)
                    with sync, accelerator.autocast():
                        loss = model(batch) / tc.grad_accum
                        accelerator.backward(loss)
                    total_loss += loss.item()
                grad_norm = accelerator.clip_grad_norm_(trainable, tc.max_grad_norm)
                optimizer.step()
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
                              "grad_norm": float(grad_norm), "elapsed_s": time.perf_counter() - began}
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    if writer:
                        for key in ("loss", "lr", "grad_norm"):
                            writer.add_scalar(f"train/{key}", record[key], record["step"])
                at_epoch_end = state["step_in_epoch"] == 0
                if (tc.checkpoint_every and state["global_step"] % tc.checkpoint_every == 0) or at_epoch_end:
                    save_checkpoint()
                if stop_after_steps is not None and state["global_step"] >= stop_after_steps:
                    save_checkpoint()
                    return {"stopped_at_step": state["global_step"]}
    except KeyboardInterrupt:
        save_checkpoint()  # nothing lost on Ctrl-C: the next `train` resumes from here
        raise
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()
        if writer:
            writer.close()

    method = accelerator.unwrap_model(model)
    accelerator.wait_for_everyone()
    if sharded:  # FSDP2 parameters are shards: gather them (collective) into an unsharded copy to save and evaluate
        weights = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            method = build_run(cfg, out).method.to(accelerator.device)
            method.load_state_dict(weights)
    summary: dict = {"steps": state["global_step"], "train_seconds": time.perf_counter() - began}
    if accelerator.is_main_process:
        atomic_save(method.state_dict(), out / "model.pt")
        if evaluate_at_end:
            summary |= evaluate(method, run.task, run.eval_set, cfg.eval.batch_size, cfg.eval.max_new_tokens, out, progress)
        (out / "done.json").write_text(json.dumps(summary, indent=2))
        checkpoint_path.unlink(missing_ok=True)
    return summary


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


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserInputError("train.tensorboard=true needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter(str(out / "tb"))


def load_finished_run(run_dir: str | Path, overrides: dict | None = None, device: str | None = None) -> Run:
    """A finished run rebuilt from its config.yaml + tokenizer/, with model.pt loaded, in eval mode.

    `overrides` (a nested dict) change the config, e.g. another eval set or decoding budget.
    """
    from latentreason.config import deep_merge, from_dict

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UserInputError("not a run directory (no config.yaml)", path=str(run_dir))
    if not (run_dir / "model.pt").exists():
        raise UserInputError("this run has no final weights (model.pt); did it finish?", path=str(run_dir))
    cfg = from_dict(RunConfig, deep_merge(read_yaml(run_dir / "config.yaml"), overrides or {}))
    cfg.train.init_from = None  # model.pt holds every weight; the init run may be gone
    run = build_run(cfg, run_dir)
    load_weights(run.method, run_dir / "model.pt")
    run.method.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return run


def evaluate_run(run_dir: str | Path, overrides: dict | None = None, progress: bool = True, eval_name: str = "eval") -> dict:
    """Re-evaluate a finished run's final weights (e.g. with another eval set or decoding budget).

    Results go to RUN_DIR/<eval_name>/, so several re-evaluations (e.g. one per exit threshold) can coexist.
    """
    run = load_finished_run(run_dir, overrides)
    cfg = run.config
    return evaluate(run.method, run.task, run.eval_set, cfg.eval.batch_size, cfg.eval.max_new_tokens, Path(run_dir) / eval_name, progress)
