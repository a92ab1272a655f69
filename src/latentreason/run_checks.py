"""Checks made when a run starts, so a wrong starting point fails in one line instead of mid-way (or never).

- `train.init_from` must come from a run with the same model size, tokenizer and (for from-scratch
  backbones, whose tokenizer is trained on the task text) the same task;
- weights whose shapes do not fit the model are a one-line error, not a state_dict traceback;
- a frozen Base (e.g. the Coprocessor's liu/h1 variants) that is a random from-scratch model gets one warning line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from latentreason.backbone_names import TINY_BACKBONE_NAMES
from latentreason.config import RunConfig, read_yaml
from latentreason.environment import read_segments  # light: torch is imported only to describe this process
from latentreason.errors import UserInputError
from latentreason.methods import method_class  # light: the method classes load on the first call

SHAPE_KEYS = ("backbone", "n_layer", "n_embd", "n_head", "max_positions", "tokenizer_vocab_size")
"""Model settings a from-scratch starting run must share: they fix every weight shape and the tokenizer."""


def check_init_from(config: RunConfig) -> None:
    """One-line errors when `train.init_from` names a run this one cannot start from.

    Compares the starting run's config.yaml with `config`; weight shapes are checked again when loading
    (`check_weight_shapes`), which also covers backbones whose settings are not in the config.
    """
    if not config.train.init_from:
        return
    start = Path(config.train.init_from)
    if not start.is_dir():
        raise UserInputError("train.init_from: no such run directory", path=str(start))
    if not (start / "config.yaml").exists():
        return  # not one of our run dirs: only the weight check applies
    theirs = read_yaml(start / "config.yaml")
    their_model: dict[str, Any] = theirs.get("model") or {}
    their_task: dict[str, Any] = theirs.get("task") or {}
    here = config.model
    where = str(start / "config.yaml")
    if here.backbone in TINY_BACKBONE_NAMES or their_model.get("backbone") in TINY_BACKBONE_NAMES:
        for key in SHAPE_KEYS:
            if key in their_model and their_model[key] != getattr(here, key):
                raise UserInputError(
                    f"train.init_from was trained with model.{key}={their_model[key]}, this run has model.{key}={getattr(here, key)}; "
                    "start from a run with the same model settings", path=where)
        their_name = their_task.get("name")
        if their_name is not None and their_name != config.task.name:
            raise UserInputError(
                f"train.init_from was trained on task {their_name}, this run is task {config.task.name}: its tokenizer was trained on "
                f"{their_name} text; start from a {config.task.name} run", path=where)


def recorded_host_caveat(run_dir: Path) -> str:
    """Where the run was trained, from its environment.jsonl (one row per segment: a start and each resume), as a
    caveat for re-creating it: the same config and seed give the same weights only on the same kind of CPU with the
    same thread count (session 36: the 10-node SmolLM2 CoT run re-created on an Intel host with two threads scored
    0.924 where the AMD, one-thread original scored 0.900; session 30's re-creation on the original's kind of host
    was exact)."""
    try:
        segments = read_segments(run_dir)
    except (OSError, ValueError):
        return ""
    hosts = [f"{row['processor']} with {row.get('torch_threads', '?')} torch thread(s) from step {row.get('from_step', '?')}"
             for row in segments if isinstance(row, dict) and row.get("processor")]
    if not hosts:
        return ""
    return (f" (it was trained on {', then '.join(hosts)}, environment.jsonl; re-created on another kind of CPU or "
            "thread count it is another draw of the same recipe, not the same weights)")


def missing_weights_remedy(run_dir: str | Path) -> str:
    """What to do about a run dir without final weights. A finished run whose weights are gone is the usual case
    in a fresh clone: results/ commits a run's config, metrics and eval, never its weights (.gitignore), yet later
    runs start from it (e.g. the GSM8K curriculum from results/gsm8k_cpu's CoT cell). Its config re-creates them."""
    run_dir = Path(run_dir)
    if (run_dir / "done.json").is_file() and (run_dir / "config.yaml").is_file():
        return (f"it finished, but its weights are not here (results/ keeps weights out of git); re-create them with "
                f"`latentreason train {run_dir / 'config.yaml'} out_dir=NEW_DIR`, then move NEW_DIR/model.safetensors into {run_dir}"
                + recorded_host_caveat(run_dir))
    return "train that run first (runs from a fresh clone have no runs/ yet)"


FINAL_WEIGHTS_FILES = ("model.safetensors", "model.pt")
"""A run's final weights, the current name first; model.pt only in runs older than the switch to safetensors.
checkpoint.py takes its WEIGHTS_FILE / LEGACY_WEIGHTS_FILE from here (this module must load without torch)."""


def require_final_weights(run_dir: str | Path, what: str = "this run") -> None:
    """A one-line error, before torch is imported, when `run_dir` has no final weights, saying how to get them."""
    run_dir = Path(run_dir)
    if not any((run_dir / name).is_file() for name in FINAL_WEIGHTS_FILES):
        raise UserInputError(f"{what} has no final weights (model.safetensors): {missing_weights_remedy(run_dir)}",
                             path=str(run_dir / FINAL_WEIGHTS_FILES[0]))


def check_finished_run(run_dir: str | Path) -> None:
    """A finished run's directory, checked before torch is imported: its config.yaml and its final weights."""
    if not (Path(run_dir) / "config.yaml").is_file():
        raise UserInputError("not a run directory (no config.yaml)", path=str(run_dir))
    require_final_weights(run_dir)


def check_weight_shapes(own: Mapping[str, Any], loaded: Mapping[str, Any], path: str | Path) -> None:
    """A one-line error naming the first tensor whose shape differs (instead of torch's list of all)."""
    wrong = [key for key in loaded if key in own and tuple(loaded[key].shape) != tuple(own[key].shape)]
    if wrong:
        key = wrong[0]
        raise UserInputError(
            f"weights do not fit this model: {key} is {tuple(loaded[key].shape)} there and {tuple(own[key].shape)} here "
            f"({len(wrong)} tensor(s) differ); was that run trained with other model settings or another tokenizer?", path=str(path))


def warn_random_frozen_base(config: RunConfig) -> str | None:
    """Print (and return) the method's one warning line when it freezes a Base that nothing has trained: a
    from-scratch backbone and no train.init_from. Which configurations freeze the Base, and how to say so,
    is the method's to tell (`LatentMethod.random_base_warning`)."""
    if config.train.init_from or config.model.backbone not in TINY_BACKBONE_NAMES:
        return None  # a trained run or a pretrained backbone is a real Base
    message = method_class(config.method.name).random_base_warning(config.method, config.model.backbone)
    if message is not None:
        print(message, file=sys.stderr)
    return message
