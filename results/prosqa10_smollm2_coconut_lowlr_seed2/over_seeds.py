"""The half-lr ProsQA Coconut arm over its three seeds (one sweep folder per task.seed): per-seed accuracy
differences between Coconut N_L = 3, CoT continued and the paced N_L = 0 control, and their mean with a Student-t 95%
CI over the seeds (results.mean_ci95). `latentreason claims` pools only each cell against its own control (Coconut -
CoT continued); this adds the paced control, which the report does not pair with Coconut.

    python results/prosqa10_smollm2_coconut_lowlr_seed2/over_seeds.py
"""

import json

from latentreason.results import mean_ci95

SWEEPS = ["results/prosqa10_smollm2_coconut_lowlr", "results/prosqa10_smollm2_coconut_lowlr_seed1",
          "results/prosqa10_smollm2_coconut_lowlr_seed2"]
CELLS = {"coconut": "coconut_nlatents-3", "cot": "cot", "paced": "soft_tokens_nlatents-0_enabled-True_controlstages-3"}

gains: dict[str, list[float]] = {"coconut - cot": [], "coconut - paced": [], "cot - paced": []}
for seed, sweep in enumerate(SWEEPS):
    acc = {name: json.load(open(f"{sweep}/runs/{cell}_seed-{seed}/eval.json"))["accuracy"] for name, cell in CELLS.items()}
    print(f"seed {seed}: " + ", ".join(f"{name} {value:.3f}" for name, value in acc.items()))
    for pair in gains:
        a, b = pair.split(" - ")
        gains[pair].append(acc[a] - acc[b])
for pair, values in gains.items():
    mean, half = mean_ci95(values)
    print(f"{pair}: {' '.join(f'{v:+.3f}' for v in values)}; mean {mean:+.3f} +/- {half:.3f} over {len(values)} seeds")
