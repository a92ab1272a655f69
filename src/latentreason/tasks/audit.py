"""Shortcut audit: how well does a split's answer follow from cues that need no reasoning?

ProsQA asks "Is Tom a X or Y?". A model that never follows the graph from Tom can still beat chance
when the target differs from the negative target in some cheap way: it is mentioned more often, it
is the child of more facts, it sits deeper, its last mention is nearer the question, it is the first
option, ... `prosqa_audit` scores every such cue in both directions (e.g. "larger in-degree" and
"smaller in-degree"; a tie counts as a coin flip, 0.5) and trains a bag-of-words logistic-regression
probe on half of the split and tests it on the other half. None of the cues looks at who is asked
about: that would be reasoning. The largest accuracy of them all is the split's *shortcut ceiling*:
an accuracy at or below it says nothing about reasoning.

Everything is read from the text (question and answer), the way a model sees it, so any file in the
ProsQA format can be audited, generated or released.

Countdown has no options to pick from; `countdown_audit` reports what could make it easier than it
looks: problems solvable with a strict subset of the numbers, the number of distinct targets and the
most common target's share, and the accuracy of fixed answers that need no search (the sum of all
numbers, their product, the largest minus the others, ...), whose maximum is the Countdown shortcut
ceiling. At small branching factors it is far from 0 (the sum of three numbers answers about a
quarter of k = 3 problems): the search space is that small.

GSM8K has a free-form numeric answer; `gsm8k_audit` scores answers read off the question without
solving it (its last, first, largest or smallest number, the sum or product of its numbers) and the
split's most common answer (a majority-class guess, measured on the split itself, so an upper bound of
what a model that learned the answer distribution gets). Their maximum is the GSM8K shortcut ceiling.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from latentreason.errors import UserInputError
from latentreason.tasks.base import Example
from latentreason.tasks.prosqa import graph_stats

CHANCE = {"prosqa": 0.5}
"""Accuracy of guessing for tasks with a fixed number of options."""

# --------------------------------------------------------------------------------------------------
# ProsQA: parsing the text into a graph and per-option cues
# --------------------------------------------------------------------------------------------------

_QUESTION_RE = re.compile(r"\s*Is (\S+) an? (\S+) or (\S+)\?\s*$")
_FACT_RE = re.compile(r"^(Every )?(\S+) is an? (\S+)$")

OPTION_FEATURES: dict[str, tuple[str, str]] = {
    "mentions": ("mentioned more often", "mentioned less often"),
    "in_degree": ("larger in-degree (child of more facts)", "smaller in-degree"),
    "out_degree": ("larger out-degree (parent in more facts)", "smaller out-degree"),
    "option_position": ("second option", "first option"),
    "first_mention": ("first mention later", "first mention earlier"),
    "last_mention_gap": ("last mention farther from the question", "last mention nearest the question"),
    "min_depth": ("larger shortest depth below a person", "smaller shortest depth below a person"),
    "max_depth": ("larger longest depth below a person", "smaller longest depth below a person"),
    "ancestors": ("more ancestors", "fewer ancestors"),
    "person_ancestors": ("reached by more people", "reached by fewer people"),
    "descendants": ("more descendants", "fewer descendants"),
    "siblings": ("more siblings (other children of its parents)", "fewer siblings"),
    "parent_in_degree": ("parents with larger total in-degree", "parents with smaller total in-degree"),
    "parent_out_degree": ("parents with larger total out-degree", "parents with smaller total out-degree"),
    "name_length": ("longer name", "shorter name"),
    "name_order": ("name later alphabetically", "name earlier alphabetically"),
}
"""Per-option cues: name -> (what "larger value" means as a rule, what "smaller value" means)."""


def _parse_prosqa(example: Example) -> dict[str, Any] | None:
    """The example's text as facts, options and label; None when the text is not ProsQA-shaped."""
    match = _QUESTION_RE.search(example.question)
    if match is None:
        return None
    person, first, second = match.groups()
    answer = example.answer.strip().rstrip(".").split()
    if not answer or answer[-1] not in (first, second) or first == second:
        return None
    body = example.question[: match.start()]
    facts = []
    for sentence in body.split("."):
        sentence = sentence.strip()
        if not sentence:
            continue
        fact = _FACT_RE.match(sentence)
        if fact is None:
            return None
        facts.append((fact[2], fact[3], fact[1] is None))  # parent, child, parent is a person
    words = body.replace(".", " ").split()
    return {"person": person, "options": (first, second), "label": int(answer[-1] == first),
            "facts": facts, "words": words}


def _reach(start: str, edges: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(edges.get(start, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(edges.get(node, ()))
    return seen


def _depths(nodes: set[str], parents: dict[str, list[str]]) -> tuple[dict[str, int], dict[str, int]]:
    """Shortest and longest number of facts from a source (a node with no parent) to each node."""
    shortest: dict[str, int] = {}
    longest: dict[str, int] = {}
    children: dict[str, list[str]] = {}
    indeg = {u: len(set(parents.get(u, ()))) for u in nodes}
    for v in nodes:
        for u in set(parents.get(v, ())):
            children.setdefault(u, []).append(v)
    ready = [u for u in nodes if indeg[u] == 0]
    for u in ready:
        shortest[u] = longest[u] = 0
    while ready:  # Kahn's order; nodes on a cycle (not ProsQA, but any text parses) keep no depth
        u = ready.pop()
        for v in children.get(u, ()):
            shortest[v] = min(shortest.get(v, 1 << 30), shortest[u] + 1)
            longest[v] = max(longest.get(v, 0), longest[u] + 1)
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    return shortest, longest


def prosqa_option_features(parsed: dict[str, Any]) -> list[dict[str, float]]:
    """The `OPTION_FEATURES` cues of both options (question order) of one parsed problem."""
    children: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = {}
    people = set()
    nodes = set()
    for parent, child, is_person in parsed["facts"]:
        children.setdefault(parent, []).append(child)
        parents.setdefault(child, []).append(parent)
        nodes.update((parent, child))
        if is_person:
            people.add(parent)
    shortest, longest = _depths(nodes, parents)
    words = parsed["words"]
    features = []
    for position, option in enumerate(parsed["options"]):
        at = [i for i, w in enumerate(words) if w == option]
        ancestors = _reach(option, parents)
        own_parents = set(parents.get(option, ()))
        features.append({
            "mentions": len(at),
            "in_degree": len(parents.get(option, ())),
            "out_degree": len(children.get(option, ())),
            "option_position": position,
            "first_mention": at[0] if at else len(words),
            "last_mention_gap": len(words) - at[-1] if at else len(words) + 1,
            "min_depth": shortest.get(option, 0),
            "max_depth": longest.get(option, 0),
            "ancestors": len(ancestors),
            "person_ancestors": len(ancestors & people),
            "descendants": len(_reach(option, children)),
            "siblings": len({c for p in own_parents for c in children[p]} - {option}),
            "parent_in_degree": sum(len(parents.get(p, ())) for p in own_parents),
            "parent_out_degree": sum(len(children.get(p, ())) for p in own_parents),
            "name_length": len(option),
            "name_order": 0 if option == min(parsed["options"]) else 1,
        })
    return features


def _rule_accuracy(values: Sequence[tuple[float, float]], labels: Sequence[int]) -> float:
    """Accuracy of "pick the option with the larger value" (ties: a coin flip, counted 0.5)."""
    score = 0.0
    for (first, second), label in zip(values, labels):
        if first == second:
            score += 0.5
        else:
            score += float((first > second) == bool(label))
    return score / len(labels)


# --------------------------------------------------------------------------------------------------
# Bag-of-words logistic probe
# --------------------------------------------------------------------------------------------------

PROBE_WINDOW = 3
"""Words on each side of an option's mention that go into its bag of words."""
PROBE_MIN_COUNT = 3
PROBE_MAX_VOCAB = 400
PROBE_L2_GRID = (0.1, 1.0, 10.0, 100.0)


def _option_bag(parsed: dict[str, Any], option: str) -> Counter[str]:
    """Words around the option's mentions (position-tagged: "-1:Every"), and its own name."""
    words = parsed["words"]
    bag: Counter[str] = Counter({f"self:{option}": 1})
    for i, w in enumerate(words):
        if w != option:
            continue
        for offset in range(-PROBE_WINDOW, PROBE_WINDOW + 1):
            if offset and 0 <= i + offset < len(words):
                bag[f"{offset}:{words[i + offset]}"] += 1
    return bag


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 25) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method; the last column of `x` is the
    intercept (not regularised). Returns the weights."""
    n, d = x.shape
    w = np.zeros(d)
    penalty = np.full(d, l2)
    penalty[-1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-6 * np.eye(d)
        delta = np.linalg.solve(hess, grad)
        w -= delta
        if np.max(np.abs(delta)) < 1e-6:
            break
    return w


def _probe_matrix(rows: list[tuple[list[dict[str, float]], list[Counter[str]]]],
                  vocab: list[str]) -> np.ndarray:
    """One row per problem: option 1's features minus option 2's, then a constant 1 (intercept:
    it picks up any first/second-option bias)."""
    index = {t: i for i, t in enumerate(vocab)}
    names = list(OPTION_FEATURES)
    x = np.zeros((len(rows), len(names) + len(vocab) + 1))
    for r, (feats, bags) in enumerate(rows):
        for sign, f, bag in ((1.0, feats[0], bags[0]), (-1.0, feats[1], bags[1])):
            x[r, : len(names)] += sign * np.array([f[k] for k in names], dtype=float)
            for token, count in bag.items():
                if token in index:
                    x[r, len(names) + index[token]] += sign * count
        x[r, -1] = 1.0
    return x


def bow_probe(rows: list[tuple[list[dict[str, float]], list[Counter[str]]]], labels: list[int],
              folds: int = 5) -> dict[str, Any]:
    """Train on the first half, test on the second. The features of an option are its cues and a
    bag of the words around its mentions; the L2 strength is chosen by cross-validation on the
    training half only."""
    half = len(rows) // 2
    if half < 10:
        return {"accuracy": None, "note": "fewer than 20 problems: no probe"}
    train_rows, test_rows = rows[:half], rows[half:]
    y = np.array(labels, dtype=float)
    counts: Counter[str] = Counter()
    for _, bags in train_rows:
        for bag in bags:
            counts.update(bag.keys())
    vocab = sorted(t for t, c in counts.most_common(PROBE_MAX_VOCAB) if c >= PROBE_MIN_COUNT)
    x_train, x_test = _probe_matrix(train_rows, vocab), _probe_matrix(test_rows, vocab)
    # Standardise by the training half's scale (no centring: a difference of two options is
    # centred at 0 when nothing separates them, and the intercept column must stay 1).
    scale = x_train[:, :-1].std(axis=0)
    scale[scale == 0] = 1.0
    x_train[:, :-1] /= scale
    x_test[:, :-1] /= scale
    y_train, y_test = y[:half], y[half:]

    def accuracy(w: np.ndarray, x: np.ndarray, target: np.ndarray) -> float:
        return float(np.mean((x @ w > 0) == (target > 0.5)))

    fold_of = np.arange(half) % folds
    cv = {}
    for l2 in PROBE_L2_GRID:
        scores = [accuracy(fit_logistic(x_train[fold_of != k], y_train[fold_of != k], l2),
                           x_train[fold_of == k], y_train[fold_of == k]) for k in range(folds)]
        cv[l2] = float(np.mean(scores))
    best = max(PROBE_L2_GRID, key=lambda l2: (cv[l2], l2))  # ties: the stronger regularisation
    w = fit_logistic(x_train, y_train, best)
    return {"accuracy": accuracy(w, x_test, y_test), "train_accuracy": accuracy(w, x_train, y_train),
            "n_train": half, "n_test": len(rows) - half, "l2": best, "n_features": x_train.shape[1],
            "vocab": len(vocab)}


# --------------------------------------------------------------------------------------------------
# Audits
# --------------------------------------------------------------------------------------------------


def prosqa_audit(examples: Sequence[Example]) -> dict[str, Any]:
    """Accuracy of every no-reasoning cue (both directions) and of the bag-of-words probe."""
    parsed = [p for p in (_parse_prosqa(e) for e in examples) if p is not None]
    if not parsed:
        raise UserInputError("prosqa audit: no example has the form '... Is P a X or Y?' with the "
                             "answer naming X or Y")
    labels = [p["label"] for p in parsed]
    features = [prosqa_option_features(p) for p in parsed]
    heuristics: dict[str, float] = {}
    for key, (larger, smaller) in OPTION_FEATURES.items():
        acc = _rule_accuracy([(f[0][key], f[1][key]) for f in features], labels)
        heuristics[larger] = acc
        heuristics[smaller] = 1.0 - acc
    rows = [(f, [_option_bag(p, o) for o in p["options"]]) for f, p in zip(features, parsed)]
    probe = bow_probe(rows, labels)
    report = _finish("prosqa", len(examples), len(parsed), heuristics, probe)
    graphs = [e.meta for e in examples if all(k in e.meta for k in ("idx_to_symbol", "edges", "steps"))]
    if len(graphs) == len(examples):  # sizes, to compare a generated split with the released one
        report.update({f"mean_{key}": value for key, value in graph_stats(graphs).items()})
    return report


def solvable_with_strict_subset(numbers: Sequence[int], target: int) -> bool:
    """Can a strict, non-empty subset of `numbers` (all of its numbers used) reach `target`?"""
    from latentreason.tasks.countdown import _combine

    full = (1 << len(numbers)) - 1
    reach: dict[int, set[int]] = {}  # subset bitmask -> values reachable using all of its numbers
    for mask in sorted(range(1, full), key=lambda m: bin(m).count("1")):
        if mask & (mask - 1) == 0:
            reach[mask] = {numbers[mask.bit_length() - 1]}
        else:
            values: set[int] = set()
            sub = (mask - 1) & mask
            while sub:
                rest = mask ^ sub
                if sub < rest:
                    for a in reach[sub]:
                        for b in reach[rest]:
                            values.update(move[3] for move in _combine(a, b))
                sub = (sub - 1) & mask
            reach[mask] = values
        if target in reach[mask]:
            return True
    return False


def _fixed_answers(numbers: Sequence[int]) -> dict[str, str]:
    """Answers that need no search: one fixed pattern over the numbers sorted largest first."""
    x = sorted((int(v) for v in numbers), reverse=True)
    first, rest = x[0], x[1:]
    two = f"{x[0]}*{x[1]}" if len(x) > 1 else str(first)
    after_two = x[2:]
    return {
        "sum of all numbers": "+".join(map(str, x)),
        "product of all numbers": "*".join(map(str, x)),
        "sum with the smallest subtracted": "+".join(map(str, x[:-1])) + f"-{x[-1]}",
        "largest minus all the others": str(first) + "".join(f"-{v}" for v in rest),
        "two largest multiplied, the others added": two + "".join(f"+{v}" for v in after_two),
        "two largest multiplied, the others subtracted": two + "".join(f"-{v}" for v in after_two),
    }


def countdown_audit(examples: Sequence[Example], subset_limit: int = 2000) -> dict[str, Any]:
    """Target statistics, strict-subset solvability and the accuracy of search-free answers."""
    from latentreason.tasks.countdown import verify

    records = [(list(e.meta["numbers"]), int(e.meta["target"])) for e in examples
               if "numbers" in e.meta and "target" in e.meta]
    if not records:
        raise UserInputError("countdown audit: no example carries numbers and a target")
    targets = Counter(t for _, t in records)
    heuristics = {}
    for name in _fixed_answers([1]):
        hits = sum(verify(_fixed_answers(nums)[name], nums, t) for nums, t in records)
        heuristics[name] = hits / len(records)
    checked = records[:subset_limit]
    subset = sum(solvable_with_strict_subset(nums, t) for nums, t in checked)
    report = _finish("countdown", len(examples), len(records), heuristics, None)
    report.update({
        "branching": sorted({len(nums) for nums, _ in records}),
        "distinct_targets": len(targets),
        "majority_target": targets.most_common(1)[0][0],
        "majority_target_rate": targets.most_common(1)[0][1] / len(records),
        "target_min": min(targets), "target_max": max(targets),
        "target_mean": sum(t for _, t in records) / len(records),
        "strict_subset_solvable_rate": subset / len(checked),
        "strict_subset_checked": len(checked),
    })
    return report


def _finish(task: str, n: int, n_audited: int, heuristics: dict[str, float],
            probe: dict[str, Any] | None) -> dict[str, Any]:
    scores = dict(heuristics)
    if probe is not None and probe.get("accuracy") is not None:
        scores["bag-of-words logistic probe (held-out half)"] = probe["accuracy"]
    best = max(scores, key=lambda k: scores[k])
    return {"task": task, "n": n, "n_audited": n_audited, "chance": CHANCE.get(task),
            "heuristics": heuristics, "probe": probe, "shortcut_ceiling": scores[best],
            "ceiling_from": best}


GSM8K_QUESTION_RULES = ("last number in the question", "first number in the question",
                        "largest number in the question", "smallest number in the question",
                        "sum of the question's numbers", "product of the question's numbers")
"""The question-only rules of `gsm8k_audit`, in report order."""


def _question_number_answers(question: str) -> dict[str, Fraction | None]:
    """The answer of each of GSM8K_QUESTION_RULES for `question` (None where it has no number)."""
    from latentreason.tasks.gsm8k import question_numbers

    numbers = question_numbers(question)
    if not numbers:
        return dict.fromkeys(GSM8K_QUESTION_RULES)
    answers = (numbers[-1], numbers[0], max(numbers), min(numbers), sum(numbers, Fraction(0)),
               math.prod(numbers, start=Fraction(1)))
    return dict(zip(GSM8K_QUESTION_RULES, answers, strict=True))


def gsm8k_audit(examples: Sequence[Example]) -> dict[str, Any]:
    """Accuracy of answers that need no solving: numbers read off the question, and the majority answer."""
    from latentreason.tasks.gsm8k import parse_number

    records = [(e.question, gold) for e in examples if (gold := parse_number(e.answer)) is not None]
    if not records:
        raise UserInputError("gsm8k audit: no example has a numeric answer")
    hits = Counter(name for question, gold in records
                   for name, guess in _question_number_answers(question).items() if guess == gold)
    heuristics = {name: hits[name] / len(records) for name in GSM8K_QUESTION_RULES}
    answers = Counter(gold for _, gold in records)
    majority, majority_count = answers.most_common(1)[0]
    heuristics[f"the split's most common answer ({majority})"] = majority_count / len(records)
    report = _finish("gsm8k", len(examples), len(records), heuristics, None)
    report.update({"distinct_answers": len(answers), "majority_answer": str(majority),
                   "majority_answer_rate": majority_count / len(records)})
    return report


AUDITS: dict[str, Callable[[Sequence[Example]], dict[str, Any]]] = {
    "prosqa": prosqa_audit,
    "countdown": countdown_audit,
    "gsm8k": gsm8k_audit,
}


def audit(task: str, examples: Sequence[Example]) -> dict[str, Any]:
    """The shortcut audit of `examples` of `task` (see the module docstring) as a JSON-able dict."""
    if task not in AUDITS:
        raise UserInputError(f"no shortcut audit for task {task!r}; expected one of {sorted(AUDITS)}")
    if not examples:
        raise UserInputError(f"{task} audit: no examples")
    return AUDITS[task](examples)


def shortcut_ceiling(task: str, examples: Sequence[Example]) -> float | None:
    """The best no-reasoning accuracy on `examples`, or None for a task without an audit: an
    accuracy at or below it is no evidence of reasoning."""
    if task not in AUDITS or not examples:
        return None
    return audit(task, examples)["shortcut_ceiling"]


def format_markdown(report: dict[str, Any], title: str = "") -> str:
    """The audit as a markdown table (sorted by accuracy), with the ceiling and split statistics."""
    lines = [f"# Shortcut audit: {title or report['task']}", ""]
    lines.append(f"{report['n_audited']} of {report['n']} problems audited"
                 + (f"; chance {report['chance']:.2f}" if report.get("chance") is not None else "")
                 + ".")
    lines += ["", "| no-reasoning rule | accuracy |", "|---|---|"]
    rows = dict(report["heuristics"])
    probe = report.get("probe")
    if probe and probe.get("accuracy") is not None:
        rows["bag-of-words logistic probe (held-out half)"] = probe["accuracy"]
    for name, acc in sorted(rows.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {acc:.3f} |")
    lines += ["", f"**Shortcut ceiling: {report['shortcut_ceiling']:.3f}** ({report['ceiling_from']})."]
    if probe and probe.get("accuracy") is not None:
        lines.append(f"Probe: trained on {probe['n_train']}, tested on {probe['n_test']}, "
                     f"{probe['n_features']} features, L2 {probe['l2']} (chosen by 5-fold CV on the "
                     f"training half), training accuracy {probe['train_accuracy']:.3f}.")
    extra = {k: v for k, v in report.items() if k not in
             ("source", "task", "n", "n_audited", "chance", "heuristics", "probe", "shortcut_ceiling", "ceiling_from")}
    if extra:
        lines += ["", "| statistic | value |", "|---|---|"]
        for key, value in extra.items():
            lines.append(f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(lines) + "\n"
