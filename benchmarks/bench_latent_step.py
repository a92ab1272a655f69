"""Latent training steps against plain CoT steps and against the naive recompute-everything loop.

Measured in one process, interleaved (see common.py), each a full training step (forward, backward,
AdamW step):

- coconut at k latents (stage k/c with c = 2 thoughts per step on Countdown, whose 3 steps allow k <= 6)
  vs a CoT step over the SAME [B, T] tokens (one causal pass over Coconut's own batch layout, latent
  slots read as <latent> token embeddings): the price of the k extra sequential passes on one cache.
- coconut vs a naive loop written here: for each latent j, the full model re-runs the whole sequence so
  far without a cache to get thought j, then one full pass computes the loss (what a straightforward
  re-implementation does). Its loss is checked against Coconut's before timing.
- coconut vs the published implementation's algorithm (reference_coconut_loss): KV cache reused across
  passes, but the LM head on every pass and the thoughts written by rebuilding inputs_embeds from
  per-position slices; `reference-vec` is the same algorithm with one vectorised write.
- coprocessor liu/h1/h2 at N_L latents vs a CoT step over the tokens the Base reads
  (question + N_L slots + answer).

Targets at k = 6: coconut step <= 1.15x the CoT step; >= 1.3x faster than the reference. `--profile`
appends torch.profiler tables of the coconut and CoT steps (to explain a miss).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

import common
from latentreason.backbones import lm_forward, new_cache
from latentreason.config import CoconutConfig, CoprocessorConfig, MethodConfig
from latentreason.flops import forward_flops, train_flops
from latentreason.methods.base import LatentMethod, causal_lm_loss
from latentreason.tokenization import supervised_sequences

TARGET_RATIO_K6 = 1.15
TARGET_REFERENCE_K6 = 1.3


def naive_coconut_loss(method: LatentMethod, batch: dict[str, Any]) -> torch.Tensor:
    """Coconut's loss the naive way: every latent re-runs the model over the whole prefix, no cache."""
    embeds = method.embed(batch["input_ids"])
    mask, positions, has_latent = batch["attention_mask"], batch["position_ids"], batch["latent_mask"]
    start = batch["latent_start"]
    for j in range(has_latent.shape[1]):
        end = start + j  # columns [0, end) are known; latent slot j sits at column `end`
        out = lm_forward(method.model, embeds[:, :end], mask[:, :end], positions[:, :end], None, output_hidden_states=True)
        thought = torch.where(has_latent[:, j, None], out.hidden_states[-1][:, -1].to(embeds.dtype), embeds[:, end])
        embeds = torch.cat([embeds[:, :end], thought.unsqueeze(1), embeds[:, end + 1:]], dim=1)
    logits = lm_forward(method.model, embeds, mask, positions).logits
    return causal_lm_loss(logits, batch["labels"])


def reference_coconut_loss(method: LatentMethod, batch: dict[str, Any], per_position: bool = True) -> torch.Tensor:
    """Coconut's loss by the published implementation's algorithm (see reference_coconut_forward)."""
    logits, _ = reference_coconut_forward(method, batch, per_position)
    return causal_lm_loss(logits, batch["labels"])


def reference_coconut_forward(method: LatentMethod, batch: dict[str, Any], per_position: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Coconut's loss the way the published implementation computes it (facebookresearch/coconut,
    `Coconut.forward`), transcribed onto this batch layout (left-padded questions, aligned latent slots):

    - passes run to the batch's largest latent count: the first over [0, first latent), then one column per
      latent, then the rest, each reusing the previous passes' KV cache;
    - every pass computes the LM head (logits of all passes are concatenated for the loss);
    - between passes the thoughts are written into inputs_embeds. With `per_position` (the published code)
      that rebuilds the whole [B, T, d] tensor from per-position slices (a Python list per row, one
      torch.stack per row), as the reference does to stay autograd-friendly; without, one torch.where
      (the same algorithm with a vectorised write, to separate implementation cost from algorithm cost).

    Returns the logits of every position [B, T, V] and the input embeddings with the thoughts written in.
    """
    embeds = method.embed(batch["input_ids"])
    mask, positions, has_latent = batch["attention_mask"], batch["position_ids"], batch["latent_mask"]
    start, width, T = batch["latent_start"], has_latent.shape[1], embeds.shape[1]
    cache = new_cache(method.model)
    logits: list[torch.Tensor] = []
    lo, hi = 0, start
    for j in range(width):
        out = lm_forward(method.model, embeds[:, lo:hi], mask[:, :hi], positions[:, lo:hi], cache, output_hidden_states=True)
        logits.append(out.logits)
        hidden = out.hidden_states[-1]
        # latent slot j (column start + j) takes the last hidden state of this pass (column start + j - 1)
        column = start + j
        if per_position:
            rows = [[embeds[b, t] for t in range(T)] for b in range(embeds.shape[0])]
            for b in has_latent[:, j].nonzero().flatten().tolist():
                rows[b][column] = hidden[b, column - 1 - lo]
            embeds = torch.stack([torch.stack(r) for r in rows])
        else:
            thought = torch.where(has_latent[:, j, None], hidden[:, -1].to(embeds.dtype), embeds[:, column])
            embeds = torch.cat([embeds[:, :column], thought.unsqueeze(1), embeds[:, column + 1:]], dim=1)
        lo, hi = hi, (hi + 1 if j + 1 < width else T)
    out = lm_forward(method.model, embeds[:, lo:hi], mask[:, :hi], positions[:, lo:hi], cache)
    logits.append(out.logits)
    return torch.cat(logits, dim=1), embeds


def cot_loss(method: LatentMethod, batch: dict[str, Any]) -> torch.Tensor:
    """One causal pass over a batch's tokens (the CoT step), whatever layout the batch has."""
    logits = lm_forward(method.model, method.embed(batch["input_ids"]), batch["attention_mask"], batch["position_ids"]).logits
    return causal_lm_loss(logits, batch["labels"])


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (32 = TrainConfig.batch_size)")
    p.add_argument("--ks", default="0,2,4,6", help="Coconut latent counts (multiples of c=2, at most 6 on Countdown)")
    p.add_argument("--n-latents", type=int, default=6, help="coprocessor N_L")
    p.add_argument("--variants", default="liu,h1,h2", help="coprocessor variants ('' to skip)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive recompute loop")
    p.add_argument("--no-reference", action="store_true", help="skip the published implementation's algorithm")
    p.add_argument("--profile", action="store_true", help="append torch.profiler tables of the k = max coconut and cot steps")
    args = p.parse_args()
    env = common.setup(args)
    ks = [int(k) for k in args.ks.split(",") if k]
    c = 2
    if any(k % c for k in ks):
        p.error(f"--ks must be multiples of {c}")
    examples = common.countdown_data(args.batch_size)

    coconut_cfg = MethodConfig(name="coconut", n_latents=max(ks + [c]), coconut=CoconutConfig(thoughts_per_step=c, pad_latent_to_max=True))
    coconut, encoded, backbone = common.build(args, env, coconut_cfg, examples)
    pristine = copy.deepcopy(backbone)  # coprocessor variants freeze their Base: give each its own copy
    print(f"attention implementation: {backbone.model.config._attn_implementation}")
    coconut.train()
    optimizer = common.adamw(coconut, env)
    dims = coconut.dims

    fns: dict[str, Callable[[], None]] = {}
    info: dict[str, dict[str, Any]] = {}
    checks: dict[str, float] = {}
    for k in ks:
        coconut.stage = k // c
        batch = common.to_device(coconut.collate(encoded), env.device)
        assert int(batch["latent_mask"].sum()) == k * len(encoded), "every row should hold exactly k latents"
        B, T = batch["input_ids"].shape
        tokens = int(batch["attention_mask"].sum())
        forward = forward_flops(dims, T, 0, T) * B  # the K+1 passes sum to one causal pass (padding included)
        with torch.no_grad():
            ours = float(coconut.loss(batch))
            ref = float(cot_loss(coconut, batch)) if k == 0 else None
            if not args.no_naive:
                naive = float(naive_coconut_loss(coconut, batch))
                checks[f"k={k}: |coconut - naive| loss"] = abs(ours - naive)
            if ref is not None:
                checks["k=0: |coconut - cot| loss"] = abs(ours - ref)
            if not args.no_reference and k > 0:
                for per_position in (True, False):
                    reference = float(reference_coconut_loss(coconut, batch, per_position))
                    checks[f"k={k}: |coconut - reference{'' if per_position else '-vec'}| loss"] = abs(ours - reference)
        fns[f"cot@k={k}"] = common.train_step(lambda b=batch: cot_loss(coconut, b), optimizer, env)
        fns[f"coconut@k={k}"] = common.train_step(lambda b=batch: coconut.loss(b), optimizer, env)
        info[f"cot@k={k}"] = {"method": "cot (same tokens)", "k": k, "tokens": tokens, "flops": train_flops(forward), "ref": None}
        info[f"coconut@k={k}"] = {"method": "coconut", "k": k, "tokens": tokens, "flops": train_flops(forward), "ref": f"cot@k={k}"}
        if not args.no_reference and k > 0:
            fns[f"reference@k={k}"] = common.train_step(lambda b=batch: reference_coconut_loss(coconut, b), optimizer, env)
            info[f"reference@k={k}"] = {"method": "reference (published code)", "k": k, "tokens": tokens, "flops": train_flops(forward), "ref": f"coconut@k={k}"}
            fns[f"reference-vec@k={k}"] = common.train_step(lambda b=batch: reference_coconut_loss(coconut, b, False), optimizer, env)
            info[f"reference-vec@k={k}"] = {"method": "reference algorithm, vectorised write", "k": k, "tokens": tokens, "flops": train_flops(forward), "ref": f"coconut@k={k}"}
        if not args.no_naive and k > 0:
            start = batch["latent_start"]
            naive_forward = sum(forward_flops(dims, start + j, 0, start + j) for j in range(k)) * B + forward
            fns[f"naive@k={k}"] = common.train_step(lambda b=batch: naive_coconut_loss(coconut, b), optimizer, env)
            info[f"naive@k={k}"] = {"method": "naive recompute", "k": k, "tokens": tokens, "flops": train_flops(naive_forward), "ref": f"coconut@k={k}"}

    variants = [v for v in args.variants.split(",") if v]
    if variants:
        n = args.n_latents
        cot_batch = supervised_sequences(
            [e.question_ids + [coconut.ids["<latent>"]] * n for e in encoded], [e.answer_ids for e in encoded], coconut.ids["pad"]
        )
        cot_batch = common.to_device(cot_batch, env.device)
        B, T = cot_batch["input_ids"].shape
        tokens = int(cot_batch["attention_mask"].sum())
        fns[f"cot@N_L={n}"] = common.train_step(lambda b=cot_batch: cot_loss(coconut, b), optimizer, env)
        info[f"cot@N_L={n}"] = {"method": "cot (question+N_L+answer)", "k": n, "tokens": tokens, "flops": train_flops(forward_flops(dims, T, 0, T) * B), "ref": None}
        for variant in variants:
            cfg = MethodConfig(name="coprocessor", n_latents=n, coprocessor=CoprocessorConfig(variant=variant))
            method, _, _ = common.build(args, env, cfg, examples, backbone=copy.deepcopy(pristine))
            method.train()
            batch = common.to_device(method.collate(encoded), env.device)
            q_len, a_len = batch["question_ids"].shape[1], batch["answer_ids"].shape[1]
            flops = B * method.three_pass_flops(q_len, a_len, method.lead_in_length + a_len)  # the head on every lead-in and answer position
            fns[f"coprocessor-{variant}"] = common.train_step(lambda m=method, b=batch: m.loss(b), common.adamw(method, env), env)
            info[f"coprocessor-{variant}"] = {"method": f"coprocessor {variant}", "k": n, "tokens": tokens, "flops": train_flops(flops), "ref": f"cot@N_L={n}"}

    print(f"timing {len(fns)} steps x {args.repeats} repeats (interleaved) ...")
    times = common.time_interleaved(fns, env.device, args.repeats, args.warmup)
    rows = []
    for name, fn in fns.items():
        row = {"name": name, **info[name], **times[name]}
        row["ms"] = 1000 * row["median_s"]
        row["tokens/s"] = row["tokens"] / row["median_s"]
        row["peak_mb"] = common.peak_memory(fn, env.device)["peak_mb"]
        row["mfu"] = common.mfu(row["flops"], row["median_s"], env.device)
        row["ratio"], row["ratio_min"] = common.ratios(times, name, row["ref"]) if row["ref"] else (None, None)
        rows.append(row)

    summary: dict[str, Any] = dict(checks)
    kmax = max(ks)
    if f"coconut@k={kmax}" in times:
        ratio, ratio_min = common.ratios(times, f"coconut@k={kmax}", f"cot@k={kmax}")
        summary[f"coconut / cot step at k={kmax} (median)"] = ratio
        summary[f"coconut / cot step at k={kmax} (min)"] = ratio_min
        if kmax == 6:
            summary[f"target coconut / cot <= {TARGET_RATIO_K6}"] = "met" if ratio <= TARGET_RATIO_K6 else "MISSED"
            if f"reference@k={kmax}" in times:
                speedup = common.ratios(times, f"reference@k={kmax}", f"coconut@k={kmax}")[0]
                summary[f"target reference / coconut >= {TARGET_REFERENCE_K6}"] = "met" if speedup >= TARGET_REFERENCE_K6 else "MISSED"
    for k in ks:
        for side in ("reference", "reference-vec"):
            if f"{side}@k={k}" in times:
                summary[f"{side} / coconut step at k={k} (median, min)"] = "%.2f, %.2f" % common.ratios(times, f"{side}@k={k}", f"coconut@k={k}")
        if f"naive@k={k}" in times:
            summary[f"naive / coconut step at k={k} (median, min)"] = "%.2f, %.2f" % common.ratios(times, f"naive@k={k}", f"coconut@k={k}")
    summary["how memory is measured"] = common.peak_memory(lambda: None, env.device)["how"]
    columns = ["name", "method", "k", "tokens", "ms", "min_s", "max_s", "tokens/s", "peak_mb", "flops", "mfu", "ref", "ratio", "ratio_min"]
    if args.profile:
        summary["profile"] = "tables below (torch.profiler, 3 steps each, self time)"
    common.report(f"Latent training step, {common.model_label(args)}, batch={args.batch_size}", args, env, rows, columns, summary)
    if args.profile:
        common.profile_tables({name: fns[name] for name in (f"coconut@k={kmax}", f"cot@k={kmax}") if name in fns}, env, args.out)


if __name__ == "__main__":
    main()
