"""The neutral start of the Base + Coprocessor (issue 13): with latents that carry nothing, every variant is
exactly the plain Base on question + answer; and the `latent_scale` option."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_coprocessor
from latentreason.backbones import lm_forward
from latentreason.config import CoprocessorConfig, load_config
from latentreason.errors import UserInputError
from latentreason.methods.coprocessor import Coprocessor
from latentreason.tasks.base import Example
from latentreason.tokenization import encode_examples

EXAMPLES = [  # questions of different lengths, so rows are left-padded differently
    Example("Every wumpus is a yumpus. Is Alex a yumpus?", [], "True"),
    Example("12 + 3 = ?", [], "15"),
    Example("Alex is a wumpus.", [], "False"),
]
VARIANTS = [("liu", {}), ("h1", {}), ("h2", {}), ("h2", {"injection": "kv"}), ("h2", {"lora_rank": 2})]
BACKBONES = ["gpt2-tiny", "llama-tiny"]


def make(backbone: str, variant: str, n_latents: int = 3, **cc) -> Coprocessor:
    """A sharpened tiny method in eval mode (see helpers.tiny_coprocessor)."""
    return tiny_coprocessor(backbone, variant, n_latents, **cc).eval()


def base_answer_logits(method: Coprocessor, example) -> torch.Tensor:
    """The plain Base over question + answer, one unpadded row: logits [A, V] predicting the answer tokens."""
    ids = torch.tensor([example.question_ids + example.answer_ids])
    logits = lm_forward(method.model, method.embed(ids), torch.ones_like(ids), torch.arange(ids.shape[1])[None]).logits[0]
    q = len(example.question_ids)
    return logits[q - 1: q - 1 + len(example.answer_ids)]


def base_greedy(method: Coprocessor, example, max_new_tokens: int) -> list[int]:
    """The plain Base's greedy answer, recomputing the whole sequence at every step (no cache, no padding)."""
    ids = list(example.question_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        x = torch.tensor([ids])
        token = int(lm_forward(method.model, method.embed(x), torch.ones_like(x), torch.arange(x.shape[1])[None]).logits[0, -1].argmax())
        if token == method.ids["eos"]:
            break
        out.append(token)
        ids.append(token)
    return out


def assert_equals_base(method: Coprocessor) -> None:
    examples = encode_examples(method.tokenizer, EXAMPLES)
    with torch.no_grad():
        actual = method.answer_logits(method.collate(examples))
        for row, example in enumerate(examples):
            expected = base_answer_logits(method, example)
            torch.testing.assert_close(actual[row, : len(example.answer_ids)], expected, atol=1e-5, rtol=1e-5)
            assert expected.std() > 0.1  # sharpened: far from uniform


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant,cc", VARIANTS)
def test_masked_latents_give_exactly_the_base(backbone, variant, cc):
    method = make(backbone, variant, **cc)
    method.mask_latents = True
    assert_equals_base(method)
    # Unmasked, the (random) latents do change what the Base computes: the mask is what made them equal.
    method.mask_latents = False
    examples = encode_examples(method.tokenizer, EXAMPLES)
    with torch.no_grad():
        logits = method.answer_logits(method.collate(examples[:1]))[0]
    assert (logits - base_answer_logits(method, examples[0])).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("injection", ["embeddings", "kv"])
def test_no_latents_give_exactly_the_base(backbone, injection):
    """N_L = 0 (allowed for h2 only: the no-latent control whose Base trains) is the Base, unmasked."""
    method = make(backbone, "h2", n_latents=0, injection=injection)
    assert_equals_base(method)
    generation = method.generate(encode_examples(method.tokenizer, EXAMPLES), 6)
    assert generation.latent_slots == [0, 0, 0] and all(p >= 2 for p in generation.forward_passes)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant,cc", VARIANTS[:3])
def test_masked_generation_is_the_base_greedy_generation(backbone, variant, cc):
    method = make(backbone, variant, **cc)
    method.mask_latents = True
    examples = encode_examples(method.tokenizer, EXAMPLES)
    with torch.no_grad():
        generation = method.generate(examples, max_new_tokens=6)
        reference = [base_greedy(method, e, 6) for e in examples]
    assert generation.token_ids == reference
    assert len({tuple(t) for t in reference}) > 1  # not a degenerate constant output


def test_frozen_variants_need_a_latent():
    for variant in ("liu", "h1"):
        with pytest.raises(UserInputError, match="at least 1 latent"):
            make("gpt2-tiny", variant, n_latents=0)
        with pytest.raises(UserInputError, match="at least 1 latent"):
            load_config(None, ["method.name=coprocessor", "method.n_latents=0", f"method.coprocessor.variant={variant}"])
    assert load_config(None, ["method.name=coprocessor", "method.n_latents=0", "method.coprocessor.variant=h2"]).method.n_latents == 0


# ----------------------------------------------------------------------------- latent scale


def latent_rms(z: torch.Tensor) -> torch.Tensor:
    return z.pow(2).mean(-1).sqrt()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_rms_scale_matches_the_token_embeddings(backbone):
    method = make(backbone, "liu", latent_scale="rms")
    embeddings = method.model.get_input_embeddings().weight.detach()
    target = embeddings.pow(2).mean().sqrt()
    z = method.trace(encode_examples(method.tokenizer, EXAMPLES))
    torch.testing.assert_close(latent_rms(z), target.expand(z.shape[:2]), atol=1e-5, rtol=1e-4)
    unscaled = make(backbone, "liu", latent_scale="none").trace(encode_examples(method.tokenizer, EXAMPLES))
    assert latent_rms(unscaled).min() > 2 * target  # what `rms` corrects: final-normed states are much larger
    # The scale is read live from the Base's embeddings (a checkpoint loaded after construction sets it).
    with torch.no_grad():
        method.model.get_input_embeddings().weight.mul_(3.0)
    z3 = method.trace(encode_examples(method.tokenizer, EXAMPLES))
    torch.testing.assert_close(latent_rms(z3), 3 * target.expand(z.shape[:2]), atol=1e-5, rtol=1e-4)


def test_learned_scale_starts_at_rms_and_trains():
    learned, fixed = make("gpt2-tiny", "liu", latent_scale="learned"), make("gpt2-tiny", "liu", latent_scale="rms")
    examples = encode_examples(learned.tokenizer, EXAMPLES)
    torch.testing.assert_close(learned.trace(examples), fixed.trace(examples))
    assert learned.latent_log_gain.requires_grad
    learned.train()
    learned(learned.collate(examples)).backward()
    assert learned.latent_log_gain.grad is not None and learned.latent_log_gain.grad.abs() > 0
    # kv injection never reads Z as embeddings: no gain to learn.
    assert not hasattr(make("gpt2-tiny", "h1", latent_scale="learned"), "latent_log_gain")


def test_old_run_configs_load_with_the_default_scale():
    config = load_config(None, ["method.name=coprocessor", "method.n_latents=2"])
    assert config.method.coprocessor.latent_scale == CoprocessorConfig().latent_scale
    with pytest.raises(UserInputError):
        load_config(None, ["method.name=coprocessor", "method.n_latents=2", "method.coprocessor.latent_scale=huge"])
