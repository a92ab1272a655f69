"""Task interface: every task yields `Example`s and scores predicted answer text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from latentreason.errors import UserInputError


@dataclass
class Example:
    """One reasoning problem in the common format every method consumes."""

    question: str
    """The prompt text, without any answer marker."""
    steps: list[str]
    """Reasoning steps as text (one string per step); CoT trains on them, Coconut replaces them by latents."""
    answer: str
    """The gold final answer as text (what follows the answer marker)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Task-specific data the scorer needs (e.g. Countdown numbers/target, ProsQA graph)."""


class Task:
    """Base class. Subclasses set `name` and implement `generate`, `load` and `score`."""

    name: ClassVar[str] = ""
    training_only_params: ClassVar[tuple[str, ...]] = ()
    """Generator parameters that make training crutches, not tasks (they would make the eval split easy):
    config.check_generator_params refuses them in `task.params`, which also makes the eval split."""
    numeric_answers: ClassVar[bool] = False
    """Answers are checked as numbers or arithmetic, so a tokenizer that garbles digits makes every score 0."""

    def generate(self, n: int, seed: int, **params: Any) -> list[Example]:
        """Return `n` synthetic examples, deterministic in `seed`."""
        raise UserInputError(f"task {self.name!r} has no generator; give a data file instead")

    def iter_generate(self, n: int, seed: int, **params: Any) -> Iterator[Example]:
        """The examples of `generate(n, seed, **params)` one at a time. Tasks whose generator can yield as it
        goes override this, so that `data generate` streams a huge `n` instead of holding it in memory."""
        yield from self.generate(n, seed, **params)

    def load(self, path: str) -> list[Example]:
        """Read examples from a file; raise UserInputError naming file, record and expected field."""
        raise NotImplementedError

    def to_record(self, example: Example) -> dict[str, Any]:
        """The example as one record of a JSON-list file that `load` reads back (`data generate` writes
        these). Tasks whose files carry more than question/steps/answer override it."""
        return {"question": example.question, "steps": list(example.steps), "answer": example.answer}

    def extract_answer(self, generated: str) -> str:
        """Pull the final answer out of generated text (after the last answer marker)."""
        marker = ANSWER_MARKER.strip()
        if marker in generated:
            generated = generated.rsplit(marker, 1)[1]
        return generated.strip().split("\n")[0].strip()

    def score(self, generated: str, example: Example) -> bool:
        """True when the generated text's answer is correct. Never raises on malformed output."""
        raise NotImplementedError

    def diagnostics(self, generated: str, example: Example) -> dict[str, bool]:
        """Checks beyond correctness, averaged into `<key>_rate` by evaluation (learning curves, eval.json).

        `well_formed`: the answer marker is there and a non-empty answer line follows it. Tasks override
        this to add their own checks (ProsQA: does the answer name one of the two options?).
        """
        if not isinstance(generated, str):
            return {"well_formed": False}
        return {"well_formed": ANSWER_MARKER.strip() in generated and bool(self.extract_answer(generated))}


def read_text(path: str, what: str) -> str:
    """A data file's text, or a UserInputError naming the file (missing, unreadable, not UTF-8)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except OSError as error:
        raise UserInputError(f"cannot read {what} data: {error.strerror}", path=path) from error
    except UnicodeDecodeError as error:
        raise UserInputError(f"not UTF-8 text: {error.reason}", path=path) from error


def parse_json_list(text: str, path: str, expected: str) -> list:
    """A non-empty JSON list; malformed JSON is reported with its line, anything else with what was expected."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserInputError(f"malformed JSON: {error.msg} (column {error.colno})", path=path, line=error.lineno) from error
    if not isinstance(records, list):
        raise UserInputError(f"expected a JSON list of {expected} records", path=path)
    if not records:
        raise UserInputError("empty dataset: expected at least one record", path=path)
    return records


def record_lines(text: str) -> list[int]:
    """1-based line on which each element of the top-level JSON list in `text` starts (for FILE:LINE errors).

    Call it only on text that parses as a JSON list; it walks the elements with the C decoder, so it costs
    about one more parse.
    """
    decoder = json.JSONDecoder()
    lines: list[int] = []
    pos = text.index("[") + 1
    line, counted = 1, 0

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(pos)
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", counted, pos)
        counted = pos
        lines.append(line)
        _, pos = decoder.raw_decode(text, pos)
        pos = skip(pos)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
    return lines


ANSWER_MARKER = "### "
"""Text placed before the final answer in every training sequence."""

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserInputError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]()
