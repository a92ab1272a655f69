"""The claims of Coda-Forno et al. (2025) decided from a sweep's finished cells: paired differences, CIs, verdicts.

    latentreason claims DIR [DIR ...] [--out FILE]   (default FILE: the first DIR/paper_claims.md)

Each DIR is a sweep folder (its runs/ cells) or one finished run (a baseline trained outside a sweep, e.g. the
No-CoT models of each branching factor, so that "accuracy falls with branching" covers them too).

Each claim is a set of paired comparisons "a - b": two arms (method label without the regime, and N_L) of one
setting (task, branching) and one training regime (curriculum / answer-only / pretrained start), paired by seed
and start run (cells with the same `train.seed` and `train.init_from`, or, for cells that start from a
pretraining cell, the same run that pretraining started from), so the seed-to-seed spread of a shared
start cancels. Mean over the pairs with a Student-t 95% CI; a comparison supports a claim only when the CI lies
on the claim's side of 0, contradicts it only when the CI lies on the other side, and otherwise decides nothing
(one seed never decides). A claim whose arms the sweeps lack says which cells it needs: "cannot decide" is a
verdict here, never a silent omission. Geometry claims print every cross-capture beside its nulls (Gaussian with
matched covariance, random subspaces, slot-label permutation; analysis/nulls.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from latentreason.errors import UserInputError
from latentreason.methods.coprocessor import FROZEN_BASE_VARIANTS, VARIANTS, Coprocessor
from latentreason.methods.soft_tokens import SoftTokens
from latentreason.results import (
    analysis_summary,
    collect,
    control_gains,
    control_label,
    late_change_text,
    latent_budget,
    mean_ci95,
    method_label,
    replaces_steps,
    run_row,
    uses_steps,
)
from latentreason.tables import markdown_table

JOINT_VARIANTS = tuple(v for v in VARIANTS if v not in FROZEN_BASE_VARIANTS)
"""The dual variants that train the Base with the Coprocessor (H2)."""


# ----------------------------------------------------------------------------- rows: setting, regime, arm


def setting(row: dict[str, Any]) -> str:
    return f"{row['task.name']} b={row['task.branching']}" if row.get("task.name") == "countdown" else str(row.get("task.name"))


def regime(row: dict[str, Any]) -> str:
    """The paper's two regimes and the answer-only one: a cell whose method replaced the steps stage by stage
    (Coconut, `method.curriculum.enabled`) is a curriculum cell; a cell that starts from a pretraining cell
    (collect names it in start_label) is pretrained; a cell that trained on the written steps (CoT, e.g. the
    curriculum's "CoT continued" control) is CoT; anything else trains on question -> answer only."""
    if replaces_steps(row):
        return "curriculum"
    if row.get("start_label"):
        return "pretrained"
    if uses_steps(row):
        return "CoT"
    return "answer-only"


def arm(row: dict[str, Any]) -> tuple[str, int]:
    """(method label without the regime suffix, N_L): what a claim compares across regimes alike."""
    return method_label(row).removesuffix("+curriculum"), latent_budget(row)


def learned(row: dict[str, Any]) -> bool:
    """Above both no-reasoning reference points of its eval split (chance, the audit's shortcut ceiling): a cell
    at or below either has learned nothing the comparison could credit, so it never decides a claim."""
    floor = max(row.get("chance_accuracy") or 0.0, row.get("shortcut_ceiling") or 0.0)
    return row.get("accuracy") is not None and row["accuracy"] > floor


def arm_name(row: dict[str, Any]) -> str:
    return "{} N_L={}".format(*arm(row))


def claim_rows(path: Path) -> list[dict[str, Any]]:
    """The finished cells of a sweep folder, or the row of one finished run folder, with their analyses."""
    if (path / "runs").is_dir():
        return with_analyses(collect(path), path / "runs")
    row = run_row(path)
    if row is None:
        raise SystemExit(f"claims: {path} is neither a sweep folder (with runs/) nor a finished run (config.yaml and eval.json)")
    return with_analyses([row], path.parent)


def with_analyses(rows: list[dict[str, Any]], runs_dir: Path) -> list[dict[str, Any]]:
    """Rows with their run's cross-capture and its nulls attached (when `latentreason analyze` has run)."""
    out = []
    for row in rows:
        summary = analysis_summary(runs_dir / row["run"])
        if summary is not None:
            prefix = "cross_capture_mean_off_diagonal/"
            row = dict(row, cross_capture=summary["cross_capture_mean_off_diagonal"],
                       cross_capture_nulls={k.removeprefix(prefix): v for k, v in summary.items() if k.startswith(prefix)})
        out.append(row)
    return out


# ----------------------------------------------------------------------------- paired comparisons


@dataclass
class Comparison:
    """a - b over the seeds (and starts) both arms have, in one setting and regime."""

    setting: str
    regime: str
    a: str
    b: str
    differences: list[float]
    not_learned: int = 0
    """Cells of either arm at or below chance or the shortcut ceiling: the comparison then decides nothing."""

    @property
    def mean(self) -> float | None:
        return mean_ci95(self.differences)[0] if self.differences else None

    @property
    def half(self) -> float | None:
        return mean_ci95(self.differences)[1] if self.differences else None

    def side(self) -> int | None:
        """+1 / -1 when the 95% CI excludes 0 on that side, 0 when it includes 0, None when undecidable (one pair,
        or a cell that learned nothing)."""
        if self.not_learned or len(self.differences) < 2 or self.half is None or math.isnan(self.half):
            return None
        if self.mean - self.half > 0:
            return 1
        if self.mean + self.half < 0:
            return -1
        return 0

    def text(self) -> str:
        if not self.differences:
            return "n/a"
        wins = sum(d > 0 for d in self.differences)
        spread = "one seed: no CI" if self.half is None else f"± {self.half:.3f}"
        return f"{self.mean:+.3f} {spread} ({wins}/{len(self.differences)} pairs a > b)"

    def decides(self) -> str:
        if self.not_learned:
            return f"no: {self.not_learned} cell(s) not above the shortcut ceiling"
        return {1: "a > b", -1: "a < b", 0: "no difference detected", None: "no: one pair"}[self.side()]


def _pair_key(row: dict[str, Any]) -> tuple:
    """Seed and start; a pretrained cell's start is the run its pretraining cell started from, which the
    variants share (each variant pretrains its own Coprocessor)."""
    return row.get("train.seed"), row.get("task.seed"), str(_start(row))


def _start(row: dict[str, Any]) -> Any:
    """The run a cell starts from; for a cell started from a pretraining cell, the run that pretraining started from."""
    return row.get("pretrained_from") or row.get("train.init_from")


def _by_seed(row: dict[str, Any]) -> Any:
    return row.get("train.seed")


def _where(row: dict[str, Any]) -> str:
    return str(row.get("out_dir") or row["run"])


def _started_from_a_run(row: dict[str, Any]) -> bool:
    return bool(_start(row))


def _seed_and_budget(row: dict[str, Any]) -> tuple:
    """A branching pair: the same seed, both trained from scratch or both continued, for the same budget. The
    starts differ by task, so they cannot be part of the key; a CoT model trained from scratch and the same
    model continued 1,000 steps (a curriculum's control) are two different cells at one seed."""
    return row.get("train.seed"), _started_from_a_run(row), row.get("train.max_steps"), row.get("train.epochs")


def paired(rows: list[dict[str, Any]], a: Callable[[dict], bool], b: Callable[[dict], bool], *,
           group: Callable[[dict], tuple], pair: Callable[[dict], Any] = _pair_key, key: str = "accuracy",
           names: Callable[[dict, dict], tuple[str, str]] | None = None, only_a_must_learn: bool = False) -> list[Comparison]:
    """Paired a - b in `key`: one Comparison per `group(row)` = (setting label, regime label, *more) where both
    arms have cells with the same `pair(row)` and the same tag (RunConfig.tag names apart cells that differ only
    in their start, e.g. H2's N_L = 0 controls from two pretraining cells, which `pair` may not see: a tagged
    cell pairs only with a cell of the same tag). Two cells of one arm with the same group and pair key are refused
    (UserInputError naming both): picking one would make the verdict depend on run names, so `pair` must tell
    them apart. `names(first a cell, first b cell)` labels the two arms (default: arm_name of each). A cell of
    either arm that learned nothing makes the comparison undecidable, or only of arm a when `only_a_must_learn`."""
    sides: dict[tuple, tuple[dict, dict]] = {}
    for r in sorted(rows, key=lambda r: r["run"]):
        if r.get(key) is None:
            continue
        for side, wanted in enumerate((a, b)):
            if wanted(r):
                g, k = group(r), (pair(r), r.get("tag") or "")
                other = sides.setdefault(g, ({}, {}))[side].setdefault(k, r)
                if other is not r:
                    raise UserInputError(
                        f"claims: {_where(other)} and {_where(r)} are both {arm_name(r)} in {' / '.join(map(str, g))} "
                        f"with the same seed and start {k}: pass only one of them (e.g. one sweep folder per run)")
    out = []
    for g, (side_a, side_b) in sorted(sides.items(), key=lambda item: tuple(map(str, item[0]))):
        pairs = [(side_a[k], side_b[k]) for k in side_a if k in side_b]
        if not pairs:  # both arms here, but never from the same seed and start: nothing to pair
            continue
        first_a, first_b = next(iter(side_a.values())), next(iter(side_b.values()))
        label_a, label_b = names(first_a, first_b) if names else (arm_name(first_a), arm_name(first_b))
        not_learned = sum(not learned(x) for x, _ in pairs) + (0 if only_a_must_learn else sum(not learned(y) for _, y in pairs))
        out.append(Comparison(g[0], g[1], label_a, label_b, [x[key] - y[key] for x, y in pairs], not_learned))
    return out


def compare(rows: list[dict[str, Any]], a: Callable[[dict], bool], b: Callable[[dict], bool], key: str = "accuracy") -> list[Comparison]:
    """Paired a - b within one (setting, regime), pairs = cells with the same seed and start."""
    return paired(rows, a, b, group=lambda r: (setting(r), regime(r)), key=key)


def is_arm(label: str, n_latents: int | None = None) -> Callable[[dict], bool]:
    """Rows of the configuration whose label (regime suffix removed) is `label`, at N_L = `n_latents` if given."""
    def test(row: dict) -> bool:
        lab, n = arm(row)
        return lab == label and (n_latents is None or n == n_latents)
    return test


def soft_tokens(n_latents: int | None = None) -> Callable[[dict], bool]:
    return lambda row: row.get("method.name") == SoftTokens.name and (n_latents is None or latent_budget(row) == n_latents)


def dual(variant: str, n_latents: int | None = None) -> Callable[[dict], bool]:
    return lambda row: (row.get("method.name") == Coprocessor.name and row.get("method.coprocessor.variant") == variant
                        and (n_latents is None or latent_budget(row) == n_latents))


def latent_counts(rows: list[dict[str, Any]], which: Callable[[dict], bool]) -> list[int]:
    return sorted({latent_budget(r) for r in rows if which(r) and latent_budget(r) > 0})


# ----------------------------------------------------------------------------- the claims


@dataclass
class Claim:
    title: str
    direction: str
    """What the paper says of a - b: '>' (a better), '>=' (a matches or beats b)."""
    comparisons: list[Comparison]
    needs: str
    """The cells that would decide it, printed when there are no comparisons."""
    fixed_verdict: str | None = None
    """A verdict decided otherwise than by the comparisons (the overlap-vs-nulls claim)."""

    def verdict(self) -> str:
        if self.fixed_verdict is not None:
            return self.fixed_verdict
        sides = [c.side() for c in self.comparisons]
        decided = [s for s in sides if s is not None]
        if not self.comparisons:
            return f"cannot decide: no cells for it ({self.needs})"
        if -1 in decided:  # the CI on the other side of 0 from the claim
            return "contradicted" + (" in part" if 1 in decided else "")
        if 1 in decided:
            return "reproduced"
        if not decided:
            reasons = {"cells not above their shortcut ceiling" if c.not_learned else "one seed per comparison (no CI)"
                       for c in self.comparisons}
            return "cannot decide: " + "; ".join(sorted(reasons))
        return "consistent (no difference detected)" if self.direction == ">=" else "not reproduced (no difference detected)"


def accuracy_claims(rows: list[dict[str, Any]]) -> list[Claim]:
    claims = []
    # 1. Unified soft tokens match or beat the dual architecture at the same latent budget.
    comps = []
    for v in VARIANTS:
        for n in latent_counts(rows, dual(v)):
            comps += compare(rows, soft_tokens(n), dual(v, n))
    claims.append(Claim("Unified soft tokens match or beat the dual (Base + Coprocessor) model at the same N_L", ">=", comps,
                        "soft-token and coprocessor cells at the same N_L, regime and seeds"))
    # 2. H1 (K/V injection) beats Liu (latents as embeddings), both over a frozen Base.
    embedding_variant, kv_variant = FROZEN_BASE_VARIANTS  # (liu, h1): latents as input embeddings, as per-layer K/V
    comps = []
    for n in latent_counts(rows, dual(kv_variant)):
        comps += compare(rows, dual(kv_variant, n), dual(embedding_variant, n))
    claims.append(Claim("H1 > Liu (frozen Base: per-layer K/V beats latents as input embeddings)", ">", comps,
                        "coprocessor h1 and liu cells at the same N_L"))
    # 3. Joint fine-tuning (H2) beats the frozen-Base variants.
    comps = []
    for joint in JOINT_VARIANTS:
        for frozen in FROZEN_BASE_VARIANTS:
            for n in latent_counts(rows, dual(joint)):
                comps += compare(rows, dual(joint, n), dual(frozen, n))
    claims.append(Claim("H2 (Base and Coprocessor trained jointly) > the frozen-Base variants", ">", comps,
                        "coprocessor h2 beside liu or h1 cells at the same N_L"))
    # 4. Accuracy is flat beyond a small N_L: a larger budget is not better than the smallest one.
    comps = []
    for label in sorted({arm(r)[0] for r in rows}):
        counts = latent_counts(rows, is_arm(label))
        for n in counts[1:]:
            comps += compare(rows, is_arm(label, counts[0]), is_arm(label, n))
    claims.append(Claim("Accuracy is flat beyond a small N_L (the smallest N_L > 0 is not worse than larger ones)", ">=", comps,
                        "one method at two or more N_L > 0"))
    # 5. Accuracy falls as the branching factor grows (Countdown), for every method.
    comps = []
    by_task_arm: dict[tuple, set[int]] = {}
    for r in rows:
        if r.get("task.name") == "countdown":
            by_task_arm.setdefault(arm(r), set()).add(int(r["task.branching"]))
    for (label, n), branchings in sorted(by_task_arm.items()):
        ordered = sorted(branchings)
        for low, high in zip(ordered, ordered[1:]):
            comps += _across_branching(rows, label, n, low, high)
    claims.append(Claim("Accuracy falls as the Countdown branching factor grows (a = smaller b)", ">", comps,
                        "one method on Countdown at two branching factors"))
    return claims


def _across_branching(rows: list[dict[str, Any]], label: str, n: int, low: int, high: int) -> list[Comparison]:
    """Accuracy at branching `low` minus at `high`, per regime and per kind of cell (trained from scratch, or
    continued from a start), paired by seed and budget (the starts differ by task). A collapse to chance at the
    larger b is the finding here, so only the smaller b must have learned."""
    def at(b: int) -> Callable[[dict], bool]:
        return lambda r: r.get("task.name") == "countdown" and int(r["task.branching"]) == b and arm(r) == (label, n)

    def group(r: dict) -> tuple:
        return f"countdown b={low} vs b={high}" + (", continued" if _started_from_a_run(r) else ""), regime(r)
    return paired(rows, at(low), at(high), group=group, pair=_seed_and_budget,
                  names=lambda x, y: (f"{label} N_L={n} b={low}", f"b={high}"), only_a_must_learn=True)


def geometry_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per analysed run: cross-capture beside its three nulls, and whether it clears the two 'unrelated' nulls."""
    out = []
    for r in sorted(rows, key=lambda r: r["run"]):
        if r.get("cross_capture") is None:
            continue
        nulls = r.get("cross_capture_nulls") or {}

        def null(kind: str) -> str:
            n = nulls.get(kind) or {}
            if n.get("mean") is None:
                return ""
            return f"{n['mean']:.3f} [{n['lo']:.3f}, {n['hi']:.3f}]" if n.get("lo") is not None else f"{n['mean']:.3f}"

        highs = [(nulls.get(k) or {}).get("hi") for k in ("null_gauss", "null_subspace")]
        clears = all(h is not None and r["cross_capture"] > h for h in highs)
        out.append({"run": r["run"], "setting": setting(r), "regime": regime(r), "arm": arm_name(r),
                    "accuracy": r.get("accuracy"), "learned": "yes" if learned(r) else "no (at/below ceiling)",
                    "cross-capture": r["cross_capture"], "null_gauss": null("null_gauss"),
                    "null_subspace": null("null_subspace"), "null_perm": null("null_perm"),
                    "overlap beyond chance": "yes" if clears else "no"})
    return out


def geometry_claims(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Claim]]:
    """'Latent slots overlap' (every analysed run against its unrelated-slot nulls) and 'more so without the
    curriculum' (cross-capture answer-only minus curriculum, paired by seed)."""
    every_run = geometry_rows(rows)
    table = [g for g in every_run if g["learned"] == "yes"]  # geometry of a model that learned nothing is no finding
    beyond = sum(g["overlap beyond chance"] == "yes" for g in table)
    if not table:
        overlap = "cannot decide: no analysed cell above its shortcut ceiling (latentreason analyze RUN_DIR)"
    elif beyond == len(table):
        overlap = f"reproduced: all {len(table)} analysed runs above both unrelated-slot nulls"
    elif beyond == 0:
        overlap = f"not reproduced: none of {len(table)} analysed runs above both unrelated-slot nulls"
    else:
        overlap = f"in part: {beyond} of {len(table)} analysed runs above both unrelated-slot nulls"
    comps = _across_regimes([r for r in rows if r.get("cross_capture") is not None])
    return every_run, [
        Claim("Latent slots overlap (cross-capture above what unrelated slots give)", ">", [], "", fixed_verdict=overlap),
        Claim("Slots overlap more without the curriculum (cross-capture: answer-only - curriculum)", ">", comps,
              "analysed cells of one method in both regimes (latentreason analyze)"),
    ]


def _across_regimes(rows: list[dict[str, Any]]) -> list[Comparison]:
    """Cross-capture without the curriculum minus with it, per (setting, arm), paired by seed (the two regimes
    start from different runs, so they cannot share a start)."""
    return paired(rows, lambda r: regime(r) == "answer-only", lambda r: regime(r) == "curriculum",
                  group=lambda r: (setting(r), "answer-only vs curriculum", arm(r)), pair=_by_seed, key="cross_capture",
                  names=lambda x, y: (f"{arm_name(x)} answer-only", "curriculum"))


# ----------------------------------------------------------------------------- the document


def _claim_section(number: int, claim: Claim) -> list[str]:
    lines = [f"## {number}. {claim.title}", "", f"**Verdict: {claim.verdict()}**", ""]
    if claim.comparisons:
        table = [{"setting": c.setting, "regime": c.regime, "a": c.a, "b": c.b, "pairs": len(c.differences),
                  "a - b (mean, 95% CI)": c.text(), "decides": c.decides()} for c in claim.comparisons]
        lines += [markdown_table(table, list(table[0])), ""]
    return lines


def _control_row(sweep: str, g: dict[str, Any]) -> dict[str, Any]:
    half = g.get("gain_ci95_half")
    gain = "no control cell" if g["gain_mean"] is None else f"{g['gain_mean']:+.3f}" + (f" ± {half:.3f}" if half is not None else " (one seed)")
    return {"sweep": sweep, "setting": setting(g), "method": method_label(g), "N_L": latent_budget(g),
            "control": control_label(g) or f"missing: {g['wanted']}", "seeds paired": g["seeds"], "gain over control": gain,
            "last-quarter change: cell / control": late_change_text(g)}


def _controls_section(rows_by_sweep: dict[Path, list[dict[str, Any]]]) -> list[str]:
    # Per sweep, as its report pairs them: within one sweep a start that changes with the seed (seed s from the
    # seed-s No-CoT run) is a seed, but across sweeps train.init_from also tells regimes apart, so pooling
    # sweeps of different regimes would split every configuration into one-seed rows. Sweeps that are seed
    # replicates of one another (one config per task.seed, each from its own start) do pool: their rows pooled
    # pair more seeds than any one sweep, and only such pooled rows are added.
    table, most_seeds = [], {}
    for sweep_dir, rows in rows_by_sweep.items():
        for g in control_gains(rows):
            table.append(_control_row(sweep_dir.name, g))
            key = (setting(g), method_label(g), latent_budget(g))
            most_seeds[key] = max(most_seeds.get(key, 0), g["seeds"])
    if len(rows_by_sweep) > 1:
        pooled = control_gains([row for rows in rows_by_sweep.values() for row in rows])
        table += [_control_row("pooled over the sweeps", g) for g in pooled
                  if g["seeds"] > most_seeds.get((setting(g), method_label(g), latent_budget(g)), 0)]
    if not table:
        return []
    return ["## Every latent configuration against its matched no-latent control", "",
            "Same start, same extra steps, paired by seed within each sweep (results.control_gains, as in each sweep's",
            "report); 'pooled over the sweeps' rows pair the seeds of sweeps that replicate one configuration. A",
            "frozen-Base cell (liu, H1) is compared with the run its Base comes from, scored on the same eval",
            "examples. Last-quarter change: held-out accuracy at the last periodic evaluation minus at 75% of the steps",
            "(mean over the paired cells; 'start (not trained)' = the control is the start run): a cell still",
            "climbing beside a flat control had not converged, so its gap holds for this training budget only.", "",
            markdown_table(table, list(table[0])), ""]


def write_claims(sweep_dirs: list[str | Path], out: str | Path | None = None) -> str:
    """paper_claims.md for the cells of one or more sweeps and single runs (the first folder unless `out`)."""
    dirs = [Path(d) for d in sweep_dirs]
    rows_by_sweep = {d: claim_rows(d) for d in dirs}
    rows = [row for sweep_rows in rows_by_sweep.values() for row in sweep_rows]
    if not rows:
        raise SystemExit(f"claims: no finished cells with an eval.json under {', '.join(str(d / 'runs') for d in dirs)}")
    claims = accuracy_claims(rows)
    geometry, overlap_claims = geometry_claims(rows)
    ceilings: dict[str, list[float]] = {}
    for r in rows:
        if r.get("shortcut_ceiling") is not None:
            ceilings.setdefault(setting(r), []).append(r["shortcut_ceiling"])
    ceiling_text = ", ".join(f"{s} {min(c):.2f}" + (f"-{max(c):.2f}" if max(c) > min(c) else "") for s, c in sorted(ceilings.items()))
    lines = ["# The paper's claims on these cells (generated by `latentreason claims`)", "",
             f"Sweeps and runs: {', '.join(f'`{d}`' for d in dirs)}; {len(rows)} finished cells. A comparison decides only when its",
             "paired 95% CI (Student t over seeds) excludes 0; one seed decides nothing.",
             "Shortcut ceilings of the eval splits (no-reasoning heuristics): "
             + (ceiling_text or "not recorded") + ".", ""]
    for number, claim in enumerate(claims, 1):
        lines += _claim_section(number, claim)
    lines += _claim_section(len(claims) + 1, overlap_claims[0])
    if geometry:
        lines += ["Cross-capture of every analysed run beside its nulls (mean [95% prediction interval]); 'overlap beyond",
                  "chance' = above the upper end of both the Gaussian and the random-subspace null. null_perm is the fully",
                  "shared end (slots exchangeable). Runs not above their shortcut ceiling are listed but not counted.", "", markdown_table(geometry, list(geometry[0])), ""]
    lines += _claim_section(len(claims) + 2, overlap_claims[1])
    lines += _controls_section(rows_by_sweep)
    text = "\n".join(lines)
    target = Path(out) if out else dirs[0] / "paper_claims.md"
    target.write_text(text)
    return text
