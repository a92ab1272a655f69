"""`latentreason sweep CONFIG --executor submitit`: one job per cell through submitit, in dependency order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentreason.cli import main
from latentreason.config import RunConfig, save_config
from latentreason.errors import UserInputError

submitit = pytest.importorskip("submitit")

from latentreason.sweep_submitit import dependency_waves, make_executor, submit_sweep  # noqa: E402


def test_dependency_waves_put_every_cell_after_its_starting_runs():
    depends = {"coconut": ["cot"], "cot": [], "no_cot": [], "liu": ["no_cot"], "liu_ft": ["liu", "cot"]}
    assert dependency_waves(list(depends), depends) == [["cot", "no_cot"], ["coconut", "liu"], ["liu_ft"]]
    with pytest.raises(UserInputError, match="cycle: a -> b -> a"):
        dependency_waves(["a", "b"], {"a": ["b"], "b": ["a"]})


def fake_train(calls: list[str]):
    def train(cfg: RunConfig, progress: bool = True):
        if cfg.train.init_from:
            assert (Path(cfg.train.init_from) / "done.json").exists()  # its starting run finished first
        calls.append(Path(cfg.out_dir).name)
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        if cfg.method.name == "cot" and cfg.train.seed == 1:
            raise RuntimeError("boom")
        summary = {"accuracy": 0.5, "accuracy_ci95": [0.4, 0.6], "n": 10}
        (out / "eval.json").write_text(json.dumps(summary))
        (out / "done.json").write_text(json.dumps(summary))
        return summary

    return train


SWEEP = ("base: {task: {name: countdown}}\n"
         "grid: {train.seed: [0, 1]}\n"
         "groups:\n"
         "  - {method.name: [cot]}\n"
         "  - {method.name: [coconut], method.n_latents: [2], train.init_from: ['{cell:method.name=cot}']}\n"
         "  - {method.name: [soft_tokens], method.n_latents: [2], train.init_from: ['{cell:method.name=cot}']}\n"
         "  - {method.name: [no_cot]}\n")


def test_submitit_sweep_runs_waves_in_dependency_order(tmp_path, monkeypatch, capsys):
    """submitit's in-process debug executor with a fake train: order, failures and resumption."""
    calls: list[str] = []
    monkeypatch.setattr("latentreason.training.train", fake_train(calls))
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\n" + SWEEP)
    failures: list[str] = []
    rows = submit_sweep(path, cluster="debug", failures=failures)
    # Wave 1: the starting runs (and no_cot); wave 2: the cells that start from them.
    assert calls[:4] == ["cot_seed-0", "cot_seed-1", "no_cot_seed-0", "no_cot_seed-1"]
    assert calls[4:] == ["coconut_nlatents-2_seed-0", "soft_tokens_nlatents-2_seed-0"]
    assert failures == ["cot_seed-1", "coconut_nlatents-2_seed-1", "soft_tokens_nlatents-2_seed-1"]
    runs = tmp_path / "out/runs"
    assert "RuntimeError: boom" in (runs / "cot_seed-1/error.txt").read_text()
    assert "cot_seed-1, did not finish" in (runs / "soft_tokens_nlatents-2_seed-1/error.txt").read_text()
    assert len(rows) == 5 and (tmp_path / "out/table.md").exists()
    assert not list(runs.glob("*/.claim"))
    assert "sweep wave 1/2: submitted 4 job(s)" in capsys.readouterr().err

    calls.clear()  # a second submission trains only what is not finished
    submit_sweep(path, cluster="debug", failures=[])
    assert calls == ["cot_seed-1"]


def test_cli_sweep_with_submitit_exits_1_on_failed_cells(tmp_path, monkeypatch):
    monkeypatch.setattr("latentreason.training.train", fake_train([]))
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\n" + SWEEP)
    assert main(["--quiet", "sweep", str(path), "--executor", "submitit", "--cluster", "debug"]) == 1
    assert (tmp_path / "out/runs/cot_seed-0/done.json").exists()


def test_executor_options_reach_submitit_and_bad_ones_are_user_errors(tmp_path):
    executor = make_executor(tmp_path, "local", ["timeout_min=7"])
    assert executor._executor.parameters["timeout_min"] == 7
    with pytest.raises(UserInputError, match="--executor-option"):
        make_executor(tmp_path, "local", ["no_such_parameter=1"])


@pytest.mark.slow
def test_submitit_local_executor_trains_a_two_cell_sweep(tmp_path):
    """Real jobs in local subprocesses: No-CoT, then soft tokens started from it."""
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"out_dir: {tmp_path / 'out'}\n"
        "base: {task: {name: countdown, branching: 3, train_size: 32, eval_size: 4}, train: {batch_size: 16, max_steps: 2,"
        " warmup_steps: 1, trackers: none}, model: {n_layer: 1, n_embd: 16, n_head: 2, tokenizer_vocab_size: 300},"
        " eval: {max_new_tokens: 2}}\n"
        "groups:\n"
        "  - {method.name: [no_cot]}\n"
        "  - {method.name: [soft_tokens], method.n_latents: [2], train.init_from: ['{cell:method.name=no_cot}']}\n")
    failures: list[str] = []
    rows = submit_sweep(path, cluster="local", failures=failures)
    assert failures == [] and len(rows) == 2
    runs = tmp_path / "out/runs"
    start = json.loads((runs / "no_cot/done.json").read_text())
    assert start["steps"] == 2 and (runs / "soft_tokens_nlatents-2/done.json").exists()
    assert list((tmp_path / "out/submitit").glob("*_log.out"))  # submitit's own job logs


def test_submitit_sweep_names_a_bad_cell_before_submitting_and_runs_the_others(tmp_path, monkeypatch, capsys):
    """Every cell is resolved and validated before the first job (as in run_sweep): a typo fails its cell
    and the cells that start from it; it is named with the sweep file on stderr."""
    calls: list[str] = []
    monkeypatch.setattr("latentreason.training.train", fake_train(calls))
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\nbase: {{task: {{name: countdown}}}}\ngroups:\n"
                    "  - {method.name: [no_cot]}\n"
                    "  - {method.name: [soft_tokens], method.n_latnts: [2]}\n")
    failures: list[str] = []
    submit_sweep(path, cluster="debug", failures=failures)
    assert calls == ["no_cot"] and failures == ["soft_tokens_nlatnts-2"]
    assert f"{path}: cell soft_tokens_nlatnts-2: unknown config key(s)" in capsys.readouterr().err
    assert "unknown config key" in (tmp_path / "out/runs/soft_tokens_nlatnts-2/error.txt").read_text()
