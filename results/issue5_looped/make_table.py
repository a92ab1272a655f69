"""Accuracy, mean loops and FLOPs saved vs exit threshold q for every (task, T) run of the issue-5 sweep.

Reads RUN/eval.json (q = 1.0, written by the sweep), RUN/eval_q{q}/eval.json (written by
`latentreason eval RUN --name eval_q{q} method.looped.exit_q={q}`) and RUN/eval_q{q}_{policy}/eval.json
(same with method.looped.kv_policy={policy}); writes table_q.md and table_q.csv here.
"""

import csv
import json
from pathlib import Path

import yaml

from latentreason.tables import markdown_table

here = Path(__file__).parent
rows = []
for run in sorted((here / "runs").iterdir()):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    task = cfg["task"]["name"] + (f"-b{cfg['task']['branching']}" if cfg["task"]["name"] == "countdown" else "")
    for eval_file in sorted(run.glob("eval*/eval.json")) + [run / "eval.json"]:
        e = json.loads(eval_file.read_text())
        name = eval_file.parent.name if eval_file.parent != run else "eval"
        policy = name.split("_", 2)[2] if name.count("_") >= 2 else cfg["method"]["looped"]["kv_policy"]
        rows.append({
            "task": task, "T": cfg["method"]["looped"]["loops"], "q": e["exit_q"], "kv_policy": policy, "accuracy": e["accuracy"],
            "ci95": f"[{e['accuracy_ci95'][0]:.2f}, {e['accuracy_ci95'][1]:.2f}]", "mean_loops": e["mean_loops"],
            "flops_saved": e["flops_saved_fraction"], "flops_per_answer": e["flops_per_answer"],
            "loop_passes_per_answer": e["forward_passes_per_answer"], "tokens_per_answer": e["generated_tokens_per_answer"],
        })
rows = sorted(rows, key=lambda r: (r["task"], r["T"], -r["q"], r["kv_policy"] != "reuse", r["kv_policy"]))
columns = list(rows[0])
with open(here / "table_q.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
fmt = lambda v: f"{v:.3g}" if isinstance(v, float) and abs(v) >= 1e4 else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
table = markdown_table(rows, columns, fmt=fmt)
(here / "table_q.md").write_text(table + "\n")
print(table)
