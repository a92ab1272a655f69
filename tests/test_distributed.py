"""Multi-process training through Accelerate: 2 CPU processes (gloo, DDP) run latentreason.training.train
for cot, coconut (multi-pass) and coprocessor (frozen Base); afterwards both ranks must hold identical
parameters that differ from the initial ones.

The worker below is launched with torchrun; it wraps training.build_run to keep a handle on the method
that train() builds (the object DDP trains in place) and saves each rank's initial and final weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from latentreason.checkpoint import load_run_weights
from latentreason.environment import read_segments

COMMON = [
    "task.name=countdown", "task.branching=3", "task.train_size=48", "task.eval_size=4",
    "model.backbone=gpt2-tiny", "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=200",
    "train.batch_size=4", "train.grad_accum=2", "train.max_steps=3", "train.epochs=1", "train.warmup_steps=1",
    "train.lr=0.01", "train.log_every=1",
]
"""3 optimizer steps of 2 processes x 2 micro-batches x 4 examples (grad_accum exercises no_sync)."""

RUNS: dict[str, list[str]] = {
    "cot": ["method.name=cot"],
    "coconut": ["method.name=coconut", "method.n_latents=2", "method.coconut.fixed_latents=true"],
    "coprocessor": ["method.name=coprocessor", "method.n_latents=2", "method.coprocessor.variant=liu"],
}

WORKER = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    import torch
    import latentreason.training as training
    from latentreason.config import load_config

    out_root, runs = Path(sys.argv[1]), json.loads(sys.argv[2])
    rank = int(os.environ["RANK"])
    captured = {}
    build_run = training.build_run

    def capturing_build_run(cfg, out_dir=None):
        run = build_run(cfg, out_dir)
        captured["method"] = run.method
        captured["init"] = {k: v.detach().clone() for k, v in run.method.state_dict().items()}
        return run

    training.build_run = capturing_build_run
    for name, overrides in runs.items():
        captured.clear()
        cfg = load_config(None, overrides + [f"out_dir={out_root / name}"])
        summary = training.train(cfg, progress=False, evaluate_at_end=False)
        final = {k: v.detach().cpu() for k, v in captured["method"].state_dict().items()}
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        torch.save({"init": captured["init"], "final": final, "steps": summary["steps"], "world": world},
                   out_root / f"{name}.rank{rank}.pt")
''')


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_two_cpu_processes_keep_identical_parameters(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    runs = {name: COMMON + overrides for name, overrides in RUNS.items()}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    import json

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker), str(tmp_path), json.dumps(runs)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    for name in RUNS:
        ranks = [torch.load(tmp_path / f"{name}.rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert [r["world"] for r in ranks] == [2, 2], f"{name}: not a 2-process run"
        assert [r["steps"] for r in ranks] == [3, 3]
        init, final0, final1 = ranks[0]["init"], ranks[0]["final"], ranks[1]["final"]
        assert final0.keys() == final1.keys() == init.keys()
        for key in final0:
            assert torch.equal(final0[key], final1[key]), f"{name}: ranks disagree on {key}"
            assert torch.equal(ranks[0]["init"][key], ranks[1]["init"][key]), f"{name}: ranks started from different {key}"
        changed = [k for k in final0 if not torch.equal(final0[k], init[k])]
        assert changed, f"{name}: training changed no parameter"
        if name == "coprocessor":  # liu: the Base is frozen, only the Coprocessor and its soft tokens move
            assert all(not k.startswith("model.") for k in changed), f"frozen Base changed: {[k for k in changed if k.startswith('model.')][:3]}"
            assert "soft_tokens" in changed
        else:
            assert any(k.startswith("model.transformer.h.") for k in changed)
        # The main process wrote the final weights; they are the ranks' weights.
        saved = load_run_weights(tmp_path / name)
        for key in final0:
            assert torch.equal(saved[key], final0[key]), f"{name}: model.safetensors differs from the trained weights at {key}"
        # Only the main process records the segment, with both processes counted.
        assert [row["processes"] for row in read_segments(tmp_path / name)] == [2], name


def test_distributed_kwargs_ddp_options_and_fsdp2_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from latentreason.config import load_config
    from latentreason.training import distributed_kwargs

    cfg = load_config(None, ["train.find_unused_parameters=true"])
    kwargs = distributed_kwargs(cfg)
    assert kwargs["kwargs_handlers"][0].find_unused_parameters is True and "fsdp_plugin" not in kwargs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="fsdp"):
        assert "fsdp_plugin" not in distributed_kwargs(load_config(None, ["train.fsdp=true"]))

    # The plugin itself is plain configuration: build it as on a GPU machine and check resharding.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for method, reshard in [("coconut", False), ("coprocessor", False), ("looped", False), ("cot", True)]:
        latents = ["method.n_latents=4"] if method == "coprocessor" else []  # a coprocessor needs latents
        plugin = distributed_kwargs(load_config(None, ["train.fsdp=true", f"method.name={method}", *latents]))["fsdp_plugin"]
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is reshard, method
    forced = distributed_kwargs(load_config(None, ["train.fsdp=true", "method.name=coconut", "train.fsdp_reshard_after_forward=true"]))
    assert forced["fsdp_plugin"].reshard_after_forward is True
