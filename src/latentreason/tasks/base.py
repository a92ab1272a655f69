"""Task interface: every task yields `Example`s and scores predicted answer text."""

from __future__ import annotations

import json
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

    def generate(self, n: int, seed: int, **params: Any) -> list[Example]:
        """Return `n` synthetic examples, deterministic in `seed`."""
        raise UserInputError(f"task {self.name!r} has no generator; give a data file instead")

    def load(self, path: str) -> list[Example]:
        """Read examples from a file; raise UserInputError naming file, record and expected field."""
        raise NotImplementedError

    def extract_answer(self, generated: str) -> str:
        """Pull the final answer out of generated text (after the last answer marker)."""
        marker = ANSWER_MARKER.strip()
        if marker in generated:
            generated = generated.rsplit(marker, 1)[1]
        return generated.strip().split("\n")[0].strip()

    def score(self, generated: str, example: Example) -> bool:
        """True when the generated text's answer is correct. Never raises on malformed output."""
        raise NotImplementedError


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
