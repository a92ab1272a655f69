"""Shortcut audit (issue 11): generated ProsQA sits at chance, biased splits are caught, the released
file's own biases show, Countdown statistics are right, and `data audit` works from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentreason.cli import main
from latentreason.errors import UserInputError
from latentreason.tasks import Example, get_task
from latentreason.tasks.audit import audit, format_markdown, prosqa_audit, shortcut_ceiling, solvable_with_strict_subset

TEN_NODES = {"n_nodes": 10, "min_depth": 2, "max_depth": 3}
PROSQA_VALID = Path(__file__).resolve().parents[1] / "data" / "prosqa" / "prosqa_valid.json"
PROBE = "bag-of-words logistic probe (held-out half)"


def _check_at_chance(report: dict, heuristic_tolerance: float, probe_max: float) -> None:
    worst = max(report["heuristics"], key=lambda k: abs(report["heuristics"][k] - 0.5))
    assert abs(report["heuristics"][worst] - 0.5) <= heuristic_tolerance, (worst, report["heuristics"][worst])
    assert report["probe"]["accuracy"] <= probe_max
    assert len(report["heuristics"]) >= 20  # both directions of every cue


@pytest.mark.parametrize("params", [TEN_NODES, {}], ids=["10-node", "defaults"])
def test_generated_prosqa_has_no_shortcut_fast(params):
    # 400 problems: a heuristic's standard error is 0.025, so 0.08 is over 3 of them.
    report = audit("prosqa", get_task("prosqa").generate(400, seed=21, **params))
    _check_at_chance(report, heuristic_tolerance=0.08, probe_max=0.65)


@pytest.mark.slow
@pytest.mark.parametrize("params", [TEN_NODES, {}], ids=["10-node", "defaults"])
@pytest.mark.parametrize("seed", [0, 1])
def test_generated_prosqa_meets_the_issue_targets(params, seed):
    """Issue 11: on 2000 generated problems every heuristic within 0.50 +/- 0.04, probe <= 0.60."""
    report = audit("prosqa", get_task("prosqa").generate(2000, seed=seed, **params))
    _check_at_chance(report, heuristic_tolerance=0.04, probe_max=0.60)
    assert report["shortcut_ceiling"] <= 0.60


def _inject(example: Example, question: str, answer: str | None = None) -> Example:
    return Example(question, example.steps, answer or example.answer, example.meta)


@pytest.fixture(scope="module")
def unbiased() -> list[Example]:
    return get_task("prosqa").generate(300, seed=5, **TEN_NODES)


def test_audit_catches_an_in_degree_bias(unbiased):
    # One more fact pointing at the target: "child of more facts" and "mentioned more often" now work.
    biased = []
    for ex in unbiased:
        target = ex.answer.rstrip(".").split()[-1]
        biased.append(_inject(ex, f"Every zorpus is a {target}. " + ex.question))
    report = audit("prosqa", biased)
    assert report["heuristics"]["larger in-degree (child of more facts)"] > 0.9
    assert report["heuristics"]["mentioned more often"] > 0.9
    assert report["shortcut_ceiling"] > 0.9
    assert report["probe"]["accuracy"] > 0.85  # the probe sees degrees too


def test_audit_catches_option_order_and_name_biases(unbiased):
    first_always, same_name = [], []
    for ex in unbiased:
        body, asked = ex.question.rsplit(" Is ", 1)
        person, options = asked.rstrip("?").split(" a ", 1)
        a, b = options.split(" or ")
        target = ex.answer.rstrip(".").split()[-1]
        other = b if a == target else a
        first_always.append(_inject(ex, f"{body} Is {person} a {target} or {other}?"))
        # The target is always called "wumpus": only the probe's bag of words (its own name) sees it.
        renamed = f" {ex.question} ".replace(f" {target} ", " wumpus ").replace(f" {target}.", " wumpus.")
        renamed = renamed.replace(f" {target}?", " wumpus?").strip()
        same_name.append(_inject(ex, renamed, ex.answer.replace(target, "wumpus")))
    order = audit("prosqa", first_always)
    assert order["heuristics"]["first option"] == 1.0 and order["ceiling_from"] == "first option"
    names = audit("prosqa", same_name)
    assert names["probe"]["accuracy"] > 0.9  # its bag of words holds the option's own name
    assert names["ceiling_from"] == PROBE  # name length/order cues only partly see a fixed name


@pytest.mark.skipif(not PROSQA_VALID.exists(), reason="released ProsQA file absent")
def test_released_prosqa_biases_show():
    report = audit("prosqa", get_task("prosqa").load(str(PROSQA_VALID)))
    assert report["n_audited"] == 300
    # The released negative targets sit shallower than the targets, and have more parents.
    assert report["heuristics"]["larger shortest depth below a person"] > 0.85
    assert report["heuristics"]["smaller in-degree"] > 0.6
    assert report["shortcut_ceiling"] > 0.85
    assert "Shortcut ceiling" in format_markdown(report)


def test_countdown_audit_statistics():
    def ex(numbers, target):
        return Example("", [], "", {"numbers": numbers, "target": target})

    assert solvable_with_strict_subset([2, 3, 5], 6)  # 2*3, the 5 left over
    assert solvable_with_strict_subset([7, 9, 11], 9)  # a single number is a subset
    assert not solvable_with_strict_subset([2, 3, 5], 30)  # 2*3*5 needs all three
    report = audit("countdown", [ex([2, 3, 5], 10), ex([2, 3, 5], 30), ex([1, 2, 4], 7), ex([2, 3, 5], 30)])
    assert report["heuristics"]["sum of all numbers"] == 0.5  # 2+3+5, 1+2+4
    assert report["heuristics"]["product of all numbers"] == 0.5
    assert report["shortcut_ceiling"] == 0.5
    assert report["distinct_targets"] == 3 and report["majority_target"] == 30
    assert report["majority_target_rate"] == 0.5
    assert report["strict_subset_solvable_rate"] == 0.25  # only 2*5 = 10


def test_shortcut_ceiling_function(unbiased):
    assert shortcut_ceiling("prosqa", unbiased) == prosqa_audit(unbiased)["shortcut_ceiling"]
    assert shortcut_ceiling("no_such_task", unbiased) is None


def test_gsm8k_audit_reads_answers_off_the_question():
    def ex(question, answer):
        return Example(question, [], answer, {})

    examples = [ex("Tom has 3 apples and buys 4 more. How many now?", "7"),     # sum (3 + 4)
                ex("A box holds 1,200 pens; 5 boxes?", "6000"),                  # product
                ex("Ann is 12. Her age in 2-3 years?", "3"),                     # last number (sign dropped)
                ex("No digits here.", "7")]                                      # no question number: no rule hits
    report = audit("gsm8k", examples)
    rules = report["heuristics"]
    assert rules["sum of the question's numbers"] == 0.25
    assert rules["product of the question's numbers"] == 0.25
    assert rules["last number in the question"] == 0.25
    assert rules["first number in the question"] == 0.0
    assert rules["the split's most common answer (7)"] == 0.5
    assert report["shortcut_ceiling"] == 0.5 and report["majority_answer"] == "7"
    assert report["distinct_answers"] == 3
    with pytest.raises(UserInputError, match="no example has a numeric answer"):
        audit("gsm8k", [ex("q", "not a number")])


def test_cli_audit_on_a_generated_split_and_on_a_file(tmp_path, capsys):
    report_path = tmp_path / "audit.json"
    assert main(["data", "audit", "--task", "prosqa", "--n", "80", "--seed", "3", "--out", str(report_path),
                 "n_nodes=10", "min_depth=2", "max_depth=3"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert "| no-reasoning rule | accuracy |" in printed and "Shortcut ceiling" in printed
    assert report["n"] == 80 and "n_nodes=10" in report["source"]
    assert report["shortcut_ceiling"] == max([*report["heuristics"].values(), report["probe"]["accuracy"]])

    data = tmp_path / "p.json"
    assert main(["--quiet", "data", "generate", "--task", "prosqa", "--n", "40", "--out", str(data)]) == 0
    assert main(["data", "audit", "--task", "prosqa", "--path", str(data)]) == 0
    assert "40 of 40 problems audited" in capsys.readouterr().out
    assert main(["data", "audit", "--task", "prosqa", "--path", str(data), "n_nodes=10"]) == 2
    assert "takes no generator options" in capsys.readouterr().err
    assert main(["data", "audit", "--task", "gsm8k", "--n", "5"]) == 0  # the synthetic GSM8K-format problems
    assert "5 of 5 problems audited" in capsys.readouterr().out
