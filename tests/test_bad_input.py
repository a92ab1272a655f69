"""Bad input is one `error: ...` line and exit 2, before any data generation or training (issue 15).

One table: the command line, files it needs, the expected exit code and a fragment of the message. The CLI
runs in-process (`cli.main`) for speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentreason import cli
from latentreason.config import load_config
from latentreason.errors import UserInputError
from latentreason.tasks import countdown
from latentreason.tasks.base import record_lines

GSM8K_JSONL = ('{"question": "Q1?", "answer": "<<2+2=4>>4\\n#### 4"}\n'
               '{"question": "Q2?", "answer": "She has many.\\n#### seventy"}\n')
GSM8K_JSON = json.dumps([{"question": "Q1?", "steps": ["<<2+2=4>>"], "answer": "4"},
                         {"question": "Q2?", "steps": [], "answer": "four apples"}], indent=1)
GOOD_CD = {"numbers": [3, 5, 7], "target": 22, "steps": ["3 * 5 = 15", "15 + 7 = 22"], "answer": "((3*5)+7)"}


def countdown_file(bad: dict) -> str:
    return json.dumps([GOOD_CD, bad], indent=1)


# (id, argv, files {name: text or bytes or None for a directory}, exit code, message fragment)
CASES = [
    # ---- config values, checked when the config is loaded
    ("n_embd_not_divisible", ["train", "model.n_embd=30"], {}, 2, "'model.n_embd': 30 is not divisible by model.n_head=4"),
    ("n_layer_zero", ["train", "model.n_layer=0"], {}, 2, "'model.n_layer': expected a value >= 1, got 0"),
    ("n_embd_negative", ["train", "model.n_embd=-64"], {}, 2, "'model.n_embd': expected a value >= 1"),
    ("n_head_zero", ["train", "model.n_head=0"], {}, 2, "'model.n_head': expected a value >= 1"),
    ("max_positions_zero", ["train", "model.max_positions=0"], {}, 2, "'model.max_positions': expected a value >= 1"),
    ("dropout_two", ["train", "model.dropout=2.0"], {}, 2, "'model.dropout': expected a value >= 0 and < 1, got 2.0"),
    ("qwen3_kv_heads", ["train", "model.backbone=qwen3-tiny", "model.n_head=5", "model.n_embd=40"], {}, 2, "n_head // 2 key-value heads"),
    ("batch_size_zero", ["train", "train.batch_size=0"], {}, 2, "'train.batch_size': expected a value >= 1"),
    ("batch_size_negative", ["train", "train.batch_size=-4"], {}, 2, "'train.batch_size': expected a value >= 1"),
    ("grad_accum_zero", ["train", "train.grad_accum=0"], {}, 2, "'train.grad_accum': expected a value >= 1"),
    ("lr_negative", ["train", "train.lr=-1"], {}, 2, "'train.lr': expected a value > 0, got -1"),
    ("lr_nan", ["train", "train.lr=.nan"], {}, 2, "'train.lr': expected a finite number"),
    ("epochs_zero", ["train", "train.epochs=0"], {}, 2, "'train.epochs': expected a value >= 1, got 0"),
    ("epochs_negative", ["train", "train.epochs=-3"], {}, 2, "'train.epochs': expected a value >= 1"),
    ("epochs_yes", ["train", "train.epochs=yes"], {}, 2, "'train.epochs': expected int, got True (a yes/no value)"),
    ("max_steps_negative", ["train", "train.max_steps=-5"], {}, 2, "'train.max_steps': expected a value >= 0"),
    ("eval_batch_size_zero", ["train", "eval.batch_size=0"], {}, 2, "'eval.batch_size': expected a value >= 1"),
    ("eval_max_new_tokens_zero", ["train", "eval.max_new_tokens=0"], {}, 2, "'eval.max_new_tokens': expected a value >= 1"),
    ("train_size_negative", ["train", "task.train_size=-5"], {}, 2, "'task.train_size': expected a value >= 0"),
    ("eval_size_negative", ["train", "task.eval_size=-1"], {}, 2, "'task.eval_size': expected a value >= 0"),
    ("n_latents_negative_cot", ["train", "method.n_latents=-2"], {}, 2, "'method.n_latents': expected a value >= 0"),
    ("n_latents_negative_looped", ["train", "method.name=looped", "method.n_latents=-1"], {}, 2, "'method.n_latents': expected a value >= 0"),
    ("coprocessor_no_latents", ["train", "method.name=coprocessor"], {}, 2, "the coprocessor needs at least 1 latent"),
    ("coconut_budget_not_multiple", ["train", "method.name=coconut", "method.n_latents=3", "method.coconut.thoughts_per_step=2"], {}, 2,
     "not a multiple of method.coconut.thoughts_per_step=2"),
    ("exit_q_zero", ["train", "method.name=looped", "method.looped.exit_q=0"], {}, 2, "'method.looped.exit_q': expected a value > 0 and <= 1"),
    ("method_unknown", ["train", "method.name=telepathy"], {}, 2, "unknown method 'telepathy'"),
    ("task_unknown", ["train", "task.name=sudoku"], {}, 2, "unknown task 'sudoku'"),
    ("variant_unknown", ["train", "method.coprocessor.variant=h3"], {}, 2, "unknown variant 'h3'; expected one of ['liu', 'h1', 'h2']"),
    ("kv_policy_unknown", ["train", "method.looped.kv_policy=sometimes"], {}, 2, "unknown kv_policy 'sometimes'"),
    ("placement_unknown", ["train", "method.placement=middle"], {}, 2, "unknown placement 'middle'"),
    ("precision_unknown", ["train", "train.precision=fp8"], {}, 2, "unknown precision 'fp8'"),
    ("stage_three", ["train", "method.name=looped", "method.looped.stage=3"], {}, 2, "unknown stage 3; expected one of [1, 2]"),
    ("empty_backbone_dir", ["train", "model.backbone=emptymodel"], {"emptymodel": None}, 2, "no config.json"),
    ("init_unknown", ["train", "method.coprocessor.init=random"], {}, 2, "unknown init 'random'; expected one of ['base', 'fresh']"),
    ("injection_unknown", ["train", "method.coprocessor.injection=tokens"], {}, 2, "unknown injection 'tokens'; expected one of ['embeddings', 'kv']"),
    ("nonfinite_unknown", ["train", "train.nonfinite=ignore"], {}, 2, "unknown nonfinite 'ignore'; expected one of ['stop', 'skip']"),
    ("lora_without_h2", ["train", "method.name=coprocessor", "method.n_latents=2", "method.coprocessor.lora_rank=4"], {}, 2,
     "'method.coprocessor.lora_rank': LoRA applies to the trained Base of variant h2 only, got variant 'liu'"),
    ("method_unknown_in_yaml", ["train", "m.yaml"], {"m.yaml": "train:\n  lr: 0.001\nmethod:\n  n_latents: 4\n  name: cocnut\n"}, 2,
     "m.yaml:5: config key 'method.name': unknown method 'cocnut'; expected one of ['no_cot', 'cot', 'soft_tokens', 'coconut', 'coprocessor', 'looped']"),
    ("variant_unknown_in_yaml", ["train", "v.yaml"], {"v.yaml": "method:\n  name: coprocessor\n  coprocessor:\n    variant: H1\n"}, 2,
     "v.yaml:4: config key 'method.coprocessor.variant': unknown variant 'H1'"),
    ("task_params_unknown", ["train", "task.params.n_nodez=5"], {}, 2,
     "config key 'task.params.n_nodez': unknown prosqa generator parameter 'n_nodez'; expected one of ['min_depth', 'max_depth', 'n_nodes', 'concepts', 'asked_facts_last', 'steps']"),
    ("task_params_unknown_in_yaml", ["train", "p.yaml"], {"p.yaml": "task:\n  name: countdown\n  params:\n    branching: 3\n    target_maximum: 50\n"}, 2,
     "p.yaml:5: config key 'task.params.target_maximum': unknown countdown generator parameter"),
    ("task_params_for_gsm8k", ["train", "task.name=gsm8k", "task.params.hops=2"], {}, 2, "its generator takes no parameters"),
    # ---- the config file itself
    ("empty_config_yaml", ["train", "empty.yaml"], {"empty.yaml": ""}, 2, "empty.yaml: empty config file"),
    ("sweep_grid_as_list", ["sweep", "s.yaml"], {"s.yaml": "out_dir: out\ngrid:\n  - train.lr: [0.001]\n"}, 2,
     "s.yaml: grid: expected a mapping of config keys"),
    ("sweep_groups_as_mapping", ["sweep", "s.yaml"], {"s.yaml": "out_dir: out\ngroups: {method.name: [cot]}\n"}, 2,
     "s.yaml: groups: expected a list of mappings"),
    ("config_is_a_directory", ["train", "confdir"], {"confdir": None}, 2, "confdir: is a directory"),
    ("config_not_utf8", ["train", "latin1.yaml"], {"latin1.yaml": "train:\n  lr: 0.001 # caf\xe9\n".encode("latin-1")}, 2, "latin1.yaml: not UTF-8"),
    ("config_value_in_yaml", ["train", "bad.yaml"], {"bad.yaml": "train:\n  batch_size: 0\n"}, 2, "bad.yaml:2: config key 'train.batch_size'"),
    ("empty_run_config", ["eval", "run"], {"run": None, "run/config.yaml": "", "run/model.pt": "x"}, 2, "config.yaml: empty config file"),
    # ---- data records, each with FILE:LINE of the record
    ("gsm8k_jsonl_answer_not_a_number", ["data", "check", "--task", "gsm8k", "--path", "g.jsonl"], {"g.jsonl": GSM8K_JSONL}, 2,
     "g.jsonl:2: field 'answer': final answer 'seventy' is not a number"),
    ("gsm8k_json_answer_not_a_number", ["data", "check", "--task", "gsm8k", "--path", "g.json"], {"g.json": GSM8K_JSON}, 2,
     "g.json:9: record 1: field 'answer': final answer 'four apples' is not a number"),
    ("countdown_steps_miss_target", ["data", "check", "--task", "countdown", "--path", "cd.json"],
     {"cd.json": countdown_file({**GOOD_CD, "steps": ["3 * 5 = 15", "15 + 7 = 22", "22 - 1 = 21"]})}, 2,
     "cd.json:15: record 1: field 'steps'"),
    ("countdown_steps_use_numbers_not_given", ["data", "check", "--task", "countdown", "--path", "cd.json"],
     {"cd.json": countdown_file({**GOOD_CD, "steps": ["4 * 5 = 20", "20 + 2 = 22"]})}, 2, "do not reach target 22 from numbers [3, 5, 7]"),
    ("countdown_answer_misses_target", ["data", "check", "--task", "countdown", "--path", "cd.json"],
     {"cd.json": countdown_file({**GOOD_CD, "answer": "((3*5)+8)"})}, 2, "cd.json:15: record 1: field 'answer' '((3*5)+8)' does not reach target 22"),
    ("countdown_too_many_numbers", ["data", "check", "--task", "countdown", "--path", "cd.json"],
     {"cd.json": countdown_file({"numbers": [1, 2, 3, 4, 5, 6, 7, 8, 9], "target": 99991})}, 2,
     "cd.json:15: record 1: field 'numbers' has 9 numbers; expected at most 7"),
    ("countdown_unreachable", ["data", "check", "--task", "countdown", "--path", "cd.json"],
     {"cd.json": countdown_file({"numbers": [2, 4], "target": 7})}, 2, "cd.json:15: record 1: numbers [2, 4] cannot reach target 7"),
    ("data_generate_zero", ["data", "generate", "--task", "countdown", "--n", "0", "--out", "zero.json"], {}, 2, "expected at least 1 example"),
    ("bad_data_file_in_train", ["train", "task.name=gsm8k", "task.train_path=g.jsonl", "task.eval_path=g.jsonl"], {"g.jsonl": GSM8K_JSONL}, 2,
     "g.jsonl:2: field 'answer'"),
]


def write_files(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)


@pytest.mark.parametrize("argv, files, code, fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_error_line(tmp_path, monkeypatch, capsys, argv, files, code, fragment) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, files)
    if argv[0] == "train":
        argv = [*argv, f"out_dir={tmp_path / 'out'}"]
    assert cli.main(["--quiet", *argv]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert fragment in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "zero.json").exists()  # failed before writing anything


def test_sequence_longer_than_max_positions_names_the_longest_example(tmp_path, capsys) -> None:
    """Tokenization decides the length, so this one builds the tokenizer; it still fails before training."""
    argv = ["--quiet", "train", "task.train_size=8", "task.eval_size=2", "model.max_positions=24", "train.batch_size=4",
            "model.n_layer=1", "model.n_embd=16", "model.n_head=2", f"out_dir={tmp_path / 'out'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train example ") and len(err.splitlines()) == 1, err
    assert "tokens long (question + steps + answer), over model.max_positions=24" in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_eval_prompt_plus_decoding_budget_must_fit_learned_positions() -> None:
    from types import SimpleNamespace

    from latentreason.tasks import Example
    from latentreason.tokenization import EncodedExample
    from latentreason.validation import check_sequence_lengths

    cfg = load_config(None, ["eval.max_new_tokens=20"])
    example = EncodedExample(list(range(10)), [[1, 2]], [3, 4], Example("Q?", ["s"], "a"))
    gpt2_like = SimpleNamespace(config=SimpleNamespace(n_positions=25))
    rotary = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=25))
    check_sequence_lengths(cfg, rotary, [example], [example])  # rotary positions extend: only the prompt must fit
    with pytest.raises(UserInputError, match=r"eval example 0 \('Q\?'\) needs 30 positions \(question \+ eval.max_new_tokens\)"):
        check_sequence_lengths(cfg, gpt2_like, [example], [example])


def test_countdown_solver_budget_is_a_clear_error_not_a_hang(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(countdown, "LOAD_SOLVER_NODE_BUDGET", 3)
    path = tmp_path / "cd.json"
    path.write_text(countdown_file({"numbers": [97, 89, 83, 79, 73, 71, 67], "target": 10**13}))
    assert cli.main(["data", "check", "--task", "countdown", "--path", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}:15: record 1: the solver gave up" in err and "after 3 search nodes" in err


def test_a_valid_countdown_file_with_steps_still_loads(tmp_path) -> None:
    path = tmp_path / "cd.json"
    path.write_text(countdown_file({"numbers": [2, 4], "target": 6}))
    examples = countdown.CountdownTask().load(str(path))
    assert [e.meta["target"] for e in examples] == [22, 6] and examples[1].steps == ["4 + 2 = 6"]


def test_record_lines_gives_the_line_each_list_element_starts_on() -> None:
    text = '[\n {"a": [1,\n 2]},\n\n  3, "x,]",\n {"b": {"c": "]"}}]'
    assert record_lines(text) == [2, 5, 5, 6]
    assert record_lines(json.dumps([{"k": i} for i in range(3)], indent=1)) == [2, 5, 8]
    assert record_lines("[]") == []


def test_config_values_keep_their_types_and_good_values_pass() -> None:
    cfg = load_config(None, ["train.epochs=3", "train.lr=0.01", "model.dropout=0.1", "method.name=looped",
                             "method.looped.stage=2", "method.looped.kv_policy=per_loop", "model.backbone=gpt2"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.dropout, cfg.method.looped.stage) == (3, 0.01, 0.1, 2)


def test_streamed_generation_writes_the_same_text_as_one_dump(tmp_path) -> None:
    records = [{"question": f"q{i}", "steps": ["a", "b"], "answer": str(i)} for i in range(5)]
    seen = []
    written = cli.write_json_list(iter(records), tmp_path / "out.json", on_record=lambda: seen.append(1))
    assert written == 5 and len(seen) == 5
    assert (tmp_path / "out.json").read_text() == json.dumps(records, indent=1)
    assert not list(tmp_path.glob("*.tmp"))


def test_streamed_generation_never_holds_the_whole_list(tmp_path) -> None:
    """A huge --n is written record by record: the writer pulls one record at a time and the file grows as it goes."""
    out = tmp_path / "big.json"
    sizes = []

    def records():
        for i in range(200):
            partial = list(tmp_path.glob("big.json.*.tmp"))
            sizes.append(partial[0].stat().st_size if partial else 0)
            yield {"question": "q" * 500, "answer": str(i)}

    cli.write_json_list(records(), out)
    assert sizes[0] == 0 and sizes[-1] > sizes[100] > 0  # flushed as it went, not built in memory first
    assert len(json.loads(out.read_text())) == 200
