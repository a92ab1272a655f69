"""Batched KV-cached generation (method.generate) against batch-1 uncached generation.

The naive side is the Coconut reference way: one example at a time, and every forward re-runs the whole
sequence so far without a cache: each latent thought (coconut) and then each new token. A third side,
cached generation at batch 1, separates what caching buys from what batching buys. For coconut a fourth,
`reference`, is the published implementation's algorithm: batch 1, latent passes on a KV cache with the LM
head on every pass, then greedy decoding without a cache (reference_generate).

All sides decode greedily with the same budget from the same (untrained) weights; the share of answers
identical between the batched and naive sides is printed as a check (tiny float differences from
padding can flip an argmax of an untrained model now and then).

Target: >= 10x answers/s at batch 32 (against naive, and for coconut against the reference).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import common
from bench_latent_step import reference_coconut_forward
from latentreason.backbones import lm_forward
from latentreason.config import CoconutConfig, MethodConfig
from latentreason.flops import forward_flops
from latentreason.methods.base import LatentMethod
from latentreason.tokenization import EncodedExample

TARGET_SPEEDUP = 10.0


@torch.no_grad()
def naive_generate(method: LatentMethod, example: EncodedExample, max_new_tokens: int) -> tuple[list[int], float]:
    """Batch 1, no cache: every latent and every token re-runs the model over the whole prefix.

    Returns the generated tokens (eos excluded) and the FLOPs of all those full passes (HF computes the
    LM head at every position, so every pass pays it everywhere).
    """
    dims = method.dims

    def full(embeds: torch.Tensor, hidden: bool = False):
        n = embeds.shape[1]
        ones = torch.ones(1, n, dtype=torch.long, device=embeds.device)
        positions = torch.arange(n, device=embeds.device).view(1, n)
        return lm_forward(method.model, embeds, ones, positions, None, output_hidden_states=hidden)

    flops = 0.0
    if method.name == "coconut":
        plan = method.eval_plans([example])[0]
        layout = method.layout([example], [plan], with_targets=False)
        embeds = method.embed(layout["input_ids"].to(method.device))
        start = layout["latent_start"]
        for j in range(plan.n_latents):
            end = start + j
            h = full(embeds[:, :end], hidden=True).hidden_states[-1][:, -1]
            flops += forward_flops(dims, end, 0, end)
            embeds = torch.cat([embeds[:, :end], h.unsqueeze(1).to(embeds.dtype), embeds[:, end + 1:]], dim=1)
    else:
        embeds = method.embed(torch.tensor([example.question_ids], device=method.device))
    eos = method.ids["eos"]
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        logits = full(embeds).logits[:, -1]
        flops += forward_flops(dims, embeds.shape[1], 0, embeds.shape[1])
        token = int(logits.argmax(-1))
        if token == eos:
            break
        tokens.append(token)
        embeds = torch.cat([embeds, method.embed(torch.tensor([[token]], device=embeds.device))], dim=1)
    return tokens, flops


@torch.no_grad()
def reference_generate(method: LatentMethod, example: EncodedExample, max_new_tokens: int) -> tuple[list[int], float]:
    """The published Coconut implementation's generation (facebookresearch/coconut, `Coconut.generate`):
    batch 1; the latent passes run on a KV cache with the LM head on every pass (its training forward);
    then greedy decoding WITHOUT a cache: every new token re-runs the model over the whole sequence of
    input embeddings (question, thoughts, <eot>, tokens so far). Returns tokens (eos excluded) and FLOPs."""
    dims = method.dims
    plan = method.eval_plans([example])[0]
    batch = common.to_device(method.layout([example], [plan], with_targets=False), method.device)
    logits, embeds = reference_coconut_forward(method, batch)
    n = embeds.shape[1]
    flops = forward_flops(dims, n, 0, n)  # the passes sum to one causal pass, head on every position
    eos = method.ids["eos"]
    tokens: list[int] = []
    token = int(logits[0, -1].argmax())
    for _ in range(max_new_tokens):
        if token == eos:
            break
        tokens.append(token)
        embeds = torch.cat([embeds, method.embed(torch.tensor([[token]], device=embeds.device))], dim=1)
        if len(tokens) == max_new_tokens:
            break
        n = embeds.shape[1]
        out = lm_forward(method.model, embeds, torch.ones(1, n, dtype=torch.long, device=embeds.device),
                         torch.arange(n, device=embeds.device).view(1, n))
        flops += forward_flops(dims, n, 0, n)
        token = int(out.logits[0, -1].argmax())
    return tokens, flops


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--methods", default="coconut,cot", help="comma-separated: coconut, cot")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--n-latents", type=int, default=6, help="coconut latents at evaluation (c=2, 3 stages)")
    args = p.parse_args()
    env = common.setup(args)
    examples = common.countdown_data(args.batch_size, seed=args.seed + 1)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    backbone = None
    memory: list[tuple[dict[str, Any], Callable[[], None]]] = []
    for name in [m for m in args.methods.split(",") if m]:
        if name == "coconut":
            cfg = MethodConfig(name="coconut", n_latents=args.n_latents, coconut=CoconutConfig(thoughts_per_step=2, pad_latent_to_max=True))
        else:
            cfg = MethodConfig(name=name)
        method, encoded, backbone = common.build(args, env, cfg, examples, backbone=backbone)
        method.eval()
        n_new = args.max_new_tokens
        outputs: dict[str, Any] = {}

        # Default arguments bind this method's objects: the closures run again after the loop (peak memory).
        def batched(method=method, encoded=encoded, outputs=outputs) -> None:
            with env.autocast():
                outputs["batched"] = method.generate(encoded, n_new)

        def cached_one(method=method, encoded=encoded, outputs=outputs) -> None:
            with env.autocast():
                outputs["cached_b1"] = [method.generate([e], n_new) for e in encoded]

        def naive(method=method, encoded=encoded, outputs=outputs) -> None:
            with env.autocast():
                outputs["naive"] = [naive_generate(method, e, n_new) for e in encoded]

        def reference(method=method, encoded=encoded, outputs=outputs) -> None:
            with env.autocast():
                outputs["reference"] = [reference_generate(method, e, n_new) for e in encoded]

        sides: dict[str, Callable[[], None]] = {"batched": batched, "cached_b1": cached_one, "naive": naive}
        if name == "coconut":
            sides["reference"] = reference
        print(f"{name}: timing {len(sides)} sides x {args.repeats} repeats (interleaved) ...")
        times = common.time_interleaved(sides, env.device, args.repeats, args.warmup)
        generated = {
            "batched": sum(len(t) for t in outputs["batched"].token_ids),
            "cached_b1": sum(len(g.token_ids[0]) for g in outputs["cached_b1"]),
            "naive": sum(len(t) for t, _ in outputs["naive"]),
        }
        if "reference" in outputs:
            generated["reference"] = sum(len(t) for t, _ in outputs["reference"])
        flops = {
            "batched": sum(outputs["batched"].flops),
            "cached_b1": sum(sum(g.flops) for g in outputs["cached_b1"]),
            "naive": sum(f for _, f in outputs["naive"]),
        }
        if "reference" in outputs:
            flops["reference"] = sum(f for _, f in outputs["reference"])
        same = sum(a == b for a, (b, _) in zip(outputs["batched"].token_ids, outputs["naive"]))
        for side, fn in sides.items():
            t = times[side]
            ratio, ratio_min = common.ratios(times, "naive", side)
            rows.append({
                "method": name, "side": side, "batch": args.batch_size if side == "batched" else 1,
                "ms": 1000 * t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"],
                "answers/s": len(encoded) / t["median_s"], "tokens/s": generated[side] / t["median_s"],
                "new_tokens": generated[side], "flops": flops[side], "mfu": common.mfu(flops[side], t["median_s"], env.device),
                "speedup_vs_naive": ratio, "speedup_min": ratio_min,
            })
            memory.append((rows[-1], fn))
        speedup, speedup_min = common.ratios(times, "naive", "batched")
        summary[f"{name}: batched / naive answers/s (median)"] = speedup
        summary[f"{name}: batched / naive answers/s (min)"] = speedup_min
        summary[f"{name}: target >= {TARGET_SPEEDUP}x"] = "met" if speedup >= TARGET_SPEEDUP else "MISSED"
        summary[f"{name}: answers identical batched vs naive"] = f"{same}/{len(encoded)}"
        if "reference" in outputs:
            speedup, speedup_min = common.ratios(times, "reference", "batched")
            summary[f"{name}: batched / reference answers/s (median)"] = speedup
            summary[f"{name}: batched / reference answers/s (min)"] = speedup_min
            summary[f"{name}: target >= {TARGET_SPEEDUP}x vs reference"] = "met" if speedup >= TARGET_SPEEDUP else "MISSED"
            same_ref = sum(a == b for a, (b, _) in zip(outputs["batched"].token_ids, outputs["reference"]))
            summary[f"{name}: answers identical batched vs reference"] = f"{same_ref}/{len(encoded)}"
    for row, fn in memory:  # after all timings: measuring memory switches glibc to mmap for large blocks
        row["peak_mb"] = common.peak_memory(fn, env.device)["peak_mb"]
    summary["how memory is measured"] = common.peak_memory(lambda: None, env.device)["how"]
    columns = ["method", "side", "batch", "ms", "min_s", "max_s", "answers/s", "tokens/s", "new_tokens", "flops", "mfu", "peak_mb",
               "speedup_vs_naive", "speedup_min"]
    common.report(f"Generation, {common.model_label(args)}, {args.batch_size} answers, max_new_tokens={args.max_new_tokens}", args, env, rows, columns, summary)


if __name__ == "__main__":
    main()
