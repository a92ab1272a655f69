"""Finished runs: rebuild one from its run dir (config.yaml + tokenizer/ + final weights) and re-evaluate it."""

from __future__ import annotations

from pathlib import Path

import torch

from latentreason import checkpoint as ckpt
from latentreason.config import RunConfig, read_yaml
from latentreason.environment import ENVIRONMENT_FILE
from latentreason.errors import UserInputError
from latentreason.evaluation import evaluate
from latentreason.run_checks import check_finished_run
from latentreason.runlock import RunLock
from latentreason.training import Run, build_run, load_weights


def load_finished_run(run_dir: str | Path, overrides: dict | None = None, device: str | None = None) -> Run:
    """A finished run rebuilt from its config.yaml + tokenizer/, with its final weights loaded, in eval mode.

    `overrides` (a nested dict) change the config, e.g. another eval set or decoding budget.
    """
    from latentreason.config import deep_merge, from_dict

    run_dir = Path(run_dir)
    check_finished_run(run_dir)
    weights = ckpt.weights_path(run_dir)  # model.safetensors, or an older run's model.pt
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


RUN_DIR_ENTRIES = ("config.yaml", "tokenizer", "metrics.jsonl", "done.json", "eval.json", "predictions.jsonl", "analysis", "tb", ENVIRONMENT_FILE,
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
