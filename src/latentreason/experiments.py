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
was interrupted resumes from its checkpoint. Each cell keeps its config.yaml, metrics and eval.json.
A value may reference another cell's run dir: `train.init_from: "{cell:method.name=cot}"` resolves to the
dir of the cell with those overrides and the same remaining grid values (e.g. the same seed/task), which is
run first. That is how Coconut starts from CoT and a frozen Base comes from a No-CoT run.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import statistics
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from latentreason.config import RunConfig, deep_merge, from_dict, parse_overrides, read_yaml, save_config
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


def run_sweep(path: str | Path, overrides: list[str] | None = None, progress: bool = True) -> list[dict]:
    """Run every unfinished cell (dependencies first), then write table.csv/json/md under out_dir."""
    from latentreason.training import train

    sweep = read_sweep(path, overrides)
    out = Path(sweep.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(Path(path).read_text())
    cells = expand(sweep)
    done: set[str] = set()
    failures: list[str] = []

    def run_cell(cell: dict[str, Any], bar) -> None:
        name = cell_name(cell)
        if name in done:
            return
        cfg, dependencies = cell_config(sweep, cell, cells)
        for dependency in dependencies:
            run_cell(dependency, bar)
        done.add(name)
        if (Path(cfg.out_dir) / "done.json").exists():
            bar.update(1)
            return
        bar.set_description(f"sweep {name}")
        try:
            train(cfg, progress=False)
            if sweep.analyze:
                analyze_run(cfg.out_dir)
        except UserInputError:
            raise
        except Exception:  # one broken cell must not lose the rest of the sweep; the traceback is kept
            (Path(cfg.out_dir)).mkdir(parents=True, exist_ok=True)
            (Path(cfg.out_dir) / "error.txt").write_text(traceback.format_exc())
            failures.append(name)
        bar.update(1)

    with tqdm(total=len(cells), desc="sweep", disable=not progress) as bar:
        for cell in cells:
            run_cell(cell, bar)
    rows = collect(out)
    write_tables(out, rows)
    if failures:
        print(f"{len(failures)} cell(s) failed (see error.txt in their run dirs): {failures}")
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


def t_critical_95(dof: int) -> float:
    """Two-sided 95% Student-t critical values (small tables beat a scipy import here)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    return table.get(dof, 1.96)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% CI over seeds of each configuration (GROUP_KEYS); costs averaged."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = tuple(row.get(k) for k in GROUP_KEYS)
        groups.setdefault(key, []).append(row)
    table = []
    for key, members in groups.items():
        accuracies = [m["accuracy"] for m in members]
        mean = statistics.fmean(accuracies)
        if len(accuracies) > 1:
            half = t_critical_95(len(accuracies) - 1) * statistics.stdev(accuracies) / math.sqrt(len(accuracies))
        else:  # one seed: fall back to the binomial (Wilson) interval of that run
            low, high = members[0]["accuracy_ci95"]
            half = (high - low) / 2
        entry = dict(zip(GROUP_KEYS, key))
        entry |= {
            "seeds": len(members),
            "accuracy_mean": mean,
            "accuracy_ci95": half,
            "params_total": members[0].get("params_total"),
            "params_trainable": members[0].get("params_trainable"),
        }
        for cost in ("flops_per_answer", "forward_passes_per_answer", "latent_slots_per_answer", "seconds_per_answer", "generated_tokens_per_answer", "mean_loops"):
            values = [m[cost] for m in members if m.get(cost) is not None]
            entry[cost] = statistics.fmean(values) if values else None
        table.append(entry)
    return table


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
    shown = [c for c in [*GROUP_KEYS, "seeds", "accuracy_mean", "accuracy_ci95", "params_total", "params_trainable", "flops_per_answer", "forward_passes_per_answer", "seconds_per_answer", "mean_loops"]
             if any(r.get(c) is not None for r in table)]
    # Columns that never vary in this sweep are noise in the table.
    shown = [c for c in shown if c in ("accuracy_mean", "accuracy_ci95", "seeds") or len({str(r.get(c)) for r in table}) > 1 or c == "method.name"]
    (out / "table.md").write_text(markdown_table(table, shown) + "\n")
    return table


def analyze_run(run_dir: str | Path, overrides: list[str] | None = None) -> dict:
    raise UserInputError("latentreason analyze is not implemented yet")


def write_report(sweep_dir: str | Path) -> str:
    raise UserInputError("latentreason report is not implemented yet")
