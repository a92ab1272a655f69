"""`latentreason quickstart`: the smallest end-to-end run worth looking at.

Generates a small ProsQA-style set (shallow graphs so sequences are short), trains a tiny GPT-2-architecture
model from scratch with CoT and with No-CoT on CPU, evaluates both and prints an accuracy table. It is an
ordinary sweep (its YAML is written to OUT/sweep.yaml), so it resumes if interrupted.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from latentreason.config import deep_merge
from latentreason.experiments import markdown_table, run_sweep

QUICKSTART_SWEEP = {
    "base": {
        "model": {"backbone": "gpt2-tiny", "n_layer": 2, "n_embd": 128, "n_head": 4, "tokenizer_vocab_size": 512},
        "task": {"name": "prosqa", "train_size": 2000, "eval_size": 200, "params": {"n_nodes": 10, "min_depth": 2, "max_depth": 3}},
        "train": {"epochs": 10, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20},
        "eval": {"batch_size": 100, "max_new_tokens": 48},
    },
    "grid": {"method.name": ["no_cot", "cot"]},
}


def quickstart(out_dir: str | Path = "runs/quickstart", progress: bool = True, base_overrides: dict | None = None) -> str:
    """Run (or resume) the quickstart sweep under `out_dir` and return the printed table.

    The default lies under the git-ignored runs/, so a fresh checkout trains for real instead of finding
    the committed results/quickstart/ already finished. `base_overrides` (a nested RunConfig mapping)
    shrinks it for tests.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep = {"out_dir": str(out), **QUICKSTART_SWEEP, "base": deep_merge(QUICKSTART_SWEEP["base"], base_overrides or {})}
    config_path = out / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    rows = run_sweep(config_path, progress=progress)
    columns = ["method.name", "accuracy", "accuracy_ci95", "generated_tokens_per_answer", "forward_passes_per_answer", "flops_per_answer", "seconds_per_answer", "train_seconds"]
    for row in rows:
        low, high = row["accuracy_ci95"]
        row["accuracy_ci95"] = f"[{low:.2f}, {high:.2f}]"
    table = markdown_table(sorted(rows, key=lambda r: r["method.name"]), columns)
    print(table)
    (out / "quickstart.md").write_text(table + "\n")
    if progress:
        print(f"runs, metrics and this table: {out}/")
    return table
