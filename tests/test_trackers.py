"""Experiment tracking goes through Accelerate's trackers (train.trackers), not a hand-written writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, register_tracker_class

from latentreason.config import load_config
from latentreason.errors import UserInputError
from latentreason.tracking import resolve_trackers, tracker_config
from latentreason.training import train


def tiny(tmp_path: Path, *overrides: str):
    return load_config(None, [
        f"out_dir={tmp_path / 'run'}", "task.name=countdown", "task.branching=3", "task.train_size=32",
        "task.eval_size=4", "train.batch_size=16", "train.epochs=2", "train.warmup_steps=1",
        "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.tokenizer_vocab_size=300",
        "eval.max_new_tokens=2", "train.log_every=1", *overrides,
    ])


class RecordingTracker(GeneralTracker):
    """A tracker registered with Accelerate that keeps what it is given (and when it is finished)."""

    name = "recording_test"
    requires_logging_directory = False
    instances: list["RecordingTracker"] = []

    def __init__(self, run_name: str, **kwargs):
        super().__init__()
        self.run_name, self.config, self.logged, self.finished = run_name, None, [], False
        RecordingTracker.instances.append(self)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict):
        self.config = values

    def log(self, values: dict, step: int | None = None, **kwargs):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


@pytest.fixture
def recording_tracker():
    register_tracker_class(RecordingTracker)
    RecordingTracker.instances.clear()
    yield RecordingTracker
    LOGGER_TYPE_TO_CLASS.pop(RecordingTracker.name, None)


def test_training_logs_through_an_accelerate_tracker(tmp_path, recording_tracker):
    train(tiny(tmp_path, f"train.trackers={recording_tracker.name}"), progress=False)
    [tracker] = recording_tracker.instances
    assert tracker.finished
    assert tracker.config["method.name"] == "cot" and tracker.config["train.trackers"] == recording_tracker.name
    assert all(isinstance(v, (bool, int, float, str)) for v in tracker.config.values())
    # The tracker sees the same steps and losses as metrics.jsonl (which stays the project's record).
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in tracker.logged] == [r["step"] for r in records] == [1, 2, 3, 4]
    assert [values["train/loss"] for _, values in tracker.logged] == [r["loss"] for r in records]


def test_tensorboard_by_default_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(tmp_path), progress=False)
    events = EventAccumulator(str(tmp_path / "run/tb")).Reload()
    losses = [event.value for event in events.Scalars("train/loss")]
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([r["loss"] for r in records])


def test_resolve_trackers(monkeypatch):
    monkeypatch.setattr("latentreason.tracking._installed", lambda name: name in ("tensorboard", "wandb"))
    assert resolve_trackers("auto") == ["tensorboard"]
    assert resolve_trackers("none") == [] and resolve_trackers("") == []
    assert resolve_trackers("wandb, tensorboard") == ["wandb", "tensorboard"]
    assert resolve_trackers(["wandb"], tensorboard=True) == ["wandb", "tensorboard"]
    assert resolve_trackers("none", tensorboard=True) == ["tensorboard"]
    with pytest.raises(UserInputError, match=r"'mlflow' is not installed \(pip install mlflow\)"):
        resolve_trackers("mlflow")
    with pytest.raises(UserInputError, match="unknown tracker 'tensorbord'"):
        resolve_trackers("tensorbord")
    monkeypatch.setattr("latentreason.tracking._installed", lambda name: False)
    assert resolve_trackers("auto") == []  # no tensorboard: no tracker, silently
    with pytest.raises(UserInputError, match="'tensorboard' is not installed"):
        resolve_trackers("auto", tensorboard=True)  # the old train.tensorboard=true still asks for it


def test_missing_tracker_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from latentreason.cli import main

    monkeypatch.setattr("latentreason.tracking._installed", lambda name: False)
    code = main(["train", f"out_dir={tmp_path / 'run'}", "train.trackers=wandb"])
    assert code == 2 and "error: train.trackers: 'wandb' is not installed (pip install wandb)" in capsys.readouterr().err
    assert not (tmp_path / "run/config.yaml").exists()  # nothing of the run was written


def test_tracker_config_is_flat_scalars():
    flat = tracker_config({"a": {"b": 1, "c": None, "d": {}, "e": [1, 2]}, "f": "x"})
    assert flat == {"a.b": 1, "a.c": "null", "a.d": "{}", "a.e": "[1, 2]", "f": "x"}
