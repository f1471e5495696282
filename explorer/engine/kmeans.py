"""One-dimensional k-means for weight sharing (Deep Compression §3).

In one dimension a cluster is an interval of the sorted data, so a Lloyd iteration needs no distance
matrix: with the data sorted once and prefix sums of ``w`` and ``w·x``, the boundaries between
neighbouring centroids (their midpoints) are found by binary search and each cluster's mean is a
difference of two prefix sums. One iteration costs O(k log n) after an O(n log n) sort.

References
----------
Han, Mao, Dally. Deep Compression. ICLR 2016, §3.1-3.2 (initialisations).
Arthur, Vassilvitskii. k-means++: the advantages of careful seeding. SODA 2007.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CompressionError

INITS = ("forgy", "density", "linear", "kmeans++")
_KMEANSPP_SAMPLE = 20000


@dataclass
class KMeansResult:
    centroids: np.ndarray  # sorted ascending, float64, length <= k (fewer when there are fewer distinct values)
    labels: np.ndarray  # index into centroids for every input value (int64)
    inertia: float  # sum of (weighted) squared distances to the assigned centroid
    initial: np.ndarray  # the initial centroids (sorted)
    n_iter: int


def _check_values(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise CompressionError(f"cannot cluster weights: {bad} value(s) are NaN or infinite")
    return x


class _Sorted:
    """Sorted data with prefix sums: the state every 1-D k-means step reads."""

    def __init__(self, x: np.ndarray, weights: np.ndarray | None):
        order = np.argsort(x, kind="stable")
        self.order = order
        self.xs = x[order]
        self.ws = np.ones_like(self.xs) if weights is None else np.asarray(weights, np.float64).ravel()[order]
        zero = np.zeros(1)
        self.cw = np.concatenate([zero, np.cumsum(self.ws)])
        self.cwx = np.concatenate([zero, np.cumsum(self.ws * self.xs)])
        self.cwxx = np.concatenate([zero, np.cumsum(self.ws * self.xs * self.xs)])

    def unique(self) -> np.ndarray:
        xs = self.xs
        return xs[np.concatenate([[True], xs[1:] != xs[:-1]])] if xs.size else xs

    def segments(self, c: np.ndarray):
        """Start and end (exclusive) of each centroid's interval in the sorted data."""
        bounds = (c[1:] + c[:-1]) / 2.0
        cut = np.searchsorted(self.xs, bounds, side="right")
        starts = np.concatenate([[0], cut])
        ends = np.concatenate([cut, [self.xs.size]])
        return starts, ends

    def sums(self, c):
        s, e = self.segments(c)
        return self.cw[e] - self.cw[s], self.cwx[e] - self.cwx[s], self.cwxx[e] - self.cwxx[s]

    def inertia(self, c) -> float:
        sw, sx, sxx = self.sums(c)
        return float(max(np.sum(sxx - 2.0 * c * sx + c * c * sw), 0.0))


def init_centroids(x, k: int, init: str = "linear", seed: int = 0, weights=None) -> np.ndarray:
    """Initial centroids for 1-D k-means, sorted.

    Parameters
    ----------
    x : array of values (the surviving weights).
    k : number of centroids.
    init : ``forgy`` (k distinct values drawn at random, seeded), ``density`` (the empirical CDF inverted
        at evenly spaced probabilities (i + 1/2)/k), ``linear`` (evenly spaced on [min, max]),
        ``kmeans++`` (D² sampling on at most 20,000 values drawn from x).
    """
    data = _Sorted(_check_values(x), weights)
    return _init(data, k, init, seed)


def _init(data: _Sorted, k: int, init: str, seed: int) -> np.ndarray:
    xs = data.xs
    rng = np.random.default_rng(seed)
    if init == "linear":
        return np.linspace(xs[0], xs[-1], k)
    if init == "density":
        p = (np.arange(k) + 0.5) / k * data.cw[-1]
        idx = np.clip(np.searchsorted(data.cw[1:], p, side="left"), 0, xs.size - 1)
        return xs[idx].astype(np.float64)
    if init == "forgy":
        uniq = data.unique()
        return np.sort(rng.choice(uniq, size=min(k, uniq.size), replace=False))
    if init == "kmeans++":
        pts = xs if xs.size <= _KMEANSPP_SAMPLE else xs[rng.choice(xs.size, _KMEANSPP_SAMPLE, replace=False)]
        centers = [pts[rng.integers(pts.size)]]
        d2 = (pts - centers[0]) ** 2
        for _ in range(1, k):
            total = d2.sum()
            if total <= 0:
                break
            c = pts[min(np.searchsorted(np.cumsum(d2), rng.random() * total), pts.size - 1)]
            centers.append(c)
            d2 = np.minimum(d2, (pts - c) ** 2)
        return np.sort(np.asarray(centers, dtype=np.float64))
    raise CompressionError(f"unknown k-means init {init!r} (known: {', '.join(INITS)})")


def kmeans_1d(x, k: int, init: str = "linear", max_iter: int = 50, seed: int = 0, weights=None,
              tol: float = 0.0) -> KMeansResult:
    """Cluster 1-D values into at most ``k`` centroids with Lloyd's algorithm on sorted data.

    Parameters
    ----------
    x : array_like
        Values to cluster (pass only the surviving weights: pruned ones are excluded by the caller).
    k : int
        Number of centroids, >= 1. When ``x`` has no more than ``k`` distinct values, the centroids are
        exactly those values (inertia 0).
    init, seed : see :func:`init_centroids`.
    max_iter : int
        Lloyd iterations at most (0 keeps the initial centroids).
    weights : array_like, optional
        A non-negative weight per value (e.g. histogram counts).
    tol : float
        Stop when no centroid moves by more than ``tol``.

    Returns
    -------
    KMeansResult
    """
    x = _check_values(x)
    if k < 1:
        raise CompressionError(f"k-means needs k >= 1, got {k}")
    if x.size == 0:
        empty = np.zeros(0)
        return KMeansResult(empty, np.zeros(0, np.int64), 0.0, empty, 0)
    data = _Sorted(x, weights)
    uniq = data.unique()
    if uniq.size <= k:
        c = uniq.astype(np.float64)
        initial, n_iter = c.copy(), 0
    else:
        c = np.unique(_init(data, k, init, seed))  # sorted, duplicates merged
        initial = c.copy()
        n_iter = 0
        for n_iter in range(1, max_iter + 1):
            sw, sx, _ = data.sums(c)
            new = np.where(sw > 0, sx / np.where(sw > 0, sw, 1.0), c)
            new.sort()
            moved = np.max(np.abs(new - c)) if new.size else 0.0
            c = new
            if moved <= tol:
                break
    bounds = (c[1:] + c[:-1]) / 2.0
    labels = np.searchsorted(bounds, x, side="left").astype(np.int64)
    return KMeansResult(c, labels, data.inertia(c), initial, n_iter)


def lloyd_reference(x, centroids, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd's algorithm with an explicit distance matrix: the reference the fast kernel is tested
    against. Ties go to the lower centroid, empty clusters keep their centroid."""
    x = np.asarray(x, np.float64).ravel()
    c = np.sort(np.asarray(centroids, np.float64))
    for _ in range(max_iter):
        labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        new = c.copy()
        for j in range(c.size):
            sel = labels == j
            if sel.any():
                new[j] = x[sel].mean()
        new.sort()
        if np.array_equal(new, c):
            break
        c = new
    return c, np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
