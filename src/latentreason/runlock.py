"""One process at a time per run dir, and resumes only under the config the run started with.

`RunLock(run_dir, "train")` holds RUN_DIR/.lock while train / eval / analyze write there. The lock is an
OS file lock (flock), so a holder that dies (crash, kill -9) releases it and the next command takes it over;
the file also names the holder (command, PID, host) for the error message. A lock written on another host
is respected even when flock cannot see it (a shared file system): the message says to delete it by hand
if that process is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from latentreason.errors import UserInputError

LOCK_FILE = ".lock"

RESUME_IGNORED_KEYS = ("out_dir", "eval.", "train.log_every", "train.checkpoint_every", "train.tensorboard", "train.trackers", "train.nonfinite",
                       "train.return_memory_every")
"""Config keys that may change when an unfinished run resumes: none changes what the resumed steps compute
(out_dir: a run dir may be moved; eval.*: evaluation runs after training, so a bad eval value is fixed
by re-running with the right one; logging, checkpoint frequency, what to do at the next non-finite step, and how often
freed memory goes back to the OS)."""


def is_main_rank() -> bool:
    """Rank 0 of a multi-process launch (torchrun / accelerate set RANK), or a single process."""
    return os.environ.get("RANK", "0") == "0"


class RunLock:
    """Exclusive use of a run dir while this object is entered (`with RunLock(dir, "eval"): ...`)."""

    def __init__(self, run_dir: str | Path, command: str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.run_dir.is_dir():
            raise UserInputError("no such run directory", path=str(self.run_dir))
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UserInputError(f"run directory in use by {_describe(holder)}; wait for it to finish or stop it", path=str(self.run_dir)) from None
            try:  # a releasing holder unlinks the file: the inode we locked must still be the one at the path
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            holder = _read_holder(fd)
            if holder and holder.get("host") != socket.gethostname():
                os.close(fd)  # flock may not reach across hosts on a shared file system: trust the file
                raise UserInputError(f"run directory in use by {_describe(holder)} (another host: cannot check it is alive); "
                                     f"if it is gone, delete {self.path}", path=str(self.run_dir))
            # Free, or left by a dead process on this host (its flock went with it): ours now.
            me = {"command": self.command, "argv": " ".join(sys.argv), "pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # unlink while still holding it: see the inode check in acquire
        os.close(self.fd)
        self.fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode()) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return f"`latentreason {holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')})"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "params":
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: saved -> current` for every compared key that differs (see RESUME_IGNORED_KEYS)."""
    old, new = flatten(saved), flatten(current)
    differ = []
    for key in sorted(set(old) | set(new)):
        if any(key == ignored or (ignored.endswith(".") and key.startswith(ignored)) for ignored in RESUME_IGNORED_KEYS):
            continue
        if old.get(key) != new.get(key):
            differ.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return differ
