"""benchmarks/gpu.sh in its dry mode (CPU, tiny sizes, a few steps): every command of the GPU check still runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils timeout")
def test_gpu_script_dry_mode_runs_every_step(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # Its own process group, so that a timeout also stops the benchmark the script is running.
    script = subprocess.Popen(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry", "--out", str(out)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = script.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(script.pid, signal.SIGKILL)
        script.communicate()
        raise
    assert script.returncode == 0, output[-3000:]
    assert not (out / "FAILED").exists()
    for name in ("train_loop", "latent_step", "coconut_vs_reference", "eval", "pretrain", "looped", "coconut_head",
                 "prefill_head"):
        payload = json.loads((out / f"{name}.json").read_text())
        assert payload["rows"], name
        assert (out / f"{name}.md").exists()
    for method in ("cot", "coconut"):
        records = [json.loads(line) for line in (out / f"run_{method}" / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == 2
    summary = (out / "SUMMARY.md").read_text()
    assert "MFU cot@k=2" in summary and "run coconut: 2 steps" in summary and "failed steps: none" in summary
    assert "skipped steps (budget): none" in summary and "identical answers: True" in summary
    assert "CUDA tests:" in summary and "skipped" in (out / "cuda_tests.log").read_text()  # no GPU here: collected, skipped
    commands = (out / "COMMAND.md").read_text()
    assert "bench_latent_step.py" in commands and "latentreason.cli train" in commands


def test_gpu_script_budget_skips_what_does_not_fit(tmp_path):
    """A budget too small for any step: every step is listed as skipped, none runs, and the exit status says so."""
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry", "--budget", "1", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    skipped = (out / "SKIPPED").read_text().split()
    assert skipped == ["cuda_tests", "latent_step", "train_loop", "run_cot", "run_coconut", "eval", "looped", "pretrain",
                       "coconut_vs_reference", "coconut_head", "prefill_head"]
    assert not (out / "FAILED").exists() and [p.name for p in out.glob("*.json")] == ["env.json"]
    assert "skipped steps (budget): cuda_tests, latent_step" in (out / "SUMMARY.md").read_text()
