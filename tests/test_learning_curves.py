"""Learning curves: periodic eval rows in metrics.jsonl, the plot, early stopping, strict JSON, baselines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from latentreason.checkpoint import load_run_weights
from latentreason.config import load_config
from latentreason.curves import early_stop_update, json_line, plot_learning_curves
from latentreason.evaluation import task_baselines
from latentreason.tasks import Example, get_task
from latentreason.training import train


def curve_run(tmp_path: Path, *overrides: str):
    return load_config(None, [
        f"out_dir={tmp_path / 'run'}", "task.name=prosqa", "task.train_size=32", "task.eval_size=12",
        "task.stream_chunk_size=16", "task.stream_prefetch=false", "task.params={n_nodes: 10, max_depth: 3}",
        "train.batch_size=8", "train.epochs=2", "train.warmup_steps=1", "train.lr=3e-3",
        "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=400",
        "eval.max_new_tokens=8", "train.log_every=1", "train.eval_every=3", "train.eval_every_size=6",
        "train.eval_train_size=4", *overrides,
    ])


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_eval_every_k_rows_and_plot(tmp_path):
    summary = train(curve_run(tmp_path), progress=False)
    run_dir = tmp_path / "run"
    evals = [r for r in rows(run_dir) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6, 8]  # every 3 steps and the last (8 = 2 x 32 / 8)
    for r in evals:
        assert {"eval_accuracy", "eval_n", "eval_well_formed_rate", "eval_names_option_rate",
                "train_accuracy", "train_n", "eval_seconds", "epoch"} <= set(r)
        assert r["eval_n"] == 6 and r["train_n"] == 4
        assert 0 <= r["eval_names_option_rate"] <= r["eval_well_formed_rate"] <= 1
    assert len([r for r in rows(run_dir) if "loss" in r]) == 8  # training rows unchanged
    png = run_dir / "learning_curves.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # eval.json: chance level and the diagnostic rates beside accuracy
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["chance_accuracy"] == 0.5 and "well_formed_rate" in report and "names_option_rate" in report
    assert summary["chance_accuracy"] == 0.5


def test_periodic_eval_does_not_change_training(tmp_path):
    import torch

    train(curve_run(tmp_path / "a"), progress=False, evaluate_at_end=False)
    train(curve_run(tmp_path / "b", "train.eval_every=0"), progress=False, evaluate_at_end=False)
    a = load_run_weights(tmp_path / "a" / "run")
    b = load_run_weights(tmp_path / "b" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stop_triggers(tmp_path):
    # lr ~0: the model barely changes, so eval accuracy stops improving and patience 2 ends the run early
    summary = train(curve_run(tmp_path, "train.lr=1e-9", "train.eval_every=1", "train.early_stop_patience=2"), progress=False)
    evals = [r for r in rows(tmp_path / "run") if "eval_accuracy" in r]
    accuracies = [r["eval_accuracy"] for r in evals]
    best_at = max(range(len(accuracies)), key=lambda i: (accuracies[i], -i))  # first best
    assert len(evals) == best_at + 3  # two evaluations without a new best after it, then stop
    assert evals[-1]["early_stop"] is True and not any(r.get("early_stop") for r in evals[:-1])
    assert summary["steps"] == evals[-1]["step"] < 8 and summary["early_stopped"]
    assert summary["best_eval_step"] == evals[best_at]["step"]
    assert (tmp_path / "run" / "eval.json").exists()  # a stopped run finishes normally


def test_early_stop_counter():
    state = {"global_step": 1}
    assert not early_stop_update(state, 0.2, patience=2)
    state["global_step"] = 2
    assert not early_stop_update(state, 0.2, patience=2)  # equal is not better
    state["global_step"] = 3
    assert not early_stop_update(state, 0.3, patience=2)  # better: counter resets
    assert state["best_eval_step"] == 3 and state["evals_since_best"] == 0
    assert not early_stop_update(state, 0.1, patience=2)
    assert early_stop_update(state, 0.1, patience=2)
    assert not early_stop_update({"global_step": 1}, 0.0, patience=0) and not early_stop_update(state, 0.0, patience=0)


def test_metrics_lines_are_strict_json():
    line = json_line({"loss": float("nan"), "grad_norm": float("inf"), "nested": [1.0, float("-inf")]})
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"loss": None, "grad_norm": None, "nested": [1.0, None]}


def test_plot_tolerates_null_losses_and_no_eval_rows(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json_line({"step": 1, "loss": 2.0}) + json_line({"step": 2, "loss": math.nan}))
    assert plot_learning_curves(tmp_path, {"chance": 0.5, "shortcut ceiling": None}).exists()


def test_prosqa_diagnostics():
    task = get_task("prosqa")
    example = task.generate(1, seed=0)[0]
    meta = example.meta
    target, other = meta["idx_to_symbol"][meta["target"]], meta["idx_to_symbol"][meta["neg_target"]]
    person = example.answer.split(" is a ")[0]
    assert task.diagnostics(f"### {example.answer}", example) == {"well_formed": True, "names_option": True}
    assert task.diagnostics(f"### {person} is a {other}.", example) == {"well_formed": True, "names_option": True}
    assert task.diagnostics(f"### {person} is a {target}zz.", example) == {"well_formed": True, "names_option": False}
    assert task.diagnostics(f"### {person} is", example) == {"well_formed": False, "names_option": False}
    assert task.diagnostics(f"{person} is a {target}.", example)["well_formed"] is False  # no answer marker
    assert get_task("countdown").diagnostics("### (1+2)", Example("q", [], "3")) == {"well_formed": True}
    assert get_task("countdown").diagnostics("1 + 2 = 3", Example("q", [], "3")) == {"well_formed": False}


def test_chance_level_only_where_known():
    assert task_baselines(get_task("prosqa"), [])["chance_accuracy"] == 0.5
    assert "chance_accuracy" not in task_baselines(get_task("countdown"), [])


def test_shortcut_ceiling_comes_from_the_audit():
    from types import SimpleNamespace

    audit = pytest.importorskip("latentreason.tasks.audit")
    examples = get_task("prosqa").generate(40, seed=5, n_nodes=10, max_depth=3)
    baselines = task_baselines(get_task("prosqa"), [SimpleNamespace(example=e) for e in examples])
    assert baselines["shortcut_ceiling"] == pytest.approx(audit.shortcut_ceiling("prosqa", examples))
    assert 0.0 <= baselines["shortcut_ceiling"] <= 1.0


def test_kill_and_resume_with_learning_curves_logs_the_same_rows(tmp_path):
    volatile = ("elapsed_s", "eval_seconds")
    straight = curve_run(tmp_path / "a", "train.early_stop_patience=5")
    resumed = curve_run(tmp_path / "b", "train.early_stop_patience=5")
    train(straight, progress=False, evaluate_at_end=False)
    train(resumed, progress=False, stop_after_steps=4)  # after the step-3 eval, before the step-6 one
    train(resumed, progress=False, evaluate_at_end=False)
    clean = lambda run_dir: [{k: v for k, v in r.items() if k not in volatile} for r in rows(run_dir)]  # noqa: E731
    assert clean(tmp_path / "a" / "run") == clean(tmp_path / "b" / "run")


def test_eval_json_splits_accuracy_by_reasoning_steps(tmp_path):
    """A split that mixes depths reports accuracy per depth, consistent with its predictions file."""
    train(curve_run(tmp_path, "task.params={n_nodes: 10, min_depth: 2, max_depth: 3}", "task.eval_size=24",
                    "train.epochs=1", "train.eval_every=0"), progress=False)
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    by_steps = report["accuracy_by_steps"]
    assert set(by_steps) == {"2", "3"} == {str(p["reasoning_steps"]) for p in predictions}
    for steps, bucket in by_steps.items():
        mine = [p["correct"] for p in predictions if str(p["reasoning_steps"]) == steps]
        assert bucket["n"] == len(mine) and bucket["accuracy"] == pytest.approx(sum(mine) / len(mine))
    assert sum(b["n"] for b in by_steps.values()) == report["n"] == 24


def test_eval_json_has_no_split_when_every_example_has_the_same_depth(tmp_path):
    train(curve_run(tmp_path, "train.epochs=1", "train.eval_every=0"), progress=False)
    assert "accuracy_by_steps" not in json.loads((tmp_path / "run" / "eval.json").read_text())


def test_on_fresh_data_the_train_sample_is_what_was_just_trained_on(tmp_path, monkeypatch):
    """Under a stream curriculum the first training examples belong to the first phase; the curve's
    train sample must be the latest ones instead (here: the last 4 of the 6 x 8 examples read by step 6)."""
    import latentreason.curves as curves
    from latentreason.data import ExampleStream

    scored: list[list] = []
    real_curve_point = curves.curve_point

    def spy(method, task, eval_examples, train_examples, *args):
        scored.append([e.example for e in train_examples])
        return real_curve_point(method, task, eval_examples, train_examples, *args)

    monkeypatch.setattr(curves, "curve_point", spy)
    cfg = curve_run(tmp_path, "task.stream_curriculum=[{examples: 32, params: {n_nodes: 4, min_depth: 1, max_depth: 1}}]")
    train(cfg, progress=False)
    stream = ExampleStream(cfg.task, prefetch=False)
    expected = {step: stream.examples(step * 8 - 4, 4) for step in (3, 6, 8)}
    assert scored == [expected[3], expected[6], expected[8]]
    assert all(len(e.question) > len(expected[3][0].question) for e in expected[6])  # past the 4-node phase
