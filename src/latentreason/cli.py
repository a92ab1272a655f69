"""`latentreason` command line: each subcommand parses a config and calls one plain function.

Bad input (files, config keys, names) prints one `error: ...` line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latentreason.errors import UserInputError


def _split_config(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """The YAML file is optional: `latentreason train method.name=cot` is all overrides."""
    if config is not None and "=" in config:
        return None, [config, *overrides]
    return config, overrides


def _cmd_train(args: argparse.Namespace) -> None:
    from latentreason.config import load_config
    from latentreason.training import train

    config, overrides = _split_config(args.config, args.overrides)
    cfg = load_config(config, overrides)
    summary = train(cfg, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("accuracy", "accuracy_ci95", "n", "forward_passes_per_answer") if k in summary}))


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from latentreason.config import load_config
    from latentreason.methods.coprocessor_pretrain import pretrain_coprocessor

    config, overrides = _split_config(args.config, args.overrides)
    summary = pretrain_coprocessor(load_config(config, overrides), progress=not args.quiet)
    print(json.dumps(summary, indent=2))


def _cmd_eval(args: argparse.Namespace) -> None:
    from latentreason.config import parse_overrides
    from latentreason.training import evaluate_run

    summary = evaluate_run(args.run_dir, parse_overrides(args.overrides), progress=not args.quiet, eval_name=args.name)
    print(json.dumps(summary, indent=2))


def _cmd_data(args: argparse.Namespace) -> None:
    from latentreason.config import TaskConfig, from_dict, parse_overrides
    from latentreason.data import generator_params
    from latentreason.tasks import get_task

    task = get_task(args.task)
    if args.action == "check":
        examples = task.load(args.path)
        print(f"{args.path}: {len(examples)} {args.task} examples OK")
        return
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserInputError("output exists; pass --force to overwrite", path=str(out))
    cfg = from_dict(TaskConfig, {"name": args.task, **parse_overrides(args.overrides)})
    examples = task.generate(args.n, args.seed, **generator_params(task, cfg, args.split))
    records = [getattr(task, "to_record", lambda e: {"question": e.question, "steps": e.steps, "answer": e.answer})(e) for e in examples]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1))
    print(f"wrote {len(records)} {args.task} examples to {out}")


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from latentreason.quickstart import quickstart

    quickstart(args.out, progress=not args.quiet)


def _cmd_sweep(args: argparse.Namespace) -> None:
    from latentreason.experiments import run_sweep

    run_sweep(args.config, args.overrides, progress=not args.quiet)


def _cmd_analyze(args: argparse.Namespace) -> None:
    from latentreason.experiments import analyze_run

    analyze_run(args.run_dir, args.overrides)


def _cmd_report(args: argparse.Namespace) -> None:
    from latentreason.experiments import write_report

    print(write_report(args.sweep_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentreason", description="Latent reasoning in LLMs: train, evaluate, dissect.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one method on one task, then evaluate")
    p.add_argument("config", nargs="?", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 method.n_latents=4")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("pretrain-coprocessor", help="Liu-style coprocessor pretraining on plain text (M points x N_A ahead tokens)")
    p.add_argument("config", nargs="?", help="YAML config (see configs/issue4_pretrain.yaml)")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("eval", help="re-evaluate a finished run")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="e.g. task.eval_path=data.json eval.max_new_tokens=32")
    p.add_argument("--name", default="eval", help="results subdirectory of RUN_DIR (default: eval)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("data", help="generate a task data file, or check one")
    p.add_argument("action", choices=["generate", "check"])
    p.add_argument("--task", required=True)
    p.add_argument("--path", help="file to check")
    p.add_argument("--out", default="data.json", help="file to write (generate)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--force", action="store_true")
    p.add_argument("overrides", nargs="*", help="task options, e.g. branching=5")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("quickstart", help="tiny ProsQA run: CoT vs No-CoT on CPU, prints a table")
    p.add_argument("--out", default="runs/quickstart", help="output dir (default under the git-ignored runs/)")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("sweep", help="grid of runs (method x N_L x task x branching x seed), resumable")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("analyze", help="latent analyses of a finished run")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("report", help="markdown report of a sweep")
    p.add_argument("sweep_dir")
    p.set_defaults(func=_cmd_report)
    return parser


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
        args.func(args)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
