"""The learning-rate schedules of the one training loop (train.lr_schedule)."""

from __future__ import annotations

import math

import pytest

from latentreason.config import load_config
from latentreason.errors import UserInputError
from latentreason.training import lr_factor


def test_cosine_and_wsd_share_the_warmup_and_end_at_a_tenth():
    for schedule in ("cosine", "wsd"):
        assert [lr_factor(s, 10, 110, schedule) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
        assert math.isclose(lr_factor(110, 10, 110, schedule), 0.1)
        assert math.isclose(lr_factor(500, 10, 110, schedule), 0.1)  # past the end: stays at the floor


def test_wsd_holds_the_peak_for_the_first_80_percent_then_decays_linearly():
    # warmup 10, then 100 steps: held through step 90 (80% of the 100), half-way down at step 100
    assert all(lr_factor(s, 10, 110, "wsd") == 1.0 for s in range(10, 91))
    assert math.isclose(lr_factor(100, 10, 110, "wsd"), 0.55)
    assert lr_factor(70, 10, 110, "cosine") < 0.5  # what wsd avoids: cosine is below half the peak by 60%


def test_an_unknown_schedule_is_refused_by_name():
    assert load_config(None, ["train.lr_schedule=wsd"]).train.lr_schedule == "wsd"
    with pytest.raises(UserInputError, match="lr_schedule"):
        load_config(None, ["train.lr_schedule=linear"])
