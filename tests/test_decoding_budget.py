"""A decoding budget shorter than the gold output must show: a warning before training, `truncated_rate` after.

Countdown b = 4 CoT needs ~55 tokens; a 48-token budget once scored a model that had solved 18% of its
problems at 0.03 (results/countdown_recipe, session 16), because every long answer was cut off.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import pytest
import torch

from latentreason.config import load_config
from latentreason.evaluation import evaluate
from latentreason.methods.base import Generation
from latentreason.tasks import Example, get_task
from latentreason.tokenization import EncodedExample
from latentreason.training import build_run


@dataclass
class FixedAnswers(torch.nn.Module):
    """A stand-in method whose 'generations' are given token lists (one per example, in order)."""

    answers: list[list[int]]
    name: str = "fixed"
    calls: list = field(default_factory=list)

    def __post_init__(self):
        super().__init__()

    class tokenizer:  # noqa: N801  (the attribute evaluate() reads)
        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    def generate(self, examples, max_new_tokens):
        answers = [a[:max_new_tokens] for a in self.answers[len(self.calls): len(self.calls) + len(examples)]]
        self.calls.extend(examples)
        return Generation(answers, [len(a) for a in answers], [0] * len(answers), [0.0] * len(answers))

    def parameter_counts(self):
        return {"total": 0, "trainable": 0}


PROBLEM = Example("Numbers: 1 2. Target: 3.", [], "(1+2)", {"numbers": [1, 2], "target": 3})


def test_answers_cut_off_by_the_budget_are_counted_and_warned_about(tmp_path):
    task = get_task("countdown")
    examples = [EncodedExample([1], [], [2], PROBLEM) for _ in range(4)]
    method = FixedAnswers([[5] * 3, [5] * 8, [5] * 7, [5] * 20])  # rows 2 and 4 never stop within 8 tokens
    with pytest.warns(UserWarning, match=r"2 of 4 answers hit the decoding budget \(max_new_tokens=8\)"):
        summary = evaluate(method, task, examples, batch_size=2, max_new_tokens=8, out_dir=tmp_path, progress=False, baselines=False)
    assert summary["truncated_rate"] == 0.5 and summary["max_new_tokens"] == 8
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["truncated"] for r in records] == [False, True, False, True]


def test_no_warning_when_every_answer_stops_in_time():
    task = get_task("countdown")
    examples = [EncodedExample([1], [], [2], PROBLEM) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        summary = evaluate(FixedAnswers([[5] * 3, [5] * 7]), task, examples, 2, 8, progress=False, baselines=False)
    assert summary["truncated_rate"] == 0.0


def countdown_b4(*overrides: str):
    return load_config(None, ["task.name=countdown", "task.branching=4", "task.train_size=8", "task.eval_size=20",
                              "task.stream=false", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", *overrides])


def test_build_run_warns_when_cot_gold_outputs_exceed_the_budget():
    with pytest.warns(UserWarning, match=r"eval.max_new_tokens=48 is shorter than the gold output of \d+ of 20 eval examples"):
        build_run(countdown_b4("method.name=cot", "eval.max_new_tokens=48"))


def test_build_run_is_quiet_when_the_budget_fits(recwarn):
    build_run(countdown_b4("method.name=cot", "eval.max_new_tokens=96"))
    build_run(countdown_b4("method.name=no_cot", "eval.max_new_tokens=48"))  # the answer alone fits
    # a curriculum has replaced every step by latents at evaluation: only the answer is written
    build_run(countdown_b4("method.name=soft_tokens", "method.n_latents=4", "method.curriculum.enabled=true",
                           "method.curriculum.thoughts_per_step=2", "eval.max_new_tokens=48"))
    assert not [w for w in recwarn if "shorter than the gold output" in str(w.message)]
