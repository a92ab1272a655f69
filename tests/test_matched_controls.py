"""Paired gains over the matched no-latent control (results.control_gains), on fake sweep rows: the gain is
the per-seed difference with the control cell from the same start for the same steps; a configuration without
a control in the sweep says so and is never compared with anything else."""

from __future__ import annotations

import statistics

import pytest

from latentreason.report import _control_gains_table
from latentreason.results import control_gains, mean_ci95


def row(run: str, method: str, accuracy: float, seed: int, init_from: str | None = None, **keys) -> dict:
    return {"run": run, "method.name": method, "method.n_latents": keys.pop("n_latents", 0), "train.seed": seed,
            "train.init_from": None if init_from is None else f"/sweep/runs/{init_from}", "train.epochs": keys.pop("epochs", 3),
            "train.lr": keys.pop("lr", 1e-3), "task.name": "prosqa", "accuracy": accuracy, "accuracy_ci95": [0.0, 1.0], **keys}


def run_writer(tmp_path):
    """write(name, config, summary_file, summary): a finished run folder under tmp_path/runs (Countdown b = 3, seed
    0, 500 eval problems, plus `config`), as `collect` reads it."""
    import json

    import yaml

    def write(name: str, config: dict, summary_file: str, summary: dict) -> None:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        task = {"name": "countdown", "branching": 3, "seed": 0, "eval_size": 500}
        (folder / "config.yaml").write_text(yaml.safe_dump({"task": task, "train": {"seed": 0}} | config))
        (folder / summary_file).write_text(json.dumps(summary))
    return write


def starts() -> list[dict]:
    return [row(f"{m}_s{s}", m, 0.5 + 0.01 * s, s, epochs=10) for m in ("no_cot", "cot") for s in range(3)]


def by(gains: list[dict], **keys) -> dict:
    [entry] = [g for g in gains if all(g.get(k) == v for k, v in keys.items())]
    return entry


def test_soft_tokens_gain_is_the_paired_difference_with_n_latents_zero() -> None:
    soft = [0.70, 0.64, 0.61]
    control = [0.60, 0.62, 0.66]
    rows = starts() + [row(f"soft4_s{s}", "soft_tokens", soft[s], s, f"no_cot_s{s}", n_latents=4) for s in range(3)]
    rows += [row(f"soft0_s{s}", "soft_tokens", control[s], s, f"no_cot_s{s}", n_latents=0) for s in range(3)]
    gains = control_gains(rows)
    assert {g["method.n_latents"] for g in gains} == {4}  # N_L = 0 and the baselines are controls, not latent cells
    entry = by(gains, **{"method.n_latents": 4})
    differences = [a - b for a, b in zip(soft, control)]
    mean, half = mean_ci95(differences)
    assert entry["control"] == "soft_tokens N_L=0" and entry["seeds"] == 3 and entry["unpaired"] == 0
    assert entry["gain_mean"] == pytest.approx(statistics.fmean(differences)) and entry["gain_ci95_half"] == pytest.approx(half)
    assert (entry["better"], entry["equal"], entry["worse"]) == (2, 0, 1)
    assert mean == pytest.approx(entry["gain_mean"])


def test_coconut_control_is_cot_continued_from_the_same_run_for_the_same_epochs() -> None:
    rows = starts()
    rows += [row(f"coconut_s{s}", "coconut", 0.8, s, f"cot_s{s}", n_latents=8, epochs=6,
                 **{"method.coconut.thoughts_per_step": 2}) for s in range(2)]
    rows += [row(f"cot_more_s{s}", "cot", 0.7 - 0.1 * s, s, f"cot_s{s}", epochs=6) for s in range(2)]
    rows += [row("cot_other_length_s0", "cot", 0.1, 0, "cot_s0", epochs=3)]      # fewer steps: not the control
    rows += [row("cot_other_start_s1", "cot", 0.1, 1, "no_cot_s1", epochs=6)]    # another start: not the control
    entry = by(control_gains(rows), **{"method.name": "coconut"})
    assert entry["control"] == "cot" and entry["seeds"] == 2
    assert entry["gain_mean"] == pytest.approx(statistics.fmean([0.8 - 0.7, 0.8 - 0.6]))


def test_a_cell_without_control_is_reported_as_such() -> None:
    rows = starts() + [row(f"soft8_s{s}", "soft_tokens", 0.9, s, f"no_cot_s{s}", n_latents=8) for s in range(3)]
    rows += [row("soft0_s0", "soft_tokens", 0.5, 0, "no_cot_s0", n_latents=0, lr=3e-3)]  # another lr: not a control
    rows += [row("looped_s0", "looped", 0.6, 0, "no_cot_s0", **{"method.looped.loops": 4})]
    gains = control_gains(rows)
    soft = by(gains, **{"method.name": "soft_tokens"})
    assert soft["control"] is None and soft["seeds"] == 0 and soft["unpaired"] == 3 and soft["gain_mean"] is None
    assert soft["wanted"] == "method.n_latents=0"
    assert by(gains, **{"method.name": "looped"})["wanted"] == "method.looped.loops=1"
    table = _control_gains_table(gains, set())
    assert table.count("no control in this sweep") == 2 and "method.n_latents=0" in table


def test_pairing_is_by_seed_and_a_missing_seed_is_counted_not_borrowed() -> None:
    rows = starts() + [row(f"soft4_s{s}", "soft_tokens", 0.7, s, f"no_cot_s{s}", n_latents=4) for s in range(3)]
    rows += [row(f"soft0_s{s}", "soft_tokens", 0.5 + 0.1 * s, s, f"no_cot_s{s}", n_latents=0) for s in range(2)]
    entry = by(control_gains(rows), **{"method.n_latents": 4})
    assert entry["seeds"] == 2 and entry["unpaired"] == 1
    assert entry["gain_mean"] == pytest.approx(statistics.fmean([0.7 - 0.5, 0.7 - 0.6]))


def test_looped_control_is_one_loop() -> None:
    rows = starts() + [row(f"looped{t}_s0", "looped", acc, 0, "no_cot_s0", **{"method.looped.loops": t})
                       for t, acc in ((1, 0.55), (4, 0.65))]
    entry = by(control_gains(rows), **{"method.name": "looped"})
    assert entry["control"] == "looped N_L=0" and entry["gain_mean"] == pytest.approx(0.10)


def test_a_frozen_base_coprocessor_is_compared_with_its_start_run() -> None:
    """liu / H1 at N_L = 0 would be the frozen Base, unchanged by training: the No-CoT run they start from is the
    control. h2 (the Base trains) keeps the N_L = 0 cell trained for the same steps."""
    rows = starts()
    rows += [row(f"h1_s{s}", "coprocessor", 0.6 + 0.05 * s, s, f"no_cot_s{s}", n_latents=4,
                 **{"method.coprocessor.variant": "h1"}) for s in range(3)]
    rows += [row(f"h2_s{s}", "coprocessor", 0.7, s, f"no_cot_s{s}", n_latents=4, **{"method.coprocessor.variant": "h2"})
             for s in range(2)]
    rows += [row(f"h2_0_s{s}", "coprocessor", 0.65, s, f"no_cot_s{s}", n_latents=0,
                 **{"method.coprocessor.variant": "h2"}) for s in range(2)]
    gains = control_gains(rows)
    h1 = by(gains, **{"method.coprocessor.variant": "h1"})
    assert h1["control"] == "no_cot" and h1["seeds"] == 3 and "start run" in h1["wanted"]
    assert h1["gain_mean"] == pytest.approx(statistics.fmean([0.6 - 0.5, 0.65 - 0.51, 0.7 - 0.52]))
    h2 = by(gains, **{"method.coprocessor.variant": "h2", "method.n_latents": 4})
    assert h2["control"].endswith("N_L=0") and h2["seeds"] == 2 and h2["gain_mean"] == pytest.approx(0.05)


def test_a_frozen_base_start_outside_the_sweep_is_read_from_its_folder(tmp_path) -> None:
    """A frozen-Base cell that starts from a committed run (not a cell) is compared with that run's own eval.json,
    but only when the start was scored on the same eval examples (same task seed, size and generator params)."""
    import json

    import yaml

    def start_run(name: str, accuracy: float, task_seed: int) -> str:
        folder = tmp_path / name
        folder.mkdir()
        config = {"method": {"name": "no_cot"}, "task": {"name": "prosqa", "seed": task_seed, "eval_size": 500, "params": {"n_nodes": 10}}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "eval.json").write_text(json.dumps({"accuracy": accuracy, "accuracy_ci95": [0.0, 1.0]}))
        return str(folder)

    def liu(run: str, start: str, task_seed: int = 0) -> dict:
        cell = row(run, "coprocessor", 0.62, 0, n_latents=4, **{"method.coprocessor.variant": "liu", "task.seed": task_seed,
                                                                "task.eval_size": 500, "task.params.n_nodes": 10})
        return dict(cell, **{"train.init_from": start})

    same = start_run("no_cot_same_split", 0.60, task_seed=0)
    other = start_run("no_cot_other_split", 0.10, task_seed=1)
    [entry] = control_gains([liu("liu_a", same)])
    assert entry["control"] == "no_cot" and entry["gain_mean"] == pytest.approx(0.02)
    [entry] = control_gains([liu("liu_b", other)])  # another eval split: not a control
    assert entry["control"] is None and entry["seeds"] == 0


def test_a_frozen_base_cell_after_pretraining_is_compared_with_the_base_pretraining_started_from(tmp_path) -> None:
    """liu / H1 fine-tuned from their own pretraining cells still read the Base that pretraining started from
    (frozen throughout): that run is their control, and the two variants pair on it in `claims`."""
    from latentreason.claims import compare, dual
    from latentreason.results import collect

    run = run_writer(tmp_path)

    base = str(tmp_path / "runs" / "no_cot")
    run("no_cot", {"method": {"name": "no_cot"}}, "eval.json", {"accuracy": 0.60, "accuracy_ci95": [0.5, 0.7]})
    for variant, accuracy in (("liu", 0.55), ("h1", 0.70)):
        method = {"name": "coprocessor", "n_latents": 4, "coprocessor": {"variant": variant}}
        run(f"pretrain_{variant}", {"method": method, "train": {"seed": 0, "init_from": base, "objective": "pretrain"}},
            "pretrain.json", {"steps": 10})
        run(f"{variant}_finetuned", {"method": method, "train": {"seed": 0, "init_from": str(tmp_path / "runs" / f"pretrain_{variant}")}},
            "eval.json", {"accuracy": accuracy, "accuracy_ci95": [0.5, 0.8]})
    rows = collect(tmp_path)
    assert {r["run"]: r.get("pretrained_from") for r in rows} == {"no_cot": None, "liu_finetuned": base, "h1_finetuned": base}
    gains = {g["method.coprocessor.variant"]: g for g in control_gains(rows)}
    assert gains["liu"]["control"] == "no_cot" and gains["liu"]["gain_mean"] == pytest.approx(-0.05)
    assert gains["h1"]["control"] == "no_cot" and gains["h1"]["gain_mean"] == pytest.approx(0.10)
    [comparison] = compare(rows, dual("h1"), dual("liu"))  # different pretraining cells, one Base: a pair
    assert comparison.regime == "pretrained" and comparison.differences == pytest.approx([0.15])


def test_h2_after_pretraining_is_compared_with_h2_at_n_l_0_from_its_own_pretraining_cell(tmp_path) -> None:
    """H2 trains its Base, so its control is H2 at N_L = 0 from the same pretraining cell. Two such controls (from
    the N_L = 4 and the N_L = 8 pretraining cells) differ only in their start and their tag; each H2 cell pairs
    with the control from its own pretraining cell, never with the other one."""
    from latentreason.results import collect

    run = run_writer(tmp_path)

    def h2(n_latents: int) -> dict:
        return {"name": "coprocessor", "n_latents": n_latents, "coprocessor": {"variant": "h2"}}

    base = str(tmp_path / "runs" / "no_cot")
    run("no_cot", {"method": {"name": "no_cot"}}, "eval.json", {"accuracy": 0.60, "accuracy_ci95": [0.5, 0.7]})
    for n, accuracy, control_accuracy in ((4, 0.70, 0.66), (8, 0.64, 0.67)):
        start = str(tmp_path / "runs" / f"pretrain_h2_nl{n}")
        run(f"pretrain_h2_nl{n}", {"method": h2(n), "train": {"seed": 0, "init_from": base, "objective": "pretrain"}},
            "pretrain.json", {"steps": 10})
        run(f"h2_nl{n}", {"method": h2(n), "train": {"seed": 0, "init_from": start}},
            "eval.json", {"accuracy": accuracy, "accuracy_ci95": [0.5, 0.8]})
        run(f"h2_nl0_from_nl{n}", {"method": h2(0), "tag": f"from-pretrain-nl{n}", "train": {"seed": 0, "init_from": start}},
            "eval.json", {"accuracy": control_accuracy, "accuracy_ci95": [0.5, 0.8]})
    gains = {g["method.n_latents"]: g for g in control_gains(collect(tmp_path))}
    assert gains[4]["seeds"] == 1 and gains[4]["gain_mean"] == pytest.approx(0.04)
    assert gains[8]["seeds"] == 1 and gains[8]["gain_mean"] == pytest.approx(-0.03)


def test_late_change_is_the_last_quarter_of_the_eval_curve_and_flags_a_cell_still_climbing() -> None:
    """A latent cell still rising at its last evaluation beside a flat control: the table says so (the gap is a
    statement about the budget), computed from each paired cell's own curve; a frozen-Base control (its start
    run, not trained further) has no late change."""
    from latentreason.results import late_change

    assert late_change([[250, 0.1], [500, 0.2], [750, 0.3], [1000, 0.45]]) == pytest.approx(0.15)  # 1,000 - 750
    assert late_change([[500, 0.2], [1000, 0.5], [1500, 0.6], [2000, 0.6]]) == pytest.approx(0.0)  # 2,000 - 1,500
    assert late_change([[1000, 0.5]]) is None and late_change([]) is None
    climbing = [[250, 0.1], [500, 0.3], [750, 0.4], [1000, 0.5]]
    flat = [[250, 0.6], [500, 0.6], [750, 0.62], [1000, 0.62]]
    rows = starts() + [row(f"soft4_s{s}", "soft_tokens", 0.5, s, f"no_cot_s{s}", n_latents=4, eval_curve=climbing) for s in range(2)]
    rows += [row(f"soft0_s{s}", "soft_tokens", 0.62, s, f"no_cot_s{s}", n_latents=0, eval_curve=flat) for s in range(2)]
    rows += [row("h1_s0", "coprocessor", 0.55, 0, "no_cot_s0", n_latents=4, eval_curve=climbing, **{"method.coprocessor.variant": "h1"})]
    gains = control_gains(rows)
    soft = by(gains, **{"method.name": "soft_tokens"})
    assert soft["late_change"] == pytest.approx(0.1) and soft["control_late_change"] == pytest.approx(0.0)
    assert [pair["seed"] for pair in soft["curves"]] == [0, 1] and soft["curves"][0]["control"] == flat
    h1 = by(gains, **{"method.name": "coprocessor"})
    assert h1["late_change"] == pytest.approx(0.1) and h1["control_late_change"] is None and h1["curves"][0]["control"] == []
    table = _control_gains_table(gains, set())
    assert "+0.100 / +0.000" in table and "+0.100 / start (not trained)" in table
    assert "| no_cot (its start run) |" in table and "| soft_tokens N_L=0 |" in table


def test_eval_curve_skips_a_row_still_being_written_but_names_a_damaged_line(tmp_path) -> None:
    """A report read while a cell trains can meet a half-written last row of metrics.jsonl: it is skipped. A bad
    row before the last one is damage, and the error names the file and line."""
    from latentreason.results import eval_curve

    rows = ['{"step": 250, "eval_accuracy": 0.2}', '{"step": 500, "loss": 0.1}', '{"step": 500, "eval_accuracy": 0.3}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 750, "eval_acc')
    assert eval_curve(tmp_path) == [[250, 0.2], [500, 0.3]]
    (tmp_path / "metrics.jsonl").write_text(rows[0] + "\n{not json\n" + rows[2] + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON row"):
        eval_curve(tmp_path)


def test_curriculum_cells_of_any_thoughts_per_step_share_the_n_latents_zero_control() -> None:
    """Soft tokens / H2 with the curriculum at N_L = 8 (4 slots per step) and 16 (8 per step) pair with the same
    N_L = 0 curriculum cell, whatever thoughts_per_step that cell was launched with (at N_L = 0 it replaces no step);
    a cell with another epochs_per_stage is still not a control."""
    curriculum = {"method.curriculum.enabled": True}
    rows = starts()
    for variant_keys in ({}, {"method.coprocessor.variant": "h2"}):
        method = "coprocessor" if variant_keys else "soft_tokens"
        for n_latents, c, acc in ((4, 2, 0.60), (8, 4, 0.62), (16, 8, 0.64)):
            rows += [row(f"{method}{n_latents}_s{s}", method, acc, s, f"cot_s{s}", n_latents=n_latents, **variant_keys,
                         **curriculum, **{"method.curriculum.thoughts_per_step": c}) for s in range(2)]
        rows += [row(f"{method}0_s{s}", method, 0.58, s, f"cot_s{s}", n_latents=0, **variant_keys, **curriculum,
                     **{"method.curriculum.thoughts_per_step": 2}) for s in range(2)]
        rows += [row(f"{method}0_eps2_s0", method, 0.1, 0, "cot_s0", n_latents=0, **variant_keys, **curriculum,
                     **{"method.curriculum.thoughts_per_step": 4, "method.curriculum.epochs_per_stage": 2})]
    gains = control_gains(rows)
    for method in ("soft_tokens", "coprocessor"):
        for n_latents, acc in ((4, 0.60), (8, 0.62), (16, 0.64)):
            entry = by(gains, **{"method.name": method, "method.n_latents": n_latents})
            assert entry["seeds"] == 2 and entry["control"].endswith("N_L=0")
            assert entry["gain_mean"] == pytest.approx(acc - 0.58)


def test_a_start_written_relative_to_the_training_directory_is_found_from_any_directory(tmp_path, monkeypatch) -> None:
    """Configs record train.init_from relative to where training ran (e.g. results/recipe/no_cot_seed0): a report
    made from another directory (inside results/) must still find that start, not call the control missing."""
    import json

    import yaml

    from latentreason.results import collect

    def write_run(folder, config: dict, accuracy: float) -> None:
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "eval.json").write_text(json.dumps({"accuracy": accuracy, "accuracy_ci95": [0.0, 1.0]}))

    task = {"name": "prosqa", "seed": 0, "eval_size": 500}
    write_run(tmp_path / "results/recipe/no_cot_seed0", {"method": {"name": "no_cot"}, "task": task}, 0.60)
    cell = "coprocessor_variant-liu_seed-0"
    write_run(tmp_path / "results/sweep/runs" / cell, {
        "out_dir": f"results/sweep/runs/{cell}", "task": task, "train": {"seed": 0, "init_from": "results/recipe/no_cot_seed0"},
        "method": {"name": "coprocessor", "n_latents": 4, "coprocessor": {"variant": "liu"}}}, 0.62)
    for here, sweep in ((tmp_path, "results/sweep"), (tmp_path / "results", "sweep"), (tmp_path / "results/recipe", "../sweep")):
        monkeypatch.chdir(here)
        [entry] = control_gains(collect(sweep))
        assert entry["control"] == "no_cot" and entry["gain_mean"] == pytest.approx(0.02), here


def test_a_paced_curriculum_control_is_preferred_where_the_sweep_has_one() -> None:
    """A curriculum cell at N_L = 4, c = 2 is compared with the N_L = 0 control paced over its 2 stages when that
    cell exists (it trains answer-only as long as the cell), else with the plain N_L = 0 curriculum control; a run
    written before control_stages existed (no key) counts as the plain control, and one written before another key
    existed (task.stream_start) matches newer runs that write its default."""
    curriculum = {"method.curriculum.enabled": True, "method.curriculum.thoughts_per_step": 2}
    rows = starts() + [row(f"soft4_s{s}", "soft_tokens", 0.60, s, f"cot_s{s}", n_latents=4, **curriculum) for s in range(2)]
    rows += [row(f"soft0_s{s}", "soft_tokens", 0.50, s, f"cot_s{s}", n_latents=0, **{"method.curriculum.enabled": True})
             for s in range(2)]  # no control_stages key: an older run
    plain = by(control_gains(rows), **{"method.n_latents": 4})
    assert plain["control"] == "soft_tokens+curriculum N_L=0" and plain["gain_mean"] == pytest.approx(0.10)
    rows += [row(f"paced_s{s}", "soft_tokens", 0.55, s, f"cot_s{s}", n_latents=0,  # newer runs also write task.stream_start
                 **{"method.curriculum.enabled": True, "method.curriculum.control_stages": 2, "task.stream_start": 0}) for s in range(2)]
    gains = control_gains(rows)
    paced = by(gains, **{"method.n_latents": 4})
    assert paced["control"] == "soft_tokens+curriculum(paced 2) N_L=0" and paced["seeds"] == 2
    assert paced["gain_mean"] == pytest.approx(0.05)


def test_a_configuration_never_mixes_paced_and_plain_controls() -> None:
    """With a paced control for seed 0 only, seed 0 pairs with it and seed 1 stays unpaired (not paired with the
    plain control, which would average two kinds of control into one gain)."""
    curriculum = {"method.curriculum.enabled": True, "method.curriculum.thoughts_per_step": 2}
    rows = starts() + [row(f"soft4_s{s}", "soft_tokens", 0.60, s, f"cot_s{s}", n_latents=4, **curriculum) for s in range(2)]
    rows += [row(f"soft0_s{s}", "soft_tokens", 0.50, s, f"cot_s{s}", n_latents=0, **curriculum) for s in range(2)]
    rows += [row("paced_s0", "soft_tokens", 0.55, 0, "cot_s0", n_latents=0,
                 **{"method.curriculum.enabled": True, "method.curriculum.control_stages": 2})]
    entry = by(control_gains(rows), **{"method.n_latents": 4})
    assert entry["control"].startswith("soft_tokens+curriculum(paced 2)")
    assert entry["seeds"] == 1 and entry["unpaired"] == 1 and entry["gain_mean"] == pytest.approx(0.05)
