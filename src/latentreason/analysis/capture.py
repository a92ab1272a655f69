"""Collect latent vectors from a finished run: rebuild its method, load its weights, trace the eval set.

    run = finished_run.load_finished_run(run_dir, overrides)   # Run with its final weights loaded, eval mode
    z = collect_latents(run.method, run.eval_set, 64)      # [n, N_L, d] from method.trace
    b = base_side_states(run.method, run.eval_set, 64)     # [n, L, d] for Base + Coprocessor methods

What a method's latents are is the method's own `trace()`, which should be the vectors the model (the Base)
actually reads: soft_tokens' last-layer states at the soft slots, Coconut's continuous thoughts (its next
inputs), the Coprocessor's Z after `latent_scale` (the Base's input embeddings with embeddings injection),
the looped model's per-loop states at the last question position (one "slot" per loop). Known gap: with kv
injection the Coprocessor's Z still passes through its top layer's attention output, MLP and final norm,
which the Base never reads (tests/test_analysis_nulls.py::test_kv_injection_analyses_depend_only_on_what_the_base_reads).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from latentreason.methods.base import LatentMethod
from latentreason.tokenization import EncodedExample


def _batches(examples: Sequence[EncodedExample], batch_size: int, desc: str, progress: bool):
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        yield list(examples[start: start + batch_size])


@torch.no_grad()
def collect_latents(method: LatentMethod, examples: Sequence[EncodedExample], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """`method.trace` over `examples` in batches: float32 CPU tensor [n, N_L, d] (N_L may be 0)."""
    parts = [method.trace(chunk).float().cpu() for chunk in _batches(examples, batch_size, f"trace {method.name}", progress)]
    return torch.cat(parts, 0) if parts else torch.zeros(0, 0, method.dims.d_model)


def has_base_and_coprocessor(method: LatentMethod) -> bool:
    """Whether a separate Base reads the method's latents: such a method offers `base_read_states`."""
    return callable(getattr(method, "base_read_states", None))


@torch.no_grad()
def base_side_states(method: LatentMethod, examples: Sequence[EncodedExample], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """The Base's last-layer (final-normed) hidden states where it reads the Coprocessor's latents, [n, L, d].

    This is the Base-side counterpart of Z for the Base-vs-Coprocessor comparisons:
      - embeddings injection (liu, h2 default): L = N_L, the Base's states at the latent slots, whose inputs
        are Z (slot i of this tensor is the Base's reading of latent i);
      - kv injection (h1, h2 kv): the Base has no state at a latent slot (it only attends to the latents'
        K/V), so L = 1, its state at the read position, the first one computed after the latents (the
        re-fed last question token of the neutral start; `<eot>` before it).
    Both come from the same passes as generation (`Coprocessor.base_read_states`).
    """
    parts = [method.base_read_states(chunk).float().cpu() for chunk in _batches(examples, batch_size, "trace base", progress)]
    return torch.cat(parts, 0)


def filled_rows(latents: torch.Tensor) -> torch.Tensor:
    """Bool [n]: examples whose every slot holds a latent. Coconut pads rows with fewer thoughts than N_L
    with zeros; those zeros are not latents and would fake a shared point across slots."""
    if latents.shape[1] == 0:
        return torch.ones(latents.shape[0], dtype=torch.bool)
    return ~(latents.abs().sum(-1) == 0).any(-1)
