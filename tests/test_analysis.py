"""Tests for latentreason.analysis on synthetic data with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from latentreason.analysis import (
    captured_variance,
    cross_capture,
    effective_rank,
    find_final_norm_and_head,
    linear_cka,
    logit_lens,
    mean_off_diagonal,
    plot_heatmap,
    plot_lines,
    plot_logit_lens,
    principal_angles,
    principal_angles_between_bases,
    principal_subspace,
    silhouette,
    slot_silhouette,
    summarize_latents,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def random_orthonormal(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """``[d, k]`` matrix with orthonormal columns."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q[:, :k]


# --------------------------------------------------------------------------- subspaces


def test_principal_subspace_recovers_low_rank_span(rng):
    basis = random_orthonormal(rng, 16, 3)
    X = rng.standard_normal((200, 3)) @ basis.T + 5.0  # offset must not matter
    U = principal_subspace(X, variance_threshold=0.999)
    assert U.shape == (16, 3)
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(principal_angles_between_bases(U, basis), 0.0, atol=1e-6)
    # A tiny threshold still yields at least one component.
    assert principal_subspace(X, variance_threshold=1e-6).shape == (16, 1)
    with pytest.raises(ValueError):
        principal_subspace(X, variance_threshold=0.0)


def test_captured_variance_extremes(rng):
    basis = random_orthonormal(rng, 10, 10)
    X = rng.standard_normal((100, 2)) @ basis[:, :2].T
    assert captured_variance(X, basis[:, :2]) == pytest.approx(1.0)
    assert captured_variance(X, basis[:, 2:]) == pytest.approx(0.0, abs=1e-12)
    # Non-orthonormal spanning vectors give the same answer.
    assert captured_variance(X, basis[:, :2] @ np.array([[2.0, 1.0], [0.0, 3.0]])) == pytest.approx(1.0)
    assert math.isnan(captured_variance(np.ones((5, 10)), basis[:, :2]))


def test_cross_capture_shared_subspace_is_one(rng):
    n, S, d, k = 200, 4, 32, 3
    shared = random_orthonormal(rng, d, k)
    # Each slot has its own coefficients but all vary in the same 3-dim subspace.
    Z = np.stack([rng.standard_normal((n, k)) @ shared.T for _ in range(S)], axis=1)
    Z += 1e-4 * rng.standard_normal(Z.shape)
    H = cross_capture(Z)
    assert H.shape == (S, S)
    assert mean_off_diagonal(H) == pytest.approx(1.0, abs=1e-3)

    # Literally identical slots: every entry equals the self-capture.
    Z_same = np.repeat(rng.standard_normal((n, 1, d)), S, axis=1)
    H_same = cross_capture(Z_same)
    np.testing.assert_allclose(H_same, H_same[0, 0], atol=1e-12)
    assert H_same[0, 0] >= 0.9


def test_cross_capture_orthogonal_slots_is_zero(rng):
    n, S, d, k = 200, 4, 32, 4
    q = random_orthonormal(rng, d, S * k)
    Z = np.stack([rng.standard_normal((n, k)) @ q[:, s * k:(s + 1) * k].T for s in range(S)], axis=1)
    H = cross_capture(Z)
    assert mean_off_diagonal(H) == pytest.approx(0.0, abs=1e-10)
    assert np.all(np.diag(H) >= 0.9)


def test_mean_off_diagonal():
    H = np.array([[1.0, 0.2, 0.4], [0.6, 1.0, 0.8], [0.0, 0.0, 1.0]])
    assert mean_off_diagonal(H) == pytest.approx(2.0 / 6)
    assert math.isnan(mean_off_diagonal(np.ones((1, 1))))
    with pytest.raises(ValueError):
        mean_off_diagonal(np.ones((2, 3)))


def test_principal_angles_identical_and_orthogonal(rng):
    q = random_orthonormal(rng, 20, 6)
    A = rng.standard_normal((300, 3)) @ q[:, :3].T
    B = rng.standard_normal((250, 3)) @ q[:, :3].T  # same span, different points
    C = rng.standard_normal((250, 3)) @ q[:, 3:].T
    np.testing.assert_allclose(principal_angles(A, B, 0.999), 0.0, atol=1e-6)
    np.testing.assert_allclose(principal_angles(A, C, 0.999), np.pi / 2, atol=1e-6)
    assert principal_angles(A, C, 0.999).shape == (3,)


# --------------------------------------------------------------------------- silhouette


def silhouette_reference(X: np.ndarray, labels: np.ndarray) -> float:
    """Direct per-point loop, the textbook definition (singletons score 0)."""
    D = np.linalg.norm(X[:, None] - X[None], axis=-1)
    scores = []
    for i in range(len(X)):
        own = labels == labels[i]
        if own.sum() == 1:
            scores.append(0.0)
            continue
        a = D[i, own].sum() / (own.sum() - 1)
        b = min(D[i, labels == c].mean() for c in np.unique(labels) if c != labels[i])
        scores.append((b - a) / max(a, b))
    return float(np.mean(scores))


def test_silhouette_separated_clusters_and_random_labels(rng):
    centres = 50.0 * np.eye(5)[:3]  # gaps ~70 vs within-cluster distances ~3
    labels = np.repeat(np.arange(3), 50)
    X = centres[labels] + rng.standard_normal((150, 5))
    assert silhouette(X, labels) > 0.9
    assert abs(silhouette(X, rng.permutation(labels))) < 0.05


def test_silhouette_matches_reference_with_singletons(rng):
    X = rng.standard_normal((40, 4))
    labels = np.array(["a"] * 20 + ["b"] * 18 + ["c", "d"])  # two singletons, string labels
    expected = silhouette_reference(X, labels)
    assert silhouette(X, labels) == pytest.approx(expected, abs=1e-12)
    # Chunking must not change the result.
    assert silhouette(X, labels, chunk_size=7) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        silhouette(X, np.zeros(40))  # one cluster


def test_silhouette_matches_sklearn(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    X = rng.standard_normal((60, 3))
    labels = rng.integers(0, 4, size=60)
    labels[0] = 9  # a singleton
    assert silhouette(X, labels) == pytest.approx(metrics.silhouette_score(X, labels), abs=1e-10)


def test_slot_silhouette(rng):
    n, S, d = 40, 3, 8
    offsets = 40.0 * np.eye(d)[:S]
    Z = rng.standard_normal((n, S, d)) + offsets[None]
    assert slot_silhouette(Z) > 0.8
    assert abs(slot_silhouette(rng.standard_normal((n, S, d)))) < 0.05


# --------------------------------------------------------------------------- CKA


def test_cka_invariances(rng):
    X = rng.standard_normal((500, 10))
    Q = random_orthonormal(rng, 10, 10)
    assert linear_cka(X, X) == pytest.approx(1.0)
    assert linear_cka(X, X @ Q) == pytest.approx(1.0)
    assert linear_cka(X, 3.7 * X) == pytest.approx(1.0)
    assert linear_cka(X, X @ Q + 2.0) == pytest.approx(1.0)  # centring removes offsets


def test_cka_not_invariant_to_anisotropic_maps(rng):
    X = rng.standard_normal((500, 10))
    A = np.diag(np.logspace(0, 2, 10)) @ random_orthonormal(rng, 10, 10)
    assert linear_cka(X, X @ A) < 0.9


def test_cka_independent_is_small_and_symmetric(rng):
    X = rng.standard_normal((2000, 8))
    Y = rng.standard_normal((2000, 12))
    assert linear_cka(X, Y) < 0.3  # expected ~ sqrt(8 * 12) / 2000
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X))


def test_cka_gram_and_feature_forms_agree(rng):
    # n^2 < (d1 + d2)^2 selects the Gram-matrix path; compare against a feature-space formula.
    X = rng.standard_normal((20, 30))
    Y = X @ rng.standard_normal((30, 25)) + rng.standard_normal((20, 25))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    expected = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    assert linear_cka(X, Y) == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------- effective rank


def test_effective_rank(rng):
    d = 16
    assert effective_rank(rng.standard_normal((4000, d))) > 0.8 * d
    rank_one = np.outer(rng.standard_normal(50), rng.standard_normal(d))
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(rank_one, center=False) == pytest.approx(1.0, abs=1e-6)
    # k equal singular values -> exactly k.
    assert effective_rank(np.eye(5)[:, :5], center=False) == pytest.approx(5.0)
    assert effective_rank(np.zeros((4, 3))) == 0.0


# --------------------------------------------------------------------------- summary


def test_summarize_latents(rng):
    n, S, d = 30, 3, 6
    Z = rng.standard_normal((n, S, d))
    summary = summarize_latents(torch.tensor(Z))  # torch input accepted too
    json.dumps(summary)  # must be JSON-serialisable
    assert summary["n_slots"] == S and summary["dim"] == d
    assert np.array(summary["cross_capture"]).shape == (S, S)
    assert len(summary["effective_rank_per_slot"]) == S
    assert summary["cross_capture_mean_off_diagonal"] == pytest.approx(
        mean_off_diagonal(cross_capture(Z))
    )
    one_slot = summarize_latents(Z[:, :1])
    assert one_slot["slot_silhouette"] is None
    assert one_slot["cross_capture_mean_off_diagonal"] is None
    with pytest.raises(ValueError):
        summarize_latents(Z[0])  # 2-D


# --------------------------------------------------------------------------- logit lens


class FakeTokenizer:
    def decode(self, token_ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in token_ids)


@pytest.fixture(scope="module")
def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def check_table(table, n_slots: int, top_k: int) -> None:
    assert len(table) == n_slots
    for row in table:
        assert len(row) == top_k
        probs = [p for _, p in row]
        assert all(0.0 < p <= 1.0 for p in probs)
        assert probs == sorted(probs, reverse=True)
        assert all(isinstance(tok, str) and tok.startswith("<") for tok, _ in row)


def test_logit_lens_gpt2(tiny_gpt2):
    norm, head = find_final_norm_and_head(tiny_gpt2)
    assert norm is tiny_gpt2.transformer.ln_f and head is tiny_gpt2.lm_head
    torch.manual_seed(0)
    latents = torch.randn(3, 32)
    table = logit_lens(latents, norm, head, FakeTokenizer(), top_k=5)
    check_table(table, n_slots=3, top_k=5)
    # The top entry of slot 0 is the argmax of the explicit computation.
    with torch.no_grad():
        probs = torch.softmax(head(norm(latents[0])), dim=-1)
    assert table[0][0][0] == f"<{int(probs.argmax())}>"
    assert table[0][0][1] == pytest.approx(float(probs.max()), rel=1e-5)

    batched = logit_lens(torch.randn(4, 3, 32), norm, head, FakeTokenizer(), top_k=4)
    check_table(batched, n_slots=3, top_k=4)
    check_table(logit_lens(latents, None, head, FakeTokenizer(), top_k=100), n_slots=3, top_k=50)


def test_find_final_norm_and_head_llama_and_errors():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=40, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config)
    norm, head = find_final_norm_and_head(model)
    assert norm is model.model.norm and head is model.lm_head
    with pytest.raises(ValueError, match="final norm"):
        find_final_norm_and_head(torch.nn.Linear(4, 4))


# --------------------------------------------------------------------------- plots


def assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_plots_write_png(tmp_path):
    H = np.array([[1.0, 0.5, None], [0.2, 1.0, 0.3], [0.1, 0.4, 1.0]], dtype=object)
    out = plot_heatmap(H, tmp_path / "a" / "heat.png", "cross-capture", "captured slot", "basis slot",
                       tick_labels=["s0", "s1", "s2"])
    assert_png(out)

    rows = [
        {"method": m, "n_latent": k, "accuracy": acc, "std": 0.02}
        for m, base in (("coconut", 0.5), ("cot", 0.6))
        for k, acc in zip((4, 1, 2), (base + 0.2, base, base + 0.1))  # unsorted x on purpose
    ]
    rows.append({"method": "cot", "n_latent": 8, "accuracy": None, "std": None})
    assert_png(plot_lines(rows, "n_latent", "accuracy", "method", tmp_path / "b" / "lines.png",
                          "accuracy vs N_L", yerr="std", logx=True))
    with pytest.raises(ValueError, match="flops"):
        plot_lines(rows, "flops", "accuracy", "method", tmp_path / "c.png", "t")

    table = [[(" the", 0.6), ("\n", 0.2)], [("cat", 0.9), ("dog", 0.05)], [("x", 0.3)]]
    assert_png(plot_logit_lens(table, tmp_path / "c" / "lens.png", "logit lens"))
