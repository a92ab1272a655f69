"""Where each wrong ProsQA CoT answer first goes wrong, from a run's predictions.jsonl.

    python results/prosqa_smollm2/chain_errors.py RUN_DIR [RUN_DIR ...]   (or a run's eval folder, e.g. RUN_DIR/eval_prosqa_valid)

Path format (the released one): walks each wrong chain against the facts in its question. A step is `invented` if
its fact is not in the question, `deadend_choice` if it is a real fact whose end concept cannot reach the gold
option, `malformed` if it is not a fact sentence; the first such step decides the kind (its index, 3 meaning 3 or
later).
Backward format (`steps: backward`, read from the run's config.yaml): the steps split into chains at each person
fact; the first of `malformed`, `invented`, `broken_chain` (a fact whose child is not the previous fact's parent, or
a first fact that is not about an option), `wrong_parent` (the gold option's chain ends at another person),
`not_two_chains`, then `misread` (both chains right, the answer names the other option).
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


PERSON_FACT = re.compile(r"(\w+) is a (\w+)\.")
QUESTION = re.compile(r"Is (\w+) a (\w+) or (\w+)\?")


def first_backward_error(row: dict) -> str:
    facts_text, question = row["question"].rsplit(". ", 1)
    facts = set(FACT.findall(facts_text + "."))
    person, *options = QUESTION.search(question).groups()
    gold = row["gold"].split()[-1].rstrip(".")
    steps = [line for line in row["generated"].split("\n") if line and not line.startswith("###")]
    chains, chain = [], []
    for step in steps:
        match = FACT.fullmatch(step)
        if not match:
            return "malformed"
        if match.groups() not in facts:
            return "invented"
        parent, child = match.groups()
        if child != (chain[-1][0] if chain else options[len(chains)] if len(chains) < 2 else None):
            return "broken_chain"
        chain.append((parent, child))
        if not step.startswith("Every "):  # a person's fact ends the chain
            chains.append(chain)
            chain = []
    if len(chains) != 2 or chain:
        return "not_two_chains"
    if chains[options.index(gold)][-1][0] != person:
        return "wrong_parent"
    return "misread"


if __name__ == "__main__":
    for run_dir in sys.argv[1:]:
        rows = [json.loads(line) for line in open(Path(run_dir) / "predictions.jsonl")]
        config = next(path for path in (Path(run_dir) / "config.yaml", Path(run_dir).parent / "config.yaml") if path.exists())
        backward = "steps: backward" in config.read_text()  # an eval folder's run is its parent
        classify = first_backward_error if backward else first_error
        kinds = collections.Counter(classify(row) for row in rows if not row["correct"])
        print(f"{run_dir}: {len(rows)} answers, {sum(kinds.values())} wrong:",
              ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()))
