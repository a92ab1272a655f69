"""Checks that need the tokenized data and the built model, run after tokenization and before training.

Single config values are checked when the config is loaded (`config.from_dict`); data records when a task
loads its file. What only the tokenizer can tell, whether every sequence fits the model's positions, is here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from latentreason.backbone_names import TINY_BACKBONE_NAMES
from latentreason.config import RunConfig
from latentreason.errors import UserInputError
from latentreason.methods import method_class
from latentreason.tokenization import EncodedExample


def position_limit(model) -> int | None:
    """The most positions `model` can take: GPT-2's `n_positions`, else `max_position_embeddings`."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def latent_positions(config: RunConfig) -> int:
    """Upper bound on the positions a method adds between question and answer (latents and their markers)."""
    return method_class(config.method.name).max_latent_positions(config.method)


def _longest(examples: Sequence[EncodedExample], length) -> tuple[int, int]:
    index = max(range(len(examples)), key=lambda i: length(examples[i]))
    return index, length(examples[index])


def _describe(split: str, index: int, example: EncodedExample) -> str:
    question = example.example.question
    shown = question if len(question) <= 60 else question[:57] + "..."
    return f"{split} example {index} ({shown!r})"


def check_sequence_lengths(config: RunConfig, model, train_set: Sequence[EncodedExample], eval_set: Sequence[EncodedExample]) -> None:
    """UserInputError naming the longest example when a training sequence or an eval prompt (plus, for
    models with learned absolute positions, the decoding budget) does not fit the model's positions."""
    limit = position_limit(model)
    if limit is None:
        return
    latents = latent_positions(config)
    uses_steps = method_class(config.method.name).uses_steps(config.method)
    setting = "model.max_positions" if config.model.backbone in TINY_BACKBONE_NAMES else f"the position limit of {config.model.backbone}"

    def train_length(e: EncodedExample) -> int:
        return len(e.question_ids) + latents + (sum(map(len, e.step_ids)) if uses_steps else 0) + len(e.answer_ids)

    if train_set:
        index, length = _longest(train_set, train_length)
        if length > limit:
            raise UserInputError(f"{_describe('train', index, train_set[index])} is {length} tokens long "
                                 f"(question + {'steps + ' if uses_steps else ''}answer{' + latent slots' if latents else ''}), "
                                 f"over {setting}={limit}; raise the limit or drop long examples")
    if eval_set:
        learned_positions = hasattr(getattr(model, "config", None), "n_positions")  # GPT-2 cannot go past its table
        budget = config.eval.max_new_tokens if learned_positions else 0

        def eval_length(e: EncodedExample) -> int:
            return len(e.question_ids) + latents + budget

        index, length = _longest(eval_set, eval_length)
        if length > limit:
            what = " + eval.max_new_tokens" if budget else ""
            raise UserInputError(f"{_describe('eval', index, eval_set[index])} needs {length} positions "
                                 f"(question{' + latent slots' if latents else ''}{what}), over {setting}={limit}; "
                                 f"raise the limit{', lower eval.max_new_tokens' if budget else ''} or drop long examples")


def gold_output_length(config: RunConfig, example: EncodedExample) -> int:
    """Tokens a correct answer takes at evaluation: the steps when the method writes them out (CoT; not a
    curriculum, which has replaced every step by latents at evaluation) and the answer (whose ids end with eos)."""
    cls = method_class(config.method.name)
    writes_steps = cls.uses_steps(config.method) and not cls.replaces_steps(config.method)
    return (sum(map(len, example.step_ids)) if writes_steps else 0) + len(example.answer_ids)


def warn_short_decoding_budget(config: RunConfig, eval_set: Sequence[EncodedExample]) -> None:
    """Warn (a UserWarning, shown on stderr) when `eval.max_new_tokens` is shorter than some eval examples' gold
    output: those answers would be cut off and scored wrong whatever the model knows (Countdown b = 4 CoT needs ~55
    tokens, where a 48-token budget once turned 0.18 into 0.03). A warning, not an error, since smoke runs cut
    decoding on purpose."""
    budget = config.eval.max_new_tokens
    lengths = [gold_output_length(config, e) for e in eval_set]
    over = [i for i, length in enumerate(lengths) if length > budget]
    if over:
        index = max(over, key=lambda i: lengths[i])
        warnings.warn(f"eval.max_new_tokens={budget} is shorter than the gold output of {len(over)} of {len(eval_set)} "
                      f"eval examples (longest: {_describe('eval', index, eval_set[index])}, {lengths[index]} tokens with "
                      "the end-of-answer token); those answers will be cut off and scored wrong: raise eval.max_new_tokens",
                      stacklevel=2)
