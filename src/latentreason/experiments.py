"""Sweeps over method x N_L x task x branching x seed, result tables, and markdown reports.

A sweep YAML:

    out_dir: results/my_sweep
    base:                      # a RunConfig mapping (out_dir is set per cell)
      task: {name: prosqa, train_size: 2000}
      train: {epochs: 10}
    grid:                      # applied to every group
      train.seed: [0, 1, 2]
    groups:                    # union of cartesian products; default [{}]
      - {method.name: [cot, no_cot]}
      - {method.name: [soft_tokens, coconut], method.n_latents: [2, 4, 6]}
    analyze: false             # run latent analyses on every finished cell

Cells already finished (done.json present) are skipped, so re-running a sweep resumes it; a cell that
was interrupted resumes from its checkpoint. Several workers can run one sweep together (start the same
command once per core or GPU): each claims a cell (runs/NAME/.claim) before training it. Each cell keeps its config.yaml, metrics and eval.json.
A value may reference another cell's run dir: `train.init_from: "{cell:method.name=cot}"` resolves to the
dir of the cell with those overrides and the same remaining grid values (e.g. the same seed/task), which is
run first. That is how Coconut starts from CoT and a frozen Base comes from a No-CoT run.

`analyze_run(run_dir)` (`latentreason analyze`) writes RUN_DIR/analysis/ (latent geometry, logit lens, PNGs);
with `analyze: true` a sweep analyses every finished cell that has no analysis.json yet (so analyses resume
too). `write_report(sweep_dir)` (`latentreason report`) writes SWEEP_DIR/report.md and SWEEP_DIR/plots/.
"""

from __future__ import annotations

import csv
import fcntl
import itertools
import json
import math
import os
import re
import socket
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from latentreason.config import RunConfig, deep_merge, from_dict, parse_overrides, read_yaml
from latentreason.errors import UserInputError

CELL_REF = re.compile(r"^\{cell:(.*)\}$")
GROUP_KEYS = ("task.name", "task.branching", "method.name", "method.n_latents", "method.coprocessor.variant", "method.looped.loops")
"""Columns identifying a configuration in the aggregated table (seeds are averaged over)."""


@dataclass
class SweepConfig:
    out_dir: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    groups: list[dict[str, list[Any]]]
    analyze: bool = False


def read_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    data = deep_merge(read_yaml(path), parse_overrides(overrides or []))
    known = {"out_dir", "base", "grid", "groups", "analyze"}
    if set(data) - known:
        raise UserInputError(f"unknown sweep key(s) {sorted(set(data) - known)}; expected {sorted(known)}", path=str(path))
    if "out_dir" not in data:
        raise UserInputError("sweep needs an out_dir", path=str(path))
    for name in ("grid",):
        for key, values in (data.get(name) or {}).items():
            if not isinstance(values, list):
                raise UserInputError(f"{name}.{key}: expected a list of values, got {values!r}", path=str(path))
    return SweepConfig(
        out_dir=str(data["out_dir"]), base=data.get("base") or {}, grid=data.get("grid") or {},
        groups=data.get("groups") or [{}], analyze=bool(data.get("analyze", False)),
    )


def expand(sweep: SweepConfig) -> list[dict[str, Any]]:
    """All cells as flat {dotted.key: value} override dicts, in a stable order, duplicates removed."""
    cells: list[dict[str, Any]] = []
    for group in sweep.groups:
        axes = {**group, **sweep.grid}
        keys = list(axes)
        for values in itertools.product(*(axes[k] if isinstance(axes[k], list) else [axes[k]] for k in keys)):
            cell = dict(zip(keys, values))
            if cell not in cells:
                cells.append(cell)
    return cells


def cell_name(cell: dict[str, Any]) -> str:
    """Readable, filesystem-safe dir name from the cell's overrides (last key part + value)."""
    parts = []
    for key, value in cell.items():
        if isinstance(value, str) and CELL_REF.match(value):
            continue  # a dependency is not part of the cell's identity
        short = key.split(".")[-1].replace("_", "")
        parts.append(str(value) if short == "name" else f"{short}-{value}")
    name = "_".join(parts) or "base"
    return re.sub(r"[^A-Za-z0-9_.\-]", "", name)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}} (values kept as YAML gave them, never re-parsed)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def cell_config(sweep: SweepConfig, cell: dict[str, Any], cells: list[dict[str, Any]]) -> tuple[RunConfig, list[dict]]:
    """Resolve a cell to a RunConfig plus the cells it depends on ({cell:...} references)."""
    data = deep_merge(sweep.base, nested(cell))
    data["out_dir"] = str(Path(sweep.out_dir) / "runs" / cell_name(cell))
    dependencies = []

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, str) and (match := CELL_REF.match(node)):
            wanted = parse_flat(match.group(1))
            target = {**{k: v for k, v in cell.items() if k not in wanted}, **wanted}
            # Keys that the referenced cell's group does not vary are dropped (e.g. n_latents for cot).
            matches = [c for c in cells if all(c.get(k) == v for k, v in target.items() if k in c) and all(c.get(k) == v for k, v in wanted.items())]
            if not matches:
                raise UserInputError(f"cell reference {node!r} from {cell_name(cell)} matches no cell of the sweep")
            dependencies.append(matches[0])
            return str(Path(sweep.out_dir) / "runs" / cell_name(matches[0]))
        return node

    data = resolve(data)
    return from_dict(RunConfig, data), dependencies


def parse_flat(text: str) -> dict[str, Any]:
    flat = {}
    for item in text.split(","):
        key, _, raw = item.partition("=")
        flat[key.strip()] = parse_overrides([f"x={raw.strip()}"])["x"]
    return flat


CLAIM_FILE = ".claim"
"""Marks a cell some sweep worker is training or analysing right now, so that several `latentreason sweep`
processes started on one config share its cells instead of racing for them. The claim is an exclusive
`flock` held for as long as the worker works on the cell (the kernel drops it when the worker dies, however
it dies); the file names the holder (`host pid`) for people and for workers on other hosts."""

_held_claims: dict[Path, int] = {}
"""Claim file -> open descriptor holding its lock, for every cell this process holds."""


def _claim(run_dir: Path) -> bool:
    """Claim `run_dir` for this process; False when another worker holds it.

    Atomic under any number of concurrent takers: the lock decides, and exactly one taker gets it. A claim
    whose worker died (crash, kill -9) holds no lock and is taken over. A claim written on another host is
    respected because its lock may not reach this one on a shared file system (delete it by hand if that
    worker is dead).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM_FILE
    host = socket.gethostname()
    for _ in range(100):  # a retry only follows a release that raced our open: it cannot repeat for long
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # a live worker holds it
        try:
            on_disk = os.stat(path)
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(fd)
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)  # the holder released (removed) the file between our open and our lock: look again
            continue
        owner = os.pread(fd, 4096, 0).decode(errors="replace").partition(" ")[0]
        if owner and owner != host:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{host} {os.getpid()}".encode(), 0)
        _held_claims[path] = fd
        return True
    return False


def _release(run_dir: Path) -> None:
    """Give up this process's claim on `run_dir`: remove the file first, then unlock, so that a taker
    that opened the old file meanwhile sees it is gone (`_claim` checks) instead of winning a dead lock."""
    path = run_dir / CLAIM_FILE
    fd = _held_claims.pop(path, None)
    if fd is None:
        return
    path.unlink(missing_ok=True)
    os.close(fd)


def warn_finished_cells(out: Path, run_dirs: list[Path]) -> None:
    """Say loudly when a sweep will reuse finished cells instead of training them, above all committed ones
    (a fresh clone's `sweep configs/X.yaml` would otherwise "finish" in a second from results/)."""
    finished = [d for d in run_dirs if (d / "done.json").exists()]
    if not finished:
        return
    import subprocess

    try:
        tracked = subprocess.run(["git", "ls-files", "--", *(str(d / "done.json") for d in finished[:50])],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        tracked = ""
    what = "COMMITTED results (tracked by git)" if tracked else "earlier results"
    print(f"note: {len(finished)} of {len(run_dirs)} cells already finished in {out}/runs are {what} and will be "
          f"reused, not retrained; to train them yourself pass out_dir=runs/{out.name} (any fresh folder)", file=sys.stderr)


def check_cell_data(resolved: dict[str, tuple[RunConfig, list[dict]]]) -> dict[str, str]:
    """Load every data file that an unfinished cell names, once per file: {cell name: error} for the cells
    whose file is bad, found before the first cell trains rather than hours into the sweep."""
    from latentreason.tasks import get_task

    errors: dict[tuple[str, str], str | None] = {}
    bad: dict[str, str] = {}
    for name, (cfg, _) in resolved.items():
        if (Path(cfg.out_dir) / "done.json").exists():
            continue
        for data_path in filter(None, (cfg.task.train_path, cfg.task.eval_path)):
            key = (cfg.task.name, data_path)
            if key not in errors:
                try:
                    get_task(cfg.task.name).load(data_path)
                    errors[key] = None
                except UserInputError as error:
                    errors[key] = str(error)
            if errors[key] is not None:
                bad.setdefault(name, errors[key])
    return bad


def run_sweep(path: str | Path, overrides: list[str] | None = None, progress: bool = True, poll_seconds: float = 10.0,
              failures: list[str] | None = None, cell_progress: bool = False) -> list[dict]:
    """Run every unfinished cell (dependencies first), then write table.csv/json/md under out_dir.

    Several workers may run the same sweep at once (one per core or GPU: `latentreason sweep CONFIG &`
    twice): each claims a cell before training it (runs/NAME/.claim), skips cells other workers hold,
    waits for cells whose dependency another worker is still training, and polls every `poll_seconds`
    until nothing is left.

    Every cell is resolved and validated before the first one trains. A cell with bad input (config or
    data) or a crash fails alone: its message, naming the cell, goes to stderr and its error.txt, and
    the other cells go on. The names of failed cells are appended to `failures` (the CLI exits 1 then).
    """
    from latentreason.training import train

    sweep = read_sweep(path, overrides)
    out = Path(sweep.out_dir)
    cells = expand(sweep)
    resolved: dict[str, tuple[RunConfig, list[dict]]] = {}
    invalid: dict[str, str] = {}
    for cell in cells:
        try:
            resolved[cell_name(cell)] = cell_config(sweep, cell, cells)
        except UserInputError as error:
            invalid[cell_name(cell)] = f"{path}: cell {cell_name(cell)}: {error}"
    for name, message in check_cell_data(resolved).items():
        invalid.setdefault(name, f"{path}: cell {name}: {message}")
    for message in invalid.values():
        print(f"error: {message}", file=sys.stderr)
    warn_finished_cells(out, [Path(cfg.out_dir) for cfg, _ in resolved.values()])
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(Path(path).read_text())
    status: dict[str, str] = {}  # cell name -> "done" | "failed" (settled for this worker)
    failed: list[str] = [] if failures is None else failures

    def run_cell(cell: dict[str, Any], bar) -> str:
        """Settle one cell: "done", "failed", or "busy" (it or a dependency is held by another worker)."""
        name = cell_name(cell)
        if name in status:
            return status[name]
        if name in invalid:
            run_dir = out / "runs" / name
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(invalid[name] + "\n")
            return settle(name, "failed", bar)
        cfg, dependencies = resolved[name]
        run_dir = Path(cfg.out_dir)
        for dependency in dependencies:
            outcome = run_cell(dependency, bar)
            if outcome == "busy":
                return "busy"
            if outcome == "failed":
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(f"not run: the cell it starts from, {cell_name(dependency)}, failed\n")
                return settle(name, "failed", bar)
        needs_training = not (run_dir / "done.json").exists()
        needs_analysis = sweep.analyze and not (run_dir / "analysis" / "analysis.json").exists()
        if not (needs_training or needs_analysis):
            return settle(name, "done", bar)
        if not _claim(run_dir):
            return "busy"
        try:
            bar.set_description(f"sweep {name}")
            if not (run_dir / "done.json").exists():  # another worker may have finished it since we looked
                try:
                    (run_dir / "error.txt").unlink(missing_ok=True)
                    train(cfg, progress=cell_progress)  # the quickstart shows each cell's step bar
                except UserInputError as error:  # bad data or config found late: this cell only
                    message = f"{path}: cell {name}: {error}"
                    print(f"error: {message}", file=sys.stderr)
                    (run_dir / "error.txt").write_text(message + "\n")
                    return settle(name, "failed", bar)
                except Exception:  # one broken cell must not lose the rest of the sweep; the traceback is kept
                    (run_dir / "error.txt").write_text(traceback.format_exc())
                    return settle(name, "failed", bar)
            # Analyses resume on their own: a finished cell without analysis.json (sweep re-run with analyze:
            # true, or an analysis that crashed) is analysed now. A failed analysis never fails the cell.
            if sweep.analyze and not (run_dir / "analysis" / "analysis.json").exists():
                try:
                    analyze_run(run_dir, progress=False)
                    (run_dir / "analysis_error.txt").unlink(missing_ok=True)
                except Exception:
                    (run_dir / "analysis_error.txt").write_text(traceback.format_exc())
                    failed.append(name + " (analysis)")
            return settle(name, "done", bar)
        finally:
            _release(run_dir)

    def settle(name: str, outcome: str, bar) -> str:
        status[name] = outcome
        if outcome == "failed":
            failed.append(name)
        bar.update(1)
        return outcome

    with tqdm(total=len(cells), desc="sweep", disable=not progress) as bar:
        pending = cells
        while pending:
            waiting = [cell for cell in pending if run_cell(cell, bar) == "busy"]
            if waiting and len(waiting) == len(pending):
                bar.set_description(f"sweep: waiting for {len(waiting)} cell(s) held by other workers")
                time.sleep(poll_seconds)
            pending = waiting
    rows = collect(out)
    write_tables(out, rows)
    if failed:
        print(f"{len(failed)} cell(s) failed (see error.txt in their run dirs): {failed}", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- tables


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, prefix + key + ".")
        else:
            flat[prefix + key] = value
    return flat


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished cell: its config (flattened) and its eval summary."""
    rows = []
    for run_dir in sorted((Path(sweep_dir) / "runs").glob("*")):
        if not (run_dir / "eval.json").exists() or not (run_dir / "config.yaml").exists():
            continue
        config = flatten(read_yaml(run_dir / "config.yaml"))
        summary = json.loads((run_dir / "eval.json").read_text())
        done = json.loads((run_dir / "done.json").read_text()) if (run_dir / "done.json").exists() else {}
        rows.append({"run": run_dir.name, **config, **summary, "train_seconds": done.get("train_seconds")})
    return rows


METHOD_SPECIFIC_KEYS = {"method.coprocessor.variant": "coprocessor", "method.looped.loops": "looped"}
"""Columns that only mean something for one method (the others carry the default, which is noise)."""


def identity_value(row: dict[str, Any], key: str) -> Any:
    owner = METHOD_SPECIFIC_KEYS.get(key)
    return None if owner is not None and row.get("method.name") != owner else row.get(key)


def t_critical_95(dof: int) -> float:
    """Two-sided 95% Student-t critical values (small tables beat a scipy import here)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    return table.get(dof, 1.96)


def mean_ci95(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its two-sided 95% Student-t interval (None for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_critical_95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% CI over seeds of each configuration (GROUP_KEYS); costs averaged."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = tuple(identity_value(row, k) for k in GROUP_KEYS)
        groups.setdefault(key, []).append(row)
    table = []
    for key, members in groups.items():
        mean, half = mean_ci95([m["accuracy"] for m in members])
        if half is None:  # one seed: fall back to the binomial (Wilson) interval of that run
            low, high = members[0]["accuracy_ci95"]
            half = (high - low) / 2
        entry = dict(zip(GROUP_KEYS, key))
        entry |= {
            "seeds": len(members),
            "accuracy_mean": mean,
            "accuracy_ci95_half": half,  # half-width; a per-run accuracy_ci95 is an interval
            "params_total": members[0].get("params_total"),
            "params_trainable": members[0].get("params_trainable"),
        }
        for cost in ("flops_per_answer", "forward_passes_per_answer", "latent_slots_per_answer", "seconds_per_answer", "generated_tokens_per_answer", "mean_loops",
                     "chance_accuracy", "shortcut_ceiling"):  # the last two: no-reasoning reference points of the eval set
            values = [m[cost] for m in members if m.get(cost) is not None]
            entry[cost] = statistics.fmean(values) if values else None
        table.append(entry)
    return table


def paired_gains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy gain of every cell over the run it was initialised from (`train.init_from`, same seed and
    eval set), aggregated per configuration: mean gain with a Student-t 95% CI over seeds, and how many
    seeds got better / equal / worse. Pairing by seed removes the seed-to-seed spread of the shared start,
    so this answers "did the latent method improve on its own starting point" more sharply than comparing
    two means with overlapping CIs. Cells whose start is not a finished run of this sweep are left out."""
    by_run = {row["run"]: row for row in rows}
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for row in rows:
        init_from = row.get("train.init_from")
        start = by_run.get(Path(init_from).name) if init_from else None
        if start is not None:
            key = tuple(identity_value(row, k) for k in GROUP_KEYS)
            groups.setdefault(key, []).append((row, start))
    out = []
    for key, pairs in groups.items():
        gains = [row["accuracy"] - start["accuracy"] for row, start in pairs]
        mean, half = mean_ci95(gains)
        out.append(dict(zip(GROUP_KEYS, key)) | {
            "start": method_label(pairs[0][1]), "seeds": len(gains), "gain_mean": mean, "gain_ci95_half": half,
            "better": sum(g > 0 for g in gains), "equal": sum(g == 0 for g in gains), "worse": sum(g < 0 for g in gains),
        })
    return out


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.3f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_tables(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = aggregate(rows)
    (out / "cells.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "table.json").write_text(json.dumps(table, indent=1))
    if table:
        with open(out / "table.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    shown = [c for c in [*GROUP_KEYS, "seeds", "accuracy_mean", "accuracy_ci95_half", "chance_accuracy", "shortcut_ceiling", "params_total", "params_trainable", "flops_per_answer", "forward_passes_per_answer", "seconds_per_answer", "mean_loops"]
             if any(r.get(c) is not None for r in table)]
    # Columns that never vary in this sweep are noise in the table.
    shown = [c for c in shown if c in ("accuracy_mean", "accuracy_ci95_half", "seeds") or (c in ("chance_accuracy", "shortcut_ceiling") and any(r.get(c) is not None for r in table)) or len({str(r.get(c)) for r in table}) > 1 or c == "method.name"]
    (out / "table.md").write_text(markdown_table(table, shown) + "\n")
    return table


# ----------------------------------------------------------------------------- latent analyses

ANALYSIS_DEFAULTS = {"variance_threshold": 0.9, "batch_size": 64, "max_examples": 0, "top_k": 5, "plots": True}
"""`analysis.*` overrides of `latentreason analyze` (everything else overrides the run's config)."""


def analysis_options(overrides: list[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split CLI overrides into analysis options and run-config overrides; unknown analysis keys are errors."""
    parsed = parse_overrides(overrides or [])
    options = parsed.pop("analysis", {})
    unknown = sorted(set(options) - set(ANALYSIS_DEFAULTS)) if isinstance(options, dict) else [str(options)]
    if unknown:
        raise UserInputError(f"unknown analysis option(s) {unknown}; expected analysis.{{{', '.join(ANALYSIS_DEFAULTS)}}}=VALUE")
    merged = {**ANALYSIS_DEFAULTS, **options}
    if not 0 < float(merged["variance_threshold"]) <= 1:
        raise UserInputError(f"analysis.variance_threshold={merged['variance_threshold']!r}; expected 0 < v <= 1")
    return merged, parsed


def analyze_run(run_dir: str | Path, overrides: list[str] | None = None, progress: bool = True) -> dict:
    """Latent analyses of a finished run, written to RUN_DIR/analysis/ (analysis.json + PNGs).

    Latents Z [n, N_L, d] come from `method.trace` over the eval set. Computed: the cross-capture matrix
    H_ij and its mean off-diagonal, slot silhouette, effective rank (pooled and per slot), linear CKA
    between slots, the logit lens of every slot through every latent model (top-k tokens), and, for
    Base + Coprocessor methods, principal angles and CKA between Z and the Base-side states (see
    analysis.capture.base_side_states). Methods without latents (cot, no_cot, soft_tokens with N_L = 0)
    are not an error: the result says so (`"skipped"`), so a sweep with `analyze: true` goes on.
    """
    import numpy as np

    from latentreason.analysis import capture
    from latentreason.analysis.logit_lens import find_final_norm_and_head, logit_lens
    from latentreason.analysis.plots import plot_heatmap, plot_logit_lens
    from latentreason.training import load_finished_run
    from latentreason.analysis.similarity import linear_cka, principal_angles, summarize_latents

    options, config_overrides = analysis_options(overrides)
    run_dir = Path(run_dir)
    out = run_dir / "analysis"
    run = load_finished_run(run_dir, config_overrides)
    method = run.method
    examples = run.eval_set[: int(options["max_examples"])] if options["max_examples"] else run.eval_set
    threshold = float(options["variance_threshold"])
    result: dict[str, Any] = {"run": run_dir.name, "method": method.name, "n_examples": len(examples), "variance_threshold": threshold}

    latents = capture.collect_latents(method, examples, int(options["batch_size"]), progress)
    if latents.shape[1] == 0:
        result |= {"n_slots": 0, "skipped": f"method {method.name!r} has no latent slots: nothing to analyze"}
        print(f"{run_dir}: {result['skipped']}")
        return _write_analysis(out, result)
    keep = capture.filled_rows(latents)
    latents, dropped = latents[keep], int((~keep).sum())
    if latents.shape[0] < 2:
        raise UserInputError(f"latent analyses need at least 2 examples with all {latents.shape[1]} slots filled; got {latents.shape[0]}", path=str(run_dir))
    result |= {"n_examples_dropped": dropped, **summarize_latents(latents.numpy(), threshold)}
    z = latents.numpy()
    n_slots = z.shape[1]
    result["cka_slots"] = [[_finite(linear_cka(z[:, i], z[:, j])) for j in range(n_slots)] for i in range(n_slots)]
    result["cka_slots_mean_off_diagonal"] = _finite(_off_diagonal_mean(result["cka_slots"]))

    # Logit lens through every latent model; traces already final-normed skip the norm (see capture).
    result["logit_lens"] = {}
    for name, model in method.latent_models().items():
        norm, head = find_final_norm_and_head(model)
        table = logit_lens(latents, None if method.name not in capture.PRE_NORM_TRACES else norm, head, method.tokenizer, int(options["top_k"]))
        result["logit_lens"][name] = [[{"token": t, "p": p} for t, p in slot] for slot in table]
        if options["plots"]:
            plot_logit_lens(table, out / f"logit_lens_{name}.png", f"{method.name} latents through the {name} head (top-{int(options['top_k'])}, mean p over examples)")

    if capture.has_base_and_coprocessor(method):
        base = capture.base_side_states(method, examples, int(options["batch_size"]), progress)
        b = base[keep].numpy()
        angles = np.degrees(principal_angles(z.reshape(-1, z.shape[-1]), b.reshape(-1, b.shape[-1]), threshold))
        result["base_vs_coprocessor"] = {
            "base_side": "base hidden states at the latent slots" if b.shape[1] == n_slots else "base hidden state at <eot> after the latent K/V",
            "base_slots": b.shape[1],
            "principal_angles_deg": [float(a) for a in angles],
            "principal_angle_mean_deg": float(angles.mean()) if angles.size else None,
            "cka": _finite(linear_cka(z.reshape(len(z), -1), b.reshape(len(b), -1))),
            "cka_per_slot": [_finite(linear_cka(z[:, i], b[:, i])) for i in range(n_slots)] if b.shape[1] == n_slots else None,
            "base_effective_rank": float(summarize_latents(b, threshold)["effective_rank"]),
        }

    if options["plots"]:
        labels = [f"z{i + 1}" for i in range(n_slots)] if n_slots <= 32 else None
        plot_heatmap(result["cross_capture"], out / "cross_capture.png",
                     f"cross-capture H[i,j] (var {threshold:g}); off-diag mean {_fmt(result['cross_capture_mean_off_diagonal'])}",
                     "slot j (variance captured)", "slot i (subspace)", labels)
        plot_heatmap(result["cka_slots"], out / "cka_slots.png", "linear CKA between slots", "slot", "slot", labels)
    if progress:
        print(f"{out / 'analysis.json'}: {n_slots} slots, cross-capture off-diagonal {_fmt(result['cross_capture_mean_off_diagonal'])}, "
              f"silhouette {_fmt(result['slot_silhouette'])}, effective rank {result['effective_rank']:.2f}")
    return _write_analysis(out, result)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _off_diagonal_mean(matrix: list[list[float | None]]) -> float:
    values = [v for i, row in enumerate(matrix) for j, v in enumerate(row) if i != j and v is not None]
    return statistics.fmean(values) if values else float("nan")


def _write_analysis(out: Path, result: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "analysis.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "analysis.json")  # analysis.json present == analysis finished (sweeps resume on it)
    return result


# ----------------------------------------------------------------------------- report

REFERENCE_METHODS = ("no_cot", "cot")
"""Methods without a latent budget: drawn as dashed horizontal reference lines in accuracy-vs-N_L plots."""


def method_label(row: dict[str, Any]) -> str:
    """coprocessor rows are named by their variant (coprocessor-liu/h1/h2); other methods by their name."""
    name = row.get("method.name")
    if name == "coprocessor":
        return f"coprocessor-{row.get('method.coprocessor.variant')}"
    return str(name)


def latent_budget(row: dict[str, Any]) -> int:
    """N_L of a configuration: method.n_latents, or loops - 1 for looped (the loops beyond the first,
    the same convention as Generation.latent_slots); 0 for no_cot/cot."""
    if row.get("method.name") == "looped":
        return int(row.get("method.looped.loops") or 1) - 1
    return int(row.get("method.n_latents") or 0)


def _setting(row: dict[str, Any], branching_varies: set[str]) -> str:
    task = str(row.get("task.name"))
    return f"{task} b={row.get('task.branching')}" if task in branching_varies else task


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text.replace("=", "")).strip("_")


def plot_accuracy(rows: list[dict[str, Any]], x: str, path: Path, title: str, xlabel: str, logx: bool = False,
                  references: list[dict[str, Any]] | None = None) -> Path:
    """Accuracy (mean +- 95% CI) vs `x`, one line per `label`; `references` rows become dashed lines."""
    from latentreason.analysis.plots import _new_figure, _save

    fig = _new_figure((6.5, 4.2))
    ax = fig.add_subplot()
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        if row.get(x) is not None and row.get("accuracy_mean") is not None:
            lines.setdefault(row["label"], []).append((float(row[x]), row["accuracy_mean"], row.get("accuracy_ci95_half") or 0.0))
    for label, points in lines.items():
        points.sort()
        xs, ys, errs = zip(*points)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
    for index, row in enumerate(references or []):
        ax.axhline(row["accuracy_mean"], linestyle="--", color=f"C{(len(lines) + index) % 10}", label=f"{row['label']} (reference)")
    if logx:
        ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (mean, 95% CI over seeds)")
    ax.grid(True, alpha=0.3)
    if lines or references:
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_report(sweep_dir: str | Path) -> str:
    """SWEEP_DIR/report.md: aggregated table, plots under SWEEP_DIR/plots/, per-run latent-analysis summaries.

    Plots per setting (task, plus branching when the sweep varies it): accuracy vs N_L per method (no_cot
    and cot as dashed references), accuracy vs FLOPs per answer (log x); per task whose branching varies:
    accuracy vs branching per method and N_L. Returns the report's path.
    """
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    if not rows:
        raise UserInputError("no finished runs in this sweep (nothing with eval.json under runs/)", path=str(sweep_dir))
    table = aggregate(rows)
    for row in table:
        row["label"], row["N_L"] = method_label(row), latent_budget(row)
    branchings: dict[str, set] = {}
    for row in table:
        branchings.setdefault(str(row["task.name"]), set()).add(row.get("task.branching"))
    branching_varies = {task for task, values in branchings.items() if len(values) > 1}
    settings: dict[str, list[dict]] = {}
    for row in table:
        settings.setdefault(_setting(row, branching_varies), []).append(row)

    plots_dir = sweep_dir / "plots"
    figures: list[tuple[str, Path]] = []
    for setting, members in settings.items():
        latent = [r for r in members if r["method.name"] not in REFERENCE_METHODS]
        references = [r for r in members if r["method.name"] in REFERENCE_METHODS]
        if latent:
            figures.append((f"{setting}: accuracy vs N_L", plot_accuracy(
                latent, "N_L", plots_dir / f"accuracy_vs_nl_{_slug(setting)}.png", f"{setting}: accuracy vs latent budget",
                "N_L (latent slots; looped: loops - 1)", references=references)))
        flops = [r for r in members if r.get("flops_per_answer")]
        if flops:
            figures.append((f"{setting}: accuracy vs FLOPs", plot_accuracy(
                flops, "flops_per_answer", plots_dir / f"accuracy_vs_flops_{_slug(setting)}.png",
                f"{setting}: accuracy vs compute", "FLOPs per answer (log)", logx=True)))
    for task in sorted(branching_varies):
        members = [dict(r, label=r["label"] if r["method.name"] in REFERENCE_METHODS else f"{r['label']} N_L={r['N_L']}")
                   for r in table if r["task.name"] == task]
        figures.append((f"{task}: accuracy vs branching", plot_accuracy(
            members, "task.branching", plots_dir / f"accuracy_vs_branching_{_slug(task)}.png",
            f"{task}: accuracy vs branching factor", "branching factor")))

    from latentreason.analysis.plots import plot_gains

    gains = paired_gains(rows)
    for setting in sorted({_setting(g, branching_varies) for g in gains}):
        members = sorted((g for g in gains if _setting(g, branching_varies) == setting), key=lambda g: (method_label(g), latent_budget(g)))
        figures.append((f"{setting}: gain over the starting run", plot_gains(
            [f"{method_label(g)} N_L={latent_budget(g)} (from {g['start']})" for g in members], [g["gain_mean"] for g in members],
            [g["gain_ci95_half"] for g in members], plots_dir / f"gain_over_start_{_slug(setting)}.png",
            f"{setting}: paired gain over the start (green/red: CI clears 0)")))

    analyses = _analysis_rows(sweep_dir, rows)
    if any(a.get("cross_capture_mean_off_diagonal") is not None for a in analyses):
        by_config = _aggregate_analyses(analyses)
        for setting in sorted({a["setting"] for a in by_config}):
            members = [a for a in by_config if a["setting"] == setting]
            path = plots_dir / f"cross_capture_vs_nl_{_slug(setting)}.png"
            figures.append((f"{setting}: cross-capture vs N_L", _plot_cross_capture(members, path, setting)))

    lines = [f"# Sweep report: {sweep_dir.name}", ""]
    if (sweep_dir / "sweep.yaml").exists():
        lines += [f"Sweep config: `{sweep_dir / 'sweep.yaml'}`. Cells finished: {len(rows)}; "
                  f"configurations: {len(table)}; seeds per configuration: {sorted({r['seeds'] for r in table})}.", ""]
    failed = sorted(p.parent.name for p in (sweep_dir / "runs").glob("*/error.txt"))
    if failed:
        lines += [f"**Failed cells** (traceback in runs/NAME/error.txt): {', '.join(failed)}", ""]
    lines += ["## Results", "",
              "Accuracy: mean over seeds with a 95% CI half-width (Student t over seeds; with one seed, the half-width "
              "of that run's Wilson interval over eval examples). FLOPs, forward passes and latency are per answer "
              "(latency = wall seconds per answer in batched evaluation on the run's device). N_L for looped = loops - 1. "
              "Chance: accuracy of a uniform guess among the answer options (ProsQA: 0.5; blank where not defined). "
              "Shortcut ceiling: best accuracy of a no-reasoning heuristic on the same eval examples (tasks/audit.py; "
              "blank for runs evaluated before it existed). Accuracy at or below either is no evidence of reasoning.", ""]
    lines += [_results_table(table, branching_varies), ""]
    if gains:
        lines += ["## Gain over the starting model (paired by seed)", "",
                  "Accuracy of each latent configuration minus that of the run it was initialised from (`train.init_from`: "
                  "the same seed's No-CoT or CoT cell), mean over seeds with a Student-t 95% CI; better / equal / worse "
                  "counts seeds. A gain whose CI excludes 0 is a real improvement over the start; compare it with a "
                  "no-latent control trained for the same extra steps (e.g. soft_tokens N_L = 0) before crediting the latents.", ""]
        lines += [_gains_table(gains, branching_varies), ""]
    lines += ["## Plots", ""]
    lines += [f"![{title}]({path.relative_to(sweep_dir)})" for title, path in figures] + [""]
    if analyses:
        lines += ["## Latent analyses", "",
                  "Per run (`latentreason analyze`, eval set): cross-capture H_ij = share of slot j's variance in slot i's "
                  "principal subspace (high off-diagonal mean = slots share one subspace, i.e. poorly specialised); "
                  "silhouette of latents labelled by slot (high = slots separable); effective rank of pooled latents; "
                  "mean linear CKA between slots; Base vs Coprocessor: mean principal angle (degrees) between their "
                  "subspaces and CKA between Z and the Base-side states.", ""]
        if any(not a.get("skipped") for a in analyses):
            lines += ["Mean over seeds per configuration:", "", _analysis_summary_table(analyses), ""]
        lines += ["<details><summary>Every run</summary>", "", _analysis_table(analyses), "", "</details>", ""]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(lines))
    return str(path)


def _results_table(table: list[dict[str, Any]], branching_varies: set[str]) -> str:
    def fmt_float(value: Any, digits: str = ".3g") -> str:
        return "" if value is None else format(value, digits)

    def fmt_count(value: Any) -> str:
        return "" if value is None else f"{int(value):,}"

    header = ["task", "method", "N_L", "seeds", "accuracy", "chance", "shortcut ceiling", "params total", "params trainable", "FLOPs/answer", "fwd passes/answer", "ms/answer"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(table, key=lambda r: (str(r["task.name"]), r.get("task.branching") or 0, r["label"], r["N_L"])):
        task = _setting(row, branching_varies)
        seconds = row.get("seconds_per_answer")
        out.append("| " + " | ".join([
            task, row["label"], str(row["N_L"]), str(row["seeds"]),
            f"{row['accuracy_mean']:.3f} ± {row['accuracy_ci95_half']:.3f}",
            fmt_float(row.get("chance_accuracy"), ".2f"), fmt_float(row.get("shortcut_ceiling"), ".2f"),
            fmt_count(row.get("params_total")), fmt_count(row.get("params_trainable")),
            fmt_float(row.get("flops_per_answer")), fmt_float(row.get("forward_passes_per_answer"), ".1f"),
            "" if seconds is None else f"{1000 * seconds:.2f}",
        ]) + " |")
    return "\n".join(out)


def _analysis_rows(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per run that has analysis/analysis.json, with its configuration columns."""
    by_run = {r["run"]: r for r in rows}
    tasks_varying = {t for t in {r.get("task.name") for r in rows} if len({r.get("task.branching") for r in rows if r.get("task.name") == t}) > 1}
    out = []
    for path in sorted((sweep_dir / "runs").glob("*/analysis/analysis.json")):
        run = path.parent.parent.name
        data = json.loads(path.read_text())
        row = by_run.get(run, {})
        bvc = data.get("base_vs_coprocessor") or {}
        out.append({
            "run": run, "label": method_label(row) if row else data.get("method"), "N_L": latent_budget(row) if row else None,
            "setting": _setting(row, tasks_varying) if row else "?", "accuracy": row.get("accuracy"),
            "n_slots": data.get("n_slots"), "skipped": data.get("skipped"),
            "cross_capture_mean_off_diagonal": data.get("cross_capture_mean_off_diagonal"),
            "slot_silhouette": data.get("slot_silhouette"), "effective_rank": data.get("effective_rank"),
            "cka_slots_mean_off_diagonal": data.get("cka_slots_mean_off_diagonal"),
            "principal_angle_mean_deg": bvc.get("principal_angle_mean_deg"), "cka_base_coprocessor": bvc.get("cka"),
        })
    return out


def _aggregate_analyses(analyses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[float]] = {}
    for a in analyses:
        if a.get("cross_capture_mean_off_diagonal") is not None:
            groups.setdefault((a["setting"], a["label"], a["N_L"]), []).append(a["cross_capture_mean_off_diagonal"])
    return [{"setting": s, "label": label, "N_L": n, "cross_capture_mean_off_diagonal": statistics.fmean(v)} for (s, label, n), v in groups.items()]


def _plot_cross_capture(rows: list[dict[str, Any]], path: Path, setting: str) -> Path:
    from latentreason.analysis.plots import plot_lines

    return plot_lines([{"N_L": r["N_L"], "mean off-diagonal H": r["cross_capture_mean_off_diagonal"], "method": r["label"]} for r in rows],
                      "N_L", "mean off-diagonal H", "method", path, f"{setting}: cross-capture (mean over seeds)")


def _analysis_table(analyses: list[dict[str, Any]]) -> str:
    header = ["run", "method", "N_L", "accuracy", "slots", "cross-capture off-diag", "silhouette", "eff. rank", "CKA slots", "angle base/cop (deg)", "CKA base/cop"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = lambda v, d=".3f": "" if v is None else format(v, d)  # noqa: E731
    for a in analyses:
        if a.get("skipped"):
            out.append(f"| {a['run']} | {a['label']} | {a['N_L']} | {fmt(a['accuracy'])} | 0 | no latents | | | | | |")
            continue
        out.append("| " + " | ".join([
            a["run"], str(a["label"]), str(a["N_L"]), fmt(a["accuracy"]), str(a["n_slots"]),
            fmt(a["cross_capture_mean_off_diagonal"]), fmt(a["slot_silhouette"]), fmt(a["effective_rank"], ".2f"),
            fmt(a["cka_slots_mean_off_diagonal"]), fmt(a["principal_angle_mean_deg"], ".1f"), fmt(a["cka_base_coprocessor"]),
        ]) + " |")
    return "\n".join(out)


def _gains_table(gains: list[dict[str, Any]], branching_varies: set[str]) -> str:
    header = ["task", "method", "N_L", "starts from", "seeds", "gain in accuracy", "better / equal / worse"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(gains, key=lambda r: (str(r["task.name"]), r.get("task.branching") or 0, method_label(r), latent_budget(r))):
        ci = "" if row["gain_ci95_half"] is None else f" ± {row['gain_ci95_half']:.3f}"
        out.append("| " + " | ".join([
            _setting(row, branching_varies), method_label(row), str(latent_budget(row)), row["start"], str(row["seeds"]),
            f"{row['gain_mean']:+.3f}{ci}", f"{row['better']} / {row['equal']} / {row['worse']}",
        ]) + " |")
    return "\n".join(out)


ANALYSIS_SUMMARY_KEYS = ("accuracy", "cross_capture_mean_off_diagonal", "slot_silhouette", "effective_rank",
                         "cka_slots_mean_off_diagonal", "principal_angle_mean_deg", "cka_base_coprocessor")


def _analysis_summary_table(analyses: list[dict[str, Any]]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for a in analyses:
        if not a.get("skipped"):
            groups.setdefault((a["setting"], str(a["label"]), a["N_L"] if a["N_L"] is not None else -1), []).append(a)
    header = ["setting", "method", "N_L", "runs", "accuracy", "cross-capture off-diag", "silhouette", "eff. rank", "CKA slots",
              "angle base/cop (deg)", "CKA base/cop"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (setting, label, n_latents), members in sorted(groups.items()):
        cells = []
        for key in ANALYSIS_SUMMARY_KEYS:
            values = [m[key] for m in members if m.get(key) is not None]
            digits = ".1f" if key == "principal_angle_mean_deg" else ".2f" if key == "effective_rank" else ".3f"
            cells.append(format(statistics.fmean(values), digits) if values else "")
        out.append("| " + " | ".join([setting, label, str(n_latents), str(len(members)), *cells]) + " |")
    return "\n".join(out)
