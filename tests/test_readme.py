"""Every command in README.md runs on a copy of the repository with nothing beside it (issue 16).

The README's `latentreason ...` lines are extracted in order and run through `cli.main` in a temp copy of the
tracked files (no runs/, no data cache, hub offline), each with overrides that shrink it to a few optimizer
steps of a 1-layer model. Lines with placeholders (CONFIG.yaml, RUN_DIR, ...) are the usage synopsis: each
subcommand there must have a runnable example. Set-up lines (pip, pytest) are checked for the right shape.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from latentreason import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

TINY_RUN = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=300",
            "task.train_size=16", "task.eval_size=4", "train.epochs=1", "train.max_steps=2", "train.batch_size=4",
            "train.warmup_steps=0", "eval.batch_size=4", "eval.max_new_tokens=8"]
"""Appended to every train / pretrain-coprocessor line (later overrides win)."""
TINY_PRETRAINED = ["task.train_size=8", "task.eval_size=2", "train.epochs=1", "train.max_steps=1", "train.batch_size=2",
                   "train.warmup_steps=0", "eval.batch_size=2", "eval.max_new_tokens=4"]
"""For pretrained backbones the model-size keys mean nothing; only the data and step counts shrink."""
SLOW_MARKERS = ("smollm2", "replication_cpu_smoke", "models/my-hf-model")
"""Lines that load a 135M model or run a 42-cell sweep: run only with `pytest -m slow`."""
GPU_ONLY = "replication_gpu"
"""The 1,035-cell GPU sweep is not run, even tiny: a spread of its cells is resolved and validated instead."""
PLACEHOLDER = re.compile(r"\[|\b(CONFIG|RUN_DIR|SWEEP_DIR|SWEEP|TASK|FILE|N)\b")


def readme_code_lines() -> list[str]:
    """Lines of the README's indented code blocks (4 spaces, after a blank line or another code line)."""
    lines, previous_blank_or_code = [], False
    for line in README.splitlines():
        is_code = line.startswith("    ") and line.strip() and previous_blank_or_code
        if is_code:
            lines.append(line.strip())
        previous_blank_or_code = is_code or not line.strip()
    return lines


def latentreason_commands() -> tuple[list[list[str]], list[list[str]]]:
    """(runnable, synopsis) argv lists of the README's `latentreason` commands, env prefixes and `&`/`; wait` cut."""
    runnable, synopsis = [], []
    for line in readme_code_lines():
        for part in re.split(r"\s*(?:&&|;|&(?!&))\s*", line.split("  #")[0]):
            words = shlex.split(part)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # CUDA_VISIBLE_DEVICES=0 ...
                words = words[1:]
            if words[:1] == ["latentreason"]:
                (synopsis if PLACEHOLDER.search(part) else runnable).append(words[1:])
    return runnable, synopsis


def shrink(argv: list[str]) -> list[str]:
    command = argv[0]
    if command in ("train", "pretrain-coprocessor"):
        pretrained = any(a.startswith("model.backbone=") for a in argv) or "smollm2" in " ".join(argv)
        extra = TINY_PRETRAINED if pretrained else TINY_RUN
        if command == "pretrain-coprocessor":
            extra = [*extra, "method.coprocessor.pretrain_seq_len=32", "method.coprocessor.pretrain_ahead=4"]
        return [*argv, *extra]
    if command == "quickstart":
        return [*argv, *TINY_RUN]
    if command == "sweep":
        return [*argv, *(f"base.{o}" for o in TINY_RUN)]
    if command == "data" and "--n" in argv:
        i = argv.index("--n")
        return [*argv[:i + 1], "20", *argv[i + 2:]]
    return argv


def is_slow(argv: list[str]) -> bool:
    return any(marker in " ".join(argv) for marker in SLOW_MARKERS)


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch) -> Path:
    """The tracked (and new, not ignored) files of the repository, without results/ (no README command reads
    it; leaving it out keeps the copy fast), as a fresh clone would have them; nothing beside it."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    clone = tmp_path / "clone"
    for name in listed:
        if not name or name.startswith("results/") or not (REPO / name).is_file():
            continue
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, clone / name)
    monkeypatch.chdir(clone)
    monkeypatch.setenv("LATENTREASON_DATA_CACHE", str(tmp_path / "data_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return clone


def run_readme_commands(clone: Path, slow: bool) -> list[str]:
    ran = []
    runnable, _ = latentreason_commands()
    for argv in runnable:
        if is_slow(argv) != slow or GPU_ONLY in " ".join(argv):
            continue
        code = cli.main([*shrink(argv), "--quiet"])
        assert code == 0, f"README command failed: latentreason {' '.join(argv)}"
        ran.append(" ".join(argv))
    return ran


def test_readme_light_commands_run_and_every_run_config_loads(fresh_clone):
    """Default-suite share (seconds): the data commands run; every train / pretrain line's config (README
    overrides plus the tiny ones) loads and validates. The full walk is the slow test below."""
    from latentreason.config import load_config

    runnable, _ = latentreason_commands()
    for argv in runnable:
        if argv[0] == "data":
            assert cli.main([*shrink(argv), "--quiet"]) == 0, argv
        elif argv[0] in ("train", "pretrain-coprocessor"):
            config, overrides = cli._split_config(argv[1] if len(argv) > 1 else None, shrink(argv)[2:])
            assert load_config(config, overrides).out_dir.startswith("runs/"), argv


@pytest.mark.slow
def test_readme_commands_run_on_a_fresh_copy(fresh_clone):
    """Every README command but the slow-marked and GPU ones, in order, tiny (about 1 min on 2 idle cores)."""
    ran = run_readme_commands(fresh_clone, slow=False)
    assert any(r.startswith("train") for r in ran) and any(r.startswith("pretrain-coprocessor") for r in ran)
    assert any(r.startswith("quickstart") for r in ran) and any(r.startswith("data check") for r in ran)
    for out in ("runs/quickstart", "runs/c6/eval_seed1", "runs/c6/analysis", "runs/cd_pretrain", "runs/cd_liu_pretrained", "runs/cd_liu"):
        assert (fresh_clone / out).exists(), out
    assert not (fresh_clone / "results").exists()  # nothing was written next to committed results


@pytest.mark.slow
def test_readme_slow_commands_run_on_a_fresh_copy(fresh_clone):
    """SmolLM2 recipe, a local HF directory as the Base, the 42-cell smoke sweep and its report."""
    pytest.importorskip("gguf")
    from latentreason.backbones import build_backbone
    from latentreason.config import ModelConfig

    tiny = build_backbone(ModelConfig(n_layer=1, n_embd=32, n_head=2, tokenizer_vocab_size=300), corpus=["Every wumpus is a lempus. 12 + 3 = 15"] * 8)
    tiny.model.save_pretrained(fresh_clone / "models" / "my-hf-model")
    tiny.tokenizer.save_pretrained(fresh_clone / "models" / "my-hf-model")
    (fresh_clone / "runs").mkdir(exist_ok=True)
    ran = run_readme_commands(fresh_clone, slow=True)
    assert any("replication_cpu_smoke" in r for r in ran) and any("smollm2" in r for r in ran)


def test_gpu_replication_sweep_resolves_every_cell(fresh_clone):
    from latentreason.sweep import cell_config, expand, read_sweep

    runnable, _ = latentreason_commands()
    sweeps = [argv for argv in runnable if argv[0] == "sweep" and GPU_ONLY in " ".join(argv)]
    assert sweeps
    for argv in sweeps:
        sweep = read_sweep(argv[1], argv[2:])
        cells = expand(sweep)
        assert len(cells) == 1035 and sweep.out_dir.startswith("runs/")
        for cell in cells[::7]:  # a spread of cells of every group (all 1,035 take seconds more)
            cfg, _ = cell_config(sweep, cell, cells)
            assert cfg.out_dir.startswith("runs/replication_gpu/")


def test_every_synopsis_subcommand_has_a_runnable_example():
    runnable, synopsis = latentreason_commands()
    assert len(synopsis) >= 7 and len(runnable) >= 10
    examples = {tuple(argv[:2]) if argv[0] == "data" else (argv[0],) for argv in runnable}
    for argv in synopsis:
        key = tuple(argv[:2]) if argv[0] == "data" else (argv[0],)
        assert key in examples, f"no runnable README example of `latentreason {' '.join(key)}`"
    subcommands = set(cli.build_parser()._subparsers._group_actions[0].choices)  # every subcommand is documented
    assert {key[0] for key in examples} >= subcommands - {"export", "data"} | {"data"}, subcommands


def test_readme_commands_write_only_to_fresh_git_ignored_dirs():
    runnable, _ = latentreason_commands()
    for argv in runnable:
        for value in [a.split("=", 1)[1] for a in argv if a.startswith("out_dir=")] + [argv[i + 1] for i, a in enumerate(argv) if a == "--out"]:
            assert value.startswith("runs/"), argv
    for config in {a for argv in runnable for a in argv if a.endswith(".yaml")}:
        text = (REPO / config).read_text()
        uses_own_out_dir = not any(a.startswith("out_dir=") for argv in runnable if config in argv for a in argv)
        if uses_own_out_dir:
            assert "out_dir: runs/" in text, f"{config} writes next to committed results; pass out_dir=runs/... in the README"


def test_install_lines_are_right_off_this_machine():
    lines = readme_code_lines()
    cpu = [line for line in lines if line.startswith("pip install torch") and "whl/cpu" in line]
    gpu = [line for line in lines if line.startswith("pip install torch") and "index-url" not in line]
    assert cpu == ["pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"] and len(gpu) == 1
    assert any("python -m pytest" in line and ".[test" in line for line in lines)
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci and '".[test,smollm2,peft]"' in ci


def test_no_reference_outside_the_repository():
    """Nothing the user gets points at the sibling shared/ folder (a clone does not have it)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    for name in listed:
        if name.endswith((".md", ".yaml", ".py", ".toml")) and not name.startswith("results/") and (REPO / name).is_file():
            assert "../" + "shared" not in (REPO / name).read_text(), name
    assert (REPO / "data" / "prosqa" / "LICENSE").is_file() and (REPO / "data" / "gsm8k" / "LICENSE").is_file()
    assert (REPO / "docs" / "DESIGN.md").is_file()
