"""Run-start safety: `train.init_from` from an incompatible run is a one-line error; a random frozen Base warns."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from latentreason.cli import main
from latentreason.config import load_config
from latentreason.run_checks import warn_random_frozen_base
from latentreason.training import train

TINY = ["task.name=countdown", "task.branching=3", "task.train_size=32", "task.eval_size=4", "train.batch_size=16",
        "train.max_steps=1", "train.warmup_steps=1", "train.trackers=none", "model.n_layer=1", "model.n_embd=16",
        "model.n_head=2", "model.tokenizer_vocab_size=300", "eval.max_new_tokens=2"]


@pytest.fixture(scope="module")
def start_run(tmp_path_factory) -> Path:
    """One finished tiny No-CoT run every test starts from."""
    out = tmp_path_factory.mktemp("start") / "no_cot"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATENTREASON_DATA_CACHE", str(tmp_path_factory.mktemp("cache")))
        train(load_config(None, [*TINY, "method.name=no_cot", f"out_dir={out}"]), progress=False)
    return out


def run_cli(tmp_path: Path, *overrides: str) -> int:
    return main(["--quiet", "train", *TINY, f"out_dir={tmp_path / 'run'}", *overrides])


@pytest.mark.parametrize("override, message", [
    ("model.n_embd=32", "train.init_from was trained with model.n_embd=16, this run has model.n_embd=32"),
    ("model.n_layer=2", "train.init_from was trained with model.n_layer=1, this run has model.n_layer=2"),
    ("model.tokenizer_vocab_size=400", "model.tokenizer_vocab_size=300, this run has model.tokenizer_vocab_size=400"),
    ("model.backbone=qwen3-tiny", "model.backbone=gpt2-tiny, this run has model.backbone=qwen3-tiny"),
    ("task.name=prosqa", "trained on task countdown, this run is task prosqa: its tokenizer was trained on countdown text"),
])
def test_incompatible_start_run_is_one_line_error(tmp_path, capsys, start_run, override, message):
    code = run_cli(tmp_path, "method.name=no_cot", f"train.init_from={start_run}", override)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {start_run / 'config.yaml'}") and message in err
    assert not (tmp_path / "run").exists()  # failed before anything was written


def test_mismatched_weights_without_config_are_one_line_error(tmp_path, capsys, start_run):
    """A starting dir without config.yaml (e.g. copied weights only) is still caught, by the weight shapes."""
    bare = tmp_path / "bare"
    shutil.copytree(start_run, bare)
    (bare / "config.yaml").unlink()
    code = run_cli(tmp_path, "method.name=no_cot", f"train.init_from={bare}", "model.n_embd=32")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "weights do not fit this model:" in err and re.search(r"\(\d+, 16\) there and \(\d+, 32\) here", err)


def test_missing_start_run_is_one_line_error(tmp_path, capsys):
    code = run_cli(tmp_path, "method.name=no_cot", f"train.init_from={tmp_path / 'nowhere'}")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {tmp_path / 'nowhere'}") and "train.init_from" in err


def test_compatible_start_run_trains(tmp_path, capsys, start_run):
    assert run_cli(tmp_path, "method.name=soft_tokens", "method.n_latents=2", f"train.init_from={start_run}") == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["liu", "h1"])
def test_random_frozen_base_warns_once(tmp_path, capsys, variant):
    assert run_cli(tmp_path, "method.name=coprocessor", "method.n_latents=1", f"method.coprocessor.variant={variant}") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: method.coprocessor.variant={variant} freezes the Base, and this Base is a random gpt2-tiny "
                        "(no train.init_from): the Coprocessor learns to help a model that never learned the task; "
                        "set train.init_from to a finished no_cot run"]


def test_no_warning_when_the_base_is_trained_or_trainable(start_run, capsys):
    cases = [
        ["method.name=coprocessor", "method.n_latents=1", "method.coprocessor.variant=liu", f"train.init_from={start_run}"],  # a trained Base
        ["method.name=coprocessor", "method.n_latents=1", "method.coprocessor.variant=h2"],  # trained jointly
        ["method.name=coprocessor", "method.n_latents=1", "model.backbone=some/local-dir"],  # a pretrained backbone
        ["method.name=no_cot"],
    ]
    for overrides in cases:
        assert warn_random_frozen_base(load_config(None, overrides)) is None
    assert capsys.readouterr().err == ""


def test_a_no_latent_control_starts_from_a_run_with_latent_slots(tmp_path, monkeypatch) -> None:
    """H2's matched control (N_L = 0) must start from the same run as its latent cell, e.g. a pretraining cell with
    N_L soft tokens: it takes that run's Base and Coprocessor and leaves the slots it does not have."""
    from latentreason import checkpoint as ckpt
    from latentreason.training import build_run

    monkeypatch.setenv("LATENTREASON_DATA_CACHE", str(tmp_path / "cache"))
    h2 = ["method.name=coprocessor", "method.coprocessor.variant=h2"]
    start = tmp_path / "h2_nl2"
    train(load_config(None, [*TINY, *h2, "method.n_latents=2", f"out_dir={start}"]), progress=False)
    saved = ckpt.read_weights(ckpt.weights_path(start), remedy="")
    control = build_run(load_config(None, [*TINY, *h2, "method.n_latents=0", f"train.init_from={start}", f"out_dir={tmp_path / 'c'}"]))
    loaded = control.method.state_dict()
    assert tuple(saved["soft_tokens"].shape)[0] == 2 and tuple(loaded["soft_tokens"].shape)[0] == 0
    shared = [k for k in saved if k != "soft_tokens"]
    assert shared and all(k in loaded and loaded[k].equal(saved[k]) for k in shared)
    # Other shape mismatches are still refused: more slots here than there is not a control.
    with pytest.raises(Exception, match="weights do not fit this model: soft_tokens"):
        build_run(load_config(None, [*TINY, *h2, "method.n_latents=3", f"train.init_from={start}", f"out_dir={tmp_path / 'd'}"]))
