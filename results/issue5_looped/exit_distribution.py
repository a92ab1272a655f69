"""Teacher-forced view of each trained model on 100 eval examples: mean exit distribution p(t) and mean
per-loop cross-entropy CE_t over target tokens (steps + answer). Usage: python exit_distribution.py RUN_DIR..."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from latentreason.config import RunConfig, from_dict, read_yaml
from latentreason.methods.looped import exit_distribution
from latentreason.checkpoint import weights_path
from latentreason.training import build_run, load_weights

torch.set_num_threads(1)
for run_dir in map(Path, sys.argv[1:]):
    run = build_run(from_dict(RunConfig, read_yaml(run_dir / "config.yaml")), run_dir)
    load_weights(run.method, weights_path(run_dir))  # model.safetensors, or model.pt of older runs
    m = run.method.eval()
    batch = m.collate(run.eval_set[:100])
    with torch.no_grad():
        states = m.loop_states(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        labels = batch["labels"][:, 1:]
        target = labels != -100
        ce = torch.stack([F.cross_entropy(m.logits(h[:, :-1]).flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none").view_as(labels) for h in states])
        lam = torch.stack([m.exit_lambda(h[:, :-1]) for h in states[:-1]]) if m.loops > 1 else ce[:0]
        p = exit_distribution(lam)
    print(f"{run_dir.name}: mean p(t) {[round(float(x[target].mean()), 3) for x in p]}  CE_t {[round(float(x[target].mean()), 3) for x in ce]}")
