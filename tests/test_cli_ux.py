"""CLI rough edges from issue 16: fast errors before heavy imports, --quiet after the subcommand, a
`train --help` that lists what can be set, hub ids and local directories as backbones."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from latentreason import cli
from latentreason.backbone_names import PRETRAINED_ALIASES, TINY_BACKBONE_NAMES, backbone_kind
from latentreason.config import MethodName, ModelConfig, RunConfig, TaskName, load_config
from latentreason.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]

# Runs `cli.main(argv)` in a fresh interpreter and reports the exit code and whether torch/transformers got
# imported: the point of these errors is that they come before the 10+ s of heavy imports.
PROBE = """
import json, sys
from latentreason.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def run_cli_probe(args: list[str], cwd: Path, env: dict | None = None) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "train.lrr=1"], "unknown config key"),
    (["train", "model.backbone=./no/such/dir"], "no such local directory"),
    (["train", "model.backbone=not-cached-model-xyz"], "HF_HUB_OFFLINE is set"),
    (["train", "task.train_path=missing.json"], "missing.json"),
    (["train", "train.init_from=runs/never_trained"], "no final weights"),
    (["pretrain-coprocessor", "method.name=coprocessor", "method.n_latents=2", "train.init_from=runs/never_trained"], "no final weights"),
    (["eval", "runs/never_trained"], "not a run directory"),
    (["analyze", "runs/never_trained"], "not a run directory"),
    (["sweep", "no_such_sweep.yaml"], "config file not found"),
])
def test_bad_input_fails_before_torch_is_imported(tmp_path, args, message):
    outcome, stderr = run_cli_probe(args, cwd=tmp_path)
    assert outcome["code"] == 2, stderr
    assert message in stderr and stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert outcome["heavy"] == [], f"imported {outcome['heavy']} before reporting bad input"


@pytest.mark.parametrize("args", [["train", "train.init_from=runs/finished"], ["eval", "runs/finished"]])
def test_a_finished_run_without_weights_says_how_to_recreate_them(tmp_path, args):
    # results/ commits a run's config, metrics and eval but never its weights: in a fresh clone a later run that
    # starts from it (or an eval of it) must say how to get them back, not ask whether it finished.
    run = tmp_path / "runs" / "finished"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: {name: cot}\n")
    (run / "done.json").write_text("{}")
    outcome, stderr = run_cli_probe(args, cwd=tmp_path)
    assert outcome == {"code": 2, "heavy": []}, stderr
    assert "latentreason train runs/finished/config.yaml out_dir=NEW_DIR" in stderr and "did it finish" not in stderr


def test_recreating_missing_weights_names_the_host_they_were_trained_on(tmp_path):
    # The same config re-created on another kind of CPU or thread count is another draw, not the same weights
    # (session 36): the remedy says where the original ran, from its environment.jsonl, still without torch.
    run = tmp_path / "runs" / "finished"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: {name: cot}\n")
    (run / "done.json").write_text("{}")
    (run / "environment.jsonl").write_text('{"from_step": 0, "processor": "AMD EPYC", "torch_threads": 1}\n'
                                           '{"from_step": 51, "processor": "Intel(R) Xeon(R)", "torch_threads": 2}\n')
    outcome, stderr = run_cli_probe(["train", "train.init_from=runs/finished"], cwd=tmp_path)
    assert outcome == {"code": 2, "heavy": []}, stderr
    assert "trained on AMD EPYC with 1 torch thread(s)" in stderr and "another draw" in stderr
    assert "then Intel(R) Xeon(R) with 2 torch thread(s) from step 51" in stderr  # a run resumed elsewhere names both
    assert stderr.count("\n") == 1


def test_bad_data_file_fails_before_torch_is_imported(tmp_path):
    (tmp_path / "bad.json").write_text('[{"question": "q"}]')
    outcome, stderr = run_cli_probe(["train", "task.name=gsm8k", "task.train_path=bad.json"], cwd=tmp_path)
    assert outcome == {"code": 2, "heavy": []} and "bad.json" in stderr


def test_finished_run_is_reported_before_torch_is_imported(tmp_path):
    (tmp_path / "runs" / "done_run").mkdir(parents=True)
    (tmp_path / "runs" / "done_run" / "done.json").write_text("{}")
    outcome, stderr = run_cli_probe(["train", "out_dir=runs/done_run"], cwd=tmp_path)
    assert outcome == {"code": 2, "heavy": []} and "already finished" in stderr


@pytest.mark.parametrize("argv", [["--quiet", "train", "x=1"], ["train", "--quiet", "x=1"], ["train", "x=1", "--quiet"]])
def test_quiet_is_accepted_before_or_after_the_subcommand(argv):
    assert cli.build_parser().parse_args(argv).quiet is True


def test_quiet_defaults_to_false_for_every_subcommand():
    parser = cli.build_parser()
    assert parser.parse_args(["train"]).quiet is False
    assert parser.parse_args(["analyze", "r"]).quiet is False


def test_analyze_honours_quiet(tmp_path, monkeypatch):
    from latentreason.analysis import runs as experiments

    (tmp_path / "config.yaml").write_text("{}")
    (tmp_path / "model.pt").write_bytes(b"")
    calls = []
    monkeypatch.setattr(experiments, "analyze_run", lambda run_dir, overrides, progress=True: calls.append(progress))
    assert cli.main(["analyze", str(tmp_path), "--quiet"]) == 0
    assert cli.main(["analyze", str(tmp_path)]) == 0
    assert calls == [False, True]


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        keys += _leaf_keys(type(default), f"{prefix}{f.name}.") if dataclasses.is_dataclass(default) else [prefix + f.name]
    return keys


def test_train_help_lists_methods_tasks_backbones_and_every_config_key(capsys):
    from latentreason.backbones import known_backbones
    from latentreason.methods import METHODS
    from latentreason.tasks import TASKS

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for name in [*METHODS, *TASKS, *known_backbones(), "hub id"]:
        assert name in text
    for key in _leaf_keys(RunConfig):
        assert f"  {key} [" in text, key
    assert "Peak AdamW learning rate" in text  # the field docstrings come along


def test_light_name_lists_match_the_registries():
    """cli/config list these names without importing torch; they must equal the real registries."""
    from latentreason.backbones import PRETRAINED_ALIASES as aliases
    from latentreason.backbones import TINY_BACKBONES
    from latentreason.methods import METHODS
    from latentreason.tasks import TASKS

    assert set(TINY_BACKBONE_NAMES) == set(TINY_BACKBONES) and set(PRETRAINED_ALIASES) == set(aliases)
    assert set(typing.get_args(MethodName)) == set(METHODS) and set(typing.get_args(TaskName)) == set(TASKS)


@pytest.mark.parametrize("name, kind", [("gpt2-tiny", "tiny"), ("smollm2-135m", "alias"), ("gpt2", "hub"),
                                        ("HuggingFaceTB/SmolLM2-135M", "hub")])
def test_backbone_kind(name, kind):
    assert backbone_kind(name) == kind


def test_hub_id_without_slash_is_a_valid_config():
    assert load_config(None, ["model.backbone=gpt2"]).model.backbone == "gpt2"


@pytest.mark.parametrize("name, message", [("./absent", "no such local directory"), ("a/b/c", "no such local directory"),
                                           ("bad name!", "unknown backbone")])
def test_bad_backbone_names_are_clear_config_errors(name, message):
    with pytest.raises(UserInputError, match=message):
        load_config(None, [f"model.backbone={name}"])


def test_missing_local_dir_is_a_clear_error_not_repo_id_form(tmp_path):
    from latentreason.backbones import build_backbone

    with pytest.raises(UserInputError, match="no such local directory") as error:
        build_backbone(ModelConfig(backbone=str(tmp_path / "absent")))
    assert "Repo id" not in str(error.value)


def test_uncached_hub_id_offline_is_one_clear_error(monkeypatch):
    """build_backbone must not hand an unreachable hub to transformers (it retries for ~45 s)."""
    import huggingface_hub.constants as hub_constants

    from latentreason.backbones import build_backbone

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserInputError, match="unknown backbone 'latentreason-test/absent'.*HF_HUB_OFFLINE"):
        build_backbone(ModelConfig(backbone="latentreason-test/absent"))


def test_local_hf_directory_loads_as_a_backbone(tmp_path):
    """The README's `model.backbone=PATH` recipe: any save_pretrained directory works offline."""
    from latentreason.backbones import build_backbone

    tiny = build_backbone(ModelConfig(n_layer=1, n_embd=32, n_head=2, tokenizer_vocab_size=200), corpus=["every wumpus is a lempus"] * 8)
    tiny.model.save_pretrained(tmp_path / "lm")
    tiny.tokenizer.save_pretrained(tmp_path / "lm")
    loaded = build_backbone(ModelConfig(backbone=str(tmp_path / "lm")))
    assert not loaded.from_scratch and len(loaded.tokenizer) == len(tiny.tokenizer)
    assert loaded.model.config.n_layer == 1


# ----------------------------------------------------------------------------- sweeps, quickstart, tables


def _fake_train(calls: list):
    """Stands in for training.train: records `progress` and writes what a finished run holds."""
    from latentreason.config import save_config

    def train(cfg, progress=True, **kwargs):
        calls.append(progress)
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        (out / "eval.json").write_text(json.dumps({"accuracy": 0.5, "accuracy_ci95": [0.3, 0.7], "n": 20, "chance_accuracy": 0.5}))
        (out / "done.json").write_text("{}")
        return {}
    return train


def test_sweep_says_loudly_that_it_reuses_finished_cells(tmp_path, monkeypatch, capsys):
    from latentreason import sweep as experiments
    from latentreason import training

    calls: list = []
    monkeypatch.setattr(training, "train", _fake_train(calls))
    (tmp_path / "s.yaml").write_text(f"out_dir: {tmp_path / 'sw'}\nbase: {{}}\ngrid: {{method.name: [cot, no_cot]}}\n")
    experiments.run_sweep(tmp_path / "s.yaml", progress=False)
    assert len(calls) == 2 and "already finished" not in capsys.readouterr().err
    experiments.run_sweep(tmp_path / "s.yaml", progress=False)
    err = capsys.readouterr().err
    assert len(calls) == 2 and "2 of 2 cells already finished" in err and "not retrained" in err and "out_dir=runs/sw" in err


def test_quickstart_shows_step_bars_inside_cells_and_reports_its_time(tmp_path, monkeypatch, capsys):
    from latentreason import quickstart as qs
    from latentreason import training

    calls: list = []
    monkeypatch.setattr(training, "train", _fake_train(calls))
    table = qs.quickstart(tmp_path / "qs", progress=True, with_cot=True)
    assert calls == [True, True]  # each cell's training loop gets its progress bar
    timing = json.loads((tmp_path / "qs" / "timing.json").read_text())
    assert timing["wall_seconds"] >= 0 and timing["threads"] >= 1
    assert "quickstart took" in capsys.readouterr().out
    assert "chance_accuracy" in table and "[0.30, 0.70]" in table  # per-run CI: an interval
    table = qs.quickstart(tmp_path / "qs2", progress=False)
    assert calls[2:] == [False]  # by default only the No-CoT cell
    assert "| no_cot |" in table and "| cot |" not in table


def test_quickstart_threads_respect_omp_and_leave_busy_cores_alone(monkeypatch):
    from latentreason.quickstart import choose_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert choose_threads() == 1  # busy 2-core machine: no oversubscription
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert choose_threads() == 4  # idle big machine: a few threads, not 16 for a tiny model


def test_sweep_tables_use_half_width_keys_and_name_chance_and_the_shortcut_ceiling():
    from latentreason.report import _results_table
    from latentreason.results import aggregate

    rows = [{"task.name": "prosqa", "method.name": "cot", "accuracy": acc, "accuracy_ci95": [acc - 0.1, acc + 0.1],
             "chance_accuracy": 0.5, "shortcut_ceiling": 0.62, "train.seed": seed} for seed, acc in enumerate([0.5, 0.7, 0.9])]
    [entry] = aggregate(rows)
    assert "accuracy_ci95" not in entry and entry["accuracy_ci95_half"] == pytest.approx(4.303 * 0.2 / 3 ** 0.5)
    assert entry["chance_accuracy"] == 0.5 and entry["shortcut_ceiling"] == pytest.approx(0.62)
    entry |= {"label": "CoT", "N_L": 0}
    text = _results_table([entry], set())
    assert "| chance | shortcut ceiling |" in text and "| 0.50 | 0.62 |" in text
