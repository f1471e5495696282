"""Element (connection) pruning: zero the weights of smallest magnitude (Han et al. 2015).

Structured pruning (whole filters or input channels) lives in :mod:`explorer.engine.structure`, since
it changes layer shapes and must follow the model's graph.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from .errors import PlanError


def keep_count(numel: int, amount: Union[int, float]) -> int:
    """How many of ``numel`` weights survive pruning by ``amount``.

    A float ``s`` in [0, 0.99] is the fraction removed: ceil((1 - s) * n) survive. An int is the number
    removed (clamped to ``numel``). This is the single place where an amount is turned into a count.
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise PlanError(f"pruning amount must be a number, got {amount!r}")
    if isinstance(amount, int):
        if amount < 0:
            raise PlanError(f"pruning count must be >= 0, got {amount}")
        return max(numel - amount, 0)
    if not 0.0 <= amount <= 0.99:
        raise PlanError(f"pruning fraction must be in [0, 0.99], got {amount}")
    # round (1 - s) * n first so that 0.9 * 100 is not taken as 90.00000000000001
    return min(numel, math.ceil(round((1.0 - amount) * numel, 9)))


def magnitude_mask(weight: torch.Tensor, amount: Union[int, float]) -> np.ndarray:
    """Boolean mask (flat, row-major) keeping the ``keep_count`` weights of largest |w|.

    Ties at the threshold are broken by position (earlier kept first), so the mask is deterministic.
    """
    flat = weight.detach().reshape(-1).abs().to(torch.float64).cpu().numpy()
    n = flat.size
    k = keep_count(n, amount)
    mask = np.zeros(n, dtype=bool)
    if k == 0:
        return mask
    if k == n:
        mask[:] = True
        return mask
    # stable sort by descending magnitude: among equal magnitudes the earlier position wins
    order = np.argsort(-flat, kind="stable")
    mask[order[:k]] = True
    return mask


def threshold_for(weight: torch.Tensor, amount: Union[int, float]) -> float:
    """The magnitude below which weights are pruned at ``amount`` (0 when nothing is pruned)."""
    flat = weight.detach().reshape(-1).abs().to(torch.float64).cpu().numpy()
    k = keep_count(flat.size, amount)
    if k >= flat.size:
        return 0.0
    if k == 0:
        return float(flat.max()) if flat.size else 0.0
    return float(np.partition(flat, flat.size - k)[flat.size - k])
