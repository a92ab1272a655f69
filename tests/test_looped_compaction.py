"""Looped Q-exit decoding: dropping finished rows from the batch (compaction) changes no output."""

from __future__ import annotations

import pytest
import torch

from latentreason.backbones import build_backbone
from latentreason.config import LoopedConfig, MethodConfig, ModelConfig
from latentreason.methods import build_method
from latentreason.methods.looped import KV_POLICIES, Looped, LoopKV
from latentreason.tasks import Example
from latentreason.tokenization import encode_examples

QUESTIONS = ["Numbers: 3 5 7. Target: 15.", "Numbers: 12 4. Target: 3.", "Is Sam a wumpus or a yumpus?", "Numbers: 2 2. Target: 4."]
ANSWERS = ["(3+5)+7", "12/4", "Sam is a wumpus.", "2+2"]
CORPUS = QUESTIONS + ["### " + a for a in ANSWERS]

pytestmark = pytest.mark.usefixtures("one_thread")


def make(backbone: str) -> tuple[Looped, list]:
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone=backbone, n_layer=2, n_embd=32, n_head=2, tokenizer_vocab_size=300), corpus=CORPUS)
    method = build_method(MethodConfig(name="looped", looped=LoopedConfig(loops=3)), bb)
    examples = encode_examples(bb.tokenizer, [Example(q, [], a) for q, a in zip(QUESTIONS, ANSWERS)])
    with torch.no_grad():  # a sharp random gate: tokens exit at different loops at q = 0.5
        method.gate.weight.normal_(0, 4.0)
        method.gate.bias.fill_(0.0)
    return method.eval(), examples


def stop_token_with_staggered_finish(method: Looped, examples, max_new: int) -> int:
    """An untrained model rarely emits eos: pick as 'eos' a generated token that rows first emit at
    different steps (and that some row never emits), so rows finish one after another."""
    tokens = method.decode(examples, max_new, exit_q=1.0, compact=False).tokens
    best, spread = None, -1
    for candidate in {t for row in tokens for t in row}:
        firsts = {row.index(candidate) if candidate in row else max_new for row in tokens}
        if len(firsts) > spread:
            best, spread = candidate, len(firsts)
    assert spread >= 2, "no token staggers the rows' finishing steps"
    return best


# One backbone: at this size the untrained rotary backbones (qwen3/llama-tiny) emit the same tokens in
# every row, so no stop token finishes the rows at different steps (tests/test_looped.py covers them).
@pytest.mark.parametrize("backbone", ["gpt2-tiny"])
def test_compaction_gives_the_same_outputs(backbone, monkeypatch):
    method, examples = make(backbone)
    max_new = 12
    method.ids["eos"] = stop_token_with_staggered_finish(method, examples, max_new)
    compactions = []
    original = LoopKV.compact
    monkeypatch.setattr(LoopKV, "compact", lambda self, keep: (compactions.append(len(keep)), original(self, keep))[1])
    for policy in KV_POLICIES:
        for q in (0.5, 1.0):
            compactions.clear()
            plain = method.decode(examples, max_new, exit_q=q, kv_policy=policy, compact=False)
            assert not compactions
            packed = method.decode(examples, max_new, exit_q=q, kv_policy=policy, compact=True)
            assert compactions and min(compactions) < len(examples)  # rows really left the batch
            lengths = {len(row) for row in plain.tokens}
            assert len(lengths) > 1  # rows finished at different steps
            assert packed.tokens == plain.tokens
            assert packed.exit_loops == plain.exit_loops
            assert packed.loops_run == plain.loops_run
            torch.testing.assert_close(torch.tensor(packed.flops), torch.tensor(plain.flops), rtol=1e-9, atol=0)
            for row, exits in enumerate(plain.exit_loops):
                for step in range(len(exits)):  # logits of every emitted token (finished rows have none)
                    torch.testing.assert_close(packed.step_logits[step][row], plain.step_logits[step][row], atol=1e-5, rtol=1e-5)
            if q == 0.5 and policy == "reuse":
                assert any(e < method.loops for row in packed.exit_loops for e in row[1:])  # Q-exit really exited
