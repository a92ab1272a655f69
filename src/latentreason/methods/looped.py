"""Ouro-style looped LM: one HF decoder's layer stack applied T times with shared weights, an exit gate
after every loop, the entropy-regularised expected loss, and Q-exit decoding that really stops computing.

    h_0 = embed(x)                                   (GPT-2: + wpe; no re-injection between loops)
    h_t = layers(s_{t-1}),  s_t = norm(h_t) if loop_norm else h_t     t = 1..T
    logits_t = head(norm(h_t)),  lambda_t = sigmoid(gate(norm(h_t)))
    p(t) = lambda_t * prod_{j<t} (1 - lambda_j)  (t < T),   p(T) = prod_{j<T} (1 - lambda_j)

Stage I loss per target token: sum_t p(t) CE_t - beta H(p). Stage II freezes the model and trains the gate
alone with a BCE target from each next loop's loss improvement. Decoding exits a token at the first loop
whose CDF reaches q; deeper loops then run only on the sub-batch of rows still active.

KV cache: loop t has its own K/V (one `LoopKV` per loop: preallocated K/V buffers over the n_layer shared layers plus
per-(row, column) `valid` and `pos`), so attention masks are built from positions, not column order. That
lets a loop's cache hold rows computed at different times, which the three policies for exited positions
need (`kv_policy`):
    reuse      an exited token's entries in deeper loops are copies of its last computed loop's K/V;
    per_loop   deeper loops simply lack the entry (masked out);
    recompute  deeper loops lack it until a later token of the same row reaches that loop: the position is
               then deepened (run through that loop from its saved state) in the same call, so its K/V are
               exactly those of running all loops. Only the exited token's own output is saved work.
The prompt (prefill) always runs all T loops for every position; Q-exit applies from the first generated
token on (its logits come from the exit loop of the last prompt position). Rows that emitted eos leave the
batch (every loop's cache drops them: `decode(compact=True)`), so a finished row costs nothing afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from latentreason.backbones import Backbone, decoder_parts, layer_attention_mask
from latentreason.config import MethodConfig
from latentreason.errors import UserInputError
from latentreason.flops import decode_flops, forward_flops, head_flops, stack_flops
from latentreason.methods.base import Generation, LatentMethod
from latentreason.methods.loop_kv import LoopKV, RowsView  # noqa: F401  (LoopKV re-exported for tests)
from latentreason.tokenization import EncodedExample, positions_from_mask, supervised_sequences

KV_POLICIES = ("reuse", "per_loop", "recompute")


def exit_distribution(lambdas: torch.Tensor) -> torch.Tensor:
    """p(t), t = 1..T, from the T-1 exit probabilities stacked on dim 0 ([T-1, ...] -> [T, ...])."""
    if lambdas.shape[0] == 0:
        return torch.ones(1, *lambdas.shape[1:], dtype=lambdas.dtype, device=lambdas.device)
    survive = torch.cumprod(1 - lambdas, dim=0)  # prod_{j<=t} (1 - lambda_j)
    alive_before = torch.cat([torch.ones_like(survive[:1]), survive[:-1]], dim=0)
    return torch.cat([lambdas * alive_before, survive[-1:]], dim=0)


def expected_loss(p: torch.Tensor, ce: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token stage-I objective sum_t p(t) CE_t - beta H(p) (p, ce: [T, ...] -> [...])."""
    entropy = -torch.special.xlogy(p, p).sum(0)
    return (p * ce).sum(0) - beta * entropy


def gate_targets(ce: torch.Tensor, threshold: float, slope: float) -> torch.Tensor:
    """Stage II: target exit probability for the gates after loops 1..T-1 ([T, ...] -> [T-1, ...]).

    The gate after loop t decides whether loop t+1 is worth running, so its "continue" target is
    sigmoid(slope * (max(0, CE_t - CE_{t+1}) - threshold)) (Ouro's improvement of the loop it would pay for).
    """
    improvement = (ce[:-1] - ce[1:]).clamp(min=0)
    return 1 - torch.sigmoid(slope * (improvement - threshold))


# ----------------------------------------------------------------------------- the method


@dataclass
class Decoded:
    """Everything one batched Q-exit decode produced (generate() turns it into a Generation)."""

    tokens: list[list[int]]
    step_logits: list[torch.Tensor] = field(default_factory=list)
    """[B, V] logits each step emitted its token from (the exit loop's), first from the prefill."""
    exit_loops: list[list[int]] = field(default_factory=list)
    """Per row, the exit loop of every emitted token (up to and including eos)."""
    loops_run: list[int] = field(default_factory=list)
    """Per row, loop passes executed: T for the prefill plus the loops of each decode step."""
    flops: list[float] = field(default_factory=list)
    all_loops_flops: list[float] = field(default_factory=list)
    """What the same tokens would have cost with all T loops everywhere."""


class Looped(LatentMethod):
    """A looped (universal-transformer-style) LM with a learned exit gate and compute-saving Q-exit."""

    name = "looped"
    multi_pass = True
    traces_normed = False  # per-loop states before the final norm; the logit lens applies it
    identifying_keys = ("method.looped.loops",)
    description = ("Looped LM (Ouro-style): the backbone's layer stack is applied T times with shared weights; an exit gate "
                   "(`gate.*` in `latent_method.safetensors`) decides per token when to stop.")

    @classmethod
    def latent_budget(cls, config: MethodConfig) -> int:
        return config.looped.loops - 1  # the loops beyond the first, as Generation.latent_slots counts them

    @classmethod
    def uses_steps(cls, config: MethodConfig) -> bool:
        return config.looped.use_steps

    @classmethod
    def control_overrides(cls, config: MethodConfig) -> dict[str, Any] | None:
        """The same stack run once (T = 1: no loop beyond the first)."""
        return {"method.looped.loops": 1} if config.looped.loops > 1 else None

    @classmethod
    def trace_slots(cls, config: MethodConfig) -> int:
        return config.looped.loops  # one state per loop, the first included

    def __init__(self, backbone: Backbone, config: MethodConfig):
        super().__init__(backbone, config)
        cfg = config.looped
        if cfg.loops < 1:
            raise UserInputError(f"method.looped.loops={cfg.loops}; expected >= 1")
        if cfg.kv_policy not in KV_POLICIES:
            raise UserInputError(f"method.looped.kv_policy={cfg.kv_policy!r}; expected one of {KV_POLICIES}")
        if cfg.stage not in (1, 2):
            raise UserInputError(f"method.looped.stage={cfg.stage}; expected 1 or 2")
        if not 0 < cfg.exit_q <= 1:
            raise UserInputError(f"method.looped.exit_q={cfg.exit_q}; expected 0 < q <= 1")
        self.cfg = cfg
        self.loops = cfg.loops
        self.parts = decoder_parts(self.model)
        if not self.parts.full_attention:
            raise UserInputError("looped: sliding-window attention layers are not supported")
        self.gate = nn.Linear(self.dims.d_model, 1)
        if cfg.stage == 2:
            self.model.requires_grad_(False)  # stage II: only the gate learns

    # --- the looped stack ---------------------------------------------------------------------------
    def input_states(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """h_0: token embeddings (+ absolute position embeddings for GPT-2), entering loop 1 only."""
        if self.parts.wpe is not None:
            embeds = embeds + self.parts.wpe(positions)
        return self.parts.drop(embeds) if self.parts.drop is not None else embeds

    def next_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What loop t+1 reads: Ouro feeds the normed state (bounded scale however many loops)."""
        return self.parts.norm(hidden) if self.cfg.loop_norm else hidden

    def exit_lambda(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(self.parts.norm(hidden)).squeeze(-1).float())

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.parts.head(self.parts.norm(hidden))

    def run_loop(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        query_valid: torch.Tensor,
        kv: LoopKV | None = None,
        rows: torch.Tensor | None = None,
        fill: LoopKV | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of the layer stack over x [b, n, d] (b = len(rows), or the full batch when rows is None).

        Keys are `kv`'s entries of those rows plus the n new ones; a query attends to valid keys whose
        position is <= its own. Appends the new columns to `kv` (other rows: `fill` or invalid).
        Returns the output states and the per-row number of (valid query, key) pairs attended (for FLOPs).
        """
        key_valid, key_pos = query_valid, query_pos
        if kv is not None and kv.valid.shape[1] > 0:
            past_valid = kv.valid if rows is None else kv.valid.index_select(0, rows)
            past_pos = kv.pos if rows is None else kv.pos.index_select(0, rows)
            key_valid = torch.cat([past_valid, query_valid], dim=1)
            key_pos = torch.cat([past_pos, query_pos], dim=1)
        allowed = key_valid[:, None, :] & (key_pos[:, None, :] <= query_pos[:, :, None])
        pairs = (allowed & query_valid[:, :, None]).sum((1, 2))
        # Padding queries attend everywhere: their outputs are discarded, but a fully masked row would be NaN.
        allowed = (allowed | ~query_valid[:, :, None])[:, None]
        mask = layer_attention_mask(self.model, allowed, x.dtype)
        extra = {}
        if self.parts.rotary is not None:
            extra = {"position_ids": query_pos, "position_embeddings": self.parts.rotary(x, query_pos)}
        view = RowsView(kv, rows, fill) if kv is not None else None
        for layer in self.parts.layers:
            x = layer(x, attention_mask=mask, cache=view, use_cache=view is not None, **extra)
        if kv is not None:
            self._append_bookkeeping(kv, rows, fill, query_valid, query_pos)
        return x, pairs

    @staticmethod
    def _append_bookkeeping(kv: LoopKV, rows: torch.Tensor | None, fill: LoopKV | None, valid: torch.Tensor, pos: torch.Tensor) -> None:
        if rows is not None:
            n = valid.shape[1]
            if fill is not None:
                full_valid, full_pos = fill.valid[:, -n:], fill.pos[:, -n:]
            else:
                full_valid = valid.new_zeros(kv.batch, n)
                full_pos = pos.new_zeros(kv.batch, n)
            valid, pos = full_valid.index_copy(0, rows, valid), full_pos.index_copy(0, rows, pos)
        kv.append_meta(valid, pos)

    def loop_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, caches: list[LoopKV] | None = None
    ) -> list[torch.Tensor]:
        """Raw (pre-norm) outputs h_1..h_T of every loop for full sequences, optionally filling `caches`."""
        valid = attention_mask.bool()
        x = self.input_states(self.embed(input_ids), position_ids)
        states = []
        for t in range(self.loops):
            hidden, _ = self.run_loop(x, position_ids, valid, caches[t] if caches else None)
            states.append(hidden)
            x = self.next_input(hidden)
        return states

    # --- training -------------------------------------------------------------------------------------
    def target_ids(self, example: EncodedExample) -> list[int]:
        steps = [t for step in example.step_ids for t in step] if self.cfg.use_steps else []
        return steps + example.answer_ids

    def collate(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        return supervised_sequences([e.question_ids for e in examples], [self.target_ids(e) for e in examples], self.ids["pad"])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"][:, 1:]
        target = labels != -100

        def per_loop_ce(states: list[torch.Tensor]) -> torch.Tensor:  # [T, B, L-1]
            return torch.stack([
                F.cross_entropy(self.logits(h[:, :-1]).flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none").view_as(labels)
                for h in states
            ])

        if self.cfg.stage == 2:
            with torch.no_grad():  # frozen model: only the gate's inputs, detached
                states = self.loop_states(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
                ce = per_loop_ce(states)
                exit_target = gate_targets(ce, self.cfg.gate_threshold, self.cfg.gate_slope)
            if self.loops == 1:
                return self.gate.weight.sum() * 0.0  # nothing to decide with one loop
            lambdas = torch.stack([self.exit_lambda(h[:, :-1]) for h in states[:-1]])
            bce = F.binary_cross_entropy(lambdas.clamp(1e-6, 1 - 1e-6), exit_target, reduction="none")
            return bce.mean(0)[target].mean()
        states = self.loop_states(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        ce = per_loop_ce(states)
        lambdas = torch.stack([self.exit_lambda(h[:, :-1]) for h in states[:-1]]) if self.loops > 1 else ce[:0]
        p = exit_distribution(lambdas)
        return expected_loss(p, ce, self.cfg.entropy_beta)[target].mean()

    # --- inference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self, examples: Sequence[EncodedExample], max_new_tokens: int, exit_q: float | None = None, kv_policy: str | None = None,
        compact: bool = True,
    ) -> Decoded:
        """Batched greedy decoding with per-token Q-exit; deeper loops run only on rows still active.

        With `compact`, rows that emitted eos leave the batch (every cache drops them), so later steps run
        the smaller batch as a whole; without, they stay and every loop runs the sub-batch of unfinished
        rows (same outputs, more gathering: kept to test the compaction against)."""
        q = self.cfg.exit_q if exit_q is None else exit_q
        policy = self.cfg.kv_policy if kv_policy is None else kv_policy
        if policy not in KV_POLICIES:
            raise UserInputError(f"kv_policy={policy!r}; expected one of {KV_POLICIES}")
        T, device, eos = self.loops, self.device, self.ids["eos"]
        prompts = [e.question_ids for e in examples]
        ids, mask = self.left_padded_prompts(prompts)
        batch = ids.shape[0]
        positions = positions_from_mask(mask)
        caches = [LoopKV(self.model, batch, device) for _ in range(T)]
        flops = torch.zeros(batch, dtype=torch.float64, device=device)
        loops_run = torch.full((batch,), T, dtype=torch.long, device=device)

        # Prefill: all loops for every prompt position (exact K/V in every loop's cache).
        x = self.input_states(self.embed(ids), positions)
        states = []
        for t in range(T):
            hidden, pairs = self.run_loop(x, positions, mask.bool(), caches[t])
            flops += self._loop_flops(mask.sum(1), pairs)
            states.append(hidden[:, -1])
            x = self.next_input(hidden)
        exit_index = self._q_exit(torch.stack([self.exit_lambda(h) for h in states[:-1]]) if T > 1 else None, q, batch)
        exit_hidden = torch.stack(states)[exit_index, torch.arange(batch, device=device)]
        logits = self.logits(exit_hidden)
        flops += self._head_flops()

        pending: list[list[list]] = [[] for _ in range(batch)]  # recompute: per row [pos, depth, state]
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        alive = torch.arange(batch, device=device)  # original row of each row of the (compacted) batch
        next_pos = positions[:, -1] + 1
        emitted, exit_record, step_logits = [], [exit_index + 1], [logits]
        for index in range(max_new_tokens):
            # logits, next_pos, pending and the caches cover the rows in `alive`; the rest is full-batch.
            token = torch.full((batch,), eos, dtype=torch.long, device=device)
            token[alive] = torch.where(finished[alive], eos, logits.argmax(-1))
            emitted.append(token)
            finished = finished | (token == eos)
            if bool(finished.all()) or index == max_new_tokens - 1:
                break
            if compact and bool(finished[alive].any()):
                keep = (~finished[alive]).nonzero().squeeze(1)
                for kv in caches:
                    kv.compact(keep)
                pending = [pending[i] for i in keep.tolist()]
                alive, next_pos = alive[keep], next_pos[keep]
            running = ~finished[alive]
            x0 = self.input_states(self.embed(token[alive].view(-1, 1)), next_pos.view(-1, 1))
            exit_hidden, exit_loop, step_loops, step_flops = self._decode_step(x0[:, 0], next_pos, running, caches, pending, q, policy)
            logits = self.logits(exit_hidden)
            loops_run[alive] += step_loops
            flops[alive] += step_flops + running.double() * self._head_flops()
            exit_record.append(torch.zeros(batch, dtype=torch.long, device=device).index_copy(0, alive, exit_loop))
            step_logits.append(logits.new_zeros(batch, logits.shape[-1]).index_copy(0, alive, logits))
            next_pos = next_pos + 1

        generated = torch.stack(emitted, dim=1).tolist()
        exits = torch.stack(exit_record, dim=1).tolist()
        out = Decoded(tokens=[], step_logits=step_logits)
        for row, seq in enumerate(generated):
            cut = seq.index(eos) if eos in seq else len(seq)
            n_emitted = min(len(seq), cut + 1)
            out.tokens.append(seq[:cut])
            out.exit_loops.append(exits[row][:n_emitted])
            out.all_loops_flops.append(self._all_loops_flops(len(prompts[row]), n_emitted - 1))
        out.loops_run = loops_run.tolist()
        out.flops = flops.tolist()
        return out

    def _decode_step(
        self,
        x_new: torch.Tensor,
        new_pos: torch.Tensor,
        running: torch.Tensor,
        caches: list[LoopKV],
        pending: list[list[list]],
        q: float,
        policy: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new token per running row through loops 1..T with Q-exit. Returns the exit loop's raw
        states [B, d], exit loops [B] (0 for rows not running), loops run [B] and FLOPs [B]."""
        batch, T = x_new.shape[0], self.loops
        exit_hidden = torch.zeros_like(x_new)
        exit_loop = torch.zeros(batch, dtype=torch.long, device=x_new.device)
        loops = torch.zeros(batch, dtype=torch.long, device=x_new.device)
        flops = torch.zeros(batch, dtype=torch.float64, device=x_new.device)
        survive = torch.ones(batch, device=x_new.device)
        active = running.clone()
        x_new = x_new.clone()
        for t in range(T):
            rows = active.nonzero().squeeze(1)
            fill = caches[t - 1] if policy == "reuse" and t > 0 else None
            if rows.numel() == 0:
                if fill is not None:
                    caches[t].append_copy(fill, 1)
                continue
            rows_all = rows.numel() == batch
            chunk_x, chunk_pos, chunk_valid, deepened = self._chunk(x_new, new_pos, rows, pending, t, policy)
            out, pairs = self.run_loop(chunk_x, chunk_pos, chunk_valid, caches[t], None if rows_all else rows, fill)
            flops.index_add_(0, rows, self._loop_flops(chunk_valid.sum(1), pairs))
            loops[rows] += 1
            for (row, column), item in deepened.items():  # recompute: pending positions now reached loop t+1
                item[1], item[2] = t + 1, self.next_input(out[row, column])
            if policy == "recompute":
                for row in rows.tolist():
                    pending[row] = [item for item in pending[row] if item[1] < T]
            hidden = out[:, -1]
            if t < T - 1:
                lam = self.exit_lambda(hidden)
                survive[rows] = survive[rows] * (1 - lam)
                leaving = (1 - survive[rows]) >= q if q < 1 else torch.zeros_like(lam, dtype=torch.bool)
            else:
                leaving = torch.ones(rows.numel(), dtype=torch.bool, device=x_new.device)
            gone = rows[leaving]
            exit_hidden[gone] = hidden[leaving]
            exit_loop[gone] = t + 1
            active[gone] = False
            x_new[rows] = self.next_input(hidden)
            if policy == "recompute" and t < T - 1:
                for row in gone.tolist():
                    pending[row].append([int(new_pos[row]), t + 1, x_new[row]])
        return exit_hidden, exit_loop, loops, flops

    def _chunk(
        self, x_new: torch.Tensor, new_pos: torch.Tensor, rows: torch.Tensor, pending: list[list[list]], t: int, policy: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[tuple[int, int], list]]:
        """Queries of loop t for `rows`: the new token, preceded (recompute) by the row's pending positions
        that stopped at loop t (left-padded to a common length). Also maps (chunk row, column) -> pending item."""
        waiting = [[item for item in pending[row] if item[1] == t] for row in rows.tolist()] if policy == "recompute" else []
        n = 1 + max((len(w) for w in waiting), default=0)
        b = rows.numel()
        chunk_x = x_new.new_zeros(b, n, x_new.shape[-1])
        chunk_pos = new_pos.new_zeros(b, n)
        chunk_valid = torch.zeros(b, n, dtype=torch.bool, device=x_new.device)
        chunk_x[:, -1], chunk_pos[:, -1], chunk_valid[:, -1] = x_new[rows], new_pos[rows], True
        deepened: dict[tuple[int, int], list] = {}
        for i, items in enumerate(waiting):
            for j, item in enumerate(sorted(items, key=lambda it: it[0])):
                column = n - 1 - len(items) + j
                chunk_x[i, column], chunk_pos[i, column], chunk_valid[i, column] = item[2], item[0], True
                deepened[(i, column)] = item
        return chunk_x, chunk_pos, chunk_valid, deepened

    def _q_exit(self, lambdas: torch.Tensor | None, q: float, batch: int) -> torch.Tensor:
        """0-based exit loop: the first t whose CDF reaches q (q >= 1 never exits early; the last loop always)."""
        last = torch.full((batch,), self.loops - 1, dtype=torch.long, device=self.device)
        if lambdas is None or q >= 1:
            return last
        cdf = 1 - torch.cumprod(1 - lambdas, dim=0)  # sum_{j<=t} p(j), computed as in _decode_step
        reached = cdf >= q
        first = reached.float().argmax(0)
        return torch.where(reached.any(0), first, last)

    # --- accounting -----------------------------------------------------------------------------------
    def _loop_flops(self, new_tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """One pass of the stack over each row's new tokens and attended pairs (float64 per row)."""
        return stack_flops(self.dims, new_tokens.double(), pairs.double())

    def _head_flops(self) -> float:
        return head_flops(self.dims, 1)

    def _all_loops_flops(self, prompt_len: int, decode_calls: int) -> float:
        """The same answer with all T loops everywhere: T stack passes per prompt token and per decode call,
        one head per emitted token."""
        T = self.loops
        return T * forward_flops(self.dims, prompt_len, 0, 0) + self._head_flops() + decode_flops(self.dims, prompt_len, decode_calls, stack_passes=T)

    def generate(self, examples: Sequence[EncodedExample], max_new_tokens: int) -> Generation:
        out = self.decode(examples, max_new_tokens)
        per_answer = [sum(e) / len(e) for e in out.exit_loops]
        n_tokens = sum(len(e) for e in out.exit_loops)
        extra = {
            "mean_loops": sum(sum(e) for e in out.exit_loops) / max(n_tokens, 1),
            "flops_saved_fraction": 1 - sum(out.flops) / max(sum(out.all_loops_flops), 1.0),
            "loops": self.loops,
            "exit_q": self.cfg.exit_q,
        }
        return Generation(out.tokens, out.loops_run, [m - 1 for m in per_answer], out.flops, extra)

    @torch.no_grad()
    def trace(self, examples: Sequence[EncodedExample]) -> torch.Tensor:
        """Loop states [B, T, d]: the raw output of every loop at the last question position."""
        ids, mask = self.left_padded_prompts([e.question_ids for e in examples])
        states = self.loop_states(ids, mask, positions_from_mask(mask))
        return torch.stack([h[:, -1] for h in states], dim=1).float().cpu()

    def latent_models(self) -> dict[str, PreTrainedModel]:
        return {"looped": self.model}
