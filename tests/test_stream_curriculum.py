"""task.stream_curriculum: the stream's examples follow the phases (by stream index), the eval split and
everything after the last phase use task.params, and bad phases fail when the config loads."""

import pytest

from latentreason.config import RunConfig, from_dict
from latentreason.data import ExampleStream, load_split
from latentreason.errors import UserInputError


def task_config(curriculum):
    return from_dict(RunConfig, {"task": {"name": "prosqa", "eval_size": 8, "stream_chunk_size": 4,
                                          "params": {"n_nodes": 10, "min_depth": 2, "max_depth": 3},
                                          "stream_curriculum": curriculum}}).task


def path_lengths(examples) -> list[int]:
    return [len(e.steps) for e in examples]


def test_stream_follows_the_phases_then_task_params() -> None:
    cfg = task_config([{"examples": 8, "params": {"n_nodes": 4, "min_depth": 1, "max_depth": 1}},
                       {"examples": 4, "params": {"n_nodes": 6, "min_depth": 1, "max_depth": 2}}])
    stream = ExampleStream(cfg, prefetch=False)
    first, second, after = stream.examples(0, 8), stream.examples(8, 4), stream.examples(12, 40)
    assert all(len(e.meta["idx_to_symbol"]) == 4 for e in first) and path_lengths(first) == [1] * 8
    assert all(len(e.meta["idx_to_symbol"]) == 6 for e in second)
    assert all(len(e.meta["idx_to_symbol"]) == 10 and 2 <= len(e.steps) <= 3 for e in after)
    assert all(len(e.meta["idx_to_symbol"]) == 10 for e in load_split(cfg, "eval"))  # eval: task.params only
    # Deterministic by index: a fresh stream (a resumed run) reads the same examples from the middle.
    again = ExampleStream(cfg, prefetch=False).examples(6, 10)
    assert [e.question for e in again] == [e.question for e in stream.examples(6, 10)]


def test_without_a_curriculum_the_stream_is_unchanged() -> None:
    plain = ExampleStream(task_config([]), prefetch=False).examples(0, 6)
    assert all(len(e.meta["idx_to_symbol"]) == 10 for e in plain)


@pytest.mark.parametrize("curriculum, fragment", [
    ([{"params": {"n_nodes": 4}}], "task.stream_curriculum[0]': expected a mapping {examples: N"),
    ([{"examples": 0}], "task.stream_curriculum[0].examples': expected an integer >= 1"),
    ([{"examples": 8, "params": {"n_node": 4}}], "task.stream_curriculum[0].params.n_node': unknown prosqa generator parameter"),
    (["n_nodes=4"], "expected a mapping"),
])
def test_bad_phases_fail_at_load(curriculum, fragment) -> None:
    with pytest.raises(UserInputError, match=None) as error:
        task_config(curriculum)
    assert fragment in str(error.value)
