"""`latentreason pretrain-coprocessor` (or any run with `train.objective: pretrain`, e.g. a sweep cell): the
Coprocessor's pretraining objective on plain text (methods/coprocessor_pretrain.py, Liu et al. 2024) for
every variant (liu, h1, h2), trained by the one training loop, so it has what `train` has: Accelerate
(devices, DDP, mixed precision), atomic checkpoints with exact resume, Ctrl-C / SIGTERM at step boundaries,
the non-finite guard and the run-dir lock.

The run dir holds what a train run dir holds (config.yaml, tokenizer/, metrics.jsonl, model.safetensors:
the whole Coprocessor method, the `train.init_from` of a fine-tuning run of the same variant), with
done.json and pretrain.json giving the ahead-token perplexities with and without latents before and after
pretraining; no eval.json (there is no task accuracy), so sweep tables leave it out and the report lists
it with its perplexities (results.pretraining_rows).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from latentreason import checkpoint as ckpt
from latentreason.config import RunConfig
from latentreason.errors import UserInputError
from latentreason.methods.coprocessor_pretrain import CoprocessorPretraining, check_pretraining_config
from latentreason.runlock import is_main_rank
from latentreason.training import Run, build_run, train

COMMAND = "pretrain-coprocessor"


def build_pretraining_run(cfg: RunConfig, out_dir: Path | None = None) -> Run:
    """The usual run (tokenizer, Base from train.init_from, Coprocessor), training the pretraining objective
    over the packed text of the task's train split (or the corpus file) instead of the task examples."""
    run = build_run(cfg, out_dir)
    if run.train_stream is not None:  # the corpus is the fixed train split, as before: no fresh-data stream
        run.train_stream.close()
    objective = CoprocessorPretraining(run.method, [e.example for e in run.train_set], [e.example for e in run.eval_set],
                                       seed=cfg.train.seed, batch_size=cfg.train.batch_size)
    return dataclasses.replace(run, train_set=objective.items(), train_stream=None, objective=objective)


def pretrain_coprocessor(cfg: RunConfig, progress: bool = True, stop_after_steps: int | None = None, evaluate_at_end: bool = True) -> dict:
    """Pretrain a `coprocessor` method of any variant on plain text: its Coprocessor and soft tokens, and
    with variant h2 its Base too (fully or through LoRA).

    The Base comes from `train.init_from` (e.g. a No-CoT run). Uses the training loop's keys
    (train.lr, weight_decay, warmup_steps, max_grad_norm, batch_size, grad_accum, seed, precision,
    checkpoint_every, nonfinite; the run length is train.epochs over the packed text, capped by
    train.max_steps), method.n_latents and method.coprocessor.pretrain_*. `stop_after_steps` and
    `evaluate_at_end` as in training.train.
    """
    check_pretraining_config(cfg.method)
    if cfg.train.eval_every or cfg.train.bucket_by_length:
        raise UserInputError("pretraining has no task answers to score (train.eval_every) and equal-length sequences "
                             "(train.bucket_by_length): leave both off")
    summary = train(cfg, progress, stop_after_steps, evaluate_at_end, build=build_pretraining_run, command=COMMAND)
    if "stopped_at_step" not in summary and evaluate_at_end and is_main_rank():
        out = Path(cfg.out_dir) / "pretrain.json"
        ckpt.atomic_write(out, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary
