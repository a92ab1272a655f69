"""A configuration is every axis the sweep varies except the seeds: two learning rates never merge as "seeds",
two seeds always do, and an option that belongs to another method never splits a group (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from latentreason.config import RunConfig, from_dict, save_config
from latentreason.report import write_report
from latentreason.results import (
    aggregate,
    collect,
    configuration_axes,
    control_gains,
    latent_budget,
    method_config,
    method_label,
    paired_gains,
    same_model_configurations,
)
from latentreason.tables import markdown_table


def cell(method: str = "soft_tokens", seed: int = 0, accuracy: float = 0.5, **keys: Any) -> dict[str, Any]:
    """A collected row as results.collect makes it (flat config keys + eval summary)."""
    return {"run": f"{method}_{seed}_{len(keys)}_{accuracy}", "task.name": "prosqa", "task.branching": 4, "method.name": method,
            "method.n_latents": 4, "method.coprocessor.variant": "liu", "method.looped.loops": 4, "train.lr": 1e-3,
            "train.seed": seed, "task.seed": 0, "train.init_from": None, "accuracy": accuracy,
            "accuracy_ci95": [accuracy - 0.1, accuracy + 0.1], **keys}


def by(table: list[dict[str, Any]], *keys: str) -> dict[tuple, dict[str, Any]]:
    return {tuple(entry.get(k) for k in keys): entry for entry in table}


def test_two_learning_rates_never_merge_as_seeds() -> None:
    rows = [cell(accuracy=0.4, **{"train.lr": 1e-3}), cell(accuracy=0.8, **{"train.lr": 1e-2})]
    assert "train.lr" in configuration_axes(rows)
    table = by(aggregate(rows), "train.lr")
    assert set(table) == {(1e-3,), (1e-2,)}
    assert table[(1e-3,)]["seeds"] == 1 and table[(1e-3,)]["accuracy_mean"] == pytest.approx(0.4)
    assert table[(1e-2,)]["seeds"] == 1 and table[(1e-2,)]["accuracy_mean"] == pytest.approx(0.8)


def test_two_seeds_merge_into_one_configuration() -> None:
    rows = [cell(seed=0, accuracy=0.4), cell(seed=1, accuracy=0.6)]
    [entry] = aggregate(rows)
    assert entry["seeds"] == 2 and entry["accuracy_mean"] == pytest.approx(0.5)
    assert "train.seed" not in entry


def test_a_key_of_another_method_does_not_split_a_group_but_splits_its_own() -> None:
    rows = [cell("cot", seed=s, **{"method.looped.loops": loops, "method.coprocessor.variant": v})
            for s, (loops, v) in enumerate([(2, "liu"), (4, "h1"), (8, "h2")])]  # noise for cot
    rows += [cell("looped", seed=0, **{"method.looped.loops": loops}) for loops in (2, 4)]
    table = aggregate(rows)
    cot = [e for e in table if e["method.name"] == "cot"]
    assert len(cot) == 1 and cot[0]["seeds"] == 3
    looped = by([e for e in table if e["method.name"] == "looped"], "method.looped.loops")
    assert set(looped) == {(2,), (4,)} and {latent_budget(e) for e in looped.values()} == {1, 3}


def test_a_data_seed_that_follows_the_training_seed_is_a_seed_and_one_that_varies_alone_is_an_axis() -> None:
    follows = [cell(seed=s, **{"task.seed": 100 + s}) for s in (0, 1, 2)]
    [entry] = aggregate(follows)
    assert entry["seeds"] == 3
    alone = [cell(seed=s, **{"task.seed": d}) for s in (0, 1) for d in (7, 8)]
    table = by(aggregate(alone), "task.seed")
    assert set(table) == {(7,), (8,)} and all(e["seeds"] == 2 for e in table.values())


def test_each_seed_starting_from_its_own_run_is_one_configuration_but_two_starts_are_two() -> None:
    starts = [cell("no_cot", seed=s, accuracy=0.3) | {"run": f"no_cot_{s}"} for s in (0, 1)]
    starts += [cell("cot", seed=s, accuracy=0.6) | {"run": f"cot_{s}"} for s in (0, 1)]
    soft = [cell(seed=s, accuracy=0.5) | {"run": f"soft_{s}", "train.init_from": f"/x/runs/no_cot_{s}"} for s in (0, 1)]
    [entry] = [e for e in aggregate(starts + soft) if e["method.name"] == "soft_tokens"]
    assert entry["seeds"] == 2
    from_cot = [cell(seed=s, accuracy=0.7) | {"run": f"soft_cot_{s}", "train.init_from": f"/x/runs/cot_{s}"} for s in (0, 1)]
    gains = {g["start"]: g for g in paired_gains(starts + soft + from_cot)}
    assert set(gains) == {"no_cot", "cot"} and gains["no_cot"]["gain_mean"] == pytest.approx(0.2)
    assert gains["cot"]["gain_mean"] == pytest.approx(0.1) and gains["cot"]["seeds"] == 2


def test_paired_gains_keep_two_learning_rates_apart() -> None:
    rows = [cell("no_cot", seed=s, accuracy=0.3) | {"run": f"no_cot_{s}"} for s in (0, 1)]
    rows += [cell(seed=s, accuracy=acc) | {"run": f"soft_{lr}_{s}", "train.lr": lr, "train.init_from": f"/x/runs/no_cot_{s}"}
             for s in (0, 1) for lr, acc in ((1e-3, 0.4), (1e-2, 0.9))]
    gains = by(paired_gains(rows), "train.lr")
    assert gains[(1e-3,)]["gain_mean"] == pytest.approx(0.1) and gains[(1e-2,)]["gain_mean"] == pytest.approx(0.6)
    assert all(g["seeds"] == 2 for g in gains.values())


def test_labels_and_budgets_come_from_the_method() -> None:
    assert method_label(cell("coprocessor", **{"method.coprocessor.variant": "h2"})) == "coprocessor-h2"
    assert latent_budget(cell("looped", **{"method.looped.loops": 3})) == 2
    assert latent_budget(cell("cot")) == 0 and latent_budget(cell("soft_tokens")) == 4
    # A row of an older run may carry options that have gone: they are not an error in its report.
    assert method_config({"method.name": "coconut", "method.coconut.no_longer_an_option": 1}).name == "coconut"


def test_report_shows_the_varied_axis_as_a_column(tmp_path: Path) -> None:
    for lr, acc in ((0.001, 0.4), (0.01, 0.8)):
        for seed in (0, 1):
            out = tmp_path / "runs" / f"soft_lr-{lr}_seed-{seed}"
            out.mkdir(parents=True)
            save_config(from_dict(RunConfig, {"out_dir": str(out), "method": {"name": "soft_tokens", "n_latents": 2},
                                              "train": {"lr": lr, "seed": seed}}), out / "config.yaml")
            (out / "eval.json").write_text(json.dumps({"accuracy": acc + 0.01 * seed, "accuracy_ci95": [0, 1], "n": 10}))
    text = Path(write_report(tmp_path)).read_text()
    assert "| task | method | N_L | train.lr | seeds | accuracy |" in text
    assert "| soft_tokens | 2 | 0.001 | 2 | 0.405 ± " in text and "| soft_tokens | 2 | 0.01 | 2 | 0.805 ± " in text


def test_one_markdown_table_helper() -> None:
    text = markdown_table([{"a": 1.23456, "b": None}, {"a": 123456.0, "b": "x"}], ["a", "b"])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.235 |  |", "| 1.23e+05 | x |"]
    assert markdown_table([{"a": 1.0}], ["a"], fmt=lambda v: "n/a").endswith("| n/a |")


def _finished_cell(sweep: Path, name: str, method: dict[str, Any], seed: int, correct: int, losses: list[float]) -> None:
    out = sweep / "runs" / name
    out.mkdir(parents=True)
    save_config(from_dict(RunConfig, {"out_dir": str(out), "method": method, "train": {"seed": seed}}), out / "config.yaml")
    (out / "eval.json").write_text(json.dumps({"accuracy": correct / 100, "accuracy_ci95": [0, 1], "n": 100, "correct": correct,
                                               "generated_tokens_per_answer": 12.5}))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": 50 * (i + 1), "loss": loss}) + "\n" for i, loss in enumerate(losses)))


def test_two_configurations_that_trained_the_same_model_are_named_once_as_such(tmp_path: Path) -> None:
    soft, h2 = {"name": "soft_tokens", "n_latents": 0}, {"name": "coprocessor", "n_latents": 0, "coprocessor": {"variant": "h2"}}
    cot = {"name": "cot"}
    for seed in (0, 1):
        _finished_cell(tmp_path, f"soft_{seed}", soft, seed, 40 + seed, [1.0, 0.5])
        # The same model through another code path: losses equal to float reordering.
        _finished_cell(tmp_path, f"h2_{seed}", h2, seed, 40 + seed, [1.0 * (1 + 1e-6), 0.5])
        # Same scores in one seed and near losses, but another model: differs in the second seed's count and the losses.
        _finished_cell(tmp_path, f"cot_{seed}", cot, seed, 40 + 2 * seed, [1.0, 0.5 * 1.01])
    groups = same_model_configurations(collect(tmp_path))
    assert [[method_label(row) for row in group] for group in groups] == [["coprocessor-h2", "soft_tokens"]]
    text = Path(write_report(tmp_path)).read_text()
    assert "**Configurations that trained the same model**" in text
    assert "prosqa coprocessor-h2 N_L=0 = prosqa soft_tokens N_L=0" in text
    assert "prosqa cot N_L=0" not in text


def test_no_same_model_note_when_every_configuration_differs(tmp_path: Path) -> None:
    _finished_cell(tmp_path, "soft_0", {"name": "soft_tokens", "n_latents": 0}, 0, 40, [1.0, 0.5])
    _finished_cell(tmp_path, "soft4_0", {"name": "soft_tokens", "n_latents": 4}, 0, 40, [1.0, 0.6])
    assert same_model_configurations(collect(tmp_path)) == []
    assert "trained the same model" not in Path(write_report(tmp_path)).read_text()


def test_a_start_outside_the_sweep_named_like_one_of_its_cells_is_not_that_cell(tmp_path: Path) -> None:
    # A CoT cell continued from another sweep's cot_seed-0 is itself cot_seed-0: it must be neither its own start
    # nor the Coconut cell's start (which would turn "gain over the start" into a gain over the control).
    start = tmp_path / "first" / "runs" / "cot_seed-0"
    start.mkdir(parents=True)
    sweep = tmp_path / "second"
    for name, method, correct in (("cot_seed-0", {"name": "cot"}, 60), ("coconut_seed-0", {"name": "coconut", "n_latents": 4}, 25)):
        out = sweep / "runs" / name
        out.mkdir(parents=True)
        save_config(from_dict(RunConfig, {"out_dir": str(out), "method": method, "train": {"seed": 0, "init_from": str(start)}}),
                    out / "config.yaml")
        (out / "eval.json").write_text(json.dumps({"accuracy": correct / 100, "accuracy_ci95": [0, 1], "n": 100, "correct": correct}))
    rows = collect(sweep)
    assert paired_gains(rows) == []
    [coconut] = [c for c in control_gains(rows) if c["method.name"] == "coconut"]
    assert coconut["control"] == "cot" and coconut["gain_mean"] == pytest.approx(-0.35)
