"""A sweep's finished cells as rows, grouped into configurations: means and CIs over seeds, paired gains.

    rows = collect(sweep_dir)      # one flat dict per finished cell: {"run", "method.name", ..., "accuracy", ...}
    pretraining_rows(sweep_dir)    # the pretraining cells (no accuracy): ahead-token perplexities before / after
    table = aggregate(rows)        # one entry per configuration, mean and 95% CI over its seeds
    gains = paired_gains(rows)     # per configuration: accuracy minus that of the run it started from
    controls = control_gains(rows) # per latent configuration: accuracy minus that of its matched no-latent control

A configuration is every config axis the sweep varies except the seeds (`configuration_axes`): two cells that
differ only in train.lr are two configurations, never two seeds of one. What the methods mean (label, N_L,
which keys identify them) is asked of the method class (`method_config`, `method_label`, `latent_budget`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import statistics
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from latentreason.config import MethodConfig, from_dict, read_yaml
from latentreason.tables import markdown_table

SEED_KEYS = ("train.seed",)
"""What replicates a configuration: cells that differ only here are seeds of one configuration."""
SEED_FOLLOWING_KEYS = ("task.seed", "train.init_from")
"""Keys a sweep may vary together with the seed: the data seed (each training seed with its own data) and the
run a cell starts from (seed s starts from the seed-s No-CoT run). Counted as seeds when they vary only with
the seed (`_follows_seed`), as configuration axes otherwise (e.g. the same seed started from cot and no_cot)."""
NOT_AXES = ("run", "out_dir", "run_dir")
"""Per-cell names, never a configuration."""
STANDARD_KEYS = ("task.name", "task.branching", "method.name", "method.n_latents")
"""Always in an aggregated entry (the report's setting, method and N_L come from them)."""
COST_KEYS = ("flops_per_answer", "forward_passes_per_answer", "latent_slots_per_answer", "seconds_per_answer",
             "generated_tokens_per_answer", "mean_loops", "truncated_rate",
             "chance_accuracy", "shortcut_ceiling")  # the last two: no-reasoning reference points of the eval set
"""Per-cell numbers averaged over a configuration's seeds."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, prefix + key + ".")
        else:
            flat[prefix + key] = value
    return flat


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished cell with a task evaluation: its config (flattened) and its eval summary.
    Pretraining cells (no accuracy) are `pretraining_rows`; a cell that starts from one gets its name in
    `start_label` (named_starts reads it) and the run that pretraining started from in `pretrained_from`
    (the Base a frozen-Base cell still has: its control, and what cells of different variants share)."""
    pretrained = {row["run"]: row for row in pretraining_rows(sweep_dir)}
    rows = []
    for run_dir in sorted((Path(sweep_dir) / "runs").glob("*")):
        row = run_row(run_dir)
        if row is None:
            continue
        start = start_cell(row, pretrained)
        if start is not None:
            row["start_label"], row["pretrained_from"] = start["label"], start.get("train.init_from")
        rows.append(row)
    return rows


def run_row(run_dir: Path) -> dict[str, Any] | None:
    """A finished run as a row: its config (flattened), eval summary and training time; None without eval.json."""
    if not (run_dir / "eval.json").exists() or not (run_dir / "config.yaml").exists():
        return None
    config = flatten(read_yaml(run_dir / "config.yaml"))
    summary = json.loads((run_dir / "eval.json").read_text())
    done = json.loads((run_dir / "done.json").read_text()) if (run_dir / "done.json").exists() else {}
    return {"run": run_dir.name, "run_dir": str(run_dir), **config, **summary, "train_seconds": done.get("train_seconds"),
            "eval_curve": eval_curve(run_dir)}


def recorded_path(row: dict[str, Any], written: str) -> Path:
    """A path a run's config recorded (e.g. train.init_from), as seen from here. Paths are written relative to the
    directory training ran in; read from elsewhere (a report made inside results/) they would name nothing, so a
    relative path that does not exist here is taken against that directory, found by removing the recorded
    out_dir from the end of the run folder's real path."""
    path = Path(written)
    if path.is_absolute() or path.exists() or not row.get("run_dir") or not row.get("out_dir"):
        return path
    real, recorded = Path(row["run_dir"]).resolve().parts, Path(str(row["out_dir"])).parts
    if ".." in recorded or len(recorded) >= len(real) or real[len(real) - len(recorded):] != recorded:
        return path
    return Path(*real[: len(real) - len(recorded)]) / path


def start_cell(row: dict[str, Any], by_run: dict[str, dict[str, Any]], written: Any = None) -> dict[str, Any] | None:
    """The cell of `by_run` that the row starts from (`written`, default its `train.init_from`), or None when the start
    is not one of them. Matched by run name, and where both sides know their folders by folder too: a start
    outside the sweep may share its name with a cell (a CoT cell continued from another sweep's `cot_seed-0`
    is itself `cot_seed-0`), and a cell never starts from itself."""
    written = row.get("train.init_from") if written is None else written
    if not written:
        return None
    start = by_run.get(Path(str(written)).name)
    if start is None or start is row:
        return None
    if start.get("run_dir") is None or row.get("run_dir") is None:  # rows built in memory: the name is all there is
        return start
    same = recorded_path(row, str(written)).resolve() == Path(start["run_dir"]).resolve()
    return start if same else None


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl ([] before the first row is written). A last line that does not parse
    is a row still being written (a report read while the run trains) or cut off by a kill, and is skipped; a
    bad line anywhere else is a damaged file and raises with its line number."""
    path = Path(path)
    if not path.exists():
        return []
    numbered = [(i, line) for i, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    rows = []
    for position, (line_number, line) in enumerate(numbered):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if position == len(numbered) - 1:
                break
            raise ValueError(f"{path}:{line_number}: not a JSON row ({error.msg}); expected one JSON object per line") from error
    return rows


def eval_curve(run_dir: Path) -> list[list[float]]:
    """[[step, eval accuracy], ...] of a run's periodic evaluations (metrics.jsonl), in step order. A step
    evaluated twice (a run resumed after a kill that followed its evaluation) keeps its last row."""
    by_step = {int(r["step"]): float(r["eval_accuracy"]) for r in read_metrics(run_dir / "metrics.jsonl") if r.get("eval_accuracy") is not None}
    return [[step, by_step[step]] for step in sorted(by_step)]


LATE_FRACTION = 0.25
"""The last share of training whose accuracy change `late_change` reports."""


def late_change(curve: list[list[float]]) -> float | None:
    """Eval accuracy at the last periodic evaluation minus at the last one at or before (1 - LATE_FRACTION) of
    its steps (e.g. step 1,000 minus step 750): how much a run still moved in its last quarter. A latent cell
    still climbing beside a flat control makes their gap a statement about this budget, not a converged one.
    None with no evaluation that early."""
    if len(curve) < 2:
        return None
    last_step, last = curve[-1]
    earlier = [accuracy for step, accuracy in curve if step <= (1 - LATE_FRACTION) * last_step]
    return last - earlier[-1] if earlier else None


def control_label(entry: dict[str, Any]) -> str | None:
    """The control of a `control_gains` entry as the report and the claims name it (None when there is none). A frozen
    Base's control is the run it starts from, which may share its method name with a cell of the same sweep trained
    further (CoT continued): the label says which one the gain is against."""
    if entry["control"] is None:
        return None
    return f"{entry['control']} (its start run)" if entry["control_is_start"] else entry["control"]


def late_change_text(entry: dict[str, Any]) -> str:
    """"cell / control" last-quarter changes of a `control_gains` entry, as the report and the claims print them
    ("start (not trained)" for a start run used as the control; blank where nothing is paired or measured)."""
    if not entry["seeds"]:
        return ""
    cell, control = ("" if value is None else f"{value:+.3f}" for value in (entry["late_change"], entry["control_late_change"]))
    return f"{cell} / {'start (not trained)' if entry['control_is_start'] else control}"


PRETRAINING_SUMMARY = "pretrain.json"
"""Written by a finished Coprocessor pretraining run (pretraining.py) in place of eval.json."""


def pretraining_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished pretraining cell (`train.objective: pretrain`): its config (flattened), steps, and
    the ahead-token perplexities with and without latents before and after (`before.ppl_with_latents`, ...),
    plus `label`, the name the cells that start from it show (e.g. "pretrained coprocessor-h1 M=4 N_A=8")."""
    rows = []
    for run_dir in sorted((Path(sweep_dir) / "runs").glob("*")):
        if not (run_dir / PRETRAINING_SUMMARY).exists() or not (run_dir / "config.yaml").exists():
            continue
        config = flatten(read_yaml(run_dir / "config.yaml"))
        summary = json.loads((run_dir / PRETRAINING_SUMMARY).read_text())
        row = {"run": run_dir.name, "run_dir": str(run_dir), **config, **flatten({k: summary.get(k) for k in ("before", "after") if summary.get(k)}),
               "steps": summary.get("steps"), "train_seconds": summary.get("train_seconds")}
        label = f"{method_label(row)} M={row.get('method.coprocessor.pretrain_points')} N_A={row.get('method.coprocessor.pretrain_ahead')}"
        rows.append(row | {"label": f"pretrained {label}"})
    return rows


# ----------------------------------------------------------------------------- what the method says


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` restricted to the fields of dataclass `cls` (recursively): rows of older runs may carry
    options that have since moved or gone, which must not stop their report."""
    known = {f.name: f for f in fields(cls)}
    out = {}
    for key, value in data.items():
        if key not in known:
            continue
        sub = known[key].default_factory() if callable(known[key].default_factory) else None
        out[key] = _known_fields(type(sub), value) if is_dataclass(sub) and isinstance(value, dict) else value
    return out


def method_config(row: dict[str, Any]) -> MethodConfig:
    """The MethodConfig of a flat row (its "method.*" keys; missing ones take their defaults)."""
    tree: dict[str, Any] = {}
    for key, value in row.items():
        if key.startswith("method.") and value is not None:
            node = tree
            *parents, leaf = key.split(".")[1:]
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return from_dict(MethodConfig, _known_fields(MethodConfig, tree), prefix="method.")


def _method_class(row: dict[str, Any]):
    from latentreason.methods import method_class  # imports the method modules (torch): only when asked

    return method_class(str(row.get("method.name")))


def method_label(row: dict[str, Any]) -> str:
    """Name of the row's configuration in tables and plots (the method's `label`, e.g. coprocessor-h1)."""
    return _method_class(row).label(method_config(row))


def replaces_steps(row: dict[str, Any]) -> bool:
    """Whether the row's configuration trained with a step-replacing curriculum (the method's `replaces_steps`)."""
    return bool(_method_class(row).replaces_steps(method_config(row)))


def uses_steps(row: dict[str, Any]) -> bool:
    """Whether the row's configuration trained on sequences that contain the written reasoning steps (CoT)."""
    return bool(_method_class(row).uses_steps(method_config(row)))


def latent_budget(row: dict[str, Any]) -> int:
    """N_L of the row's configuration (the method's `latent_budget`; looped: loops - 1)."""
    return int(_method_class(row).latent_budget(method_config(row)))


def is_reference(row: dict[str, Any]) -> bool:
    """A no-latent reference baseline (drawn as a dashed line in accuracy-vs-N_L plots)."""
    return bool(_method_class(row).reference_baseline)


def method_specific_keys() -> set[str]:
    """Config keys some method owns (its `identifying_keys`); for the other methods they are noise."""
    from latentreason.methods import METHODS, method_class

    return {key for name in METHODS for key in method_class(name).identifying_keys}


# ----------------------------------------------------------------------------- grouping


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _follows_seed(rows: list[dict[str, Any]], key: str, others: list[str], specific: set[str]) -> bool:
    """True when rows that agree on the seed and on every other axis never differ in `key`: it varies only
    because the seed does."""
    seen: dict[tuple, Any] = {}
    for row in rows:
        where = tuple(identity_value(row, k, specific) for k in (*SEED_KEYS, *others))
        value = config_value(row, key)
        if seen.setdefault(where, value) != value:
            return False
    return True


def configuration_axes(rows: list[dict[str, Any]]) -> list[str]:
    """Every config key (dotted, from config.yaml) whose value differs across `rows`, except the seeds.

    SEED_FOLLOWING_KEYS count as seeds when they vary only with the seed. Standard keys come first, then the
    others in the order the rows have them.
    """
    keys: list[str] = list(STANDARD_KEYS)
    for row in rows:
        keys += [k for k in row if "." in k and k not in keys]
    specific = method_specific_keys()
    varied = [k for k in keys if k not in SEED_KEYS and k not in NOT_AXES
              and len({identity_value(row, k, specific) for row in rows}) > 1]
    others = [k for k in varied if k not in SEED_FOLLOWING_KEYS]
    seed_like = {k for k in varied if k in SEED_FOLLOWING_KEYS and _follows_seed(rows, k, others, specific)}
    return list(dict.fromkeys([*STANDARD_KEYS, *(k for k in varied if k not in seed_like)]))


def identity_value(row: dict[str, Any], key: str, specific: set[str] | None = None) -> Any:
    """The value of `key` that tells the row's configuration apart: None for a method-specific key that the
    row's method does not own (its default is noise)."""
    specific = method_specific_keys() if specific is None else specific
    if key in specific and key not in _method_class(row).identifying_keys:
        return None
    return config_value(row, key)


def config_value(row: dict[str, Any], key: str) -> Any:
    """The row's value of config key `key`, comparable across runs: a key its config.yaml lacks (written before
    the key existed) reads as the key's default, which is what that run trained with."""
    return _hashable(row[key] if key in row else _config_defaults().get(key))


@functools.cache
def _config_defaults() -> dict[str, Any]:
    from latentreason.config import RunConfig

    return flatten(dataclasses.asdict(RunConfig()))


def group_rows(rows: list[dict[str, Any]], axes: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows grouped by their identity on `axes` (first-seen order); each group is one configuration."""
    specific = method_specific_keys()
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(identity_value(row, k, specific) for k in axes), []).append(row)
    return groups


def named_starts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `rows` whose `train.init_from` names the label of the run it starts from when that run is a
    cell of the sweep ("no_cot" rather than .../runs/no_cot_seed-0), so that a start is compared by what it
    is, not by its per-seed directory."""
    by_run = {row["run"]: row for row in rows if "run" in row}
    out = []
    for row in rows:
        start = start_cell(row, by_run)
        if start is None and row.get("start_label"):  # a pretraining cell of the sweep (collect names it)
            out.append(dict(row, **{"train.init_from": row["start_label"]}))
            continue
        out.append(row if start is None else dict(row, **{"train.init_from": method_label(start)}))
    return out


# ----------------------------------------------------------------------------- statistics


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
    """Mean and 95% CI over seeds of each configuration (`configuration_axes`); costs averaged."""
    rows = named_starts(rows)
    axes = configuration_axes(rows)
    table = []
    for key, members in group_rows(rows, axes).items():
        mean, half = mean_ci95([m["accuracy"] for m in members])
        if half is None:  # one seed: fall back to the binomial (Wilson) interval of that run
            low, high = members[0]["accuracy_ci95"]
            half = (high - low) / 2
        entry = dict(zip(axes, key))
        entry |= {
            "seeds": len(members),
            "accuracy_mean": mean,
            "accuracy_ci95_half": half,  # half-width; a per-run accuracy_ci95 is an interval
            "params_total": members[0].get("params_total"),
            "params_trainable": members[0].get("params_trainable"),
        }
        for cost in COST_KEYS:
            values = [m[cost] for m in members if m.get(cost) is not None]
            entry[cost] = statistics.fmean(values) if values else None
        table.append(entry | _method_facts(members[0]))
    return table


def _method_facts(row: dict[str, Any]) -> dict[str, Any]:
    """The method keys label / N_L read, kept beside an entry (also where they are not axes)."""
    return {k: row.get(k) for k in ("method.name", *sorted(_method_class(row).identifying_keys)) if k in row}


def paired_gains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy gain of every cell over the run it was initialised from (`train.init_from`, same seed and
    eval set), aggregated per configuration: mean gain with a Student-t 95% CI over seeds, and how many
    seeds got better / equal / worse. Pairing by seed removes the seed-to-seed spread of the shared start,
    so this answers "did the latent method improve on its own starting point" more sharply than comparing
    two means with overlapping CIs. Cells whose start is not a finished run of this sweep are left out."""
    by_run = {row["run"]: row for row in rows}
    named = named_starts(rows)
    axes = configuration_axes(named)
    start_of = {id(n): start for row, n in zip(rows, named) if (start := start_cell(row, by_run)) is not None}
    out = []
    for key, members in group_rows([n for n in named if id(n) in start_of], axes).items():
        starts = [start_of[id(row)] for row in members]
        gains = [row["accuracy"] - start["accuracy"] for row, start in zip(members, starts)]
        mean, half = mean_ci95(gains)
        out.append(dict(zip(axes, key)) | _method_facts(members[0]) | {
            "start": method_label(starts[0]), "seeds": len(gains), "gain_mean": mean, "gain_ci95_half": half,
            "better": sum(g > 0 for g in gains), "equal": sum(g == 0 for g in gains), "worse": sum(g < 0 for g in gains),
        })
    return out


# ----------------------------------------------------------------------------- matched controls


def control_overrides(row: dict[str, Any]) -> dict[str, Any] | None:
    """What turns the row's latent configuration into its no-latent control (the method's `control_overrides`,
    e.g. coconut -> method.name=cot, soft_tokens -> method.n_latents=0); None when the row has no latents."""
    return _method_class(row).control_overrides(method_config(row))


def _config_value(config: Any, dotted: str) -> Any:
    """`config.a.b` for the flat key "method.a.b" (defaults filled in, so old rows without a key still match)."""
    for part in dotted.split(".")[1:]:
        config = getattr(config, part, None)
    return _hashable(config)


def _method_identity(row: dict[str, Any]) -> tuple:
    """A configuration as its own method tells it apart: name, label, N_L and the method's identifying keys
    (a Coconut row turned into method.name=cot is the CoT configuration, whatever its coconut.* options say)."""
    cls, config = _method_class(row), method_config(row)
    return (cls.name, cls.label(config), cls.latent_budget(config), *((k, _config_value(config, k)) for k in sorted(cls.identity_keys(config))))


def _start_run(row: dict[str, Any], by_run: dict[str, dict[str, Any]], written: Any = None) -> Any:
    """The run a cell starts from (`written`, default its `train.init_from`): its run name when it is a cell of the
    sweep (start_cell), else the path as written."""
    written = row.get("train.init_from") if written is None else written
    if not written:
        return None
    start = start_cell(row, by_run, written)
    return start["run"] if start is not None else str(written)


def analysis_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's latent analyses (analysis/analysis.json, written by `latentreason analyze`) as flat metrics, each
    metric's nulls under `metric/null_kind` keys (analysis/nulls.py: mean, lo, hi of the null draws); None when
    the run was not analysed."""
    path = Path(run_dir) / "analysis" / "analysis.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    bvc = data.get("base_vs_coprocessor") or {}
    summary = {
        "method": data.get("method"), "n_slots": data.get("n_slots"), "skipped": data.get("skipped"),
        "cross_capture_mean_off_diagonal": data.get("cross_capture_mean_off_diagonal"),
        "slot_silhouette": data.get("slot_silhouette"), "effective_rank": data.get("effective_rank"),
        "cka_slots_mean_off_diagonal": data.get("cka_slots_mean_off_diagonal"),
        "principal_angle_mean_deg": bvc.get("principal_angle_mean_deg"), "cka_base_coprocessor": bvc.get("cka"),
    }
    pair_nulls = bvc.get("nulls") or {}
    nulls = {**(data.get("nulls") or {}), "principal_angle_mean_deg": pair_nulls.get("principal_angle_mean_deg") or {},
             "cka_base_coprocessor": pair_nulls.get("cka") or {}}
    for metric, kinds in nulls.items():
        for kind, null in (kinds or {}).items():
            summary[f"{metric}/{kind}"] = null
    return summary


EVAL_SPLIT_KEYS = ("task.name", "task.branching", "task.seed", "task.eval_size", "task.eval_path")
"""What fixes a run's eval examples, with the generator parameters (task.params.*): two runs that agree on all of
them were scored on the same problems."""


def frozen_base_start(row: dict[str, Any]) -> str | None:
    """The run whose Base a frozen-Base cell (liu, H1) keeps unchanged: its start, or the start of the
    pretraining cell it starts from (pretraining over a frozen Base does not change the Base)."""
    start = row.get("pretrained_from") or row.get("train.init_from")
    return str(start) if start else None


def _start_outside(row: dict[str, Any], read: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The finished run a frozen-Base cell's Base comes from when it is not a cell of the sweep (e.g. a committed
    recipe model), read from its own folder (once per folder: `read` keeps what was read), if it was scored on the
    cell's eval examples; else None."""
    written = frozen_base_start(row)
    if written is None:
        return None
    folder = str(recorded_path(row, written))
    if folder not in read:
        read[folder] = run_row(Path(folder))
    start = read[folder]
    if start is None:
        return None
    params = {k for k in (*start, *row) if k.startswith("task.params.")}
    if any(_hashable(start.get(k)) != _hashable(row.get(k)) for k in (*EVAL_SPLIT_KEYS, *params)):
        return None
    return start


def _describe(row: dict[str, Any]) -> str:
    return method_label(row) if is_reference(row) else f"{method_label(row)} N_L={latent_budget(row)}"


def control_gains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy gain of every latent configuration over its matched no-latent control, paired by seed.

    The control of a cell is the finished cell that (a) is the cell's configuration with the method's
    `control_overrides` applied, as the control's method identifies configurations (`_method_identity`),
    (b) starts from the very same run (`train.init_from`), and (c) agrees on every other key the sweep
    varies outside `method.*` (task, model, train: epochs, lr, ...; eval) and on the seed keys. So Coconut
    N_L = 8 from seed 1's CoT run is compared with seed 1's CoT continued from that run for the same epochs,
    soft tokens with the same soft-token configuration at N_L = 0. Identical duplicates: the first by run name.
    A method whose control_overrides is {} (liu and H1: a frozen Base without latents is its start, unchanged
    by any number of steps) is compared with the run its Base comes from (frozen_base_start: its start, or the
    start of the pretraining cell it starts from): a cell of the sweep, or else that finished run's folder when it
    was scored on the same eval examples (EVAL_SPLIT_KEYS).

    One entry per latent configuration (configuration_axes, as in paired_gains): `control` (its description,
    None when no cell of the sweep is one), `wanted` (the overrides, so a missing control can be added),
    `seeds` paired, `unpaired` seeds without a control, and over the paired seeds the mean gain with its
    Student-t 95% CI and the better / equal / worse counts (None when nothing is paired). A configuration is
    never compared with anything but its own control. Whether training had converged: `late_change` and
    `control_late_change` (mean over the paired cells of `late_change`, the control's None when the control is
    a start run, not trained further here: `control_is_start`) and `curves` (per paired seed: the cell's and the control's
    `eval_curve`, and the control's final accuracy) for the report's learning-curve plot."""
    by_run = {row["run"]: row for row in rows}
    named = named_starts(rows)
    axes = configuration_axes(named)
    context = [k for k in dict.fromkeys([*axes, *SEED_KEYS, *SEED_FOLLOWING_KEYS])
               if not k.startswith("method.") and k != "train.init_from"]

    def identity(row: dict[str, Any]) -> tuple:
        return tuple(config_value(row, k) for k in context), _start_run(row, by_run), _method_identity(row)

    candidates: dict[tuple, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["run"]):
        if control_overrides(row) is None:
            candidates.setdefault(identity(row), row)
    original = {id(n): row for row, n in zip(rows, named)}
    outside: dict[str, dict[str, Any] | None] = {}

    def control_of(row: dict[str, Any]) -> dict[str, Any] | None:
        overrides = control_overrides(row)
        if not overrides:  # {}: training without latents would change nothing (a frozen Base): the start is the control
            return start_cell(row, by_run, frozen_base_start(row)) or _start_outside(row, outside)
        return candidates.get(identity(dict(row, **overrides)))

    def paced_control_of(row: dict[str, Any]) -> dict[str, Any] | None:
        paced = _method_class(row).paced_control_overrides(method_config(row))
        return candidates.get(identity(dict(row, **paced))) if paced else None

    def mean_late_change(cells: list[dict[str, Any]]) -> float | None:
        changes = [c for c in (late_change(cell.get("eval_curve") or []) for cell in cells) if c is not None]
        return statistics.fmean(changes) if changes else None

    out = []
    for key, members in group_rows([n for row, n in zip(rows, named) if control_overrides(row) is not None], axes).items():
        overrides = control_overrides(original[id(members[0])])
        cells = [original[id(m)] for m in members]
        # One kind of control per configuration: the paced one wherever the sweep has it for any seed (seeds
        # without it stay unpaired), else the plain one; never a mix of the two in one mean.
        paced = [paced_control_of(row) for row in cells]
        pairs = list(zip(cells, paced)) if any(paced) else [(row, control_of(row)) for row in cells]
        paired_rows = [(row, control) for row, control in pairs if control is not None]
        gains = [row["accuracy"] - control["accuracy"] for row, control in paired_rows]
        mean, half = mean_ci95(gains) if gains else (None, None)
        controls = [control for _, control in paired_rows]
        out.append(dict(zip(axes, key)) | _method_facts(members[0]) | {
            "control": _describe(controls[0]) if controls else None,
            "wanted": ", ".join(f"{k}={v}" for k, v in overrides.items()) or "its start run (train.init_from) as a cell",
            "seeds": len(gains), "unpaired": len(pairs) - len(gains), "gain_mean": mean, "gain_ci95_half": half,
            "better": sum(g > 0 for g in gains), "equal": sum(g == 0 for g in gains), "worse": sum(g < 0 for g in gains),
            # Did training still move them at the end? A start run used as the control (frozen Base) is not
            # trained further here: its curve is its own recipe's, so it has no late change in this comparison.
            "control_is_start": not overrides,
            "late_change": mean_late_change([row for row, _ in paired_rows]),
            "control_late_change": mean_late_change(controls) if overrides else None,
            "curves": [{"seed": row.get("train.seed"), "cell": row.get("eval_curve") or [],
                        "control": (control.get("eval_curve") or []) if overrides else [],
                        "control_accuracy": control["accuracy"]} for row, control in paired_rows],
        })
    return out


SAME_MODEL_LOSS_RTOL = 1e-3
"""Relative tolerance within which two runs' logged training losses count as the same. Two code paths that compute
the same function differ by float rounding, which training grows: the soft-token and H2 N_L = 0 controls of
results/countdown_b4_curriculum reach 9e-5 over 1,000 steps, while a different model differs in the 2nd digit."""


def training_losses(run_dir: str | Path) -> dict[int, float]:
    """{step: training loss} of a run's logged rows (metrics.jsonl)."""
    return {int(r["step"]): float(r["loss"]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("loss") is not None}


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two runs trained the same model: same eval examples answered the same way in count and length, and
    training losses equal within SAME_MODEL_LOSS_RTOL at every step both logged (at least one)."""
    if a.get("n") != b.get("n") or a.get("correct") != b.get("correct"):
        return False
    # Older eval.json files rounded tokens per answer to two decimals.
    if not math.isclose(a.get("generated_tokens_per_answer") or 0, b.get("generated_tokens_per_answer") or 0, abs_tol=0.006):
        return False
    losses_a, losses_b = training_losses(a["run_dir"]), training_losses(b["run_dir"])
    steps = losses_a.keys() & losses_b.keys()
    return bool(steps) and all(math.isclose(losses_a[s], losses_b[s], rel_tol=SAME_MODEL_LOSS_RTOL) for s in steps)


def same_model_configurations(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Groups (two or more) of configurations that trained the same model in every seed: e.g. soft tokens and H2
    at N_L = 0 from a neutral start, which both reduce to the Base trained on the same batches. They are one
    result listed twice, and a reader should not count them as two. Each configuration is given by its first
    seed's row; configurations must have run the same seeds (and at least one) to be grouped."""
    rows = named_starts(rows)
    configurations = [members for members in group_rows(rows, configuration_axes(rows)).values() if "run_dir" in members[0]]
    by_seed = [{tuple(m.get(k) for k in SEED_KEYS): m for m in members} for members in configurations]
    groups: list[list[int]] = []
    for index, seeds in enumerate(by_seed):
        for group in groups:
            first = by_seed[group[0]]
            if seeds.keys() == first.keys() and all(_same_run(seeds[k], first[k]) for k in seeds):
                group.append(index)
                break
        else:
            groups.append([index])
    return [[configurations[i][0] for i in group] for group in groups if len(group) > 1]


def write_tables(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """cells.json (every finished cell), table.json / table.csv / table.md (one row per configuration)."""
    table = aggregate(rows)
    (out / "cells.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "table.json").write_text(json.dumps(table, indent=1))
    if table:
        with open(out / "table.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in table for k in r)))
            writer.writeheader()
            writer.writerows(table)
    axes = list(dict.fromkeys(k for r in table for k in r if "." in k))
    shown = [c for c in [*axes, "seeds", "accuracy_mean", "accuracy_ci95_half", "chance_accuracy", "shortcut_ceiling", "params_total",
                         "params_trainable", "flops_per_answer", "forward_passes_per_answer", "seconds_per_answer", "mean_loops"]
             if any(r.get(c) is not None for r in table)]
    # Columns that never vary in this sweep are noise in the table.
    shown = [c for c in shown if c in ("accuracy_mean", "accuracy_ci95_half", "seeds", "chance_accuracy", "shortcut_ceiling")
             or len({str(r.get(c)) for r in table}) > 1 or c == "method.name"]
    (out / "table.md").write_text(markdown_table(table, shown) + "\n")
    return table
