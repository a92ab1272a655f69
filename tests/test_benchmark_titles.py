"""Benchmark report titles say which model was measured: `--size` sizes only the random-init backbones, so a
pretrained one is named instead (a SmolLM2 report once read "size=tiny")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_titles_name_a_pretrained_backbone_not_a_size():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert common.model_label(argparse.Namespace(backbone="gpt2-tiny", size="small")) == "size=small"
    assert common.model_label(argparse.Namespace(backbone="smollm2-135m", size="tiny")) == "backbone=smollm2-135m"
    # Every benchmark builds its title through the label, none from --size alone.
    for script in (ROOT / "benchmarks").glob("bench_*.py"):
        assert "size={args.size}" not in script.read_text(), script.name
