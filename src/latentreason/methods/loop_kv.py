"""The looped LM's per-loop KV cache: preallocated K/V buffers over the shared layers with per-(row, column)
`valid` and `pos`, so a loop's cache can hold rows computed at different times (Q-exit, see looped.py)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

# ----------------------------------------------------------------------------- per-loop KV cache


class LoopKV:
    """K/V of one loop for the whole batch, in preallocated buffers over the shared layers, plus for every
    (row, column) whether the entry exists (`valid`) and the token position it belongs to (`pos`).

    New columns are written in place (a DynamicCache would concatenate the whole past onto every new token,
    for every layer, loop and step); the buffers double when full. Rows can be dropped (`compact`) once
    they finish, so later steps run on the smaller batch.
    """

    def __init__(self, model: PreTrainedModel, batch: int, device: torch.device):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []
        """Columns written per layer (equal between calls; they differ only while a loop runs)."""
        self._valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self._pos = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.length = 0
        """Columns of `valid` / `pos`."""

    @property
    def batch(self) -> int:
        return self._valid.shape[0]

    @property
    def valid(self) -> torch.Tensor:
        return self._valid[:, : self.length]

    @property
    def pos(self) -> torch.Tensor:
        return self._pos[:, : self.length]

    @staticmethod
    def _grown(buffer: torch.Tensor, need: int, dim: int) -> torch.Tensor:
        """`buffer` itself when it holds `need` columns along `dim`, else a zero-padded copy twice as long."""
        if buffer.shape[dim] >= need:
            return buffer
        shape = list(buffer.shape)
        shape[dim] = max(need, 2 * shape[dim], 64)
        grown = buffer.new_zeros(shape)  # zeros: unwritten (invalid) entries must not be NaN under a 0 weight
        grown.narrow(dim, 0, buffer.shape[dim]).copy_(buffer)
        return grown

    def _reserve(self, layer: int, like: torch.Tensor, n: int) -> int:
        """Room for n more columns at `layer` (buffers shaped like `like` [*, H, *, d] for the full batch)."""
        if layer == len(self.keys):
            shape = (self.batch, like.shape[1], 0, like.shape[3])
            self.keys.append(like.new_zeros(shape))
            self.values.append(like.new_zeros(shape))
            self.lengths.append(0)
        start = self.lengths[layer]
        self.keys[layer] = self._grown(self.keys[layer], start + n, 2)
        self.values[layer] = self._grown(self.values[layer], start + n, 2)
        self.lengths[layer] = start + n
        return start

    def last_columns(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.lengths[layer]
        return self.keys[layer][:, :, end - n: end], self.values[layer][:, :, end - n: end]

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's n new columns; returns views of all columns so far (what attention reads)."""
        start = self._reserve(layer, keys, keys.shape[2])
        end = self.lengths[layer]
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def append_rows(self, layer: int, rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, fill: "LoopKV | None") -> tuple[torch.Tensor, torch.Tensor]:
        """New columns for the sub-batch `rows`; the other rows get `fill`'s last columns (reuse) or stay
        zero (invalid). Returns the sub-batch's columns so far (a gather: the price of running a sub-batch)."""
        n = keys.shape[2]
        start = self._reserve(layer, keys, n)
        end = self.lengths[layer]
        if fill is not None:
            fill_k, fill_v = fill.last_columns(layer, n)
            self.keys[layer][:, :, start:end] = fill_k
            self.values[layer][:, :, start:end] = fill_v
        # index_copy_ / index_select, not advanced indexing: on CPU `aten::index` was ~6x slower for the same
        # row gather and most of Q-exit's overhead at batch 32 (docs/LOG.md, sessions 4 and 8; the profile
        # after the change is in results/bench/looped_tiny.md).
        self.keys[layer].narrow(2, start, n).index_copy_(0, rows, keys)
        self.values[layer].narrow(2, start, n).index_copy_(0, rows, values)
        return self.keys[layer].narrow(2, 0, end).index_select(0, rows), self.values[layer].narrow(2, 0, end).index_select(0, rows)

    def append_meta(self, valid: torch.Tensor, pos: torch.Tensor) -> None:
        """Full-batch `valid` / `pos` of the n columns just written at every layer."""
        n = valid.shape[1]
        self._valid = self._grown(self._valid, self.length + n, 1)
        self._pos = self._grown(self._pos, self.length + n, 1)
        self._valid[:, self.length: self.length + n] = valid
        self._pos[:, self.length: self.length + n] = pos
        self.length += n

    def append_copy(self, source: "LoopKV", n: int) -> None:
        """`reuse` for a loop no row computed: its new columns are the previous loop's new columns."""
        for layer in range(len(source.keys)):
            self.append(layer, *source.last_columns(layer, n))
        self.append_meta(source.valid[:, -n:], source.pos[:, -n:])

    def compact(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (in that order), e.g. drop rows that finished decoding."""
        self.keys = [k.index_select(0, keep) for k in self.keys]
        self.values = [v.index_select(0, keep) for v in self.values]
        self._valid, self._pos = self._valid.index_select(0, keep), self._pos.index_select(0, keep)


class RowsView:
    """The cache a decoder layer sees while a loop runs on the sub-batch `rows` of the full batch (or on
    the whole batch, rows None).

    HF attention calls `update(keys, values, layer_idx)` and attends to what it returns: the rows' past K/V
    plus the new ones. The new columns go into the full-batch buffers; rows that did not run get `fill`'s
    last columns (reuse policy) or zeros (masked out as invalid).
    """

    def __init__(self, kv: LoopKV, rows: torch.Tensor | None, fill: LoopKV | None):
        self.kv, self.rows, self.fill = kv, rows, fill

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rows is None:
            return self.kv.append(layer_idx, keys, values)
        return self.kv.append_rows(layer_idx, self.rows, keys, values, self.fill)


# ----------------------------------------------------------------------------- the exit distribution
