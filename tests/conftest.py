"""Shared fixtures: tiny, offline, deterministic."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)  # tiny models: one thread is as fast and never oversubscribes shared cores


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
