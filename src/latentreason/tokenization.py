"""Offline tokenizers, special tokens, and the padding helpers every method's collation uses.

Sequence convention shared by all methods (token pieces are tokenised separately, identically in
training and evaluation):

    question_ids = tok(question + "\\n")
    step_ids[i]  = tok(step_i + "\\n")
    answer_ids   = tok("### " + answer) + [eos]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from latentreason.tasks.base import ANSWER_MARKER, Example

PAD, EOS, BOT, EOT, LATENT = "<pad>", "<eos>", "<bot>", "<eot>", "<latent>"
LATENT_SPECIAL_TOKENS = [BOT, EOT, LATENT]
"""Begin-of-thought, end-of-thought, and the placeholder occupying a latent slot."""


def train_tokenizer(texts: Sequence[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the task corpus, so from-scratch models need nothing from a hub.

    Byte-level keeps decoding exact and never produces unknown tokens; digits are split one by one so
    arithmetic (Countdown, GSM8K) sees every number in the same digit vocabulary.

    Every piece is encoded with a leading space (`add_prefix_space=True`) so a word is the same token
    wherever it stands: without it "Tom" opening a CoT step and " Tom" inside the question were two
    different tokens, and a from-scratch model had to learn a name-to-name mapping before it could copy
    the person into its first step (a tiny CoT model answered every ProsQA question with one fixed name
    after 1,000 steps; docs/LOG.md, 2026-12-01).

    The byte-level split comes before the digit split, so the prefix space goes to a word, never to a
    digit: " 81" is "Ġ", "8", "1" and decodes to " 81". In the other order every digit became its own
    piece with its own prefix space ("Ġ8", "Ġ1"), the text decoded as " 8 1", and no Countdown or GSM8K
    answer could ever verify (docs/LOG.md, 2026-12-02, session 6).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=True), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, *LATENT_SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, bos_token=EOS)


def add_latent_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make sure <bot>/<eot>/<latent> and a pad token exist (pretrained tokenizers lack them)."""
    missing = [t for t in LATENT_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def splits_digits_with_spaces(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Is this a tiny tokenizer of the broken kind: the digit split before a byte-level split that adds a prefix
    space, so every digit gets its own space ("Ġ8", "Ġ1")? Checked on the text itself, not the settings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return False
    pieces = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str("81")]
    return len(pieces) > 1 and all(piece.startswith("Ġ") for piece in pieces)


def example_texts(examples: Sequence[Example]) -> list[str]:
    """Everything a tokenizer must cover: questions, steps and marked answers."""
    texts = []
    for example in examples:
        texts.append(example.question)
        texts.extend(example.steps)
        texts.append(ANSWER_MARKER + example.answer)
    return texts


@dataclass
class EncodedExample:
    """An Example cut into token pieces; methods assemble their own layouts from them."""

    question_ids: list[int]
    step_ids: list[list[int]]
    answer_ids: list[int]
    """Includes the answer marker and the final eos."""
    example: Example


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example) -> EncodedExample:
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return EncodedExample(
        question_ids=encode(example.question + "\n"),
        step_ids=[encode(step + "\n") for step in example.steps],
        answer_ids=encode(ANSWER_MARKER + example.answer) + [tokenizer.eos_token_id],
        example=example,
    )


def encode_examples(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]) -> list[EncodedExample]:
    return [encode_example(tokenizer, e) for e in examples]


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in LATENT_SPECIAL_TOKENS}
    ids["pad"] = tokenizer.pad_token_id
    ids["eos"] = tokenizer.eos_token_id
    return ids


# ----------------------------------------------------------------------------- padding helpers


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a common length so every sequence ends at the same column (generation appends there)."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, length - len(seq):] = 1
    return ids, mask


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids, mask


def positions_from_mask(attention_mask: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    """Position ids that skip padding (left pads and holes): 0, 1, 2, ... over real tokens only."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.clamp(min=0)
    if isinstance(offset, torch.Tensor):
        offset = offset.view(-1, 1)
    return positions + offset


def supervised_sequences(
    prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded `prompt + target` with labels on the target only (the plain SFT batch)."""
    sequences = [list(p) + list(t) for p, t in zip(prompts, targets)]
    ids, mask = right_pad(sequences, pad_id)
    labels = torch.full_like(ids, -100)
    for row, (p, t) in enumerate(zip(prompts, targets)):
        labels[row, len(p): len(p) + len(t)] = torch.tensor(list(t), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions_from_mask(mask)}
