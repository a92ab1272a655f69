"""model.word_tokens: each made-up ProsQA name becomes one token, started at the mean of its pieces."""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from latentreason.backbones import add_word_tokens, build_backbone, vocab_word_rows
from latentreason.config import ModelConfig, load_config
from latentreason.errors import UserInputError
from latentreason.tasks.prosqa import CONCEPT_NAMES
from latentreason.tokenization import load_tokenizer
from latentreason.training import build_run, train

# A corpus without any ProsQA name, so that a small BPE splits every name into pieces.
PLAIN_CORPUS = ["the cat sat on the mat. every dog is an animal. is the sun a star or a planet? Tom is a cat."] * 20
WORDS = ["wumpus", "yumpus", "brimpus"]


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory) -> str:
    """A local HF model dir shaped like a pretrained backbone: a byte-level BPE with no prefix space (as SmolLM2's,
    GPT-2's) trained on text without the names, and a tiny Llama with untied input and output embeddings."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(PLAIN_CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
    path = tmp_path_factory.mktemp("pretrained")
    fast.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


def test_each_split_word_becomes_one_token_starting_at_the_mean_of_its_pieces(pretrained_dir):
    plain = build_backbone(ModelConfig(backbone=pretrained_dir))
    pieces = {w: plain.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in WORDS}
    assert all(len(ids) > 1 for ids in pieces.values())  # the premise: the tokenizer splits them

    with_words = build_backbone(ModelConfig(backbone=pretrained_dir), words=WORDS)
    tokenizer = with_words.tokenizer
    assert len(tokenizer) == len(plain.tokenizer) + len(WORDS)
    for table, old in [(with_words.model.get_input_embeddings().weight, plain.model.get_input_embeddings().weight),
                       (with_words.model.get_output_embeddings().weight, plain.model.get_output_embeddings().weight)]:
        assert table.shape[0] == len(tokenizer)
        for word in WORDS:
            ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            assert ids == [tokenizer.convert_tokens_to_ids(" " + word)]
            torch.testing.assert_close(table[ids[0]], old[pieces[word]].mean(0))
    # Text without the words tokenises as before; text with them is shorter and decodes back to itself.
    assert tokenizer(PLAIN_CORPUS[0])["input_ids"] == plain.tokenizer(PLAIN_CORPUS[0])["input_ids"]
    text = "Every wumpus is a yumpus. Tom is a brimpus.\nIs Tom a wumpus or a brimpus?"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer(text)["input_ids"]) < len(plain.tokenizer(text)["input_ids"])
    # A tokenizer that has the words already (one reloaded from a run dir) adds nothing more.
    assert add_word_tokens(with_words.model, tokenizer, WORDS) == []


def test_vocab_word_init_starts_each_word_at_a_different_existing_word(pretrained_dir):
    """`model.word_token_init=vocab_word`: every name starts as a copy of its own one-token lowercase word, so no two
    names start equal (the piece mean makes names that share pieces nearly equal)."""
    plain = build_backbone(ModelConfig(backbone=pretrained_dir))
    with_words = build_backbone(ModelConfig(backbone=pretrained_dir, word_token_init="vocab_word"), words=WORDS)
    tokenizer, old = with_words.tokenizer, plain.model.get_input_embeddings().weight
    vocab_words = {token_id for token_id in plain.tokenizer.get_vocab().values()
                   if re.fullmatch(r" [a-z]{4,}", plain.tokenizer.decode([token_id]))}
    for table in [with_words.model.get_input_embeddings().weight, with_words.model.get_output_embeddings().weight]:
        rows = [table[tokenizer.convert_tokens_to_ids(" " + word)] for word in WORDS]
        copied = [[i for i in vocab_words if torch.equal(row, table[i])] for row in rows]
        assert all(len(ids) == 1 for ids in copied), copied
        assert len({ids[0] for ids in copied}) == len(WORDS)
    torch.testing.assert_close(with_words.model.get_input_embeddings().weight[:len(plain.tokenizer)], old)
    with pytest.raises(UserInputError, match="fewer than the 1000 names"):
        vocab_word_rows(plain.tokenizer, 1000)


def test_a_tokenizer_that_adds_prefix_spaces_is_refused():
    """Tiny backbones' tokenizers put a space before every piece: the text after an added word would gain one."""
    with pytest.raises(UserInputError, match="adds a space before each piece"):
        build_backbone(ModelConfig(backbone="gpt2-tiny", n_layer=1, n_embd=32, n_head=2, tokenizer_vocab_size=300),
                       corpus=PLAIN_CORPUS, words=WORDS)


def prosqa_run(tmp_path, backbone: str, *overrides: str):
    return load_config(None, [
        f"out_dir={tmp_path / 'run'}", f"model.backbone={backbone}", "task.name=prosqa", "task.train_size=16", "task.eval_size=4",
        "task.params={n_nodes: 10, min_depth: 2, max_depth: 3}", "train.batch_size=8", "train.epochs=1",
        "eval.max_new_tokens=64", "model.word_tokens=true", *overrides,
    ])


def test_a_run_keeps_its_word_tokens_in_its_tokenizer(tmp_path, pretrained_dir):
    cfg = prosqa_run(tmp_path, pretrained_dir)
    run = build_run(cfg)
    tokenizer = run.method.tokenizer
    assert all(len(tokenizer(" " + name, add_special_tokens=False)["input_ids"]) == 1 for name in CONCEPT_NAMES)
    train(cfg)
    saved = load_tokenizer(tmp_path / "run" / "tokenizer")
    assert saved.get_vocab() == tokenizer.get_vocab()
    # Rebuilding from the run dir (resume, eval) reuses those ids rather than adding the words again.
    assert len(build_run(cfg, tmp_path / "run").method.tokenizer) == len(tokenizer)


def test_word_tokens_on_a_task_without_made_up_names_is_an_error(tmp_path, pretrained_dir):
    cfg = prosqa_run(tmp_path, pretrained_dir, "task.name=countdown", "task.params={}")
    with pytest.raises(UserInputError, match="word_tokens.*countdown"):
        build_run(cfg)


def test_word_token_init_without_word_tokens_is_an_error(tmp_path):
    with pytest.raises(UserInputError, match="word_token_init.*model.word_tokens is off"):
        load_config(None, [f"out_dir={tmp_path}", "model.word_token_init=vocab_word"])
