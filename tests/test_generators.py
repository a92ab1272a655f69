"""Generators without shortcuts (issue 11): ProsQA's guarantees and symmetry, Countdown's one rule
(every number exactly once) with the solver as the oracle, its target range and held-out split, and
the `data generate` -> `data check` -> `train` round trip for every task (issue 16)."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, defaultdict
from functools import lru_cache

import pytest

from latentreason.cli import main
from latentreason.tasks import countdown as cd
from latentreason.tasks import get_task
from latentreason.tasks import prosqa as pq

TEN_NODES = {"n_nodes": 10, "min_depth": 2, "max_depth": 3}
"""The 10-node ProsQA variant of the project's CPU experiments."""


# ------------------------------------------------------------------------------------------- ProsQA


def _count_paths(record: dict, src: int, dst: int) -> int:
    children: dict[int, list[int]] = defaultdict(list)
    for a, b in record["edges"]:
        children[a].append(b)

    @lru_cache(maxsize=None)
    def count(u: int) -> int:
        return 1 if u == dst else sum(count(v) for v in children[u])

    return count(src)


@pytest.mark.parametrize("params", [TEN_NODES, {}], ids=["10-node", "defaults"])
def test_prosqa_guarantees_and_the_mirror_person(params):
    """One proof for the target, none for the negative target, both leaves; and the construction is
    symmetric: another person reaches the negative target by exactly one path and never the target."""
    for ex in get_task("prosqa").generate(150, seed=3, **params):
        rec = ex.meta
        root, target, neg = rec["root"], rec["target"], rec["neg_target"]
        assert _count_paths(rec, root, target) == 1
        assert _count_paths(rec, root, neg) == 0
        parents = {a for a, _ in rec["edges"]}
        assert target not in parents and neg not in parents
        mirror = 1 - root  # the two main people are indices 0 and 1
        assert _count_paths(rec, mirror, neg) == 1 and _count_paths(rec, mirror, target) == 0
        if params:
            assert len(rec["idx_to_symbol"]) == 10 and 2 <= len(ex.steps) <= 3


def test_prosqa_target_and_negative_target_look_alike():
    """In-degree and chain length have the same distribution for both options (the old generator
    gave the target more incoming edges: "the child of more facts" scored 0.77 on 10-node graphs)."""
    examples = get_task("prosqa").generate(600, seed=8, **TEN_NODES)

    def in_degree(rec, node):
        return sum(1 for _, b in rec["edges"] if b == node)

    larger = sum(in_degree(e.meta, e.meta["target"]) > in_degree(e.meta, e.meta["neg_target"]) for e in examples)
    smaller = sum(in_degree(e.meta, e.meta["target"]) < in_degree(e.meta, e.meta["neg_target"]) for e in examples)
    assert abs(larger - smaller) < 0.08 * len(examples)
    first = sum(e.question.rsplit(" Is ", 1)[1].split(" a ", 1)[1].startswith(e.answer.split()[-1].rstrip("."))
                for e in examples)
    assert abs(first / len(examples) - 0.5) < 0.06  # options are shuffled


def test_prosqa_generation_is_deterministic_and_fast_enough():
    task = get_task("prosqa")
    a = task.generate(200, seed=4, **TEN_NODES)
    assert [pq.to_record(e) for e in a] == [pq.to_record(e) for e in task.generate(200, seed=4, **TEN_NODES)]
    assert [e.question for e in a] != [e.question for e in task.generate(200, seed=5, **TEN_NODES)]


# ---------------------------------------------------------------------------------------- Countdown


def _all_expressions(numbers: list[int]) -> set[str]:
    """Every fully parenthesised expression using each number exactly once (brute force)."""
    if len(numbers) == 1:
        return {str(numbers[0])}
    found: set[str] = set()
    indices = range(len(numbers))
    for size in range(1, len(numbers)):
        for left in itertools.combinations(indices, size):
            right = [numbers[i] for i in indices if i not in left]
            for a in _all_expressions([numbers[i] for i in left]):
                for b in _all_expressions(right):
                    found.update(f"({a}{op}{b})" for op in "+-*/")
    return found


def test_countdown_solver_is_complete_under_the_one_rule():
    """The solver (non-negative intermediates) finds a solution exactly when some expression that
    uses every number once verifies: brute force over all expressions is the oracle."""
    rng = random.Random(0)
    checked_solvable = checked_unsolvable = 0
    for _ in range(60):
        numbers = [rng.randint(1, 12) for _ in range(3)]
        target = rng.randint(0, 40)
        accepted = [e for e in _all_expressions(numbers) if cd.verify(e, numbers, target)]
        steps = cd.solve(numbers, target)
        assert (steps is not None) == bool(accepted), (numbers, target, accepted)
        if steps is not None:
            assert cd.verify(cd.trace_to_expression(steps, numbers), numbers, target)
            checked_solvable += 1
        else:
            checked_unsolvable += 1
    assert checked_solvable > 5 and checked_unsolvable > 5


def test_countdown_verifier_rejects_every_strict_subset_solution():
    """For generated problems, any solution the solver finds for a strict subset of the numbers is
    rejected for the full problem (it is accepted for the subset itself)."""
    rejected = 0
    for ex in get_task("countdown").generate(40, seed=1, branching=4):
        numbers, target = ex.meta["numbers"], ex.meta["target"]
        assert cd.verify(ex.answer, numbers, target)
        for size in range(1, len(numbers)):
            for subset in set(itertools.combinations(sorted(numbers), size)):
                steps = cd.solve(list(subset), target)
                if steps is None:
                    continue
                answer = cd.trace_to_expression(steps, subset) if steps else str(subset[0])
                assert cd.verify(answer, list(subset), target)
                assert not cd.verify(answer, numbers, target), (numbers, target, answer)
                rejected += 1
    assert rejected > 0  # the check ran on real subset solutions


def test_countdown_verifier_rules_for_traces():
    nums, target = [61, 23, 5, 7], 96
    assert cd.verify("61+23=84\n5+7=12\n84+12=96", nums, target)
    assert not cd.verify("61+23=84\n5+7=12\n84+12", [61, 23, 5, 7, 1], target)  # 1 unused
    assert not cd.verify("5+7=12\n61+23+12=96", [61, 23, 5, 7, 12], target)  # the given 12 unused
    assert not cd.verify("5+7=12\n61+23+5+7=96", nums, target)  # 5, 7 used twice
    assert not cd.verify("61-23=38\n61+23+5+7=96", nums, target)  # a step result left over
    assert cd.verify("61*23-61*23+96", [61, 23, 61, 23, 96], 96)
    assert not cd.verify("96", [96, 1], 96)


def _random_walk_hit_rate(examples, walks: int, seed: int) -> float:
    """Chance that combining a random pair with a random legal operation, until one value is
    left, lands on the target: how hard blind search finds each problem."""
    rng = random.Random(seed)
    hits = 0
    for ex in examples:
        for _ in range(walks):
            values = list(ex.meta["numbers"])
            while len(values) > 1:
                i, j = rng.sample(range(len(values)), 2)
                move = rng.choice(cd._combine(values[i], values[j]))
                values = [v for k, v in enumerate(values) if k not in (i, j)] + [move[3]]
            hits += values[0] == ex.meta["target"]
    return hits / (walks * len(examples))


def test_countdown_one_target_range_and_difficulty_rises_with_branching():
    task = get_task("countdown")
    assert len({cd.default_target_range(b) for b in range(cd.MIN_BRANCHING, cd.MAX_BRANCHING + 1)}) == 1
    lo, hi = cd.TARGET_RANGE
    rates = []
    for branching in (3, 4, 5, 6):
        examples = task.generate(25, seed=2, branching=branching)
        assert all(lo <= e.meta["target"] <= hi for e in examples)
        rates.append(_random_walk_hit_rate(examples, walks=150, seed=branching))
    assert rates == sorted(rates, reverse=True) and rates[0] > 5 * rates[-1], rates


@pytest.mark.parametrize("branching", [3, pytest.param(4, marks=pytest.mark.slow),
                                       pytest.param(5, marks=pytest.mark.slow),
                                       pytest.param(6, marks=pytest.mark.slow)])
def test_countdown_heldout_split_has_many_distinct_targets(branching):
    task = get_task("countdown")
    test = task.generate(200, seed=0, branching=branching, split="test")
    assert len({e.meta["target"] for e in test}) >= 100
    assert all(cd.is_heldout(e.meta["numbers"], e.meta["target"]) for e in test)
    train = task.generate(200, seed=0, branching=branching, split="train")
    assert not any(cd.is_heldout(e.meta["numbers"], e.meta["target"]) for e in train)


def test_countdown_targets_are_uniform_not_skewed_to_easy_ones():
    targets = Counter(e.meta["target"] for e in get_task("countdown").generate(600, seed=5, branching=3))
    lo, hi = cd.TARGET_RANGE
    upper_half = sum(c for t, c in targets.items() if t > (lo + hi) / 2)
    assert 0.42 < upper_half / 600 < 0.58


# ------------------------------------------------------------------------- generate -> check -> train

TINY_TRAIN = ["train.batch_size=4", "train.max_steps=1", "train.warmup_steps=1", "train.trackers=none",
              "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.tokenizer_vocab_size=300",
              "eval.max_new_tokens=2"]


@pytest.mark.parametrize("task, options", [("prosqa", ["n_nodes=10", "min_depth=2", "max_depth=3"]),
                                           ("countdown", ["branching=3"]), ("gsm8k", [])])
def test_generated_file_is_read_by_check_and_train(task, options, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LATENTREASON_DATA_CACHE", "off")
    path = tmp_path / f"{task}.json"
    assert main(["--quiet", "data", "generate", "--task", task, "--n", "5", "--out", str(path), *options]) == 0
    records = json.loads(path.read_text())
    loaded = get_task(task).load(str(path))
    assert len(records) == len(loaded) == 5
    assert [get_task(task).to_record(e) for e in loaded] == records  # lossless round trip
    assert main(["data", "check", "--task", task, "--path", str(path)]) == 0
    assert "5 " + task + " examples OK" in capsys.readouterr().out
    out = tmp_path / "run"
    code = main(["--quiet", "train", f"task.name={task}", f"task.train_path={path}", f"task.eval_path={path}",
                 f"out_dir={out}", *TINY_TRAIN])
    assert code == 0
    assert json.loads((out / "eval.json").read_text())["n"] == 5


@pytest.mark.parametrize("task_name, params", [("prosqa", {"n_nodes": 10, "min_depth": 2, "max_depth": 3}), ("countdown", {"branching": 3})])
def test_generators_stream_a_huge_n(task_name, params):
    """`data generate --n 1000000000` must not build the whole list first: the task yields as it goes, and the
    streamed examples are the ones `generate` returns."""
    import itertools

    from latentreason.tasks import get_task

    task = get_task(task_name)
    first = list(itertools.islice(task.iter_generate(10**9, 0, **params), 3))
    assert [e.question for e in first] == [e.question for e in task.generate(3, 0, **params)]
