"""Coprocessor pretraining: one masked pass over M augmentation points against M sequential passes.

Both sides are full training steps (forward, backward, AdamW on the Coprocessor + soft tokens, the Base
frozen as in Liu et al.) on the same packed text batch and the same points:

- masked:     coprocessor_pretrain.pretrain_loss (3 batched passes, every point's group under one 4-D mask)
- sequential: coprocessor_pretrain.pretrain_loss_sequential (per row and point: the fine-tuning path's
              3 passes over the prefix, i.e. 3*B*M model calls)

The two losses are checked to agree before timing. Target: masked >= M/2 x faster than sequential.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

import common
from latentreason.config import CoprocessorConfig, MethodConfig
from latentreason.flops import train_flops

try:
    from latentreason.methods.coprocessor_pretrain import pack, pretrain_loss, pretrain_loss_sequential, sample_points
except ImportError as error:  # the pretraining module is not there (yet): say so instead of crashing
    pack = pretrain_loss = pretrain_loss_sequential = sample_points = None  # type: ignore[assignment]
    IMPORT_ERROR: str | None = str(error)
else:
    IMPORT_ERROR = None


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=4, help="packed text sequences per step")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--points", default="4,8", help="comma-separated M values (one pair of sides each)")
    p.add_argument("--ahead", type=int, default=8, help="N_A ahead tokens per point")
    p.add_argument("--n-latents", type=int, default=4)
    args = p.parse_args()
    if IMPORT_ERROR is not None:
        print(f"SKIPPED: coprocessor pretraining functions are not available ({IMPORT_ERROR}); "
              "this benchmark needs latentreason.methods.coprocessor_pretrain.pretrain_loss / pretrain_loss_sequential.")
        sys.exit(0)
    env = common.setup(args)
    examples = common.countdown_data(max(64, 4 * args.batch_size))
    cfg = MethodConfig(name="coprocessor", n_latents=args.n_latents, coprocessor=CoprocessorConfig(variant="liu"))
    method, _, _ = common.build(args, env, cfg, examples)
    method.train()
    method.model.requires_grad_(False)
    optimizer = common.adamw(method, env)  # the Base is frozen: only the Coprocessor and soft tokens
    documents = ["\n".join([e.question, *e.steps, "### " + e.answer]) for e in examples]
    x = pack(method.tokenizer, documents, args.seq_len)[: args.batch_size].to(env.device)
    if len(x) < args.batch_size:
        p.error(f"corpus too small for {args.batch_size} sequences of {args.seq_len}")

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    fns: dict[str, Callable[[], None]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for m in [int(v) for v in args.points.split(",") if v]:
        points = sample_points(len(x), args.seq_len, m, args.ahead, torch.Generator().manual_seed(args.seed)).to(env.device)
        with torch.no_grad():
            diff = abs(float(pretrain_loss(method, x, points, args.ahead)) - float(pretrain_loss_sequential(method, x, points, args.ahead)))
        summary[f"M={m}: |masked - sequential| loss"] = diff
        fns[f"masked@M={m}"] = common.train_step(lambda pts=points: pretrain_loss(method, x, pts, args.ahead), optimizer, env)
        fns[f"sequential@M={m}"] = common.train_step(lambda pts=points: pretrain_loss_sequential(method, x, pts, args.ahead), optimizer, env)
        # Useful training FLOPs (the sequential definition's passes, x3 for backward), the same for both sides.
        a = args.ahead
        # Pass 3 reads the N_L latents and the first N_A - 1 ahead tokens, the head on all of them.
        flops = train_flops(sum(method.three_pass_flops(q, a - 1, method.lead_in_length + a - 1) for q in points.flatten().tolist()))
        for side in ("masked", "sequential"):
            meta[f"{side}@M={m}"] = {"side": side, "M": m, "target_tokens": len(x) * m * args.ahead, "flops": flops}

    print(f"timing {len(fns)} steps x {args.repeats} repeats (interleaved) ...")
    times = common.time_interleaved(fns, env.device, args.repeats, args.warmup)
    for name, fn in fns.items():
        t, info = times[name], meta[name]
        speedup, speedup_min = common.ratios(times, f"sequential@M={info['M']}", name)
        rows.append({
            "name": name, **info, "ms": 1000 * t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"],
            "tokens/s": info["target_tokens"] / t["median_s"], "peak_mb": common.peak_memory(fn, env.device)["peak_mb"],
            "mfu": common.mfu(info["flops"], t["median_s"], env.device),
            "speedup_vs_sequential": speedup, "speedup_min": speedup_min,
        })
        if info["side"] == "masked":
            m = info["M"]
            summary[f"M={m}: sequential / masked step (median, min)"] = f"{speedup:.2f}, {speedup_min:.2f}"
            summary[f"M={m}: target >= M/2 = {m / 2:g}x"] = "met" if speedup >= m / 2 else "MISSED"
    summary["how memory is measured"] = common.peak_memory(lambda: None, env.device)["how"]
    columns = ["name", "side", "M", "target_tokens", "ms", "min_s", "max_s", "tokens/s", "peak_mb", "flops", "mfu", "speedup_vs_sequential", "speedup_min"]
    title = f"Coprocessor pretraining step, {common.model_label(args)}, batch={args.batch_size}x{args.seq_len}, N_L={args.n_latents}, N_A={args.ahead}"
    common.report(title, args, env, rows, columns, summary)


if __name__ == "__main__":
    main()
