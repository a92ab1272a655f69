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


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory, monkeypatch):
    """Generated splits are cached in a per-test directory, never in the user's ~/.cache."""
    monkeypatch.setenv("LATENTREASON_DATA_CACHE", str(tmp_path_factory.mktemp("data_cache")))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole module, restored afterwards (a test elsewhere, e.g. the quickstart's, may
    have changed the count): tiny models are fastest on one thread and never thrash a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
