"""`latentreason export`: a finished run as a Hugging Face directory that loads back to the same method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from latentreason.cli import main
from latentreason.config import load_config
from latentreason.export import MANIFEST, METHOD_WEIGHTS, load_exported
from latentreason.finished_run import load_finished_run
from latentreason.training import train

TINY = ["task.name=countdown", "task.branching=3", "task.train_size=32", "task.eval_size=6", "train.batch_size=8",
        "train.max_steps=3", "train.warmup_steps=1", "train.lr=1e-2", "train.trackers=none", "model.n_layer=1",
        "model.n_embd=16", "model.n_head=2", "model.tokenizer_vocab_size=300", "eval.max_new_tokens=4"]

METHODS = {
    "no_cot": ["method.name=no_cot"],
    "soft_tokens": ["method.name=soft_tokens", "method.n_latents=2"],
    "coprocessor_h2": ["method.name=coprocessor", "method.n_latents=2", "method.coprocessor.variant=h2"],
    "looped": ["method.name=looped", "method.looped.loops=2"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One finished tiny run per method (trained a few steps, so no weight is at its initial value)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATENTREASON_DATA_CACHE", str(tmp_path_factory.mktemp("cache")))
        for name, overrides in METHODS.items():
            train(load_config(None, [*TINY, *overrides, f"out_dir={root / name}"]), progress=False)
    return {name: root / name for name in METHODS}


@pytest.mark.parametrize("name", list(METHODS))
def test_export_round_trip_gives_identical_logits_and_generations(tmp_path, capsys, runs, name):
    out = tmp_path / "export"
    assert main(["--quiet", "export", str(runs[name]), str(out)]) == 0
    assert f"exported {runs[name]} to {out}" in capsys.readouterr().out
    original = load_finished_run(runs[name], device="cpu")
    examples = original.eval_set

    # The backbone alone is a plain HF model + tokenizer (safetensors), same tokens and same logits.
    assert (out / "model.safetensors").exists() and (out / "config.json").exists() and not list(out.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    questions = [e.example.question + "\n" for e in examples]
    assert [tokenizer(q)["input_ids"] for q in questions] == [original.method.tokenizer(q)["input_ids"] for q in questions]
    backbone = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor([examples[0].question_ids + examples[0].answer_ids])
    with torch.no_grad():
        assert torch.equal(backbone(input_ids=ids).logits, original.method.model(input_ids=ids).logits)

    # The whole method: from_pretrained + the method class, every weight equal, same loss and generations.
    method = load_exported(out, device="cpu")
    assert type(method) is type(original.method)
    theirs, ours = original.method.state_dict(), method.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    with torch.no_grad():
        batch = original.method.collate(examples)
        assert torch.equal(method(method.collate(examples)), original.method(batch))
    assert method.generate(examples, 4).token_ids == original.method.generate(examples, 4).token_ids


def test_export_layout_and_model_card(tmp_path, runs):
    out = tmp_path / "export"
    assert main(["--quiet", "export", str(runs["coprocessor_h2"]), str(out)]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["method"] == "coprocessor" and manifest["models"] == ["coprocessor"]
    assert (out / "coprocessor/model.safetensors").exists()  # the Coprocessor is an HF model of its own
    assert set(load_file(str(out / METHOD_WEIGHTS))) == {"soft_tokens"}
    assert (out / "config.yaml").read_text() == (runs["coprocessor_h2"] / "config.yaml").read_text()
    assert (out / "environment.jsonl").read_text() == (runs["coprocessor_h2"] / "environment.jsonl").read_text()
    evaluation = json.loads((runs["coprocessor_h2"] / "eval.json").read_text())
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "# coprocessor_h2: coprocessor (h2) on countdown, N_L = 2" in card and "Base + Coprocessor (Liu et al. 2024)" in card
    assert f"| accuracy | {evaluation['accuracy']:.4g} |" in card and f"| n | {evaluation['n']} |" in card
    assert "variant: h2" in card  # the full config


def test_export_refuses_a_non_empty_directory_and_an_unfinished_run(tmp_path, capsys, runs):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/file").write_text("x")
    assert main(["export", str(runs["no_cot"]), str(tmp_path / "taken")]) == 2
    assert "export directory exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "not a run directory" in capsys.readouterr().err
