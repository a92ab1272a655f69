"""`latentreason quickstart`: the smallest end-to-end run that shows a model learning.

Streams fresh generated ProsQA problems of the smallest kind (two people, one fact each: "Fae is a grimpus.
Tom is a sterpus. Is Fae a sterpus or grimpus?"), where the one thing to learn is the binding step every
ProsQA model needs first, trains a tiny Llama-architecture model from scratch with No-CoT on CPU, evaluates it
and prints its accuracy beside chance and the eval split's shortcut ceiling; the run dir has its learning curve.
`--with-cot` adds the CoT baseline as a second cell, trained side by side in a second worker process.
It is an ordinary sweep (its YAML is written to OUT/sweep.yaml), so it resumes if interrupted.

Why this variant and recipe: from scratch, the binding step is an induction-circuit plateau (chance for
thousands of steps, then a sudden rise). With 4 heads of 32 dims it never broke in 6,000 steps; with 8 or 16
heads of 32 it broke in some seeds and not others within 4,000 steps. A 600-step warm-up in which the asked
person's fact comes last (`asked_facts_last`, a positional crutch) made it break sooner in both paired
comparisons made, but not always within the budget: seeds 0, 1, 2 of this recipe ended at 1.00, 0.66 and 0.48
(docs/LOG.md, 2026-12-02; results/quickstart_seeds). Larger graphs need a curriculum and far more than ten
minutes (results/prosqa_curriculum).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from latentreason.config import deep_merge
from latentreason.sweep import run_sweep
from latentreason.tables import markdown_table

QUICKSTART_BASE = {
    # RoPE (llama-tiny) learned faster than GPT-2's learned positions on ProsQA (docs/LOG.md, 2026-12-01); many
    # heads of 32 dims (head_dim decoupled from the width) get past the binding plateau soonest.
    "model": {"backbone": "llama-tiny", "n_layer": 2, "n_embd": 256, "n_head": 16, "head_dim": 32},
    # Two facts, one hop: the binding step alone, in ~25-token sequences. The first 600 steps put the asked
    # person's fact last (a positional crutch that lets the copy path form; the eval split never has it).
    "task": {"name": "prosqa", "train_size": 32000, "eval_size": 300, "params": {"n_nodes": 4, "min_depth": 1, "max_depth": 1},
             "stream_curriculum": [{"examples": 19200, "params": {"asked_facts_last": True}}]},
    # 4,000 steps of fresh problems; the lr is held (wsd) so a plateau that breaks late still has it; a
    # learning-curve point every 500 steps.
    "train": {"epochs": 1000, "max_steps": 4000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 100,
              "lr_schedule": "wsd", "eval_every": 500, "eval_every_size": 200},
    "eval": {"batch_size": 100, "max_new_tokens": 16},
}
"""The run config every quickstart cell shares (the sweep's `base`); its grid is `quickstart_methods()`."""


def reference_methods() -> list[str]:
    """The registry's no-latent reference baselines (No-CoT and CoT)."""
    from latentreason.methods.registry import METHODS  # imports torch: only when the quickstart runs

    return [name for name, method in METHODS.items() if method.reference_baseline]


def quickstart_methods(with_cot: bool) -> list[str]:
    """The answer-only reference baseline (No-CoT), plus the one that trains on the steps (CoT) when asked."""
    from latentreason.config import MethodConfig
    from latentreason.methods.registry import METHODS

    return [name for name in reference_methods() if with_cot or not METHODS[name].uses_steps(MethodConfig(name=name))]


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


def start_helper_worker(config_path: Path, threads: int) -> subprocess.Popen:
    """A second sweep worker in its own process (`latentreason sweep CONFIG`), quiet, with `threads` threads: it
    claims a cell the way any sweep worker does, so the two cells train side by side, one per core. At this
    model size one thread per run beats two threads on one run (thread sync costs more than it gives)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, "-m", "latentreason.cli", "--quiet", "sweep", str(config_path)], env=env,
                            stdout=subprocess.DEVNULL)


def quickstart(out_dir: str | Path = "runs/quickstart", progress: bool = True, base_overrides: dict | None = None,
               workers: int = 1, with_cot: bool = False) -> str:
    """Run (or resume) the quickstart sweep under `out_dir` and return the printed table.

    The default lies under the git-ignored runs/, so a fresh checkout trains for real instead of finding
    the committed results/quickstart/ already finished. `base_overrides` (a nested RunConfig mapping)
    shrinks it for tests. `with_cot` adds the CoT cell; `workers` = 2 then trains the two cells at once, the
    second in a helper process with half the threads (0 = choose from the free threads: the CLI's default).
    """
    import torch  # here, not at the top: `latentreason quickstart --help` stays fast

    threads = choose_threads()
    methods = quickstart_methods(with_cot)
    workers = min(2, threads, len(methods)) if workers == 0 else max(1, min(2, workers, len(methods)))
    helper_threads = threads // 2 if workers == 2 else 0
    threads = max(1, threads - helper_threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)  # only allowed before the first parallel op; harmless to skip
    except RuntimeError:
        pass
    if progress:
        if helper_threads:
            print(f"quickstart: two cells side by side ({threads} + {helper_threads} CPU threads; set OMP_NUM_THREADS "
                  "to choose); a step bar for the cell this process trains, the other trains quietly")
        else:
            print(f"quickstart: {threads} CPU thread(s) (set OMP_NUM_THREADS to choose); a step bar per cell")
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep = {"out_dir": str(out), "base": deep_merge(QUICKSTART_BASE, base_overrides or {}), "grid": {"method.name": methods}}
    config_path = out / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    helper = start_helper_worker(config_path, helper_threads) if helper_threads else None
    try:
        rows = run_sweep(config_path, progress=progress, cell_progress=progress)
    finally:
        if helper is not None and helper.wait() != 0:
            print(f"quickstart: the helper worker exited with {helper.returncode}; its cell's error.txt says why")
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
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {threads + helper_threads} thread(s) in {workers} "
               f"worker(s), torch {torch.__version__}")
    (out / "timing.json").write_text(json.dumps({"wall_seconds": round(seconds, 1), "threads": threads + helper_threads,
                                                 "workers": workers, "machine": machine}) + "\n")
    print(f"quickstart took {seconds / 60:.1f} min ({machine}); cells already finished are not retrained")
    if progress:
        print(f"runs, metrics and this table: {out}/")
    return table
