"""`latentreason` command line: each subcommand parses a config and calls one plain function.

Bad input (files, config keys, names) prints one `error: ...` line and exits with code 2. Other one-line
exits: 130 interrupted (Ctrl-C / SIGTERM; says how to resume), 3 training diverged (non-finite loss), 4 disk full.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from latentreason.errors import RunFailed, UserInputError


def _split_config(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """The YAML file is optional: `latentreason train method.name=cot` is all overrides."""
    if config is not None and "=" in config:
        return None, [config, *overrides]
    return config, overrides


def check_run_inputs(cfg: Any, command: str = "train") -> None:
    """Everything about a run that can be wrong without torch: finished out_dir, backbone name (a local dir
    that is missing, a hub id that cannot be reached), init_from weights, the data files themselves.

    Runs before the heavy imports (torch + transformers take 10+ s), so bad input fails in about a second.
    """
    from latentreason.backbone_names import backbone_kind, check_hub_backbone
    from latentreason.data import load_splits
    from latentreason.run_checks import check_init_from, require_final_weights

    out = Path(cfg.out_dir)
    if (out / "done.json").exists():
        raise UserInputError("this run already finished; choose a new out_dir (nothing was overwritten)", path=str(out))
    if backbone_kind(cfg.model.backbone) == "hub":
        check_hub_backbone(cfg.model.backbone)
    if cfg.train.init_from:
        require_final_weights(cfg.train.init_from, f"train.init_from run {cfg.train.init_from}")
    check_init_from(cfg)  # a starting run of another size / tokenizer / task: one line (run_checks.py)
    corpus = cfg.method.coprocessor.pretrain_corpus
    if command == "pretrain-coprocessor" and corpus != "task" and not Path(corpus).is_file():
        raise UserInputError("method.coprocessor.pretrain_corpus: text file not found", path=corpus)
    load_splits(cfg.task)  # malformed or missing data files; generated splits land in the data cache for the run


def _cmd_train(args: argparse.Namespace) -> None:
    from latentreason.config import load_config

    config, overrides = _split_config(args.config, args.overrides)
    cfg = load_config(config, overrides)
    pretraining = cfg.train.objective == "pretrain"  # train() hands it to pretrain_coprocessor
    check_run_inputs(cfg, command="pretrain-coprocessor" if pretraining else "train")
    from latentreason.training import train  # heavy (torch, transformers): only once the input is known good

    summary = train(cfg, progress=not args.quiet)
    if pretraining:
        print(json.dumps(summary, indent=2))
        return
    print(json.dumps({k: summary[k] for k in ("accuracy", "accuracy_ci95", "chance_accuracy", "shortcut_ceiling", "n", "forward_passes_per_answer") if k in summary}))


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from latentreason.config import load_config

    config, overrides = _split_config(args.config, args.overrides)
    cfg = load_config(config, overrides)
    check_run_inputs(cfg, command="pretrain-coprocessor")
    from latentreason.pretraining import pretrain_coprocessor  # heavy: after the checks

    summary = pretrain_coprocessor(cfg, progress=not args.quiet)
    print(json.dumps(summary, indent=2))


def _cmd_eval(args: argparse.Namespace) -> None:
    from latentreason.config import parse_overrides
    from latentreason.run_checks import check_finished_run

    check_finished_run(args.run_dir)
    from latentreason.finished_run import evaluate_run  # heavy: after the checks

    summary = evaluate_run(args.run_dir, parse_overrides(args.overrides), progress=not args.quiet, eval_name=args.name)
    print(json.dumps(summary, indent=2))


def _cmd_data(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from latentreason.data import generator_params
    from latentreason.tasks import get_task

    task = get_task(args.task)
    if args.action == "check":
        examples = task.load(args.path)
        print(f"{args.path}: {len(examples)} {args.task} examples OK")
        return
    if args.action == "audit":
        return _audit_data(task, args)
    out = Path(args.out or "data.json")
    if out.exists() and not args.force:
        raise UserInputError("output exists; pass --force to overwrite", path=str(out))
    if args.n < 1:
        raise UserInputError(f"data generate --n {args.n}: expected at least 1 example")
    cfg = _generator_config(args)
    examples = task.iter_generate(args.n, args.seed, **generator_params(task, cfg, args.split))
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=args.n, desc=f"generate {args.task}", unit="ex", disable=args.quiet)
    # Task.to_record writes the schema the task's `load` reads, so `data check` and `train` take the file.
    written = write_json_list((task.to_record(e) for e in examples), out, on_record=lambda: bar.update(1))
    bar.close()
    print(f"wrote {written} {args.task} examples to {out}")


def _generator_config(args: argparse.Namespace) -> Any:
    """The TaskConfig of `data generate/audit`: `KEY=VALUE` options that are not TaskConfig fields are
    generator parameters (`n_nodes=10` is `params.n_nodes=10`)."""
    from dataclasses import fields

    from latentreason.config import TaskConfig, from_dict, parse_overrides

    options = parse_overrides(args.overrides)
    known = {f.name for f in fields(TaskConfig)}
    params = {k: options.pop(k) for k in list(options) if k not in known}
    options["params"] = {**options.get("params", {}), **params}
    return from_dict(TaskConfig, {"name": args.task, **options})


def _audit_data(task: Any, args: argparse.Namespace) -> None:
    """`data audit`: the shortcut audit of a file (--path) or of a generated split, as markdown (and JSON
    with --out)."""
    from latentreason.data import generator_params
    from latentreason.tasks.audit import audit, format_markdown

    if args.path:
        if args.overrides:
            raise UserInputError(f"data audit --path takes no generator options, got {' '.join(args.overrides)}")
        examples, source = task.load(args.path), args.path
    else:
        if args.n < 1:
            raise UserInputError(f"data audit --n {args.n}: expected at least 1 example")
        cfg = _generator_config(args)
        examples = task.generate(args.n, args.seed, **generator_params(task, cfg, args.split))
        source = " ".join([f"generated {args.task} --n {args.n} --seed {args.seed} --split {args.split}",
                           *args.overrides])
    report = {"source": source, **audit(args.task, examples)}
    print(format_markdown(report, source), end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


def write_json_list(records: Iterable[Any], out: Path, on_record: Callable[[], None] = lambda: None) -> int:
    """Stream `records` to `out` as the same text `json.dumps(list(records), indent=1)` gives, one record at
    a time (a huge --n never sits in memory). Written to a temp file renamed at the end: an interrupted
    generation leaves no half-written list at `out`."""
    partial = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(partial, "w") as handle:
            for record in records:
                handle.write(("[\n" if count == 0 else ",\n") + textwrap.indent(json.dumps(record, indent=1), " "))
                count += 1
                on_record()
            handle.write("\n]" if count else "[]")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return count


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from latentreason.config import parse_overrides
    from latentreason.quickstart import quickstart

    quickstart(args.out, progress=not args.quiet, base_overrides=parse_overrides(args.overrides), workers=args.workers,
               with_cot=args.with_cot)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from latentreason.sweep import read_sweep, run_sweep

    read_sweep(args.config, args.overrides)  # a bad sweep file fails before run_sweep imports torch
    failures: list[str] = []
    if args.executor == "submitit":  # one job per cell through submitit (SLURM, or local processes)
        from latentreason.sweep_submitit import submit_sweep

        submit_sweep(args.config, args.overrides, cluster=args.cluster, options=args.executor_option, failures=failures)
    else:
        run_sweep(args.config, args.overrides, progress=not args.quiet, failures=failures, wait=not args.no_wait)
    return 1 if failures else 0  # a sweep with a failed cell must not look like a success to scripts


def _cmd_analyze(args: argparse.Namespace) -> None:
    from latentreason.run_checks import check_finished_run
    from latentreason.runlock import RunLock

    check_finished_run(args.run_dir)
    from latentreason.analysis.runs import analyze_run  # heavy (the analysis package imports torch): after the checks

    with RunLock(args.run_dir, "analyze"):
        analyze_run(args.run_dir, args.overrides, progress=not args.quiet)


def _cmd_report(args: argparse.Namespace) -> None:
    from latentreason.report import write_report

    print(write_report(args.sweep_dir))


def _cmd_claims(args: argparse.Namespace) -> None:
    from latentreason.claims import write_claims

    print(write_claims(args.sweep_dirs, args.out))


def _cmd_export(args: argparse.Namespace) -> None:
    from latentreason.export import export_run

    print(f"exported {args.run_dir} to {export_run(args.run_dir, args.out_dir, force=args.force)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentreason", description="Latent reasoning in LLMs: train, evaluate, dissect.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one method on one task, then evaluate")
    p.add_argument("config", nargs="?", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 method.n_latents=4")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("pretrain-coprocessor", help="Liu-style coprocessor pretraining on plain text (M points x N_A ahead tokens; variant liu, h1 or h2)")
    p.add_argument("config", nargs="?", help="YAML config (see configs/coprocessor_sweep_pretrain.yaml)")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("eval", help="re-evaluate a finished run")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="e.g. task.eval_path=data.json eval.max_new_tokens=32")
    p.add_argument("--name", default="eval", help="results subdirectory of RUN_DIR (default: eval)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("data", help="generate a task data file, check one, or audit one for shortcuts")
    p.add_argument("action", choices=["generate", "check", "audit"])
    p.add_argument("--task", required=True)
    p.add_argument("--path", help="file to check or audit (audit without it: a generated split)")
    p.add_argument("--out", help="file to write (generate: default data.json; audit: the JSON report)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--force", action="store_true")
    p.add_argument("overrides", nargs="*", help="task options, e.g. branching=5")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("quickstart", help="tiny ProsQA run on CPU: No-CoT (and CoT with --with-cot), prints a table")
    p.add_argument("--out", default="runs/quickstart", help="output dir (default under the git-ignored runs/)")
    p.add_argument("--with-cot", action="store_true", help="also train the CoT baseline (a second cell, side by side)")
    p.add_argument("--workers", type=int, default=0, choices=(0, 1, 2),
                   help="cells trained at once: 2 = side by side in two processes (default 0: 2 when 2+ threads are free)")
    p.add_argument("overrides", nargs="*", help="changes to its run config, e.g. model.backbone=qwen3-tiny")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("sweep", help="grid of runs (method x N_L x task x branching x seed), resumable")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--executor", choices=["claims", "submitit"], default="claims",
                   help="claims: this process trains cells itself (start one per core/GPU); submitit: one job per cell")
    p.add_argument("--cluster", default="auto", choices=["auto", "slurm", "local", "debug"],
                   help="submitit: where jobs run (auto: SLURM when available, else local processes)")
    p.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit executor parameter, e.g. timeout_min=120 slurm_partition=gpu gpus_per_node=1 (repeatable)")
    p.add_argument("--no-wait", action="store_true",
                   help="claims: leave cells other workers hold to them and exit when nothing else is left "
                        "(default: wait for them, so the tables this worker writes are complete)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("analyze", help="latent analyses of a finished run")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("report", help="markdown report of a sweep")
    p.add_argument("sweep_dir")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("claims", help="the paper's claims decided from one or more sweeps' cells (paper_claims.md)")
    p.add_argument("sweep_dirs", nargs="+", metavar="DIR", help="a sweep folder (its runs/ cells) or one finished run folder")
    p.add_argument("--out", help="file to write (default: the first DIR/paper_claims.md)")
    p.set_defaults(func=_cmd_claims)

    p = sub.add_parser("export", help="write a finished run as a Hugging Face directory (safetensors, tokenizer, model card)")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    p.set_defaults(func=_cmd_export)

    for name, subparser in sub.choices.items():
        # `--quiet` also after the subcommand (`train --quiet`); SUPPRESS keeps a top-level `--quiet` in force.
        subparser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
        if name in ("train", "pretrain-coprocessor"):
            subparser.formatter_class = argparse.RawDescriptionHelpFormatter
            subparser.epilog = run_config_help()
    return parser


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (config.py documents fields that way)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def run_config_help(width: int = 110) -> str:
    """`train --help` epilog: methods, tasks, backbones and every config key with its default and doc,
    generated from the config dataclasses and registries so it never goes stale."""
    import dataclasses
    import typing

    from latentreason.backbone_names import registry_backbones
    from latentreason.config import MethodName, RunConfig, TaskName

    lines = [
        f"methods (method.name): {', '.join(typing.get_args(MethodName))}",
        f"tasks (task.name): {', '.join(typing.get_args(TaskName))}",
        f"backbones (model.backbone): {', '.join(registry_backbones())}, a local Hugging Face model directory, or a hub id (e.g. gpt2)",
        "",
        "config keys (set in the YAML or as dotted.key=value; default in brackets, then a choice key's choices):",
    ]

    def walk(cls: type, prefix: str) -> None:
        docs = _attribute_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")
                continue
            entry = f"  {prefix}{f.name} [{default!r}]"
            if typing.get_origin(hints[f.name]) is typing.Literal:  # a choice key, checked when the config loads
                entry += " {" + ", ".join(str(choice) for choice in typing.get_args(hints[f.name])) + "}"
            # First sentence of the field's docstring; the rest is in config.py or methods/options.py.
            doc = docs.get(f.name, "").split(". ")[0].rstrip(".")
            lines.append(textwrap.fill(f"{entry}: {doc}" if doc else entry, width=width, subsequent_indent="      "))

    walk(RunConfig, "")
    lines += ["", "example: latentreason train configs/coconut_prosqa.yaml method.n_latents=6 out_dir=runs/c6"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Dotted overrides may come after options (`data generate --n 5 branching=3`): collect stragglers.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command == "data" and args.action == "check" and not args.path:
        print("error: data check needs --path FILE", file=sys.stderr)
        return 2
    try:
        return args.func(args) or 0  # commands return None on success, or an exit code
    except (UserInputError, RunFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM; training's TrainingInterrupted says how to resume
        print(str(interrupt) or "interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(f"error: {error.filename or 'a run file'}: no space left on device; free some space and run the same command again", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
