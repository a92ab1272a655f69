"""The one analytic FLOP model every method and benchmark counts with.

A decoder forward costs, per token, 2 FLOPs per decoder-layer parameter (one multiply-add each); attention
adds two matmuls (scores and values) of 2 * d_model FLOPs per layer for every (query, key) pair it attends;
the LM head costs 2 * d_model * vocab per position whose logits are computed. Embedding lookups, norms'
elementwise work and softmax are not counted. Training counts 3x the forward (backward ~ 2x forward).

    stack_flops(dims, tokens, pairs)                 the layer stack over `tokens` queries attending `pairs`
    head_flops(dims, tokens)                         the LM head on `tokens` positions
    forward_flops(dims, new, past, head)             one causal call: `new` tokens after `past` cached ones
    decode_flops(dims, context, calls)               `calls` single-token cached calls after `context` tokens
    prefix_decode_flops(dims, prefix, calls)         a prefix in one causal pass (one head), then decoding
    train_flops(forward)                             forward + backward of a training step
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from torch import nn

Number = TypeVar("Number")  # float, or a float64 tensor of per-row counts (the looped decode)

TRAIN_FLOPS_PER_FORWARD = 3
"""A training step's FLOPs over its forward's: forward + backward (activations and weights gradients)."""


@dataclass
class ModelDims:
    """What the FLOP model needs to know about a transformer."""

    n_layer: int
    d_model: int
    vocab_size: int
    n_params_layers: int
    """Parameters inside the decoder layers and final norm (the part every token pays for, 2 FLOPs each):
    all parameters minus token embeddings, an untied LM head and learned position embeddings."""
    attention_width: int = 0
    """Heads x head width of the query/key products (0: d_model, the usual n_head * head_dim = d_model)."""

    @classmethod
    def of(cls, model: nn.Module) -> "ModelDims":
        """Dimensions of an HF causal LM (GPT-2, Llama, Qwen3, ...; unmerged LoRA adapters count as layer
        parameters, since they are computed)."""
        cfg = model.config
        n_layer = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
        d_model = getattr(cfg, "hidden_size", None) or cfg.n_embd
        embed = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        n_other = embed.numel()
        if head is not None and head.weight.data_ptr() != embed.data_ptr():
            n_other += head.weight.numel()
        pos = getattr(getattr(model, "transformer", None), "wpe", None)
        if pos is not None:
            n_other += pos.weight.numel()
        heads, head_dim = getattr(cfg, "num_attention_heads", None), getattr(cfg, "head_dim", None)
        width = heads * head_dim if heads and head_dim else 0
        return cls(n_layer=n_layer, d_model=d_model, vocab_size=embed.shape[0], n_params_layers=total - n_other,
                   attention_width=width if width != d_model else 0)


def stack_flops(dims: ModelDims, tokens: Number, pairs: Number) -> Number:
    """One pass of the layer stack over `tokens` queries that attend `pairs` (query, key) pairs in total."""
    return 2.0 * dims.n_params_layers * tokens + 4.0 * dims.n_layer * (dims.attention_width or dims.d_model) * pairs


def head_flops(dims: ModelDims, tokens: float = 1) -> float:
    """The LM head on `tokens` positions (only those whose logits are used)."""
    return 2.0 * dims.d_model * dims.vocab_size * tokens


def causal_pairs(new_tokens: float, past_tokens: float) -> float:
    """(query, key) pairs of `new_tokens` causal queries after `past_tokens` cached keys."""
    return new_tokens * past_tokens + new_tokens * (new_tokens + 1) / 2


def forward_flops(dims: ModelDims, new_tokens: float, past_tokens: float, head_tokens: float) -> float:
    """One forward over `new_tokens` attending to `past_tokens` cached ones, the head on `head_tokens`."""
    return float(stack_flops(dims, new_tokens, causal_pairs(new_tokens, past_tokens)) + head_flops(dims, head_tokens))


def decode_flops(dims: ModelDims, context: float, decode_calls: int, stack_passes: int = 1) -> float:
    """`decode_calls` single-token cached calls starting after `context` tokens, each with one head, i.e.
    sum over t < decode_calls of forward_flops(dims, 1, context + t, 1) in closed form. `stack_passes` runs
    the layer stack that many times per call (a looped model without early exit) and the head once."""
    n = decode_calls
    if n <= 0:
        return 0.0
    pairs = n * context + n * (n - 1) / 2 + n  # key counts context + 1, ..., context + n
    return float(stack_passes * stack_flops(dims, n, pairs) + head_flops(dims, n))


def prefix_decode_flops(dims: ModelDims, prefix: float, decode_calls: int) -> float:
    """One answer of a single-model method: a causal pass over its whole prefix (question, plus latent slots
    and markers) with the head on the last position only, then `decode_calls` cached decode calls. Methods
    that run the prefix in several cached passes (Coconut) cost the same: the passes sum to one causal pass."""
    return forward_flops(dims, prefix, 0, 1) + decode_flops(dims, prefix, decode_calls)


def train_flops(forward: float) -> float:
    """A training step's FLOPs from its forward FLOPs."""
    return TRAIN_FLOPS_PER_FORWARD * forward
