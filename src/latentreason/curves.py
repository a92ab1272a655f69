"""Learning curves: periodic evaluation on a fixed held-out subset during training, early stopping, the
strict-JSON metrics.jsonl rows and the `learning_curves.png` plot of a run dir.

Rows of metrics.jsonl: training rows carry `loss` (every `train.log_every` steps); evaluation rows carry
`eval_accuracy` (every `train.eval_every` steps), the task's diagnostic rates (`eval_well_formed_rate`,
ProsQA's `eval_names_option_rate`), and the same for a small fixed sample of the training split (`train_*`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from latentreason.evaluation import evaluate, finite_or_none
from latentreason.methods.base import LatentMethod
from latentreason.results import read_metrics
from latentreason.tasks import Task
from latentreason.tokenization import EncodedExample

PLOT_NAME = "learning_curves.png"


def json_line(record: dict) -> str:
    """One strict-JSON line (never NaN/Infinity tokens, which strict parsers reject)."""
    return json.dumps(finite_or_none(record), allow_nan=False) + "\n"


def _prefixed(summary: dict, prefix: str) -> dict:
    keys = ["accuracy", "n"] + [k for k in summary if k.endswith("_rate")]
    return {f"{prefix}_{k}": summary[k] for k in keys if k in summary}


@torch.no_grad()
def curve_point(
    method: LatentMethod,
    task: Task,
    eval_examples: Sequence[EncodedExample],
    train_examples: Sequence[EncodedExample],
    batch_size: int,
    max_new_tokens: int,
) -> dict:
    """Accuracy and diagnostic rates on the eval subset (`eval_*` keys) and the train sample (`train_*`).

    Runs under a forked torch RNG so that evaluating never changes what training draws next: a run with
    learning curves trains exactly like one without.
    """
    began = time.perf_counter()
    record: dict = {}
    with torch.random.fork_rng(devices=[]):
        for prefix, examples in (("eval", eval_examples), ("train", train_examples)):
            if examples:
                summary = evaluate(method, task, examples, batch_size, max_new_tokens, out_dir=None, progress=False, baselines=False)
                record |= _prefixed(summary, prefix)
    record["eval_seconds"] = time.perf_counter() - began
    return record


def early_stop_update(state: dict, accuracy: float, patience: int) -> bool:
    """Track the best eval accuracy in `state` (checkpointed, so resume keeps counting); True = stop now.

    Stops when `patience` evaluations in a row did not beat the best one (0 = never stop).
    """
    best = state.get("best_eval_accuracy")
    if best is None or accuracy > best:
        state["best_eval_accuracy"], state["best_eval_step"] = accuracy, state["global_step"]
        state["evals_since_best"] = 0
    else:
        state["evals_since_best"] = state.get("evals_since_best", 0) + 1
    return patience > 0 and state["evals_since_best"] >= patience


CURVE_KEYS = {
    "eval_accuracy": "eval accuracy",
    "eval_well_formed_rate": "eval well-formed",
    "eval_names_option_rate": "eval names an option",
    "eval_hits_target_rate": "eval hits the target (any numbers)",
    "eval_steps_correct_rate": "eval steps' arithmetic right",
    "train_accuracy": "train-sample accuracy",
}
"""Eval-row keys plotted (when present), with their legend labels."""


def plot_learning_curves(run_dir: str | Path, baselines: dict[str, float | None] | None = None) -> Path:
    """Write RUN_DIR/learning_curves.png from RUN_DIR/metrics.jsonl: training loss vs step on the left,
    eval metrics vs step on the right with horizontal lines for `baselines` (e.g. chance, shortcut ceiling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    loss_rows = [r for r in rows if r.get("loss") is not None]
    eval_rows = [r for r in rows if r.get("eval_accuracy") is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if loss_rows:
        left.plot([r["step"] for r in loss_rows], [r["loss"] for r in loss_rows], lw=1)
        if all(r["loss"] > 0 for r in loss_rows):
            left.set_yscale("log")
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss")
    left.set_title("loss")
    for key, label in CURVE_KEYS.items():
        points = [(r["step"], r[key]) for r in eval_rows if r.get(key) is not None]
        if points:
            right.plot(*zip(*points), marker="o", ms=3, label=label)
    styles = iter(["--", ":", "-."])
    for label, value in (baselines or {}).items():
        if value is not None:
            right.axhline(value, color="gray", ls=next(styles, "--"), lw=1, label=f"{label} {value:.2f}")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("optimizer step")
    right.set_title(f"held-out eval (n = {eval_rows[-1].get('eval_n', '?')})" if eval_rows else "held-out eval (none yet)")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8, loc="best")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / PLOT_NAME
    partial = run_dir / f".{PLOT_NAME}.{os.getpid()}.tmp.png"
    fig.savefig(partial, dpi=100)
    plt.close(fig)
    os.replace(partial, out)  # a reader never sees half a PNG
    return out


def learning_curve_step(accelerator, model, run, state: dict, epoch: int, metrics_file, baselines: dict[str, float | None],
                        train_sample: Sequence[EncodedExample]) -> bool:
    """One periodic evaluation inside the training loop: an eval row in metrics.jsonl, the tracker, the plot,
    and the early-stop decision (True = stop), identical on every process. `train_sample` is what
    `train_accuracy` scores (training.curve_train_sample).

    Only the main process evaluates (the unwrapped model, no collectives); under FSDP2 the weights are
    shards, so periodic evaluation is skipped there.
    """
    tc = run.config.train
    stop = False
    if accelerator.is_main_process and not accelerator.is_fsdp2:
        eval_examples = run.eval_set[: tc.eval_every_size] if tc.eval_every_size else run.eval_set
        record = {"step": state["global_step"], "epoch": epoch, **curve_point(
            accelerator.unwrap_model(model), run.task, eval_examples, train_sample,
            run.config.eval.batch_size, run.config.eval.max_new_tokens)}
        stop = early_stop_update(state, record["eval_accuracy"], tc.early_stop_patience)
        if stop:
            record["early_stop"] = True
        if metrics_file is not None:
            metrics_file.write(json_line(record))
            metrics_file.flush()
        accelerator.log({f"eval/{k.removeprefix('eval_')}" if k.startswith("eval_") else f"eval/{k}": v
                         for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}, step=record["step"])
        plot_learning_curves(run.config.out_dir, baselines)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = broadcast_object_list([stop, {k: v for k, v in state.items() if k not in ("global_step", "epoch", "step_in_epoch")}])
        stop = shared[0]
        state.update(shared[1])
    return stop


def plot_baselines(summary: dict) -> dict[str, float | None]:
    """Horizontal reference lines of the plot from an evaluation summary / task_baselines dict."""
    return {"chance": summary.get("chance_accuracy"), "shortcut ceiling": summary.get("shortcut_ceiling")}
