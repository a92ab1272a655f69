"""Coprocessor pretraining on plain text (Liu et al. 2024): learn to write latents that help a frozen Base
predict the text ahead.

Per sequence x [T], M augmentation points p_1..p_M; at each point the Coprocessor writes N_L latents from
the Base's cache of the prefix x[:p_m], and the Base, reading prefix + latents, predicts the N_A ahead
tokens x[p_m : p_m + N_A] (the last latent predicts x[p_m], ahead token x[p_m + j] predicts x[p_m + j + 1]).

`pretrain_loss_sequential` is the definition (one point at a time, the fine-tuning path's own passes);
`pretrain_loss` computes the same thing in three batched passes:

    1. Base over the whole sequence once                     -> K/V of x (shared by every point)
    2. Coprocessor over M groups of N_L soft tokens          -> Z for every point
    3. Base over M groups of (N_L latents + N_A - 1 ahead)   -> logits for every ahead token

Passes 2 and 3 put a row's groups into blocks of a few groups (GROUPS_PER_ROW), each block a batch row of
its own with a copy of its sequence's K/V, under a 4-D mask over [sequence K/V | block]: a group sees
x[:p_m] and, causally, its own group only; its position ids continue from p_m. (The last ahead token is not fed: its prediction would be
x[p_m + N_A], outside the target window.) The Base is frozen here as in Liu et al.; the Coprocessor and
its soft tokens train.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from latentreason.backbones import body, lm_forward, new_cache
from latentreason.config import RunConfig, save_config
from latentreason.errors import UserInputError
from latentreason.methods.coprocessor import Coprocessor

# ----------------------------------------------------------------------------- masks and positions


def group_mask(points: torch.Tensor, group: int, seq_len: int, model) -> torch.Tensor:
    """4-D attention mask [B, 1, M*group, seq_len + M*group] for M groups appended after a sequence.

    Group m (its `group` queries) sees sequence keys t < p_m and, causally, its own group's keys.
    Bool (True = attend) for sdpa; additive float for eager attention (which adds the mask to scores).
    """
    batch, m = points.shape
    device = points.device
    query_group = torch.arange(m * group, device=device) // group
    query_slot = torch.arange(m * group, device=device) % group
    sees_prefix = torch.arange(seq_len, device=device).view(1, 1, -1) < points[:, query_group].unsqueeze(-1)
    own_group = (query_group.view(-1, 1) == query_group.view(1, -1)) & (query_slot.view(1, -1) <= query_slot.view(-1, 1))
    allowed = torch.cat([sees_prefix, own_group.expand(batch, -1, -1)], dim=-1).unsqueeze(1)
    implementation = model.config._attn_implementation
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    raise UserInputError(f"coprocessor pretraining needs sdpa or eager attention, not {implementation!r}")


def group_positions(points: torch.Tensor, group: int) -> torch.Tensor:
    """Position ids [B, M*group]: group m continues the sequence at p_m, p_m + 1, ..."""
    slots = torch.arange(group, device=points.device)
    return (points.unsqueeze(-1) + slots).flatten(1)


def sample_points(batch: int, seq_len: int, m: int, ahead: int, generator: torch.Generator) -> torch.Tensor:
    """M distinct augmentation points per row in [1, seq_len - ahead], sorted: [B, M] (long)."""
    candidates = seq_len - ahead
    if candidates < m:
        raise UserInputError(f"pretrain_seq_len={seq_len} leaves {candidates} points for pretrain_points={m} with pretrain_ahead={ahead}")
    order = torch.rand(batch, candidates, generator=generator).argsort(dim=1)[:, :m]
    return (order + 1).sort(dim=1).values


# ----------------------------------------------------------------------------- losses


def ahead_targets(x: torch.Tensor, points: torch.Tensor, ahead: int) -> torch.Tensor:
    """x[p_m : p_m + N_A] for every point: [B, M, N_A]."""
    index = points.unsqueeze(-1) + torch.arange(ahead, device=x.device)
    return x.gather(1, index.flatten(1)).view(*points.shape, ahead)


def repeat_cache(cache, model, times: int):
    """A fresh DynamicCache whose every row is `cache`'s row repeated `times` times along the batch
    ([B, ...] -> [B*times, ...], row b*times + m is a copy of row b): one copy per augmentation point."""
    fresh = new_cache(model)
    for index, layer in enumerate(cache.layers):
        fresh.update(layer.keys.repeat_interleave(times, 0), layer.values.repeat_interleave(times, 0), index)
    return fresh


def pretrain_logits(method: Coprocessor, x: torch.Tensor, points: torch.Tensor, ahead: int, groups_per_row: int = 0) -> torch.Tensor:
    """Batched three-pass computation: logits [B, M, N_A, V] for the ahead tokens of every point.

    Passes 2 and 3 split a row's M groups into blocks of `groups_per_row` (0: GROUPS_PER_ROW), each block a
    batch row of its own with a copy of the sequence's K/V. One block of all M groups wastes attention on
    masked-out pairs (a group attends to seq_len + M*group keys, of which only its own group and prefix
    count: at M = 16 that waste costs as much as the layers' matmuls); one group per row wastes copies of
    the sequence K/V instead. Blocks of a few groups balance the two.
    """
    base, coprocessor = method.model, method.coprocessor
    batch, seq_len = x.shape
    m, n = points.shape[1], method.n_latents
    per_row = min(groups_per_row or GROUPS_PER_ROW, m)
    blocks = math.ceil(m / per_row)
    if blocks * per_row != m:  # pad with copies of the last point; their logits are dropped below
        points = torch.cat([points, points[:, -1:].expand(-1, blocks * per_row - m)], dim=1)
    block_points = points.reshape(batch * blocks, per_row)  # row b*blocks + i: points i*per_row.. of sequence b
    # 1. The Base's K/V of the whole sequence, once; the mask below gives each group its prefix of it.
    cache = new_cache(base)
    ones = x.new_ones(batch, seq_len)
    lm_forward(body(base), method.embed(x), ones, torch.arange(seq_len, device=x.device).expand(batch, -1), cache)
    # 2. The Coprocessor over the groups of soft tokens, each attending to its own prefix.
    soft = method.soft_tokens.repeat(per_row, 1).unsqueeze(0).expand(batch * blocks, -1, -1)
    own = repeat_cache(cache, coprocessor, blocks)
    z = lm_forward(body(coprocessor), soft, group_mask(block_points, n, seq_len, coprocessor), group_positions(block_points, n), own).last_hidden_state
    # 3. The Base over (latents, ahead tokens but the last) per group, after the sequence's K/V.
    group = n + ahead - 1
    fed = method.embed(ahead_targets(x, points, ahead)[:, :, :-1]).view(batch * blocks, per_row, ahead - 1, -1)
    embeds = torch.cat([z.view(batch * blocks, per_row, n, -1), fed], dim=2).flatten(1, 2)
    seq_cache = repeat_cache(cache, base, blocks) if blocks > 1 else cache
    logits = lm_forward(base, embeds, group_mask(block_points, group, seq_len, base), group_positions(block_points, group), seq_cache).logits
    return logits.view(batch, blocks * per_row, group, -1)[:, :m, n - 1:]


GROUPS_PER_ROW = 4
"""Default block size of pretrain_logits. CPU, tiny model, M = 16 (one loaded-machine run, medians of 5):
1 group per row 0.23 s/step, 2: 0.17, 4: 0.16, 8: 0.16, all 16 in one row 0.18 (docs/LOG.md, 2026-12-01)."""


def pretrain_loss(method: Coprocessor, x: torch.Tensor, points: torch.Tensor, ahead: int, groups_per_row: int = 0) -> torch.Tensor:
    """Mean cross-entropy of the ahead tokens given prefix + latents (the efficient, masked computation)."""
    logits = pretrain_logits(method, x, points, ahead, groups_per_row)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ahead_targets(x, points, ahead).reshape(-1))


def pretrain_loss_sequential(method: Coprocessor, x: torch.Tensor, points: torch.Tensor, ahead: int) -> torch.Tensor:
    """The definition: each (row, point) separately through the fine-tuning path's passes."""
    n = method.n_latents
    total = x.new_zeros((), dtype=torch.float32)
    for row in range(x.shape[0]):
        for p in points[row].tolist():
            prefix = x[row: row + 1, :p]
            prefix_mask = torch.ones_like(prefix)
            cache = method.question_cache(prefix, prefix_mask)
            z, _ = method.latents(cache, prefix_mask)
            embeds = torch.cat([z, method.embed(x[row: row + 1, p: p + ahead - 1])], dim=1)
            mask = torch.ones(1, p + embeds.shape[1], dtype=torch.long, device=x.device)
            positions = torch.arange(p, p + embeds.shape[1], device=x.device).view(1, -1)
            logits = lm_forward(method.model, embeds, mask, positions, cache).logits[0, n - 1:]
            total = total + F.cross_entropy(logits.float(), x[row, p: p + ahead], reduction="sum")
    return total / points.numel() / ahead


def no_latent_loss(method: Coprocessor, x: torch.Tensor, points: torch.Tensor, ahead: int) -> torch.Tensor:
    """Mean cross-entropy of the same ahead tokens predicted by the Base right after the prefix."""
    batch, seq_len = x.shape
    positions = torch.arange(seq_len, device=x.device).expand(batch, -1)
    logits = lm_forward(method.model, method.embed(x), x.new_ones(batch, seq_len), positions).logits
    index = (points.unsqueeze(-1) - 1 + torch.arange(ahead, device=x.device)).flatten(1)  # position before each target
    picked = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return F.cross_entropy(picked.reshape(-1, logits.shape[-1]).float(), ahead_targets(x, points, ahead).reshape(-1))


# ----------------------------------------------------------------------------- corpus


def corpus_text(cfg: RunConfig, examples) -> list[str]:
    """Documents to pretrain on: a text file's paragraphs, or each task example written out in full."""
    source = cfg.method.coprocessor.pretrain_corpus
    if source == "task":
        return ["\n".join([e.question, *e.steps, "### " + e.answer]) for e in examples]
    path = Path(source)
    if not path.is_file():
        raise UserInputError("method.coprocessor.pretrain_corpus: expected `task` or a text file", path=source)
    return [p for p in path.read_text(errors="replace").split("\n\n") if p.strip()]


def pack(tokenizer, documents: list[str], seq_len: int) -> torch.Tensor:
    """Tokenise documents, join them with eos and cut into [n, seq_len] rows (the tail is dropped)."""
    ids: list[int] = []
    for document in documents:
        ids += tokenizer(document, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    rows = len(ids) // seq_len
    if rows == 0:
        raise UserInputError(f"pretraining corpus has {len(ids)} tokens, fewer than one sequence of {seq_len}")
    return torch.tensor(ids[: rows * seq_len]).view(rows, seq_len)


# ----------------------------------------------------------------------------- the run


@torch.no_grad()
def perplexities(method: Coprocessor, chunks: torch.Tensor, points: torch.Tensor, ahead: int, batch_size: int) -> dict[str, float]:
    """Ahead-token perplexity with latents (Coprocessor) and without (Base alone) on fixed points."""
    sums = {"with_latents": 0.0, "without_latents": 0.0}
    for start in range(0, len(chunks), batch_size):
        x, p = chunks[start: start + batch_size], points[start: start + batch_size]
        sums["with_latents"] += float(pretrain_loss(method, x, p, ahead)) * len(x)
        sums["without_latents"] += float(no_latent_loss(method, x, p, ahead)) * len(x)
    return {f"ppl_{k}": math.exp(v / len(chunks)) for k, v in sums.items()}


def pretrain_coprocessor(cfg: RunConfig, progress: bool = True) -> dict:
    """Pretrain the Coprocessor (+ soft tokens) of a `coprocessor` method with variant `liu` on plain text.

    The Base comes from `train.init_from` (e.g. a No-CoT run) and stays frozen. Uses train.lr,
    weight_decay, warmup_steps, max_grad_norm, batch_size, seed, and train.max_steps (or train.epochs over
    the packed corpus); method.n_latents and method.coprocessor.pretrain_*. Writes config.yaml,
    tokenizer/, metrics.jsonl, model.safetensors (the whole method: `train.init_from` of a later fine-tuning run)
    and pretrain.json / done.json with ahead-token perplexities with/without latents, before and after.
    """
    from latentreason.run_checks import warn_random_frozen_base
    from latentreason.checkpoint import WEIGHTS_FILE, save_weights
    from latentreason.training import build_run, lr_factor

    out = Path(cfg.out_dir)
    if (out / "done.json").exists():
        raise UserInputError("this run already finished; choose a new out_dir (nothing was overwritten)", path=str(out))
    cc, tc = cfg.method.coprocessor, cfg.train
    if cfg.method.name != "coprocessor" or cc.variant != "liu":
        raise UserInputError("pretraining needs method.name=coprocessor and method.coprocessor.variant=liu (the checkpoint then initialises any variant)")
    if cc.pretrain_ahead < 1 or cc.pretrain_points < 1:
        raise UserInputError("method.coprocessor.pretrain_points and pretrain_ahead must be >= 1")
    warn_random_frozen_base(cfg)
    run = build_run(cfg, out)
    method = run.method
    assert isinstance(method, Coprocessor)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    method.to(device)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    method.tokenizer.save_pretrained(str(out / "tokenizer"))

    seq_len, m, ahead = cc.pretrain_seq_len, cc.pretrain_points, cc.pretrain_ahead
    train_chunks = pack(method.tokenizer, corpus_text(cfg, [e.example for e in run.train_set]), seq_len).to(device)
    eval_chunks = pack(method.tokenizer, corpus_text(cfg, [e.example for e in run.eval_set]), seq_len).to(device)
    generator = torch.Generator().manual_seed(tc.seed)
    eval_points = sample_points(len(eval_chunks), seq_len, m, ahead, torch.Generator().manual_seed(tc.seed + 1)).to(device)

    method.model.requires_grad_(False)
    trainable = [p for p in [*method.coprocessor.parameters(), method.soft_tokens] if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95))
    per_epoch = max(1, len(train_chunks) // tc.batch_size)
    total_steps = tc.max_steps if tc.max_steps > 0 else per_epoch * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc.warmup_steps, total_steps))

    method.eval()  # dropout off in the before/after measurements
    before = perplexities(method, eval_chunks, eval_points, ahead, tc.batch_size)
    method.train()
    began = time.perf_counter()
    with open(out / "metrics.jsonl", "w") as metrics:
        for step in tqdm(range(total_steps), desc="pretrain coprocessor", disable=not progress):
            if step % per_epoch == 0:
                order = torch.randperm(len(train_chunks), generator=generator)
            rows = order[(step % per_epoch) * tc.batch_size: (step % per_epoch + 1) * tc.batch_size].to(device)
            x = train_chunks[rows]
            points = sample_points(len(x), seq_len, m, ahead, generator).to(device)
            loss = pretrain_loss(method, x, points, ahead)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, tc.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if (step + 1) % tc.log_every == 0 or step + 1 == total_steps:
                metrics.write(json.dumps({"step": step + 1, "loss": loss.item(), "grad_norm": float(grad_norm),
                                          "lr": scheduler.get_last_lr()[0], "elapsed_s": time.perf_counter() - began}) + "\n")
                metrics.flush()
    method.eval()
    after = perplexities(method, eval_chunks, eval_points, ahead, tc.batch_size)
    save_weights(method.state_dict(), out / WEIGHTS_FILE)
    summary = {
        "steps": total_steps, "train_seconds": time.perf_counter() - began, "train_sequences": len(train_chunks),
        "eval_sequences": len(eval_chunks), "seq_len": seq_len, "points": m, "ahead": ahead, "n_latents": method.n_latents,
        "corpus": cc.pretrain_corpus, "before": before, "after": after,
        **{f"params_{k}": v for k, v in method.parameter_counts().items()},
    }
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2))
    (out / "done.json").write_text(json.dumps(summary, indent=2))
    return summary
