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
from numba import njit

from explorer.engine.errors import CompressionError

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
        if weights is None:
            self.xs = np.sort(x)  # values only: no argsort needed
            self.ws = np.ones_like(self.xs)
        else:
            order = np.argsort(x, kind="stable")
            self.xs = x[order]
            self.ws = np.asarray(weights, np.float64).ravel()[order]
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
    fn = INITS.get(init)
    if fn is None:
        raise CompressionError(f"unknown k-means init {init!r} (known: {', '.join(INITS)})")
    return fn(data, k, np.random.default_rng(seed))


# ----------------------------------------------------------------------------------- initialisations
# The registry of k-means initialisations: name -> fn(data, k, rng) -> initial centroids (any order,
# duplicates allowed; at most k). ``data`` is the sorted survivors (``data.xs``, their weights' prefix sums
# ``data.cw``, ``data.unique()``), ``rng`` a seeded numpy Generator. The plan's validation, the window's
# controls, ``inspect --inits`` and the CLI's help read it: :func:`register_init` adds one everywhere.


def _linear(data: _Sorted, k: int, rng) -> np.ndarray:
    """Evenly spaced on [min, max] (Deep Compression's best: it keeps centroids among the large weights)."""
    return np.linspace(data.xs[0], data.xs[-1], k)


def _density(data: _Sorted, k: int, rng) -> np.ndarray:
    """The empirical CDF inverted at evenly spaced probabilities (i + 1/2)/k."""
    p = (np.arange(k) + 0.5) / k * data.cw[-1]
    idx = np.clip(np.searchsorted(data.cw[1:], p, side="left"), 0, data.xs.size - 1)
    return data.xs[idx].astype(np.float64)


def _forgy(data: _Sorted, k: int, rng) -> np.ndarray:
    """k distinct values drawn at random (seeded)."""
    uniq = data.unique()
    return np.sort(rng.choice(uniq, size=min(k, uniq.size), replace=False))


def _kmeans_pp(data: _Sorted, k: int, rng) -> np.ndarray:
    """D² sampling (Arthur & Vassilvitskii) on at most 20,000 values drawn from the data."""
    xs = data.xs
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


INITS: dict = {"linear": _linear, "density": _density, "forgy": _forgy, "kmeans++": _kmeans_pp}


def register_init(name: str, fn) -> None:
    """Add (or replace) a k-means initialisation everywhere at once: ``fn(data, k, rng) -> centroids``."""
    INITS[name] = fn


def _lloyd(data: _Sorted, c: np.ndarray, max_iter: int, tol: float):
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        sw, sx, _ = data.sums(c)
        new = np.where(sw > 0, sx / np.where(sw > 0, sw, 1.0), c)
        new.sort()
        moved = np.max(np.abs(new - c)) if new.size else 0.0
        c = new
        if moved <= tol:
            break
    return c, n_iter


def kmeans_1d(x, k: int, init: str = "linear", max_iter: int = 50, seed: int = 0, weights=None,
              tol: float = 0.0, method: str = "auto", snap=None) -> KMeansResult:
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
    method : {"auto", "sorted", "buckets"}
        Two implementations of the same Lloyd iteration. ``sorted``: on the sorted data with prefix
        sums (an O(n log n) sort once, then O(k log n) per iteration). ``buckets``: no sort; the values
        are grouped into :data:`HIST_BINS` equal-width buckets over [min, max] by a counting sort
        (O(n)) with prefix sums in bucket order; a boundary between two centroids splits at most one
        bucket, whose few values are compared one by one, so each iteration is still exact and costs
        O(k * bucket size). Both give the same centroids up to floating-point rounding of the sums.
        Data the buckets cannot spread (most values in a few buckets, e.g. next to one huge outlier)
        falls back to ``sorted``. ``auto``: ``buckets`` above :data:`HIST_MIN_N` values.
    snap : numpy dtype, optional
        Round the final centroids to this dtype (merging those that become equal) before the values are
        assigned, so labels and inertia refer to the centroids as they will be stored (e.g. float32).

    Returns
    -------
    KMeansResult
    """
    x = _check_values(x)
    if k < 1:
        raise CompressionError(f"k-means needs k >= 1, got {k}")
    if method not in ("auto", "sorted", "buckets"):
        raise CompressionError(f"unknown k-means method {method!r} (known: auto, sorted, buckets)")
    if not isinstance(init, str) or init not in INITS:
        raise CompressionError(f"unknown k-means init {init!r} (known: {', '.join(INITS)})")
    w = None if weights is None else np.asarray(weights, np.float64).ravel()
    if w is not None and (w.size != x.size or not np.all(np.isfinite(w)) or (w.size and w.min() < 0)):
        raise CompressionError("k-means weights must be finite, non-negative and one per value")
    if x.size == 0:
        empty = np.zeros(0)
        return KMeansResult(empty, np.zeros(0, np.int64), 0.0, empty, 0)
    if method == "buckets" or (method == "auto" and x.size > HIST_MIN_N):
        res = _kmeans_buckets(x, w, k, init, max_iter, seed, tol, snap)
        if res is not None:
            return res
    data = _Sorted(x, w)
    uniq = data.unique()
    if uniq.size <= k:
        c = uniq.astype(np.float64)
        initial, n_iter = c.copy(), 0
    else:
        c = np.unique(_init(data, k, init, seed))  # sorted, duplicates merged
        initial = c.copy()
        c, n_iter = _lloyd(data, c, max_iter, tol)
    c = snap_centroids(c, snap)
    labels, inertia = _labels(x, w, c)
    return KMeansResult(c, labels, inertia, initial, n_iter)


HIST_BINS = 1 << 16
HIST_MIN_N = 1 << 15
_BUCKET_SCAN_BUDGET = 16  # beyond this many passes' worth of boundary-bucket scans, sort instead


def snap_centroids(c: np.ndarray, dtype) -> np.ndarray:
    return c if dtype is None else np.unique(c.astype(dtype)).astype(np.float64)


def _kmeans_buckets(x, w, k, init, max_iter, seed, tol, snap=None):
    """Exact Lloyd without a sort: the values are grouped into equal-width buckets (a counting sort by
    bucket, O(n)); a cluster boundary splits at most one bucket, which is scanned."""
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        return None  # one distinct value: the sorted path handles it exactly
    ww = np.zeros(0) if w is None else w

    def count(nb, scale):
        bidx, start, cw, cwx = _bucket_count(x, ww, lo, scale, nb)
        return np.diff(start), (bidx, start, cw, cwx)

    chosen = choose_buckets(x.size, k, max_iter, lo, hi, count)
    if chosen is None:
        return None  # the sorted path decides exactly
    nb, scale, (bidx, start, cw, cwx) = chosen
    gx, gw = _bucket_scatter(x, ww, bidx, start)
    if init == "linear":
        c0 = np.linspace(lo, hi, k)
    elif init == "density" and w is None:
        # the same order statistics as on the sorted data, selected inside their buckets
        p = (np.arange(k) + 0.5) / k * x.size
        # (searchsorted of p in the prefix counts 1, 2, ..., n is ceil(p) - 1)
        idx = np.clip(np.ceil(p).astype(np.int64) - 1, 0, x.size - 1)
        c0 = bucket_select(gx, start, idx.astype(np.int64))
    else:
        c0 = _init(_Sorted(x, w), k, init, seed)
    c = np.unique(c0)
    initial = c.copy()
    c, n_iter = bucket_lloyd(gx, gw, start, cw, cwx, lo, scale, c, max_iter, tol)
    c = snap_centroids(c, snap)
    bounds = (c[1:] + c[:-1]) / 2.0
    lut = _bucket_labels(bounds, lo, scale, nb)
    labels = np.empty(x.size, np.int64)
    inertia = _assign_lut(x, ww, c, bounds, bidx, lut, labels)
    return KMeansResult(c, labels, float(max(inertia, 0.0)), initial, n_iter)


def choose_buckets(n: int, k: int, max_iter: int, lo: float, hi: float, count):
    """The bucket count of the bucket path for ``n`` values in [lo, hi] (hi > lo) and ``k`` centroids, and
    whether the path applies. ``count(nb, scale)`` returns ``(values per bucket, state)`` for ``nb``
    buckets of width 1/scale. The count starts at :func:`bucket_number` and is refined while the fullest
    bucket would make Lloyd compare more than about two passes' worth of values in boundary buckets (a
    peaked distribution). Returns ``(nb, scale, state)``, or None where the sorted path is taken instead:
    a scale that is not finite, mass concentrated in a few buckets even at the finest count (e.g. next to
    one huge outlier), or no more non-empty buckets than centroids (maybe no more distinct values than k).
    :func:`kmeans_1d` and :class:`explorer.engine.measure.sweep.TensorSweep` (on the survivors' counts) both
    decide here, so they take the same path with the same buckets."""
    target = 2 * n + (1 << 20)
    budget = _BUCKET_SCAN_BUDGET * n + (1 << 20)
    nb = bucket_number(n, k)
    while True:
        scale = nb / (hi - lo)
        if not np.isfinite(scale):
            return None
        counts, state = count(nb, scale)
        cost = k * int(counts.max()) * max(max_iter, 1)
        if cost <= target or nb >= HIST_BINS:
            break
        nb = min(HIST_BINS, nb << max(1, int(np.ceil(np.log2(cost / target)))))
    if cost > budget or int(np.count_nonzero(counts)) <= k:
        return None
    return nb, scale, state


def bucket_number(n: int, k: int) -> int:
    """Buckets for n values: few enough that the scatter stays in cache, enough that a boundary
    bucket holds few values."""
    shift = int(np.ceil(np.log2(max(n, 1) / 128)))  # negative below 65 values: the floor of 4096 holds
    return int(min(HIST_BINS, max(4096, 1 << max(shift, 0))))


def _labels(x, w, c):
    """Index of the nearest centroid (a value halfway goes to the lower one) and the inertia."""
    bounds = (c[1:] + c[:-1]) / 2.0
    labels = np.empty(x.size, np.int64)
    inertia = _assign(x, np.zeros(0) if w is None else w, c, bounds, labels)
    return labels, float(max(inertia, 0.0))


@njit(cache=True, nogil=True)
def _below(bounds, v):
    lo = 0
    hi = bounds.size
    while lo < hi:  # number of bounds < v
        mid = (lo + hi) >> 1
        if bounds[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _assign(x, w, c, bounds, labels):
    weighted = w.size > 0
    total = 0.0
    for i in range(x.size):
        v = x[i]
        j = _below(bounds, v)
        labels[i] = j
        d = v - c[j]
        total += (w[i] * d * d) if weighted else d * d
    return total


@njit(cache=True, nogil=True)
def bucket_of(v, lo, scale, nb):
    b = int((v - lo) * scale)
    if b >= nb:
        b = nb - 1
    elif b < 0:
        b = 0
    return b


@njit(cache=True, nogil=True)
def _bucket_count(x, w, lo, scale, nb):
    """Bucket of every value, bucket starts (counting sort) and per-bucket prefix sums of w and w*x."""
    n = x.size
    weighted = w.size > 0
    bidx = np.empty(n, np.uint16)
    start = np.zeros(nb + 1, np.int64)
    cw = np.zeros(nb + 1)
    cwx = np.zeros(nb + 1)
    for i in range(n):
        v = x[i]
        b = bucket_of(v, lo, scale, nb)
        bidx[i] = b
        start[b + 1] += 1
        if weighted:
            cw[b + 1] += w[i]
            cwx[b + 1] += w[i] * v
        else:
            cwx[b + 1] += v
    for b in range(nb):
        start[b + 1] += start[b]
        cwx[b + 1] += cwx[b]
        cw[b + 1] = (cw[b + 1] + cw[b]) if weighted else float(start[b + 1])
    return bidx, start, cw, cwx


@njit(cache=True, nogil=True)
def _bucket_scatter(x, w, bidx, start):
    """The values (and weights) grouped by bucket."""
    n = x.size
    weighted = w.size > 0
    pos = start[:-1].copy()
    gx = np.empty(n)
    gw = np.empty(n if weighted else 0)
    for i in range(n):
        b = bidx[i]
        p = pos[b]
        gx[p] = x[i]
        if weighted:
            gw[p] = w[i]
        pos[b] = p + 1
    return gx, gw


@njit(cache=True, nogil=True)
def bucket_select(gx, start, ranks):
    """The values of the given ranks (0-based, in sorted order) of the bucket-grouped data."""
    out = np.empty(ranks.size)
    for i in range(ranks.size):
        r = ranks[i]
        b = np.searchsorted(start, r, side="right") - 1
        out[i] = np.sort(gx[start[b]:start[b + 1]])[r - start[b]]
    return out


@njit(cache=True, nogil=True)
def bucket_lloyd(gx, gw, start, cw, cwx, lo, scale, c, max_iter, tol):
    """Lloyd iterations; a value equal to a boundary joins the lower cluster (as on sorted data)."""
    nb = start.size - 1
    weighted = gw.size > 0
    k = c.size
    tw = cw[nb]
    tx = cwx[nb]
    n_iter = 0
    for it in range(1, max_iter + 1):
        n_iter = it
        new = np.empty(k)
        pw = 0.0
        px = 0.0
        for j in range(k):
            if j < k - 1:
                t = (c[j] + c[j + 1]) / 2.0
                b = bucket_of(t, lo, scale, nb)
                W = cw[b]
                X = cwx[b]
                if weighted:
                    for p in range(start[b], start[b + 1]):
                        if gx[p] <= t:
                            W += gw[p]
                            X += gw[p] * gx[p]
                else:
                    m = 0
                    for p in range(start[b], start[b + 1]):
                        if gx[p] <= t:
                            m += 1
                            X += gx[p]
                    W += m
            else:
                W = tw
                X = tx
            sw = W - pw
            new[j] = (X - px) / sw if sw > 0 else c[j]
            pw = W
            px = X
        new.sort()
        moved = 0.0
        for j in range(k):
            d = abs(new[j] - c[j])
            if d > moved:
                moved = d
        c = new
        if moved <= tol:
            break
    return c, n_iter


@njit(cache=True, nogil=True)
def _bucket_labels(bounds, lo, scale, nb):
    """Label of every bucket no boundary falls in; -1 for the buckets a boundary splits."""
    lut = np.empty(nb, np.int32)  # small enough to stay in cache while x is streamed
    j = 0
    m = bounds.size
    bb = np.empty(m, np.int64)
    for i in range(m):
        bb[i] = bucket_of(bounds[i], lo, scale, nb)
    for b in range(nb):
        while j < m and bb[j] < b:
            j += 1
        lut[b] = -1 if (j < m and bb[j] == b) else j
    return lut


@njit(cache=True, nogil=True)
def _assign_lut(x, w, c, bounds, bidx, lut, labels):
    weighted = w.size > 0
    total = 0.0
    for i in range(x.size):
        v = x[i]
        j = lut[bidx[i]]
        if j < 0:
            j = _below(bounds, v)
        labels[i] = j
        d = v - c[j]
        total += (w[i] * d * d) if weighted else d * d
    return total


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
