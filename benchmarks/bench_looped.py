"""Looped LM, Q-exit decoding: wall time and FLOPs at q = 0.5 against q = 1.0 (all T loops).

An untrained exit gate outputs lambda ~ sigmoid(small) for every token, so with q = 0.5 either nothing or
everything would exit at loop 1. To get a realistic mix, the gate is set by hand before timing: weights
~ N(0, gate_std^2 / d) (so its logit varies ~ gate_std across tokens), and its bias is found by
bisection so that a chosen share of the generated tokens (--early-share, default half) exits before
loop T at the first q (or set directly with --gate-lambda = sigmoid(bias)). The mean exit loop and the
share of tokens that exit early are printed with the timings. Greedy tokens may differ between q values
(that is the point of exiting early); the FLOPs are what the batched decode actually computed (deeper
loops run only on rows still active), as accounted by Looped.decode.

Wall time follows those FLOPs where a layer call's cost scales with its rows: the per-loop K/V live in
preallocated buffers written in place (no concatenation of the whole past per token), rows that finished
leave the batch (compaction), and a deeper loop gathers only its active rows' K/V. Small layer calls still
cost a fixed overhead (CPU dispatch, GPU kernel launches, weight reads) whatever their row count.
`--decode-batch 1` decodes one sequence at a time, where an exit skips whole layer calls.
Target: at q = 0.5 the wall-time ratio is within 10% of the FLOP ratio, at batch 1 and batch 32.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

import common
from latentreason.config import LoopedConfig, MethodConfig
from latentreason.methods.looped import Decoded

TARGET_TOLERANCE = 0.10
"""Target at q = 0.5: wall-time ratio (q / reference) within 10% of the FLOP ratio."""


def decode_in_chunks(method, encoded, max_new_tokens: int, q: float, chunk: int) -> Decoded:
    """Looped.decode over `encoded` in batches of `chunk`, merged into one Decoded."""
    merged = Decoded(tokens=[])
    for start in range(0, len(encoded), chunk):
        out = method.decode(encoded[start: start + chunk], max_new_tokens, exit_q=q)
        merged.tokens += out.tokens
        merged.exit_loops += out.exit_loops
        merged.flops += out.flops
        merged.all_loops_flops += out.all_loops_flops
    return merged


def early_share(exit_loops: list[list[int]], loops: int) -> float:
    exits = [loop for row in exit_loops for loop in row]
    return sum(e < loops for e in exits) / len(exits)


@torch.no_grad()
def calibrate_gate(method, encoded, q: float, target: float, max_new_tokens: int, loops: int, chunk: int, steps: int = 8) -> tuple[float, float]:
    """Bisect the gate bias until about `target` of the tokens exit before the last loop at threshold q
    (the share grows with the bias: a larger lambda reaches q sooner)."""
    lo, hi = -8.0, 4.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        method.gate.bias.fill_(mid)
        if early_share(decode_in_chunks(method, encoded, max_new_tokens, q, chunk).exit_loops, loops) < target:
            lo = mid
        else:
            hi = mid
    bias = (lo + hi) / 2
    method.gate.bias.fill_(bias)
    return bias, early_share(decode_in_chunks(method, encoded, max_new_tokens, q, chunk).exit_loops, loops)


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--loops", type=int, default=4)
    p.add_argument("--decode-batch", type=int, default=0, help="decode the examples in batches of this size (0: all at once)")
    p.add_argument("--qs", default="0.5,1.0", help="exit thresholds to compare; the last is the reference")
    p.add_argument("--kv-policy", default="reuse", choices=["reuse", "per_loop", "recompute"])
    p.add_argument("--early-share", type=float, default=0.5, help="calibrate the gate bias so this share of tokens exits early")
    p.add_argument("--gate-lambda", type=float, default=None, help="set sigmoid(gate bias) directly instead of calibrating")
    p.add_argument("--gate-std", type=float, default=1.0, help="std of the gate logit across tokens")
    p.add_argument("--profile", action="store_true", help="append torch.profiler tables of every side (to explain a miss)")
    args = p.parse_args()
    env = common.setup(args)
    examples = common.countdown_data(args.batch_size, seed=args.seed + 1)
    cfg = MethodConfig(name="looped", looped=LoopedConfig(loops=args.loops, kv_policy=args.kv_policy))
    method, encoded, _ = common.build(args, env, cfg, examples)
    method.eval()
    with torch.no_grad():
        d = method.gate.in_features
        method.gate.weight.normal_(0.0, args.gate_std / math.sqrt(d))
    qs = [float(q) for q in args.qs.split(",") if q]
    chunk = args.decode_batch or len(encoded)
    if args.gate_lambda is not None:
        bias, share = math.log(args.gate_lambda / (1 - args.gate_lambda)), None
        with torch.no_grad():
            method.gate.bias.fill_(bias)
    else:
        bias, share = calibrate_gate(method, encoded, qs[0], args.early_share, args.max_new_tokens, args.loops, chunk)
    print(f"gate bias {bias:.3f} (lambda {1 / (1 + math.exp(-bias)):.3f}); early-exit share at q={qs[0]:g}: {share}")
    outputs: dict[float, Decoded] = {}

    def side(q: float) -> Callable[[], None]:
        def run() -> None:
            with env.autocast():
                outputs[q] = decode_in_chunks(method, encoded, args.max_new_tokens, q, chunk)
        return run

    fns = {f"q={q:g}": side(q) for q in qs}
    print(f"timing {len(fns)} sides x {args.repeats} repeats (interleaved) ...")
    times = common.time_interleaved(fns, env.device, args.repeats, args.warmup)
    reference = f"q={qs[-1]:g}"
    rows = []
    for q, (name, fn) in zip(qs, fns.items()):
        out, t = outputs[q], times[name]
        exits = [loop for row in out.exit_loops for loop in row]
        tokens = sum(len(row) for row in out.exit_loops)  # emitted tokens incl. eos
        flops = sum(out.flops)
        speedup, speedup_min = common.ratios(times, reference, name)
        rows.append({
            "name": name, "ms": 1000 * t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"],
            "tokens": tokens, "tokens/s": tokens / t["median_s"], "mean_exit_loop": sum(exits) / len(exits),
            "early_exit_share": early_share(out.exit_loops, args.loops),
            "flops": flops, "flops_vs_all_loops": flops / sum(out.all_loops_flops),
            "mfu": common.mfu(flops, t["median_s"], env.device), "peak_mb": common.peak_memory(fn, env.device)["peak_mb"],
            "speedup": speedup, "speedup_min": speedup_min,
        })
    summary: dict[str, Any] = {}
    by_name = {r["name"]: r for r in rows}
    for name in fns:
        if name != reference:
            summary[f"{name}: wall-time speedup vs {reference} (median, min)"] = f"{by_name[name]['speedup']:.2f}, {by_name[name]['speedup_min']:.2f}"
            flop_ratio = by_name[name]["flops"] / by_name[reference]["flops"]
            summary[f"{name}: FLOPs / FLOPs at {reference}"] = flop_ratio
            for stat in ("median", "min"):
                key = "speedup" if stat == "median" else "speedup_min"
                wall_ratio = 1 / by_name[name][key]
                summary[f"{name}: wall-time ratio / FLOP ratio ({stat})"] = wall_ratio / flop_ratio
            within = abs(1 / by_name[name]["speedup"] / flop_ratio - 1) <= TARGET_TOLERANCE
            summary[f"{name}: target wall-time ratio within {TARGET_TOLERANCE:.0%} of the FLOP ratio (median)"] = "met" if within else "MISSED"
    how = "set directly" if args.gate_lambda is not None else f"calibrated to an early-exit share of {args.early_share}"
    summary["gate"] = f"bias {bias:.3f} ({how}), logit std {args.gate_std}: set by hand, an untrained gate never exits"
    summary["how memory is measured"] = common.peak_memory(lambda: None, env.device)["how"]
    columns = ["name", "ms", "min_s", "max_s", "tokens", "tokens/s", "mean_exit_loop", "early_exit_share", "flops",
               "flops_vs_all_loops", "mfu", "peak_mb", "speedup", "speedup_min"]
    title = (f"Looped Q-exit decoding, {common.model_label(args)}, T={args.loops}, kv={args.kv_policy}, {args.batch_size} examples "
             f"decoded {chunk} at a time, max_new_tokens={args.max_new_tokens}")
    if args.profile:
        summary["profile"] = "tables below (torch.profiler, 3 calls each, self time)"
    common.report(title, args, env, rows, columns, summary)
    if args.profile:
        common.profile_tables(fns, env, args.out)


if __name__ == "__main__":
    main()
