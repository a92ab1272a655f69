"""Batched evaluation: greedy answers, task scoring, accuracy with a 95% CI and per-answer costs."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from latentreason.methods.base import LatentMethod
from latentreason.tasks import Task
from latentreason.tokenization import EncodedExample


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite floats become null (recursively in lists and dicts)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sane at 0% and 100%, unlike the normal one)."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


CHANCE_ACCURACY: dict[str, float] = {"prosqa": 0.5}
"""Accuracy of a uniform guess among the answer options, for tasks where it is known (ProsQA: two options)."""


def shortcut_ceiling(task: Task, examples: Sequence[EncodedExample]) -> float | None:
    """Best accuracy of the no-reasoning heuristics of `tasks/audit.py` on `examples`, or None when that
    audit (or a ceiling for this task) is not available."""
    try:
        from latentreason.tasks import audit
    except ImportError:
        return None
    ceiling = getattr(audit, "shortcut_ceiling", None)
    if ceiling is None:
        return None
    try:
        value = ceiling(task.name, [e.example for e in examples])
    except Exception as error:  # a reference line must never lose a finished run's evaluation
        print(f"warning: no shortcut ceiling for this eval split ({type(error).__name__}: {error})", file=sys.stderr)
        return None
    return None if value is None else float(value)


def task_baselines(task: Task, examples: Sequence[EncodedExample]) -> dict[str, float]:
    """The no-reasoning reference points known for `task` on `examples` (printed beside accuracy)."""
    found = {"chance_accuracy": CHANCE_ACCURACY.get(task.name), "shortcut_ceiling": shortcut_ceiling(task, examples)}
    return {key: value for key, value in found.items() if value is not None}


def accuracy_by_steps(records: Sequence[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{"accuracy_by_steps": {"2": {"n": 253, "accuracy": 0.47}, ...}}: accuracy split by the number of reasoning
    steps of the gold solution (ProsQA: hops from the person to the answer; Countdown: operations), so a mixed
    split such as depth 2-3 shows which depth a model solves. Empty when every example has the same count."""
    groups: dict[int, list[bool]] = {}
    for record in records:
        groups.setdefault(record["reasoning_steps"], []).append(record["correct"])
    if len(groups) < 2:
        return {}
    return {"accuracy_by_steps": {str(k): {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(groups.items())}}


@torch.no_grad()
def evaluate(
    method: LatentMethod,
    task: Task,
    examples: Sequence[EncodedExample],
    batch_size: int = 64,
    max_new_tokens: int = 64,
    out_dir: str | Path | None = None,
    progress: bool = True,
    baselines: bool = True,
) -> dict:
    """Score `method` on `examples`; write eval.json and predictions.jsonl under `out_dir` when given.

    Besides accuracy, the summary holds the rate of every check of `task.diagnostics` (e.g.
    `well_formed_rate`), `truncated_rate` (answers cut off by `max_new_tokens` before their end-of-answer
    token: scored as generated, so a high rate means the budget, not the model, set the accuracy; a warning
    says so) and, with `baselines`, the accuracy a no-reasoning answerer gets on these examples
    (`chance_accuracy`, `shortcut_ceiling`; absent when unknown).
    """
    was_training = method.training
    method.eval()
    records = []
    total_time = 0.0
    extra: dict[str, list[float]] = {}
    diagnostic_keys: dict[str, None] = {}  # insertion-ordered set
    batches = range(0, len(examples), batch_size)
    for start in tqdm(batches, desc=f"eval {method.name}", disable=not progress, leave=False):
        chunk = list(examples[start: start + batch_size])
        began = time.perf_counter()
        generation = method.generate(chunk, max_new_tokens)
        elapsed = time.perf_counter() - began
        total_time += elapsed
        for key, value in generation.extra.items():
            if isinstance(value, (int, float)):
                extra.setdefault(key, []).append(float(value) * len(chunk))
        for i, encoded in enumerate(chunk):
            text = method.tokenizer.decode(generation.token_ids[i], skip_special_tokens=True)
            checks = task.diagnostics(text, encoded.example)
            diagnostic_keys.update(checks)
            records.append({
                "question": encoded.example.question,
                "gold": encoded.example.answer,
                "generated": text,
                "correct": bool(task.score(text, encoded.example)),
                "generated_tokens": len(generation.token_ids[i]),
                # no end-of-answer token within the budget (token_ids stop before eos when there is one)
                "truncated": len(generation.token_ids[i]) >= max_new_tokens,
                "forward_passes": generation.forward_passes[i],
                "latent_slots": generation.latent_slots[i],
                "flops": generation.flops[i],
                "reasoning_steps": len(encoded.example.steps),
                **{key: bool(value) for key, value in checks.items()},
            })
    method.train(was_training)
    n = len(records)
    correct = sum(r["correct"] for r in records)
    mean = lambda key: sum(r[key] for r in records) / max(n, 1)  # noqa: E731
    low, high = wilson_interval(correct, n)
    truncated = sum(r["truncated"] for r in records)
    if truncated:
        warnings.warn(f"{truncated} of {n} answers hit the decoding budget (max_new_tokens={max_new_tokens}) before their "
                      "end-of-answer token and were scored cut off; raise eval.max_new_tokens", stacklevel=2)
    summary = {
        "method": method.name,
        "n": n,
        "correct": correct,
        "accuracy": correct / max(n, 1),
        "accuracy_ci95": [low, high],
        "generated_tokens_per_answer": mean("generated_tokens"),
        "forward_passes_per_answer": mean("forward_passes"),
        "latent_slots_per_answer": mean("latent_slots"),
        "flops_per_answer": mean("flops"),
        "seconds_per_answer": total_time / max(n, 1),
        "answers_per_second": n / total_time if total_time > 0 else float("nan"),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "truncated_rate": truncated / max(n, 1),
        **{f"{key}_rate": sum(bool(r.get(key)) for r in records) / max(n, 1) for key in diagnostic_keys},
        **(task_baselines(task, examples) if baselines else {}),
        **accuracy_by_steps(records),
        **{key: sum(values) / max(n, 1) for key, values in extra.items()},
        **{f"params_{k}": v for k, v in method.parameter_counts().items()},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        (out / "eval.json").write_text(json.dumps(finite_or_none(summary), indent=2, allow_nan=False))
    return summary
