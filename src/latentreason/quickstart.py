"""`latentreason quickstart`: the smallest end-to-end run worth looking at.

Streams small generated ProsQA problems (shallow 8-node graphs so sequences are short), trains a tiny
Llama-architecture model from scratch with CoT and with No-CoT on CPU, evaluates both and prints an accuracy
table beside chance and the eval split's shortcut ceiling; each run dir has its learning curves. It is an
ordinary sweep (its YAML is written to OUT/sweep.yaml), so it resumes if interrupted.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import yaml

from latentreason.config import deep_merge
from latentreason.sweep import run_sweep
from latentreason.tables import markdown_table

QUICKSTART_BASE = {
    # RoPE (llama-tiny) learned faster than GPT-2's learned positions on ProsQA (docs/LOG.md, 2026-12-01).
    "model": {"backbone": "llama-tiny", "n_layer": 4, "n_embd": 128, "n_head": 4},
    # One- and two-hop problems on 8-node graphs: the shortest ProsQA sequences the debiased generator makes.
    "task": {"name": "prosqa", "train_size": 8000, "eval_size": 200, "params": {"n_nodes": 8, "min_depth": 1, "max_depth": 2}},
    # 4 virtual epochs of fresh problems = 1,000 steps; a learning-curve point every 250.
    "train": {"epochs": 4, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "eval_every": 250, "eval_every_size": 200},
    "eval": {"batch_size": 100, "max_new_tokens": 48},
}
"""The run config every quickstart cell shares (the sweep's `base`); its grid is `reference_methods()`."""


def reference_methods() -> list[str]:
    """The methods the quickstart trains: the registry's no-latent reference baselines (No-CoT and CoT)."""
    from latentreason.methods.registry import METHODS  # imports torch: only when the quickstart runs

    return [name for name, method in METHODS.items() if method.reference_baseline]


def choose_threads() -> int:
    """CPU threads for the quickstart's tiny models: the cores this process may use minus the ones other work
    keeps busy (1-minute load average), at most 4 (more threads only add sync cost at this size), at least 1.
    An explicit OMP_NUM_THREADS wins. On a busy 2-core machine the default of one thread per core
    oversubscribed it: 35 min instead of 13.5 with one thread (issue 16)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(4, round(cores - busy)))


def quickstart(out_dir: str | Path = "runs/quickstart", progress: bool = True, base_overrides: dict | None = None) -> str:
    """Run (or resume) the quickstart sweep under `out_dir` and return the printed table.

    The default lies under the git-ignored runs/, so a fresh checkout trains for real instead of finding
    the committed results/quickstart/ already finished. `base_overrides` (a nested RunConfig mapping)
    shrinks it for tests.
    """
    import torch  # here, not at the top: `latentreason quickstart --help` stays fast

    threads = choose_threads()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)  # only allowed before the first parallel op; harmless to skip
    except RuntimeError:
        pass
    if progress:
        print(f"quickstart: {threads} CPU thread(s) (set OMP_NUM_THREADS to choose); a step bar per cell")
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep = {"out_dir": str(out), "base": deep_merge(QUICKSTART_BASE, base_overrides or {}), "grid": {"method.name": reference_methods()}}
    config_path = out / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    rows = run_sweep(config_path, progress=progress, cell_progress=progress)
    columns = ["method.name", "accuracy", "accuracy_ci95", "generated_tokens_per_answer", "forward_passes_per_answer", "flops_per_answer", "seconds_per_answer", "train_seconds"]
    # No-reasoning reference points beside the accuracy (eval.json has them when the task defines them).
    columns[3:3] = [c for c in ("chance_accuracy", "shortcut_ceiling") if any(row.get(c) is not None for row in rows)]
    for row in rows:
        low, high = row["accuracy_ci95"]  # per run: the Wilson interval [low, high] (README: one CI convention)
        row["accuracy_ci95"] = f"[{low:.2f}, {high:.2f}]"
    table = markdown_table(sorted(rows, key=lambda r: r["method.name"]), columns)
    print(table)
    (out / "quickstart.md").write_text(table + "\n")
    seconds = time.perf_counter() - started
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {threads} thread(s), torch {torch.__version__}"
    (out / "timing.json").write_text(json.dumps({"wall_seconds": round(seconds, 1), "threads": threads, "machine": machine}) + "\n")
    print(f"quickstart took {seconds / 60:.1f} min ({machine}); cells already finished are not retrained")
    if progress:
        print(f"runs, metrics and this table: {out}/")
    return table
