"""The project's training loop (`latentreason.training.train`) against a minimal PyTorch loop.

Sides, interleaved repeat by repeat (see common.py), each a run of --steps optimizer steps of the same
method on the same model initialisation:

- minimal:          the same batches, collated before timing, then per step only zero_grad, forward (under
                    the same autocast), backward, AdamW step (same hyperparameters). No framework.
- project:          `training.train(cfg)` itself: Accelerate, collation on the fly, grad clipping, the
                    scheduler, metrics.jsonl, tracker, the epoch-end checkpoint, the progress bookkeeping.
- project+bucket:   the same with `train.bucket_by_length=true` (other batches: less padding).
- minimal+host:     (opt-in, `--sides`) the minimal loop plus the host work the project does every step:
                    collation from the example indices, `loss.item()`, gradient clipping and
                    `float(grad_norm)` (two device synchronisations), the scheduler. It splits the project's
                    gap into that per-step host work and everything else.

The first --skip steps of every side are not timed (allocator growth, compilation); the project's time is
read from its own metrics.jsonl (`elapsed_s` at step --skip and at the last step, so log_every must divide
both), which covers everything the loop does between those steps, including the checkpoint written at the
end of every epoch inside the window. tokens/s counts real (non-pad) tokens; computed tokens are the padded
[B, T] shapes the model actually runs, and useful / computed is the share that is not padding.

Target: project >= 0.90x the minimal loop's tokens/s on the same batches.
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import common
from latentreason.batching import epoch_order
from latentreason.config import RunConfig, from_dict
from latentreason.flops import forward_flops, train_flops
from latentreason.training import build_run, train

TARGET_RATIO = 0.90


def run_config(args, out_dir: str, bucket: bool) -> RunConfig:
    return from_dict(RunConfig, {
        "out_dir": out_dir,
        "model": {"backbone": args.backbone, "max_positions": 1024, **common.SIZES[args.size]},
        # A fixed split (no stream): the benchmark rebuilds the loop's batches from epoch_order.
        "task": {"name": args.task, "train_size": args.train_size, "eval_size": 8, "stream": False, "params": json.loads(args.task_params)},
        "method": {"name": args.method},
        "train": {"batch_size": args.batch_size, "max_steps": args.steps, "epochs": 10_000, "log_every": args.log_every,
                  "seed": args.seed, "bucket_by_length": bucket, "compile": args.compile,
                  "precision": {"fp32": "fp32", "bf16": "bf16"}.get(args.dtype, "auto")},
    })


def loop_batches(run, cfg: RunConfig) -> list[list[int]]:
    """Example indices of every micro-batch the loop reads in its first `max_steps` steps (one process)."""
    tc = cfg.train
    per_epoch = len(run.train_set) // tc.batch_size
    out: list[list[int]] = []
    epoch = 0
    while len(out) < tc.max_steps:
        order = epoch_order(run.train_set, tc, epoch)
        out += [order[i * tc.batch_size: (i + 1) * tc.batch_size] for i in range(per_epoch)]
        epoch += 1
    return out[: tc.max_steps]


def project_seconds(out_dir: Path, skip: int, steps: int) -> float:
    """Loop time between the end of step `skip` and the end of step `steps`, from metrics.jsonl."""
    elapsed = {r["step"]: r["elapsed_s"] for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())}
    return elapsed[steps] - elapsed[skip]


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--task", default="prosqa")
    p.add_argument("--task-params", default='{"n_nodes": 10, "min_depth": 2, "max_depth": 3}',
                   help="task.params as JSON (default: the quickstart's small ProsQA graphs)")
    p.add_argument("--method", default="cot")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-size", type=int, default=640, help="examples (train_size / batch_size steps per epoch)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per side per repeat")
    p.add_argument("--skip", type=int, default=10, help="untimed first steps of every side")
    p.add_argument("--log-every", type=int, default=10, help="train.log_every (must divide --skip and --steps)")
    p.add_argument("--sides", default="minimal,project,project+bucket")
    args = p.parse_args()
    if args.skip % args.log_every or args.steps % args.log_every or args.skip >= args.steps:
        p.error("--log-every must divide --skip and --steps, and --skip < --steps")
    env = common.setup(args)
    sides = [s for s in args.sides.split(",") if s]
    if env.device.type != ("cuda" if torch.cuda.is_available() else "cpu"):
        p.error("the project loop runs on cuda whenever a GPU is visible: use the same --device")
    scratch = Path(tempfile.mkdtemp(prefix="bench_train_"))

    # The minimal side: the run the project loop would build (same seed: same weights), its batches collated now.
    cfg = run_config(args, str(scratch / "unused"), bucket=False)
    run = build_run(cfg)
    method = run.method.to(env.device)
    method.train()
    if args.compile:
        from latentreason.training import compile_layers

        compile_layers(method)
    initial = copy.deepcopy(method.state_dict())
    tc = cfg.train
    shapes: dict[str, list[dict[str, Any]]] = {}
    batches: dict[str, list[dict[str, Any]]] = {}
    indices_by_key: dict[str, list[list[int]]] = {}
    for bucket in (False, True):
        key = "bucket" if bucket else "random"
        indices = indices_by_key[key] = loop_batches(run, run_config(args, "unused", bucket))
        collated = [common.to_device(method.collate([run.train_set[i] for i in b]), env.device) for b in indices]
        batches[key] = collated
        shapes[key] = [{"useful": int(b["attention_mask"].sum()), "computed": b["attention_mask"].numel(), "T": b["attention_mask"].shape[1]}
                       for b in collated[args.skip:]]

    def minimal(host_work: bool = False) -> float:
        method.load_state_dict(initial)
        trainable = [q for q in method.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95), fused=env.device.type == "cuda")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        began = 0.0
        for index, batch in enumerate(batches["random"]):
            if index == args.skip:
                common.sync(env.device)
                began = time.perf_counter()
            if host_work:  # what optimizer_step() does besides the model: collate now, read loss and norm back
                batch = common.to_device(method.collate([run.train_set[i] for i in indices_by_key["random"][index]]), env.device)
            optimizer.zero_grad(set_to_none=True)
            with env.autocast():
                loss = method(batch)
            loss.backward()
            if host_work:
                loss.item()
                float(torch.nn.utils.clip_grad_norm_(trainable, tc.max_grad_norm))
            optimizer.step()
            scheduler.step()
        common.sync(env.device)
        return time.perf_counter() - began

    def project(bucket: bool):
        def side() -> float:
            out = Path(tempfile.mkdtemp(prefix="run_", dir=scratch))
            train(run_config(args, str(out / "run"), bucket), progress=False, evaluate_at_end=False)
            return project_seconds(out / "run", args.skip, args.steps)
        return side

    fns = {"minimal": minimal, "minimal+host": lambda: minimal(host_work=True), "project": project(False), "project+bucket": project(True)}
    fns = {name: fns[name] for name in sides}
    print(f"timing {len(fns)} sides x {args.repeats} repeats of {args.steps} steps ({args.steps - args.skip} timed), interleaved ...")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    for _ in range(args.repeats):
        for name, fn in fns.items():
            samples[name].append(fn())

    dims = method.dims
    rows = []
    timed = args.steps - args.skip
    for name, s in samples.items():
        key = "bucket" if name.endswith("bucket") else "random"
        useful = sum(b["useful"] for b in shapes[key])
        computed = sum(b["computed"] for b in shapes[key])
        flops = sum(train_flops(forward_flops(dims, b["T"], 0, b["T"])) * b["computed"] / b["T"] for b in shapes[key])
        median = statistics.median(s)
        rows.append({
            "name": name, "batches": key, "steps": timed, "ms/step": 1000 * median / timed, "min_s": min(s), "max_s": max(s),
            "median_s": median, "useful_tokens": useful, "computed_tokens": computed, "useful/computed": useful / computed,
            "tokens/s": useful / median, "computed_tokens/s": computed / median, "flops": flops,
            "mfu": common.mfu(flops, median, env.device), "samples_s": s,
        })
    by = {r["name"]: r for r in rows}
    summary: dict[str, Any] = {}
    if "minimal" in by:
        for name in ("project", "project+bucket"):
            if name in by:
                ref = "minimal"
                by[name]["vs_minimal_tokens/s"] = by[name]["tokens/s"] / by[ref]["tokens/s"]
                by[name]["vs_minimal_min"] = (by[name]["useful_tokens"] / by[name]["min_s"]) / (by[ref]["useful_tokens"] / by[ref]["min_s"])
        if "project" in by:
            ratio = by["project"]["vs_minimal_tokens/s"]
            summary["project / minimal tokens/s, same batches (median, min)"] = f"{ratio:.3f}, {by['project']['vs_minimal_min']:.3f}"
            summary[f"target >= {TARGET_RATIO}"] = "met" if ratio >= TARGET_RATIO else "MISSED"
    summary["padding: useful / computed tokens, random batches"] = by[sides[0]]["useful/computed"] if sides else None
    useful_random = sum(b["useful"] for b in shapes["random"]) / sum(b["computed"] for b in shapes["random"])
    useful_bucket = sum(b["useful"] for b in shapes["bucket"]) / sum(b["computed"] for b in shapes["bucket"])
    summary["padding: useful / computed tokens (random batches, bucket_by_length)"] = f"{useful_random:.3f}, {useful_bucket:.3f}"
    if "project" in by and "project+bucket" in by:
        summary["project+bucket / project useful tokens/s (median)"] = by["project+bucket"]["tokens/s"] / by["project"]["tokens/s"]
    summary["timing"] = f"median of {args.repeats} repeats per side, {timed} steps each, sides interleaved; the machine may be shared (read the ratios)"
    columns = ["name", "batches", "steps", "ms/step", "min_s", "max_s", "useful_tokens", "computed_tokens", "useful/computed", "tokens/s",
               "computed_tokens/s", "mfu", "vs_minimal_tokens/s", "vs_minimal_min"]
    title = f"Training loop, {args.method} on {args.task}, {common.model_label(args)}, batch={args.batch_size}, {args.steps} steps ({timed} timed)"
    common.report(title, args, env, rows, columns, summary)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
