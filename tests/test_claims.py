"""The paper's claims decided from sweep rows (claims.py): comparisons pair cells by seed and start within one
setting and regime, a verdict needs a 95% CI that excludes 0, and a claim without its cells says so."""

from __future__ import annotations

import statistics

import pytest

from latentreason.claims import accuracy_claims, compare, geometry_claims, is_arm, regime, write_claims
from latentreason.errors import UserInputError


def row(run: str, method: str, accuracy: float, seed: int, n_latents: int = 4, start: str = "cot", **keys) -> dict:
    return {"run": run, "method.name": method, "method.n_latents": n_latents, "train.seed": seed, "task.name": "countdown",
            "task.branching": keys.pop("branching", 3), "train.init_from": f"/starts/{start}_seed{seed}", "accuracy": accuracy,
            "accuracy_ci95": [0.0, 1.0], "method.curriculum.enabled": keys.pop("curriculum", True), **keys}


def dual(run: str, variant: str, accuracy: float, seed: int, **keys) -> dict:
    return row(run, "coprocessor", accuracy, seed, **{"method.coprocessor.variant": variant}, **keys)


def claim(claims: list, start: str):
    [found] = [c for c in claims if c.title.startswith(start)]
    return found


def test_h1_beats_liu_only_when_the_paired_ci_excludes_zero() -> None:
    h1, liu = [0.60, 0.62, 0.65], [0.50, 0.55, 0.52]
    rows = [dual(f"h1_{s}", "h1", h1[s], s) for s in range(3)] + [dual(f"liu_{s}", "liu", liu[s], s) for s in range(3)]
    found = claim(accuracy_claims(rows), "H1 > Liu")
    [comparison] = found.comparisons
    assert comparison.differences == pytest.approx([a - b for a, b in zip(h1, liu)])
    assert comparison.mean == pytest.approx(statistics.fmean(comparison.differences))
    assert found.verdict() == "reproduced"
    # The same means with one seed flipped: the CI now includes 0, which decides nothing.
    rows[2]["accuracy"] = 0.40
    assert claim(accuracy_claims(rows), "H1 > Liu").verdict() == "not reproduced (no difference detected)"


def test_soft_tokens_below_every_dual_variant_contradicts_the_claim() -> None:
    rows = [row(f"soft_{s}", "soft_tokens", 0.4 + 0.01 * s, s) for s in range(3)]
    rows += [dual(f"h2_{s}", "h2", 0.6 + 0.02 * s, s) for s in range(3)]
    assert claim(accuracy_claims(rows), "Unified soft tokens").verdict() == "contradicted"


def test_pairs_need_the_same_seed_start_and_regime() -> None:
    rows = [dual("h1_0", "h1", 0.7, 0), dual("h1_1", "h1", 0.7, 1, start="no_cot"),
            dual("liu_0", "liu", 0.5, 0), dual("liu_1", "liu", 0.5, 1), dual("liu_2", "liu", 0.1, 2),
            dual("liu_0_answer_only", "liu", 0.0, 0, curriculum=False)]
    [comparison] = compare(rows, is_arm("coprocessor-h1", 4), is_arm("coprocessor-liu", 4))
    assert comparison.regime == "curriculum" and comparison.differences == pytest.approx([0.2])  # seed 1: other start; 2: no h1
    assert claim(accuracy_claims(rows), "H1 > Liu").verdict() == "cannot decide: one seed per comparison (no CI)"


def test_a_claim_without_its_cells_names_what_it_needs() -> None:
    rows = [row(f"soft_{s}", "soft_tokens", 0.5, s) for s in range(2)]
    verdicts = {c.title.split(" ")[0]: c.verdict() for c in accuracy_claims(rows)}
    assert verdicts["H1"] == "cannot decide: no cells for it (coprocessor h1 and liu cells at the same N_L)"
    assert all(v.startswith("cannot decide") for v in verdicts.values())


def test_accuracy_falls_with_branching_pairs_seeds_across_tasks() -> None:
    rows = [row(f"cot_b3_{s}", "cot", 0.70 + 0.01 * s, s, n_latents=0, curriculum=False) for s in range(3)]
    rows += [row(f"cot_b4_{s}", "cot", 0.03 + 0.01 * s, s, n_latents=0, curriculum=False, branching=4) for s in range(3)]
    found = claim(accuracy_claims(rows), "Accuracy falls")
    assert found.verdict() == "reproduced" and found.comparisons[0].differences == pytest.approx([0.67] * 3)


def test_branching_pairs_starts_with_starts_and_continued_cells_with_continued_ones() -> None:
    """A CoT model trained from scratch and the same model continued 1,000 steps (the curriculum's control) are
    both "cot N_L=0" at one seed: each b's start pairs with the other b's start, each continued cell with the
    other continued cell, never a start with a continued cell."""
    rows = []
    for b, start, continued in ((3, 0.70, 0.73), (4, 0.16, 0.17)):
        for s in range(3):
            rows.append(row(f"b{b}_cot_seed{s}", "cot", start + 0.01 * s, s, n_latents=0, curriculum=False, branching=b,
                            **{"train.init_from": None, "train.max_steps": 4000}))
            rows.append(row(f"cot_b{b}_seed-{s}", "cot", continued + 0.01 * s, s, n_latents=0, curriculum=False, branching=b,
                            **{"train.max_steps": 1000}))
    comparisons = {c.setting: c for c in claim(accuracy_claims(rows), "Accuracy falls").comparisons}
    assert set(comparisons) == {"countdown b=3 vs b=4", "countdown b=3 vs b=4, continued"}
    assert comparisons["countdown b=3 vs b=4"].differences == pytest.approx([0.54] * 3)
    assert comparisons["countdown b=3 vs b=4, continued"].differences == pytest.approx([0.56] * 3)


def test_tagged_cells_that_differ_only_in_their_start_pair_with_cells_of_the_same_tag() -> None:
    """H2's N_L = 0 controls from the N_L = 4 and the N_L = 8 pretraining cells share seed, budget and the run
    pretraining started from; their tags tell them apart, so at each b both are kept (not refused as one arm's
    duplicates) and each pairs with the same-tagged cell at the other b."""
    rows = []
    for b, accuracy in ((3, 0.70), (4, 0.20)):
        for tag, shift in (("", 0.0), ("from-pretrain-nl8", 0.05)):
            for s in range(3):
                rows.append(dual(f"h2_b{b}_{tag}_{s}", "h2", accuracy + shift + 0.01 * s, s, n_latents=0, curriculum=False,
                                 branching=b, tag=tag, pretrained_from=f"/starts/no_cot_b{b}_seed{s}"))
    [comparison] = claim(accuracy_claims(rows), "Accuracy falls").comparisons
    assert comparison.differences == pytest.approx([0.50] * 6)
    rows[3]["tag"] = ""  # a second untagged cell of one arm at one seed and start: refused, as before
    with pytest.raises(UserInputError, match="are both coprocessor-h2 N_L=0"):
        accuracy_claims(rows)


def test_two_cells_of_one_arm_at_one_seed_and_start_are_refused() -> None:
    """Picking one of them (e.g. the first by run name) would let run names decide the verdict."""
    rows = [dual("h1_0", "h1", 0.7, 0), dual("h1_0_again", "h1", 0.5, 0, out_dir="sweep_b/runs/h1_0_again"),
            dual("liu_0", "liu", 0.5, 0)]
    with pytest.raises(UserInputError, match="h1_0 and sweep_b/runs/h1_0_again are both coprocessor-h1 N_L=4"):
        accuracy_claims(rows)


def test_a_cot_cell_is_labelled_cot_not_answer_only() -> None:
    """CoT continued (the curriculum's Coconut control) writes its steps: calling it answer-only mislabelled the
    branching comparison of CoT cells in paper_claims.md."""
    cot, no_cot = row("cot_0", "cot", 0.7, 0, n_latents=0, curriculum=False), row("nc_0", "no_cot", 0.7, 0, n_latents=0, curriculum=False)
    assert (regime(cot), regime(no_cot)) == ("CoT", "answer-only")
    rows = [cot, row("cot_b4_0", "cot", 0.2, 0, n_latents=0, curriculum=False, branching=4)]
    [comparison] = claim(accuracy_claims(rows), "Accuracy falls").comparisons
    assert comparison.regime == "CoT"


def test_overlap_is_judged_against_the_unrelated_slot_nulls() -> None:
    nulls = {"null_gauss": {"mean": 0.05, "lo": 0.04, "hi": 0.06}, "null_subspace": {"mean": 0.05, "lo": 0.04, "hi": 0.07},
             "null_perm": {"mean": 0.9, "lo": 0.89, "hi": 0.91}}
    rows = [row("soft_0", "soft_tokens", 0.5, 0, cross_capture=0.40, cross_capture_nulls=nulls),
            row("soft_1", "soft_tokens", 0.5, 1, cross_capture=0.065, cross_capture_nulls=nulls),  # inside the subspace null
            row("soft_0_ao", "soft_tokens", 0.5, 0, curriculum=False, cross_capture=0.6, cross_capture_nulls=nulls)]
    table, (overlap, more_without) = geometry_claims(rows)
    assert {g["run"]: g["overlap beyond chance"] for g in table} == {"soft_0": "yes", "soft_1": "no", "soft_0_ao": "yes"}
    assert overlap.verdict() == "in part: 2 of 3 analysed runs above both unrelated-slot nulls"
    [comparison] = more_without.comparisons
    assert comparison.differences == pytest.approx([0.2]) and regime(rows[2]) == "answer-only"


def test_an_empty_sweep_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit, match="no finished cells"):
        write_claims([tmp_path])


def test_a_cell_at_or_below_its_shortcut_ceiling_decides_nothing() -> None:
    """Three seeds with a clear paired gap, but liu scores at the shortcut ceiling: it learned nothing, so the
    comparison is shown and never counted; its geometry is listed and left out of the overlap verdict."""
    nulls = {"null_gauss": {"mean": 0.05, "lo": 0.04, "hi": 0.06}, "null_subspace": {"mean": 0.05, "lo": 0.04, "hi": 0.06}}
    rows = [dual(f"h1_{s}", "h1", 0.60 + 0.01 * s, s, shortcut_ceiling=0.25) for s in range(3)]
    rows += [dual(f"liu_{s}", "liu", 0.25, s, shortcut_ceiling=0.25, cross_capture=0.5, cross_capture_nulls=nulls) for s in range(3)]
    found = claim(accuracy_claims(rows), "H1 > Liu")
    [comparison] = found.comparisons
    assert comparison.not_learned == 3 and comparison.side() is None and comparison.decides().startswith("no: 3 cell(s)")
    assert found.verdict() == "cannot decide: cells not above their shortcut ceiling"
    table, (overlap, _) = geometry_claims(rows)
    assert len(table) == 3 and {g["learned"] for g in table} == {"no (at/below ceiling)"}
    assert overlap.verdict().startswith("cannot decide: no analysed cell above its shortcut ceiling")


def test_matched_controls_are_paired_over_seeds_within_each_sweep(tmp_path) -> None:
    """Two sweeps whose seed-s cells start from seed s's own run: inside a sweep the start is a seed, so each
    latent configuration pairs both seeds with its N_L = 0 control (pooling the sweeps would make every start a
    configuration and every row one seed)."""
    import json

    import yaml

    def cell(sweep: str, name: str, n_latents: int, seed: int, accuracy: float, start: str) -> None:
        folder = tmp_path / sweep / "runs" / name
        folder.mkdir(parents=True)
        config = {"method": {"name": "soft_tokens", "n_latents": n_latents}, "task": {"name": "countdown", "branching": 3, "seed": seed},
                  "train": {"seed": seed, "init_from": f"/starts/{start}_seed{seed}"}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "eval.json").write_text(json.dumps({"accuracy": accuracy, "accuracy_ci95": [0.0, 1.0]}))
        # The latent cell still climbs over its last quarter (step 750 -> 1,000), its control is flat.
        curve = [accuracy - 0.2, accuracy - 0.05, accuracy] if n_latents else [accuracy] * 3
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": 250 * (i + 2), "eval_accuracy": a}) + "\n" for i, a in enumerate(curve)))

    for sweep, start in (("answer_only", "no_cot"), ("curriculum", "cot")):
        for seed in (0, 1):
            cell(sweep, f"soft_nl4_seed{seed}", 4, seed, 0.60 + 0.02 * seed, start)
            cell(sweep, f"soft_nl0_seed{seed}", 0, seed, 0.50 + 0.02 * seed, start)
    text = write_claims([tmp_path / "answer_only", tmp_path / "curriculum"], out=tmp_path / "paper_claims.md")
    controls = text[text.index("## Every latent configuration"):]
    rows = [line for line in controls.splitlines() if line.startswith("| ") and "soft_tokens" in line]
    assert [line.split(" | ")[0] for line in rows] == ["| answer_only", "| curriculum"]
    assert all("| 2 | +0.100 ± 0.000 | +0.050 / +0.000 |" in line for line in rows)


def test_single_run_folders_join_the_claims(tmp_path) -> None:
    """Baselines trained outside any sweep (one folder per run) are read as rows: No-CoT at b = 3 and b = 4 over
    three seeds pair into the branching claim; a folder that is neither a sweep nor a finished run is refused."""
    import json

    import yaml

    runs = []
    for branching, accuracy in ((3, 0.66), (4, 0.20)):
        for seed in range(3):
            folder = tmp_path / f"b{branching}_no_cot_seed{seed}"
            folder.mkdir()
            config = {"method": {"name": "no_cot"}, "task": {"name": "countdown", "branching": branching, "seed": seed}, "train": {"seed": seed}}
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
            (folder / "eval.json").write_text(json.dumps({"accuracy": accuracy + 0.01 * seed, "accuracy_ci95": [0.0, 1.0], "shortcut_ceiling": 0.05}))
            runs.append(folder)
    text = write_claims(runs, out=tmp_path / "paper_claims.md")
    [line] = [line for line in text.splitlines() if "no_cot N_L=0 b=3" in line]
    assert "| answer-only |" in line and "| 3 | +0.460" in line and line.endswith("| a > b |")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="neither a sweep folder"):
        write_claims([tmp_path / "empty"])


def test_a_frozen_base_control_is_named_as_its_start_run(tmp_path) -> None:
    """H1 trains a Coprocessor beside a frozen Base, so its control is the run it starts from. A cell of the same
    method trained further may sit in the sweep too, so the claims table says which one the gain is against."""
    import json

    import yaml

    def cell(name: str, method: dict, accuracy: float, init_from: str | None = None) -> str:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        config = {"method": method, "task": {"name": "prosqa"}, "train": {"seed": 0, **({"init_from": init_from} if init_from else {})}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "eval.json").write_text(json.dumps({"accuracy": accuracy, "accuracy_ci95": [0.0, 1.0]}))
        return str(folder)

    start = cell("cot_start", {"name": "cot"}, 0.90)
    cell("h1_nl3", {"name": "coprocessor", "n_latents": 3, "coprocessor": {"variant": "h1"}}, 0.56, init_from=start)
    text = write_claims([tmp_path], out=tmp_path / "paper_claims.md")
    [line] = [line for line in text[text.index("## Every latent configuration"):].splitlines() if "| coprocessor-h1 |" in line]
    assert "| cot (its start run) |" in line and "-0.340" in line


def test_seed_replicate_sweeps_pool_their_controls(tmp_path) -> None:
    """Seeds run as separate sweeps (one config per task.seed, each from its own start) pool into one row with the
    seeds of all of them; each sweep alone pairs one seed."""
    import json

    import yaml

    def cell(sweep: str, name: str, method: dict, seed: int, accuracy: float) -> None:
        folder = tmp_path / sweep / "runs" / name
        folder.mkdir(parents=True)
        config = {"method": method, "task": {"name": "prosqa", "seed": seed},
                  "train": {"seed": seed, "init_from": f"/starts/cot_draw{seed}"}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "eval.json").write_text(json.dumps({"accuracy": accuracy, "accuracy_ci95": [0.0, 1.0]}))

    gaps = [-0.10, -0.12, -0.08]
    for seed, gap in enumerate(gaps):
        cell(f"seed{seed}", f"coconut_seed-{seed}", {"name": "coconut", "n_latents": 3}, seed, 0.90 + gap)
        cell(f"seed{seed}", f"cot_seed-{seed}", {"name": "cot"}, seed, 0.90)
    text = write_claims([tmp_path / f"seed{s}" for s in range(3)], out=tmp_path / "paper_claims.md")
    lines = [line for line in text[text.index("## Every latent configuration"):].splitlines() if "| coconut |" in line]
    assert [line.split(" | ")[0] for line in lines] == ["| seed0", "| seed1", "| seed2", "| pooled over the sweeps"]
    mean, half = statistics.fmean(gaps), 4.303 * statistics.stdev(gaps) / 3 ** 0.5
    assert f"| cot | 3 | {mean:+.3f} ± {half:.3f} |" in lines[-1]
    assert all("| cot | 1 |" in line for line in lines[:3])
