"""How many CoT answers solved the problem in their reasoning lines (true arithmetic, every given number used
exactly once, the last line's value = the target), and how many of those were cut off by the decoding budget
before the final expression: the session-16 check of b4_cot_s6, which was scored with a 48-token budget.
Run from the repository root: python results/countdown_recipe/cut_off_answers.py results/countdown_recipe/b4_cot_s6 48"""
import json
import re
import sys
from fractions import Fraction

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
              "/": lambda a, b: Fraction(a, b) if b else None}


def lines_solve(question: str, generated: str) -> bool:
    numbers, target = re.match(r"Numbers: ([\d ]+)\. Target: (\d+)\.", question).groups()
    pool = [int(x) for x in numbers.split()]
    lines = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", generated.split("###")[0])
    if len(lines) != len(pool) - 1:
        return False
    for a, op, b, c in lines:
        a, b, c = int(a), int(b), int(c)
        if a not in pool or OPERATIONS[op](a, b) != c:
            return False
        pool.remove(a)
        if b not in pool:
            return False
        pool.remove(b)
        pool.append(c)
    return pool == [int(target)]


rows = [json.loads(line) for line in open(f"{sys.argv[1]}/predictions.jsonl")]
budget = int(sys.argv[2])
solved = [row for row in rows if lines_solve(row["question"], row["generated"])]
cut = [row for row in rows if row["generated_tokens"] >= budget]
print(f"{len(rows)} answers; scored correct {sum(r['correct'] for r in rows)}; cut off by the {budget}-token budget {len(cut)}; "
      f"reasoning lines solve the problem {len(solved)} ({len(solved) / len(rows):.3f}), of which cut off "
      f"{sum(r['generated_tokens'] >= budget for r in solved)}")
