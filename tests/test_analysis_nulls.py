"""Null values of the latent-geometry metrics (analysis/nulls.py) on data with known answers, their place in
analysis.json and the report, and that analyses read the latents the Base reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from latentreason.analysis.nulls import latent_nulls, matched_gaussian_slots, null_interval, pair_nulls, permuted_slots
from latentreason.analysis.similarity import (
    cross_capture,
    effective_rank,
    mean_off_diagonal,
    principal_subspace,
    silhouette,
    silhouette_labelings,
    summarize_latents,
)


def orthonormal(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q


def inside(value: float, null: dict) -> bool:
    return null["lo"] <= value <= null["hi"]


def test_null_interval_is_a_student_t_prediction_interval():
    out = null_interval([1.0, 2.0, 3.0, float("nan")])  # the non-finite draw is dropped
    half = stats.t.ppf(0.975, 2) * 1.0 * math.sqrt(1 + 1 / 3)
    assert out["repeats"] == 3 and out["mean"] == pytest.approx(2.0) and out["sd"] == pytest.approx(1.0)
    assert (out["lo"], out["hi"]) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    assert null_interval([0.5]) == {"mean": 0.5, "sd": None, "lo": None, "hi": None, "repeats": 1}
    assert null_interval([])["mean"] is None


def test_matched_gaussian_keeps_each_slots_spectrum_and_randomises_its_directions():
    rng = np.random.default_rng(0)
    n, d = 60, 12
    basis = orthonormal(rng, d, 3)
    Z = np.stack([rng.standard_normal((n, 3)) * [5.0, 2.0, 1.0] @ basis.T for _ in range(2)], axis=1) + 7.0
    null = matched_gaussian_slots(Z, np.random.default_rng(1))
    assert null.shape == Z.shape
    for i in range(2):
        real_s = np.linalg.svd(Z[:, i] - Z[:, i].mean(0), compute_uv=False)
        null_s = np.linalg.svd(null[:, i] - null[:, i].mean(0), compute_uv=False)
        np.testing.assert_allclose(null_s, real_s, atol=1e-9)
        assert principal_subspace(null[:, i]).shape == principal_subspace(Z[:, i]).shape
    # The two null slots no longer share the real slots' one 3-dim subspace.
    assert mean_off_diagonal(cross_capture(Z)) > 0.95 > 0.6 > mean_off_diagonal(cross_capture(null))


def test_permuted_slots_shuffles_within_each_example():
    Z = np.arange(5 * 3 * 2, dtype=float).reshape(5, 3, 2)
    P = permuted_slots(Z, np.random.default_rng(0))
    for e in range(5):
        assert sorted(map(tuple, P[e])) == sorted(map(tuple, Z[e]))
    assert not np.array_equal(P, Z)


def test_latents_sharing_one_subspace_score_far_above_the_unrelated_nulls():
    rng = np.random.default_rng(0)
    n, S, d, k = 150, 4, 32, 3
    shared = orthonormal(rng, d, k)
    Z = np.stack([rng.standard_normal((n, k)) @ shared.T for _ in range(S)], axis=1) + 1e-3 * rng.standard_normal((n, S, d))
    H = mean_off_diagonal(cross_capture(Z))
    nulls = latent_nulls(Z, repeats=6, seed=0)["cross_capture_mean_off_diagonal"]
    assert H > 0.99
    assert H > nulls["null_gauss"]["hi"] + 0.5 and H > nulls["null_subspace"]["hi"] + 0.5
    # Exchangeable slots are the other end of the scale: a shared subspace is as high as that.
    assert nulls["null_perm"]["mean"] == pytest.approx(H, abs=0.01)


def test_pure_noise_scores_inside_the_null_intervals_at_their_nominal_rate():
    """Isotropic noise at a shape where chance overlap is high (the issue: 0.62 at n = 200, d = 128). For noise
    every null is the real metric's own distribution, so a 95% prediction interval holds the real value in
    about 95% of draws: checked over 12 seeds (a fixed one would only say "usually")."""
    checks = [("cross_capture_mean_off_diagonal", "null_gauss"), ("cross_capture_mean_off_diagonal", "null_subspace"),
              ("cross_capture_mean_off_diagonal", "null_perm"), ("slot_silhouette", "null_perm"), ("slot_silhouette", "null_gauss")]
    hits = dict.fromkeys(checks, 0)
    for seed in range(12):
        Z = np.random.default_rng(seed).standard_normal((80, 3, 32))
        summary = summarize_latents(Z)
        assert summary["cross_capture_mean_off_diagonal"] > 0.5  # high, and yet nothing but noise
        nulls = latent_nulls(Z, repeats=8, seed=seed)
        for metric, kind in checks:
            hits[(metric, kind)] += inside(summary[metric], nulls[metric][kind])
    assert all(count >= 9 for count in hits.values()), hits


def test_permutation_null_of_well_separated_slots_is_about_zero():
    rng = np.random.default_rng(0)
    n, S, d = 60, 3, 8
    Z = rng.standard_normal((n, S, d)) + 40.0 * np.eye(d)[:S][None]
    nulls = latent_nulls(Z, repeats=6, seed=0)["slot_silhouette"]
    real = summarize_latents(Z)["slot_silhouette"]
    assert real > 0.9
    assert abs(nulls["null_perm"]["mean"]) < 0.05 and nulls["null_perm"]["hi"] < 0.1
    assert abs(nulls["null_gauss"]["mean"]) < 0.05  # no slot offsets in the Gaussian null either


def test_effective_rank_null_counts_the_directions_of_unrelated_slots():
    rng = np.random.default_rng(0)
    shared = orthonormal(rng, 40, 2)
    Z = np.stack([rng.standard_normal((100, 2)) @ shared.T for _ in range(4)], axis=1)
    real = effective_rank(Z.reshape(-1, 40))
    null = latent_nulls(Z, repeats=4, seed=0)["effective_rank"]["null_gauss"]
    assert real == pytest.approx(2.0, abs=0.1)
    assert null["lo"] > 6.0  # 4 slots x 2 directions each, nearly orthogonal in 40 dims


def test_nulls_are_deterministic_by_seed():
    Z = np.random.default_rng(5).standard_normal((30, 3, 6))
    first, again, other = latent_nulls(Z, repeats=3, seed=7), latent_nulls(Z, repeats=3, seed=7), latent_nulls(Z, repeats=3, seed=8)
    assert json.dumps(first) == json.dumps(again)
    assert json.dumps(first) != json.dumps(other)
    assert set(first) == {"cross_capture_mean_off_diagonal", "slot_silhouette", "effective_rank", "cka_slots_mean_off_diagonal"}
    assert latent_nulls(Z[:, :1], repeats=3) == {}  # one slot: nothing to compare


def test_silhouette_labelings_scores_each_labeling_as_silhouette_does():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((45, 4))
    labelings = [np.repeat(np.arange(3), 15), rng.integers(0, 4, 45), np.array(["a"] * 40 + ["b"] * 4 + ["c"])]
    expected = [silhouette(X, labels) for labels in labelings]
    assert silhouette_labelings(X, labelings, chunk_size=7) == pytest.approx(expected, abs=1e-12)


def test_pair_nulls_base_and_coprocessor():
    rng = np.random.default_rng(0)
    d = 48
    basis = orthonormal(rng, d, 3)
    Z = rng.standard_normal((200, 3)) @ basis.T
    B = rng.standard_normal((200, 3)) @ basis.T  # the same span, other points
    nulls = pair_nulls(Z, B, Z, Z * 2.0, 0.99, repeats=5, seed=0)
    angle = nulls["principal_angle_mean_deg"]["null_subspace"]
    assert angle["mean"] > 60.0  # random 3-dim subspaces of R^48 are nearly orthogonal (the real one here is 0)
    assert nulls["cka"]["null_perm"]["hi"] < 0.3  # CKA of Z with itself (1.0) is far above rows shuffled


# ----------------------------------------------------------------------------- analysis.json and the report


def test_report_prints_nulls_beside_the_geometry_numbers(tmp_path: Path):
    from latentreason import report
    from latentreason.analysis import runs
    from latentreason.config import RunConfig, from_dict, save_config

    def null(mean: float) -> dict:
        return {"mean": mean, "sd": 0.01, "lo": mean - 0.02, "hi": mean + 0.02, "repeats": 8}

    for seed in (0, 1):
        out = tmp_path / "runs" / f"soft_{seed}"
        out.mkdir(parents=True)
        save_config(from_dict(RunConfig, {"out_dir": str(out), "task": {"name": "countdown", "branching": 3}, "train": {"seed": seed},
                                          "method": {"name": "soft_tokens", "n_latents": 4}}), out / "config.yaml")
        (out / "eval.json").write_text(json.dumps({"accuracy": 0.5, "accuracy_ci95": [0.4, 0.6], "n": 50}))
        (out / "done.json").write_text("{}")
        runs._write_analysis(out / "analysis", {
            "n_slots": 4, "cross_capture_mean_off_diagonal": 0.8, "slot_silhouette": 0.3, "effective_rank": 5.0,
            "nulls": {"cross_capture_mean_off_diagonal": {"null_gauss": null(0.41), "null_subspace": null(0.40), "null_perm": null(0.95)},
                      "slot_silhouette": {"null_gauss": null(0.0), "null_perm": null(-0.01)}}})
    text = Path(report.write_report(tmp_path)).read_text()
    assert "null_gauss" in text and "null_perm" in text
    assert "| countdown | soft_tokens | 4 | 2 | 0.500 | 0.800 | 0.410 | 0.400 | 0.950 | 0.300 |" in text  # means over seeds
    assert "0.410 [0.390, 0.430]" in text  # per run: null mean and 95% interval
    assert (tmp_path / "plots" / "cross_capture_vs_nl_countdown.png").exists()


def test_analyze_run_writes_the_nulls_beside_each_number(tmp_path: Path):
    from test_experiments import tiny_run

    from latentreason.analysis import runs
    from latentreason.errors import UserInputError

    run = tiny_run(tmp_path / "liu", {"name": "coprocessor", "n_latents": 2, "coprocessor": {"variant": "liu"}})
    result = runs.analyze_run(run, ["analysis.plots=false", "analysis.null_repeats=3", "analysis.null_seed=4"], progress=False)
    saved = json.loads((run / "analysis/analysis.json").read_text())
    assert saved["null_settings"]["repeats"] == 3 and saved["null_settings"]["seed"] == 4
    assert set(saved["nulls"]["cross_capture_mean_off_diagonal"]) == {"null_gauss", "null_subspace", "null_perm"}
    assert saved["nulls"]["cross_capture_mean_off_diagonal"]["null_gauss"]["repeats"] == 3
    assert set(saved["base_vs_coprocessor"]["nulls"]) == {"principal_angle_mean_deg", "cka"}
    assert saved["nulls"] == result["nulls"]
    for bad in ("analysis.null_repeats=-1", "analysis.null_repeats=2.5", "analysis.null_seed=x"):
        with pytest.raises(UserInputError, match="null_"):
            runs.analyze_run(run, [bad], progress=False)


# ----------------------------------------------------------------------------- the analysed latents


def tiny_coprocessor(variant: str):
    from latentreason.backbones import build_backbone
    from latentreason.config import CoprocessorConfig, MethodConfig, ModelConfig
    from latentreason.methods import build_method

    torch.manual_seed(0)
    corpus = ["Every wumpus is a yumpus. Is Alex a yumpus?", "12 + 3 = 15", "### True", "Alex is a wumpus."] * 4
    backbone = build_backbone(ModelConfig(backbone="llama-tiny", n_layer=2, n_embd=32, n_head=2), corpus=corpus)
    return build_method(MethodConfig(name="coprocessor", n_latents=3, coprocessor=CoprocessorConfig(variant=variant)), backbone)


def two_examples(method):
    from latentreason.tasks.base import Example
    from latentreason.tokenization import encode_examples

    return encode_examples(method.tokenizer, [Example("Every wumpus is a yumpus. Is Alex a yumpus?", [], "True"), Example("12 + 3 = ?", [], "15")])


@pytest.mark.parametrize("variant", ["liu", "h2"])
def test_analysed_latents_are_the_embeddings_the_base_reads(variant):
    """Embeddings injection: trace() must be, exactly, a block of inputs the Base receives while answering."""
    method = tiny_coprocessor(variant).eval()
    examples = two_examples(method)
    seen: list[torch.Tensor] = []
    hook = method.model.base_model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].detach().clone()),
                                                             with_kwargs=True)
    try:
        method.generate(examples, 3)
    finally:
        hook.remove()
    z = method.trace(examples)
    width = z.shape[1]
    windows = [call[:, start: start + width].float() for call in seen for start in range(call.shape[1] - width + 1)]
    assert any(torch.allclose(window, z, atol=1e-6) for window in windows), "trace() is not what the Base reads"


def perturb_unread_coprocessor_weights(method) -> int:
    """Add noise to every Coprocessor weight the loss never reaches (frozen as unreachable at construction,
    minus the token embeddings and LM head, which no latent passes through); returns how many."""
    touched = 0
    with torch.no_grad():
        for name, p in method.coprocessor.named_parameters():
            if not p.requires_grad and "embed" not in name and "lm_head" not in name:
                p.add_(torch.randn_like(p))
                touched += 1
    return touched


def test_kv_injection_analyses_depend_only_on_what_the_base_reads():
    method = tiny_coprocessor("h1").eval()
    examples = two_examples(method)
    before_trace, before_answer = method.trace(examples), method.generate(examples, 4).token_ids
    assert perturb_unread_coprocessor_weights(method) > 0
    assert method.generate(examples, 4).token_ids == before_answer  # the Base indeed never reads them
    torch.testing.assert_close(method.trace(examples), before_trace)


def test_a_constant_slot_leaves_the_cross_capture_summary_and_its_nulls_undefined_not_crashing():
    """Slots with no variance (the soft tokens themselves, read as the top-layer input of a one-layer
    Coprocessor with kv injection: the README's smoke sweep hit it) have no subspace: H is NaN, the summary is
    None, and the nulls drop the undefined draws instead of raising."""
    rng = np.random.default_rng(0)
    Z = np.repeat(rng.normal(size=(1, 4, 32)), 4, axis=0)  # every example's slot s is the same vector (the sweep's shape)
    summary = summarize_latents(Z)
    assert summary["cross_capture_mean_off_diagonal"] is None
    nulls = latent_nulls(Z, repeats=3)
    assert nulls["cross_capture_mean_off_diagonal"]["null_perm"]["repeats"] <= 3
    json.dumps(summary), json.dumps(nulls)  # JSON-ready: no NaN left
