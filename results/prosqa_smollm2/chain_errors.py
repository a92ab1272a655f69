"""Where each wrong ProsQA CoT answer first goes wrong, and accuracy by hops and by the released file's shortcut,
from a run's predictions.jsonl.

    python results/prosqa_smollm2/chain_errors.py RUN_DIR [RUN_DIR ...]   (or a run's eval folder, e.g. RUN_DIR/eval_prosqa_valid)

Path format (the released one): walks each wrong chain against the facts in its question. A step is `invented` if
its fact is not in the question, `deadend_choice` if it is a real fact whose end concept cannot reach the gold
option, `malformed` if it is not a fact sentence; the first such step decides the kind (its index, 3 meaning 3 or
later).
Backward format (`steps: backward`, read from the run's config.yaml): the steps split into chains at each person
fact; the first of `malformed`, `invented`, `broken_chain` (a fact whose child is not the previous fact's parent, or
a first fact that is not about an option), `wrong_parent` (the gold option's chain ends at another person),
`not_two_chains`, then `misread` (both chains right, the answer names the other option).
Then accuracy by answer-path hops (from the question's facts; eval.json's `accuracy_by_steps` counts the trace's
own steps, which for backward traces are both chains) and by whether "the option with the larger shortest depth"
(the released file's strongest single shortcut, `latentreason data audit`) is right, wrong or tied.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

import yaml

from latentreason.tasks.audit import _parse_prosqa, _reach, prosqa_option_features
from latentreason.tasks.base import Example

FACT = re.compile(r"(?:Every )?(\w+) is a (\w+)\.")


def parse(row: dict) -> dict:
    """The row's problem (audit's parse: person, options, facts) plus `fact_pairs`, `children` and `gold`."""
    problem = _parse_prosqa(Example(row["question"], [], row["gold"]))
    problem["fact_pairs"] = {(parent, child) for parent, child, _ in problem["facts"]}
    problem["children"] = collections.defaultdict(list)
    for parent, child in problem["fact_pairs"]:
        problem["children"][parent].append(child)
    problem["gold"] = problem["options"][1 - problem["label"]]
    return problem


def first_error(row: dict, problem: dict) -> str:
    gold = problem["gold"]
    for index, step in enumerate(line for line in row["generated"].split("\n") if line):
        match = FACT.fullmatch(step)
        if not match:
            return f"malformed@{min(index, 3)}"
        if match.groups() not in problem["fact_pairs"]:
            return f"invented@{min(index, 3)}"
        end = match.group(2)
        if end != gold and gold not in _reach(end, problem["children"]):
            return f"deadend_choice@{min(index, 3)}"
    return "other"


def first_backward_error(row: dict, problem: dict) -> str:
    options = problem["options"]
    steps = [line for line in row["generated"].split("\n") if line and not line.startswith("###")]
    chains, chain = [], []
    for step in steps:
        match = FACT.fullmatch(step)
        if not match:
            return "malformed"
        if match.groups() not in problem["fact_pairs"]:
            return "invented"
        parent, child = match.groups()
        if chain:
            expected_child = chain[-1][0]  # the chain climbs: this fact's child is the last fact's parent
        else:
            expected_child = options[len(chains)] if len(chains) < 2 else None  # a new chain starts at an option
        if child != expected_child:
            return "broken_chain"
        chain.append((parent, child))
        if not step.startswith("Every "):  # a person's fact ends the chain
            chains.append(chain)
            chain = []
    if len(chains) != 2 or chain:
        return "not_two_chains"
    if chains[options.index(problem["gold"])][-1][0] != problem["person"]:
        return "wrong_parent"
    return "misread"


def hops(problem: dict) -> int:
    """Facts on the path from the asked person to the gold option (breadth-first layers)."""
    layer, depth = {problem["person"]}, 0
    while problem["gold"] not in layer:
        layer, depth = {child for node in layer for child in problem["children"][node]}, depth + 1
    return depth


def shortcut_case(problem: dict) -> str:
    """Is "pick the option with the larger shortest depth below a person" right, wrong or tied here?"""
    first, second = (features["min_depth"] for features in prosqa_option_features(problem))
    if first == second:
        return "tie"
    return "shortcut right" if (first > second) == bool(problem["label"]) else "shortcut wrong"


def rates(groups: dict) -> str:
    return ", ".join(f"{key}: {sum(v) / len(v):.3f} ({len(v)})" for key, v in sorted(groups.items()))


if __name__ == "__main__":
    for run_dir in sys.argv[1:]:
        rows = [json.loads(line) for line in open(Path(run_dir) / "predictions.jsonl")]
        problems = [parse(row) for row in rows]
        config = next(path for path in (Path(run_dir) / "config.yaml", Path(run_dir).parent / "config.yaml") if path.exists())
        task_params = yaml.safe_load(config.read_text())["task"].get("params") or {}  # an eval folder's run is its parent
        backward = task_params.get("steps") == "backward"
        classify = first_backward_error if backward else first_error
        kinds = collections.Counter(classify(row, problem) for row, problem in zip(rows, problems) if not row["correct"])
        print(f"{run_dir}: {len(rows)} answers, {sum(kinds.values())} wrong:",
              ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()))
        by_hops, by_shortcut = collections.defaultdict(list), collections.defaultdict(list)
        for row, problem in zip(rows, problems):
            by_hops[hops(problem)].append(row["correct"])
            by_shortcut[shortcut_case(problem)].append(row["correct"])
        print(f"  by hops: {rates(by_hops)}")
        print(f"  by the larger-shortest-depth shortcut: {rates(by_shortcut)}")
