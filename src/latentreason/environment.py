"""What a run segment ran on, so a result can be re-created and a small difference explained.

Floating-point results depend on more than the config and the seed: the same run re-created with the same code
differs in the 7th digit of its first perplexity when torch picks other CPU kernels (AVX2 against AVX-512;
docs/LOG.md session 24), and training grows that to the 4th digit. `train` therefore appends one line to
`environment.jsonl` in the run dir for every segment (a fresh start and each resume): the step it started at,
the library versions, the CPU kernel level and thread count, the GPU, the process count and the code's git
commit.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latentreason.results import read_metrics

ENVIRONMENT_FILE = "environment.jsonl"


def package_version(name: str) -> str | None:
    """The installed version of a package, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def code_commit(source: Path | None = None) -> str | None:
    """The git commit of the checkout this code runs from, with "-dirty" when a tracked file in `source` (default:
    this package's folder) differs from it; None outside a git checkout (an installed wheel) or without git."""
    here = source or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name ("AMD EPYC ...", "Intel(R) Xeon(R) ..."): `platform.processor()` where it says
    more than the architecture, else the first "model name" of /proc/cpuinfo (Linux), else None. Sessions
    here have landed on AMD and on Intel hosts with different bf16 units, so the kernel level alone does not
    say which machine made a number."""
    named = platform.processor()
    if named and named != platform.machine():
        return named
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return named or None


def describe_environment(processes: int = 1) -> dict[str, Any]:
    """Versions, CPU kernel level, threads, GPU and code commit of this process (see the module docstring)."""
    import torch  # here, not at the top: reading environment.jsonl (read_segments) must not need torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "accelerate": package_version("accelerate"),
        "machine": platform.machine(),
        "processor": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        # The kernels torch dispatches to (e.g. AVX2, AVX512); ATEN_CPU_CAPABILITY can lower it.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "processes": processes,
        # Where the package was imported from: a snapshot of src/ outside the checkout has no commit, but says so.
        "code_path": str(Path(__file__).resolve().parent),
        "code_commit": code_commit(),
    }


def record_segment(run_dir: Path, from_step: int, processes: int = 1) -> dict[str, Any]:
    """Append this segment's environment to the run dir's environment.jsonl; returns the row written."""
    row = {"from_step": from_step, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           **describe_environment(processes)}
    with open(Path(run_dir) / ENVIRONMENT_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def read_segments(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run dir's environment.jsonl ([] for runs made before it existed), read as metrics.jsonl is
    (a line cut off by a kill at the end is skipped, a damaged one elsewhere raises with its line number)."""
    return read_metrics(Path(run_dir) / ENVIRONMENT_FILE)
