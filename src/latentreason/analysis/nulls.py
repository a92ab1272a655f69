"""Null values for the latent-geometry metrics, computed at the data's own n, d and rank.

A geometry number means nothing alone: isotropic Gaussian noise at n = 200, d = 128 already gives a mean
off-diagonal cross-capture of about 0.6, because a 90%-variance subspace of such data spans most of the
space. So every reported metric gets null values computed on data of the same shape, each a seeded set
of `repeats` draws summarised by their mean and a 95% prediction interval (where one more null draw would
fall; a real value outside it is unlikely under that null):

* ``null_gauss`` (matched covariance): each slot replaced by Gaussian latents with exactly that slot's
  sample covariance eigenvalues (hence its rank at the variance threshold and its effective rank) and
  uniformly random eigenvectors, drawn independently per slot (`matched_gaussian_slots`). What the metric
  gives when slots spread as much as the data but share no directions beyond chance. (The exact covariance of each slot would reproduce the data's subspaces and be
  no null; the pooled covariance would make the slots identical, which is what ``null_perm`` measures.)
* ``null_subspace`` (random subspaces of the same rank): cross-capture with each slot's principal
  subspace replaced by a uniformly random subspace of the same rank, applied to the real latents of the
  other slots (expected value rank / d).
* ``null_perm`` (slot-label permutation): each example's latents shuffled among its slots, metric
  recomputed. For the silhouette this is the null (slots indistinguishable: about 0). For cross-capture
  it is the other end of the scale: what H is when the slots are exchangeable, i.e. fully share one
  distribution. A real H between ``null_gauss`` and ``null_perm`` says where the slots sit between
  "unrelated" and "one shared subspace". For CKA between slots (or between Base and Coprocessor), the
  permutation shuffles which example a row belongs to (the usual CKA null).

Everything is deterministic given `seed`: each (metric, null) pair draws from its own stream.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from scipy import stats

from latentreason.analysis.similarity import (
    _check_latents,
    captured_variance,
    cross_capture,
    cross_capture_mean,
    effective_rank,
    linear_cka,
    principal_angles_between_bases,
    principal_subspace,
    silhouette_labelings,
)

__all__ = [
    "NULL_KINDS",
    "latent_nulls",
    "matched_gaussian_slots",
    "null_interval",
    "permuted_slots",
    "random_basis",
    "random_subspace_cross_capture",
    "pair_nulls",
]

NULL_KINDS = ("null_gauss", "null_subspace", "null_perm")
"""Column names of the nulls, in the order reports show them."""

# One stream per (metric, null) so adding a metric never changes another's null values.
_STREAMS = {"cross_gauss": 1, "cross_subspace": 2, "cross_perm": 3, "sil_gauss": 4, "sil_perm": 5,
            "rank_gauss": 6, "cka_perm": 7, "angle_subspace": 8, "pair_cka_perm": 9}


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAMS[stream]])


def null_interval(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation and 95% prediction interval (Student t, `mean +- t * sd * sqrt(1 + 1/k)`)
    of `k` null draws; non-finite draws are dropped. lo/hi are None with fewer than 2 finite draws."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    k = len(finite)
    if k == 0:
        return {"mean": None, "sd": None, "lo": None, "hi": None, "repeats": 0}
    mean = float(np.mean(finite))
    if k < 2:
        return {"mean": mean, "sd": None, "lo": None, "hi": None, "repeats": 1}
    sd = float(np.std(finite, ddof=1))
    half = float(stats.t.ppf(0.975, k - 1)) * sd * math.sqrt(1 + 1 / k)
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "repeats": k}


def random_basis(d: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal ``[d, rank]`` basis of a uniformly random (Haar) subspace."""
    q, _ = np.linalg.qr(rng.standard_normal((d, rank)))
    return q


def matched_gaussian_slots(Z: Any, rng: np.random.Generator) -> np.ndarray:
    """``[n, S, d]`` null latents with each slot's covariance spectrum and random, independent directions.

    Slot i becomes ``U diag(s_i) Q^T``: ``s_i`` its centred singular values (so the same sample covariance
    eigenvalues, the same rank at any variance threshold, the same effective rank), ``Q`` a uniformly random
    ``[d, k]`` orthonormal basis and ``U`` a uniformly random ``[n, k]`` orthonormal basis orthogonal to the
    all-ones vector (centred rows), plus a random mean offset of the size finite-sample means have
    (N(0, covariance / n)). For Gaussian data this is a Gaussian sample conditioned on its spectrum.
    Drawing fresh Gaussian rows from the sample covariance instead would spread that spectrum a second time
    (the sample covariance is already spread by finite n), lower the rank and bias the null low: pure noise
    would then look "above the null".
    """
    Z = _check_latents(Z)
    n, n_slots, d = Z.shape
    out = np.empty_like(Z)
    k = min(n - 1, d)  # a centred [n, d] matrix has at most n - 1 non-zero singular values
    for i in range(n_slots):
        s = np.linalg.svd(Z[:, i] - Z[:, i].mean(axis=0, keepdims=True), compute_uv=False)[:k]
        rows = rng.standard_normal((n, k))
        rows, _ = np.linalg.qr(rows - rows.mean(axis=0, keepdims=True))
        # The mean of n fresh samples differs from the population mean by N(0, covariance / n): without it
        # the null slots would share one exact centre and the silhouette null would sit below pure noise.
        mean = rng.standard_normal(k) * s / math.sqrt(max(n - 1, 1) * n)
        out[:, i] = (rows * s + mean) @ random_basis(d, k, rng).T
    return out


def permuted_slots(Z: Any, rng: np.random.Generator) -> np.ndarray:
    """``Z`` with each example's latents shuffled among its slots (each slot keeps n latents)."""
    Z = _check_latents(Z)
    order = np.argsort(rng.random(Z.shape[:2]), axis=1)
    return np.take_along_axis(Z, order[:, :, None], axis=1)


def _slot_labelings(n: int, n_slots: int, rng: np.random.Generator, repeats: int) -> list[np.ndarray]:
    """Slot labels of the flattened ``[n * S]`` latents: the true ones, then `repeats` within-example shuffles."""
    true = np.tile(np.arange(n_slots), n)
    shuffles = [np.argsort(rng.random((n, n_slots)), axis=1).reshape(-1) for _ in range(repeats)]
    return [true, *shuffles]


def random_subspace_cross_capture(Z: Any, variance_threshold: float, rng: np.random.Generator) -> np.ndarray:
    """Cross-capture with slot i's principal subspace replaced by a random subspace of the same rank."""
    Z = _check_latents(Z)
    _, n_slots, d = Z.shape
    ranks = [principal_subspace(Z[:, i], variance_threshold).shape[1] for i in range(n_slots)]
    H = np.empty((n_slots, n_slots))
    for i, rank in enumerate(ranks):
        basis = random_basis(d, rank, rng)
        for j in range(n_slots):
            H[i, j] = captured_variance(Z[:, j], basis)
    return H


def _repeat(repeats: int, draw: Callable[[], float]) -> dict[str, Any]:
    return null_interval([draw() for _ in range(repeats)])


def _cka_off_diagonal(Z: np.ndarray) -> float:
    n_slots = Z.shape[1]
    values = [linear_cka(Z[:, i], Z[:, j]) for i in range(n_slots) for j in range(n_slots) if i != j]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def latent_nulls(Z: Any, variance_threshold: float = 0.9, repeats: int = 8, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Nulls of the slot metrics of ``Z [n, S, d]`` (keys as in `summarize_latents` / analysis.json):

        cross_capture_mean_off_diagonal: null_gauss, null_subspace, null_perm
        slot_silhouette:                 null_gauss, null_perm
        effective_rank (pooled):         null_gauss (slots sharing no directions: the pooled rank if
                                         each slot used its own)
        cka_slots_mean_off_diagonal:     null_perm (rows of each slot shuffled across examples)

    Each value is `null_interval` of `repeats` draws. With one slot there is nothing to compare: ``{}``.
    """
    Z = _check_latents(Z)
    n, n_slots, d = Z.shape
    if n_slots < 2 or n < 2 or repeats < 1:
        return {}
    out: dict[str, dict[str, Any]] = {}

    gauss_rng = _rng(seed, "cross_gauss")
    subspace_rng = _rng(seed, "cross_subspace")
    perm_rng = _rng(seed, "cross_perm")
    out["cross_capture_mean_off_diagonal"] = {
        "null_gauss": _repeat(repeats, lambda: cross_capture_mean(cross_capture(matched_gaussian_slots(Z, gauss_rng), variance_threshold))),
        "null_subspace": _repeat(repeats, lambda: cross_capture_mean(random_subspace_cross_capture(Z, variance_threshold, subspace_rng))),
        "null_perm": _repeat(repeats, lambda: cross_capture_mean(cross_capture(permuted_slots(Z, perm_rng), variance_threshold))),
    }

    # Silhouette: the distances between latents do not change under a label shuffle, so every permutation
    # is scored in the same pass over the distance matrix.
    flat = Z.reshape(n * n_slots, d)
    labelings = _slot_labelings(n, n_slots, _rng(seed, "sil_perm"), repeats)
    perm_scores = silhouette_labelings(flat, labelings[1:])
    sil_gauss_rng = _rng(seed, "sil_gauss")
    true_labels = labelings[0]
    out["slot_silhouette"] = {
        "null_gauss": _repeat(repeats, lambda: silhouette_labelings(matched_gaussian_slots(Z, sil_gauss_rng).reshape(n * n_slots, d), [true_labels])[0]),
        "null_perm": null_interval(perm_scores),
    }

    rank_rng = _rng(seed, "rank_gauss")
    out["effective_rank"] = {"null_gauss": _repeat(repeats, lambda: effective_rank(matched_gaussian_slots(Z, rank_rng).reshape(n * n_slots, d)))}

    cka_rng = _rng(seed, "cka_perm")

    def shuffled_rows() -> float:
        return _cka_off_diagonal(np.stack([Z[cka_rng.permutation(n), i] for i in range(n_slots)], axis=1))

    out["cka_slots_mean_off_diagonal"] = {"null_perm": _repeat(repeats, shuffled_rows)}
    return out


def pair_nulls(Z_flat: np.ndarray, B_flat: np.ndarray, Z_rows: np.ndarray, B_rows: np.ndarray, variance_threshold: float = 0.9,
               repeats: int = 8, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Nulls of the Base-vs-Coprocessor comparison (analysis.json's ``base_vs_coprocessor``):

        principal_angle_mean_deg: null_subspace, the mean principal angle (degrees) between uniformly random
                                  subspaces with the ranks of the two real principal subspaces;
        cka:                      null_perm, CKA of ``Z_rows [n, *]`` against ``B_rows [n, *]`` with B's
                                  rows shuffled across examples.

    ``Z_flat`` / ``B_flat`` are the point sets whose principal angles are reported (latents pooled over slots).
    """
    d = Z_flat.shape[1]
    p = principal_subspace(Z_flat, variance_threshold).shape[1]
    q = principal_subspace(B_flat, variance_threshold).shape[1]
    angle_rng = _rng(seed, "angle_subspace")
    cka_rng = _rng(seed, "pair_cka_perm")

    def angle() -> float:
        return float(np.degrees(principal_angles_between_bases(random_basis(d, p, angle_rng), random_basis(d, q, angle_rng))).mean())

    n = Z_rows.shape[0]
    return {
        "principal_angle_mean_deg": {"null_subspace": _repeat(repeats, angle)},
        "cka": {"null_perm": _repeat(repeats, lambda: linear_cka(Z_rows, B_rows[cka_rng.permutation(n)]))},
    }
