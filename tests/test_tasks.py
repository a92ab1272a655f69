"""Tests for the ProsQA, Countdown and GSM8K tasks: generators, loaders, solver, verifier, score."""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import pytest

from latentreason.errors import UserInputError
from latentreason.tasks import ANSWER_MARKER, Example, get_task
from latentreason.tasks import countdown as cd
from latentreason.tasks import prosqa as pq
from latentreason.tasks.gsm8k import parse_number, parse_solution

DATA = Path(__file__).resolve().parents[1] / "data"
PROSQA_VALID = DATA / "prosqa" / "prosqa_valid.json"
GSM8K_TEST = DATA / "gsm8k" / "test.jsonl"

needs_prosqa = pytest.mark.skipif(not PROSQA_VALID.exists(), reason="real ProsQA file absent")
needs_gsm8k = pytest.mark.skipif(not GSM8K_TEST.exists(), reason="real GSM8K file absent")


def test_tasks_are_registered():
    for name in ("prosqa", "countdown", "gsm8k"):
        assert get_task(name).name == name


# ------------------------------------------------------------------------------------------- ProsQA


@pytest.fixture(scope="module")
def prosqa_generated() -> list[Example]:
    return get_task("prosqa").generate(120, seed=11)


def _adjacency(record: dict) -> dict[int, list[int]]:
    adj: dict[int, list[int]] = defaultdict(list)
    for a, b in record["edges"]:
        adj[a].append(b)
    return adj


def _count_paths(record: dict, src: int, dst: int) -> int:
    adj = _adjacency(record)

    @lru_cache(maxsize=None)
    def count(u: int) -> int:
        return 1 if u == dst else sum(count(v) for v in adj[u])

    return count(src)


def test_prosqa_generated_records_follow_the_schema_and_invariants(prosqa_generated):
    for ex in prosqa_generated:
        rec = pq.to_record(ex)
        assert list(rec) == list(pq.FIELDS)
        pq.validate_record(rec, 0, "<generated>")
        names = rec["idx_to_symbol"]
        person = names[rec["root"]]
        target, neg = names[rec["target"]], names[rec["neg_target"]]
        assert len(set(names)) == len(names)
        assert rec["root"] in (0, 1)
        assert all(a < b for a, b in rec["edges"]), "indices must be in topological order"
        assert len({tuple(e) for e in rec["edges"]}) == len(rec["edges"])
        # The label is unambiguous: one proof for the target, none for the negative target.
        assert _count_paths(rec, rec["root"], rec["target"]) == 1
        assert _count_paths(rec, rec["root"], rec["neg_target"]) == 0
        sources = {a for a, _ in rec["edges"]}
        assert rec["target"] not in sources and rec["neg_target"] not in sources
        # Text: one fact per edge, question with both options, steps walking the path.
        body, asked = rec["question"].rsplit(f" Is {person} a ", 1)
        assert sorted(asked.rstrip("?").split(" or ")) == sorted([target, neg])
        assert body.count(".") == len(rec["edges"])
        assert ex.answer == f"{person} is a {target}."
        assert ex.steps[0].startswith(f"{person} is a ")
        assert all(s.startswith("Every ") for s in ex.steps[1:])
        assert ex.steps[-1].endswith(f" is a {target}.")
        assert all(step in rec["question"] for step in ex.steps)


def test_prosqa_generator_is_deterministic_and_depends_on_seed():
    task = get_task("prosqa")
    a, b, c = task.generate(15, seed=5), task.generate(15, seed=5), task.generate(15, seed=6)
    assert [pq.to_record(e) for e in a] == [pq.to_record(e) for e in b]
    assert [e.question for e in a] != [e.question for e in c]


def test_prosqa_generator_params():
    task = get_task("prosqa")
    for ex in task.generate(10, seed=1, min_depth=5, max_depth=5, n_nodes=14):
        assert len(ex.steps) == 5 and len(ex.meta["idx_to_symbol"]) == 14
    deep = task.generate(5, seed=2, min_depth=8, max_depth=9)  # beyond the released sizes
    assert all(8 <= len(e.steps) <= 9 for e in deep)
    mixed = {len(e.steps) for e in task.generate(40, seed=3, min_depth=5, max_depth=8)}
    assert mixed == {5, 6, 7, 8}
    # Smallest that fits: two people, each with its own 6-concept chain (the negative target's
    # chain is as long as the answer's, so depth is no shortcut).
    tight = task.generate(10, seed=4, min_depth=6, max_depth=6, n_nodes=14)
    assert all(len(e.meta["idx_to_symbol"]) == 14 and len(e.steps) == 6 for e in tight)
    for bad in ({"min_depth": 0}, {"min_depth": 4, "max_depth": 3}, {"n_nodes": 5},
                {"min_depth": 6, "max_depth": 6, "n_nodes": 13}, {"depth": 3}):
        with pytest.raises(UserInputError):
            task.generate(2, seed=0, **bad)


def test_prosqa_node_count_range_mixes_sizes_and_stays_solvable():
    """n_nodes=[lo, hi]: each problem draws its size, raised to what its two chains need."""
    task = get_task("prosqa")
    problems = task.generate(120, seed=7, min_depth=1, max_depth=2, n_nodes=[4, 10])
    sizes = [len(e.meta["idx_to_symbol"]) for e in problems]
    assert set(sizes) == set(range(4, 11))
    assert all(size >= len(e.steps) + 3 for size, e in zip(sizes, problems))  # two people, two chains at least
    assert all(e.answer.rstrip(".").split()[-1] in e.question for e in problems)
    again = task.generate(120, seed=7, min_depth=1, max_depth=2, n_nodes=[4, 10])
    assert [e.question for e in again] == [e.question for e in problems]
    for bad in ([3, 10], [6, 5], [4], [4, 5.5], [4, 5]):  # lo below 2 * min_depth + 2, reversed, not a pair, hi < 6
        with pytest.raises(UserInputError, match="range"):
            task.generate(2, seed=0, min_depth=1, max_depth=2, n_nodes=bad)


def test_prosqa_asked_facts_last_reorders_the_same_problem():
    """The crutch moves only the asked person's facts (to just before the question); everything else, the
    default order included, is the problem the generator makes without it."""
    task = get_task("prosqa")
    plain = task.generate(30, seed=5, min_depth=1, max_depth=2, n_nodes=8)
    moved = task.generate(30, seed=5, min_depth=1, max_depth=2, n_nodes=8, asked_facts_last=True)
    assert [e.question for e in task.generate(30, seed=5, min_depth=1, max_depth=2, n_nodes=8)] == [e.question for e in plain]
    for a, b in zip(plain, moved):
        assert (a.answer, a.steps, a.meta["edges"]) == (b.answer, b.steps, b.meta["edges"])
        facts_a, question = a.question.rsplit(". Is ", 1)
        facts_b, question_b = b.question.rsplit(". Is ", 1)
        assert question == question_b and sorted(facts_a.split(". ")) == sorted(facts_b.split(". "))
        person = question.split()[0]
        own = [f.startswith(person + " is a") for f in facts_b.split(". ")]
        assert own == sorted(own) and own[-1]  # the asked person's facts, and only they, come last
    assert sum(a.question != b.question for a, b in zip(plain, moved)) > 10
    with pytest.raises(UserInputError, match="asked_facts_last"):
        task.generate(1, seed=0, asked_facts_last="yes")


def test_prosqa_frontier_steps_are_the_search_trace_of_the_same_problem():
    """steps="frontier" changes only the steps: step k is every fact (in question order) whose parent was reached
    in step k-1, from the asked person to the first step that names the target; the negative target never
    appears, and the number of steps is the answer path's length."""
    from latentreason.tasks.audit import _parse_prosqa
    from latentreason.tasks.prosqa import fact_sentence
    task = get_task("prosqa")
    paths = task.generate(40, seed=7, min_depth=2, max_depth=3, n_nodes=10)
    traces = task.generate(40, seed=7, min_depth=2, max_depth=3, n_nodes=10, steps="frontier")
    for path, trace in zip(paths, traces):
        assert (path.question, path.answer, path.meta["edges"]) == (trace.question, trace.answer, trace.meta["edges"])
        assert len(trace.steps) == len(path.steps)
        sym = trace.meta["idx_to_symbol"]
        facts = _parse_prosqa(trace)["facts"]  # (parent, child, parent is a person), read from the text
        reached = {sym[trace.meta["root"]]}
        for step in trace.steps:
            assert step == " ".join(fact_sentence(*f) for f in facts if f[0] in reached)
            reached = {child for parent, child, _ in facts if parent in reached}
            assert sym[trace.meta["neg_target"]] not in reached
        assert sym[trace.meta["target"]] in reached and path.steps[-1] in trace.steps[-1]
    assert any(len(t.steps[0].split(". ")) > 1 for t in traces)  # steps hold several facts, not one path fact
    with pytest.raises(UserInputError, match="steps must be one of"):
        task.generate(1, seed=0, steps="bfs")


def test_prosqa_backward_steps_walk_each_option_back_to_its_person():
    """steps="backward" changes only the steps: for each option in question order, its chain's facts from the
    option back to a person, every one a fact of the question; the target's chain is the answer path reversed
    and ends at the asked person, the other option's ends at another person."""
    from latentreason.tasks.audit import _parse_prosqa
    from latentreason.tasks.prosqa import fact_sentence
    task = get_task("prosqa")
    paths = task.generate(40, seed=7)
    traces = task.generate(40, seed=7, steps="backward")
    for path, trace in zip(paths, traces):
        assert (path.question, path.answer, path.meta["edges"]) == (trace.question, trace.answer, trace.meta["edges"])
        sym = trace.meta["idx_to_symbol"]
        parsed = _parse_prosqa(trace)  # facts as (parent, child, parent is a person), read from the text
        by_sentence = {fact_sentence(*f): f for f in parsed["facts"]}
        assert all(step in by_sentence for step in trace.steps)
        options = parsed["options"]
        chains, chain = [], []
        for step in trace.steps:  # a chain ends at the fact whose parent is a person
            chain.append(by_sentence[step])
            if chain[-1][2]:
                chains.append(chain)
                chain = []
        assert chain == [] and len(chains) == 2
        for option, chain in zip(options, chains):
            assert chain[0][1] == option and all(a[0] == b[1] for a, b in zip(chain, chain[1:]))
        target_chain = chains[options.index(sym[trace.meta["target"]])]
        other_chain = chains[1 - options.index(sym[trace.meta["target"]])]
        assert [fact_sentence(*f) for f in reversed(target_chain)] == path.steps
        assert target_chain[-1][0] == sym[trace.meta["root"]] != other_chain[-1][0]
    with pytest.raises(UserInputError, match="backward"):
        task.generate(1, seed=0, steps="bfs")


def test_prosqa_asked_facts_last_is_refused_where_it_would_reach_the_eval_split():
    from latentreason.config import load_config
    with pytest.raises(UserInputError, match="stream_curriculum"):
        load_config(None, ["task.name=prosqa", "task.params.asked_facts_last=true"])


def test_prosqa_written_file_loads_back(prosqa_generated, tmp_path):
    path = tmp_path / "gen.json"
    pq.write_records(prosqa_generated[:10], str(path))
    loaded = get_task("prosqa").load(str(path))
    assert [pq.to_record(e) for e in loaded] == [pq.to_record(e) for e in prosqa_generated[:10]]


@needs_prosqa
def test_prosqa_generator_matches_real_size_distribution(prosqa_generated):
    real = pq.graph_stats([e.meta for e in get_task("prosqa").load(str(PROSQA_VALID))])
    gen = pq.graph_stats([e.meta for e in prosqa_generated])
    for key in ("edges", "path_length", "nodes", "people"):
        ratio = gen[key] / real[key]
        assert 0.8 <= ratio <= 1.25, f"{key}: generated {gen[key]:.2f} vs real {real[key]:.2f}"


@needs_prosqa
def test_prosqa_real_file_loads_and_scores():
    task = get_task("prosqa")
    examples = task.load(str(PROSQA_VALID))
    assert len(examples) == 300
    for ex in examples:
        person = ex.meta["idx_to_symbol"][ex.meta["root"]]
        neg = ex.meta["idx_to_symbol"][ex.meta["neg_target"]]
        assert task.score(f"{' '.join(ex.steps)}\n{ANSWER_MARKER}{ex.answer}", ex)
        assert not task.score(f"{ANSWER_MARKER}{person} is a {neg}.", ex)
    first = examples[0]
    assert first.answer == "Tom is a lempus."
    assert task.score("### tom is a LEMPUS  ", first)
    assert not task.score("Tom is a", first)
    assert not task.score("", first)


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_prosqa_loader_errors(tmp_path):
    task = get_task("prosqa")
    good = pq.to_record(task.generate(1, seed=0)[0])

    p = _write(tmp_path / "broken.json", '[\n{"question": "x",\n  oops}\n]')
    with pytest.raises(UserInputError) as err:
        task.load(p)
    assert err.value.path == p and err.value.line == 3

    missing = dict(good)
    del missing["neg_target"]
    p = _write(tmp_path / "missing.json", json.dumps([good, missing]))
    with pytest.raises(UserInputError, match=r"record 1: missing field 'neg_target'") as err:
        task.load(p)
    assert p in str(err.value)

    bad_edge = dict(good, edges=[[0, 999]])
    with pytest.raises(UserInputError, match=r"record 0: field 'edges'"):
        task.load(_write(tmp_path / "edge.json", json.dumps([bad_edge])))
    with pytest.raises(UserInputError, match="empty dataset"):
        task.load(_write(tmp_path / "empty.json", "[]"))
    with pytest.raises(UserInputError, match="JSON list"):
        task.load(_write(tmp_path / "obj.json", "{}"))
    with pytest.raises(UserInputError):
        task.load(str(tmp_path / "nonexistent.json"))


# ---------------------------------------------------------------------------------------- Countdown


def _numbers_in(expression: str) -> Counter[int]:
    import re

    return Counter(int(x) for x in re.findall(r"\d+", expression))


@pytest.mark.parametrize("branching,n", [(2, 10), (3, 30), (4, 30), (5, 8), (6, 6), (7, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_countdown_generated_instances_are_solved_and_verified(branching, n, seed):
    task = get_task("countdown")
    examples = task.generate(n, seed=seed, branching=branching)
    lo, hi = cd.default_target_range(branching)
    assert len(examples) == n
    for ex in examples:
        numbers, target = ex.meta["numbers"], ex.meta["target"]
        assert len(numbers) == branching and all(1 <= x <= 99 for x in numbers)
        assert lo <= target <= hi and not cd.is_heldout(numbers, target)
        assert ex.question == f"Numbers: {' '.join(map(str, numbers))}. Target: {target}."
        assert cd.solve(numbers, target) == ex.steps
        assert len(ex.steps) == branching - 1  # all numbers used
        assert _numbers_in(ex.answer) == Counter(numbers)
        assert cd.verify(ex.answer, numbers, target)
        assert cd.verify("\n".join(ex.steps), numbers, target)
        assert cd.verify(f"{ex.answer} = {target}", numbers, target)
        assert task.score(f"{ANSWER_MARKER}{ex.answer}", ex)
        assert not task.score(f"{ANSWER_MARKER}{ex.answer}", Example("", [], "", dict(
            ex.meta, target=target + 1)))


def test_countdown_generator_is_deterministic():
    task = get_task("countdown")
    a = task.generate(10, seed=3, branching=4)
    assert a == task.generate(10, seed=3, branching=4)
    assert a != task.generate(10, seed=4, branching=4)


def test_countdown_heldout_instances_are_disjoint():
    # Held out by instance (numbers and target), not by target value: see the countdown docstring.
    task = get_task("countdown")

    def instance(e):
        return tuple(sorted(e.meta["numbers"])), e.meta["target"]

    train = {instance(e) for e in task.generate(80, seed=0, branching=3, split="train")}
    test = {instance(e) for e in task.generate(30, seed=0, branching=3, split="test")}
    assert train and test and not train & test
    assert all(cd.is_heldout(list(nums), t) for nums, t in test)
    assert cd.is_heldout([5, 7, 61], 73) == cd.is_heldout([61, 5, 7], 73)  # order-free
    share = sum(cd.is_heldout([a, b], t) for a in range(1, 30) for b in range(1, 30)
                for t in range(10, 40)) / (29 * 29 * 30)
    assert 0.05 < share < 0.15
    custom = task.generate(5, seed=0, branching=4, target_min=20, target_max=30, split="all")
    assert all(20 <= e.meta["target"] <= 30 for e in custom)


def test_countdown_generator_rejects_bad_params():
    task = get_task("countdown")
    for bad in ({"branching": 1}, {"branching": 8}, {"split": "dev"},
                {"target_min": 50, "target_max": 10}, {"k": 4}):
        with pytest.raises(UserInputError):
            task.generate(2, seed=0, **bad)


def test_countdown_solver_and_expression():
    steps = cd.solve([61, 23, 5, 7], 96)
    assert steps is not None and all(" = " in s for s in steps)
    assert cd.verify("\n".join(steps), [61, 23, 5, 7], 96)
    assert cd.trace_to_expression(["61 + 23 = 84", "7 + 5 = 12", "84 + 12 = 96"],
                                  [61, 23, 5, 7]) == "((61+23)+(7+5))"
    assert cd.solve([1, 1], 10) is None
    assert cd.solve([50, 2, 1], 100) is not None  # the 1 must be consumed (e.g. * 1)
    assert cd.solve([3, 3], 0) == ["3 - 3 = 0"]


def test_countdown_verifier_accepts_valid_forms():
    nums, target = [61, 23, 5, 7], 96
    assert cd.verify("(61+23)+(5+7)", nums, target)
    assert cd.verify("61 + 23 + 5 + 7 = 96", nums, target)
    assert cd.verify("61+23=84\n5+7=12\n84+12=96", nums, target)
    assert cd.verify("61 × 23 − 61 × 23 + 96", [61, 23, 61, 23, 96], 96)
    assert not cd.verify("(23 - 7) * 6", [23, 7, 6, 9], 96)  # one rule: all numbers, exactly once
    assert cd.verify("-5 + 101", [5, 101], 96)  # unary minus introduces no number
    assert cd.verify("96.", [96], 96)


BAD_ANSWERS = [
    "",  # empty
    "   \n  ",  # blank
    "(61+23",  # unbalanced parenthesis
    "61++23+12",  # bad syntax
    "61 23 5 7",  # no operators
    "61+23+61-49",  # 61 reused, 49 not available
    "61+35",  # 35 not available
    "(61+23)*(5+7)/7*0+96",  # 96 not available
    "61*5/7+23",  # non-integer division (305/7)
    "61/(7-5-2)",  # 2 not available
    "99999999999999999999+1",  # over-long number literal
    "61+23+5+6",  # 6 not available
    "61+23+5+7 = 95",  # claimed result wrong
    "61+23=85\n85+5+7=97",  # claimed wrong step result
    "61+23=84\n84+5",  # intermediate step without result... final isn't target either
    "61+23\n84+12=96",  # intermediate step must state its result
    "61+23+5+7 = 96 = 96",  # two '='
    "61+23+5+7 = abc",  # claim not a number
    "61+23+5+7 ≠ 96",  # garbage unicode
    "🙂+61+23+5+7",  # emoji
    "import os; os.system('true')",  # code, never evaluated
    "__import__('os')",
    "61.0+23+5+7",  # decimals are not Countdown numbers
    "61+23+5+7" + "+0" * 2000,  # very long input
    "(" * 500 + "96" + ")" * 500,  # deeply nested
    "9" * 5000,  # huge number
    "61 + 23 + 5 + 7 + 96 - 96",  # numbers not available
    "61 + 23 + 5",  # wrong value, no claim
]


def test_countdown_verifier_rejects_bad_answers_without_raising():
    nums, target = [61, 23, 5, 7], 96
    for bad in BAD_ANSWERS:
        assert cd.verify(bad, nums, target) is False, bad
    assert cd.verify(None, nums, target) is False  # type: ignore[arg-type]
    assert cd.verify("96", [96], 95) is False
    assert cd.verify("96/(7-7)", [96, 7, 7], 96) is False  # division by zero
    assert cd.verify("96*7/7", [96, 7, 7], 96) is True
    assert cd.verify("7/2*2", [7, 2, 2], 7) is False  # exact division only, even if it comes back
    task = get_task("countdown")
    ex = Example("", [], "", {"numbers": nums, "target": target})
    for bad in BAD_ANSWERS:
        assert task.score(f"{ANSWER_MARKER}{bad}", ex) is False
    assert task.score("### (61+23)+(5+7)", Example("", [], "", {})) is False  # no meta


def test_countdown_loader_roundtrip_and_errors(tmp_path):
    task = get_task("countdown")
    p = _write(tmp_path / "cd.json", json.dumps([{"numbers": [61, 23, 5, 7], "target": 96}]))
    (ex,) = task.load(p)
    assert ex.meta == {"numbers": [61, 23, 5, 7], "target": 96} and ex.steps
    with pytest.raises(UserInputError, match="record 0: field 'target'"):
        task.load(_write(tmp_path / "a.json", json.dumps([{"numbers": [1, 2]}])))
    with pytest.raises(UserInputError, match="cannot reach"):
        task.load(_write(tmp_path / "b.json", json.dumps([{"numbers": [1, 1], "target": 10}])))
    with pytest.raises(UserInputError) as err:
        task.load(_write(tmp_path / "c.json", "[\n{]"))
    assert err.value.line == 2
    with pytest.raises(UserInputError, match="empty dataset"):
        task.load(_write(tmp_path / "d.json", "[]"))


def test_countdown_agrees_with_reasoning_gym():
    rg = pytest.importorskip("reasoning_gym")
    dataset = rg.create_dataset("countdown", size=20, seed=7, min_numbers=3, max_numbers=5)
    for entry in dataset:
        numbers, target = entry["metadata"]["numbers"], entry["metadata"]["target"]
        assert cd.verify(entry["answer"], numbers, target), entry["answer"]
        steps = cd.solve(numbers, target)
        assert steps is not None
        assert dataset.score_answer(cd.trace_to_expression(steps, numbers), entry) == 1.0


# ------------------------------------------------------------------------------------------- GSM8K


@needs_gsm8k
def test_gsm8k_real_test_file_loads():
    task = get_task("gsm8k")
    examples = task.load(str(GSM8K_TEST))
    assert len(examples) == 1319
    first = examples[0]
    assert first.answer == "18"
    assert first.steps == ["<<16-3-4=9>>", "<<9*2=18>>"]
    assert first.question.startswith("Janet")
    assert all(e.answer.lstrip("-").isdigit() for e in examples)
    assert task.score(f"{' '.join(first.steps)}\n{ANSWER_MARKER}{first.answer}", first)


def test_max_reasoning_steps_keeps_short_solutions_before_the_size_cap(tmp_path):
    from latentreason.config import TaskConfig
    from latentreason.data import load_split

    rows = [{"question": f"q{i}", "answer": " ".join(f"<<{j}+1={j + 1}>>" for j in range(i % 4)) + f"\n#### {i}"}
            for i in range(12)]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TaskConfig(name="gsm8k", train_path=str(path), eval_path=str(path), train_size=4, max_reasoning_steps=1)
    kept = load_split(cfg, "train")
    assert [e.question for e in kept] == ["q0", "q1", "q4", "q5"]  # filtered first, then capped at 4
    assert all(len(e.steps) <= 1 for e in kept)
    with pytest.raises(UserInputError, match="max_reasoning_steps=1 filters a loaded file"):
        load_split(TaskConfig(name="prosqa", max_reasoning_steps=1), "test")


def test_gsm8k_parse_solution():
    steps, answer = parse_solution("a <<80000+50000=130000>>130,000 b <<2*3=6>>6\n#### 70,000")
    assert steps == ["<<80000+50000=130000>>", "<<2*3=6>>"] and answer == "70000"
    assert parse_solution("no marker <<1+1=2>>") is None
    assert parse_solution("empty answer ####  ") is None


@pytest.mark.parametrize("generated,gold,expected", [
    ("### 18", "18", True),
    ("### $18.00", "18", True),
    ("### 18.", "18", True),
    ("<<9*2=18>>\n### The answer is 18 dollars", "18", True),
    ("### 1,000", "1000", True),
    ("### 1000", "1,000", True),
    ("### -3", "-3", True),
    ("### 0.5", ".5", True),
    ("### 2 or 18", "18", True),  # last number counts
    ("### 18", "19", False),
    ("### 18.5", "18", False),
    ("### foo", "18", False),
    ("### ", "18", False),
    ("", "18", False),
    ("### 18\n### 17", "18", False),  # the last marker counts
])
def test_gsm8k_scoring(generated, gold, expected):
    assert get_task("gsm8k").score(generated, Example("q", [], gold)) is expected


def test_gsm8k_number_parsing():
    assert parse_number("$1,234.50") == parse_number("1234.5")
    assert parse_number("nothing") is None


def test_gsm8k_coconut_json_format(tmp_path):
    records = [{"question": "q1", "steps": ["<<1+1=2>>"], "answer": "2"},
               {"question": "q2", "steps": [], "answer": 1500}]
    task = get_task("gsm8k")
    for name in ("c.json", "c.data"):  # by extension, then by content
        examples = task.load(_write(tmp_path / name, json.dumps(records)))
        assert [(e.question, e.steps, e.answer) for e in examples] == [
            ("q1", ["<<1+1=2>>"], "2"), ("q2", [], "1500")]
    with pytest.raises(UserInputError, match="record 1: missing field 'steps'"):
        task.load(_write(tmp_path / "m.json", json.dumps([records[0], {"question": "q",
                                                                        "answer": "1"}])))


def test_gsm8k_jsonl_without_extension_is_detected(tmp_path):
    line = json.dumps({"question": "q", "answer": "x <<2*3=6>>6\n#### 6"})
    (ex,) = get_task("gsm8k").load(_write(tmp_path / "data.txt", line + "\n\n"))
    assert ex.steps == ["<<2*3=6>>"] and ex.answer == "6" and ex.meta["solution"].endswith("6")


def test_gsm8k_loader_errors(tmp_path):
    task = get_task("gsm8k")
    ok = json.dumps({"question": "q", "answer": "<<1+1=2>>2\n#### 2"})
    cases = [
        (ok + "\n{not json\n", 2, "malformed JSON line"),
        (ok + "\n" + ok + "\n" + json.dumps({"question": "q"}) + "\n", 3, "missing field 'answer'"),
        (json.dumps({"answer": "#### 2"}) + "\n", 1, "missing field 'question'"),
        (ok + "\n" + json.dumps({"question": "q", "answer": "it is 2"}) + "\n", 2, "####"),
        ("[1, 2]\n", 1, "expected a JSON object"),
    ]
    for i, (text, line, message) in enumerate(cases):
        path = _write(tmp_path / f"bad{i}.jsonl", text)
        with pytest.raises(UserInputError, match=message) as err:
            task.load(path)
        assert err.value.path == path and err.value.line == line
        assert f"{path}:{line}:" in str(err.value)
    for text in ("", "\n  \n"):
        with pytest.raises(UserInputError, match="empty dataset"):
            task.load(_write(tmp_path / "empty.jsonl", text))
    with pytest.raises(UserInputError, match="empty dataset"):
        task.load(_write(tmp_path / "empty.json", "[]"))
    with pytest.raises(UserInputError) as err:
        task.load(_write(tmp_path / "broken.json", '[{"question": "q",\n "steps": [],\n oops]'))
    assert err.value.line == 3
    with pytest.raises(UserInputError):
        task.load(str(tmp_path / "missing.jsonl"))
    # The only generator is the synthetic smoke-test one (not GSM8K); it takes no parameters.
    with pytest.raises(UserInputError, match="unknown generator parameter"):
        task.generate(1, seed=0, branching=3)


# ----------------------------------------------------------------------------- generated-data cache


def test_generated_splits_are_cached_per_task_params_and_seed(tmp_path: Path, monkeypatch) -> None:
    from latentreason import data
    from latentreason.config import TaskConfig

    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    task_class = type(get_task("countdown"))
    calls: list[tuple] = []
    real_generate = task_class.generate

    @functools.wraps(real_generate)  # keeps the signature: load_split passes branching/split only when accepted
    def counting_generate(self, n, seed, **params):
        calls.append((n, seed, params.get("branching")))
        return real_generate(self, n, seed, **params)

    monkeypatch.setattr(task_class, "generate", counting_generate)
    cfg = TaskConfig(name="countdown", branching=3, train_size=12, eval_size=4)
    first = data.load_splits(cfg)
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("*.pkl"))) == 2
    again = data.load_splits(cfg)
    assert len(calls) == 2 and again == first  # served from the cache, identical examples
    data.load_splits(TaskConfig(name="countdown", branching=4, train_size=12, eval_size=4))
    data.load_splits(TaskConfig(name="countdown", branching=3, train_size=12, eval_size=4, seed=1))
    assert len(calls) == 6  # other params or seed: new entries

    # A damaged entry is regenerated (and rewritten), not trusted.
    for path in (tmp_path / "cache").glob("*.pkl"):
        path.write_bytes(b"not a pickle")
    assert data.load_splits(cfg) == first and len(calls) == 8

    monkeypatch.setenv(data.CACHE_ENV, "off")
    data.load_splits(cfg)
    assert len(calls) == 10


@pytest.mark.parametrize("name, params", [("countdown", {"branching": 3}), ("countdown", {"branching": 5}),
                                          ("prosqa", {"n_nodes": 10, "min_depth": 2, "max_depth": 3}), ("gsm8k", {})])
def test_gold_targets_score_correct_after_the_tiny_tokenizer_round_trip(name, params):
    """What a model is trained to write must score as correct once decoded: the tiny tokenizer once split
    "81" into "Ġ8", "Ġ1", decoded it as " 8 1", and every Countdown/GSM8K answer failed verification."""
    from latentreason.tokenization import encode_example, example_texts, train_tokenizer

    task = get_task(name)
    examples = task.generate(30, 1, **params)
    tokenizer = train_tokenizer(example_texts(examples), vocab_size=300)
    for example in examples:
        encoded = encode_example(tokenizer, example)
        target = [t for step in encoded.step_ids for t in step] + encoded.answer_ids
        decoded = tokenizer.decode(target, skip_special_tokens=True)
        assert task.score(decoded, example), (example.question, decoded)
        assert tokenizer.decode(encoded.question_ids).strip() == example.question.strip()


def test_a_run_whose_saved_tokenizer_garbles_digits_is_flagged(tmp_path):
    """Runs trained with the old tokenizer keep it (their weights depend on its ids); building such a run for a
    numeric task warns that its scores cannot be trusted, and a fresh tokenizer is not flagged."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from latentreason.config import load_config
    from latentreason.tokenization import EOS, LATENT_SPECIAL_TOKENS, PAD, splits_digits_with_spaces, train_tokenizer
    from latentreason.training import build_run

    old = Tokenizer(models.BPE())  # the pre-2026-12-02 order: digits split first, then a prefix space per piece
    old.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=True)])
    old.decoder = decoders.ByteLevel()
    texts = [e.question for e in get_task("countdown").generate(20, 0, branching=3)]
    old.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=[PAD, EOS, *LATENT_SPECIAL_TOKENS],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    old_tokenizer = PreTrainedTokenizerFast(tokenizer_object=old, pad_token=PAD, eos_token=EOS, bos_token=EOS)
    assert old_tokenizer.decode(old_tokenizer("81")["input_ids"]) == " 8 1"
    assert splits_digits_with_spaces(old_tokenizer) and not splits_digits_with_spaces(train_tokenizer(texts, 300))

    old_tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    cfg = load_config(None, ["task.name=countdown", "task.branching=3", "task.train_size=8", "task.eval_size=4",
                             "model.n_layer=1", "model.n_embd=32", "model.n_head=2", f"out_dir={tmp_path}"])
    with pytest.warns(UserWarning, match="decodes 81 as '8 1'"):
        build_run(cfg, tmp_path)


def test_countdown_diagnostics_say_why_an_answer_failed():
    task = get_task("countdown")
    example = Example("Numbers: 4 81 2. Target: 166.", ["81 * 2 = 162", "162 + 4 = 166"], "((81*2)+4)",
                      {"numbers": [4, 81, 2], "target": 166})
    right = task.diagnostics(" 81 * 2 = 162\n 162 + 4 = 166\n### ((81*2)+4)", example)
    assert right == {"well_formed": True, "hits_target": True, "uses_numbers_once": True, "steps_correct": True}
    wrong_steps = task.diagnostics(" 81 * 2 = 163\n 163 + 3 = 166\n### ((81*2)+4)", example)
    assert wrong_steps["hits_target"] and not wrong_steps["steps_correct"]
    other_numbers = task.diagnostics("### (81*2)+2+2", example)  # the target, but 2 used twice and 4 not at all
    assert other_numbers["hits_target"] and not other_numbers["uses_numbers_once"] and "steps_correct" not in other_numbers
    off_by_one = task.diagnostics("### ((81*2)+5)", example)
    assert not off_by_one["hits_target"] and not off_by_one["uses_numbers_once"]
    assert task.diagnostics("no marker at all", example) == {"well_formed": False, "hits_target": False, "uses_numbers_once": False}
    assert task.diagnostics(None, example)["hits_target"] is False
