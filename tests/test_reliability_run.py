"""Reliability of train / eval runs (issue 15): interrupts, kills, NaNs, locks, full disks, corrupt files.

The fault-injection tests fork the test process (torch already imported, so a child starts in well under a
second), run the real CLI in the child and make it signal itself at a chosen point: right after an
optimizer step, inside a forward pass, in the middle of a checkpoint write, during the final evaluation.
The run is then resumed until it finishes, and its final weights must equal an uninterrupted run's bit
for bit.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import latentreason
from latentreason import checkpoint as ckpt
from latentreason import environment
from latentreason.checkpoint import load_run_weights
from latentreason.cli import main
from latentreason.config import load_config
from latentreason.environment import code_commit, cpu_model_name, read_segments
from latentreason.errors import DiskFull, TrainingDiverged, UserInputError
from latentreason.finished_run import evaluate_run
from latentreason.runlock import LOCK_FILE, RunLock
from latentreason.training import train

TINY = [
    "task.name=countdown", "task.branching=3", "task.train_size=64", "task.eval_size=8", "train.batch_size=16",
    "train.epochs=3", "train.warmup_steps=2", "train.lr=3e-3", "train.log_every=1", "train.checkpoint_every=3",
    "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=300", "eval.max_new_tokens=6",
    "task.stream=false",
]
"""12 optimizer steps (4 per epoch); checkpoints at steps 3, 4, 6, 8, 9, 12. A fixed training set (no
prefetching stream process); the slow fault-injection test also covers the streamed default."""
TOTAL_STEPS = 12


@pytest.fixture(autouse=True, scope="module")
def _no_learning_curve_plot():
    """Skip the end-of-run matplotlib plot (seconds per run on a busy CPU; nothing here looks at it)."""
    import latentreason.training as training_module

    real = training_module.plot_learning_curves
    training_module.plot_learning_curves = lambda *args, **kwargs: None
    yield
    training_module.plot_learning_curves = real


def tiny(out: Path, *overrides: str):
    return load_config(None, [*TINY, f"out_dir={out}", *overrides])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted, finished run of TINY (weights, metrics rows), shared by the module's tests."""
    root = tmp_path_factory.mktemp("straight")
    previous = os.environ.get("LATENTREASON_DATA_CACHE")
    os.environ["LATENTREASON_DATA_CACHE"] = str(root / "cache")
    try:
        torch.manual_seed(0)
        summary = train(tiny(root / "run"), progress=False)
    finally:
        if previous is None:
            os.environ.pop("LATENTREASON_DATA_CACHE")
        else:
            os.environ["LATENTREASON_DATA_CACHE"] = previous
    return {"dir": root / "run", "weights": load_run_weights(root / "run"), "summary": summary,
            "losses": [r["loss"] for r in metric_rows(root / "run")]}


def metric_rows(run_dir: Path) -> list[dict]:
    """Training rows of metrics.jsonl, parsed strictly (a NaN or Infinity token fails the test)."""
    def reject(token):
        raise AssertionError(f"non-strict JSON token {token} in metrics.jsonl")
    rows = [json.loads(line, parse_constant=reject) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}: max |diff| {(a[differ[0]] - b[differ[0]]).abs().max()}"


# ----------------------------------------------------------------------------- fault injection in a forked CLI


def run_forked(argv: list[str], inject: tuple[str, int, int] | None, log: Path) -> int:
    """Run `latentreason ARGV` in a forked child; `inject = (where, n, signal)` makes the child send itself
    `signal` at the n-th (1-based) `step` (right after optimizer.step(), before the step counter moves),
    `forward` (a module forward call), `write` (checkpoint write: mid-write for SIGKILL, leaving a partial
    temp file) or at the start of the final `eval`. Returns the exit code (-9: killed); stderr goes to `log`."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            handle = open(log, "w", buffering=1)
            os.dup2(handle.fileno(), 2)
            sys.stderr = handle
            if inject:
                _arm(*inject)
            code = main(["--quiet", *argv])
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _arm(where: str, n: int, sig: int) -> None:
    import latentreason.checkpoint as checkpoint_module
    import latentreason.training as training_module

    count = {"calls": 0}

    def fire() -> bool:
        count["calls"] += 1
        if count["calls"] == n:
            os.kill(os.getpid(), sig)
            return True
        return False

    if where == "step":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda *args: fire())
    elif where == "forward":
        from torch.nn.modules.module import register_module_forward_hook

        def forward_hook(*args) -> None:  # returns None: the module's output is left as it is
            fire()

        register_module_forward_hook(forward_hook)
    elif where == "write":
        real = checkpoint_module.save_file

        def save_file(tensors, filename, metadata=None):
            if count["calls"] + 1 == n and sig == signal.SIGKILL:  # die with half a file written
                real(tensors, filename, metadata=metadata)
                with open(filename, "r+b") as handle:
                    handle.truncate(os.path.getsize(filename) // 2)
            fire()
            real(tensors, filename, metadata=metadata)

        checkpoint_module.save_file = save_file
    elif where == "eval":
        real_evaluate = training_module.evaluate

        def evaluate(*args, **kwargs):
            fire()
            return real_evaluate(*args, **kwargs)

        training_module.evaluate = evaluate
    else:
        raise ValueError(where)


def interrupt_and_resume(run_dir: Path, injections: list[tuple[str, int, int]], tmp_path: Path, *extra: str) -> list[int]:
    """Apply each injection to one run (each in a fresh process resuming the last), then finish it."""
    argv = ["train", *TINY, f"out_dir={run_dir}", *extra]
    codes = []
    for i, inject in enumerate(injections):
        log = tmp_path / f"stderr{i}.txt"
        code = run_forked(argv, inject, log)
        text = log.read_text()
        codes.append(code)
        if inject[2] == signal.SIGKILL:
            assert code == -signal.SIGKILL, (inject, code, text[-2000:])
        elif code != 0:  # an injection point the segment never reached lets it finish: then nothing to check
            assert code == 130, (inject, code, text[-2000:])
            assert "Traceback" not in text, text[-2000:]
            last = [line for line in text.splitlines() if line.strip()][-1]
            assert last.startswith("interrupted"), text[-2000:]
            if inject[0] != "eval":  # stopped inside the training loop: at a step boundary, with a checkpoint
                assert f"resume with: latentreason train {run_dir}/config.yaml" in last
        if code == 0:
            break
    else:
        log = tmp_path / "stderr_final.txt"
        assert run_forked(argv, None, log) == 0, log.read_text()[-3000:]
    assert (run_dir / "done.json").exists()
    assert not list(run_dir.glob("*.tmp*")), "temp files left behind"
    assert not (run_dir / LOCK_FILE).exists()
    return codes


def test_interrupts_and_kills_resume_bitwise(straight, tmp_path):
    """One run, five processes: Ctrl-C right after optimizer.step() (before the step counter moves: the step
    is completed and checkpointed, never applied twice), kill -9 with half a checkpoint written (the temp
    file is cleaned at the next start, the previous checkpoint used), SIGTERM inside a forward pass, Ctrl-C
    during the final evaluation, then a clean finish. Exit 130 with one line saying how to resume; final
    weights and every logged loss equal the uninterrupted run's; no metrics row twice."""
    run_dir = tmp_path / "run"
    injections = [("step", 2, signal.SIGINT), ("write", 2, signal.SIGKILL), ("forward", 40, signal.SIGTERM), ("eval", 1, signal.SIGINT)]
    codes = interrupt_and_resume(run_dir, injections, tmp_path)
    assert codes == [130, -9, 130, 130]
    assert_same_weights(load_run_weights(run_dir), straight["weights"])
    rows = metric_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, TOTAL_STEPS + 1))
    assert [r["loss"] for r in rows] == straight["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_between_optimizer_step_and_step_counter_resumes_exactly(straight, tmp_path, sig):
    run_dir = tmp_path / "run"
    codes = interrupt_and_resume(run_dir, [("step", 2, sig)], tmp_path)
    assert codes == [130]
    assert_same_weights(load_run_weights(run_dir), straight["weights"])
    assert [r["loss"] for r in metric_rows(run_dir)] == straight["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("seed, stream", [(0, "false"), (1, "false"), (2, "true")])
def test_fault_injection_random_points(straight, tmp_path, seed, stream):
    """Seeded random kill -9 / SIGINT / SIGTERM at steps, forward passes, checkpoint writes and evaluation;
    with the fixed training set and with the default streamed one (a prefetching generator process)."""
    rng = random.Random(seed)
    menu = [("step", 1, 6), ("forward", 1, 120), ("write", 1, 3), ("eval", 1, 1)]
    injections = []
    for _ in range(6):
        where, low, high = rng.choice(menu)
        injections.append((where, rng.randint(low, high), rng.choice([signal.SIGKILL, signal.SIGINT, signal.SIGTERM])))
    extra = [f"task.stream={stream}"]
    if stream == "false":
        reference, losses = straight["weights"], straight["losses"]
    else:
        train(tiny(tmp_path / "reference", *extra), progress=False)
        reference, losses = load_run_weights(tmp_path / "reference"), [r["loss"] for r in metric_rows(tmp_path / "reference")]
    run_dir = tmp_path / "run"
    codes = interrupt_and_resume(run_dir, injections, tmp_path, *extra)
    print(f"seed {seed} stream {stream}: injections {injections} -> exit codes {codes}")
    assert_same_weights(load_run_weights(run_dir), reference)
    rows = metric_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, TOTAL_STEPS + 1)) and [r["loss"] for r in rows] == losses


# ----------------------------------------------------------------------------- NaN / Inf


def test_nonfinite_loss_stops_keeps_last_good_checkpoint_and_exits_3(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["--quiet", "train", *TINY, f"out_dir={run_dir}", "train.lr=1e6", "train.checkpoint_every=1", "train.max_grad_norm=1e9"])
    err = capsys.readouterr().err
    assert code == 3, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "non-finite" in lines[0] and "train.nonfinite=skip" in lines[0] and "Traceback" not in err
    assert not (run_dir / "done.json").exists() and not (run_dir / ckpt.WEIGHTS_FILE).exists()
    rows = metric_rows(run_dir)  # strict JSON: the non-finite values are null
    assert rows[-1]["nonfinite"] is True and (rows[-1]["loss"] is None or rows[-1]["grad_norm"] is None)
    weights, rest = ckpt.load_checkpoint(run_dir / ckpt.CHECKPOINT_FILE)
    assert all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())
    assert rest["state"]["global_step"] == rows[-1]["step"] - 1  # the last good step


def test_nonfinite_skip_leaves_weights_unchanged_for_that_batch(tmp_path, monkeypatch):
    from accelerate import Accelerator

    real = Accelerator.clip_grad_norm_
    calls = {"n": 0}

    def clip(self, parameters, max_norm, norm_type=2):
        calls["n"] += 1
        norm = real(self, parameters, max_norm, norm_type)
        return torch.tensor(float("nan")) if calls["n"] == 3 else norm

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip)
    summary = train(tiny(tmp_path / "run", "train.nonfinite=skip", "train.max_steps=4"), progress=False, evaluate_at_end=False)
    assert summary["nonfinite_skipped"] == 1
    rows = metric_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[2]["grad_norm"] is None
    with pytest.raises(TrainingDiverged):  # the default, `stop`, on the same batch
        calls["n"] = 0
        train(tiny(tmp_path / "stop", "train.max_steps=4"), progress=False, evaluate_at_end=False)


def test_nonfinite_weights_are_never_saved(tmp_path):
    with pytest.raises(TrainingDiverged, match="non-finite"):
        ckpt.save_weights({"w": torch.tensor([1.0, float("inf")])}, tmp_path / ckpt.WEIGHTS_FILE)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- run-dir lock and resume rules


def test_locked_run_dir_refuses_train_eval_and_analyze(tmp_path, capsys):
    from latentreason.config import save_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(tiny(run_dir), run_dir / "config.yaml")  # an unfinished run, so train gets as far as the lock
    ckpt.save_weights({"w": torch.zeros(2)}, run_dir / ckpt.WEIGHTS_FILE)
    with RunLock(run_dir, "train"):
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(UserInputError, match=f"in use by .*pid {os.getpid()}"):
            train(tiny(run_dir), progress=False)
        with pytest.raises(UserInputError, match="in use by"):
            evaluate_run(run_dir, progress=False, eval_name="again")
        (run_dir / "done.json").write_text("{}")
        assert main(["--quiet", "analyze", str(run_dir)]) == 2
        assert "in use by" in capsys.readouterr().err
    assert not (run_dir / LOCK_FILE).exists()


def test_stale_lock_of_dead_process_is_taken_over_and_other_host_respected(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps({"command": "train", "pid": dead.pid, "host": socket.gethostname()}))
    with RunLock(run_dir, "eval"):
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    (run_dir / LOCK_FILE).write_text(json.dumps({"command": "train", "pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(UserInputError, match=f"another host.*delete {re.escape(str(run_dir / LOCK_FILE))}"):
        RunLock(run_dir, "train").acquire()


def test_lock_is_exclusive_across_processes(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from latentreason.runlock import RunLock\n"
        f"lock = RunLock({str(run_dir)!r}, 'train'); lock.acquire(); print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserInputError, match=f"pid {holder.pid}"):
            RunLock(run_dir, "eval").acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run_dir, "eval"):  # the holder died (kill -9): its lock is stale, taken over
        pass


def test_unfinished_run_resumes_only_under_the_same_config(straight, tmp_path):
    run_dir = tmp_path / "run"
    assert train(tiny(run_dir), progress=False, stop_after_steps=2) == {"stopped_at_step": 2}
    with pytest.raises(UserInputError, match=r"train\.lr: 0\.003 -> 0\.004.*rm -r"):
        train(tiny(run_dir, "train.lr=4e-3"), progress=False)
    # A failed run (config.yaml written, no checkpoint yet) is not silently reused under another config either.
    (run_dir / ckpt.CHECKPOINT_FILE).unlink()
    with pytest.raises(UserInputError, match=r"task\.seed: 0 -> 5"):
        train(tiny(run_dir, "task.seed=5"), progress=False)
    # eval.* settings and the run dir's location may change: moved and re-evaluated with a fixed setting.
    train(tiny(run_dir), progress=False, stop_after_steps=5)
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    summary = train(tiny(moved, "eval.batch_size=3"), progress=False)
    assert summary["batch_size"] == 3
    assert_same_weights(load_run_weights(moved), straight["weights"])
    assert [r["step"] for r in metric_rows(moved)] == list(range(1, TOTAL_STEPS + 1))  # no row twice
    assert summary["train_seconds"] > 0


def test_train_seconds_sum_all_segments(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(run_dir), progress=False, stop_after_steps=6)
    first = ckpt.load_checkpoint(run_dir / ckpt.CHECKPOINT_FILE)[1]["state"]["train_seconds"]
    began = time.perf_counter()
    summary = train(tiny(run_dir), progress=False, evaluate_at_end=False)
    second_wall = time.perf_counter() - began
    assert first > 0 and first < summary["train_seconds"] <= first + second_wall


def test_every_segment_records_its_environment(tmp_path):
    """A fresh start and each resume append what they ran on (a re-created run that differs in its 7th digit
    can then be traced to other CPU kernels, threads or code); evaluation of the finished run adds nothing."""
    run_dir = tmp_path / "run"
    train(tiny(run_dir), progress=False, stop_after_steps=2)
    train(tiny(run_dir), progress=False, stop_after_steps=4)
    train(tiny(run_dir), progress=False)
    segments = read_segments(run_dir)
    assert [row["from_step"] for row in segments] == [0, 2, 4]
    for row in segments:
        assert row["torch"] == torch.__version__ and row["torch_threads"] == torch.get_num_threads()
        assert row["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and row["processes"] == 1
        assert row["code_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", row["code_commit"])
        assert Path(row["code_path"]) == Path(latentreason.__file__).resolve().parent


def test_code_commit_names_the_checkout_and_whether_it_was_edited(tmp_path):
    assert code_commit(tmp_path) is None  # not a git checkout: an installed package
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "a.py"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "a"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert code_commit(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("not code\n")
    assert code_commit(tmp_path) == head  # untracked files are not an edit of the code
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_commit(tmp_path) == head + "-dirty"


def test_cpu_model_name_reads_cpuinfo_when_platform_only_names_the_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr(environment.platform, "processor", lambda: "")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    assert cpu_model_name(cpuinfo) == "AMD EPYC 9R14"
    assert cpu_model_name(tmp_path / "missing") is None  # not Linux: nothing to read, nothing invented
    monkeypatch.setattr(environment.platform, "processor", lambda: "Intel64 Family 6 Model 143 Stepping 8, GenuineIntel")
    assert cpu_model_name(cpuinfo) == "Intel64 Family 6 Model 143 Stepping 8, GenuineIntel"


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "eval.json", "tokenizer", "model.safetensors"])
def test_eval_name_never_writes_over_the_runs_own_files(straight, tmp_path, capsys, name):
    run_dir = tmp_path / "run"
    shutil.copytree(straight["dir"], run_dir)
    before = {p: p.read_bytes() for p in (run_dir / "eval.json", run_dir / "predictions.jsonl")}
    assert main(["--quiet", "eval", str(run_dir), "--name", name]) == 2
    assert "eval --name" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


# ----------------------------------------------------------------------------- full disk, stale temp files


def test_disk_full_one_line_partial_file_removed_last_checkpoint_kept(tmp_path, monkeypatch, capsys):
    real = ckpt.save_file
    writes = {"n": 0}

    def full_disk(tensors, filename, metadata=None):
        writes["n"] += 1
        if writes["n"] < 3:
            return real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\0" * 100)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    run_dir = tmp_path / "run"
    assert main(["--quiet", "train", *TINY, f"out_dir={run_dir}", "train.checkpoint_every=1"]) == 4
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()] and "no space left on device" in err
    assert "Traceback" not in err
    assert not list(run_dir.glob("*.tmp*"))
    assert ckpt.load_checkpoint(run_dir / ckpt.CHECKPOINT_FILE)[1]["state"]["global_step"] == 2
    with pytest.raises(DiskFull):
        ckpt.atomic_write(tmp_path / "x.json", lambda tmp: (tmp.write_text("part"), full_disk({}, tmp)))
    assert not (tmp_path / "x.json").exists() and not list(tmp_path.glob("x.json.tmp*"))


def test_temp_files_of_a_killed_writer_are_removed_at_next_start(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(run_dir), progress=False, stop_after_steps=3)
    for name in ("checkpoint.safetensors.tmp4242", "model.safetensors.tmp77", "metrics.jsonl.tmp5"):
        (run_dir / name).write_bytes(b"partial")
    train(tiny(run_dir), progress=False, stop_after_steps=4)
    assert not list(run_dir.glob("*.tmp*"))


# ----------------------------------------------------------------------------- corrupt files, safetensors


CORRUPTIONS = {
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"\x80\x02not a tensor file at all" * 10,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "checkpoint.safetensors"])
def test_corrupt_weights_and_checkpoints_name_the_file_and_what_to_delete(tmp_path, name, corruption):
    weights = {"model.a": torch.randn(64, 32), "model.b": torch.randn(32)}
    path = tmp_path / name
    if name == "model.pt":
        torch.save(weights, path)
    elif name == "model.safetensors":
        ckpt.save_weights(weights, path)
    else:
        ckpt.save_checkpoint(path, weights, {"state": {"global_step": 1}})
    path.write_bytes(CORRUPTIONS[corruption](path.read_bytes()))
    with pytest.raises(UserInputError) as error:
        if name.startswith("checkpoint"):
            ckpt.load_checkpoint(path)
        else:
            ckpt.read_weights(path, remedy=f"delete {tmp_path} and train that run again")
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert (f"rm {path}" if name.startswith("checkpoint") else f"delete {tmp_path}") in message


def test_corrupt_model_and_checkpoint_through_the_cli(straight, tmp_path, capsys):
    finished = tmp_path / "finished"
    shutil.copytree(straight["dir"], finished)
    (finished / ckpt.WEIGHTS_FILE).write_bytes((finished / ckpt.WEIGHTS_FILE).read_bytes()[:1000])
    assert main(["--quiet", "eval", str(finished)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {finished / ckpt.WEIGHTS_FILE}: ") and "delete" in err and "\n" not in err
    unfinished = tmp_path / "unfinished"
    train(tiny(unfinished), progress=False, stop_after_steps=3)
    (unfinished / ckpt.CHECKPOINT_FILE).write_bytes(b"")
    assert main(["--quiet", "train", *TINY, f"out_dir={unfinished}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {unfinished / ckpt.CHECKPOINT_FILE}: ") and f"rm {unfinished / ckpt.CHECKPOINT_FILE}" in err


def test_runs_are_safetensors_and_old_pickled_runs_still_load(straight, tmp_path):
    from safetensors import safe_open

    run_dir = tmp_path / "run"
    train(tiny(run_dir), progress=False, stop_after_steps=3)
    with safe_open(str(run_dir / ckpt.CHECKPOINT_FILE), framework="pt") as handle:
        rest = json.loads(handle.metadata()["latentreason"])  # loop state, RNG, optimizer settings: JSON
    assert rest["state"]["global_step"] == 3
    # An older version's checkpoint.pt (a torch pickle with numpy's RNG state) resumes, read with weights_only.
    weights, saved = ckpt.load_checkpoint(run_dir / ckpt.CHECKPOINT_FILE)
    torch.save({"method": weights, **saved}, run_dir / ckpt.LEGACY_CHECKPOINT_FILE)
    (run_dir / ckpt.CHECKPOINT_FILE).unlink()
    train(tiny(run_dir), progress=False)
    assert not (run_dir / ckpt.LEGACY_CHECKPOINT_FILE).exists() and not (run_dir / "model.pt").exists()
    assert_same_weights(load_run_weights(run_dir), straight["weights"])
    # An older finished run with model.pt evaluates like the safetensors one.
    old = tmp_path / "old"
    shutil.copytree(straight["dir"], old)
    torch.save(straight["weights"], old / "model.pt")
    (old / ckpt.WEIGHTS_FILE).unlink()
    assert evaluate_run(old, progress=False)["accuracy"] == straight["summary"]["accuracy"]


def test_every_torch_load_in_the_package_is_weights_only():
    package = Path(__file__).resolve().parents[1] / "src" / "latentreason"
    calls = [(path.name, m.group(0)) for path in package.rglob("*.py")
             for m in re.finditer(r"torch\.load\([^)]*\)", path.read_text())]
    assert calls, "expected at least the legacy readers"
    assert all("weights_only=True" in call for _, call in calls), calls
