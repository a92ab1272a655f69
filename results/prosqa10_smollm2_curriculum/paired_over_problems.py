"""Paired accuracy difference of two runs scored on the same eval problems: run A minus run B.

    python results/prosqa10_smollm2_curriculum/paired_over_problems.py RUN_A RUN_B

Reads each run's predictions.jsonl (one row per problem, same order), checks that the questions match, and prints
mean(correct_A - correct_B) with a 95% normal-approximation half-width over problems, and how many problems only A
or only B gets right. One seed: this is an interval over problems, not over training runs.
"""

import json
import math
import sys
from pathlib import Path


def correct_by_question(run_dir: str) -> list[tuple[str, int]]:
    path = Path(run_dir) / "predictions.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} not found (a finished run writes it; `latentreason eval {run_dir}` re-creates it from the weights, in {run_dir}/eval)")
    return [(row["question"], int(row["correct"])) for row in map(json.loads, path.read_text().splitlines())]


def main(run_a: str, run_b: str) -> None:
    a, b = correct_by_question(run_a), correct_by_question(run_b)
    if [q for q, _ in a] != [q for q, _ in b]:
        sys.exit(f"error: {run_a} and {run_b} were not scored on the same problems in the same order")
    diffs = [x - y for (_, x), (_, y) in zip(a, b)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    print(f"{run_a} - {run_b}: {mean:+.3f} +/- {1.96 * sd / math.sqrt(n):.3f} over {n} problems; "
          f"only A right {diffs.count(1)}, only B right {diffs.count(-1)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
