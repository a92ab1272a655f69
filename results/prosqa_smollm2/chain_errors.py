"""Where each wrong ProsQA path-CoT answer first goes wrong, from a run's predictions.jsonl.

    python results/prosqa_smollm2/chain_errors.py RUN_DIR [RUN_DIR ...]

Walks each wrong chain against the facts in its question. A step is `invented` if its fact is not in the question,
`deadend_choice` if it is a real fact whose end concept cannot reach the gold option, `malformed` if it is not a
fact sentence; the first such step decides the kind (its index, 3 meaning 3 or later). Path-format CoT only.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

FACT = re.compile(r"(?:Every )?(\w+) is a (\w+)\.")


def first_error(row: dict) -> str:
    facts_text, question = row["question"].rsplit(". ", 1)
    facts = set(FACT.findall(facts_text + "."))
    children = collections.defaultdict(set)
    for parent, child in facts:
        children[parent].add(child)
    gold = row["gold"].split()[-1].rstrip(".")

    def reaches_gold(node: str) -> bool:
        seen, todo = {node}, [node]
        while todo:
            for child in children[todo.pop()]:
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return gold in seen

    for index, step in enumerate(line for line in row["generated"].split("\n") if line):
        match = FACT.fullmatch(step)
        if not match:
            return f"malformed@{min(index, 3)}"
        if match.groups() not in facts:
            return f"invented@{min(index, 3)}"
        if not reaches_gold(match.group(2)):
            return f"deadend_choice@{min(index, 3)}"
    return "other"


if __name__ == "__main__":
    for run_dir in sys.argv[1:]:
        rows = [json.loads(line) for line in open(Path(run_dir) / "predictions.jsonl")]
        kinds = collections.Counter(first_error(row) for row in rows if not row["correct"])
        print(f"{run_dir}: {len(rows)} answers, {sum(kinds.values())} wrong:",
              ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()))
