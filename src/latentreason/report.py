"""`latentreason report SWEEP_DIR`: SWEEP_DIR/report.md and SWEEP_DIR/plots/ from a sweep's finished cells.

The report has the results table (one row per configuration, results.aggregate), the paired gain of every
latent configuration over the run it started from (results.paired_gains) and over its matched no-latent control
(results.control_gains), plots, and the latent analyses
(analysis/runs.py) of the runs that have them. A configuration is named by its setting (task, plus
branching where the sweep varies it), its method label and N_L; any other axis that the sweep varies and
that those do not tell apart (train.lr, train.epochs, ...) gets a column of its own and joins the plot labels.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

from latentreason.errors import UserInputError
from latentreason.results import (
    SAME_MODEL_LOSS_RTOL,
    aggregate,
    analysis_summary,
    collect,
    control_gains,
    control_label,
    identity_value,
    is_reference,
    late_change_text,
    latent_budget,
    method_label,
    named_starts,
    paired_gains,
    pretraining_rows,
    same_model_configurations,
)
from latentreason.tables import markdown_table


def _setting(row: dict[str, Any], branching_varies: set[str]) -> str:
    task = str(row.get("task.name"))
    return f"{task} b={row.get('task.branching')}" if task in branching_varies else task


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text.replace("=", "")).strip("_")


def distinguishing_axes(entries: list[dict[str, Any]], branching_varies: set[str]) -> list[str]:
    """Config axes that the setting, method label and N_L leave ambiguous: the keys whose values differ
    between two configurations with the same (setting, label, N_L). Empty for the usual sweep."""
    named: dict[tuple, list[dict]] = {}
    for entry in entries:
        named.setdefault((_setting(entry, branching_varies), entry["label"], entry["N_L"]), []).append(entry)
    keys = list(dict.fromkeys(k for entry in entries for k in entry if "." in k))
    return [k for k in keys if any(len({str(m.get(k)) for m in members}) > 1 for members in named.values() if len(members) > 1)]


def _name_configurations(entries: list[dict[str, Any]], branching_varies: set[str], axes: list[str] | None = None) -> list[str]:
    """Give each entry its method `label`, `N_L` and `config_label` (the label plus the distinguishing axes,
    which plots use); returns those axes (computed from `entries` unless given)."""
    for entry in entries:
        entry["label"], entry["N_L"] = method_label(entry), latent_budget(entry)
    axes = distinguishing_axes(entries, branching_varies) if axes is None else axes
    for entry in entries:
        entry["config_label"] = " ".join([entry["label"], *(f"{k}={entry.get(k)}" for k in axes)])
    return axes


def plot_accuracy(rows: list[dict[str, Any]], x: str, path: Path, title: str, xlabel: str, logx: bool = False,
                  references: list[dict[str, Any]] | None = None) -> Path:
    """Accuracy (mean +- 95% CI) vs `x`, one line per `config_label`; `references` rows become dashed lines."""
    from latentreason.analysis.plots import _new_figure, _save

    fig = _new_figure((6.5, 4.2))
    ax = fig.add_subplot()
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        if row.get(x) is not None and row.get("accuracy_mean") is not None:
            lines.setdefault(row["config_label"], []).append((float(row[x]), row["accuracy_mean"], row.get("accuracy_ci95_half") or 0.0))
    for label, points in lines.items():
        points.sort()
        xs, ys, errs = zip(*points)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
    for index, row in enumerate(references or []):
        ax.axhline(row["accuracy_mean"], linestyle="--", color=f"C{(len(lines) + index) % 10}", label=f"{row['config_label']} (reference)")
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


def _share(rate: float) -> str:
    """A rate as a percentage with one decimal below 1%, so 1 answer of 440 reads 0.2%, not 0%."""
    return f"{rate:.0%}" if rate >= 0.01 else f"{rate:.1%}"


def write_report(sweep_dir: str | Path) -> str:
    """SWEEP_DIR/report.md: aggregated table, plots under SWEEP_DIR/plots/, per-run latent-analysis summaries.

    Plots per setting (task, plus branching when the sweep varies it): accuracy vs N_L per method (reference
    baselines such as no_cot and cot as dashed lines), accuracy vs FLOPs per answer (log x); per task whose
    branching varies: accuracy vs branching per method and N_L. Returns the report's path.
    """
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    pretraining = pretraining_rows(sweep_dir)
    if not rows and not pretraining:
        raise UserInputError("no finished runs in this sweep (nothing with eval.json or pretrain.json under runs/)", path=str(sweep_dir))
    table = aggregate(rows)
    branchings: dict[str, set] = {}
    for row in table:
        branchings.setdefault(str(row["task.name"]), set()).add(row.get("task.branching"))
    branching_varies = {task for task, values in branchings.items() if len(values) > 1}
    axes = _name_configurations(table, branching_varies)
    settings: dict[str, list[dict]] = {}
    for row in table:
        settings.setdefault(_setting(row, branching_varies), []).append(row)

    plots_dir = sweep_dir / "plots"
    figures: list[tuple[str, Path]] = []
    for setting, members in settings.items():
        latent = [r for r in members if not is_reference(r)]
        references = [r for r in members if is_reference(r)]
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
        members = [dict(r, config_label=r["config_label"] if is_reference(r) else f"{r['config_label']} N_L={r['N_L']}")
                   for r in table if r["task.name"] == task]
        figures.append((f"{task}: accuracy vs branching", plot_accuracy(
            members, "task.branching", plots_dir / f"accuracy_vs_branching_{_slug(task)}.png",
            f"{task}: accuracy vs branching factor", "branching factor")))

    from latentreason.analysis.plots import plot_gains

    gains = paired_gains(rows)
    _name_configurations(gains, branching_varies, axes)  # the same columns and labels as the results table
    for setting in sorted({_setting(g, branching_varies) for g in gains}):
        members = sorted((g for g in gains if _setting(g, branching_varies) == setting), key=lambda g: (g["config_label"], g["N_L"]))
        figures.append((f"{setting}: gain over the starting run", plot_gains(
            [f"{g['config_label']} N_L={g['N_L']} (from {g['start']})" for g in members], [g["gain_mean"] for g in members],
            [g["gain_ci95_half"] for g in members], plots_dir / f"gain_over_start_{_slug(setting)}.png",
            f"{setting}: paired gain over the start (green/red: CI clears 0)")))

    analyses = _analysis_rows(sweep_dir, rows, axes)
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
    lines += [_results_table(table, branching_varies, axes), ""]
    cut_off = [row for row in table if (row.get("truncated_rate") or 0) > 0]
    if cut_off:
        lines += ["**Answers cut off by the decoding budget** (no end-of-answer token within `eval.max_new_tokens`, scored as "
                  "generated; raise the budget and re-evaluate before reading these accuracies): " + ", ".join(
                      f"{_setting(row, branching_varies)} {row['label']} N_L={row['N_L']} ({_share(row['truncated_rate'])})"
                      for row in sorted(cut_off, key=lambda r: -r["truncated_rate"])), ""]
    same_model = same_model_configurations(rows)
    if same_model:
        lines += ["**Configurations that trained the same model** (in every seed: the same number of held-out answers "
                  "right, the same tokens per answer, and training losses within a relative "
                  f"{SAME_MODEL_LOSS_RTOL:g} at every logged step; e.g. two methods' N_L = 0 controls that both reduce "
                  "to the Base): one result listed more than once, not independent evidence: " + "; ".join(
                      " = ".join(f"{_setting(row, branching_varies)} {method_label(row)} N_L={latent_budget(row)}" for row in group)
                      for group in same_model), ""]
    if pretraining:
        lines += ["## Coprocessor pretraining cells", "",
                  "Cells with `train.objective: pretrain` (Liu et al. 2024: M augmentation points per packed text sequence, "
                  "N_A ahead tokens each) have no task accuracy, so they are not in the tables above; the cells that start "
                  "from one name it in `train.init_from`. Ahead-token perplexity on the eval text's fixed points, with the "
                  "Coprocessor's latents and with the Base alone, before and after pretraining (the Base alone changes only "
                  "where it trains, h2).", ""]
        lines += [_pretraining_table(pretraining), ""]
    if gains:
        lines += ["## Gain over the starting model (paired by seed)", "",
                  "Accuracy of each latent configuration minus that of the run it was initialised from (`train.init_from`: "
                  "the same seed's No-CoT or CoT cell), mean over seeds with a Student-t 95% CI; better / equal / worse "
                  "counts seeds. A gain whose CI excludes 0 is a real improvement over the start; compare it with a "
                  "no-latent control trained for the same extra steps (e.g. soft_tokens N_L = 0) before crediting the latents.", ""]
        lines += [_gains_table(gains, branching_varies, axes), ""]
    controls = control_gains(rows)
    if controls:
        _name_configurations(controls, branching_varies, axes)
        for setting in sorted({_setting(c, branching_varies) for c in controls}):
            members = [c for c in controls if _setting(c, branching_varies) == setting and any(p["cell"] for p in c["curves"])]
            if members:
                figures.append((f"{setting}: learning curves beside the matched controls", plot_control_curves(
                    sorted(members, key=lambda c: (c["config_label"], c["N_L"])), plots_dir / f"curves_vs_control_{_slug(setting)}.png",
                    f"{setting}: held-out accuracy during training, latent cells (solid) and their controls (dashed)")))
        lines += ["## Gain over the matched no-latent control (paired by seed)", "",
                  "Accuracy of each latent configuration minus that of its control: the cell trained from the same start "
                  "(`train.init_from`) with the same task, model, training and eval keys and the same seed, without latents "
                  "(each method's `control_overrides`: Coconut -> CoT continued for the same epochs; soft tokens and the "
                  "coprocessor -> N_L = 0; liu / H1, whose Base is frozen -> the start run itself, read from its folder when it is "
                  "not a cell and was scored on the same eval examples; looped -> one loop). Mean over the paired seeds with a Student-t 95% CI. A "
                  "configuration whose control is not a cell of this sweep says so and names the cell to add. Last-quarter "
                  "change: held-out accuracy at the last periodic evaluation minus at 75% of the steps (mean over the paired "
                  "cells; results.late_change): a cell still climbing beside a flat control was not converged, so its gap is "
                  "a statement about this training budget (the curves are in the plots below).", ""]
        lines += [_control_gains_table(controls, branching_varies, axes), ""]
    lines += ["## Plots", ""]
    lines += [f"![{title}]({path.relative_to(sweep_dir)})" for title, path in figures] + [""]
    if analyses:
        lines += ["## Latent analyses", "",
                  "Per run (`latentreason analyze`, eval set): cross-capture H_ij = share of slot j's variance in slot i's "
                  "principal subspace (high off-diagonal mean = slots share one subspace, i.e. poorly specialised); "
                  "silhouette of latents labelled by slot (high = slots separable); effective rank of pooled latents; "
                  "mean linear CKA between slots; Base vs Coprocessor: mean principal angle (degrees) between their "
                  "subspaces and CKA between Z and the Base-side states. Each number is followed by its nulls at the same "
                  "n, d and rank (analysis/nulls.py; per run: mean [95% prediction interval] over the null draws): "
                  "null_gauss = every slot Gaussian with its own covariance spectrum in random, independent directions "
                  "(slots unrelated: a cross-capture this high arises by chance); null_subspace = random subspaces of "
                  "the same rank; null_perm = slot labels shuffled within each example (for cross-capture: slots "
                  "exchangeable, the fully shared end; for silhouette: the null, about 0; for CKA: examples shuffled). "
                  "A cross-capture shows overlapping subspaces only where it clears null_gauss and null_subspace.", ""]
        if any(not a.get("skipped") for a in analyses):
            lines += ["Mean over seeds per configuration:", "", _analysis_summary_table(analyses), ""]
        lines += ["<details><summary>Every run</summary>", "", _analysis_table(analyses), "", "</details>", ""]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(lines))
    return str(path)


def _fmt(value: Any, digits: str) -> str:
    return "" if value is None else format(value, digits)


def _results_table(table: list[dict[str, Any]], branching_varies: set[str], axes: list[str] = ()) -> str:
    def fmt_count(value: Any) -> str:
        return "" if value is None else f"{int(value):,}"

    def order(row: dict[str, Any]) -> tuple:
        return (str(row["task.name"]), row.get("task.branching") or 0, row["label"], row["N_L"], *(str(row.get(k)) for k in axes))

    header = ["task", "method", "N_L", *axes, "seeds", "accuracy", "chance", "shortcut ceiling", "params total", "params trainable",
              "FLOPs/answer", "fwd passes/answer", "ms/answer"]
    cells = []
    for row in sorted(table, key=order):
        seconds = row.get("seconds_per_answer")
        cells.append(dict(zip(header, [
            _setting(row, branching_varies), row["label"], str(row["N_L"]), *(str(row.get(k)) for k in axes), str(row["seeds"]),
            f"{row['accuracy_mean']:.3f} ± {row['accuracy_ci95_half']:.3f}",
            _fmt(row.get("chance_accuracy"), ".2f"), _fmt(row.get("shortcut_ceiling"), ".2f"),
            fmt_count(row.get("params_total")), fmt_count(row.get("params_trainable")),
            _fmt(row.get("flops_per_answer"), ".3g"), _fmt(row.get("forward_passes_per_answer"), ".1f"),
            "" if seconds is None else f"{1000 * seconds:.2f}",
        ])))
    return markdown_table(cells, header)


def _pretraining_table(rows: list[dict[str, Any]]) -> str:
    header = ["run", "pretrained", "N_L", "steps", "ppl with latents (before -> after)", "ppl Base alone (before -> after)"]
    cells = [dict(zip(header, [
        row["run"], row["label"], str(row.get("method.n_latents")), str(row.get("steps")),
        f"{_fmt(row.get('before.ppl_with_latents'), '.3f')} -> {_fmt(row.get('after.ppl_with_latents'), '.3f')}",
        f"{_fmt(row.get('before.ppl_without_latents'), '.3f')} -> {_fmt(row.get('after.ppl_without_latents'), '.3f')}",
    ])) for row in rows]
    return markdown_table(cells, header)


def _gains_table(gains: list[dict[str, Any]], branching_varies: set[str], axes: list[str] = ()) -> str:
    header = ["task", "method", "N_L", *axes, "starts from", "seeds", "gain in accuracy", "better / equal / worse"]
    cells = []
    for row in sorted(gains, key=lambda r: (str(r["task.name"]), r.get("task.branching") or 0, r["label"], r["N_L"],
                                            *(str(r.get(k)) for k in axes))):
        ci = "" if row["gain_ci95_half"] is None else f" ± {row['gain_ci95_half']:.3f}"
        cells.append(dict(zip(header, [
            _setting(row, branching_varies), row["label"], str(row["N_L"]), *(str(row.get(k)) for k in axes), row["start"],
            str(row["seeds"]), f"{row['gain_mean']:+.3f}{ci}", f"{row['better']} / {row['equal']} / {row['worse']}",
        ])))
    return markdown_table(cells, header)


def _control_gains_table(gains: list[dict[str, Any]], branching_varies: set[str], axes: list[str] = ()) -> str:
    header = ["task", "method", "N_L", *axes, "control", "seeds paired", "gain over control", "better / equal / worse",
              "last-quarter change: cell / control"]
    cells = []
    for row in sorted(gains, key=lambda r: (str(r["task.name"]), r.get("task.branching") or 0, str(r.get("label")), r.get("N_L") or 0,
                                            *(str(r.get(k)) for k in axes))):
        first = [_setting(row, branching_varies), str(row.get("label", row.get("method.name"))), str(row.get("N_L", "")),
                 *(str(row.get(k)) for k in axes)]
        if row["control"] is None:
            cells.append(dict(zip(header, [*first, f"no control in this sweep (add: {row['wanted']})", "0", "", ""])))
            continue
        ci = "" if row["gain_ci95_half"] is None else f" ± {row['gain_ci95_half']:.3f}"
        unpaired = f" ({row['unpaired']} without control)" if row["unpaired"] else ""
        cells.append(dict(zip(header, [*first, control_label(row), f"{row['seeds']}{unpaired}", f"{row['gain_mean']:+.3f}{ci}",
                                       f"{row['better']} / {row['equal']} / {row['worse']}", late_change_text(row)])))
    return markdown_table(cells, header)


def plot_control_curves(entries: list[dict[str, Any]], path: Path, title: str) -> Path:
    """One panel per latent configuration: its cells' held-out accuracy vs step (solid, one colour per seed) beside
    its matched controls' (dashed, same colour; a start run used as the control, not trained further, is a dotted
    horizontal line at its accuracy). A latent curve still rising where its control is flat says the gap belongs
    to this training budget."""
    from latentreason.analysis.plots import _new_figure, _save

    columns = min(len(entries), 3)
    rows = math.ceil(len(entries) / columns)
    fig = _new_figure((4.2 * columns, 3.2 * rows + 0.4))
    for index, entry in enumerate(entries):
        ax = fig.add_subplot(rows, columns, index + 1)
        for colour, pair in enumerate(entry["curves"]):
            style = {"color": f"C{colour % 10}"}
            if pair["cell"]:
                ax.plot(*zip(*pair["cell"]), marker="o", ms=3, label=f"seed {pair['seed']}", **style)
            if pair["control"]:
                ax.plot(*zip(*pair["control"]), ls="--", marker="x", ms=3, label=f"control, seed {pair['seed']}", **style)
            elif entry["control_is_start"]:
                ax.axhline(pair["control_accuracy"], ls=":", label=f"control (start), seed {pair['seed']}", **style)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{entry['config_label']} N_L={entry['N_L']}\nvs {entry['control']}", fontsize=8)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel("held-out accuracy", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


ANALYSIS_COLUMNS = (
    ("cross-capture off-diag", "cross_capture_mean_off_diagonal", ".3f"),
    ("null_gauss", "cross_capture_mean_off_diagonal/null_gauss", ".3f"),
    ("null_subspace", "cross_capture_mean_off_diagonal/null_subspace", ".3f"),
    ("null_perm", "cross_capture_mean_off_diagonal/null_perm", ".3f"),
    ("silhouette", "slot_silhouette", ".3f"),
    ("silhouette null_perm", "slot_silhouette/null_perm", ".3f"),
    ("eff. rank", "effective_rank", ".2f"),
    ("eff. rank null_gauss", "effective_rank/null_gauss", ".2f"),
    ("CKA slots", "cka_slots_mean_off_diagonal", ".3f"),
    ("CKA slots null_perm", "cka_slots_mean_off_diagonal/null_perm", ".3f"),
    ("angle base/cop (deg)", "principal_angle_mean_deg", ".1f"),
    ("angle null_subspace", "principal_angle_mean_deg/null_subspace", ".1f"),
    ("CKA base/cop", "cka_base_coprocessor", ".3f"),
    ("CKA base/cop null_perm", "cka_base_coprocessor/null_perm", ".3f"),
)
"""(header, key, format) of the latent-analysis tables; `metric/null_kind` keys hold that metric's null
(analysis/nulls.py: mean, lo, hi of the null draws), printed right after the metric."""


def _analysis_rows(sweep_dir: Path, rows: list[dict[str, Any]], axes: list[str] = ()) -> list[dict[str, Any]]:
    """One summary per run that has analysis/analysis.json, with its configuration columns and its nulls
    (`metric/null_kind` keys, see ANALYSIS_COLUMNS)."""
    by_run = {r["run"]: r for r in named_starts(rows)}
    tasks_varying = {t for t in {r.get("task.name") for r in rows} if len({r.get("task.branching") for r in rows if r.get("task.name") == t}) > 1}
    out = []
    for path in sorted((sweep_dir / "runs").glob("*/analysis/analysis.json")):
        run = path.parent.parent.name
        summary = analysis_summary(path.parent.parent)
        row = by_run.get(run, {})
        label = " ".join([method_label(row), *(f"{k}={identity_value(row, k)}" for k in axes)]) if row else summary["method"]
        entry = {"run": run, "label": label, "N_L": latent_budget(row) if row else None,
                 "setting": _setting(row, tasks_varying) if row else "?", "accuracy": row.get("accuracy")}
        entry |= {k: v for k, v in summary.items() if k != "method"}
        out.append(entry)
    return out


def _value(entry: dict[str, Any], key: str) -> float | None:
    """A metric, or the mean of a null (`metric/kind` keys hold the null's summary dict)."""
    value = entry.get(key)
    return value.get("mean") if isinstance(value, dict) else value


def _aggregate_analyses(analyses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cross-capture and its null means, averaged over seeds per (setting, label, N_L)."""
    keys = ("cross_capture_mean_off_diagonal", "cross_capture_mean_off_diagonal/null_gauss", "cross_capture_mean_off_diagonal/null_perm")
    groups: dict[tuple, list[dict]] = {}
    for a in analyses:
        if a.get("cross_capture_mean_off_diagonal") is not None:
            groups.setdefault((a["setting"], a["label"], a["N_L"]), []).append(a)
    out = []
    for (setting, label, n_latents), members in groups.items():
        means = {}
        for key in keys:
            values = [v for v in (_value(m, key) for m in members) if v is not None]
            means[key] = statistics.fmean(values) if values else None
        out.append({"setting": setting, "label": label, "N_L": n_latents, **means})
    return out


def _plot_cross_capture(rows: list[dict[str, Any]], path: Path, setting: str) -> Path:
    """Mean off-diagonal H vs N_L per method, with its nulls in the same colour: dashed the matched-covariance
    Gaussian (slots unrelated), dotted the slot permutation (slots exchangeable)."""
    from latentreason.analysis.plots import plot_lines

    return plot_lines([{"N_L": r["N_L"], "mean off-diagonal H": r["cross_capture_mean_off_diagonal"], "method": r["label"],
                        "null_gauss": r.get("cross_capture_mean_off_diagonal/null_gauss"),
                        "null_perm": r.get("cross_capture_mean_off_diagonal/null_perm")} for r in rows],
                      "N_L", "mean off-diagonal H", "method", path, f"{setting}: cross-capture (mean over seeds)",
                      nulls={"null_gauss": "--", "null_perm": ":"})


def _null_cell(entry: dict[str, Any], key: str, digits: str) -> str:
    value = entry.get(key)
    if not isinstance(value, dict):
        return _fmt(value, digits)
    if value.get("mean") is None:
        return ""
    if value.get("lo") is None:
        return format(value["mean"], digits)
    return f"{format(value['mean'], digits)} [{format(value['lo'], digits)}, {format(value['hi'], digits)}]"


def _analysis_table(analyses: list[dict[str, Any]]) -> str:
    header = ["run", "method", "N_L", "accuracy", "slots", *(h for h, _, _ in ANALYSIS_COLUMNS)]
    cells = []
    for a in analyses:
        first = [a["run"], str(a["label"]), str(a["N_L"]), _fmt(a["accuracy"], ".3f")]
        if a.get("skipped"):
            cells.append(dict(zip(header, [*first, "0", "no latents"])))
            continue
        cells.append(dict(zip(header, [*first, str(a["n_slots"]), *(_null_cell(a, key, digits) for _, key, digits in ANALYSIS_COLUMNS)])))
    return markdown_table(cells, header)


def _analysis_summary_table(analyses: list[dict[str, Any]]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for a in analyses:
        if not a.get("skipped"):
            groups.setdefault((a["setting"], str(a["label"]), a["N_L"] if a["N_L"] is not None else -1), []).append(a)
    header = ["setting", "method", "N_L", "runs", "accuracy", *(h for h, _, _ in ANALYSIS_COLUMNS)]
    cells = []
    for (setting, label, n_latents), members in sorted(groups.items()):
        means = []
        for key, digits in [("accuracy", ".3f"), *((key, digits) for _, key, digits in ANALYSIS_COLUMNS)]:
            values = [v for v in (_value(m, key) for m in members) if v is not None]
            means.append(format(statistics.fmean(values), digits) if values else "")
        cells.append(dict(zip(header, [setting, label, str(n_latents), str(len(members)), *means])))
    return markdown_table(cells, header)
