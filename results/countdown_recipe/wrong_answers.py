"""Why the b = 3 CoT model's answers fail: the task's diagnostics over its committed predictions.
Run from the repository root: python results/countdown_recipe/wrong_answers.py results/countdown_recipe/b3_cot_s6"""
import json
import re
import sys
from collections import Counter

from latentreason.tasks import get_task
from latentreason.tasks.base import Example

task, counts = get_task("countdown"), Counter()
for row in map(json.loads, open(f"{sys.argv[1]}/predictions.jsonl")):
    numbers, target = re.match(r"Numbers: ([\d ]+)\. Target: (\d+)\.", row["question"]).groups()
    example = Example(row["question"], [], row["gold"], {"numbers": [int(x) for x in numbers.split()], "target": int(target)})
    checks = task.diagnostics(row["generated"], example)
    counts.update({("all", k): v for k, v in checks.items()} | {("all", "n"): 1, ("all", "correct"): row["correct"]})
    if not row["correct"]:
        counts.update({("wrong", k): v for k, v in checks.items()} | {("wrong", "n"): 1})
for group in ("all", "wrong"):
    print(group, {k: v for (g, k), v in sorted(counts.items()) if g == group})
