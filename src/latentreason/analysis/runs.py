"""Latent analyses of one finished run (`latentreason analyze RUN_DIR`): RUN_DIR/analysis/analysis.json + PNGs.

Sweeps with `analyze: true` call `analyze_run` on every finished cell without analysis.json (so analyses
resume); the report (report.py) summarises the analysis.json files of a sweep.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from latentreason.config import parse_overrides
from latentreason.errors import UserInputError

ANALYSIS_DEFAULTS = {"variance_threshold": 0.9, "batch_size": 64, "max_examples": 0, "top_k": 5, "plots": True, "null_repeats": 8, "null_seed": 0}
"""`analysis.*` overrides of `latentreason analyze` (everything else overrides the run's config). `null_repeats` draws of
each null (analysis/nulls.py; 0 turns the nulls off), seeded by `null_seed`."""


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
    if isinstance(merged["null_repeats"], bool) or not isinstance(merged["null_repeats"], int) or merged["null_repeats"] < 0:
        raise UserInputError(f"analysis.null_repeats={merged['null_repeats']!r}; expected an integer >= 0")
    if isinstance(merged["null_seed"], bool) or not isinstance(merged["null_seed"], int):
        raise UserInputError(f"analysis.null_seed={merged['null_seed']!r}; expected an integer")
    return merged, parsed


def analyze_run(run_dir: str | Path, overrides: list[str] | None = None, progress: bool = True) -> dict:
    """Latent analyses of a finished run, written to RUN_DIR/analysis/ (analysis.json + PNGs).

    Latents Z [n, N_L, d] come from `method.trace` over the eval set. Computed: the cross-capture matrix
    H_ij and its mean off-diagonal, slot silhouette, effective rank (pooled and per slot), linear CKA
    between slots, the logit lens of every slot through every latent model (top-k tokens), and, for
    Base + Coprocessor methods, principal angles and CKA between Z and the Base-side states (see
    analysis.capture.base_side_states). Every geometry number has its nulls beside it under `nulls` (and
    `base_vs_coprocessor.nulls`): analysis/nulls.py, at the same n, d and rank. Methods without latents (cot, no_cot, soft_tokens with N_L = 0)
    are not an error: the result says so (`"skipped"`), so a sweep with `analyze: true` goes on.
    """
    import numpy as np

    from latentreason.analysis import capture
    from latentreason.analysis.logit_lens import find_final_norm_and_head, logit_lens
    from latentreason.analysis.nulls import latent_nulls, pair_nulls
    from latentreason.analysis.plots import plot_heatmap, plot_logit_lens
    from latentreason.analysis.similarity import linear_cka, principal_angles, summarize_latents
    from latentreason.finished_run import load_finished_run

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
    repeats, seed = int(options["null_repeats"]), int(options["null_seed"])
    result["nulls"] = _json_ready(latent_nulls(z, threshold, repeats, seed))
    result["null_settings"] = {"repeats": repeats, "seed": seed, "interval": "95% prediction interval of one null draw (Student t over repeats)"}

    # Logit lens through every latent model; traces the method reports as already final-normed skip the norm.
    result["logit_lens"] = {}
    for name, model in method.latent_models().items():
        norm, head = find_final_norm_and_head(model)
        table = logit_lens(latents, None if method.traces_normed else norm, head, method.tokenizer, int(options["top_k"]))
        result["logit_lens"][name] = [[{"token": t, "p": p} for t, p in slot] for slot in table]
        if options["plots"]:
            plot_logit_lens(table, out / f"logit_lens_{name}.png", f"{method.name} latents through the {name} head (top-{int(options['top_k'])}, mean p over examples)")

    if capture.has_base_and_coprocessor(method):
        base = capture.base_side_states(method, examples, int(options["batch_size"]), progress)
        b = base[keep].numpy()
        angles = np.degrees(principal_angles(z.reshape(-1, z.shape[-1]), b.reshape(-1, b.shape[-1]), threshold))
        result["base_vs_coprocessor"] = {
            "base_side": "base hidden states at the latent slots" if b.shape[1] == n_slots else "base hidden state at the read position after the latent K/V",
            "base_slots": b.shape[1],
            "principal_angles_deg": [float(a) for a in angles],
            "principal_angle_mean_deg": float(angles.mean()) if angles.size else None,
            "cka": _finite(linear_cka(z.reshape(len(z), -1), b.reshape(len(b), -1))),
            "cka_per_slot": [_finite(linear_cka(z[:, i], b[:, i])) for i in range(n_slots)] if b.shape[1] == n_slots else None,
            "base_effective_rank": float(summarize_latents(b, threshold)["effective_rank"]),
        }
        if repeats:
            result["base_vs_coprocessor"]["nulls"] = _json_ready(pair_nulls(
                z.reshape(-1, z.shape[-1]), b.reshape(-1, b.shape[-1]), z.reshape(len(z), -1), b.reshape(len(b), -1), threshold, repeats, seed))

    if options["plots"]:
        labels = [f"z{i + 1}" for i in range(n_slots)] if n_slots <= 32 else None
        plot_heatmap(result["cross_capture"], out / "cross_capture.png",
                     f"cross-capture H[i,j] (var {threshold:g}); off-diag mean {_fmt(result['cross_capture_mean_off_diagonal'])}"
                     + _null_caption(result["nulls"].get("cross_capture_mean_off_diagonal", {})),
                     "slot j (variance captured)", "slot i (subspace)", labels)
        plot_heatmap(result["cka_slots"], out / "cka_slots.png", "linear CKA between slots", "slot", "slot", labels)
    if progress:
        nulls = result["nulls"]
        print(f"{out / 'analysis.json'}: {n_slots} slots, cross-capture off-diagonal {_fmt(result['cross_capture_mean_off_diagonal'])}"
              f"{_null_brief(nulls.get('cross_capture_mean_off_diagonal', {}))}, silhouette {_fmt(result['slot_silhouette'])}"
              f"{_null_brief(nulls.get('slot_silhouette', {}))}, effective rank {result['effective_rank']:.2f}")
    return _write_analysis(out, result)


def _null_caption(nulls: dict[str, Any]) -> str:
    """A second title line with the null means and intervals, e.g. `null_gauss 0.41 [0.38, 0.44]`."""
    parts = [f"{kind} {_fmt(n['mean'])}" + (f" [{n['lo']:.2f}, {n['hi']:.2f}]" if n.get("lo") is not None else "")
             for kind, n in nulls.items() if n.get("mean") is not None]
    return "\n" + ", ".join(parts) if parts else ""


def _null_brief(nulls: dict[str, Any]) -> str:
    parts = [f"{kind} {_fmt(n['mean'])}" for kind, n in nulls.items() if n.get("mean") is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _json_ready(value: Any) -> Any:
    """Nested dicts/lists with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float):
        return _finite(value)
    return value


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
