"""Element (connection) pruning: zero the weights of smallest magnitude (Han et al. 2015).

Structured pruning (whole filters or input channels) lives in :mod:`explorer.engine.methods.channels`, since
it changes layer shapes and must follow the model's graph.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from numba import njit

from explorer.engine.errors import PlanError
from explorer.engine.methods.granularities import (GRANULARITIES, MAX_COUNT, MAX_FRACTION,  # noqa: F401
                                                   Granularity, check_amount)


def _kept(total: int, amount: Union[int, float]) -> int:
    if isinstance(amount, int):
        return max(total - amount, 0)
    # round (1 - s) * n first so that 0.9 * 100 is not taken as 90.00000000000001
    return min(total, math.ceil(round((1.0 - amount) * total, 9)))


def removed_count(amount, total: int, where: str = "pruning", unit: str = "weights") -> int:
    """How many of ``total`` units (weights, or channels) ``amount`` removes: a fraction ``s`` keeps
    ``ceil((1 - s) * total)`` (so never all are removed), a count removes that many and must leave one."""
    check_amount(amount, where)
    if isinstance(amount, int) and amount and amount >= total:
        raise PlanError(f"{where}: prune.amount {amount} removes all of its {total} {unit}; give a count below "
                        f"{total} or a fraction")
    return total - _kept(total, amount)


def keep_count(numel: int, amount: Union[int, float]) -> int:
    """How many of ``numel`` weights survive pruning by ``amount`` (checked by :func:`check_amount`): a
    fraction ``s`` keeps ``ceil((1 - s) * n)``; a count removes that many, clamped to ``numel`` (a plan's
    counts are refused before that by :func:`removed_count`, which names the layer)."""
    return _kept(numel, check_amount(amount))


def threshold_at(sorted_abs: np.ndarray, percent: int) -> float:
    """The pruning threshold at ``percent`` % element sparsity of a layer whose magnitudes, ascending, are
    ``sorted_abs``: the smallest kept |w| (0 when nothing is pruned). What the window's threshold lines
    show while the sparsity slider moves, and what :func:`magnitude_mask` then keeps."""
    pruned = sorted_abs.size - keep_count(sorted_abs.size, percent / 100.0)  # keep_count >= 1
    return float(sorted_abs[pruned]) if pruned else 0.0


def sparsity_at(sorted_abs: np.ndarray, t: float) -> int:
    """The element sparsity (whole percent, 0..99) that prunes every |w| < ``t`` of a layer whose
    magnitudes, ascending, are ``sorted_abs`` (float32 magnitudes are counted against the smallest float32
    >= t, so the count is exact)."""
    if sorted_abs.dtype == np.float32:
        t32 = np.float32(t)
        t = t32 if float(t32) >= t else np.nextafter(t32, np.float32(np.inf))
    frac = np.searchsorted(sorted_abs, t, side="left") / sorted_abs.size
    return int(min(max(round(frac * 100), 0), 99))


def magnitude_mask(weight: torch.Tensor, amount: Union[int, float]) -> np.ndarray:
    """Boolean mask (flat, row-major) keeping the ``keep_count`` weights of largest |w|.

    Ties at the threshold are broken by position (earlier kept first), so the mask is deterministic:
    it is the first ``keep_count`` entries of a stable sort by descending magnitude (NaN counts as the
    smallest magnitude).

    Notes
    -----
    No sort: the threshold is the ``keep_count``-th largest magnitude, found by a two-pass radix
    selection on the magnitudes' float32 bit patterns (for non-negative floats the bit pattern orders
    like the value); one more pass keeps everything above it and the earliest ties. O(n).
    """
    n = int(weight.numel())
    k = keep_count(n, amount)
    mask = np.zeros(n, dtype=bool)
    if k == 0:
        return mask
    if k == n:
        mask[:] = True
        return mask
    keys = _magnitude_keys(weight)
    if keys is not None:
        T, ties = _select_key(keys, k)
        if T >= 0:
            mask_from_key(keys, np.uint32(T), ties, mask)
            return mask
    flat = _magnitudes64(weight)
    if not np.isnan(flat).any():
        t = np.partition(flat, n - k)[n - k]  # the k-th largest magnitude
        above = flat > t
        mask[above] = True
        need = k - int(np.count_nonzero(above))
        mask[np.flatnonzero(flat == t)[:need]] = True
        return mask
    # NaN present: a stable sort by descending magnitude puts NaN last
    order = np.argsort(-flat, kind="stable")
    mask[order[:k]] = True
    return mask


def threshold_for(weight: torch.Tensor, amount: Union[int, float]) -> float:
    """The magnitude below which weights are pruned at ``amount`` (0 when nothing is pruned)."""
    n = int(weight.numel())
    k = keep_count(n, amount)
    if k >= n:
        return 0.0
    if k > 0:
        keys = _magnitude_keys(weight)
        if keys is not None:
            T, _ = _select_key(keys, k)
            if T >= 0:
                return float(np.array([T], np.uint32).view(np.float32)[0])
    flat = _magnitudes64(weight)
    if k == 0:
        return float(flat.max()) if flat.size else 0.0
    return float(np.partition(flat, flat.size - k)[flat.size - k])


def _magnitudes64(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().reshape(-1).abs().to(torch.float64).cpu().numpy()


def _magnitude_keys(weight: torch.Tensor):
    """|w| as float32 bit patterns (uint32, sign bit cleared), or None when float32 cannot hold the
    weights exactly (float64 weights take the numpy path)."""
    w = weight.detach()
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    flat = w.reshape(-1).to(device="cpu", dtype=torch.float32)  # exact for half and bfloat16
    return np.ascontiguousarray(flat.numpy()).view(np.uint32)


@njit(cache=True, nogil=True)
def _select_key(keys, k):
    """Key of the k-th largest magnitude (1 <= k <= n) and how many entries equal to it are kept;
    (-1, 0) when a NaN is present (its key exceeds that of +inf)."""
    hist = np.zeros(65536, np.int64)
    for i in range(keys.size):
        key = keys[i] & np.uint32(0x7FFFFFFF)
        if key > np.uint32(0x7F800000):
            return -1, 0
        hist[key >> np.uint32(16)] += 1
    above = 0
    hi = 65535
    while above + hist[hi] < k:
        above += hist[hi]
        hi -= 1
    need = k - above  # entries still to keep from bucket `hi`
    hist2 = np.zeros(65536, np.int64)
    for i in range(keys.size):
        key = keys[i] & np.uint32(0x7FFFFFFF)
        if (key >> np.uint32(16)) == hi:
            hist2[key & np.uint32(0xFFFF)] += 1
    lo = 65535
    while hist2[lo] < need:
        need -= hist2[lo]
        lo -= 1
    return (hi << 16) | lo, need


@njit(cache=True, nogil=True)
def mask_from_key(keys, T, ties, mask):
    taken = 0
    for i in range(keys.size):
        key = keys[i] & np.uint32(0x7FFFFFFF)
        mask[i] = key > T  # no branch: the magnitudes are in no order
        if key == T and taken < ties:  # rare
            mask[i] = True
            taken += 1
