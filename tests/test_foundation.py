"""Foundation: configs, backbones, the training loop (learning, resume), evaluation and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import helpers
from latentreason.backbones import ModelDims, build_backbone, forward_flops, lm_forward, new_cache
from latentreason.checkpoint import load_run_weights
from latentreason.cli import main
from latentreason.config import MethodConfig, ModelConfig, RunConfig, load_config
from latentreason.errors import UserInputError
from latentreason.methods import build_method
from latentreason.methods.base import decode_flops
from latentreason.tasks import get_task
from latentreason.tokenization import encode_examples, example_texts
from latentreason.training import train


def tiny_run(tmp_path: Path, *overrides: str) -> RunConfig:
    return load_config(None, [
        f"out_dir={tmp_path / 'run'}", "task.name=countdown", "task.branching=3", "task.train_size=64",
        "task.eval_size=8", "train.batch_size=16", "train.epochs=2", "train.warmup_steps=2", "train.lr=3e-3",
        "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=300",
        "eval.max_new_tokens=6", "train.log_every=1", *overrides,
    ])


# ----------------------------------------------------------------------------- config


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: coconut\n  coconut:\n    thoughts_per_step: 2\ntrain:\n  lr: 0.01\n")
    cfg = load_config(path, ["train.lr=1e-4", "method.n_latents=6", "task.params={min_depth: 3}"])
    assert cfg.method.name == "coconut" and cfg.method.coconut.thoughts_per_step == 2
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.method.n_latents == 6
    assert cfg.task.params == {"min_depth": 3}


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=1"], "unknown config key"),
    (["train.epochs=many"], "expected int"),
    (["train"], "expected KEY=VALUE"),
])
def test_bad_config_is_a_clear_error(overrides, message):
    with pytest.raises(UserInputError, match=message):
        load_config(None, overrides)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(UserInputError, match=r"bad\.yaml:\d+"):
        load_config(path)


# ----------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", ["gpt2-tiny", "qwen3-tiny", "llama-tiny"])
def test_tiny_backbones_cached_forward_equals_full(name):
    backbone = build_backbone(ModelConfig(backbone=name, n_layer=2, n_embd=32, n_head=2), corpus=["Every wumpus is a lempus. 12 + 3 = 15"] * 4)
    model = backbone.model.eval()
    ids = torch.randint(5, len(backbone.tokenizer), (2, 7))
    embeds = model.get_input_embeddings()(ids)
    mask = torch.ones(2, 7, dtype=torch.long)
    positions = torch.arange(7).expand(2, 7)
    full = lm_forward(model, embeds, mask, positions).logits
    cache = new_cache(model)
    first = lm_forward(model, embeds[:, :4], mask[:, :4], positions[:, :4], cache).logits
    rest = lm_forward(model, embeds[:, 4:], mask, positions[:, 4:], cache).logits
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-5)
    for token in ("<bot>", "<eot>", "<latent>"):
        assert backbone.tokenizer.convert_tokens_to_ids(token) < model.get_input_embeddings().weight.shape[0]


def test_unknown_backbone():
    with pytest.raises(UserInputError, match="unknown backbone"):
        build_backbone(ModelConfig(backbone="gpt5-huge"))


@pytest.mark.slow
def test_smollm2_loads_offline_from_gguf():
    pytest.importorskip("gguf")
    backbone = build_backbone(ModelConfig(backbone="smollm2-135m"))
    ids = backbone.tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = backbone.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in backbone.tokenizer.decode(out[0])


def test_flops_accounting_is_consistent():
    backbone = build_backbone(ModelConfig(n_layer=2, n_embd=32, n_head=2), corpus=["a b c d"] * 4)
    dims = ModelDims.of(backbone.model)
    # decoding n tokens one at a time costs the same as n single-token forwards with a growing context
    by_hand = sum(forward_flops(dims, 1, 10 + t, 1) for t in range(5))
    assert decode_flops(dims, 10, 5) == pytest.approx(by_hand)


# ----------------------------------------------------------------------------- training loop


def trainable_snapshot(method):
    return {n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad}


def test_cot_training_lowers_loss_and_changes_every_parameter(tmp_path):
    cfg = tiny_run(tmp_path, "train.epochs=6")
    from latentreason.training import build_run

    before = trainable_snapshot(build_run(cfg).method)  # same seed -> same init as inside train()
    summary = train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert losses[-1] < 0.7 * losses[0]
    after = load_run_weights(tmp_path / "run")
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n])]
    assert not unchanged, f"parameters never updated: {unchanged}"
    for key in ("accuracy", "accuracy_ci95", "forward_passes_per_answer", "flops_per_answer", "seconds_per_answer"):
        assert key in summary
    assert (tmp_path / "run" / "eval.json").exists() and (tmp_path / "run" / "config.yaml").exists()


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    helpers.resume_matches_uninterrupted(tiny_run(tmp_path / "a", "train.epochs=3"), tiny_run(tmp_path / "b", "train.epochs=3"))


def test_finished_run_is_never_overwritten(tmp_path):
    cfg = tiny_run(tmp_path, "train.max_steps=1")
    train(cfg, progress=False)
    stamp = (tmp_path / "run" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(UserInputError, match="already finished"):
        train(cfg, progress=False)
    assert (tmp_path / "run" / "model.safetensors").stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------- evaluation


def test_batched_cached_generation_equals_batch1_uncached():
    task = get_task("countdown")
    examples = task.generate(6, seed=3, branching=3)
    backbone = build_backbone(ModelConfig(n_layer=2, n_embd=32, n_head=2), corpus=example_texts(examples))
    method = build_method(MethodConfig(name="cot"), backbone).eval()
    encoded = encode_examples(backbone.tokenizer, examples)
    batched = method.generate(encoded, max_new_tokens=8).token_ids
    for enc, got in zip(encoded, batched):
        ids = torch.tensor([enc.question_ids])
        generated: list[int] = []
        for _ in range(8):  # recompute the whole prefix every token, batch 1: the slow reference
            logits = backbone.model(input_ids=ids).logits[0, -1]
            token = int(logits.argmax())
            if token == backbone.tokenizer.eos_token_id:
                break
            generated.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
        assert got == generated


def test_left_padding_does_not_change_answers():
    task = get_task("countdown")
    examples = task.generate(4, seed=5, branching=4)
    backbone = build_backbone(ModelConfig(n_layer=2, n_embd=32, n_head=2, backbone="qwen3-tiny"), corpus=example_texts(examples))
    method = build_method(MethodConfig(name="no_cot"), backbone).eval()
    encoded = encode_examples(backbone.tokenizer, examples)
    # a short question padded next to a long one decodes as it does alone
    encoded[0].question_ids = encoded[0].question_ids[:5]
    together = method.generate(encoded, 6).token_ids
    alone = [method.generate([e], 6).token_ids[0] for e in encoded]
    assert together == alone


# ----------------------------------------------------------------------------- CLI errors


def run_cli(*argv: str, capsys=None) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err if capsys else ""
    return code, err


@pytest.mark.parametrize("override, message", [
    ("task.name=sudoku", "unknown task 'sudoku'"),
    ("model.backbone=gpt5", "unknown backbone 'gpt5'"),
    ("method.name=telepathy", "unknown method 'telepathy'"),
])
def test_cli_unknown_names_exit_2(tmp_path, capsys, override, message):
    code, err = run_cli("--quiet", "train", f"out_dir={tmp_path / 'r'}", "task.train_size=8", "task.eval_size=2", override, capsys=capsys)
    assert code == 2 and message in err and err.startswith("error:")


def test_cli_malformed_json_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "q", "answer": "a",\n  "steps": [}]\n')
    code, err = run_cli("--quiet", "train", f"out_dir={tmp_path / 'r'}", "task.name=prosqa", f"task.train_path={bad}", capsys=capsys)
    assert code == 2 and "bad.json" in err and ":2" in err
    assert not (tmp_path / "r").exists()


def test_cli_missing_field_and_empty_dataset(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n" + json.dumps({"question": "no answer"}) + "\n")
    code, err = run_cli("data", "check", "--task", "gsm8k", "--path", str(missing), capsys=capsys)
    assert code == 2 and "missing.jsonl:2" in err and "answer" in err
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    code, err = run_cli("data", "check", "--task", "prosqa", "--path", str(empty), capsys=capsys)
    assert code == 2 and "empty" in err


def test_cli_data_generate_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cd.json"
    assert run_cli("data", "generate", "--task", "countdown", "--n", "5", "--out", str(out), "branching=3", capsys=capsys)[0] == 0
    content = out.read_text()
    assert len(json.loads(content)) == 5
    code, err = run_cli("data", "generate", "--task", "countdown", "--n", "7", "--out", str(out), capsys=capsys)
    assert code == 2 and "exists" in err and out.read_text() == content


def test_quickstart_trains_both_baselines_and_prints_a_table(tmp_path, capsys):
    from latentreason.quickstart import quickstart

    tiny = {"model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "tokenizer_vocab_size": 300},
            "task": {"train_size": 32, "eval_size": 4}, "train": {"epochs": 1, "batch_size": 16, "warmup_steps": 1},
            "eval": {"max_new_tokens": 4}}
    table = quickstart(tmp_path / "qs", progress=False, base_overrides=tiny, with_cot=True)
    assert "| cot |" in table and "| no_cot |" in table
    assert (tmp_path / "qs" / "quickstart.md").read_text().strip() == table
    for method in ("cot", "no_cot"):
        assert json.loads((tmp_path / "qs" / "runs" / method / "eval.json").read_text())["n"] == 4


def test_quickstart_trains_its_two_cells_side_by_side_in_two_workers(tmp_path, monkeypatch):
    """workers=2: a helper process (`latentreason sweep`) claims one cell while this process trains the other."""
    from latentreason.quickstart import quickstart

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    tiny = {"model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "tokenizer_vocab_size": 300},
            "task": {"train_size": 32, "eval_size": 4}, "train": {"epochs": 1, "batch_size": 16, "warmup_steps": 1},
            "eval": {"max_new_tokens": 4}}
    table = quickstart(tmp_path / "qs", progress=False, base_overrides=tiny, workers=2, with_cot=True)
    assert "| cot |" in table and "| no_cot |" in table
    assert json.loads((tmp_path / "qs" / "timing.json").read_text())["workers"] == 2
    assert all((tmp_path / "qs" / "runs" / m / "done.json").exists() for m in ("cot", "no_cot"))
