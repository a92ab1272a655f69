"""Logit lens: read latent vectors as next-token distributions through the model's own head.

A latent reasoning step that "thinks" in token space should decode to meaningful
tokens when pushed through the final norm and the LM head (nostalgebraist, 2020).
Latents that decode to noise suggest the method uses directions the vocabulary
projection does not read.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

__all__ = ["logit_lens", "find_final_norm_and_head"]


class _Decoder(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


@torch.no_grad()
def logit_lens(
    latents: torch.Tensor,
    final_norm: nn.Module | None,
    lm_head: nn.Module,
    tokenizer: _Decoder,
    top_k: int = 5,
) -> list[list[tuple[str, float]]]:
    """Top-k decoded tokens per latent slot, via ``softmax(lm_head(final_norm(latent)))``.

    Args:
        latents: ``[S, d]`` (one latent per slot) or ``[n, S, d]`` (many examples).
            For 3-D input the softmax distributions are averaged over examples, so a
            token scores high only if the slot favours it consistently.
        final_norm: the model's final normalisation (e.g. GPT-2 ``ln_f``), or None.
            Pass None for latents that are already normalised: in HF models the last
            entry of ``output_hidden_states`` has the final norm applied, and
            normalising twice distorts the distribution.
        lm_head: module mapping ``[..., d]`` hidden states to ``[..., vocab]`` logits.
        tokenizer: anything with ``decode(list[int]) -> str``.
        top_k: tokens per slot (capped at the vocabulary size).

    Returns:
        For each slot, ``top_k`` ``(token_string, probability)`` pairs sorted by
        decreasing probability.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if latents.dim() == 2:
        latents = latents.unsqueeze(0)
    elif latents.dim() != 3:
        raise ValueError(f"latents must be [S, d] or [n, S, d], got shape {tuple(latents.shape)}")

    # Run in the head's dtype/device so callers can pass latents saved on CPU in float32.
    param = next(lm_head.parameters(), None)
    if param is not None:
        latents = latents.to(device=param.device, dtype=param.dtype)
    hidden = final_norm(latents) if final_norm is not None else latents
    # Softmax in float32: half-precision softmax over a large vocabulary loses the tail.
    probs = torch.softmax(lm_head(hidden).float(), dim=-1).mean(dim=0)  # [S, vocab]
    values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)

    table: list[list[tuple[str, float]]] = []
    for slot_values, slot_indices in zip(values.tolist(), indices.tolist()):
        table.append([(tokenizer.decode([idx]), p) for idx, p in zip(slot_indices, slot_values)])
    return table


def find_final_norm_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(final_norm, lm_head)`` of a Hugging Face causal LM, from the one adapter for HF internals
    (``backbones.decoder_parts``: GPT-2 and Llama-style layouts, PEFT wrappers unwrapped).

    Raises:
        ValueError: naming what was not found, so an unsupported architecture fails loudly instead of
            producing a lens through the wrong module.
    """
    from latentreason.backbones import decoder_parts  # transformers: imported only when a lens is built
    from latentreason.errors import UserInputError

    try:
        parts = decoder_parts(model)
    except (UserInputError, AttributeError) as error:
        raise ValueError(f"could not find the final norm and LM head of {type(model).__name__}: {error}. "
                         "Pass the modules to logit_lens() explicitly.") from None
    return parts.norm, parts.head
