"""GSM8K grade-school math, in the equation-only step format of latent-reasoning work.

Two input formats are read:

* the official release (``.jsonl``): one object a line with ``question`` and ``answer``; the
  answer is a worked solution with calculator annotations (``<<48/2=24>>``) ending in ``#### 72``.
  Steps become the annotations in order (``["<<48/2=24>>", "<<48+24=72>>"]``), the answer the
  number after ``####`` without thousands separators; the full solution text is kept in
  ``meta["solution"]``.
* the Coconut-style file (``.json``): a JSON list of ``{"question", "steps": [...], "answer"}``.

The format is chosen by extension (``.jsonl`` / ``.json``), otherwise by the first character of the
file (``[`` means a JSON list).

GSM8K is real data. `GSM8KTask.generate` only makes *synthetic* two-step word problems in the same
format (``data generate --task gsm8k``), so that a pipeline can be smoke-tested without the data;
no result about GSM8K should be measured on them.
"""

from __future__ import annotations

import json
import random
import re
from fractions import Fraction
from typing import Any

from latentreason.errors import UserInputError
from latentreason.tasks.base import Example, Task, parse_json_list, read_text, record_lines, register_task

ANNOTATION_RE = re.compile(r"<<[^<>]*>>")
"""A calculator annotation such as ``<<16-3-4=9>>``."""

FINAL_MARKER = "####"
"""Separates the official solution from its final answer."""

_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
"""A number with optional sign, thousands separators and decimals (``-1,234.50``, ``.5``)."""


def parse_number(text: str) -> Fraction | None:
    """The last number in `text` as an exact Fraction (``"$1,000.00"`` -> 1000), or None.

    Exact values make ``18``, ``18.00`` and ``18.0`` equal without float tolerance.
    """
    if not isinstance(text, str):
        return None
    matches = _NUMBER_RE.findall(text.replace("$", ""))
    if not matches:
        return None
    try:
        return Fraction(matches[-1].replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def question_numbers(text: str) -> list[Fraction]:
    """Every number written in digits in `text`, in order, without sign (``"ages 5-7"`` -> 5, 7): the
    numbers a GSM8K question gives (numbers in words, such as "three", are not read)."""
    return [Fraction(m.lstrip("-").replace(",", "")) for m in _NUMBER_RE.findall(text.replace("$", ""))]


def parse_solution(solution: str) -> tuple[list[str], str] | None:
    """Split an official solution into (annotation steps, final answer without commas).

    None when the solution lacks the ``####`` marker or a value after it.
    """
    if FINAL_MARKER not in solution:
        return None
    body, final = solution.rsplit(FINAL_MARKER, 1)
    answer = final.strip().replace(",", "")
    if not answer:
        return None
    return ANNOTATION_RE.findall(body), answer


def is_number(answer: str) -> bool:
    """True when `answer` is one number (``72``, ``-3``, ``1,234.5``, ``$18``): anything else can never score."""
    return _NUMBER_RE.fullmatch(answer.strip().removeprefix("$")) is not None


def _require_number(answer: str, path: str, line: int | None, where: str) -> str:
    if not is_number(answer):
        raise UserInputError(f"{where}final answer {answer!r} is not a number; expected e.g. 72, -3 or 1.5 "
                             "(the scorer compares numbers)", path=path, line=line)
    return answer.strip().removeprefix("$").replace(",", "")


_NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Isla", "Jack")
_ITEMS = ("apple", "pencil", "marble", "sticker", "cookie", "book")


def _synthetic_problem(rng: random.Random) -> Example:
    """One two-step word problem with calculator-annotation steps and a whole-number answer."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    if rng.random() < 0.5:
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        c = rng.randint(1, a + b)
        question = (f"{name} has {a} {item}s. {name} gets {b} more {item}s and then gives away {c}. "
                    f"How many {item}s does {name} have now?")
        steps, answer = [f"<<{a}+{b}={a + b}>>", f"<<{a + b}-{c}={a + b - c}>>"], a + b - c
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        c = rng.randint(1, a * b)
        question = (f"{name} buys {a} boxes of {item}s with {b} {item}s in each box and eats {c} "
                    f"of them. How many {item}s are left?")
        steps, answer = [f"<<{a}*{b}={a * b}>>", f"<<{a * b}-{c}={a * b - c}>>"], a * b - c
    return Example(question, steps, str(answer), {})


def _require_str(rec: dict[str, Any], key: str, path: str, line: int | None, where: str) -> str:
    if key not in rec:
        raise UserInputError(f"{where}missing field {key!r} (expected a string)", path=path,
                             line=line)
    if not isinstance(rec[key], str):
        raise UserInputError(f"{where}field {key!r} must be a string", path=path, line=line)
    return rec[key]


def _load_jsonl(text: str, path: str) -> list[Example]:
    examples = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # tolerate blank lines (e.g. a trailing newline pair)
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserInputError(f"malformed JSON line: {e.msg} (column {e.colno}); expected one "
                                 "object with question and answer", path=path, line=lineno) from e
        if not isinstance(rec, dict):
            raise UserInputError("expected a JSON object with question and answer", path=path,
                                 line=lineno)
        question = _require_str(rec, "question", path, lineno, "")
        solution = _require_str(rec, "answer", path, lineno, "")
        parsed = parse_solution(solution)
        if parsed is None:
            raise UserInputError(f"field 'answer' must end with '{FINAL_MARKER} <number>' "
                                 "(the final answer)", path=path, line=lineno)
        steps, answer = parsed
        answer = _require_number(answer, path, lineno, "field 'answer': ")
        examples.append(Example(question, steps, answer, {"solution": solution}))
    return examples


def _load_json_list(text: str, path: str) -> list[Example]:
    records = parse_json_list(text, path, "{question, steps, answer}")
    lines = record_lines(text)
    examples = []
    for i, rec in enumerate(records):
        where, line = f"record {i}: ", lines[i]
        if not isinstance(rec, dict):
            raise UserInputError(f"{where}expected an object with question, steps and answer",
                                 path=path, line=line)
        question = _require_str(rec, "question", path, line, where)
        if "steps" not in rec:
            raise UserInputError(f"{where}missing field 'steps' (expected a list of strings)",
                                 path=path, line=line)
        steps = rec["steps"]
        if not (isinstance(steps, list) and all(isinstance(s, str) for s in steps)):
            raise UserInputError(f"{where}field 'steps' must be a list of strings", path=path, line=line)
        if "answer" not in rec:
            raise UserInputError(f"{where}missing field 'answer' (expected the final number)",
                                 path=path, line=line)
        answer = rec["answer"]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or not answer.strip():
            raise UserInputError(f"{where}field 'answer' must be a non-empty string or number",
                                 path=path, line=line)
        answer = _require_number(answer, path, line, where + "field 'answer': ")
        examples.append(Example(question, list(steps), answer, {}))
    return examples


@register_task
class GSM8KTask(Task):
    """GSM8K: numeric answer, scored by exact numeric equality."""

    name = "gsm8k"
    numeric_answers = True

    def generate(self, n: int, seed: int, **params: Any) -> list[Example]:
        """`n` synthetic two-step word problems in the Coconut-style format (not GSM8K: see the
        module docstring), deterministic in `seed`."""
        if params:
            raise UserInputError(f"gsm8k: unknown generator parameter(s) {sorted(params)}; the "
                                 "synthetic generator takes none")
        if not isinstance(n, int) or n < 0:
            raise UserInputError(f"gsm8k: n must be a non-negative integer, got {n!r}")
        rng = random.Random(f"gsm8k-synthetic:{seed}")
        return [_synthetic_problem(rng) for _ in range(n)]

    def load(self, path: str) -> list[Example]:
        """Read the official jsonl or a Coconut-style JSON list (see the module docstring)."""
        text = read_text(path, "GSM8K")
        if not text.strip():
            raise UserInputError("empty dataset: the file has no records", path=path)
        lower = path.lower()
        if lower.endswith(".jsonl"):
            is_list = False
        elif lower.endswith(".json"):
            is_list = True
        else:
            is_list = text.lstrip().startswith("[")
        examples = _load_json_list(text, path) if is_list else _load_jsonl(text, path)
        if not examples:
            raise UserInputError("empty dataset: the file has no records", path=path)
        return examples

    def score(self, generated: str, example: Example) -> bool:
        """True when the last number after the answer marker equals the gold number exactly."""
        if not isinstance(generated, str):
            return False
        predicted = parse_number(self.extract_answer(generated))
        gold = parse_number(example.answer)
        return predicted is not None and gold is not None and predicted == gold
