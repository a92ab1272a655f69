"""Train/eval splits from a TaskConfig: a file when given, else the task's generator."""

from __future__ import annotations

import inspect

from latentreason.config import TaskConfig
from latentreason.errors import UserInputError
from latentreason.tasks import Example, Task, get_task

EVAL_SEED_OFFSET = 1_000_003
"""Eval examples come from a different generator seed so they never coincide with training seeds."""


def generator_params(task: Task, cfg: TaskConfig, split: str) -> dict:
    """Keyword arguments for task.generate: the task's own params plus branching/split when it takes them."""
    accepted = inspect.signature(task.generate).parameters
    params = dict(cfg.params)
    if "branching" in accepted:
        params.setdefault("branching", cfg.branching)
    if "split" in accepted:
        params.setdefault("split", split)
    return params


def load_split(cfg: TaskConfig, split: str) -> list[Example]:
    task = get_task(cfg.name)
    path = cfg.train_path if split == "train" else cfg.eval_path
    size = cfg.train_size if split == "train" else cfg.eval_size
    if path:
        examples = task.load(path)
        if size:
            examples = examples[:size]
    else:
        seed = cfg.seed if split == "train" else cfg.seed + EVAL_SEED_OFFSET
        examples = task.generate(size, seed, **generator_params(task, cfg, split))
    if not examples:
        raise UserInputError(f"empty {split} dataset for task {cfg.name!r}", path=path)
    return examples


def load_splits(cfg: TaskConfig) -> tuple[list[Example], list[Example]]:
    return load_split(cfg, "train"), load_split(cfg, "test")
