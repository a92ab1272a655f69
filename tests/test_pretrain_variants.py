"""Coprocessor pretraining for every variant (issue 13 item 2b): liu (latents as embeddings), h1 (latent K/V
appended to the Base's cache, Base frozen) and h2 (Base and Coprocessor both trained, three passes); the
batched loss against the per-point reference loop, what trains, and pretraining as a sweep cell that
fine-tuning cells start from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tiny_coprocessor
from latentreason.checkpoint import load_run_weights
from latentreason.config import load_config
from latentreason.errors import UserInputError
from latentreason.methods.coprocessor import Coprocessor
from latentreason.methods.coprocessor_pretrain import (
    no_latent_loss,
    pretrain_loss,
    pretrain_loss_sequential,
    sample_points,
)

VARIANTS = [("liu", {}), ("h1", {}), ("h2", {}), ("h2", {"injection": "kv"}), ("h2", {"lora_rank": 2})]
IDS = ["liu", "h1", "h2", "h2-kv", "h2-lora"]


def make(backbone: str, variant: str, n_latents: int = 2, **cc) -> Coprocessor:
    """A sharpened tiny method in eval mode (dropout is 0 anyway; see helpers.tiny_coprocessor)."""
    return tiny_coprocessor(backbone, variant, n_latents, **cc).eval()


def trainable(method: Coprocessor) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in method.named_parameters() if p.requires_grad}


def gradients(loss: torch.Tensor, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), grads)}


def assert_matches_sequential(method: Coprocessor, x: torch.Tensor, points: torch.Tensor, ahead: int, per_row: tuple[int, ...]) -> dict:
    """pretrain_loss at each block size equals the per-point definition, in value and in the gradient of every
    trainable parameter. Returns the reference gradients."""
    params = trainable(method)
    reference = pretrain_loss_sequential(method, x, points, ahead)
    want = gradients(reference, params)
    assert any(g.abs().sum() > 0 for g in want.values())
    for size in per_row:
        batched = pretrain_loss(method, x, points, ahead, groups_per_row=size)
        torch.testing.assert_close(batched, reference, atol=1e-5, rtol=1e-5)
        got = gradients(batched, params)
        for name in params:
            torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
    return want


@pytest.mark.parametrize("variant,cc", VARIANTS, ids=IDS)
@pytest.mark.parametrize("backbone,attention", [("gpt2-tiny", "sdpa"), ("llama-tiny", "eager")])
def test_batched_pretraining_equals_the_per_point_loop_in_loss_and_every_gradient(variant, cc, backbone, attention):
    """M = 3 points x N_A = 3 ahead tokens on 2 rows, in blocks of 1, 2 (padded) and 3 groups: the three batched
    passes give the per-point passes' loss and gradients, Base parameters included where the Base trains."""
    method = make(backbone, variant, **cc)
    for model in (method.model, method.coprocessor):
        model.config._attn_implementation = attention
    x = torch.randint(5, len(method.tokenizer), (2, 14), generator=torch.Generator().manual_seed(3))
    points = sample_points(2, 14, 3, 3, torch.Generator().manual_seed(0))
    assert points.min() == 1 or len(set(points.flatten().tolist())) > 2  # several distinct prefixes
    want = assert_matches_sequential(method, x, points, 3, per_row=(1, 2, 3))
    base_grads = [g for name, g in want.items() if name.startswith("model.")]
    if variant == "h2":  # the Base trains: its gradient flows through pass 1's shared cache and pass 3
        assert base_grads and any(g.abs().sum() > 0 for g in base_grads)
    else:
        assert base_grads == []
    assert want["soft_tokens"].abs().sum() > 0
    # The latents matter: the loss differs from the Base's own prediction of the same tokens.
    assert abs(pretrain_loss(method, x, points, 3).item() - no_latent_loss(method, x, points, 3).item()) > 1e-3


def test_h2_without_latents_is_the_base_alone_on_the_ahead_tokens():
    """N_L = 0 (h2's no-latent control): nothing between the prefix and the re-fed token, so the loss is the
    Base's own next-token loss on the ahead tokens, batched and per point alike."""
    method = make("llama-tiny", "h2", n_latents=0)
    x = torch.randint(5, len(method.tokenizer), (2, 12), generator=torch.Generator().manual_seed(4))
    points = sample_points(2, 12, 3, 2, torch.Generator().manual_seed(1))
    assert_matches_sequential(method, x, points, 2, per_row=(2,))
    torch.testing.assert_close(pretrain_loss(method, x, points, 2), no_latent_loss(method, x, points, 2), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the real loop, for every variant

TINY = [
    "task.name=countdown", "task.branching=3", "task.train_size=16", "task.eval_size=4", "task.stream=false",
    "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=300",
    "method.name=coprocessor", "method.n_latents=2", "method.coprocessor.pretrain_points=2",
    "method.coprocessor.pretrain_ahead=3", "method.coprocessor.pretrain_seq_len=24",
    "train.batch_size=4", "train.max_steps=3", "train.warmup_steps=1", "train.lr=3e-3", "train.log_every=1",
    "eval.max_new_tokens=6",
]
"""A random Base (no train.init_from: one warning line) is enough to check what trains and what loads."""


@pytest.fixture(autouse=True)
def _no_learning_curve_plot(monkeypatch, one_thread):
    """Skip the end-of-run matplotlib plot (seconds per run on a busy CPU; nothing here looks at it)."""
    monkeypatch.setattr("latentreason.training.plot_learning_curves", lambda *args, **kwargs: None)


def tiny(out: Path, *overrides: str):
    return load_config(None, [*TINY, f"out_dir={out}", *overrides])


@pytest.mark.parametrize("variant,cc", [("liu", []), ("h1", []), ("h2", ["method.coprocessor.lora_rank=2"])], ids=["liu", "h1", "h2-lora"])
def test_a_pretraining_run_of_each_variant_trains_what_the_variant_trains_and_initialises_its_finetuning(tmp_path, variant, cc):
    """`train.objective=pretrain` through `train` (what a sweep cell calls): pretrain.json and no eval.json;
    the Base moves only for h2; a fine-tuning run of the same variant starts from exactly those weights."""
    from latentreason.pretraining import build_pretraining_run
    from latentreason.training import build_run, train

    cfg = tiny(tmp_path / "pre", f"method.coprocessor.variant={variant}", "train.objective=pretrain", *cc)
    summary = train(cfg, progress=False)
    run = tmp_path / "pre"
    assert (run / "pretrain.json").exists() and not (run / "eval.json").exists()
    assert summary["steps"] == 3 and summary["variant"] == variant
    start = build_pretraining_run(cfg, run).method.state_dict()
    final = load_run_weights(run)
    moved = {k for k in final if not torch.equal(final[k], start[k])}
    assert "soft_tokens" in moved and any(k.startswith("coprocessor.") for k in moved)
    base_moved = [k for k in moved if k.startswith("model.")]
    if variant == "h2":  # LoRA: only the adapters of the Base train
        assert base_moved and all(".lora_" in k for k in base_moved)
        assert summary["before"]["ppl_without_latents"] != summary["after"]["ppl_without_latents"]
    else:
        assert base_moved == []
        assert summary["before"]["ppl_without_latents"] == pytest.approx(summary["after"]["ppl_without_latents"])
    finetune = build_run(tiny(tmp_path / "ft", f"method.coprocessor.variant={variant}", f"train.init_from={run}", *cc)).method
    state = finetune.state_dict()
    assert state.keys() == final.keys()
    assert all(torch.equal(state[k], v) for k, v in final.items())


def test_pretraining_config_is_checked_when_it_loads(tmp_path):
    with pytest.raises(UserInputError, match="method.name=coprocessor"):
        tiny(tmp_path / "a", "method.name=soft_tokens", "train.objective=pretrain")
    with pytest.raises(UserInputError, match="train.eval_every"):
        tiny(tmp_path / "b", "train.objective=pretrain", "train.eval_every=2")
    with pytest.raises(UserInputError, match="unknown objective"):
        tiny(tmp_path / "c", "train.objective=pretraining")
    with pytest.raises(UserInputError, match="curriculum"):
        tiny(tmp_path / "d", "train.objective=pretrain", "method.curriculum.enabled=true")


# ----------------------------------------------------------------------------- sweep cells

EXAMPLE_SWEEP = Path(__file__).resolve().parents[1] / "configs" / "pretrain_then_finetune_sweep.yaml"


def test_example_sweep_resolves_each_finetuning_cell_to_its_own_variants_pretraining_cell():
    """configs/pretrain_then_finetune_sweep.yaml: the pretraining cells start from the No-CoT cell, and each
    fine-tuning cell from the pretraining cell of its variant (the references skip each other's references), H2's
    N_L = 0 control too."""
    from latentreason.sweep import expand, read_sweep, resolve_cells

    sweep = read_sweep(EXAMPLE_SWEEP)
    resolved, invalid = resolve_cells(EXAMPLE_SWEEP, sweep, expand(sweep))
    assert invalid == {}
    starts = {name: Path(cfg.train.init_from).name if cfg.train.init_from else None for name, (cfg, _) in resolved.items()}
    objectives = {name: cfg.train.objective for name, (cfg, _) in resolved.items()}
    pretraining = sorted(name for name, objective in objectives.items() if objective == "pretrain")
    assert len(pretraining) == 3 and {starts[name] for name in pretraining} == {"no_cot_seed-0"}
    for variant, n_latents in (("liu", 2), ("h1", 2), ("h2", 2), ("h2", 0)):
        (finetune,) = [n for n, (cfg, _) in resolved.items() if cfg.train.objective == "task" and cfg.method.name == "coprocessor"
                       and cfg.method.coprocessor.variant == variant and cfg.method.n_latents == n_latents]
        start = resolved[starts[finetune]][0]
        assert start.train.objective == "pretrain" and start.method.coprocessor.variant == variant and start.method.n_latents == 2


TWO_CELLS = """
out_dir: {out}
base:
  model: {{backbone: gpt2-tiny, n_layer: 1, n_embd: 32, n_head: 2, tokenizer_vocab_size: 300}}
  task: {{name: countdown, branching: 3, train_size: 16, eval_size: 4, stream: false}}
  method: {{name: coprocessor, n_latents: 2, coprocessor: {{variant: h1, pretrain_points: 2, pretrain_ahead: 3, pretrain_seq_len: 24}}}}
  train: {{batch_size: 4, max_steps: 3, warmup_steps: 1, lr: 3.0e-3}}
  eval: {{batch_size: 4, max_new_tokens: 6}}
groups:
  - {{train.objective: [pretrain]}}
  - {{train.init_from: ["{{cell:train.objective=pretrain}}"]}}
"""


def test_two_cell_sweep_pretrains_h1_then_finetunes_from_it_and_reports_both(tmp_path, monkeypatch):
    """End to end: the pretraining cell trains first, the fine-tuning cell starts from its run dir; a re-run
    trains nothing; tables hold the fine-tuning cell only, the report lists the pretraining cell's perplexities."""
    import latentreason.training
    from latentreason.report import write_report
    from latentreason.results import collect, named_starts, pretraining_rows
    from latentreason.sweep import run_sweep

    path = tmp_path / "sweep.yaml"
    out = tmp_path / "sweep"
    path.write_text(TWO_CELLS.format(out=out))
    failures: list[str] = []
    rows = run_sweep(path, progress=False, poll_seconds=0.01, failures=failures)
    assert failures == []
    pre, fine = out / "runs" / "objective-pretrain", out / "runs" / "base"
    assert (pre / "pretrain.json").exists() and not (pre / "eval.json").exists()
    assert (fine / "eval.json").exists()
    assert load_config(str(fine / "config.yaml"), []).train.init_from == str(pre)
    pretrained, finetuned = load_run_weights(pre), load_run_weights(fine)
    assert all(torch.equal(finetuned[k], v) for k, v in pretrained.items() if k.startswith("model."))  # h1: the Base stays frozen
    assert any(not torch.equal(finetuned[k], pretrained[k]) for k in pretrained if k.startswith("coprocessor."))
    # Tables: the fine-tuning cell, its start named by what it is; the pretraining cell apart.
    assert [r["run"] for r in rows] == [r["run"] for r in collect(out)] == ["base"]
    assert named_starts(rows)[0]["train.init_from"] == "pretrained coprocessor-h1 M=2 N_A=3"
    (summary,) = pretraining_rows(out)
    assert summary["run"] == "objective-pretrain" and summary["steps"] == 3 and summary["before.ppl_with_latents"] > 0
    report = Path(write_report(out)).read_text()
    assert "## Coprocessor pretraining cells" in report and "pretrained coprocessor-h1 M=2 N_A=3" in report
    # A re-run reuses both finished cells.
    monkeypatch.setattr(latentreason.training, "train", lambda *a, **k: pytest.fail("a finished cell was trained again"))
    assert [r["run"] for r in run_sweep(path, progress=False, poll_seconds=0.01, failures=failures)] == ["base"]
    assert failures == []
