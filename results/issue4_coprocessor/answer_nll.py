"""Held-out answer NLL of every finished cell of a sweep (teacher-forced, mean per answer token).

Accuracies of these CPU-sized runs sit at 0; the answer-token cross-entropy on the eval split still shows
whether a method's latents help the Base predict the gold answer. Every method's loss is the mean
cross-entropy over answer tokens only (answer marker + answer + eos), so the numbers are comparable.

    .venv/bin/python results/issue4_coprocessor/answer_nll.py results/issue4_coprocessor
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from latentreason.config import RunConfig, from_dict, read_yaml
from latentreason.tables import markdown_table
from latentreason.checkpoint import weights_path
from latentreason.training import build_run, load_weights


@torch.no_grad()
def answer_nll(run_dir: Path, batch_size: int = 50) -> float:
    cfg = from_dict(RunConfig, read_yaml(run_dir / "config.yaml"))
    cfg.train.init_from = None  # the run's own weights, tokenizer from the run dir
    run = build_run(cfg, run_dir)
    load_weights(run.method, weights_path(run_dir))  # model.safetensors, or model.pt of older runs
    method = run.method.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(run.eval_set), batch_size):
        chunk = run.eval_set[start: start + batch_size]
        count = sum(len(e.answer_ids) for e in chunk)
        total += float(method.loss(method.collate(chunk))) * count
        tokens += count
    return total / tokens


def main(sweep_dir: str) -> None:
    rows = []
    for run_dir in sorted((Path(sweep_dir) / "runs").glob("*")):
        if not (run_dir / "done.json").exists():
            continue
        cfg = read_yaml(run_dir / "config.yaml")
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows.append({
            "task": cfg["task"]["name"], "method": cfg["method"]["name"],
            "variant": cfg["method"]["coprocessor"]["variant"] if cfg["method"]["name"] == "coprocessor" else "",
            "n_latents": cfg["method"]["n_latents"], "final_train_loss": metrics[-1]["loss"],
            "eval_answer_nll": answer_nll(run_dir),
        })
    (Path(sweep_dir) / "answer_nll.json").write_text(json.dumps(rows, indent=1))
    table = markdown_table(rows, list(rows[0]))
    (Path(sweep_dir) / "answer_nll.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main(sys.argv[1])
