"""Sweep claims are atomic under takeover, a failed cell makes the sweep exit non-zero, and bad input in one
cell is reported with the cell's name while the others go on (issue 15)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from latentreason import cli, sweep
from latentreason.config import RunConfig, save_config
from latentreason.sweep import CLAIM_FILE, _claim, _release


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def race(run_dir: Path, takers: int) -> list[bool | BaseException]:
    """`takers` threads call _claim(run_dir) at the same instant; each result, or the exception it raised."""
    barrier = threading.Barrier(takers)
    results: list[bool | BaseException] = [False] * takers

    def take(i: int) -> None:
        barrier.wait()
        try:
            results[i] = _claim(run_dir)
        except BaseException as error:  # noqa: BLE001 (a crash is what we look for)
            results[i] = error

    threads = [threading.Thread(target=take, args=(i,)) for i in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("stale, descheduled", [(True, False), (False, False), (True, True)],
                         ids=["dead_claim_takeover", "fresh_cell", "dead_claim_takeover_descheduled"])
def test_exactly_one_of_many_concurrent_takers_wins(tmp_path, monkeypatch, stale, descheduled) -> None:
    host, pid = socket.gethostname(), dead_pid()
    if descheduled:
        # Takers that lose the CPU mid-claim (here: inside a 2 ms host name lookup) widen every race window.
        # The old read-check-unlink-recreate takeover let two or more win in 16 of 20 trials like this.
        def slow_hostname() -> str:
            time.sleep(0.002)
            return host

        monkeypatch.setattr(socket, "gethostname", slow_hostname)
    for trial in range(20 if descheduled else 40):
        run_dir = tmp_path / f"cell{trial}"
        run_dir.mkdir()
        if stale:
            (run_dir / CLAIM_FILE).write_text(f"{host} {pid}")  # its worker died
        results = race(run_dir, takers=12)
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert results.count(True) == 1, f"trial {trial}: {results.count(True)} winners"
        assert (run_dir / CLAIM_FILE).read_text() == f"{host} {os.getpid()}"
        _release(run_dir)
        assert not (run_dir / CLAIM_FILE).exists()


def test_claim_and_release_churn_never_has_two_holders(tmp_path) -> None:
    """Workers claiming and releasing one cell over and over: a taker that opened the file just before the
    holder removed it must not win too (the race a remove-then-recreate scheme has)."""
    run_dir = tmp_path / "cell"
    holders, most, errors = [0], [0], []
    guard = threading.Lock()

    def worker() -> None:
        try:
            for _ in range(150):
                if _claim(run_dir):
                    with guard:
                        holders[0] += 1
                        most[0] = max(most[0], holders[0])
                    time.sleep(0.0005)
                    with guard:
                        holders[0] -= 1
                    _release(run_dir)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and most[0] == 1


def _take_in_process(run_dir: str, start, done, results) -> None:
    start.wait()
    results.put(_claim(Path(run_dir)))
    done.wait()  # the winner holds its claim until every taker has tried


def test_exactly_one_of_many_taker_processes_wins(tmp_path) -> None:
    context = multiprocessing.get_context("fork")
    pid = dead_pid()
    for trial in range(6):
        run_dir = tmp_path / f"cell{trial}"
        run_dir.mkdir()
        (run_dir / CLAIM_FILE).write_text(f"{socket.gethostname()} {pid}")
        takers = 6
        start, done, results = context.Barrier(takers), context.Barrier(takers), context.Queue()
        processes = [context.Process(target=_take_in_process, args=(str(run_dir), start, done, results)) for _ in range(takers)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=60) for _ in range(takers)]
        for process in processes:
            process.join(timeout=60)
        assert outcomes.count(True) == 1 and all(p.exitcode == 0 for p in processes), outcomes


HOLDER = """
import sys, time
from pathlib import Path
from latentreason.sweep import _claim
assert _claim(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def test_a_live_holder_is_respected_and_its_claim_is_taken_over_after_kill_9(tmp_path) -> None:
    run_dir = tmp_path / "cell"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not _claim(run_dir)  # a live worker on this host holds it
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert _claim(run_dir)  # the kernel dropped the dead worker's lock: taken over
        assert (run_dir / CLAIM_FILE).read_text().endswith(f" {os.getpid()}")
    finally:
        holder.kill()
        _release(run_dir)


def test_a_claim_from_another_host_is_respected(tmp_path) -> None:
    (tmp_path / CLAIM_FILE).write_text("another-host 1")
    assert not _claim(tmp_path)
    assert (tmp_path / CLAIM_FILE).read_text() == "another-host 1"


# ----------------------------------------------------------------------------- sweep outcome


def fake_train(calls: list[str], crash: str | None = None, before=None):
    def train(cfg: RunConfig, progress: bool = True):
        if before:
            before()
        calls.append(Path(cfg.out_dir).name)
        if crash and Path(cfg.out_dir).name == crash:
            raise RuntimeError("simulated crash")
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        (out / "eval.json").write_text(json.dumps({"accuracy": 0.5, "accuracy_ci95": [0.4, 0.6], "n": 10}))
        (out / "done.json").write_text(json.dumps({"train_seconds": 1.0}))
        return {}

    return train


def write_sweep(tmp_path: Path, grid: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\nbase: {{task: {{name: countdown}}}}\ngrid: {grid}\n")
    return path


def test_sweep_exit_code_is_1_when_a_cell_failed_and_0_when_none_did(tmp_path, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr("latentreason.training.train", fake_train(calls, crash="seed-1"))
    path = write_sweep(tmp_path, "{train.seed: [0, 1, 2]}")
    assert cli.main(["--quiet", "sweep", str(path)]) == 1
    assert sorted(calls) == ["seed-0", "seed-1", "seed-2"]  # the crash did not stop the others
    monkeypatch.setattr("latentreason.training.train", fake_train(calls))
    assert cli.main(["--quiet", "sweep", str(path)]) == 0  # re-run: the failed cell now trains


def train_noting_stderr_before_the_first_cell(monkeypatch, capsys) -> tuple[list[str], list[str]]:
    """Patch training with a fake that records the cells it trains and what the sweep printed to stderr
    before the first of them."""
    calls: list[str] = []
    seen_before_first_train: list[str] = []

    def note_stderr() -> None:
        if not calls:
            seen_before_first_train.append(capsys.readouterr().err)

    monkeypatch.setattr("latentreason.training.train", fake_train(calls, before=note_stderr))
    return calls, seen_before_first_train


def test_bad_config_in_one_cell_is_named_before_any_cell_trains_and_the_others_go_on(tmp_path, monkeypatch, capsys) -> None:
    calls, seen_before_first_train = train_noting_stderr_before_the_first_cell(monkeypatch, capsys)
    path = write_sweep(tmp_path, "{train.lr: [0.001, 0.01, -1]}")
    assert cli.main(["--quiet", "sweep", str(path)]) == 1
    assert sorted(calls) == ["lr-0.001", "lr-0.01"]
    assert "cell lr--1: config key 'train.lr': expected a value > 0" in seen_before_first_train[0]
    assert "expected a value > 0" in (tmp_path / "out/runs/lr--1/error.txt").read_text()


def test_bad_data_file_in_one_cell_is_named_and_the_others_go_on(tmp_path, monkeypatch, capsys) -> None:
    calls: list[str] = []
    monkeypatch.setattr("latentreason.training.train", fake_train(calls))
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps([{"numbers": [3, 5], "target": 8}]))
    bad.write_text(json.dumps([{"numbers": [3, 5], "target": 8, "steps": ["3 + 5 = 9"], "answer": "(3+5)"}]))
    path = write_sweep(tmp_path, f"{{task.train_path: ['{good}', '{bad}'], task.eval_path: ['{good}']}}")
    assert cli.main(["--quiet", "sweep", str(path)]) == 1
    assert len(calls) == 1 and "good" in calls[0]
    err = capsys.readouterr().err
    assert "cell trainpath-" in err and f"{bad}:1: record 0: field 'steps'" in err


def test_a_user_input_error_while_training_fails_that_cell_only(tmp_path, monkeypatch, capsys) -> None:
    from latentreason.errors import UserInputError

    calls: list[str] = []
    ok = fake_train(calls)

    def train(cfg: RunConfig, progress: bool = True):
        if cfg.train.seed == 0:
            raise UserInputError("train example 3 is 600 tokens long, over model.max_positions=512")
        return ok(cfg, progress)

    monkeypatch.setattr("latentreason.training.train", train)
    path = write_sweep(tmp_path, "{train.seed: [0, 1]}")
    assert cli.main(["--quiet", "sweep", str(path)]) == 1
    assert calls == ["seed-1"]
    assert "cell seed-0: train example 3 is 600 tokens long" in capsys.readouterr().err
    assert not list((tmp_path / "out/runs").glob(f"*/{CLAIM_FILE}"))


def test_held_claims_map_is_empty_after_a_sweep(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("latentreason.training.train", fake_train([], crash="seed-0"))
    sweep.run_sweep(write_sweep(tmp_path, "{train.seed: [0, 1]}"), progress=False)
    assert not sweep._held_claims


def test_typos_in_the_last_groups_are_named_with_file_and_cell_before_the_first_cell_trains(tmp_path, monkeypatch, capsys) -> None:
    """Every cell is resolved and validated up front (config keys and values, {cell:...} references): a typo
    in a late group is reported, naming the sweep file and the cell, before any cell trains."""
    calls, seen_before_first_train = train_noting_stderr_before_the_first_cell(monkeypatch, capsys)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\nbase: {{task: {{name: countdown}}}}\ngroups:\n"
                    "  - {method.name: [no_cot]}\n"
                    "  - {method.name: [soft_tokens], method.n_latnts: [2]}\n"
                    "  - {method.name: [coconut], method.n_latents: [2], train.init_from: ['{cell:method.name=ctot}']}\n")
    assert cli.main(["--quiet", "sweep", str(path)]) == 1
    assert calls == ["no_cot"]
    err = seen_before_first_train[0]
    assert f"{path}: cell soft_tokens_nlatnts-2: unknown config key(s) ['method.n_latnts']" in err
    assert f"{path}: cell coconut_nlatents-2: cell reference '{{cell:method.name=ctot}}'" in err and "matches no cell" in err
    assert "unknown config key" in (tmp_path / "out/runs/soft_tokens_nlatnts-2/error.txt").read_text()
