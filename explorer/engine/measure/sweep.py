"""Re-measuring one weight tensor at another pruning amount, fast: what a slider release needs.

:func:`~explorer.engine.compress.compress_weight` prunes and quantizes a tensor from scratch (about 50 ms
for 2.4 M weights on one core). The window asks for the same tensor again and again with another
amount. A :class:`TensorSweep` keeps what does not depend on the amount and computes only the numbers
the size preview shows — the storage sizes, the non-zero count, the codebook and the quantization
error — in one pass over the tensor plus O(k × bucket) work:

- the magnitudes' float32 bit patterns counted once by their top 15 bits (exponent and 7 mantissa bits:
  a cumulative histogram of 32,768 bins, 256 KB): the pruning threshold of an amount is then found in one
  bin, whose members a pass gathers and sorts (the 99 amounts a slider gives: one pass for all), and its
  ties are counted there. (Sorting all the keys, as this did before, kept 4 bytes a weight — 411 MB on
  VGG-16's first classifier layer — and needed twice that while sorting.) The mask is then the one
  :func:`~explorer.engine.methods.prune.magnitude_mask` builds, never materialised: the gap histograms are
  counted from the keys directly;
- for k-means, the weights grouped into the buckets :func:`~explorer.engine.methods.kmeans.kmeans_1d` uses,
  with per-bucket sums accumulated in position order. Pruning by magnitude removes a band of values
  around zero, so the survivors' buckets are the tensor's with the buckets inside the band emptied and
  the two buckets the band's edges fall in re-summed; Lloyd's iterations then run on exactly the
  numbers ``kmeans_1d`` would compute for the survivors, and give the same centroids to the bit.

Where the bucket path does not apply (few survivors, which ``kmeans_1d`` sorts; a survivor set whose
extremes are not both clear of the threshold), the survivors are gathered and clustered directly, as
``quantize_kmeans`` does, without building the codes or decoded weights of the whole tensor (up to
:data:`EXACT_MAX_SURVIVORS`).

Sizes, non-zero count and codebook are identical to ``compress_weight``'s (tests compare them on random
and adversarial tensors); the quantization error is computed from per-cluster sums instead of per weight
and agrees to rounding. What it does not cover — another quantization method, a k-means init other than
linear or density, weights that are not float32 — returns None, and the caller runs
``compress_weight``. Its results hold no mask or codes: they are for display, never for a file.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import numpy as np
import torch
from numba import njit

from explorer.engine.cache import Recent
from explorer.engine.memory import drop_pages
from explorer.engine.methods.kmeans import (HIST_MIN_N, bucket_lloyd, bucket_number, bucket_of, bucket_select,
                                            choose_buckets, snap_centroids)
from explorer.engine.methods.prune import keep_count, mask_from_key
from explorer.engine.methods.quantize import QuantResult, gather, shared_values
from explorer.engine.plan import LayerSettings
from explorer.engine.progress import ProgressFn, report
from explorer.engine.storage.coding import gap_histograms_of_keys
from explorer.engine.storage.size import GAP_BITS, TensorCode, sizes_from_counts

__all__ = ["TensorSweep", "SweepResult"]

GROUP_BYTES = 96 << 20  # k-means bucket groups kept per tensor (each: 4 bytes per weight, 24 per bucket)
EXACT_MAX_SURVIVORS = 1 << 18  # survivors clustered directly where the bucket path does not apply
MAG_SHIFT = 16  # a magnitude key's bin: its top 15 bits (the sign is not part of a magnitude)
MAG_BINS = 1 << (31 - MAG_SHIFT)
BATCH_MEMBERS = 1 << 23  # bins gathered in one pass, up to this many members in all (32 MB), unless one is larger
RANKS_KEPT = 1 << 14  # thresholds remembered per tensor (a slider gives 99)


class SweepResult:
    """What :meth:`TensorSweep.measure` returns: ``sizes`` (TensorSizes), ``nonzero`` and ``quant`` (a
    QuantResult without codes or decoded weights, or None)."""

    __slots__ = ("sizes", "nonzero", "quant")

    def __init__(self, sizes, nonzero: int, quant: Optional[QuantResult]):
        self.sizes, self.nonzero, self.quant = sizes, nonzero, quant


class TensorSweep:
    """Per-tensor state for measuring ``weight`` under many element-pruning amounts (see the module doc).
    Safe to call from several threads; the weight must not change while it is used."""

    def __init__(self, weight: torch.Tensor):
        w = weight.detach()
        self.shape = tuple(w.shape)
        self.n = int(w.numel())
        self.usable = w.dtype == torch.float32 and w.device.type == "cpu" and self.n > 0
        self._lock = threading.Lock()
        # bucket count -> (gx, start, S, SS) of every weight, the most recently used up to GROUP_BYTES
        self._groups = Recent(limit_bytes=GROUP_BYTES)
        if not self.usable:
            return
        self.values = np.ascontiguousarray(w.reshape(-1).numpy())
        self.keys = self.values.view(np.uint32)
        self.finite = bool(np.isfinite(self.values).all())
        self.lo = float(self.values.min())
        self.hi = float(self.values.max())
        self._lo_key = int(np.float32(abs(self.lo)).view(np.uint32))
        self._hi_key = int(np.float32(abs(self.hi)).view(np.uint32))
        self._magnitudes = _Magnitudes(self.keys)

    # ------------------------------------------------------------------------------------------ pruning
    def threshold(self, k: int):
        """(T, ties): the key of the ``k``-th largest magnitude and how many entries equal to it are kept,
        as :func:`explorer.engine.methods.prune._select_key` finds them (1 <= k < n)."""
        return self._magnitudes.threshold(k)

    def mask(self, amount, stride: int = 1, keys: Optional[np.ndarray] = None) -> np.ndarray:
        """:func:`~explorer.engine.methods.prune.magnitude_mask` of the tensor at ``amount``, from its threshold;
        with ``stride`` > 1 only its entries at every ``stride``-th position (a sample for display), without
        a pass over the whole tensor unless a sampled entry is one of a partly kept group of ties. ``keys``:
        the sample's keys when the caller keeps them (``self.keys[::stride]``)."""
        k = keep_count(self.n, amount)
        if keys is None:
            keys = self.keys if stride == 1 else np.ascontiguousarray(self.keys[::stride])
        mask = np.zeros(keys.size, bool)
        if k >= self.n:
            mask[:] = True
        elif k > 0:
            T, ties = self.threshold(k)
            if stride == 1:
                mask_from_key(keys, np.uint32(T), ties, mask)
                return mask
            magnitude = keys & np.uint32(0x7FFFFFFF)
            np.greater(magnitude, T, out=mask)
            tied = np.flatnonzero(magnitude == T)
            if tied.size:  # kept when among the first ``ties`` of the whole tensor's, in position order
                last = _first_tied(self.keys, np.uint32(T), ties)[2] if ties < self._count(T) else self.n
                mask[tied] = tied * stride <= last
        return mask

    def _count(self, key: int) -> int:
        return self._magnitudes.count(key)

    def prepare(self, settings: LayerSettings, progress: ProgressFn = None) -> None:
        """Compute now what :meth:`measure` will need for ``settings`` at any amount (a background job
        calls this when a layer is selected, so that the first release is fast). Reports progress between
        steps (each a pass over the tensor), so it can be cancelled."""
        if not self.usable or not self.finite:
            return
        report(progress, 0.0, "counting magnitudes")
        self._magnitudes.ranked([self.n - k for k in {keep_count(self.n, pct / 100) for pct in range(1, 100)}
                      if 0 < k < self.n])
        q = settings.quantize
        if q is not None and q.method == "kmeans" and self.hi > self.lo:
            # the bucket counts the slider's amounts (1..99 %) lead to, the current one last (kept longest)
            k = 2 ** q.bits - 1
            here = bucket_number(keep_count(self.n, settings.prune.amount) if settings.prune else self.n, k)
            nbs = {bucket_number(keep_count(self.n, pct / 100), k) for pct in range(1, 100)} - {here}
            nearest, room = [], self._groups.limit_bytes - self._group_bytes(here)
            for nb in sorted(nbs, key=lambda b: abs(np.log2(b / here))):  # as many as fit beside the current one
                room -= self._group_bytes(nb)
                if room < 0:
                    break
                nearest.append(nb)
            for i, nb in enumerate([here] + nearest):
                report(progress, (i + 1) / (len(nearest) + 2), f"k-means buckets ({nb})")
                self._group(nb)

    def grouping(self, settings: LayerSettings) -> Optional[int]:
        """The bucket number a k-means measurement under ``settings`` starts from (its grouping of the
        weights, unless refined), or None where it groups nothing. The previewer measures the amounts of one
        grouping together: a large layer holds one at a time, and alternating would group again each time."""
        q = settings.quantize
        if not self.usable or q is None or q.method != "kmeans":
            return None
        return bucket_number(keep_count(self.n, settings.prune.amount) if settings.prune else self.n, 2 ** q.bits - 1)

    def trim(self) -> None:
        """Drop the bucket groups if they hold more than :data:`GROUP_BYTES` (the group last used is kept
        even when it alone is over: one of 4 bytes a weight, 411 MB on VGG-16's first classifier layer).
        The previewer calls this once it has measured the slider's amounts ahead: a release finds those
        measured, and another amount or bit width groups the weights again (one pass)."""
        if self._groups.nbytes > GROUP_BYTES:
            self._drop_groups()

    def _drop_groups(self) -> None:
        """Empty the groupings, the pages of each one's values (4 bytes a weight) given back outside the
        GIL where nothing else holds them (see :mod:`explorer.engine.memory`)."""
        groups = self._groups.drain()
        while groups:
            group = groups.pop()
            gx = group[0]
            del group  # the tuple goes unless a measurement holds it: then gx is held elsewhere and kept
            drop_pages(gx)
            del gx

    # ------------------------------------------------------------------------------------------ measure
    def measure_covers(self, settings: LayerSettings) -> bool:
        """Whether :meth:`measure` may handle ``settings`` (it can still return None on the data)."""
        p, q = settings.prune, settings.quantize
        if not self.usable or not self.finite or p is None or p.granularity != "element" or not p.amount:
            return False
        return q is None or (q.method == "kmeans" and q.init in ("linear", "density"))

    def measure(self, settings: LayerSettings) -> Optional[SweepResult]:
        """Sizes, non-zero count and quantization of the tensor under ``settings`` (element pruning and
        quantization only), or None when this case is not covered (the caller compresses instead)."""
        if not self.measure_covers(settings):
            return None
        p, q = settings.prune, settings.quantize
        n = self.n
        k = keep_count(n, p.amount)
        if k == 0 or k >= n:
            return None
        T, ties = self.threshold(k)
        tied = self._count(T)
        if ties == tied or ties == 0:  # the mask is a threshold on the key
            gaps = gap_histograms_of_keys(self.keys, T if ties else T + 1, GAP_BITS)
        else:  # some of the entries equal to the threshold are kept, the earliest first: up to the last of
            # them, magnitudes >= T are kept, after it > T (no mask: a byte a weight, 103 MB on VGG-16's fc)
            last = int(_first_tied(self.keys, np.uint32(T), ties)[2])
            gaps = gap_histograms_of_keys(self.keys, T + 1, GAP_BITS, before=(last + 1, T))
        if q is None:
            # survivors keep their values: zeros among them only when the threshold itself is zero
            nonzero = k if T > 0 else n - self._count(0)
            return SweepResult(sizes_from_counts(n, k, gaps, None, None), nonzero, None)
        return self._kmeans(q, k, T, ties, gaps)

    def _kmeans(self, q, z: int, T: int, ties: int, gaps: dict) -> Optional[SweepResult]:
        """quantize_kmeans on the survivors (pruned: code 0 is the zero, 2**bits - 1 centroids), as
        kmeans_1d's bucket path computes it; where that path would not be taken, as it computes it otherwise
        (:meth:`_kmeans_exact`)."""
        k = 2 ** q.bits - 1
        if z <= HIST_MIN_N or not (self._lo_key > T and self._hi_key > T):
            # kmeans_1d sorts small inputs; survivors' extremes differ from the tensor's
            return self._kmeans_exact(q, z, T, ties, gaps)
        lo, hi = self.lo, self.hi
        if not hi > lo:
            return self._kmeans_exact(q, z, T, ties, gaps)
        t = float(np.array([T], np.uint32).view(np.float32)[0])
        quota = self._tie_quota(T, ties)

        def counted(nb, scale, group):  # the survivors' per-bucket counts: the band (-t, t) emptied
            gx, start, S, SS = group
            b1, b2 = bucket_of(-t, lo, scale, nb), bucket_of(t, lo, scale, nb)
            gkeys = gx.view(np.uint32)
            kc = np.diff(start)
            kc[b1:b2 + 1] = 0
            kc[b1] = _kept_in(gkeys, start, np.uint32(T), quota, b1)
            kc[b2] = _kept_in(gkeys, start, np.uint32(T), quota, b2)
            return kc, (gx, gkeys, start, S, SS, b1, b2)

        def count(nb, scale):
            if nb not in self._groups:
                fine = self._finer_group(nb)
                if fine is not None:  # summed from a finer grouping held (see _finer_group): no pass made
                    fnb, group = fine
                    kc, _ = counted(fnb, fnb / (hi - lo), group)
                    return kc.reshape(nb, fnb // nb).sum(axis=1), None
            return counted(nb, scale, self._group(nb))

        chosen = choose_buckets(z, k, q.max_iter, lo, hi, count)
        if chosen is None:  # kmeans_1d sorts the survivors
            return self._kmeans_exact(q, z, T, ties, gaps)
        nb, scale, state = chosen
        gx, gkeys, start, S, SS, b1, b2 = state if state is not None else counted(nb, scale, self._group(nb))[1]
        gxk, startk, cwk, cwxk, cwxxk = _survivors(gx, gkeys, start, S, SS, np.uint32(T), quota, b1, b2)
        if int(startk[-1]) != z:
            return None  # cannot happen; a guard rather than a wrong number
        if q.init == "linear":
            c0 = np.linspace(lo, hi, k)
        else:  # density: the same order statistics kmeans_1d selects
            pr = (np.arange(k) + 0.5) / k * z
            idx = np.clip(np.ceil(pr).astype(np.int64) - 1, 0, z - 1)
            c0 = bucket_select(gxk, startk, idx.astype(np.int64))
        c = np.unique(c0)
        initial = c.copy()
        c, n_iter = bucket_lloyd(gxk, np.zeros(0), startk, cwk, cwxk, lo, scale, c, q.max_iter, 0.0)
        c = snap_centroids(c, np.float32)
        bounds = (c[1:] + c[:-1]) / 2.0
        cnt, sx, sxx = _cluster_sums(gxk, startk, cwxk, cwxxk, bounds, lo, scale, nb)
        present = cnt > 0
        centroids = c[present]
        codebook = np.concatenate([[0.0], centroids]).astype(np.float32)
        hist = np.zeros(2 ** q.bits, np.int64)
        hist[1:1 + centroids.size] = cnt[present]
        nonzero = int(cnt[present][codebook[1:] != 0].sum())
        # quantization error from the per-cluster sums (compress_weight sums per weight: equal to rounding)
        cb = codebook[1:].astype(np.float64)
        sq = float(max(np.sum(sxx[present] - 2.0 * cb * sx[present] + cnt[present] * cb * cb), 0.0))
        total = float(cwxxk[-1])
        mse = sq / max(z, 1)
        rel = math.sqrt(sq) / math.sqrt(total) if total > 0 else 0.0
        info = {"init": q.init, "k": int(centroids.size), "reserved_zero": True, "initial": initial.tolist(),
                "iterations": int(n_iter)}
        quant = QuantResult("kmeans", q.bits, None, None, 0, 2 ** q.bits, codebook=codebook,
                            side_bits=32 * int(centroids.size), mse=mse, rel_error=rel, info=info)
        code = TensorCode(codes=None, code_bits=q.bits, alphabet_size=2 ** q.bits, zero_code=0,
                          side_bits=quant.side_bits)
        drop_pages(gxk)  # the survivors' copy (4 bytes each): its pages go outside the GIL (see engine.memory)
        return SweepResult(sizes_from_counts(self.n, z, gaps, code, hist), nonzero, quant)

    def _kmeans_exact(self, q, z: int, T: int, ties: int, gaps: dict) -> Optional[SweepResult]:
        """quantize_kmeans's own computation on the survivors, where the bucket path does not apply: the
        survivors gathered in position order (as quantize_kmeans gathers them), kmeans_1d on them, the
        codebook, counts and error as quantize_kmeans derives them; never the codes or decoded weights of
        the whole tensor. Only up to :data:`EXACT_MAX_SURVIVORS` survivors (else None: compress_weight)."""
        if z > EXACT_MAX_SURVIVORS:
            return None
        keep = np.zeros(self.n, bool)
        mask_from_key(self.keys, np.uint32(T), ties, keep)
        survivors, _ = gather(self.values, keep, z)
        codebook, labels, _, mse, rel, info = shared_values(survivors, 2 ** q.bits - 1, q.init, q.max_iter,
                                                            q.seed, pruned=True)
        hist = np.bincount(labels, minlength=2 ** q.bits)  # code 0 (the pruned zero) stores nothing here
        nonzero = int(hist[1:1 + info["k"]][codebook[1:] != 0].sum())
        quant = QuantResult("kmeans", q.bits, None, None, 0, 2 ** q.bits, codebook=codebook,
                            side_bits=32 * info["k"], mse=mse, rel_error=rel, info=info)
        code = TensorCode(codes=None, code_bits=q.bits, alphabet_size=2 ** q.bits, zero_code=0,
                          side_bits=quant.side_bits)
        return SweepResult(sizes_from_counts(self.n, z, gaps, code, hist), nonzero, quant)

    def held_bytes(self) -> int:
        """The memory this state holds beyond the weight itself (which it views): the magnitude histogram,
        the thresholds found and the bucket groups (for :func:`~explorer.engine.cache.held_bytes`)."""
        m = getattr(self, "_magnitudes", None)
        return 512 + (0 if m is None else m.held_bytes()) + self._groups.nbytes

    def _tie_quota(self, T: int, ties: int) -> np.ndarray:
        """How many of the entries with magnitude key ``T`` are kept, per sign ([negative, positive]): the
        first ``ties`` of them in position order. Inside a bucket the group keeps position order, and all
        the -t entries share one bucket, the +t ones another, so these two numbers say which are kept."""
        tied = self._count(T)
        if ties <= 0:
            return np.zeros(2, np.int64)
        if ties >= tied:  # all of them (no pass needed)
            return np.full(2, tied, np.int64)
        return _first_tied(self.keys, np.uint32(T), ties)[:2]

    def _group_bytes(self, nb: int) -> int:
        """What :meth:`_group` keeps for ``nb`` buckets: 4 bytes per weight and 24 per bucket."""
        return 4 * self.n + 24 * (nb + 1) + 512

    def _finer_group(self, nb: int):
        """``(fnb, group)``: a grouping held for ``fnb`` = nb * 2**j buckets (j >= 1, the coarsest held), or
        None. Its bucket counts summed by runs of 2**j are exactly those of ``nb`` buckets: the scale of
        fnb buckets is 2**j times that of nb (a power of two: exact in floating point), so a value's bucket
        at fnb is ``b * 2**j + r`` (r < 2**j) for its bucket b at nb, clamped ends included. Choosing the
        bucket count counts coarser ones first (:func:`~explorer.engine.methods.kmeans.choose_buckets`):
        those are read from the finer grouping a large layer holds, not grouped again (a pass and 4 bytes a
        weight each, which could not stay beside it)."""
        finer = [f for f in self._groups.keys() if f > nb and f % nb == 0 and (f // nb) & (f // nb - 1) == 0]
        for f in sorted(finer):
            group = self._groups.get(f)
            if group is not None:
                return f, group
        return None

    def _group(self, nb: int):
        """Every weight grouped by its k-means bucket over [min, max] (position order kept inside a
        bucket), with per-bucket sums of x and x² accumulated in that order; 4 bytes per weight (the
        values: a value's magnitude key is its own bits, so no positions are kept), for as many bucket
        counts as fit in :data:`GROUP_BYTES`."""
        hit = self._groups.get(nb)
        if hit is None:
            if self._groups.nbytes + self._group_bytes(nb) > GROUP_BYTES:
                self._drop_groups()  # the old ones would go once this is put: not beside it while it is made
            scale = nb / (self.hi - self.lo)
            hit = _group_kernel(self.values, self.lo, scale, nb)
            self._groups.put(nb, hit)
        return hit


class _Magnitudes:
    """The order statistics of a float32 tensor's magnitude keys (its bits without the sign) without
    sorting them: a cumulative count by bin (the top 15 bits), and the keys of the bins asked about
    gathered and sorted (see the module doc). Thread-safe; the keys must not change."""

    def __init__(self, keys: np.ndarray):
        self.keys, self.n = keys, int(keys.size)
        self._lock = threading.Lock()
        self._cum: Optional[np.ndarray] = None  # cumulative bin counts (MAG_BINS + 1 entries)
        self._zeros = 0  # how many keys are zero (either sign)
        self._ranks: dict = {}  # r -> (key of the r-th smallest magnitude, how many keys are <= it)
        self._equal: dict = {}  # key -> how many magnitude keys equal it

    def held_bytes(self) -> int:
        c = self._cum
        return (0 if c is None else c.nbytes) + 120 * (len(self._ranks) + len(self._equal))

    def cumulative(self) -> np.ndarray:
        with self._lock:
            if self._cum is None:
                self._cum, self._zeros = _magnitude_histogram(self.keys)
            return self._cum

    def ranked(self, ranks) -> dict:
        """r -> (key of the r-th smallest magnitude, how many keys are <= it), for each ``r`` in ``ranks``
        (0 <= r < n): those not found before from the bins they fall in, gathered and sorted in as few
        passes over the tensor as the batches of bins need."""
        cum = self.cumulative()
        found, by_bin = {}, {}
        for r in {int(r) for r in ranks}:
            hit = self._ranks.get(r)
            if hit is not None:
                found[r] = hit
            else:
                by_bin.setdefault(int(np.searchsorted(cum, r, side="right")) - 1, []).append(r)
        batch, members = [], 0
        for b in sorted(by_bin):
            size = int(cum[b + 1] - cum[b])
            if batch and members + size > BATCH_MEMBERS:
                found.update(self._batch(batch, by_bin))
                batch, members = [], 0
            batch.append(b)
            members += size
        if batch:
            found.update(self._batch(batch, by_bin))
        return found

    def _batch(self, bins: list, by_bin: dict) -> dict:
        cum = self.cumulative()
        slot = np.full(MAG_BINS, -1, np.int32)
        sizes = np.array([cum[b + 1] - cum[b] for b in bins], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        slot[np.array(bins, np.int64)] = np.arange(len(bins), dtype=np.int32)
        members = _bin_members(self.keys, slot, offsets)
        ranks, equal = {}, {}
        for i, b in enumerate(bins):
            sub = np.sort(members[offsets[i]:offsets[i + 1]])
            for r in by_bin[b]:
                T = sub[r - int(cum[b])]
                left, right = np.searchsorted(sub, T, side="left"), np.searchsorted(sub, T, side="right")
                ranks[r] = (int(T), int(cum[b]) + int(right))
                equal[int(T)] = int(right - left)
        with self._lock:
            if len(self._ranks) + len(ranks) > RANKS_KEPT:
                self._ranks.clear()
                self._equal.clear()
            self._ranks.update(ranks)
            self._equal.update(equal)
        return ranks

    def threshold(self, k: int):
        """(T, ties): see :meth:`TensorSweep.threshold`."""
        r = self.n - k
        hit = self._ranks.get(r)
        T, at_most = hit if hit is not None else self.ranked([r])[r]
        return T, k - (self.n - at_most)

    def count(self, key: int) -> int:
        """How many magnitude keys equal ``key`` (a threshold :meth:`threshold` found, or zero)."""
        if key == 0:
            self.cumulative()
            return self._zeros
        hit = self._equal.get(key)
        if hit is None:  # not a threshold found: count its bin's members
            b = key >> MAG_SHIFT
            cum = self.cumulative()
            slot = np.full(MAG_BINS, -1, np.int32)
            slot[b] = 0
            members = _bin_members(self.keys, slot, np.array([0, cum[b + 1] - cum[b]], np.int64))
            hit = int(np.count_nonzero(members == np.uint32(key)))
        return hit


# ------------------------------------------------------------------------------------------ kernels


@njit(cache=True, nogil=True)
def _magnitude_histogram(keys):
    """The magnitude keys' cumulative counts by bin (key >> MAG_SHIFT; MAG_BINS + 1 entries, from 0) and
    how many keys are zero."""
    cum = np.zeros(MAG_BINS + 1, np.int64)
    zeros = 0
    for i in range(keys.size):
        m = keys[i] & np.uint32(0x7FFFFFFF)
        cum[(m >> np.uint32(MAG_SHIFT)) + 1] += 1
        if m == 0:
            zeros += 1
    for b in range(MAG_BINS):
        cum[b + 1] += cum[b]
    return cum, zeros


@njit(cache=True, nogil=True)
def _bin_members(keys, slot, offsets):
    """The magnitude keys of the bins whose ``slot`` is not -1, those of slot s at offsets[s]..offsets[s+1]
    (in position order)."""
    out = np.empty(offsets[-1], np.uint32)
    pos = offsets[:-1].copy()
    for i in range(keys.size):
        m = keys[i] & np.uint32(0x7FFFFFFF)
        s = slot[m >> np.uint32(MAG_SHIFT)]
        if s >= 0:
            out[pos[s]] = m
            pos[s] += 1
    return out


@njit(cache=True, nogil=True)
def _group_kernel(values, lo, scale, nb):
    """Counting sort of the values by bucket (see TensorSweep._group). The buckets are computed again in
    the second pass rather than kept: 2 bytes a weight less at the peak (205 MB on VGG-16's largest layer)."""
    n = values.size
    start = np.zeros(nb + 1, np.int64)
    S = np.zeros(nb)
    SS = np.zeros(nb)
    for i in range(n):
        v = np.float64(values[i])
        b = bucket_of(v, lo, scale, nb)
        start[b + 1] += 1
        S[b] += v
        SS[b] += v * v
    for b in range(nb):
        start[b + 1] += start[b]
    pos = start[:-1].copy()
    gx = np.empty(n, np.float32)  # exact: the weights are float32
    for i in range(n):
        b = bucket_of(np.float64(values[i]), lo, scale, nb)
        p = pos[b]
        gx[p] = values[i]
        pos[b] = p + 1
    return gx, start, S, SS


@njit(cache=True, nogil=True)
def _first_tied(keys, T, ties):
    """[negative, positive, last position] of the first ``ties`` entries whose magnitude key is T, in
    position order (the ones prune._select_key keeps): how many of each sign, and where the last one is."""
    out = np.zeros(3, np.int64)
    m = 0
    for i in range(keys.size):
        key = keys[i]
        if (key & np.uint32(0x7FFFFFFF)) == T:
            out[1 - np.int64(key >> np.uint32(31))] += 1
            out[2] = i
            m += 1
            if m == ties:
                break
    return out


@njit(cache=True, nogil=True)
def _kept_in(gkeys, start, T, quota, b):
    """Survivors in bucket b (``gkeys``: the grouped values' bits, in position order inside a bucket;
    ``quota``: see TensorSweep._tie_quota)."""
    m = 0
    seen = np.zeros(2, np.int64)
    for p in range(start[b], start[b + 1]):
        m += _kept(gkeys[p], T, quota, seen)
    return m


@njit(cache=True, nogil=True)
def _kept(bits, T, quota, seen):
    """Whether the entry with these bits survives; ``seen`` counts the tied entries met so far, per sign."""
    key = bits & np.uint32(0x7FFFFFFF)
    if key != T:
        return key > T
    sign = 1 - np.int64(bits >> np.uint32(31))
    seen[sign] += 1
    return seen[sign] <= quota[sign]


@njit(cache=True, nogil=True)
def _survivors(gx, gkeys, start, S, SS, T, quota, b1, b2):
    """The survivors grouped by bucket (gx without the pruned band) and their prefix arrays, exactly as
    kmeans._bucket_count computes them for the survivors: per-bucket sums in position order, then a
    running sum over the buckets."""
    nb = start.size - 1
    kept_b1 = _kept_in(gkeys, start, T, quota, b1)
    kept_b2 = _kept_in(gkeys, start, T, quota, b2) if b2 != b1 else 0
    z = start[b1] + kept_b1 + kept_b2 + (start[nb] - start[b2 + 1])
    gxk = np.empty(z, np.float32)  # exact (float32 weights), half of float64's memory; Lloyd reads them as float64
    startk = np.zeros(nb + 1, np.int64)
    cwk = np.zeros(nb + 1)
    cwxk = np.zeros(nb + 1)
    cwxxk = np.zeros(nb + 1)
    j = 0
    for b in range(nb):
        if b < b1 or b > b2:
            for p in range(start[b], start[b + 1]):
                gxk[j] = gx[p]
                j += 1
            cnt = start[b + 1] - start[b]
            s = S[b]
            ss = SS[b]
        elif b == b1 or b == b2:
            cnt = 0
            s = 0.0
            ss = 0.0
            seen = np.zeros(2, np.int64)
            for p in range(start[b], start[b + 1]):
                if _kept(gkeys[p], T, quota, seen):
                    v = np.float64(gx[p])
                    gxk[j] = gx[p]
                    j += 1
                    cnt += 1
                    s += v
                    ss += v * v
        else:
            cnt = 0
            s = 0.0
            ss = 0.0
        startk[b + 1] = cnt
        cwxk[b + 1] = s
        cwxxk[b + 1] = ss
    for b in range(nb):
        startk[b + 1] += startk[b]
        cwxk[b + 1] += cwxk[b]
        cwxxk[b + 1] += cwxxk[b]
        cwk[b + 1] = float(startk[b + 1])
    return gxk, startk, cwk, cwxk, cwxxk


@njit(cache=True, nogil=True)
def _cluster_sums(gx, start, cwx, cwxx, bounds, lo, scale, nb):
    """Count, sum and sum of squares of each cluster: values <= bounds[j] (and above bounds[j-1]) belong to
    cluster j, as kmeans._assign_lut labels them."""
    k = bounds.size + 1
    cnt = np.zeros(k, np.int64)
    sx = np.zeros(k)
    sxx = np.zeros(k)
    pc = 0
    px = 0.0
    pxx = 0.0
    for j in range(k):
        if j < k - 1:
            t = bounds[j]
            b = bucket_of(t, lo, scale, nb)
            C = start[b]
            X = cwx[b]
            XX = cwxx[b]
            for p in range(start[b], start[b + 1]):
                if gx[p] <= t:
                    C += 1
                    X += gx[p]
                    XX += gx[p] * gx[p]
        else:
            C = start[nb]
            X = cwx[nb]
            XX = cwxx[nb]
        cnt[j] = C - pc
        sx[j] = X - px
        sxx[j] = XX - pxx
        pc = C
        px = X
        pxx = XX
    return cnt, sx, sxx
