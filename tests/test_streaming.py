"""Fresh-data streaming (task.stream): determinism by seed, batch-size independence, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import helpers
from latentreason.checkpoint import load_run_weights
from latentreason.config import TaskConfig, load_config
from latentreason.data import EVAL_SEED_OFFSET, ExampleStream, load_split, stream_chunk_seed, stream_enabled, vocabulary_texts
from latentreason.errors import UserInputError
from latentreason.training import build_run, epoch_examples, train


def questions(examples) -> list[str]:
    return [e.question for e in examples]


def stream_run(tmp_path: Path, *overrides: str):
    """A tiny Countdown run whose training data is the stream (chunks of 16, no worker process)."""
    return load_config(None, [
        f"out_dir={tmp_path / 'run'}", "task.name=countdown", "task.branching=3", "task.train_size=32",
        "task.eval_size=8", "task.stream=true", "task.stream_chunk_size=16", "task.stream_prefetch=false",
        "train.batch_size=8", "train.epochs=3", "train.warmup_steps=2", "train.lr=3e-3",
        "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=300",
        "eval.max_new_tokens=6", "train.log_every=1", *overrides,
    ])


def test_stream_is_a_function_of_the_seed_and_position_only():
    cfg = TaskConfig(name="prosqa", seed=3, stream_chunk_size=8, stream_prefetch=False)
    whole = questions(ExampleStream(cfg).examples(0, 40))
    assert whole == questions(ExampleStream(cfg).examples(0, 40))  # same seed, same examples
    assert questions(ExampleStream(cfg).examples(13, 20)) == whole[13:33]  # read from the middle (resume)
    pieces = []
    for start in range(0, 40, 5):  # another batch size: same sequence
        pieces += questions(ExampleStream(cfg).examples(start, 5))
    assert pieces == whole
    other = questions(ExampleStream(TaskConfig(name="prosqa", seed=4, stream_chunk_size=8, stream_prefetch=False)).examples(0, 40))
    assert not set(other) & set(whole)
    assert len(set(whole)) == len(whole)  # chunks are not copies of each other


def test_prefetch_worker_gives_the_same_stream(monkeypatch):
    monkeypatch.setenv("LATENTREASON_DATA_CACHE", "off")  # a cached chunk would be read in-line, not by the worker
    cfg = TaskConfig(name="countdown", branching=3, stream_chunk_size=16)
    prefetched = ExampleStream(cfg, prefetch=True)
    try:
        with_worker = questions(prefetched.examples(0, 50))
        assert prefetched._executor is not None  # chunks 1.. came from the worker
    finally:
        prefetched.close()
    assert with_worker == questions(ExampleStream(cfg, prefetch=False).examples(0, 50))


def test_stream_never_meets_the_eval_split():
    cfg = TaskConfig(name="prosqa", eval_size=200, stream_chunk_size=100, stream_prefetch=False)
    assert all(stream_chunk_seed(cfg.seed, k) != cfg.seed + EVAL_SEED_OFFSET for k in range(1000))
    eval_questions = set(questions(load_split(cfg, "test")))
    assert not eval_questions & set(questions(ExampleStream(cfg).examples(0, 1000)))


def test_stream_default_follows_the_training_source(tmp_path):
    assert stream_enabled(TaskConfig(name="prosqa"))
    assert not stream_enabled(TaskConfig(name="prosqa", stream=False))
    assert not stream_enabled(TaskConfig(name="gsm8k", train_path=str(tmp_path / "x.json")))
    with pytest.raises(UserInputError, match="task.stream=true needs a generated"):
        stream_enabled(TaskConfig(name="prosqa", train_path=str(tmp_path / "x.json"), stream=True))
    # The "train split" of a streamed run is the stream's first virtual epoch.
    cfg = TaskConfig(name="prosqa", train_size=30, stream_chunk_size=8, stream_prefetch=False)
    assert questions(load_split(cfg, "train")) == questions(ExampleStream(cfg).examples(0, 30))


def test_virtual_epochs_read_consecutive_stream_slices(tmp_path):
    run = build_run(stream_run(tmp_path))
    tc = run.config.train
    read = []
    for epoch in range(3):
        examples, order = epoch_examples(run, tc, epoch, 32)
        read += [examples[i].example.question for i in order]
    assert read == questions(ExampleStream(run.config.task).examples(0, 96))
    assert questions([e.example for e in run.train_set]) == read[:32]  # train_set = first virtual epoch


def test_stream_start_continues_the_stream_past_a_start_with_the_same_held_out_split(tmp_path):
    """A continuation (train.init_from) reads the problems after the ones its start trained on, while the held-out
    split, which task.seed fixes, stays the one the start was scored on."""
    start = build_run(stream_run(tmp_path / "start"))
    continued = build_run(stream_run(tmp_path / "continued", "task.stream_start=64"))
    read = []
    for epoch in range(2):
        examples, order = epoch_examples(continued, continued.config.train, epoch, 32)
        read += [examples[i].example.question for i in order]
    assert read == questions(ExampleStream(start.config.task).examples(64, 64))
    assert not set(read) & set(questions(ExampleStream(start.config.task).examples(0, 64)))
    assert [e.example.question for e in continued.eval_set] == [e.example.question for e in start.eval_set]


def test_batch_size_does_not_change_the_examples_seen(tmp_path):
    seen = {}
    for batch, accum in [(8, 1), (4, 2), (2, 4)]:
        run = build_run(stream_run(tmp_path / f"b{batch}", f"train.batch_size={batch}", f"train.grad_accum={accum}"))
        order_seen = []
        for epoch in range(2):
            examples, order = epoch_examples(run, run.config.train, epoch, 32)
            order_seen += [examples[i].example.question for i in order]
        seen[batch] = order_seen
    assert seen[8] == seen[4] == seen[2]


def test_kill_and_resume_under_streaming_equals_uninterrupted(tmp_path):
    losses = helpers.resume_matches_uninterrupted(stream_run(tmp_path / "a"), stream_run(tmp_path / "b"), stop_after=5)  # mid-epoch, mid-chunk
    assert len(losses) == 12  # 3 virtual epochs x 32 examples / 8 per step


def test_streaming_trains_on_fresh_examples_not_a_fixed_set(tmp_path):
    """Same config, stream on vs off: same number of steps, different data after the first epoch."""
    fresh = stream_run(tmp_path / "s")
    fixed = stream_run(tmp_path / "f", "task.stream=false")
    summary = train(fresh, progress=False, evaluate_at_end=False)
    assert summary["steps"] == 12 and summary["train_examples_seen"] == 96
    train(fixed, progress=False, evaluate_at_end=False)
    a = load_run_weights(tmp_path / "s" / "run")
    b = load_run_weights(tmp_path / "f" / "run")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_corpus_holds_every_prosqa_name():
    from latentreason.tasks.prosqa import CONCEPT_NAMES, PERSON_NAMES

    corpus = " ".join(vocabulary_texts("prosqa"))
    words = set(corpus.replace(".", " ").split())
    assert set(CONCEPT_NAMES) <= words and set(PERSON_NAMES) <= words
    numbers = set(" ".join(vocabulary_texts("countdown")).split())
    assert {str(n) for n in range(1000)} <= numbers


def test_coconut_curriculum_counts_virtual_epochs_and_resumes_exactly(tmp_path):
    coconut = ("method.name=coconut", "method.coconut.max_latent_stage=2", "method.coconut.epochs_per_stage=1")
    straight = stream_run(tmp_path / "a", *coconut)
    resumed = stream_run(tmp_path / "b", *coconut)
    train(straight, progress=False, evaluate_at_end=False)
    train(resumed, progress=False, stop_after_steps=6)  # inside virtual epoch 1 (stage 1)
    train(resumed, progress=False, evaluate_at_end=False)
    a = load_run_weights(tmp_path / "a" / "run")
    b = load_run_weights(tmp_path / "b" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(x)["epoch"] for x in open(tmp_path / "a" / "run" / "metrics.jsonl")]
    assert epochs == [0] * 4 + [1] * 4 + [2] * 4  # a virtual epoch = train_size stream examples = 4 steps


def test_a_dead_prefetch_worker_falls_back_to_inline_generation(capsys, monkeypatch):
    monkeypatch.setenv("LATENTREASON_DATA_CACHE", "off")
    cfg = TaskConfig(name="countdown", branching=3, stream_chunk_size=16)
    expected = questions(ExampleStream(cfg, prefetch=False).examples(0, 48))
    stream = ExampleStream(cfg, prefetch=True)
    head = stream.examples(0, 16)  # starts the worker on chunk 1
    for process in list(stream._executor._processes.values()):
        process.kill()
    rest = stream.examples(16, 32)
    stream.close()
    assert questions(head + rest) == expected
    assert "prefetch worker failed" in capsys.readouterr().err
