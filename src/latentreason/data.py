"""Train/eval splits from a TaskConfig: a file when given, else the task's generator.

Generated splits are cached on disk (`LATENTREASON_DATA_CACHE`, default ~/.cache/latentreason/generated;
set it to `off` to disable): a sweep builds the same splits for every cell and again for every analysis,
and Countdown's exact solver takes about a minute per 2,000 examples at branching 6. The cache key covers
the task, split, size, seed, generator parameters and the source code of the task's module, so editing a
generator invalidates its entries.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import sys
from pathlib import Path

from latentreason.config import TaskConfig
from latentreason.errors import UserInputError
from latentreason.tasks import Example, Task, get_task

EVAL_SEED_OFFSET = 1_000_003
"""Eval examples come from a different generator seed so they never coincide with training seeds."""

CACHE_ENV = "LATENTREASON_DATA_CACHE"


def cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "0", "false", "none"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "latentreason" / "generated"


def _cache_path(task: Task, split: str, size: int, seed: int, params: dict) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    source = Path(inspect.getsourcefile(type(task)) or "")
    code = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else ""
    key = json.dumps({"task": task.name, "split": split, "size": size, "seed": seed, "params": params, "code": code}, sort_keys=True, default=repr)
    return root / f"{task.name}-{split}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pkl"


def generate_cached(task: Task, split: str, size: int, seed: int, params: dict) -> list[Example]:
    """task.generate(size, seed, **params), read from / written to the on-disk cache when it is on."""
    path = _cache_path(task, split, size, seed, params)
    if path is not None and path.exists():
        try:
            with open(path, "rb") as handle:
                return pickle.load(handle)
        except Exception as error:  # a truncated or foreign file: regenerate and overwrite it
            print(f"warning: ignoring unreadable data cache {path} ({error})", file=sys.stderr)
    examples = task.generate(size, seed, **params)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            with open(partial, "wb") as handle:
                pickle.dump(examples, handle)
            os.replace(partial, path)  # atomic: concurrent workers never read half a file
        except OSError as error:  # a read-only home must not stop training
            print(f"warning: could not write the data cache {path} ({error})", file=sys.stderr)
    return examples


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
        examples = generate_cached(task, split, size, seed, generator_params(task, cfg, split))
    if not examples:
        raise UserInputError(f"empty {split} dataset for task {cfg.name!r}", path=path)
    return examples


def load_splits(cfg: TaskConfig) -> tuple[list[Example], list[Example]]:
    return load_split(cfg, "train"), load_split(cfg, "test")
