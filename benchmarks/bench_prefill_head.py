"""Batched generation: the prefill's LM head on the last position only (ours) vs on every prompt position.

Decoding reads only the last prompt position's logits, so `LatentMethod.decode_after_prefix` and Coconut's
generation ask the backbone for those alone (`lm_forward(last_logits_only=True)`, HF's `logits_to_keep=1`).
Before session 29 the prefill computed [batch, prompt, vocab] logits and kept one row: at SmolLM2's 49,152-token
vocabulary, a batch of 50 default-size ProsQA prompts (~330 tokens) is 3.2 GB of fp32 logits. `--head-vocab`
widens the embedding and head to a realistic vocabulary (`resize_token_embeddings`), so nothing is downloaded.

- last: `method.generate` as the project runs it
- all:  the same call with the prefill computing every position's logits (the previous code path)

Both sides must give identical greedy answers; time (interleaved medians) and peak memory are reported.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import common
import latentreason.methods.base as method_base
from latentreason.config import MethodConfig
from latentreason.tasks import get_task


def every_position_logits(call: Callable[[], Any]) -> Callable[[], Any]:
    """`call` with decode_after_prefix's prefill computing the head on every prompt position."""
    lean = method_base.lm_forward

    def full_head(*args: Any, last_logits_only: bool = False, **kwargs: Any):
        return lean(*args, **kwargs)

    def run() -> Any:
        method_base.lm_forward = full_head
        try:
            return call()
        finally:
            method_base.lm_forward = lean
    return run


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--head-vocab", type=int, default=49152, help="0 keeps the task tokenizer's vocabulary")
    args = p.parse_args()
    env = common.setup(args)
    # Default-size ProsQA: long prompts (the word-level task tokenizer gives ~250-450 tokens each).
    examples = get_task("prosqa").generate(args.batch_size, args.seed)
    method, encoded, _ = common.build(args, env, MethodConfig(name="no_cot"), examples)
    if args.head_vocab:
        method.model.resize_token_embeddings(args.head_vocab)
    method.eval()
    vocab = method.model.get_output_embeddings().weight.shape[0]

    def generate() -> Any:
        with torch.no_grad(), env.autocast():
            return method.generate(encoded, args.max_new_tokens)

    fns = {"last": generate, "all": every_position_logits(generate)}
    same = fns["last"]().token_ids == fns["all"]().token_ids
    print(f"timing 2 sides x {args.repeats} repeats (interleaved) ...")
    times = common.time_interleaved(fns, env.device, args.repeats, args.warmup)
    prompt_tokens = sum(len(e.question_ids) for e in encoded)
    rows = []
    for name, fn in fns.items():
        t = times[name]
        rows.append({"name": name, "vocab": vocab, "batch": len(encoded), "prompt_tokens": prompt_tokens,
                     "ms": 1000 * t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"],
                     **common.peak_memory(fn, env.device)})
    speedup, speedup_min = common.ratios(times, "all", "last")
    summary = {"identical greedy answers": same, "all / last time (median, min)": f"{speedup:.2f}, {speedup_min:.2f}",
               "all - last peak memory (MB)": rows[1]["peak_mb"] - rows[0]["peak_mb"]}
    columns = ["name", "vocab", "batch", "prompt_tokens", "ms", "min_s", "max_s", "peak_mb"]
    common.report(f"Generation prefill, LM head on the last position vs every position, {common.model_label(args)}",
                  args, env, rows, columns, summary)
    if not same:
        raise SystemExit("the two sides gave different answers")


if __name__ == "__main__":
    main()
