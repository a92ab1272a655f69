"""Countdown: combine k numbers with + - * / to reach a target.

One rule everywhere (Stream of Search, Gandhi et al. 2024): **every given number is used exactly
once**. Training targets (the solver's trace), the solver and the verifier all apply it, so an
answer that reaches the target with a strict subset of the numbers is wrong.

Generation: the target is drawn uniformly from one range, `TARGET_RANGE`, the same at every
branching factor; then numbers are drawn uniformly from 1..99 (repeats allowed) until the exact
solver finds an all-numbers solution for that target, with every intermediate value a
non-negative integer (larger minus smaller, exact division only). Drawing the target first keeps
the targets uniform at every k (plain rejection sampling would favour easy targets, more so at
small k). A fixed range keeps the branching curve about k alone; difficulty still rises with k:
a random walk (random pair, random legal operation) reaches the target with probability about
0.09 at k = 3, 0.015 at k = 4, 0.002 at k = 5 and 0.001 at k = 6 (tests/test_generators.py).

Held-out split: by instance (a stable hash of the multiset of numbers and the target), one in
`HELDOUT_MODULUS`, so no test problem occurs in training and the test split spans the whole target
range (>= 100 distinct targets in 200 problems at every k). Stream of Search holds out target
values instead; a range of 190 values cannot spare 100 of them, and with one token per number a
held-out target would be a value the model never saw as a target.

The number of input numbers k (`branching`) is the study's branching-factor knob: the first search
level has k*(k-1)/2 pairs times four operations to choose from.

Formats of one example:

* question: ``"Numbers: 23 5 61 7. Target: 100."``
* steps: the solver's trace, one ``"a op b = c"`` line per step, e.g. ``"61 + 23 = 84"``
* answer: one fully parenthesised expression using every number once, e.g. ``"((61+23)+(5+7))"``
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

from latentreason.errors import UserInputError
from latentreason.tasks.base import ANSWER_MARKER, Example, Task, parse_json_list, read_text, record_lines, register_task

NUMBER_MIN, NUMBER_MAX = 1, 99
"""Input numbers are drawn uniformly from this inclusive range (Stream of Search)."""

MIN_BRANCHING, MAX_BRANCHING = 2, 7

TARGET_RANGE = (10, 199)
"""Inclusive range targets are drawn from, at every branching factor (see the module docstring)."""

HELDOUT_MODULUS = 10
"""One instance in HELDOUT_MODULUS (by a stable hash of numbers and target) belongs to the test split."""

_ATTEMPTS_PER_TARGET = 2000
"""Number draws tried for one target before another target is drawn (rarely reached: at k = 3 an
average target needs about 40)."""

MAX_VERIFY_CHARS = 2000
"""Longer predictions are rejected outright: a real answer is a few dozen characters, and the cap
keeps the recursive parser far from Python's recursion limit."""

_SOLVER_NODE_BUDGET = 50_000
"""Search nodes (multisets of 3+ values) one generation attempt may spend before the instance is
rejected. A safety net for k = 7 or unusual target ranges: with the default ranges the most seen
was about 400 nodes at k = 5, 7,000 at k = 6 and 16,000 at k = 7 (about 0.3 s)."""


def default_target_range(branching: int) -> tuple[int, int]:
    """Target range used unless given: `TARGET_RANGE` at every branching factor. (It used to jump
    from 10..100 to 100..999 at k = 5, which mixed a range effect into the branching curve.)"""
    return TARGET_RANGE


def is_heldout(numbers: Sequence[int], target: int) -> bool:
    """True when the instance (numbers in any order, target) belongs to the test split.

    A stable hash (crc32, not Python's salted `hash`) of the sorted numbers and the target, so the
    split does not depend on the order the numbers are shown in.
    """
    key = f"countdown:{','.join(map(str, sorted(int(x) for x in numbers)))}:{int(target)}"
    return zlib.crc32(key.encode()) % HELDOUT_MODULUS == 0


# --------------------------------------------------------------------------------------------------
# Exact solver
# --------------------------------------------------------------------------------------------------


class _BudgetExceeded(Exception):
    pass


def _combine(a: int, b: int) -> list[tuple[str, int, int, int]]:
    """All legal ways to combine a pair: (op, left, right, result), larger operand on the left.

    Results stay non-negative integers. Moves that duplicate another move's result are dropped
    (x/1 == x*1, x-0 == x+0; commutative ops are tried once in one order) so the search stays small
    without losing solutions.
    """
    hi, lo = (a, b) if a >= b else (b, a)
    moves = [("+", hi, lo, hi + lo)]
    if lo != 0:
        moves.append(("-", hi, lo, hi - lo))
    moves.append(("*", hi, lo, hi * lo))
    if lo > 1 and hi % lo == 0:
        moves.append(("/", hi, lo, hi // lo))
    return moves


def _search(values: list[int], target: int, failed: set[tuple[int, ...]], counter: list[int],
            budget: int | None) -> list[tuple[str, int, int, int]] | None:
    """DFS over pairs; returns the first list of moves reducing `values` to exactly [target].

    `failed` memoizes multisets already shown unsolvable (different move orders reach the same
    multiset very often), `counter`/`budget` bound the work for the generator.
    """
    n = len(values)
    if n == 1:
        return [] if values[0] == target else None
    if n == 2:  # leaf level inline: the bulk of all nodes, so skip recursion and memo here
        for move in _combine(values[0], values[1]):
            if move[3] == target:
                return [move]
        return None
    key = tuple(sorted(values))
    if key in failed:
        return None
    counter[0] += 1
    if budget is not None and counter[0] > budget:
        raise _BudgetExceeded
    tried_pairs: set[tuple[int, int]] = set()
    for i in range(n):
        for j in range(i + 1, n):
            pair = (values[i], values[j]) if values[i] >= values[j] else (values[j], values[i])
            if pair in tried_pairs:  # equal values at other positions give identical subtrees
                continue
            tried_pairs.add(pair)
            rest = [values[m] for m in range(n) if m != i and m != j]
            for move in _combine(values[i], values[j]):
                found = _search(rest + [move[3]], target, failed, counter, budget)
                if found is not None:
                    return [move] + found
    failed.add(key)
    return None


def _solve_moves(numbers: Sequence[int], target: int,
                 budget: int | None = None) -> list[tuple[str, int, int, int]] | None:
    return _search(list(numbers), target, set(), [0], budget)


def _format_move(move: tuple[str, int, int, int]) -> str:
    op, a, b, c = move
    return f"{a} {op} {b} = {c}"


def solve(numbers: Sequence[int], target: int) -> list[str] | None:
    """Exact solver: a step trace (``"a op b = c"`` lines) that uses ALL numbers and ends at
    `target`, or None when no such solution exists. Intermediates are non-negative integers.
    Deterministic: the first solution in a fixed depth-first order over pairs and operations."""
    moves = _solve_moves([int(x) for x in numbers], int(target))
    return None if moves is None else [_format_move(m) for m in moves]


_STEP_RE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*$")


def trace_to_expression(steps: Sequence[str], numbers: Sequence[int]) -> str:
    """Turn a solver trace into one fully parenthesised expression over the input numbers,
    e.g. ["61 + 23 = 84", "7 + 5 = 12", "84 + 12 = 96"] -> "((61+23)+(7+5))" (the last step's
    expression). Raises ValueError if the trace does not follow from `numbers`."""
    pool: list[tuple[int, str]] = [(int(x), str(int(x))) for x in numbers]
    if not steps:
        raise ValueError("empty trace")

    def take(value: int) -> str:
        for idx, (v, text) in enumerate(pool):
            if v == value:
                del pool[idx]
                return text
        raise ValueError(f"value {value} is not available")

    expr = ""
    for step in steps:
        m = _STEP_RE.match(step)
        if m is None:
            raise ValueError(f"not an 'a op b = c' step: {step!r}")
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        expr = f"({take(a)}{op}{take(b)})"
        pool.append((c, expr))
    return expr


# --------------------------------------------------------------------------------------------------
# Verifier (safe parser, no eval)
# --------------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """Any malformed or illegal prediction; raised inside the verifier, never escapes `verify`."""


_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([-+*/()]))")
_MAX_NUMBER_DIGITS = 12
_MAX_NESTING = 60


class _ExprParser:
    """Recursive-descent parser/evaluator for + - * / and parentheses over integer literals.

    Every literal is taken from `pool` (a multiset of still-available values), so a number used
    twice or not available fails. Division must be exact. Unary minus is accepted (it introduces
    no new number; reasoning-gym answers such as "-5 + 60" rely on it), so intermediates may be
    negative here, unlike in the generator.
    """

    def __init__(self, text: str, pool: Counter[int]):
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.pool = pool
        self.depth = 0

    @staticmethod
    def _tokenize(text: str) -> list[str]:
        tokens: list[str] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if m is None:
                raise _Invalid(f"unexpected character at {pos}")
            tok = m.group(1) or m.group(2)
            if m.group(1) is not None and len(tok) > _MAX_NUMBER_DIGITS:
                raise _Invalid("number too long")
            tokens.append(tok)
            pos = m.end()
        return tokens

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self) -> str:
        tok = self._peek()
        if tok is None:
            raise _Invalid("unexpected end of expression")
        self.pos += 1
        return tok

    def parse(self) -> Fraction:
        if not self.tokens:
            raise _Invalid("empty expression")
        value = self._expr()
        if self._peek() is not None:
            raise _Invalid(f"unexpected token {self._peek()!r}")
        return value

    def _expr(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self._next()
            rhs = self._term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while self._peek() in ("*", "/"):
            op = self._next()
            rhs = self._factor()
            if op == "*":
                value = value * rhs
            else:
                if rhs == 0:
                    raise _Invalid("division by zero")
                value = value / rhs
                if value.denominator != 1:
                    raise _Invalid("non-integer division")
        return value

    def _factor(self) -> Fraction:
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise _Invalid("nested too deeply")
        tok = self._next()
        if tok == "-":
            value = -self._factor()
        elif tok == "(":
            value = self._expr()
            if self._next() != ")":
                raise _Invalid("missing ')'")
        elif tok.isdigit():
            n = int(tok)
            if self.pool[n] <= 0:
                raise _Invalid(f"number {n} not available")
            self.pool[n] -= 1
            value = Fraction(n)
        else:
            raise _Invalid(f"unexpected token {tok!r}")
        self.depth -= 1
        return value


class _AnyNumber(Counter):
    """A number pool that never runs out: evaluates an expression whatever numbers it uses (diagnostics)."""

    def __getitem__(self, key: int) -> int:
        return 1

    def __setitem__(self, key: int, value: int) -> None:
        pass  # taking a number never uses it up


def _value(expression: str) -> Fraction | None:
    """The exact value of an expression, whatever numbers it uses (the verifier's parser and arithmetic), or
    None when it does not parse or divides inexactly (diagnostics)."""
    try:
        return _ExprParser(expression.translate(_UNICODE_OPS), _AnyNumber()).parse()
    except (_Invalid, ValueError, ArithmeticError, RecursionError):
        return None


_CLAIM_RE = re.compile(r"^\s*(-?\d{1,%d})\s*$" % _MAX_NUMBER_DIGITS)
_UNICODE_OPS = str.maketrans({"×": "*", "÷": "/", "−": "-"})


def _verify(text: str, numbers: Sequence[int], target: int) -> bool:
    text = text.translate(_UNICODE_OPS).strip().rstrip(".").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return False
    pool: Counter[int] = Counter(int(x) for x in numbers)
    value: Fraction | None = None
    for idx, line in enumerate(lines):
        parts = line.split("=")
        if len(parts) > 2:
            return False
        value = _ExprParser(parts[0], pool).parse()
        if len(parts) == 2:
            claim = _CLAIM_RE.match(parts[1])
            if claim is None or Fraction(int(claim[1])) != value:
                return False
        elif idx != len(lines) - 1:
            return False  # an intermediate step must state its result
        # The step's result becomes available to the following steps (trace semantics).
        pool[int(value)] += 1
    # One rule: every given number used exactly once, so nothing but the final value may be left
    # (an unused input, or an earlier step's result the answer never used, means a subset).
    pool[int(value)] -= 1
    return value == target and all(count == 0 for count in pool.values())


def verify(expression_or_steps: str, numbers: Sequence[int], target: int) -> bool:
    """True when the prediction reaches `target` legally from `numbers`; False for anything else.

    Accepts a single expression (``"(61+23)+(5+7)"``, optionally followed by ``"= 100"``) or a
    multi-line trace of ``"a op b = c"`` steps (each step may use input numbers and results of
    earlier steps). Every input number must be used exactly once (the rule of the generator and
    the solver): an answer built from a strict subset of the numbers, or a trace with a step result
    the final value does not use, is wrong. The final value must equal the target. Arithmetic is exact (Fraction); division
    must be exact and by non-zero; claimed step results must be right. Never raises.
    """
    if not isinstance(expression_or_steps, str) or len(expression_or_steps) > MAX_VERIFY_CHARS:
        return False
    try:
        return _verify(expression_or_steps, numbers, target)
    except (_Invalid, ValueError, ArithmeticError, RecursionError, TypeError):
        return False


# --------------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def format_question(numbers: Sequence[int], target: int) -> str:
    return f"Numbers: {' '.join(str(n) for n in numbers)}. Target: {target}."


def _example(numbers: list[int], target: int, moves: list[tuple[str, int, int, int]]) -> Example:
    steps = [_format_move(m) for m in moves]
    return Example(
        question=format_question(numbers, target),
        steps=steps,
        answer=trace_to_expression(steps, numbers),
        meta={"numbers": numbers, "target": target},
    )


def make_example(numbers: Sequence[int], target: int) -> Example | None:
    """Build the Example for one instance, or None when it has no all-numbers solution."""
    numbers = [int(x) for x in numbers]
    moves = _solve_moves(numbers, int(target))
    return None if moves is None else _example(numbers, int(target), moves)


LOAD_SOLVER_NODE_BUDGET = 200_000
"""Search nodes the solver may spend on one loaded record without steps/answer (about 5 s). An unreachable
target among MAX_BRANCHING numbers can need more; such a record must then bring its own steps and answer."""


def _load_record(rec: Any, i: int, path: str, line: int) -> Example:
    """One validated file record (see CountdownTask.load); `line` is where it starts in the file."""
    where = f"record {i}"

    def fail(message: str) -> UserInputError:
        return UserInputError(f"{where}: {message}", path=path, line=line)

    if not isinstance(rec, dict):
        raise fail("expected an object with numbers and target")
    nums, target = rec.get("numbers"), rec.get("target")
    if not (isinstance(nums, list) and nums and all(_is_int(x) and x >= 0 for x in nums)):
        raise fail("field 'numbers' must be a non-empty list of non-negative integers")
    if len(nums) > MAX_BRANCHING:
        raise fail(f"field 'numbers' has {len(nums)} numbers; expected at most {MAX_BRANCHING} "
                   "(the exact search grows too fast beyond that)")
    if not _is_int(target):
        raise fail("field 'target' must be an integer")
    steps, answer = rec.get("steps"), rec.get("answer")
    if steps is None or answer is None:
        try:
            moves = _solve_moves(nums, target, budget=LOAD_SOLVER_NODE_BUDGET)
        except _BudgetExceeded:
            raise fail(f"the solver gave up on numbers {nums}, target {target} after "
                       f"{LOAD_SOLVER_NODE_BUDGET} search nodes; give the record's steps and answer, "
                       "or use fewer numbers") from None
        if moves is None:
            raise fail(f"numbers {nums} cannot reach target {target} and the record gives no answer")
        return _example(list(nums), target, moves)
    if not (isinstance(steps, list) and all(isinstance(s, str) for s in steps)):
        raise fail("field 'steps' must be a list of strings")
    if not isinstance(answer, str):
        raise fail("field 'answer' must be a string")
    if steps and not verify("\n".join(steps), nums, target):
        raise fail(f"field 'steps' {steps} do not reach target {target} from numbers {nums}; expected "
                   "'a op b = c' lines, each using given numbers or earlier results once, ending at the target")
    if not verify(answer, nums, target):
        raise fail(f"field 'answer' {answer!r} does not reach target {target} from numbers {nums} "
                   "(each number at most once, exact integer division)")
    return Example(format_question(nums, target), steps, answer, {"numbers": nums, "target": target})


@register_task
class CountdownTask(Task):
    """Countdown with a configurable number of inputs (`branching`) and held-out targets."""

    name = "countdown"
    numeric_answers = True

    def generate(self, n: int, seed: int, **params: Any) -> list[Example]:
        """`n` solvable instances (see `iter_generate`), as a list."""
        return list(self.iter_generate(n, seed, **params))

    def iter_generate(self, n: int, seed: int, *, branching: int = 4, target_min: int | None = None,
                      target_max: int | None = None, split: str = "train",
                      **params: Any) -> Iterator[Example]:
        """Yield `n` solvable instances one at a time (a huge `n` never sits in memory) with `branching` numbers, deterministic in `seed`.

        Each problem draws a target uniformly from [target_min, target_max] (default
        `TARGET_RANGE`), then `branching` numbers uniformly from 1..99 until the instance belongs
        to `split` and the solver finds an all-numbers solution (rejection sampling, as in Stream of
        Search, but per target so that targets stay uniform). `split`: "train" excludes held-out
        instances (`is_heldout`), "test" uses only them, "all" both.
        """
        if params:
            raise UserInputError(f"countdown: unknown generator parameter(s) {sorted(params)}; "
                                 "expected branching, target_min, target_max, split")
        if not isinstance(n, int) or n < 0:
            raise UserInputError(f"countdown: n must be a non-negative integer, got {n!r}")
        if not isinstance(branching, int) or not MIN_BRANCHING <= branching <= MAX_BRANCHING:
            raise UserInputError(f"countdown: branching must be an integer in "
                                 f"{MIN_BRANCHING}..{MAX_BRANCHING}, got {branching!r}")
        lo, hi = default_target_range(branching)
        lo = lo if target_min is None else target_min
        hi = hi if target_max is None else target_max
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo < 0 or hi < lo:
            raise UserInputError("countdown: expected integers 0 <= target_min <= target_max, "
                                 f"got {lo}..{hi}")
        if split not in ("train", "test", "all"):
            raise UserInputError("countdown: split must be 'train', 'test' or 'all', "
                                 f"got {split!r}")
        rng = random.Random(f"countdown:{seed}:{branching}")
        found = 0
        attempts_left = 5000 * max(n, 1) * (HELDOUT_MODULUS if split == "test" else 1)
        while found < n and attempts_left > 0:
            target = rng.randint(lo, hi)
            for _ in range(min(_ATTEMPTS_PER_TARGET, attempts_left)):
                attempts_left -= 1
                numbers = [rng.randint(NUMBER_MIN, NUMBER_MAX) for _ in range(branching)]
                if split != "all" and is_heldout(numbers, target) != (split == "test"):
                    continue  # the hash is cheap: check it before the solver
                try:
                    moves = _solve_moves(numbers, target, budget=_SOLVER_NODE_BUDGET)
                except _BudgetExceeded:
                    continue  # too costly to decide; rejecting keeps generation time bounded
                if moves is not None:
                    found += 1
                    yield _example(numbers, target, moves)
                    break
        if found < n:
            raise UserInputError(f"countdown: found only {found} of {n} solvable instances "
                                 f"with branching={branching}, targets {lo}..{hi}; widen the range")

    def to_record(self, example: Example) -> dict[str, Any]:
        """{"numbers", "target", "steps", "answer"}: what `load` reads (it re-verifies steps and answer)."""
        return {"numbers": list(example.meta["numbers"]), "target": example.meta["target"],
                "steps": list(example.steps), "answer": example.answer}

    def load(self, path: str) -> list[Example]:
        """Read a JSON list of {"numbers": [...], "target": int} records (steps/answer optional,
        recomputed by the solver when absent). Given steps and answer must each reach the target from
        the given numbers; every error names the line where the bad record starts."""
        text = read_text(path, "countdown")
        records = parse_json_list(text, path, "{numbers, target}")
        lines = record_lines(text)
        return [_load_record(rec, i, path, lines[i]) for i, rec in enumerate(records)]

    def diagnostics(self, generated: str, example: Example) -> dict[str, bool]:
        """Why an answer failed, as rates for the learning curves (a model can hit the target with wrong
        arithmetic, or do the arithmetic right on the wrong numbers):

        `hits_target`: the answer expression's value is the target (whatever numbers it uses);
        `uses_numbers_once`: its numbers are exactly the given ones (whatever its value);
        `steps_correct` (only when the output has "a op b = c" reasoning lines): every such line is true.
        """
        checks = super().diagnostics(generated, example)
        if not {"numbers", "target"} <= set(example.meta or {}):
            return checks  # an example without its problem (nothing to check the answer against)
        if not isinstance(generated, str):
            return checks | {"hits_target": False, "uses_numbers_once": False}
        expression = self.extract_answer(generated).split("=")[0]
        value = _value(expression)
        checks["hits_target"] = value is not None and value == example.meta["target"]
        used = sorted(int(x) for x in re.findall(r"\d+", expression))
        checks["uses_numbers_once"] = used == sorted(int(x) for x in example.meta["numbers"])
        reasoning = generated.rsplit(ANSWER_MARKER.strip(), 1)[0] if ANSWER_MARKER.strip() in generated else generated
        steps = [m for m in map(_STEP_RE.match, reasoning.splitlines()) if m is not None]
        if steps:
            checks["steps_correct"] = all(_value(f"{a}{op}{b}") == int(c) for a, op, b, c in (m.groups() for m in steps))
        return checks

    def score(self, generated: str, example: Example) -> bool:
        """Verify the expression after the answer marker against the example's numbers/target."""
        try:
            answer = self.extract_answer(generated)
            return verify(answer, example.meta["numbers"], example.meta["target"])
        except (KeyError, TypeError, AttributeError):
            return False
