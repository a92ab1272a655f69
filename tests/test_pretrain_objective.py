"""Coprocessor pretraining as an objective of the one training loop (issue 12): it trains the Coprocessor,
resumes bit-exactly, computes the reference loss, and no module in methods/ imports the training loop."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from helpers import resume_matches_uninterrupted
from latentreason.backbones import build_backbone
from latentreason.checkpoint import load_run_weights
from latentreason.config import CoprocessorConfig, MethodConfig, ModelConfig, load_config
from latentreason.errors import UserInputError
from latentreason.methods import build_method
from latentreason.methods.coprocessor_pretrain import CoprocessorPretraining, pretrain_loss_sequential
from latentreason.pretraining import pretrain_coprocessor
from latentreason.tasks.base import Example

METHODS_DIR = Path(__file__).resolve().parents[1] / "src" / "latentreason" / "methods"

TINY = [
    "task.name=countdown", "task.branching=3", "task.train_size=16", "task.eval_size=4", "task.stream=false",
    "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=300",
    "method.name=coprocessor", "method.n_latents=2", "method.coprocessor.pretrain_points=2",
    "method.coprocessor.pretrain_ahead=3", "method.coprocessor.pretrain_seq_len=24",
    "train.batch_size=4", "train.epochs=2", "train.max_steps=8", "train.warmup_steps=1", "train.lr=3e-3", "train.log_every=1",
]
"""A random frozen Base (no train.init_from: one warning line) is enough to check the loop's mechanics."""


@pytest.fixture(autouse=True)
def _no_learning_curve_plot(monkeypatch, one_thread):
    """Skip the end-of-run matplotlib plot (seconds per run on a busy CPU; nothing here looks at it)."""
    monkeypatch.setattr("latentreason.training.plot_learning_curves", lambda *args, **kwargs: None)


def tiny(out: Path, *overrides: str):
    return load_config(None, [*TINY, f"out_dir={out}", *overrides])


def test_no_module_in_methods_imports_the_training_loop():
    """Methods are what the loop trains; the loop (and the commands built on it) import them, never the reverse."""
    offenders = []
    for path in sorted(METHODS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {name}" for name in names if name in ("latentreason.training", "latentreason.pretraining")
                          or name.startswith(("latentreason.training.", "latentreason.pretraining."))]
    assert len(list(METHODS_DIR.glob("*.py"))) >= 6  # the directory really was read
    assert offenders == []


def test_pretraining_trains_the_coprocessor_not_the_base(tmp_path, capsys):
    summary = pretrain_coprocessor(tiny(tmp_path / "pre"), progress=False)
    run = tmp_path / "pre"
    assert "freezes the Base" in capsys.readouterr().err  # the random-Base warning, as before
    for name in ("config.yaml", "tokenizer", "metrics.jsonl", "model.safetensors", "done.json", "pretrain.json"):
        assert (run / name).exists(), name
    assert not (run / "checkpoint.safetensors").exists()
    assert json.loads((run / "pretrain.json").read_text()) == json.loads((run / "done.json").read_text()) == summary
    assert summary["steps"] == 8 and summary["n_latents"] == 2 and summary["train_sequences"] >= 16
    assert set(summary["before"]) == set(summary["after"]) == {"ppl_with_latents", "ppl_without_latents"}
    assert summary["before"]["ppl_without_latents"] == pytest.approx(summary["after"]["ppl_without_latents"])  # Base frozen
    assert summary["before"]["ppl_with_latents"] != summary["after"]["ppl_with_latents"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))

    # Against the initial weights (same seed, same init_from: none): Coprocessor and soft tokens moved, Base did not.
    from latentreason.pretraining import build_pretraining_run

    start = build_pretraining_run(tiny(tmp_path / "pre"), run).method.state_dict()
    final = load_run_weights(run)
    assert final.keys() == start.keys()  # the Coprocessor method's own names: a fine-tuning run's init_from
    changed = {k for k in final if not torch.equal(final[k], start[k])}
    assert "soft_tokens" in changed and any(k.startswith("coprocessor.") for k in changed)
    assert not [k for k in changed if k.startswith("model.")]


def test_killed_and_resumed_pretraining_equals_uninterrupted(tmp_path):
    """Stopped at step 3 (mid-epoch, before the epoch-2 points are drawn) and resumed: bit-equal weights and
    losses; the perplexities before training come from the checkpoint, so they agree too."""
    losses = resume_matches_uninterrupted(tiny(tmp_path / "straight"), tiny(tmp_path / "resumed"), stop_after=3, train=pretrain_coprocessor)
    assert len(losses) == 8 and len(set(losses)) > 1
    done = [json.loads((tmp_path / name / "done.json").read_text()) for name in ("straight", "resumed")]
    assert done[0]["steps"] == done[1]["steps"] == 8


def test_pretraining_checkpoint_resumes_only_with_its_own_command(tmp_path):
    from latentreason.training import train

    cfg = tiny(tmp_path / "pre")
    assert pretrain_coprocessor(cfg, progress=False, stop_after_steps=2) == {"stopped_at_step": 2}
    with pytest.raises(UserInputError, match="started by `latentreason pretrain-coprocessor`"):
        train(cfg, progress=False)


def test_ctrl_c_during_pretraining_checkpoints_and_the_same_command_resumes(tmp_path, capsys):
    """The CLI command: SIGINT after step 2 finishes that step, checkpoints, exits 130 naming the command that
    resumes; running that command finishes the run with the weights of an uninterrupted one."""
    import os
    import signal

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from latentreason.cli import main

    argv = ["--quiet", "pretrain-coprocessor", *TINY, f"out_dir={tmp_path / 'run'}"]
    steps = {"n": 0}

    def interrupt_at_step_2(*args) -> None:
        steps["n"] += 1
        if steps["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    hook = register_optimizer_step_post_hook(interrupt_at_step_2)
    try:
        assert main(argv) == 130
    finally:
        hook.remove()
    err = capsys.readouterr().err
    assert "at step 2/8" in err and f"resume with: latentreason pretrain-coprocessor {tmp_path / 'run'}/config.yaml" in err
    assert (tmp_path / "run" / "checkpoint.safetensors").exists() and not (tmp_path / "run" / "done.json").exists()
    assert main(argv) == 0
    pretrain_coprocessor(tiny(tmp_path / "straight"), progress=False)
    a, b = load_run_weights(tmp_path / "run"), load_run_weights(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_run_initialises_a_finetuning_run(tmp_path):
    """model.safetensors of a pretraining run is a `train.init_from`: Coprocessor and soft tokens load as trained."""
    from latentreason.training import build_run

    pretrain_coprocessor(tiny(tmp_path / "pre", "train.max_steps=2"), progress=False, evaluate_at_end=False)
    pretrained = load_run_weights(tmp_path / "pre")
    h1 = build_run(tiny(tmp_path / "h1", "method.coprocessor.variant=h1", f"train.init_from={tmp_path / 'pre'}")).method
    state = h1.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pretrained.items())


def test_pretraining_refuses_other_methods_and_task_evaluation(tmp_path):
    with pytest.raises(UserInputError, match="train.objective.*method.name=coprocessor"):  # every variant pretrains (issue 13)
        tiny(tmp_path / "a", "method.name=no_cot", "train.objective=pretrain")  # refused when the config loads
    with pytest.raises(UserInputError, match="method.name=coprocessor"):
        pretrain_coprocessor(tiny(tmp_path / "b", "method.name=no_cot"), progress=False)
    with pytest.raises(UserInputError, match="train.eval_every"):
        pretrain_coprocessor(tiny(tmp_path / "c", "train.eval_every=2"), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- the objective itself

CORPUS = ["Every wumpus is a yumpus. Is Alex a yumpus?", "12 + 3 = 15", "### True", "### 15", "Alex is a wumpus."] * 4
EXAMPLES = [Example(f"{a} + {b} = ? Every wumpus is a yumpus.", [f"{a} + {b} = {a + b}"], str(a + b)) for a in range(6) for b in range(3)]


def objective(seed: int = 0) -> CoprocessorPretraining:
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(backbone="gpt2-tiny", n_layer=2, n_embd=32, n_head=2), corpus=CORPUS)
    with torch.no_grad():  # sharp logits, so equal losses mean something
        for p in backbone.model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    cc = CoprocessorConfig(variant="liu", pretrain_points=3, pretrain_ahead=3, pretrain_seq_len=20)
    method = build_method(MethodConfig(name="coprocessor", n_latents=2, coprocessor=cc), backbone)
    return CoprocessorPretraining(method, EXAMPLES, EXAMPLES[:6], seed=seed, batch_size=4)


def test_objective_loss_equals_the_sequential_reference_on_the_same_batch():
    pretraining = objective()
    pretraining.set_epoch(0)
    batch = pretraining.collate([0, 3, 1])
    assert batch["text_ids"].shape == (3, 20) and batch["points"].shape == (3, 3)
    assert torch.equal(batch["text_ids"][1], pretraining.train_text[3])
    loss = pretraining(batch)
    reference = pretrain_loss_sequential(pretraining.method, batch["text_ids"], batch["points"], 3)
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(value, pretraining.method.soft_tokens)[0] for value in (loss, reference)]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_points_depend_only_on_seed_and_epoch():
    """What makes resume exact: epoch e's points are a function of (train.seed, e), never of earlier batches."""
    a, b = objective(), objective()
    a.set_epoch(0)
    a.collate([0, 1])
    a.set_epoch(1)
    b.set_epoch(1)
    assert torch.equal(a.epoch_points, b.epoch_points)
    b.set_epoch(0)
    assert not torch.equal(a.epoch_points, b.epoch_points)
    other = objective(seed=1)
    other.set_epoch(1)
    assert not torch.equal(a.epoch_points, other.epoch_points)
    # Trainable: the Coprocessor and its soft tokens, never the frozen Base; nothing but weights in the state.
    trainable = {name for name, p in a.named_parameters() if p.requires_grad}
    assert "method.soft_tokens" in trainable and not [n for n in trainable if n.startswith("method.model.")]
    assert all(k.startswith("method.") for k in a.state_dict())


# ----------------------------------------------------------------------------- several processes

DDP_WORKER = '''
import json, sys
from pathlib import Path
import torch
import latentreason.pretraining as pretraining
from latentreason.config import load_config

out, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
built = {}
real_build = pretraining.build_pretraining_run

def capturing_build(cfg, out_dir=None):
    run = real_build(cfg, out_dir)
    built["method"] = run.method
    return run

pretraining.build_pretraining_run = capturing_build
summary = pretraining.pretrain_coprocessor(load_config(None, overrides), progress=False)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
final = {k: v.detach().cpu() for k, v in built["method"].state_dict().items()}
torch.save({"final": final, "steps": summary["steps"], "world": world}, out / f"rank{rank}.pt")
'''


@pytest.mark.slow
def test_pretraining_on_two_ddp_processes_keeps_ranks_identical(tmp_path):
    """Accelerate's DDP for free: 2 CPU processes x 2 micro-batches (no_sync), identical weights on both ranks,
    saved once by the main process, which alone writes pretrain.json."""
    import os
    import subprocess
    import sys

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    overrides = [*TINY, "task.train_size=32", "train.batch_size=2", "train.grad_accum=2", "train.max_steps=3", f"out_dir={tmp_path / 'pre'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker), str(tmp_path), json.dumps(overrides)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [3, 3]
    saved = load_run_weights(tmp_path / "pre")
    for key, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][key]), f"ranks disagree on {key}"
        assert torch.equal(saved[key], value), f"model.safetensors differs from the trained weights at {key}"
    assert json.loads((tmp_path / "pre" / "pretrain.json").read_text())["steps"] == 3
