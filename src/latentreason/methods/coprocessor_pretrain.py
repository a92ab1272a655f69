"""Coprocessor pretraining on plain text (Liu et al. 2024): learn to write latents that help the Base
predict the text ahead, for every variant of the Coprocessor (methods/coprocessor.py).

Per sequence x [T], M augmentation points p_1..p_M; at each point the Coprocessor writes N_L latents from
the Base's cache of the prefix x[:p_m], and the Base, reading prefix + latents, predicts the N_A ahead
tokens x[p_m : p_m + N_A]. The Base reads as in fine-tuning (the neutral start, coprocessor.py): the prefix
but its last token, the latents, then x[p_m - 1] re-fed at its own position p_m - 1, which predicts x[p_m];
ahead token x[p_m + j] (position p_m + j) predicts x[p_m + j + 1]. How the latents reach the Base is the
variant's injection:

    liu  (Base frozen)   embeddings: the latents Z are Base inputs at positions p_m .. p_m + N_L - 1
    h1   (Base frozen)   kv: the Coprocessor's per-layer K/V at those positions are appended to the Base's
                         cache of the prefix at every layer
    h2   (both train)    embeddings or kv (method.coprocessor.injection), the Base trained too (fully or
                         through LoRA): the paper's three passes with gradients into both models

`pretrain_loss_sequential` is the definition: for each (row, point) separately the fine-tuning path's own
three passes (coprocessor.py `passes`): 1. the Base caches x[:p_m], 2. the Coprocessor reads that cache and
emits the latents, 3. the Base reads the latents and predicts the N_A ahead tokens. `pretrain_loss`
computes the same loss, and the same gradients, in three batched passes:

    1. Base over the whole sequence once                     -> K/V of x (shared by every point)
    2. Coprocessor over M groups of N_L soft tokens          -> Z, and its K/V at the latent slots
    3. Base over M groups of (N_L latents, x[p_m - 1],       -> logits for every ahead token
       N_A - 1 ahead)  (embeddings), or of (x[p_m - 1],
       N_A - 1 ahead) after the groups' latent K/V (kv)

Passes 2 and 3 put a row's groups into blocks of a few groups (GROUPS_PER_ROW), each block a batch row of
its own with a copy of its sequence's K/V, under a 4-D mask over [sequence K/V | (kv: the block's latent
K/V) | block]: a Coprocessor group sees x[:p_m], a Base group x[:p_m - 1], with kv its own group's latent
K/V, and, causally, its own group only; positions as above. (The last ahead token is not fed: its
prediction would be x[p_m + N_A], outside the target window.)

Why one pass 1 is exact for h2 too, whose Base trains: causal attention makes the K/V of x[:p] in the pass
over all of x equal to those of a pass over x[:p] alone, and autograd sums the gradients that reach the
shared K/V from every point's group, which is what the per-point passes sum. So no multi-pass version is
needed; tests/test_pretrain_variants.py checks loss and gradients (Base, Coprocessor, soft tokens) against
the sequential definition for every variant. N_L = 0 (h2 only: the pretraining regime's no-latent control)
skips pass 2: the Base alone learns the ahead tokens of the same text.

`CoprocessorPretraining` is that loss as a training objective: `latentreason pretrain-coprocessor`, or any
run whose config says `train.objective: pretrain` (a sweep cell), trains it through the one training loop
(training.py, pretraining.py), which this module never imports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latentreason.backbones import body, layer_attention_mask, lm_forward, new_cache
from latentreason.config import MethodConfig
from latentreason.errors import UserInputError
from latentreason.methods.coprocessor import Coprocessor
from latentreason.tasks.base import Example

# ----------------------------------------------------------------------------- masks and positions


def group_mask(points: torch.Tensor, group: int, seq_len: int, model, own_keys: int = 0) -> torch.Tensor:
    """4-D attention mask [B, 1, M*group, seq_len + M*own_keys + M*group] for M groups appended after a
    sequence, optionally after M blocks of `own_keys` keys each (kv injection: every group's latent K/V).

    Group m (its `group` queries) sees sequence keys t < p_m, all of its own `own_keys` block, and, causally,
    its own group's keys. In the form the model's attention takes (backbones.layer_attention_mask: bool for
    sdpa, additive float for eager).
    """
    batch, m = points.shape
    device = points.device
    query_group = torch.arange(m * group, device=device) // group
    query_slot = torch.arange(m * group, device=device) % group
    sees_prefix = torch.arange(seq_len, device=device).view(1, 1, -1) < points[:, query_group].unsqueeze(-1)
    sees_own_keys = query_group.view(-1, 1) == (torch.arange(m * own_keys, device=device) // max(own_keys, 1)).view(1, -1)
    own_group = (query_group.view(-1, 1) == query_group.view(1, -1)) & (query_slot.view(1, -1) <= query_slot.view(-1, 1))
    allowed = torch.cat([sees_prefix, sees_own_keys.expand(batch, -1, -1), own_group.expand(batch, -1, -1)], dim=-1).unsqueeze(1)
    try:
        return layer_attention_mask(model, allowed, torch.float32)
    except UserInputError:
        raise UserInputError(f"coprocessor pretraining needs sdpa or eager attention, not {model.config._attn_implementation!r}") from None


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
    """Batched three-pass computation: logits [B, M, N_A, V] for the ahead tokens of every point, for the
    method's injection (embeddings: liu, h2; kv: h1, h2 with injection kv).

    Passes 2 and 3 split a row's M groups into blocks of `groups_per_row` (0: GROUPS_PER_ROW), each block a
    batch row of its own with a copy of the sequence's K/V. One block of all M groups wastes attention on
    masked-out pairs (a group attends to seq_len + M*group keys, of which only its own group and prefix
    count: at M = 16 that waste costs as much as the layers' matmuls); one group per row wastes copies of
    the sequence K/V instead. Blocks of a few groups balance the two. Every tensor keeps its graph, so the
    Base's gradients (h2) flow through pass 1's shared K/V as well as through pass 3.
    """
    base, coprocessor = method.model, method.coprocessor
    batch, seq_len = x.shape
    m, n = points.shape[1], method.n_latents
    per_row = min(groups_per_row or GROUPS_PER_ROW, m)
    blocks = math.ceil(m / per_row)
    if blocks * per_row != m:  # pad with copies of the last point; their logits are dropped below
        points = torch.cat([points, points[:, -1:].expand(-1, blocks * per_row - m)], dim=1)
    rows = batch * blocks
    block_points = points.reshape(rows, per_row)  # row b*blocks + i: points i*per_row.. of sequence b
    # 1. The Base's K/V of the whole sequence, once; the masks below give each group its prefix of it.
    cache = new_cache(base)
    ones = x.new_ones(batch, seq_len)
    lm_forward(body(base), method.embed(x), ones, torch.arange(seq_len, device=x.device).expand(batch, -1), cache)
    # 2. The Coprocessor over the groups of soft tokens, each attending to its own prefix. Afterwards `own`
    # holds [sequence K/V | the block's latent K/V, group after group] at every layer: kv injection's read.
    own = repeat_cache(cache, coprocessor, blocks)
    z = None
    if n:
        soft = method.soft_tokens.repeat(per_row, 1).unsqueeze(0).expand(rows, -1, -1)
        z = lm_forward(body(coprocessor), soft, group_mask(block_points, n, seq_len, coprocessor),
                       group_positions(block_points, n), own).last_hidden_state
    # 3. The Base per group: x[p - 1] re-fed at its own position, then the ahead tokens but the last, after
    # the sequence's K/V but x[p - 1]'s (the neutral start of fine-tuning, with x[:p] as the question), and
    # after the latents: as inputs before x[p - 1] (embeddings) or as the group's latent K/V (kv).
    fed = method.embed(ahead_targets(x, points - 1, ahead)).view(rows, per_row, ahead, -1)  # x[p - 1 : p + N_A - 1]
    fed_positions = group_positions(block_points - 1, ahead).view(rows, per_row, ahead)
    if method.injection == "kv":
        mask = group_mask(block_points - 1, ahead, seq_len, base, own_keys=n)
        logits = lm_forward(base, fed.flatten(1, 2), mask, fed_positions.flatten(1), own).logits
        return logits.view(batch, blocks * per_row, ahead, -1)[:, :m]
    latents = fed.new_zeros(rows, per_row, 0, fed.shape[-1]) if z is None else method.scaled(z).view(rows, per_row, n, -1)
    group = n + ahead
    embeds = torch.cat([latents, fed], dim=2).flatten(1, 2)
    latent_positions = group_positions(block_points, n).view(rows, per_row, n)
    positions = torch.cat([latent_positions, fed_positions], dim=2).flatten(1)
    seq_cache = repeat_cache(cache, base, blocks) if blocks > 1 else cache
    logits = lm_forward(base, embeds, group_mask(block_points - 1, group, seq_len, base), positions, seq_cache).logits
    return logits.view(batch, blocks * per_row, group, -1)[:, :m, n:]


GROUPS_PER_ROW = 4
"""Default block size of pretrain_logits. CPU, tiny model, M = 16 (one loaded-machine run, medians of 5):
1 group per row 0.23 s/step, 2: 0.17, 4: 0.16, 8: 0.16, all 16 in one row 0.18 (docs/LOG.md, 2026-12-01)."""


def pretrain_loss(method: Coprocessor, x: torch.Tensor, points: torch.Tensor, ahead: int, groups_per_row: int = 0) -> torch.Tensor:
    """Mean cross-entropy of the ahead tokens given prefix + latents (the efficient, masked computation)."""
    logits = pretrain_logits(method, x, points, ahead, groups_per_row)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ahead_targets(x, points, ahead).reshape(-1))


def pretrain_loss_sequential(method: Coprocessor, x: torch.Tensor, points: torch.Tensor, ahead: int) -> torch.Tensor:
    """The definition: each (row, point) separately through the fine-tuning path's passes, with x[:p] as
    the question and the ahead tokens as the answer."""
    total = x.new_zeros((), dtype=torch.float32)
    for row in range(x.shape[0]):
        for p in points[row].tolist():
            prefix = x[row: row + 1, :p]
            read, _ = method.passes(prefix, torch.ones_like(prefix))
            fed = x[row: row + 1, p: p + ahead - 1]
            embeds = torch.cat([read.embeds, method.embed(fed)], dim=1)
            mask = torch.cat([read.mask, torch.ones_like(fed)], dim=1)
            positions = torch.cat([read.positions, p + torch.arange(fed.shape[1], device=x.device).view(1, -1)], dim=1)
            logits = lm_forward(method.model, embeds, mask, positions, read.cache).logits[0, read.embeds.shape[1] - 1:]
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


def corpus_text(source: str, examples) -> list[str]:
    """Documents to pretrain on (method.coprocessor.pretrain_corpus): a text file's paragraphs, or each task
    example written out in full."""
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


# ----------------------------------------------------------------------------- the objective


def check_pretraining_config(config: MethodConfig) -> None:
    """Pretraining trains a `coprocessor` method, of any variant (its run dir then initialises fine-tuning
    runs of that variant); N_L = 0 only where the method allows it (h2: the no-latent control)."""
    if config.name != Coprocessor.name:
        raise UserInputError(f"pretraining trains the Base + Coprocessor: it needs method.name=coprocessor, got method.name={config.name}")


@torch.no_grad()
def perplexities(method: Coprocessor, chunks: torch.Tensor, points: torch.Tensor, ahead: int, batch_size: int) -> dict[str, float]:
    """Ahead-token perplexity with latents (Coprocessor) and without (Base alone) on fixed points."""
    sums = {"with_latents": 0.0, "without_latents": 0.0}
    for start in range(0, len(chunks), batch_size):
        x, p = chunks[start: start + batch_size], points[start: start + batch_size]
        sums["with_latents"] += float(pretrain_loss(method, x, p, ahead)) * len(x)
        sums["without_latents"] += float(no_latent_loss(method, x, p, ahead)) * len(x)
    return {f"ppl_{k}": math.exp(v / len(chunks)) for k, v in sums.items()}


class CoprocessorPretraining(nn.Module):
    """Coprocessor pretraining as a training objective (training.Objective): the one training loop trains it
    like a method, over packed text sequences instead of task examples.

    Its items are row indices into the packed training text; `collate` stacks those rows with their
    augmentation points, `forward` is `pretrain_loss`. The points of epoch e are drawn for every row from a
    generator seeded by (train.seed, e) alone, so a resumed run draws what an uninterrupted one would. What
    trains is what the variant trains in fine-tuning: the Coprocessor and its soft tokens over a frozen Base
    (liu, h1), and the Base too (h2, fully or its LoRA adapters). The trained weights are the Coprocessor
    method's own (`self.method`): its model.safetensors is the `train.init_from` of a fine-tuning run.
    """

    name = "coprocessor pretraining"

    def __init__(self, method: Coprocessor, train_examples: Sequence[Example], eval_examples: Sequence[Example], seed: int, batch_size: int):
        """`train_examples` / `eval_examples`: the task's splits, the text to pack unless method.coprocessor.
        pretrain_corpus names a text file; `batch_size`: of the perplexity measurements."""
        super().__init__()
        check_pretraining_config(method.config)
        cc = method.config.coprocessor
        self.method = method
        self.seq_len, self.points, self.ahead = cc.pretrain_seq_len, cc.pretrain_points, cc.pretrain_ahead
        self.corpus, self.seed, self.batch_size = cc.pretrain_corpus, seed, batch_size
        # Plain tensors, not buffers: they stay out of the state dict and the checkpoints.
        self.train_text = pack(method.tokenizer, corpus_text(cc.pretrain_corpus, train_examples), self.seq_len)
        self.eval_text = pack(method.tokenizer, corpus_text(cc.pretrain_corpus, eval_examples), self.seq_len)
        self.eval_points = sample_points(len(self.eval_text), self.seq_len, self.points, self.ahead, torch.Generator().manual_seed(seed + 1))
        self.epoch_points: torch.Tensor | None = None
        """Points of the current epoch's rows (set_epoch draws them)."""

    def items(self) -> list[int]:
        """What the loop shuffles and batches: the rows of the packed training text."""
        return list(range(len(self.train_text)))

    def draw_points(self, epoch: int) -> torch.Tensor:
        """Augmentation points [rows, M] of every training row for epoch `epoch`."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return sample_points(len(self.train_text), self.seq_len, self.points, self.ahead, generator)

    def set_epoch(self, epoch: int) -> bool:
        self.epoch_points = self.draw_points(epoch)
        return False  # no curriculum: the optimizer keeps its moments

    def collate(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        assert self.epoch_points is not None, "set_epoch() draws the points before the first batch"
        index = torch.tensor(list(rows), dtype=torch.long)
        return {"text_ids": self.train_text[index], "points": self.epoch_points[index]}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pretrain_loss(self.method, batch["text_ids"], batch["points"], self.ahead)

    def measure(self) -> dict[str, float]:
        """Ahead-token perplexities with and without latents on the eval text's fixed points (dropout off)."""
        training, device = self.training, self.method.device
        self.eval()
        try:
            return perplexities(self.method, self.eval_text.to(device), self.eval_points.to(device), self.ahead, self.batch_size)
        finally:
            self.train(training)

    def facts(self) -> dict:
        return {"train_sequences": len(self.train_text), "eval_sequences": len(self.eval_text), "seq_len": self.seq_len,
                "points": self.points, "ahead": self.ahead, "n_latents": self.method.n_latents, "corpus": self.corpus,
                "variant": self.method.variant, "injection": self.method.injection,
                **{f"params_{k}": v for k, v in self.method.parameter_counts().items()}}
