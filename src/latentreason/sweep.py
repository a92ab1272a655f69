"""Sweeps over method x N_L x task x branching x seed (any config key can be an axis).

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
command once per core or GPU): each claims a cell (runs/NAME/.claim) before training it. Each cell keeps its
config.yaml, metrics and eval.json. Every cell is resolved and validated (`resolve_cells`) before the first
one trains. OUT/sweep.yaml records the config and every invocation's command-line overrides (`record_sweep_config`).
A value may reference another cell's run dir: `train.init_from: "{cell:method.name=cot}"` resolves to the
dir of the cell with those overrides and the same remaining grid values (e.g. the same seed/task), which is
run first. That is how Coconut starts from CoT and a frozen Base comes from a No-CoT run. A cell with
`train.objective: pretrain` is a Coprocessor pretraining cell (pretraining.py): fine-tuning cells start from
it with `train.init_from: "{cell:train.objective=pretrain}"` (configs/pretrain_then_finetune_sweep.yaml).

With `analyze: true` a sweep analyses every finished cell that has no analysis.json yet (analysis/runs.py),
so analyses resume too. Tables: results.py; the report: report.py.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import shlex
import socket
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
    for name in ("base", "grid"):
        if not isinstance(data.get(name) or {}, dict):
            raise UserInputError(f"{name}: expected a mapping of config keys (e.g. `{name}: {{train.lr: [0.001, 0.01]}}`), "
                                 f"got {type(data[name]).__name__} {data[name]!r}", path=str(path))
    for key, values in (data.get("grid") or {}).items():
        if not isinstance(values, list):
            raise UserInputError(f"grid.{key}: expected a list of values, got {values!r}", path=str(path))
    groups = data.get("groups") or [{}]
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise UserInputError(f"groups: expected a list of mappings (e.g. `- {{method.name: [cot, no_cot]}}`), got {groups!r}",
                             path=str(path))
    return SweepConfig(
        out_dir=str(data["out_dir"]), base=data.get("base") or {}, grid=data.get("grid") or {},
        groups=groups, analyze=bool(data.get("analyze", False)),
    )


OVERRIDES_HEADER = ("# Command-line overrides of the `latentreason sweep` invocations that ran this sweep, one per line, applied on top "
                    "of the config above (each cell's config.yaml holds its exact settings):")


def record_sweep_config(out: Path, path: str | Path, overrides: list[str] | None) -> None:
    """Write OUT/sweep.yaml: the config file as given (comments kept) and, below it, the command-line overrides
    of every invocation that used any, so the record never claims settings the cells did not run with (e.g. a
    second folder made from one config with `out_dir=... base.train.lr=...`). Overrides recorded by earlier
    invocations are kept: a sweep filled in by several runs, each narrowed with `grid=` or `groups=`, lists them all."""
    record = out / "sweep.yaml"
    text = Path(path).read_text().split(OVERRIDES_HEADER)[0].rstrip("\n") + "\n"  # the config may be this record itself
    with open(out / ".sweep.yaml.lock", "w") as lock:  # workers started together with different overrides keep both lines
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines: list[str] = []
        if record.exists():
            earlier = record.read_text().split(OVERRIDES_HEADER + "\n")
            lines = earlier[1].splitlines() if len(earlier) == 2 else []
        if overrides:
            line = "#   " + " ".join(shlex.quote(item) for item in overrides)
            lines += [] if line in lines else [line]
        record.write_text(text + ("\n" + OVERRIDES_HEADER + "\n" + "\n".join(lines) + "\n" if lines else ""))


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
    named: dict[str, dict[str, Any]] = {}
    for cell in cells:
        other = named.setdefault(cell_name(cell), cell)
        if other is not cell:  # two cells, one run dir: the second would resume (or skip) the first's run
            raise UserInputError(f"two cells get the run dir runs/{cell_name(cell)}: {other} and {cell}. A cell's name "
                                 "leaves out what it starts from ({cell:...}); give one of the groups a `tag: [...]` "
                                 "(a label that names the cell and changes nothing it trains)")
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
            # The cell's own references are not matched: the start of a start (e.g. the No-CoT cell a
            # pretraining cell starts from) tells no cell apart, as in cell_name.
            target = {**{k: v for k, v in cell.items() if k not in wanted and not is_reference(v)}, **wanted}
            # Keys that the referenced cell's group does not vary are dropped (e.g. n_latents for cot).
            matches = [c for c in cells if all(c.get(k) == v for k, v in target.items() if k in c) and all(c.get(k) == v for k, v in wanted.items())]
            if not matches:
                raise UserInputError(f"cell reference {node!r} from {cell_name(cell)} matches no cell of the sweep")
            dependencies.append(matches[0])
            return str(Path(sweep.out_dir) / "runs" / cell_name(matches[0]))
        return node

    data = resolve(data)
    return from_dict(RunConfig, data), dependencies


def analysis_due(cfg: RunConfig, analyze: bool) -> bool:
    """Whether a cell still needs its analysis: the sweep asks for analyses, the cell trains a task (a
    pretraining cell has no task answers to analyse) and its analysis.json is not there yet."""
    return analyze and cfg.train.objective == "task" and not (Path(cfg.out_dir) / "analysis" / "analysis.json").exists()


def is_reference(value: Any) -> bool:
    """A `{cell:...}` value."""
    return isinstance(value, str) and CELL_REF.match(value) is not None


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


def replica_seed_cells(resolved: dict[str, tuple[RunConfig, list[dict]]]) -> list[list[str]]:
    """Groups of cells that will train identically although their `train.seed` differs: each starts from the
    same finished run (`train.init_from`) and streams the same fresh data (the same `task.seed`), so the seed
    draws nothing but the initialisation of parameters the start lacks and dropout. Measured in session 35:
    Coconut and paced N_L = 0 cells from a SmolLM2 CoT run repeated their seed-0 twins loss for loss. Varying
    `task.seed` (or `train.init_from`) with the seed gives replicates with their own data or start; the report
    counts either as part of the seed (results.SEED_FOLLOWING_KEYS)."""
    from latentreason.config import to_dict
    from latentreason.data import stream_enabled

    groups: dict[str, list[str]] = {}
    for name, (cfg, _) in resolved.items():
        try:
            streams = stream_enabled(cfg.task)
        except UserInputError:  # a contradictory stream setting: the cell fails with it when it trains
            continue
        if not cfg.train.init_from or not streams:
            continue
        rest = to_dict(cfg)
        rest.pop("out_dir")
        rest["train"].pop("seed")
        groups.setdefault(json.dumps(rest, sort_keys=True, default=repr), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def warn_replica_seeds(path: str | Path, resolved: dict[str, tuple[RunConfig, list[dict]]]) -> None:
    """Say before training that some seeds of the sweep are copies of each other (replica_seed_cells)."""
    for names in replica_seed_cells(resolved):
        print(f"warning: {path}: cells {', '.join(names)} differ only in train.seed, start from the same "
              "train.init_from and stream the same task.seed's data, so the seed changes only dropout and the "
              "initialisation of parameters the start lacks (none for cot, coconut or N_L = 0): such cells train "
              "identically. For replicates, vary task.seed (or train.init_from) with train.seed.", file=sys.stderr)


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


def check_cell_inputs(resolved: dict[str, tuple[RunConfig, list[dict]]]) -> dict[str, str]:
    """The cheap checks `latentreason train` makes before importing torch, for every unfinished cell:
    a hub backbone that cannot be loaded (probed once per name) and an explicit `train.init_from` (one that
    is not another cell of this sweep, which does not exist yet) that this run cannot start from.
    Returns {cell name: error}."""
    from latentreason.backbone_names import backbone_kind, check_hub_backbone
    from latentreason.run_checks import check_init_from

    hub_errors: dict[str, str | None] = {}
    bad: dict[str, str] = {}
    for name, (cfg, dependencies) in resolved.items():
        if (Path(cfg.out_dir) / "done.json").exists():
            continue
        try:
            backbone = cfg.model.backbone
            if backbone not in hub_errors and backbone_kind(backbone) == "hub":
                try:
                    check_hub_backbone(backbone)
                    hub_errors[backbone] = None
                except UserInputError as error:
                    hub_errors[backbone] = str(error)
            if hub_errors.get(backbone):
                raise UserInputError(hub_errors[backbone])
            if not dependencies:
                check_init_from(cfg)
        except UserInputError as error:
            bad[name] = str(error)
    return bad


def resolve_cells(path: str | Path, sweep: SweepConfig, cells: list[dict[str, Any]]
                  ) -> tuple[dict[str, tuple[RunConfig, list[dict]]], dict[str, str]]:
    """Resolve and validate every cell before any trains: (configs by cell name, errors by cell name).

    A cell is invalid when its config does not load (unknown key, bad value, cross-field check), a
    `{cell:...}` reference matches no cell, a data file it names is malformed, or its backbone / explicit
    starting run cannot be used. Each error names the sweep FILE and the cell. Both executors (run_sweep and
    sweep_submitit) call this; an invalid cell fails alone and the cells that start from it fail with it.
    """
    resolved: dict[str, tuple[RunConfig, list[dict]]] = {}
    invalid: dict[str, str] = {}
    for cell in cells:
        try:
            resolved[cell_name(cell)] = cell_config(sweep, cell, cells)
        except UserInputError as error:
            invalid[cell_name(cell)] = f"{path}: cell {cell_name(cell)}: {error}"
    for check in (check_cell_data, check_cell_inputs):
        for name, message in check({n: r for n, r in resolved.items() if n not in invalid}).items():
            invalid.setdefault(name, f"{path}: cell {name}: {message}")
    warn_replica_seeds(path, {n: r for n, r in resolved.items() if n not in invalid})
    return resolved, invalid


def run_sweep(path: str | Path, overrides: list[str] | None = None, progress: bool = True, poll_seconds: float = 10.0,
              failures: list[str] | None = None, cell_progress: bool = False, wait: bool = True) -> list[dict]:
    """Run every unfinished cell (dependencies first), then write table.csv/json/md under out_dir.

    Several workers may run the same sweep at once (one per core or GPU: `latentreason sweep CONFIG &`
    twice): each claims a cell before training it (runs/NAME/.claim), skips cells other workers hold,
    waits for cells whose dependency another worker is still training, and polls every `poll_seconds`
    until nothing is left. With `wait=False` a worker leaves the cells other workers hold (and the cells
    that start from them) to those workers and returns once nothing else is left: a worker that chains
    several sweep commands then goes on to its next command instead of idling on a cell it cannot take.

    Every cell is resolved and validated before the first one trains. A cell with bad input (config or
    data) or a crash fails alone: its message, naming the cell, goes to stderr and its error.txt, and
    the other cells go on. The names of failed cells are appended to `failures` (the CLI exits 1 then).
    """
    from latentreason.analysis import runs as analysis_runs
    from latentreason.results import collect, write_tables
    from latentreason.training import train

    sweep = read_sweep(path, overrides)
    out = Path(sweep.out_dir)
    cells = expand(sweep)
    resolved, invalid = resolve_cells(path, sweep, cells)
    for message in invalid.values():
        print(f"error: {message}", file=sys.stderr)
    warn_finished_cells(out, [Path(cfg.out_dir) for cfg, _ in resolved.values()])
    out.mkdir(parents=True, exist_ok=True)
    record_sweep_config(out, path, overrides)
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
        needs_analysis = analysis_due(cfg, sweep.analyze)
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
            if analysis_due(cfg, sweep.analyze):
                try:
                    analysis_runs.analyze_run(run_dir, progress=False)
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
                if not wait:
                    print(f"sweep: left {len(waiting)} cell(s) held by other workers to them: "
                          f"{[cell_name(cell) for cell in waiting]}", file=sys.stderr)
                    break
                bar.set_description(f"sweep: waiting for {len(waiting)} cell(s) held by other workers")
                time.sleep(poll_seconds)
            pending = waiting
    rows = collect(out)
    write_tables(out, rows)
    if failed:
        print(f"{len(failed)} cell(s) failed (see error.txt in their run dirs): {failed}", file=sys.stderr)
    return rows
