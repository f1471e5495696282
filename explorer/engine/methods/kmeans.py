"""One-dimensional k-means for weight sharing (Deep Compression §3).

In one dimension a cluster is an interval of the sorted data, so a Lloyd iteration needs no distance
matrix: the boundaries between neighbouring centroids (their midpoints) are found by binary search and
each cluster's sum is a difference of two prefix sums. One iteration costs O(k log n).

A cluster that no value falls in is a code no weight uses. As scikit-learn's ``KMeans`` does, such
clusters are moved at once to the values farthest from their own cluster's centre (each of those values
becomes a cluster of its own and leaves the cluster it was in), and the iterations go on until the
assignment stops changing: the result uses every centroid whenever there are at least ``k`` distinct
values, and from the same initial centroids it follows scikit-learn's iterations step for step (up to
rounding) to the end.

References
----------
Han, Mao, Dally. Deep Compression. ICLR 2016, §3.1-3.2 (initialisations).
Arthur, Vassilvitskii. k-means++: the advantages of careful seeding. SODA 2007.
Pedregosa et al. Scikit-learn: machine learning in Python. JMLR 2011 (``KMeans``, empty clusters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from explorer.engine.errors import CompressionError
from explorer.engine.memory import drop_pages
from explorer.engine.methods.inits import BUILTIN as BUILTIN_INITS
from explorer.engine.methods.inits import INITS, register_init

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
    """Sorted data and the prefix sums of its weights: what the inits and the sorted path read."""

    def __init__(self, x: np.ndarray, weights: np.ndarray | None):
        if weights is None:
            self.xs = np.sort(x)  # values only: no argsort needed
            self.ws = None
            self.cw = np.arange(self.xs.size + 1, dtype=np.float64)
        else:
            order = np.argsort(x, kind="stable")
            self.xs = x[order]
            self.ws = np.asarray(weights, np.float64).ravel()[order]
            self.cw = np.concatenate([np.zeros(1), np.cumsum(self.ws)])

    def unique(self) -> np.ndarray:
        xs = self.xs
        return xs[np.concatenate([[True], xs[1:] != xs[:-1]])] if xs.size else xs


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
# fn(data, k, rng) -> initial centroids; the registry (:data:`~explorer.engine.methods.inits.INITS`) names
# them for the plan's validation, the window's controls, ``inspect --inits`` and the CLI's help.


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


# the built-in ones, named in :mod:`explorer.engine.methods.inits` (read without this module's numba), bound
# here unless one was registered in their place first
for _name, _fn in zip(BUILTIN_INITS, (_linear, _density, _forgy, _kmeans_pp)):
    if INITS.get(_name) is None:
        register_init(_name, _fn)


MAX_ITER = 100_000  # the safety cap of "until the assignment stops changing" (max_iter=None)


def _lloyd(data: _Sorted, c: np.ndarray, max_iter: int, tol: float):
    """Lloyd on the sorted data: the bucket path's kernel with one bucket, already sorted."""
    xs = data.xs
    gw = np.zeros(0) if data.ws is None else data.ws
    tx = float(np.cumsum(xs if data.ws is None else data.ws * xs)[-1])
    return lloyd_kernel(xs, gw, np.array([0, xs.size], np.int64), np.array([0.0, data.cw[-1]]),
                        np.array([0.0, tx]), float(xs[0]), 0.0, c, max_iter, tol, True)


def kmeans_1d(x, k: int, init: str = "linear", max_iter: int | None = None, seed: int = 0, weights=None,
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
    max_iter : int or None
        Lloyd iterations at most (0 keeps the initial centroids). None (the default): until the
        assignment stops changing, at most :data:`MAX_ITER`.
    weights : array_like, optional
        A non-negative weight per value (e.g. histogram counts).
    tol : float
        Stop when no centroid moves by more than ``tol`` (and no cluster is empty).
    method : {"auto", "sorted", "buckets"}
        Two ways to the same Lloyd iterations. ``sorted``: the data sorted once (O(n log n)), then
        O(k log n) per iteration. ``buckets``: no sort; the values are grouped into equal-width buckets
        over [min, max] by a counting sort (O(n)) with prefix sums in bucket order; a boundary between
        two centroids splits one bucket, whose few values are compared one by one while boundaries pass
        through it and which is sorted once a boundary stays (then each iteration costs O(k log(bucket
        size))); every iteration is exact. Both give the same centroids up to floating-point rounding of
        the sums. Data the buckets cannot spread (most values in a few buckets, e.g. next to one huge
        outlier) falls back to ``sorted``. ``auto``: ``buckets`` above :data:`HIST_MIN_N` values.
    snap : numpy dtype, optional
        Round the final centroids to this dtype (merging those that become equal) before the values are
        assigned, so labels and inertia refer to the centroids as they will be stored (e.g. float32).

    Returns
    -------
    KMeansResult

    Notes
    -----
    An empty cluster is handled as scikit-learn handles it: when some clusters are empty after an
    assignment, the values farthest from their cluster's centre (as many as there are empty clusters)
    each become the centroid of an empty cluster and leave their cluster's sums. In one dimension they are
    found from the ends of the clusters' intervals, farthest first (ties: the lower cluster, then the lower
    value). A value is not taken from a cluster it would leave empty, nor twice. Each such move lowers the
    inertia, so the iterations end; when there are at least ``k`` distinct values, none of the returned
    clusters is empty (unless ``max_iter`` stopped the iterations first).
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
    max_iter = MAX_ITER if max_iter is None else int(max_iter)
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
SORT_AFTER = 16  # Lloyd compares a bucket's values one by one on a boundary's first visits, then sorts it


def snap_centroids(c: np.ndarray, dtype) -> np.ndarray:
    return c if dtype is None else np.unique(c.astype(dtype)).astype(np.float64)


def _kmeans_buckets(x, w, k, init, max_iter, seed, tol, snap=None):
    """Exact Lloyd without a sort: the values are grouped into equal-width buckets (a counting sort by
    bucket, O(n)); a cluster boundary splits at most one bucket, which is scanned (or, once boundaries
    stay in it, sorted and searched)."""
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
    del chosen  # the bucket indices held by this frame alone (dropped below)
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
    drop_pages(bidx)  # one call each, as each is held (a tuple or loop would hold them too): their pages go
    drop_pages(gx)  # outside the GIL (see engine.memory)
    drop_pages(gw)
    return KMeansResult(c, labels, float(max(inertia, 0.0)), initial, n_iter)


def choose_buckets(n: int, k: int, max_iter: int, lo: float, hi: float, count):
    """The bucket count of the bucket path for ``n`` values in [lo, hi] (hi > lo) and ``k`` centroids, and
    whether the path applies. ``count(nb, scale)`` returns ``(values per bucket, state)`` for ``nb``
    buckets of width 1/scale. The count starts at :func:`bucket_number` and is refined while the fullest
    bucket would make Lloyd compare more than about two passes' worth of values in boundary buckets (a
    peaked distribution; a bucket is compared value by value on :data:`SORT_AFTER` visits at most, then
    sorted). Returns ``(nb, scale, state)``, or None where the sorted path is taken instead: a scale that
    is not finite, mass concentrated in a few buckets even at the finest count (e.g. next to one huge
    outlier), or no more non-empty buckets than centroids (maybe no more distinct values than k).
    :func:`kmeans_1d` and :class:`explorer.engine.measure.sweep.TensorSweep` (on the survivors' counts) both
    decide here, so they take the same path with the same buckets."""
    target = 2 * n + (1 << 20)
    budget = _BUCKET_SCAN_BUDGET * n + (1 << 20)
    scans = min(max(max_iter, 1), SORT_AFTER)
    nb = bucket_number(n, k)
    while True:
        scale = nb / (hi - lo)
        if not np.isfinite(scale):
            return None
        counts, state = count(nb, scale)
        cost = k * int(counts.max()) * scans
        if cost <= target or nb >= HIST_BINS:
            break
        nb = min(HIST_BINS, nb << max(1, int(np.ceil(np.log2(cost / target)))))
        counts = state = None  # not held while the finer count is made (a state may hold a copy of the data)
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
    """Lloyd iterations on bucket-grouped values (see :func:`lloyd_kernel`); returns ``(centroids,
    iterations)``. The buckets a boundary falls in are sorted in place (``gx`` and ``gw``)."""
    return lloyd_kernel(gx, gw, start, cw, cwx, lo, scale, c, max_iter, tol, False)


@njit(cache=True, nogil=True)
def _prepare(gx, gw, start, b, ready, px, pw, presorted):
    """Sort bucket b in place (stably, weights with their values) and fill its running sums of w*x (and
    w) in that order, once."""
    if ready[b]:
        return
    ready[b] = True
    s = start[b]
    e = start[b + 1]
    weighted = gw.size > 0
    if not presorted and e - s > 1:
        if weighted:
            order = np.argsort(gx[s:e], kind="mergesort")
            gx[s:e] = gx[s:e][order]
            gw[s:e] = gw[s:e][order]
        else:
            gx[s:e].sort()
    acc = 0.0
    accw = 0.0
    for p in range(s, e):
        if weighted:
            acc += gw[p] * gx[p]
            accw += gw[p]
            pw[p] = accw
        else:
            acc += gx[p]
        px[p] = acc


@njit(cache=True, nogil=True)
def _split(gx, s, e, t):
    """The first position in the sorted gx[s:e] whose value is above t (e if none)."""
    while s < e:
        mid = (s + e) >> 1
        if gx[mid] <= t:
            s = mid + 1
        else:
            e = mid
    return s


@njit(cache=True, nogil=True)
def _bucket_at(start, p):
    return np.searchsorted(start, p, side="right") - 1


@njit(cache=True, nogil=True)
def _value_at(gx, gw, start, p, ready, px, pw, presorted):
    """gx[p], its bucket sorted first."""
    _prepare(gx, gw, start, _bucket_at(start, p), ready, px, pw, presorted)
    return gx[p]


@njit(cache=True, nogil=True)
def lloyd_kernel(gx, gw, start, cw, cwx, lo, scale, c, max_iter, tol, presorted):
    """Lloyd's iterations with scikit-learn's handling of empty clusters, until the assignment stops
    changing (or ``max_iter``; ``tol`` > 0 stops once no centroid moves by more). Returns ``(centroids,
    iterations)``.

    ``gx`` (and ``gw``, empty when unweighted) hold the values grouped into buckets: bucket b is
    ``gx[start[b]:start[b + 1]]``, every value of bucket b below every value of bucket b + 1 (the bucket
    of v is ``bucket_of(v, lo, scale, nb)``); ``cw``/``cwx`` are the prefix sums of w and w*x over whole
    buckets. A boundary's bucket is compared value by value on the first :data:`SORT_AFTER` visits (a
    boundary passing through), then sorted in place once (``presorted``: the buckets are sorted already),
    after which a boundary is a binary search from where it was and a cluster's sums two lookups. A value
    equal to a boundary joins the lower cluster. The sorted path calls this with one bucket, sorted."""
    nb = start.size - 1
    n = gx.size
    k = c.size
    weighted = gw.size > 0
    ready = np.zeros(nb, np.bool_)
    visits = np.zeros(nb, np.int64)
    px = np.empty(n)
    pw = np.empty(n if weighted else 0)
    q = np.full(k + 1, -1, np.int64)  # cluster j is gx[q[j]:q[j + 1]]; -1: not located
    q[0] = 0
    q[k] = n
    CW = np.empty(k)  # sums of w and w*x up to boundary j (j = k - 1: all)
    CX = np.empty(k)
    CW[k - 1] = cw[nb]
    CX[k - 1] = cwx[nb]
    before = c
    n_iter = 0
    for it in range(1, max_iter + 1):
        n_iter = it
        for j in range(k - 1):
            if it > 1 and c[j] == before[j] and c[j + 1] == before[j + 1]:
                continue  # the same boundary as in the last iteration: the same split and sums
            t = (c[j] + c[j + 1]) / 2.0
            b = bucket_of(t, lo, scale, nb)
            s = start[b]
            e = start[b + 1]
            if not ready[b]:
                visits[b] += 1
                if visits[b] < SORT_AFTER:  # a bucket boundaries pass through: compare its values one by one
                    CW[j], CX[j] = _scan(gx, gw, s, e, t, cw[b], cwx[b])
                    q[j + 1] = -1
                    continue
                _prepare(gx, gw, start, b, ready, px, pw, presorted)
            r = q[j + 1]  # where this boundary was (-1: unknown); late in the iterations it rarely moves far
            if r < s or r > e:
                r = _split(gx, s, e, t)
            elif r > s and gx[r - 1] > t:
                r = _split(gx, s, r - 1, t)
            elif r < e and gx[r] <= t:
                r = _split(gx, r + 1, e, t)
            q[j + 1] = r
            CW[j] = cw[b] + ((pw[r - 1] if weighted else r - s) if r > s else 0.0)
            CX[j] = cwx[b] + (px[r - 1] if r > s else 0.0)
        new, empties, picked = _update(gx, gw, start, lo, scale, c, q, CW, CX, ready, px, pw, presorted)
        moved = 0.0
        for j in range(k):
            d = abs(new[j] - c[j])
            if d > moved:
                moved = d
        before = c
        c = new
        if moved <= tol and (empties == 0 or picked == 0):
            break
    return c, n_iter


@njit(cache=True, nogil=True)
def _scan(gx, gw, s, e, t, W, X):
    """W and X plus the sums of w and w*x over the values <= t in gx[s:e], compared one by one."""
    weighted = gw.size > 0
    for p in range(s, e):
        if gx[p] <= t:
            W += gw[p] if weighted else 1.0
            X += gw[p] * gx[p] if weighted else gx[p]
    return W, X


@njit(cache=True, nogil=True)
def _update(gx, gw, start, lo, scale, c, q, CW, CX, ready, px, pw, presorted):
    """The next centroids from the clusters' sums (``CW``, ``CX`` up to each boundary): their means, and
    where clusters are empty, the values :func:`_relocate` moves them to. Returns ``(centroids, empty
    clusters, values moved)``."""
    k = c.size
    sw = np.empty(k)
    sx = np.empty(k)
    empties = 0
    for j in range(k):
        sw[j] = CW[j] - (CW[j - 1] if j > 0 else 0.0)
        sx[j] = CX[j] - (CX[j - 1] if j > 0 else 0.0)
        if not sw[j] > 0:
            empties += 1
    new = np.empty(k)
    if empties == 0:
        for j in range(k):
            new[j] = sx[j] / sw[j]
        for j in range(k - 1):
            if new[j + 1] < new[j]:  # (means of ordered intervals are ordered, but for rounding)
                new.sort()
                break
        return new, 0, 0
    for j in range(k - 1):  # the boundaries whose buckets were compared value by value: locate them
        if q[j + 1] < 0:
            t = (c[j] + c[j + 1]) / 2.0
            b = bucket_of(t, lo, scale, start.size - 1)
            _prepare(gx, gw, start, b, ready, px, pw, presorted)
            q[j + 1] = _split(gx, start[b], start[b + 1], t)
    picks = _relocate(gx, gw, start, ready, px, pw, presorted, q, c, sw, sx, empties)
    r = 0
    for j in range(k):
        if sw[j] > 0:
            new[j] = sx[j] / sw[j]
        elif r < picks.size:
            new[j] = picks[r]
            r += 1
        else:
            new[j] = c[j]
    new.sort()
    return new, empties, picks.size


@njit(cache=True, nogil=True)
def _relocate(gx, gw, start, ready, px, pw, presorted, q, c, sw, sx, wanted):
    """scikit-learn's move for empty clusters: the ``wanted`` values farthest from the centre of the
    cluster they are in, taken from the ends of the clusters' intervals (ties: the lower cluster, then
    the lower value) and removed from their clusters' sums (``sw``, ``sx``). A value at its centre, of zero
    weight, equal to one taken already, or whose cluster it would leave empty is passed over. Returns the
    values taken."""
    k = c.size
    weighted = gw.size > 0
    lo = q[:-1].copy()  # the next candidate from the low end of cluster j's interval
    hi = q[1:].copy()  # one past the next candidate from its high end
    out = np.empty(wanted)
    m = 0
    while m < wanted:
        best = 0.0
        bj = -1
        high = False
        for j in range(k):
            if lo[j] < hi[j]:
                d = abs(_value_at(gx, gw, start, lo[j], ready, px, pw, presorted) - c[j])
                if d > best:
                    best, bj, high = d, j, False
                d = abs(_value_at(gx, gw, start, hi[j] - 1, ready, px, pw, presorted) - c[j])
                if d > best:
                    best, bj, high = d, j, True
        if bj < 0:
            break
        p = hi[bj] - 1 if high else lo[bj]
        v = gx[p]
        wp = gw[p] if weighted else 1.0
        if high:  # pass over the copies of v: one centroid per value
            while lo[bj] < hi[bj] and _value_at(gx, gw, start, hi[bj] - 1, ready, px, pw, presorted) == v:
                hi[bj] -= 1
        else:
            while lo[bj] < hi[bj] and _value_at(gx, gw, start, lo[bj], ready, px, pw, presorted) == v:
                lo[bj] += 1
        if wp > 0 and sw[bj] - wp > 0:
            sw[bj] -= wp
            sx[bj] -= wp * v
            out[m] = v
            m += 1
    return out[:m]


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


def lloyd_reference(x, centroids, max_iter: int = MAX_ITER) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd's algorithm with an explicit distance matrix: the reference the fast kernel is tested
    against. Ties go to the lower centroid; empty clusters are moved as :func:`kmeans_1d` moves them (the
    values farthest from their cluster's centre, written out here from the definition); stops when the
    assignment stops changing."""
    x = np.asarray(x, np.float64).ravel()
    c = np.sort(np.asarray(centroids, np.float64))
    for _ in range(max_iter):
        labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        counts = np.bincount(labels, minlength=c.size)
        new = c.copy()
        for j in np.flatnonzero(counts):
            new[j] = x[labels == j].mean()
        empty = np.flatnonzero(counts == 0)
        picked = []
        if empty.size:
            dist = np.abs(x - c[labels])
            left = counts.copy()
            removed = np.zeros(c.size)
            for i in np.lexsort((x, labels, -dist)):  # farthest first; then the lower cluster, the lower value
                j = labels[i]
                if len(picked) == empty.size:
                    break
                if dist[i] > 0 and left[j] > 1 and x[i] not in picked:
                    picked.append(x[i])
                    left[j] -= 1
                    removed[j] += x[i]
            for j in np.flatnonzero(counts):
                new[j] = (x[labels == j].sum() - removed[j]) / left[j]
            new[empty[:len(picked)]] = picked
        new.sort()
        if np.array_equal(new, c) and not picked:
            break
        c = new
    return c, np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
