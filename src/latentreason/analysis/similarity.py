"""Geometry metrics for latent vectors produced by latent-reasoning methods.

Latents come as an array ``Z`` of shape ``[n_examples, n_slots, d]``: one vector per
latent "slot" (reasoning step) per example. The questions these metrics answer:

* Do different slots live in the same subspace, or does each step use its own
  directions? (:func:`cross_capture`, :func:`principal_angles`)
* Are slots distinguishable as clusters? (:func:`silhouette`, :func:`slot_silhouette`)
* Do two sets of representations encode the same similarity structure?
  (:func:`linear_cka`)
* How many directions do the latents really use? (:func:`effective_rank`)

Everything here is plain numpy/scipy. Inputs may also be torch tensors or nested
lists; they are converted to float64 numpy arrays, because the SVDs and ratios
below are sensitive to the rounding of float16/bfloat16 model outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import orth, subspace_angles
from scipy.spatial.distance import cdist

__all__ = [
    "principal_subspace",
    "captured_variance",
    "cross_capture",
    "mean_off_diagonal",
    "cross_capture_mean",
    "silhouette",
    "silhouette_labelings",
    "slot_silhouette",
    "principal_angles",
    "principal_angles_between_bases",
    "linear_cka",
    "effective_rank",
    "summarize_latents",
]


def _as_array(x: Any, ndim: int, name: str) -> np.ndarray:
    """Convert ``x`` (numpy array, torch tensor or nested list) to float64 with ``ndim`` dims."""
    if hasattr(x, "detach"):  # torch tensor; avoids importing torch just for isinstance
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _centre(X: np.ndarray) -> np.ndarray:
    # Every metric here is about how points spread around their mean; a shared offset
    # (e.g. a large common bias direction in hidden states) would otherwise dominate.
    return X - X.mean(axis=0, keepdims=True)


def _check_threshold(variance_threshold: float) -> None:
    if not 0.0 < variance_threshold <= 1.0:
        raise ValueError(f"variance_threshold must be in (0, 1], got {variance_threshold}")


def principal_subspace(X: np.ndarray, variance_threshold: float = 0.9) -> np.ndarray:
    """Orthonormal basis ``[d, r]`` of the top principal components of centred ``X``.

    ``r`` is the smallest number of components whose explained variance reaches
    ``variance_threshold`` of the total (at least 1). This is "the subspace where X
    lives", ignoring low-variance noise directions.

    Args:
        X: data ``[n, d]``, one row per point.
        variance_threshold: share of total variance the subspace must capture, in (0, 1].

    Returns:
        ``[d, r]`` matrix with orthonormal columns, ordered by decreasing variance.
        For constant ``X`` (zero variance) the single returned direction is arbitrary.
    """
    X = _as_array(X, 2, "X")
    _check_threshold(variance_threshold)
    _, s, vt = np.linalg.svd(_centre(X), full_matrices=False)
    var = s**2
    total = var.sum()
    if total <= 0.0:
        return vt[:1].T
    cumulative = np.cumsum(var) / total
    # Small tolerance so that e.g. exactly-rank-k data with threshold 1.0 gives r=k
    # rather than tripping over cumulative[k-1] = 0.9999999999999998.
    r = int(np.searchsorted(cumulative, variance_threshold - 1e-12) + 1)
    r = min(max(r, 1), len(s))
    return vt[:r].T


def captured_variance(X: np.ndarray, basis: np.ndarray) -> float:
    """Share of centred ``X``'s total variance lying in ``span(basis)``.

    Computed as ``||Xc P||_F^2 / ||Xc||_F^2`` where ``P`` is the orthogonal projector
    onto the span. 1 means X varies only within the subspace, 0 means all of its
    variance is orthogonal to it.

    Args:
        X: data ``[n, d]``.
        basis: ``[d, r]`` matrix whose columns span the subspace. They need not be
            orthonormal: the span is re-orthonormalised first.

    Returns:
        A float in [0, 1], or NaN if X has zero variance (the share is undefined).
    """
    X = _as_array(X, 2, "X")
    basis = _as_array(basis, 2, "basis")
    if basis.shape[0] != X.shape[1]:
        raise ValueError(f"basis has {basis.shape[0]} rows but X has dimension {X.shape[1]}")
    Xc = _centre(X)
    total = float(np.sum(Xc**2))
    if total <= 0.0:
        return float("nan")
    q = orth(basis)
    inside = float(np.sum((Xc @ q) ** 2))
    return min(inside / total, 1.0)  # clip rounding overshoot


def _check_latents(Z: Any) -> np.ndarray:
    return _as_array(Z, 3, "Z [n_examples, n_slots, d]")


def cross_capture(Z: np.ndarray, variance_threshold: float = 0.9) -> np.ndarray:
    """Matrix ``H[i, j]`` = share of slot j's variance captured by slot i's principal subspace.

    Each slot's latents (over examples) get a principal subspace capturing
    ``variance_threshold`` of their variance. ``H[i, j]`` near 1 means slot j varies
    along the same directions as slot i (a shared representation space); near 0
    means slot j uses directions slot i never uses. The diagonal is at least
    ``variance_threshold`` by construction. H is not symmetric: a low-dimensional
    slot can be contained in a high-dimensional one but not vice versa.

    Args:
        Z: latents ``[n_examples, n_slots, d]``; needs ``n_examples >= 2``.
        variance_threshold: passed to :func:`principal_subspace`.

    Returns:
        ``[n_slots, n_slots]`` float array (NaN in columns of zero-variance slots).
    """
    Z = _check_latents(Z)
    n, n_slots, _ = Z.shape
    if n < 2:
        raise ValueError("cross_capture needs at least 2 examples to estimate variance")
    bases = [principal_subspace(Z[:, i], variance_threshold) for i in range(n_slots)]
    H = np.empty((n_slots, n_slots))
    for i, basis in enumerate(bases):
        for j in range(n_slots):
            H[i, j] = captured_variance(Z[:, j], basis)
    return H


def mean_off_diagonal(H: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square matrix (NaN if it is 1x1).

    For :func:`cross_capture` this summarises how much slots share subspaces,
    excluding the trivial self-capture on the diagonal.
    """
    H = _as_array(H, 2, "H")
    if H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square, got shape {H.shape}")
    k = H.shape[0]
    if k < 2:
        return float("nan")
    mask = ~np.eye(k, dtype=bool)
    return float(H[mask].mean())


def cross_capture_mean(H: np.ndarray) -> float:
    """The summary of a :func:`cross_capture` matrix: :func:`mean_off_diagonal`, or NaN (undefined) when H has
    undefined entries. A constant slot (no variance, e.g. the soft tokens themselves where a one-layer
    Coprocessor's top-layer input is read) has no subspace, so its row and column of H are NaN."""
    return mean_off_diagonal(H) if np.isfinite(H).all() else float("nan")


def silhouette(X: np.ndarray, labels: Any, chunk_size: int = 2048) -> float:
    """Mean silhouette coefficient of a labelled point set (euclidean distance).

    For point i with own-cluster mean distance ``a`` (excluding itself) and smallest
    mean distance to another cluster ``b``, ``s_i = (b - a) / max(a, b)``. The mean
    is near 1 for tight, well-separated clusters, near 0 when the labels do not
    correspond to any geometric grouping, negative when points sit closer to other
    clusters. Points in singleton clusters get ``s_i = 0``, as in scikit-learn.

    Args:
        X: points ``[n, d]``.
        labels: ``[n]`` cluster labels of any hashable type.
        chunk_size: rows of the distance matrix computed at once; bounds memory at
            ``chunk_size * n`` floats instead of ``n^2``.

    Returns:
        Mean silhouette over all points.

    Raises:
        ValueError: unless ``2 <= n_clusters <= n - 1`` (same rule as scikit-learn).
    """
    return silhouette_labelings(X, [labels], chunk_size)[0]


def silhouette_labelings(X: np.ndarray, labelings: list[Any], chunk_size: int = 2048) -> list[float]:
    """:func:`silhouette` of the same points under several labelings, one pass over the distances.

    The distance matrix is the expensive part and does not depend on the labels, so label-permutation
    nulls score all their permutations for the price of one silhouette.
    """
    X = _as_array(X, 2, "X")
    n = X.shape[0]
    encoded = []
    for labels in labelings:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        _, codes = np.unique(labels, return_inverse=True)
        codes = codes.reshape(-1)
        n_clusters = int(codes.max()) + 1 if n else 0
        if not 2 <= n_clusters <= n - 1:
            raise ValueError(
                f"silhouette needs 2 <= n_clusters <= n_points - 1, got {n_clusters} clusters "
                f"for {n} points"
            )
        onehot = np.zeros((n, n_clusters))
        onehot[np.arange(n), codes] = 1.0
        encoded.append((codes, onehot, onehot.sum(axis=0)))

    scores = np.empty((len(encoded), n))
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        distances = cdist(X[rows], X)
        idx = np.arange(distances.shape[0])
        for k, (codes, onehot, counts) in enumerate(encoded):
            # Summed distance from each point in the chunk to every cluster: [chunk, K].
            sums = distances @ onehot
            own = codes[rows]
            own_count = counts[own]
            with np.errstate(divide="ignore", invalid="ignore"):
                # Own cluster: exclude the point itself (its distance to itself is 0).
                a = sums[idx, own] / (own_count - 1)
                means = sums / counts
            means[idx, own] = np.inf
            b = means.min(axis=1)
            denom = np.maximum(a, b)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = (b - a) / denom
            # Singletons (own_count == 1) and coincident points (denom == 0) score 0.
            s[(own_count == 1) | ~np.isfinite(s)] = 0.0
            scores[k, rows] = s
    return [float(row.mean()) for row in scores]


def slot_silhouette(Z: np.ndarray) -> float:
    """Silhouette of all latents labelled by their slot index.

    High values mean each slot occupies its own region of latent space (slots are
    easy to tell apart); values near 0 mean slots are intermixed.

    Args:
        Z: latents ``[n_examples, n_slots, d]`` with ``n_slots >= 2`` and ``n_examples >= 2``.
    """
    Z = _check_latents(Z)
    n, n_slots, d = Z.shape
    # reshape is row-major, so row k of the flat array is example k // S, slot k % S.
    labels = np.tile(np.arange(n_slots), n)
    return silhouette(Z.reshape(n * n_slots, d), labels)


def principal_angles_between_bases(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Principal angles (radians) between ``span(U)`` and ``span(V)``, for ``U [d, p]``, ``V [d, q]``.

    The k-th angle is the smallest angle between unit vectors of the two subspaces
    that are orthogonal to the previous pairs. All 0 means one span contains the
    other; all pi/2 means they are orthogonal. Returns ``min(p, q)`` angles in
    descending order (the scipy convention).
    """
    U = _as_array(U, 2, "U")
    V = _as_array(V, 2, "V")
    if U.shape[0] != V.shape[0]:
        raise ValueError(f"bases live in different dimensions: {U.shape[0]} vs {V.shape[0]}")
    return subspace_angles(U, V)


def principal_angles(A: np.ndarray, B: np.ndarray, variance_threshold: float = 0.9) -> np.ndarray:
    """Principal angles (radians) between the principal subspaces of point sets ``A [n, d]`` and ``B [m, d]``.

    Each set is reduced to the subspace capturing ``variance_threshold`` of its
    variance (see :func:`principal_subspace`), then compared with
    :func:`principal_angles_between_bases`. Unlike :func:`cross_capture` this is
    symmetric and ignores how variance is distributed inside each subspace.
    """
    return principal_angles_between_bases(
        principal_subspace(A, variance_threshold), principal_subspace(B, variance_threshold)
    )


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear centred kernel alignment between two representations of the same ``n`` points.

    With column-centred ``X [n, d1]`` and ``Y [n, d2]``::

        CKA = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)

    i.e. normalised HSIC with linear kernels (Kornblith et al., 2019). It compares
    the pairwise-similarity structure of the points, so the feature dimensions may
    differ. CKA is 1 for ``Y = c X Q`` (orthogonal ``Q``, scalar ``c != 0``), and is
    NOT invariant to general invertible linear maps: stretching some directions
    changes which points look similar. Independent random representations score
    roughly ``sqrt(d1 d2) / n``, so use ``n`` well above the dimensions.

    Returns:
        A float in [0, 1], or NaN if either representation is constant.
    """
    X = _as_array(X, 2, "X")
    Y = _as_array(Y, 2, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows, got {X.shape[0]} and {Y.shape[0]}")
    Xc, Yc = _centre(X), _centre(Y)
    n, d1 = Xc.shape
    d2 = Yc.shape[1]
    # Same quantity two ways: feature-space products cost ~n*(d1+d2)^2, Gram matrices
    # ~n^2*(d1+d2). Hidden sizes (thousands) often exceed the number of examples.
    if n * n < (d1 + d2) ** 2:
        Kx, Ky = Xc @ Xc.T, Yc @ Yc.T
        hsic = float(np.sum(Kx * Ky))  # tr(Kx Ky) = ||Y^T X||_F^2
        nx, ny = np.linalg.norm(Kx), np.linalg.norm(Ky)  # ||XX^T||_F = ||X^T X||_F
    else:
        hsic = float(np.linalg.norm(Yc.T @ Xc) ** 2)
        nx, ny = np.linalg.norm(Xc.T @ Xc), np.linalg.norm(Yc.T @ Yc)
    if nx == 0.0 or ny == 0.0:
        return float("nan")
    return float(hsic / (nx * ny))


def effective_rank(X: np.ndarray, center: bool = True) -> float:
    """Entropy effective rank (Roy & Vetterli, 2007) of ``X [n, d]``.

    With singular values ``s`` and ``p = s / sum(s)``, returns ``exp(H(p))`` where
    ``H`` is the Shannon entropy. It is a continuous count of the directions the
    data uses: exactly k for k equal non-zero singular values, 1 for a rank-1
    matrix, close to ``d`` for isotropic noise with ``n >> d``.

    Args:
        X: data ``[n, d]``.
        center: subtract the mean row first (default). Latents often share a large
            mean offset that would otherwise count as a dominant "direction" and
            hide how the examples actually spread.

    Returns:
        A float in ``[1, min(n, d)]``, or 0.0 for an all-zero (after centring) matrix.
    """
    X = _as_array(X, 2, "X")
    if center:
        X = _centre(X)
    s = np.linalg.svd(X, compute_uv=False)
    total = s.sum()
    if total <= 0.0:
        return 0.0
    p = s / total
    p = p[p > 0]  # 0 * log 0 = 0
    return float(np.exp(-np.sum(p * np.log(p))))


def _finite_or_none(x: float) -> float | None:
    # Summaries are written to JSON, which has no NaN; None marks "undefined".
    return float(x) if np.isfinite(x) else None


def summarize_latents(Z: np.ndarray, variance_threshold: float = 0.9) -> dict[str, Any]:
    """All slot-geometry metrics for latents ``Z [n_examples, n_slots, d]`` as a JSON-ready dict.

    Keys:
        ``n_examples``, ``n_slots``, ``dim``, ``variance_threshold``;
        ``principal_rank_per_slot``: number of components each slot's subspace needs;
        ``cross_capture``: :func:`cross_capture` matrix as nested lists;
        ``cross_capture_mean_off_diagonal``: its :func:`mean_off_diagonal`;
        ``slot_silhouette``: :func:`slot_silhouette`;
        ``effective_rank``: :func:`effective_rank` of all latents pooled over slots;
        ``effective_rank_per_slot``: the same per slot.

    Undefined values (one slot, constant slot) are ``None`` rather than NaN.
    """
    Z = _check_latents(Z)
    n, n_slots, d = Z.shape
    H = cross_capture(Z, variance_threshold)
    sil = slot_silhouette(Z) if n_slots >= 2 else float("nan")
    return {
        "n_examples": n,
        "n_slots": n_slots,
        "dim": d,
        "variance_threshold": variance_threshold,
        "principal_rank_per_slot": [
            int(principal_subspace(Z[:, i], variance_threshold).shape[1]) for i in range(n_slots)
        ],
        "cross_capture": [[_finite_or_none(v) for v in row] for row in H],
        "cross_capture_mean_off_diagonal": _finite_or_none(cross_capture_mean(H)),
        "slot_silhouette": _finite_or_none(sil),
        "effective_rank": effective_rank(Z.reshape(n * n_slots, d)),
        "effective_rank_per_slot": [effective_rank(Z[:, i]) for i in range(n_slots)],
    }
