"""Experiment tracking through Accelerate's own trackers (TensorBoard, W&B, MLflow, ... ), not a hand-written
writer: `train.trackers` names them, the loop calls `accelerator.init_trackers / log / end_training`.

metrics.jsonl stays the project's own record of a run; trackers are for watching and comparing runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentreason.errors import UserInputError

PROJECT_NAME = "tb"
"""Accelerate's project name. TensorBoard writes to RUN_DIR/tb/ under it (where the old writer wrote), so
`tensorboard --logdir runs/` shows every run; W&B and MLflow get the run dir's name as the run name."""

PIP_NAMES = {"comet_ml": "comet-ml"}


def _registered() -> dict[str, Any]:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return LOGGER_TYPE_TO_CLASS


def _installed(name: str) -> bool:
    """Built-in trackers are installed when their package imports; a class registered with
    `accelerate.tracking.register_tracker_class` is always available."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    if name not in {str(t) for t in LoggerType}:
        return True
    return name in {str(t) for t in get_available_trackers()}


def resolve_trackers(setting: str | list[str] | None, tensorboard: bool = False) -> list[str]:
    """Tracker names for `train.trackers`.

    `auto` = TensorBoard when the tensorboard package is installed, else nothing (silently);
    `none` / empty = nothing; otherwise a comma string or a list of names, each of which must be installed.
    `tensorboard` is the old `train.tensorboard=true` flag: it asks for TensorBoard explicitly.
    """
    if setting is None:
        setting = "none"
    names = [str(n).strip() for n in setting] if isinstance(setting, (list, tuple)) else [n.strip() for n in str(setting).split(",")]
    names = [n for n in names if n and n.lower() != "none"]
    if names == ["auto"]:
        names = ["tensorboard"] if _installed("tensorboard") else []
    elif "auto" in names:
        raise UserInputError(f"train.trackers={setting!r}: `auto` cannot be combined with other trackers")
    if tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    known = _registered()
    for name in names:
        if name not in known:
            raise UserInputError(f"train.trackers: unknown tracker {name!r}; expected auto, none or a comma list of {sorted(known)}")
        if not _installed(name):
            raise UserInputError(f"train.trackers: {name!r} is not installed (pip install {PIP_NAMES.get(name, name)})")
    return list(dict.fromkeys(names))


def tracker_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The run config flattened to `section.key: scalar` (trackers accept only bool/int/float/str hparams)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= tracker_config(value, name + ".")
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def tracker_init_kwargs(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-tracker start arguments: runs named after their run dir, W&B files kept inside it."""
    return {"wandb": {"name": out_dir.name, "dir": str(out_dir)}, "mlflow": {"run_name": out_dir.name}}
