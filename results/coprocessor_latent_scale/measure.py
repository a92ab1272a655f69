"""Latent-scale experiment (issue 13 item 1): answer loss of liu (latent_scale none / rms / learned) and h1
over the committed quickstart No-CoT Base, at initialisation and after a short training run.

    nice -n 15 env OMP_NUM_THREADS=1 python results/coprocessor_latent_scale/measure.py [STEPS] [SETTING ...]

Measures every setting at initialisation, then trains each under runs/coprocessor_latent_scale/ (no final
eval) and writes results/coprocessor_latent_scale/<setting>.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from latentreason import checkpoint as ckpt
from latentreason.config import load_config
from latentreason.training import build_run, load_weights, train

START = "results/quickstart/runs/no_cot"
HERE = Path(__file__).parent
EVAL_EXAMPLES = 100
"""Answer loss is measured on the first 100 eval problems (one thread on a loaded machine)."""
SETTINGS = {
    "liu_none": ["method.coprocessor.variant=liu", "method.coprocessor.latent_scale=none"],
    "liu_rms": ["method.coprocessor.variant=liu", "method.coprocessor.latent_scale=rms"],
    "liu_learned": ["method.coprocessor.variant=liu", "method.coprocessor.latent_scale=learned"],
    "h1": ["method.coprocessor.variant=h1"],
}


@torch.no_grad()
def answer_loss(method, examples, batch_size: int = 50) -> float:
    method.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        total += float(method.loss(method.collate(chunk))) * len(chunk)
        count += len(chunk)
    return total / count


def settings_config(name: str, steps: int):
    overrides = [f"out_dir=runs/coprocessor_latent_scale/{name}_{steps}", "method.name=coprocessor", "method.n_latents=4",
                 f"train.init_from={START}", f"train.max_steps={steps}", "train.batch_size=16", "train.warmup_steps=20",
                 "train.eval_every=0", "train.log_every=20", *SETTINGS[name]]
    return load_config(f"{START}/config.yaml", overrides), overrides


def main() -> None:
    """Losses at initialisation for every setting first (cheap), then train each and measure again."""
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    names = sys.argv[2:] or list(SETTINGS)
    records = {}
    for name in names:
        cfg, overrides = settings_config(name, steps)
        run = build_run(cfg)
        eval_set = run.eval_set[:EVAL_EXAMPLES]
        run.method.mask_latents = True
        base = answer_loss(run.method, eval_set)  # exactly the No-CoT Base (tests/test_neutral_start.py)
        run.method.mask_latents = False
        records[name] = {"setting": name, "steps": steps, "overrides": overrides, "eval_examples": len(eval_set),
                         "answer_loss_base": base, "answer_loss_init": answer_loss(run.method, eval_set)}
        print(json.dumps(records[name]), flush=True)
        (HERE / f"{name}_{steps}.json").write_text(json.dumps(records[name], indent=1) + "\n")
    for name in names:
        cfg, _ = settings_config(name, steps)
        t0 = time.time()
        train(cfg, progress=False, evaluate_at_end=False)
        run = build_run(cfg)
        load_weights(run.method, ckpt.weights_path(cfg.out_dir))
        records[name].update(answer_loss_after=answer_loss(run.method, run.eval_set[:EVAL_EXAMPLES]), train_seconds=time.time() - t0)
        print(json.dumps(records[name]), flush=True)
        (HERE / f"{name}_{steps}.json").write_text(json.dumps(records[name], indent=1) + "\n")


if __name__ == "__main__":
    main()
