"""Sweeps (expansion, cell references, resume), aggregation math, latent analyses of finished runs, reports."""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from latentreason import report, results
from latentreason.analysis import runs
from latentreason.config import RunConfig, from_dict, read_yaml, save_config
from latentreason.errors import UserInputError
from latentreason.results import aggregate
from latentreason.sweep import OVERRIDES_HEADER, SweepConfig, cell_config, cell_name, expand, read_sweep, run_sweep

TINY = {
    "model": {"backbone": "gpt2-tiny", "n_layer": 1, "n_embd": 32, "n_head": 2, "tokenizer_vocab_size": 300},
    "task": {"name": "countdown", "branching": 3, "train_size": 16, "eval_size": 8},
    "train": {"epochs": 1, "batch_size": 8, "warmup_steps": 1, "lr": 3e-3},
    "eval": {"batch_size": 8, "max_new_tokens": 8},
}


def sweep_of(groups, grid=None, out="/tmp/sweep") -> SweepConfig:
    return SweepConfig(out_dir=out, base={}, grid=grid or {}, groups=groups)


# ----------------------------------------------------------------------------- expansion and references


def test_expand_union_of_groups_with_shared_grid_and_no_duplicates() -> None:
    sweep = sweep_of(
        [{"method.name": ["cot", "no_cot"]}, {"method.name": ["soft_tokens"], "method.n_latents": [2, 4]}, {"method.name": ["cot"]}],
        grid={"train.seed": [0, 1]},
    )
    cells = expand(sweep)
    assert len(cells) == 2 * 2 + 2 * 2  # the repeated cot group adds nothing
    assert cells[0] == {"method.name": "cot", "train.seed": 0}
    assert {"method.name": "soft_tokens", "method.n_latents": 4, "train.seed": 1} in cells
    assert len({cell_name(c) for c in cells}) == len(cells)


def test_two_cells_that_differ_only_in_their_start_are_refused() -> None:
    """A cell's run dir name leaves out its {cell:...} start, so two such cells would share one run dir (the
    second would skip or resume the first's run); the sweep refuses them before any trains."""
    same_but_start = [{"method.name": ["soft_tokens"], "train.init_from": ["{cell:method.name=no_cot}"]},
                      {"method.name": ["soft_tokens"], "train.init_from": ["{cell:method.name=cot}"]}]
    with pytest.raises(UserInputError, match="two cells get the run dir runs/soft_tokens_seed-0"):
        expand(sweep_of([{"method.name": ["no_cot", "cot"]}, *same_but_start], grid={"train.seed": [0]}))
    same_but_start[1]["tag"] = ["from-cot"]  # a label that tells them apart and changes nothing they train
    sweep = sweep_of([{"method.name": ["no_cot", "cot"]}, *same_but_start], grid={"train.seed": [0]}, out="/tmp/sw")
    cells = expand(sweep)
    from_no_cot, from_cot = (cell_config(sweep, c, cells)[0] for c in cells[2:])
    assert Path(from_cot.out_dir).name == "soft_tokens_tag-from-cot_seed-0" and Path(from_no_cot.out_dir).name == "soft_tokens_seed-0"
    assert from_cot.train.init_from.endswith("/cot_seed-0") and from_no_cot.train.init_from.endswith("/no_cot_seed-0")
    assert (from_cot.model, from_cot.method, from_cot.task, from_cot.eval) == (from_no_cot.model, from_no_cot.method, from_no_cot.task, from_no_cot.eval)


def test_cell_reference_resolves_to_the_matching_cell_with_the_same_seed_and_task() -> None:
    sweep = sweep_of(
        [
            {"task.name": ["countdown"], "method.name": ["cot"]},
            {"task.name": ["prosqa"], "method.name": ["cot"]},
            {"task.name": ["countdown", "prosqa"], "method.name": ["coconut"], "method.n_latents": [2, 4],
             "train.init_from": ["{cell:method.name=cot}"]},
        ],
        grid={"train.seed": [0, 1]},
        out="/tmp/sw",
    )
    cells = expand(sweep)
    cell = {"task.name": "prosqa", "method.name": "coconut", "method.n_latents": 4, "train.init_from": "{cell:method.name=cot}", "train.seed": 1}
    cfg, dependencies = cell_config(sweep, cell, cells)
    assert dependencies == [{"task.name": "prosqa", "method.name": "cot", "train.seed": 1}]
    assert cfg.train.init_from == str(Path("/tmp/sw/runs") / cell_name(dependencies[0]))
    assert cfg.out_dir == str(Path("/tmp/sw/runs") / "prosqa_coconut_nlatents-4_seed-1")  # the reference is not in the name
    assert cfg.method.n_latents == 4 and cfg.task.name == "prosqa"

    bad = {**cell, "train.init_from": "{cell:method.name=looped}"}
    with pytest.raises(UserInputError, match="matches no cell"):
        cell_config(sweep, bad, cells)


def test_replication_configs_expand_and_resolve(tmp_path: Path) -> None:
    """Every cell of the shipped replication sweeps builds a valid RunConfig and its references resolve."""
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("replication_cpu.yaml", "replication_cpu_b.yaml", "replication_gpu.yaml", "replication_cpu_smoke.yaml"):
        config = read_sweep(root / name)
        cells = expand(config)
        names = {cell_name(c) for c in cells}
        assert len(names) == len(cells), name
        for cell in cells:
            cfg, dependencies = cell_config(config, cell, cells)
            if cfg.method.name == "coconut":
                assert [d["method.name"] for d in dependencies] == ["cot"]
            if cfg.method.name == "coprocessor":  # answer-only and pretraining from no_cot, curriculum from cot,
                [start] = dependencies  # fine-tuning from a pretraining cell of the same variant and N_L
                if cfg.method.curriculum.enabled:
                    assert start["method.name"] == "cot"
                elif start.get("train.objective") == "pretrain":
                    assert cfg.train.objective == "task" and start["method.coprocessor.variant"] == cell["method.coprocessor.variant"]
                    if cell["method.n_latents"] == 0:  # H2's control: its N_L = 0 from the pretraining cell its tag names
                        assert cell["method.coprocessor.variant"] == "h2" and cell["tag"] == f"from-pretrain-nl{start['method.n_latents']}"
                    else:
                        assert start["method.n_latents"] == cell["method.n_latents"]
                else:
                    assert start["method.name"] == "no_cot"
            for dependency in dependencies:
                assert dependency.get("train.seed") == cell.get("train.seed") and dependency["task.name"] == cell["task.name"]
                assert dependency.get("task.branching") == cell.get("task.branching")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    """Every file in configs/ loads and validates as the README's commands read it: a sweep (grid/groups) resolves
    every cell to a valid RunConfig, a run config loads as one. A key a method does not have (e.g.
    method.curriculum.* on coconut) fails here instead of at the first cell of an hour-long sweep."""
    from latentreason.config import load_config, read_yaml, validate
    from latentreason.sweep import resolve_cells

    if {"grid", "groups"} & read_yaml(path).keys():
        sweep = read_sweep(path)
        cells = expand(sweep)
        assert cells, path.name
        _, invalid = resolve_cells(path, sweep, cells)  # the sweep's own pre-flight: configs, references, inputs
        assert not invalid, invalid
    else:
        validate(load_config(path))


def test_replication_cpu_halves_share_their_no_cot_cells() -> None:
    """The CPU replication runs as two processes (part A, part B) writing into one out_dir: part B's looped
    ProsQA cells start from part A's No-CoT cells, so the shared cells must have the same name and config."""
    root = Path(__file__).resolve().parents[1] / "configs"
    configs = {}
    for name in ("replication_cpu.yaml", "replication_cpu_b.yaml"):
        config = read_sweep(root / name)
        cells = expand(config)
        configs[name] = {cell_name(c): cell_config(config, c, cells) for c in cells}
    part_a, part_b = configs["replication_cpu.yaml"], configs["replication_cpu_b.yaml"]
    shared = set(part_a) & set(part_b)
    assert len(shared) == 3 and all(part_a[n][0] == part_b[n][0] for n in shared)
    looped_prosqa = [cfg for cfg, _ in part_b.values() if cfg.method.name == "looped" and cfg.task.name == "prosqa"]
    assert looped_prosqa and {cfg.train.init_from for cfg in looped_prosqa} == {part_a[n][0].out_dir for n in shared}


# ----------------------------------------------------------------------------- resume


def fake_train_factory(calls: list[str]):
    def fake_train(cfg: RunConfig, progress: bool = True):
        calls.append(cfg.out_dir)
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        accuracy = 0.25 + 0.5 * (cfg.method.name == "cot") + 0.1 * cfg.train.seed
        summary = {"accuracy": accuracy, "accuracy_ci95": [accuracy - 0.1, accuracy + 0.1], "n": 10, "flops_per_answer": 1e6,
                   "forward_passes_per_answer": 3.0, "seconds_per_answer": 0.01, "params_total": 100, "params_trainable": 100}
        (out / "eval.json").write_text(json.dumps(summary))
        (out / "done.json").write_text(json.dumps({"train_seconds": 1.0}))
        return summary

    return fake_train


def test_second_sweep_skips_finished_cells_and_resumes_analyses(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    analyzed: list[str] = []
    monkeypatch.setattr("latentreason.training.train", fake_train_factory(calls))

    def fake_analyze(run_dir, overrides=None, progress=True):
        analyzed.append(Path(run_dir).name)
        return runs._write_analysis(Path(run_dir) / "analysis", {"n_slots": 0, "skipped": "test"})

    monkeypatch.setattr(runs, "analyze_run", fake_analyze)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"out_dir: {tmp_path / 'out'}\n"
        "base: {task: {name: countdown}}\n"
        "grid: {train.seed: [0, 1]}\n"
        "groups:\n"
        "  - {method.name: [cot, no_cot]}\n"
        "  - {method.name: [coconut], method.n_latents: [2], train.init_from: ['{cell:method.name=cot}']}\n"
    )
    rows = run_sweep(path, progress=False)
    assert len(calls) == 6 and len(rows) == 6 and analyzed == []
    # The dependency ran before the cell that needs it.
    assert calls.index(str(tmp_path / "out/runs/cot_seed-0")) < calls.index(str(tmp_path / "out/runs/coconut_nlatents-2_seed-0"))
    assert (tmp_path / "out/table.md").exists() and (tmp_path / "out/table.csv").exists()

    rows = run_sweep(path, progress=False)
    assert len(calls) == 6 and len(rows) == 6  # nothing retrained

    rows = run_sweep(path, ["analyze=true"], progress=False)  # finished cells still get their analyses
    assert len(calls) == 6 and len(analyzed) == 6
    run_sweep(path, ["analyze=true"], progress=False)
    assert len(analyzed) == 6


def test_sweep_yaml_records_the_overrides_each_invocation_ran_with(tmp_path: Path, monkeypatch) -> None:
    # sweep.yaml used to be a plain copy of the config file, so a folder made with `out_dir=... base.train.lr=...`
    # named the other folder and the other lr as its config.
    calls: list[str] = []
    monkeypatch.setattr("latentreason.training.train", fake_train_factory(calls))
    path = tmp_path / "config.yaml"
    path.write_text(f"# the base config\nout_dir: {tmp_path / 'base'}\n" + SMALL_SWEEP)
    out = tmp_path / "lower_lr"
    run_sweep(path, [f"out_dir={out}", "base.train.lr=2.0e-5", "grid={train.seed: [0]}"], progress=False)
    run_sweep(path, [f"out_dir={out}", "base.train.lr=2.0e-5", "grid={train.seed: [1]}"], progress=False)
    run_sweep(path, [f"out_dir={out}", "base.train.lr=2.0e-5", "grid={train.seed: [1]}"], progress=False)  # listed once
    record = (out / "sweep.yaml").read_text()
    assert record.startswith(path.read_text()) and OVERRIDES_HEADER in record
    assert record.split(OVERRIDES_HEADER)[1].splitlines()[1:] == [
        f"#   out_dir={out} base.train.lr=2.0e-5 'grid={{train.seed: [0]}}'",
        f"#   out_dir={out} base.train.lr=2.0e-5 'grid={{train.seed: [1]}}'"]
    assert read_yaml(out / "sweep.yaml") == read_yaml(path)  # still the config, loadable as before
    run_sweep(out / "sweep.yaml", [f"out_dir={out}"], progress=False)  # the record as a config: one section
    assert (out / "sweep.yaml").read_text().count(OVERRIDES_HEADER) == 1
    assert read_yaml(out / "runs/cot_seed-0/config.yaml")["train"]["lr"] == 2.0e-5  # the cells ran the override
    # Without overrides the record is the config file, byte for byte.
    run_sweep(path, progress=False)
    assert (tmp_path / "base/sweep.yaml").read_text() == path.read_text()


SMALL_SWEEP = ("base: {task: {name: countdown}}\n"
               "grid: {train.seed: [0, 1]}\n"
               "groups:\n"
               "  - {method.name: [cot, no_cot]}\n"
               "  - {method.name: [coconut], method.n_latents: [2], train.init_from: ['{cell:method.name=cot}']}\n")


def small_sweep_with_claims(tmp_path: Path, monkeypatch, calls: list[str]) -> tuple[Path, Path]:
    """SMALL_SWEEP with a fake train that records its cells, and cot_seed-1 held by a live worker on another
    host (its lock cannot reach this one, so the claim stands until that worker removes it)."""
    monkeypatch.setattr("latentreason.training.train", fake_train_factory(calls))
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\n" + SMALL_SWEEP)
    runs = tmp_path / "out/runs"
    (runs / "cot_seed-1").mkdir(parents=True)
    (runs / "cot_seed-1/.claim").write_text("another-host 1")
    return path, runs


def test_two_workers_share_one_sweep_and_train_every_cell_once(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    fake = fake_train_factory(calls)

    def slow_train(cfg: RunConfig, progress: bool = True):
        time.sleep(0.05)  # long enough for the workers to overlap
        return fake(cfg, progress)

    monkeypatch.setattr("latentreason.training.train", slow_train)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\n" + SMALL_SWEEP)
    workers = [threading.Thread(target=run_sweep, args=(path,), kwargs={"progress": False, "poll_seconds": 0.01}) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 6  # every cell trained, none twice
    assert not list((tmp_path / "out/runs").glob("*/.claim"))  # claims are released
    # Coconut never started before the CoT cell it starts from had finished.
    assert calls.index(str(tmp_path / "out/runs/cot_seed-0")) < calls.index(str(tmp_path / "out/runs/coconut_nlatents-2_seed-0"))


def test_sweep_takes_over_stale_claims_and_waits_for_live_ones(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    path, runs = small_sweep_with_claims(tmp_path, monkeypatch, calls)  # cot_seed-1: live, finishes later
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (runs / "no_cot_seed-0").mkdir(parents=True)
    (runs / "no_cot_seed-0/.claim").write_text(f"{socket.gethostname()} {dead.pid}")  # its worker died: stale

    def other_worker_finishes() -> None:
        time.sleep(0.3)
        fake_train_factory([])(from_dict(RunConfig, {"out_dir": str(runs / "cot_seed-1"), "method": {"name": "cot"}}))
        (runs / "cot_seed-1/.claim").unlink()

    other = threading.Thread(target=other_worker_finishes)
    other.start()
    rows = run_sweep(path, progress=False, poll_seconds=0.02)
    other.join()
    trained = {Path(c).name for c in calls}
    assert "no_cot_seed-0" in trained and "cot_seed-1" not in trained and "coconut_nlatents-2_seed-1" in trained
    assert len(calls) == 5 and len(rows) == 6


def test_a_worker_that_does_not_wait_leaves_held_cells_and_their_dependents(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    path, runs = small_sweep_with_claims(tmp_path, monkeypatch, calls)  # cot_seed-1: live, never finishes here
    result: list[list[dict]] = []
    worker = threading.Thread(target=lambda: result.append(run_sweep(path, progress=False, poll_seconds=0.01, wait=False)),
                              daemon=True)  # a worker that waited would poll forever: the claim is never released
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive() and result
    rows = result[0]
    trained = {Path(c).name for c in calls}
    assert trained == {"cot_seed-0", "no_cot_seed-0", "no_cot_seed-1", "coconut_nlatents-2_seed-0"}
    assert len(rows) == 4  # the tables hold what is finished; the held cell and its dependent are left
    assert (runs / "cot_seed-1/.claim").exists()  # another worker's claim is not touched


def test_a_failed_dependency_fails_its_dependents_without_stopping_the_sweep(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    fake = fake_train_factory(calls)

    def train_or_crash(cfg: RunConfig, progress: bool = True):
        if cfg.out_dir.endswith("cot_seed-0") and cfg.method.name == "cot":
            raise RuntimeError("simulated crash")
        return fake(cfg, progress)

    monkeypatch.setattr("latentreason.training.train", train_or_crash)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\n" + SMALL_SWEEP)
    rows = run_sweep(path, progress=False)
    runs = tmp_path / "out/runs"
    assert "simulated crash" in (runs / "cot_seed-0/error.txt").read_text()
    assert "cot_seed-0, failed" in (runs / "coconut_nlatents-2_seed-0/error.txt").read_text()
    assert len(calls) == 4 and len(rows) == 4  # the other seed's coconut still ran


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_mean_and_student_t_interval_over_seeds() -> None:
    base = {"task.name": "prosqa", "task.branching": 4, "method.name": "cot", "method.n_latents": 0,
            "method.coprocessor.variant": "liu", "method.looped.loops": 4, "flops_per_answer": 10.0}
    rows = [dict(base, accuracy=a, accuracy_ci95=[0, 1], flops_per_answer=f) for a, f in ((0.5, 10.0), (0.7, 20.0), (0.9, 30.0))]
    rows.append(dict(base, **{"method.name": "no_cot"}, accuracy=0.4, accuracy_ci95=[0.3, 0.6]))
    table = {r["method.name"]: r for r in aggregate(rows)}
    cot = table["cot"]
    assert cot["seeds"] == 3
    assert cot["accuracy_mean"] == pytest.approx(0.7)
    assert cot["accuracy_ci95_half"] == pytest.approx(4.303 * 0.2 / math.sqrt(3))  # sd of (0.5, 0.7, 0.9) is 0.2
    assert cot["flops_per_answer"] == pytest.approx(20.0)
    # One seed: half the width of that run's own (Wilson) interval.
    assert table["no_cot"]["seeds"] == 1 and table["no_cot"]["accuracy_ci95_half"] == pytest.approx(0.15)


# ----------------------------------------------------------------------------- analyses of real tiny runs


def tiny_run(out: Path, method: dict) -> Path:
    from latentreason.training import train

    cfg = from_dict(RunConfig, {**TINY, "out_dir": str(out), "method": method})
    train(cfg, progress=False)
    return out


def test_paired_gains_compare_each_cell_with_its_own_seeds_start() -> None:
    def row(run: str, method: str, seed: int, accuracy: float, init_from: str | None = None, **extra: Any) -> dict:
        return {"run": run, "task.name": "prosqa", "task.branching": 4, "method.name": method, "train.seed": seed,
                "accuracy": accuracy, "train.init_from": init_from, **extra}

    starts = [0.30, 0.50, 0.40]
    rows = [row(f"no_cot_{s}", "no_cot", s, a) for s, a in enumerate(starts)]
    # Each seed's soft-token run gains exactly 0.05 over its own start although the starts spread widely:
    # pairing must give a zero-width interval, which comparing the two means would not.
    rows += [row(f"soft_{s}", "soft_tokens", s, a + 0.05, f"/x/runs/no_cot_{s}", **{"method.n_latents": 4}) for s, a in enumerate(starts)]
    rows += [row(f"liu_{s}", "coprocessor", s, a, f"/x/runs/no_cot_{s}", **{"method.n_latents": 4, "method.coprocessor.variant": "liu"})
             for s, a in enumerate([0.2, 0.5, 0.45])]
    rows += [row("orphan", "soft_tokens", 0, 0.9, "/elsewhere/runs/missing", **{"method.n_latents": 8})]
    gains = {(g["method.name"], g["method.n_latents"]): g for g in results.paired_gains(rows)}
    assert set(gains) == {("soft_tokens", 4), ("coprocessor", 4)}  # no_cot has no start; the orphan's start is not in the sweep
    soft = gains[("soft_tokens", 4)]
    assert soft["start"] == "no_cot" and soft["seeds"] == 3 and soft["gain_mean"] == pytest.approx(0.05)
    assert soft["gain_ci95_half"] == pytest.approx(0.0, abs=1e-12) and (soft["better"], soft["equal"], soft["worse"]) == (3, 0, 0)
    liu = gains[("coprocessor", 4)]
    assert liu["gain_mean"] == pytest.approx((-0.1 + 0.0 + 0.05) / 3) and (liu["better"], liu["equal"], liu["worse"]) == (1, 1, 1)
    assert liu["gain_ci95_half"] == pytest.approx(4.303 * statistics.stdev([-0.1, 0.0, 0.05]) / math.sqrt(3))


def test_analyze_cot_run_has_nothing_to_analyze(tmp_path: Path, capsys) -> None:
    run = tiny_run(tmp_path / "cot", {"name": "cot"})
    result = runs.analyze_run(run, progress=False)
    assert result["n_slots"] == 0 and "nothing to analyze" in result["skipped"]
    assert "nothing to analyze" in capsys.readouterr().out
    assert json.loads((run / "analysis/analysis.json").read_text())["n_slots"] == 0
    with pytest.raises(UserInputError, match="unknown analysis option"):
        runs.analyze_run(run, ["analysis.bogus=1"], progress=False)


@pytest.mark.skipif(importlib.util.find_spec("latentreason.methods.soft_tokens") is None, reason="soft_tokens module not written yet")
def test_analyze_soft_tokens_run(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "soft", {"name": "soft_tokens", "n_latents": 3})
    result = runs.analyze_run(run, ["analysis.variance_threshold=0.8", "analysis.top_k=2", "analysis.batch_size=3"], progress=False)
    assert result["n_slots"] == 3 and result["n_examples"] == 8 and result["variance_threshold"] == 0.8
    assert len(result["cross_capture"]) == 3 and all(len(row) == 3 for row in result["cross_capture"])
    assert all(result["cross_capture"][i][i] >= 0.8 - 1e-9 for i in range(3))  # a slot captures its own variance
    assert result["cka_slots"][0][0] == pytest.approx(1.0)
    assert result["effective_rank"] >= 1.0 and -1 <= result["slot_silhouette"] <= 1
    lens = result["logit_lens"]["base"]
    assert len(lens) == 3 and all(len(slot) == 2 for slot in lens)
    assert "base_vs_coprocessor" not in result
    for name in ("analysis.json", "cross_capture.png", "cka_slots.png", "logit_lens_base.png"):
        assert (run / "analysis" / name).stat().st_size > 0


@pytest.mark.skipif(importlib.util.find_spec("latentreason.methods.coprocessor") is None, reason="coprocessor module not written yet")
@pytest.mark.parametrize("variant", ["liu", "h1"])
def test_analyze_coprocessor_compares_base_and_coprocessor(tmp_path: Path, variant: str) -> None:
    run = tiny_run(tmp_path / variant, {"name": "coprocessor", "n_latents": 2, "coprocessor": {"variant": variant}})
    result = runs.analyze_run(run, ["analysis.plots=false"], progress=False)
    assert set(result["logit_lens"]) == {"base", "coprocessor"}
    bvc = result["base_vs_coprocessor"]
    assert bvc["base_slots"] == (2 if variant == "liu" else 1)  # h1: the Base's <eot> state after the latent K/V
    assert all(0 <= a <= 90 + 1e-6 for a in bvc["principal_angles_deg"])
    assert bvc["cka"] is None or 0 <= bvc["cka"] <= 1 + 1e-9
    assert not (run / "analysis/cross_capture.png").exists()


# ----------------------------------------------------------------------------- report


def hand_made_cell(root: Path, name: str, overrides: dict, accuracy: float, analysis: dict | None = None) -> None:
    out = root / "runs" / name
    out.mkdir(parents=True)
    data = {"out_dir": str(out), **overrides}
    save_config(from_dict(RunConfig, data), out / "config.yaml")
    (out / "eval.json").write_text(json.dumps({
        "accuracy": accuracy, "accuracy_ci95": [max(0, accuracy - 0.1), min(1, accuracy + 0.1)], "n": 50,
        "flops_per_answer": 1e6 * (1 + overrides["method"].get("n_latents", 0)), "forward_passes_per_answer": 4.0,
        "seconds_per_answer": 0.002, "params_total": 1000, "params_trainable": 900,
    }))
    (out / "done.json").write_text("{}")
    if analysis is not None:
        runs._write_analysis(out / "analysis", analysis)


def test_write_report_from_hand_made_cells(tmp_path: Path) -> None:
    for seed in (0, 1):
        for branching in (3, 4):
            task = {"name": "countdown", "branching": branching}
            train = {"seed": seed}
            hand_made_cell(tmp_path, f"cd{branching}_cot_{seed}", {"task": task, "train": train, "method": {"name": "cot"}}, 0.6 - 0.1 * branching / 4)
            hand_made_cell(tmp_path, f"cd{branching}_nocot_{seed}", {"task": task, "train": train, "method": {"name": "no_cot"}}, 0.3,
                           {"n_slots": 0, "skipped": "no latents"})
            for n in (2, 4):
                hand_made_cell(tmp_path, f"cd{branching}_soft{n}_{seed}", {"task": task, "train": train, "method": {"name": "soft_tokens", "n_latents": n}},
                               0.4 + 0.02 * n + 0.01 * seed, {"n_slots": n, "cross_capture_mean_off_diagonal": 0.5, "slot_silhouette": 0.1, "effective_rank": 3.0})
                hand_made_cell(tmp_path, f"cd{branching}_h1_{n}_{seed}", {"task": task, "train": train,
                               "method": {"name": "coprocessor", "n_latents": n, "coprocessor": {"variant": "h1"}}}, 0.35,
                               {"n_slots": n, "cross_capture_mean_off_diagonal": 0.9, "base_vs_coprocessor": {"principal_angle_mean_deg": 40.0, "cka": 0.5}})
        hand_made_cell(tmp_path, f"cd3_soft8_{seed}", {"task": {"name": "countdown", "branching": 3}, "train": {**train, "init_from": str(tmp_path / f"runs/cd3_nocot_{seed}")},
                       "method": {"name": "soft_tokens", "n_latents": 8}}, 0.35 + 0.1 * seed)
    hand_made_cell(tmp_path, "looped2", {"task": {"name": "countdown", "branching": 3}, "method": {"name": "looped", "looped": {"loops": 2}}}, 0.5)
    (tmp_path / "runs/broken").mkdir()
    (tmp_path / "runs/broken/error.txt").write_text("Traceback ...")

    path = Path(report.write_report(tmp_path))
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "coprocessor-h1" in text and "soft_tokens" in text and "looped" in text
    assert "| countdown b=3 | soft_tokens | 4 | 2 | 0.485 ±" in text  # mean of seeds 0.48 and 0.49
    assert "broken" in text and "## Latent analyses" in text and "no latents" in text
    assert "## Gain over the starting model" in text and "| countdown b=3 | soft_tokens | 8 | no_cot | 2 | +0.100 ± " in text and "| 2 / 0 / 0 |" in text
    assert "| countdown b=3 | coprocessor-h1 | 2 | 2 | 0.350 | 0.900 |" in text  # analysis summary: mean over the 2 seeds
    plots = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert {"accuracy_vs_nl_countdown_b3.png", "accuracy_vs_flops_countdown_b4.png", "accuracy_vs_branching_countdown.png",
            "cross_capture_vs_nl_countdown_b3.png", "gain_over_start_countdown_b3.png"} <= plots
    for name in plots:
        assert f"plots/{name}" in text
    with pytest.raises(UserInputError, match="no finished runs"):
        report.write_report(tmp_path / "empty")


def test_report_names_cells_whose_answers_were_cut_off(tmp_path: Path) -> None:
    for name, method in (("cot", "cot"), ("nocot", "no_cot")):
        hand_made_cell(tmp_path, name, {"task": {"name": "countdown", "branching": 4}, "method": {"name": method}}, 0.1)
    assert "cut off by the decoding budget" not in Path(report.write_report(tmp_path)).read_text()
    eval_json = tmp_path / "runs/cot/eval.json"
    eval_json.write_text(json.dumps(json.loads(eval_json.read_text()) | {"truncated_rate": 0.84}))
    text = Path(report.write_report(tmp_path)).read_text()
    assert "**Answers cut off by the decoding budget**" in text and "countdown cot N_L=0 (84%)" in text  # b is one value: not named
    assert "no_cot N_L=0" not in text.split("cut off by the decoding budget")[1].split("\n")[0]
    eval_json.write_text(json.dumps(json.loads(eval_json.read_text()) | {"truncated_rate": 1 / 440}))
    assert "countdown cot N_L=0 (0.2%)" in Path(report.write_report(tmp_path)).read_text()  # one answer is not "0%"


def test_report_plots_learning_curves_beside_the_matched_controls(tmp_path: Path) -> None:
    """Every paired seed's held-out curve (metrics.jsonl) of a latent cell and of its control: the plot is in the
    report and the control table gives each side's change over the last quarter of training."""
    for seed in (0, 1):
        start = str(tmp_path / f"runs/nocot_{seed}")
        hand_made_cell(tmp_path, f"nocot_{seed}", {"task": {"name": "countdown"}, "train": {"seed": seed}, "method": {"name": "no_cot"}}, 0.6)
        for n, curve in ((0, [0.60, 0.61, 0.62, 0.62]), (4, [0.20, 0.35, 0.45, 0.55])):
            name = f"soft{n}_{seed}"
            hand_made_cell(tmp_path, name, {"task": {"name": "countdown"}, "train": {"seed": seed, "init_from": start},
                                            "method": {"name": "soft_tokens", "n_latents": n}}, curve[-1])
            (tmp_path / "runs" / name / "metrics.jsonl").write_text("".join(
                json.dumps({"step": 250 * (i + 1), "loss": 0.1}) + "\n" + json.dumps({"step": 250 * (i + 1), "eval_accuracy": a}) + "\n"
                for i, a in enumerate(curve)))
    text = Path(report.write_report(tmp_path)).read_text()
    assert "plots/curves_vs_control_countdown.png" in text and (tmp_path / "plots/curves_vs_control_countdown.png").stat().st_size > 0
    assert "| soft_tokens N_L=0 | 2 | -0.070 ± 0.000 | 0 / 0 / 2 | +0.100 / +0.000 |" in text


def test_sweep_warns_when_seeds_from_one_start_on_one_stream_would_train_identically(capsys) -> None:
    """From the same finished run on the same fresh-data stream, train.seed changes nothing a CoT, Coconut or
    N_L = 0 cell uses (session 35: seed 1 repeated seed 0 loss for loss), so the sweep says so before training;
    replicates that also vary task.seed (their own data) or the start are not flagged."""
    from latentreason.sweep import replica_seed_cells, warn_replica_seeds

    def cell(seed: int, task_seed: int = 0, init_from: str | None = "runs/cot", stream: bool | None = None) -> RunConfig:
        return from_dict(RunConfig, {"out_dir": f"runs/x/cot_seed-{seed}", "method": {"name": "cot"},
                                     "task": {"name": "prosqa", "seed": task_seed, "stream": stream},
                                     "train": {"seed": seed, "init_from": init_from}})

    replicas = {"cot_seed-0": (cell(0), []), "cot_seed-1": (cell(1), [])}
    assert replica_seed_cells(replicas) == [["cot_seed-0", "cot_seed-1"]]
    warn_replica_seeds("sweep.yaml", replicas)
    assert "cot_seed-0, cot_seed-1 differ only in train.seed" in capsys.readouterr().err
    own_data = {"cot_seed-0": (cell(0), []), "cot_seed-1": (cell(1, task_seed=1), [])}
    from_scratch = {"cot_seed-0": (cell(0, init_from=None), []), "cot_seed-1": (cell(1, init_from=None), [])}
    own_starts = {"cot_seed-0": (cell(0, init_from="runs/cot0"), []), "cot_seed-1": (cell(1, init_from="runs/cot1"), [])}
    fixed_data = {"cot_seed-0": (cell(0, stream=False), []), "cot_seed-1": (cell(1, stream=False), [])}  # seed shuffles
    assert all(replica_seed_cells(cells) == [] for cells in (own_data, from_scratch, own_starts, fixed_data))
