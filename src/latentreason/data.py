"""Train/eval splits from a TaskConfig: a file when given, else the task's generator.

Generated splits are cached on disk (`LATENTREASON_DATA_CACHE`, default ~/.cache/latentreason/generated;
set it to `off` to disable): a sweep builds the same splits for every cell and again for every analysis,
and Countdown's exact solver takes about a minute per 2,000 examples at branching 6. The cache key covers
the task, split, size, seed, generator parameters and the source code of the task's module, so editing a
generator invalidates its entries.

With `task.stream` (the default for generated training data) training reads an endless `ExampleStream` of
fresh examples instead of cycling `train_size` of them; the "train split" is then the stream's first
`train_size` examples (one virtual epoch: the tokenizer's corpus and the sample scored for train accuracy).
The eval split always comes from its own seed (seed + EVAL_SEED_OFFSET), never from the stream.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from latentreason.config import TaskConfig
from latentreason.errors import UserInputError
from latentreason.tasks import Example, Task, get_task

EVAL_SEED_OFFSET = 1_000_003
"""Eval examples come from a different generator seed so they never coincide with training seeds."""

CACHE_ENV = "LATENTREASON_DATA_CACHE"


def cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "0", "false", "none"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "latentreason" / "generated"


def _cache_path(task: Task, split: str, size: int, seed: int, params: dict) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    source = Path(inspect.getsourcefile(type(task)) or "")
    code = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else ""
    key = json.dumps({"task": task.name, "split": split, "size": size, "seed": seed, "params": params, "code": code}, sort_keys=True, default=repr)
    return root / f"{task.name}-{split}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pkl"


def generate_cached(task: Task, split: str, size: int, seed: int, params: dict) -> list[Example]:
    """task.generate(size, seed, **params), read from / written to the on-disk cache when it is on."""
    path = _cache_path(task, split, size, seed, params)
    if path is not None and path.exists():
        try:
            with open(path, "rb") as handle:
                return pickle.load(handle)
        except Exception as error:  # a truncated or foreign file: regenerate and overwrite it
            print(f"warning: ignoring unreadable data cache {path} ({error})", file=sys.stderr)
    examples = task.generate(size, seed, **params)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            with open(partial, "wb") as handle:
                pickle.dump(examples, handle)
            os.replace(partial, path)  # atomic: concurrent workers never read half a file
        except OSError as error:  # a read-only home must not stop training
            print(f"warning: could not write the data cache {path} ({error})", file=sys.stderr)
    return examples


def generator_params(task: Task, cfg: TaskConfig, split: str) -> dict:
    """Keyword arguments for task.generate: the task's own params plus branching/split when it takes them."""
    # A task names its generator's parameters on `generate` or, when it streams, on `iter_generate`.
    accepted = {*inspect.signature(task.generate).parameters, *inspect.signature(task.iter_generate).parameters}
    params = dict(cfg.params)
    if "branching" in accepted:
        params.setdefault("branching", cfg.branching)
    if "split" in accepted:
        params.setdefault("split", split)
    return params


def load_split(cfg: TaskConfig, split: str) -> list[Example]:
    task = get_task(cfg.name)
    path = cfg.train_path if split == "train" else cfg.eval_path
    size = cfg.train_size if split == "train" else cfg.eval_size
    if cfg.max_reasoning_steps and not path:
        raise UserInputError(f"task.max_reasoning_steps={cfg.max_reasoning_steps} filters a loaded file, but the {split} split "
                             f"of task {cfg.name!r} is generated; set task.{'train' if split == 'train' else 'eval'}_path "
                             "(or limit the steps through the generator's task.params)")
    if path:
        examples = task.load(path)
        if cfg.max_reasoning_steps:
            examples = [e for e in examples if len(e.steps) <= cfg.max_reasoning_steps]
        if size:
            examples = examples[:size]
    elif split == "train" and stream_enabled(cfg):
        examples = ExampleStream(cfg, prefetch=False).examples(0, size)  # the stream's first virtual epoch
    else:
        seed = cfg.seed if split == "train" else cfg.seed + EVAL_SEED_OFFSET
        examples = generate_cached(task, split, size, seed, generator_params(task, cfg, split))
    if not examples:
        raise UserInputError(f"empty {split} dataset for task {cfg.name!r}", path=path)
    return examples


def load_splits(cfg: TaskConfig) -> tuple[list[Example], list[Example]]:
    return load_split(cfg, "train"), load_split(cfg, "test")


# ----------------------------------------------------------------------------- fresh-data streaming

STREAM_SPLIT = "train-stream"
"""Cache split name of the stream's chunks (distinct from the fixed `train` split's entries)."""


def stream_enabled(cfg: TaskConfig) -> bool:
    """`task.stream`, resolved: unset (None) means stream exactly when the train split is generated."""
    if cfg.stream is None:
        return not cfg.train_path
    if cfg.stream and cfg.train_path:
        raise UserInputError("task.stream=true needs a generated training split; unset task.train_path (or set task.stream=false)")
    return cfg.stream


def stream_chunk_seed(seed: int, chunk_index: int) -> int:
    """Generator seed of chunk `chunk_index` of the stream of `seed`.

    A stable hash (sha256, not Python's salted `hash`) spread over 2**56 values, so two chunks (or a chunk
    and the fixed split's small seed) share a seed with negligible probability; the eval split's seed
    (seed + EVAL_SEED_OFFSET) is excluded outright. Chunks are cached on disk like fixed splits (about
    0.4 MB per 256 ProsQA examples), so sweep cells that share a seed generate the stream once.
    """
    digest = hashlib.sha256(f"latentreason-stream:{seed}:{chunk_index}".encode()).digest()
    chunk_seed = int.from_bytes(digest[:7], "big")  # < 2**56: any task's int seed handles it
    return chunk_seed + 1 if chunk_seed == seed + EVAL_SEED_OFFSET else chunk_seed


def _ignore_sigint() -> None:
    """Prefetch workers leave Ctrl-C to the training process (which checkpoints and stops them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _generate_chunk(task_name: str, chunk_size: int, seed: int, params: dict) -> list[Example]:
    """One chunk, through the on-disk cache (top-level so a worker process can run it)."""
    return generate_cached(get_task(task_name), STREAM_SPLIT, chunk_size, seed, params)


class ExampleStream:
    """An endless, deterministic sequence of freshly generated training examples.

    Example i is example i % C of chunk i // C, and chunk k is `task.generate(C, seed=stream_chunk_seed(seed, k))`
    (C = `task.stream_chunk_size`): it depends only on the task config, never on the batch size, the number
    of processes or where a run resumed. Training step s reads examples s*P .. (s+1)*P - 1 (P = examples per
    optimizer step), so a resumed run reads exactly what an uninterrupted one would.

    With `prefetch`, a worker process generates the next chunk while training consumes the current one (the
    Countdown solver at branching 6 is about 20 ms per example). `encode` turns a chunk into what the loop
    consumes (token ids); only the chunks around the read position stay in memory.
    """

    def __init__(self, cfg: TaskConfig, encode: Callable[[list[Example]], list] | None = None, prefetch: bool | None = None) -> None:
        self.task = get_task(cfg.name)
        self.seed = cfg.seed
        self.start = cfg.stream_start
        self.chunk_size = cfg.stream_chunk_size
        self.params = generator_params(self.task, cfg, "train")
        # Curriculum: (first example index past the phase, its params); chunks after the last use self.params.
        self.phases: list[tuple[int, dict]] = []
        end = 0
        for phase in cfg.stream_curriculum:
            end += int(phase["examples"])
            self.phases.append((end, {**self.params, **(phase.get("params") or {})}))
        self.encode = encode
        self.prefetch = cfg.stream_prefetch if prefetch is None else prefetch
        self._chunks: dict[int, list] = {}
        self._pending: dict[int, Future] = {}
        self._executor: ProcessPoolExecutor | None = None
        self.wait_seconds = 0.0
        """Time the reader spent waiting for chunk generation (the stall the prefetch is meant to hide)."""

    def examples(self, start: int, count: int) -> list:
        """Examples start .. start+count-1 of the stream (encoded when the stream has an encoder)."""
        out: list = []
        index = start
        while index < start + count:
            k, offset = divmod(index, self.chunk_size)
            chunk = self.chunk(k)
            taken = chunk[offset: offset + (start + count - index)]
            out.extend(taken)
            index += len(taken)
        return out

    def window(self, start: int, length: int) -> "StreamWindow":
        """The loop's examples start .. start+length-1 (one virtual epoch) as a lazily read sequence: stream
        examples from `task.stream_start` on."""
        return StreamWindow(self, self.start + start, length)

    def chunk(self, k: int) -> list:
        if k not in self._chunks:
            began = time.perf_counter()
            pending = self._pending.pop(k, None)
            examples = self._prefetched(pending, k) if pending is not None else self._generate(k)
            self.wait_seconds += time.perf_counter() - began
            for old in [j for j in self._chunks if j < k - 1]:
                del self._chunks[old]  # the loop reads forward; keep one chunk behind for a step spanning two
            self._chunks[k] = self.encode(examples) if self.encode else examples
        if self.prefetch and k + 1 not in self._chunks and k + 1 not in self._pending:
            self._start_prefetch(k + 1)
        return self._chunks[k]

    def _prefetched(self, pending: Future, k: int) -> list[Example]:
        """The worker's chunk; if the worker died (killed, out of memory), generate in-line from now on."""
        try:
            return pending.result()
        except Exception as error:  # BrokenProcessPool and friends: the chunk is the same either way
            print(f"warning: stream prefetch worker failed ({type(error).__name__}: {error}); generating in-line", file=sys.stderr)
            self.close()
            self.prefetch = False
            return self._generate(k)

    def chunk_params(self, k: int) -> dict:
        """Generator params of chunk k: the curriculum phase its first example falls in, else task.params."""
        first = k * self.chunk_size
        return next((params for end, params in self.phases if first < end), self.params)

    def _generate(self, k: int) -> list[Example]:
        return _generate_chunk(self.task.name, self.chunk_size, stream_chunk_seed(self.seed, k), self.chunk_params(k))

    def _start_prefetch(self, k: int) -> None:
        path = _cache_path(self.task, STREAM_SPLIT, self.chunk_size, stream_chunk_seed(self.seed, k), self.chunk_params(k))
        if path is not None and path.exists():
            return  # cached: reading it in-line is fast
        if self._executor is None:
            # spawn, not fork: the parent holds torch/OpenMP threads that a forked child may deadlock on
            self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
        try:
            self._pending[k] = self._executor.submit(_generate_chunk, self.task.name, self.chunk_size, stream_chunk_seed(self.seed, k),
                                                     self.chunk_params(k))
        except Exception as error:  # the worker died earlier: generate in-line from now on
            print(f"warning: stream prefetch worker failed ({type(error).__name__}: {error}); generating in-line", file=sys.stderr)
            self.close()
            self.prefetch = False

    def close(self) -> None:
        """Stop the prefetch worker (pending chunks are dropped; they regenerate identically if needed)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._pending.clear()


class StreamWindow(Sequence):
    """A slice of an ExampleStream, indexable like the fixed training list; reads chunks only when used."""

    def __init__(self, stream: ExampleStream, start: int, length: int) -> None:
        self.stream, self.start, self.length = stream, start, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):  # type: ignore[override]
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.stream.examples(self.start + index, 1)[0]


def made_up_words(task_name: str) -> list[str]:
    """The invented names of a task, which no pretrained tokenizer has as words (`model.word_tokens`)."""
    if task_name != "prosqa":
        raise UserInputError(f"model.word_tokens: task {task_name} has no made-up names to give tokens of their own; "
                             "set it only for prosqa")
    from latentreason.tasks.prosqa import CONCEPT_NAMES

    return list(CONCEPT_NAMES)


def vocabulary_texts(task_name: str) -> list[str]:
    """Text that puts a task's whole fixed vocabulary into a tokenizer's training corpus.

    A tiny backbone's tokenizer is trained on the first virtual epoch only, while the stream later brings
    every name of the inventory: ProsQA's people and concept names are added here in the two contexts they
    occur in (" is a NAME", "Every NAME"), so a name is tokenised the same whether or not the first examples
    used it. Countdown numbers 0..999 need nothing (the tokenizer splits digits one by one) but are listed so
    the corpus provably holds them all.
    """
    if task_name == "prosqa":
        from latentreason.tasks.prosqa import CONCEPT_NAMES, PERSON_NAMES

        return [f"{p} is a {c}." for p, c in zip(PERSON_NAMES * (len(CONCEPT_NAMES) // len(PERSON_NAMES) + 1), CONCEPT_NAMES)] + \
            [f"Every {c} is a {c}." for c in CONCEPT_NAMES]
    if task_name == "countdown":
        return [" ".join(str(n) for n in range(1000))]
    return []
