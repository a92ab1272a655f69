"""Run-dir files that must survive crashes: final weights, training checkpoints, metrics.

- Weights are safetensors (`model.safetensors`): loading a run never unpickles code. Old runs' `model.pt`
  (a plain state dict) still load, through `torch.load(weights_only=True)`.
- A training checkpoint is one safetensors file (`checkpoint.safetensors`): the method's weights and every
  tensor of the optimizer state as tensors, the rest (step counters, scheduler, RNG states, optimizer
  hyper-parameters) as JSON in the file's metadata. One file, so one atomic rename commits all of it.
- Every write goes to `NAME.tmp<PID>` first and is renamed over NAME: a crash mid-write never leaves a
  truncated file, a full disk removes its partial file and says so in one line, and the temp files a
  killed writer left behind are removed at the next start (`remove_stale_temp_files`).
- metrics.jsonl is strict JSON (non-finite numbers are written as null) and, on resume, is cut back to the
  checkpoint's step so no row appears twice.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from latentreason.errors import DiskFull, RunFailed, TrainingDiverged, UserInputError  # noqa: F401 (re-exported)
from latentreason.run_checks import FINAL_WEIGHTS_FILES  # spelled once, where the pre-torch checks can read it

WEIGHTS_FILE, LEGACY_WEIGHTS_FILE = FINAL_WEIGHTS_FILES
CHECKPOINT_FILE = "checkpoint.safetensors"
LEGACY_CHECKPOINT_FILE = "checkpoint.pt"
_METADATA_KEY = "latentreason"
_TEMP_SUFFIX = re.compile(r"\.tmp\d+$")


def is_disk_full(error: BaseException) -> bool:
    """OSError(ENOSPC), or the same error surfacing from safetensors' Rust writer as its message."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return isinstance(error, SafetensorError) and ("No space left" in str(error) or "os error 28" in str(error))


# ----------------------------------------------------------------------------- atomic writes


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` then rename tmp over `path`. On any failure (a full disk, Ctrl-C) the temp file is removed
    and `path` keeps its previous content."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:  # on disk before the rename, so a power cut cannot commit an empty file
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise DiskFull(f"{path}: no space left on device while writing it; the partial file was removed and the "
                           "files written before it (last good checkpoint) are intact; free some space and run the same "
                           "command again") from None
        raise


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete `*.tmp<PID>` files in `directory` left by a writer that was killed mid-write.

    Call it while holding the run-dir lock: then no live process of ours writes there.
    """
    removed = []
    if Path(directory).is_dir():
        for path in Path(directory).iterdir():
            if _TEMP_SUFFIX.search(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# ----------------------------------------------------------------------------- weights


def weights_path(run_dir: str | Path) -> Path:
    """The run's final weights: model.safetensors, or an older run's model.pt; the former when neither exists."""
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS_FILE).exists() and (run_dir / LEGACY_WEIGHTS_FILE).exists():
        return run_dir / LEGACY_WEIGHTS_FILE
    return run_dir / WEIGHTS_FILE


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors sharing memory, e.g. tied embeddings)."""
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state.items()}


def require_finite(weights: dict[str, torch.Tensor], what: str) -> None:
    """Raise TrainingDiverged instead of saving NaN/Inf weights over good ones."""
    bad = [name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise TrainingDiverged(f"{what}: {len(bad)} weight tensor(s) became non-finite (first: {bad[0]}); not saved, "
                               "the last good checkpoint is kept; lower train.lr or train.max_grad_norm")


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Final weights as safetensors, atomically; refuses non-finite weights."""
    require_finite(state, str(path))
    tensors = _plain_tensors(state)
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def read_weights(path: Path, remedy: str) -> dict[str, torch.Tensor]:
    """A state dict from model.safetensors (or an old model.pt, without unpickling code).

    A truncated, empty or garbage file is a UserInputError naming the file and `remedy` (what to delete).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle, zip and EOF errors all mean the same: unreadable
        raise UserInputError(f"cannot read these weights ({_reason(error)}): the file is truncated or corrupt; {remedy}", path=str(path)) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UserInputError(f"not a weights file (expected a mapping of names to tensors); {remedy}", path=str(path))
    return state


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:120]


# ----------------------------------------------------------------------------- training checkpoints


def checkpoint_path(out_dir: str | Path) -> Path | None:
    """The run's checkpoint to resume from (an older version's checkpoint.pt too), or None."""
    for name in (CHECKPOINT_FILE, LEGACY_CHECKPOINT_FILE):
        if (Path(out_dir) / name).exists():
            return Path(out_dir) / name
    return None


def save_checkpoint(path: Path, weights: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
    """Weights + optimizer/scheduler/loop state/RNG states in one safetensors file, atomically.

    `rest` may nest dicts, lists, tuples, numbers, strings, tensors and numpy arrays (the RNG states).
    """
    require_finite(weights, str(path))
    tensors = {f"method.{name}": t for name, t in _plain_tensors(weights).items()}
    encoded = _encode(rest, tensors)
    metadata = {"format": "pt", _METADATA_KEY: json.dumps(encoded)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    (Path(path).parent / LEGACY_CHECKPOINT_FILE).unlink(missing_ok=True)  # superseded by the new file


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, rest) as given to save_checkpoint. Also reads an older version's checkpoint.pt."""
    path = Path(path)
    remedy = f"delete it to restart this run from step 0 (rm {path})"
    try:
        if path.suffix != ".safetensors":
            return _load_legacy_checkpoint(path)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        rest = _decode(json.loads(metadata[_METADATA_KEY]), tensors)
    except Exception as error:
        raise UserInputError(f"cannot read this checkpoint ({_reason(error)}): the file is truncated or corrupt; {remedy}", path=str(path)) from None
    weights = {key[len("method."):]: t for key, t in tensors.items() if key.startswith("method.")}
    return weights, rest


def _load_legacy_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """checkpoint.pt of versions before safetensors: a torch pickle whose only non-tensor objects are numpy's
    RNG state, allowed explicitly so that weights_only=True still refuses anything else."""
    allowed = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]
    with torch.serialization.safe_globals(allowed):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["method"], {key: value for key, value in checkpoint.items() if key != "method"}


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of `obj`; tensors and arrays move into `tensors` and leave a reference."""
    if torch.is_tensor(obj):
        key = f"blob.{len(tensors)}"
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"blob.{len(tensors)}"
        tensors[key] = torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind in "iub" else obj.copy())
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(x, tensors) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(_decode(x, tensors) for x in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


# ----------------------------------------------------------------------------- metrics


def strict_json(record: dict[str, Any]) -> str:
    """One JSON line that strict parsers accept: NaN and +-Infinity become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to `step` (the checkpoint a resumed run restarts from): the steps after it are trained
    again and logged again. Also drops a half-written last line and rewrites old NaN tokens as null."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut off by a kill
        if isinstance(record, dict) and (not isinstance(record.get("step"), (int, float)) or record["step"] <= step):
            kept.append(strict_json(record))
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def load_run_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """A run dir's final weights as a state dict (model.safetensors, or an older run's model.pt)."""
    path = weights_path(run_dir)
    return read_weights(path, remedy=f"delete {Path(run_dir)} and train that run again")
