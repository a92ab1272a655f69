"""Coconut training step: LM head on every pass (the reference way) vs on the final pass only (ours).

Only the final pass's logits are read (by the loss and by decoding), so `Coconut.continuous_forward` runs
the passes before it through the decoder stack without the LM head. The cost of the skipped head grows
with the vocabulary: with the offline task tokenizer (~1k tokens) it is noise, with SmolLM2's 49,152 or
GPT-2's 50,257 it is not. `--vocab-size` widens the embedding and LM head to a realistic vocabulary
(`resize_token_embeddings`; the examples still use the task tokens), so the measurement needs no download.

- lean:       coconut.loss (head on the final pass only)
- all_logits: the same loss from continuous_forward(all_logits=True) (head on every pass)

Both sides are full training steps (forward, backward, AdamW) on the same batch; losses are checked to agree.
The saving is forward-only (unused logits get no backward) plus the memory of the [B, T, V] logits kept
until the step ends, so it is largest when most of the sequence lies before the last latent (large k).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import common
from latentreason.config import CoconutConfig, MethodConfig
from latentreason.methods.base import causal_lm_loss


def all_logits_loss(method, batch: dict[str, Any]) -> torch.Tensor:
    out = method.continuous_forward(batch, all_logits=True)
    final = out.logits[-1]
    return causal_lm_loss(final, batch["labels"][:, -final.shape[1]:])


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ks", default="2,6", help="comma-separated latent counts (multiples of 2)")
    p.add_argument("--vocab-sizes", default="0,49152", help="comma-separated; 0 keeps the task tokenizer's vocabulary")
    args = p.parse_args()
    env = common.setup(args)
    ks = [int(k) for k in args.ks.split(",") if k]
    examples = common.countdown_data(args.batch_size)
    cfg = MethodConfig(name="coconut", n_latents=max(ks), coconut=CoconutConfig(thoughts_per_step=2, pad_latent_to_max=True))

    fns: dict[str, Callable[[], None]] = {}
    info: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {}
    for vocab in [int(v) for v in args.vocab_sizes.split(",") if v]:
        method, encoded, backbone = common.build(args, env, cfg, examples)
        if vocab:
            method.model.resize_token_embeddings(vocab)
        vocab = method.model.get_output_embeddings().weight.shape[0]
        method.train()
        optimizer = common.adamw(method, env)
        for k in ks:
            method.stage = k // 2
            batch = common.to_device(method.collate(encoded), env.device)
            with torch.no_grad():
                summary[f"V={vocab}, k={k}: |lean - all_logits| loss"] = abs(float(method.loss(batch)) - float(all_logits_loss(method, batch)))
            head_skipped = batch["input_ids"].shape[0] * (batch["latent_start"] + k - 1)  # positions before the final pass
            for side, fn in (("lean", lambda b=batch, m=method: m.loss(b)), ("all_logits", lambda b=batch, m=method: all_logits_loss(m, b))):
                name = f"{side}@V={vocab},k={k}"
                fns[name] = common.train_step(fn, optimizer, env)
                info[name] = {"side": side, "vocab": vocab, "k": k, "tokens": int(batch["attention_mask"].sum()),
                              "head_positions_skipped": head_skipped if side == "lean" else 0}

    print(f"timing {len(fns)} steps x {args.repeats} repeats (interleaved) ...")
    times = common.time_interleaved(fns, env.device, args.repeats, args.warmup)
    rows = []
    for name, fn in fns.items():
        t, row = times[name], info[name]
        rows.append({"name": name, **row, "ms": 1000 * t["median_s"], "min_s": t["min_s"], "max_s": t["max_s"]})
        if row["side"] == "lean":
            other = name.replace("lean@", "all_logits@")
            speedup, speedup_min = common.ratios(times, other, name)
            rows[-1]["speedup"] = speedup
            summary[f"V={row['vocab']}, k={row['k']}: all_logits / lean step (median, min)"] = f"{speedup:.2f}, {speedup_min:.2f}"
    columns = ["name", "side", "vocab", "k", "tokens", "head_positions_skipped", "ms", "min_s", "max_s", "speedup"]
    common.report(f"Coconut step, LM head on every pass vs the final pass only, {common.model_label(args)}, batch={args.batch_size}",
                  args, env, rows, columns, summary)


if __name__ == "__main__":
    main()
