"""The pruning granularities and the one check of a pruning amount: names and numbers, without numba or
torch (the plan is validated by commands that must answer at once: ``info``, ``--help``). Element pruning
is :mod:`explorer.engine.methods.prune`, structured pruning :mod:`explorer.engine.methods.channels`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from explorer.engine.errors import PlanError

MAX_FRACTION = 0.99
MAX_COUNT = 1 << 40  # a count of weights or channels no layer reaches


@dataclass(frozen=True)
class Granularity:
    """What one pruning granularity removes: single weights (``dim`` None: a mask, the layer keeps its
    shape) or whole slices of the weight along ``dim`` (0: output channels, i.e. filters; 1: input
    channels), which :mod:`explorer.engine.methods.channels` removes from the model's graph."""

    name: str
    dim: Optional[int]
    unit: str  # what a count of it counts
    description: str

    @property
    def structured(self) -> bool:
        return self.dim is not None

    def total(self, weight: torch.Tensor) -> int:
        """How many units of ``weight`` there are to remove."""
        if self.dim is None:
            return weight.numel()
        return weight.shape[self.dim] if weight.dim() > self.dim else 0


# The pruning granularities, declared once: the plan's validation, the CLI's help, the window's
# granularity box and the amount checks read them.
GRANULARITIES = {g.name: g for g in (
    Granularity("element", None, "weights", "the smallest-magnitude weights are zeroed (a mask)"),
    Granularity("filter", 0, "output channels", "whole output channels (filters) are removed"),
    Granularity("channel", 1, "input channels", "whole input channels are removed"),
    Granularity("merge", 0, "neurons", "neurons whose incoming weights have a near twin are merged into it: "
                "removed, their outgoing weights added to the twin's (data-free; Srinivas & Babu 2015)"),
)}


@dataclass(frozen=True)
class Criterion:
    """How pruning ranks what it removes: by the weights alone, or by their effect on the loss estimated from
    data (``data``: :mod:`explorer.engine.methods.saliency` computes it from the calibration data)."""

    name: str
    data: bool
    description: str


# The pruning criteria, declared once: the plan's validation, the CLI's help and the window's criterion box
# read them. For element pruning l1 and l2 both rank single weights by |w|.
CRITERIA = {c.name: c for c in (
    Criterion("l1", False, "magnitude: |w| (a channel: the sum of its |w|)"),
    Criterion("l2", False, "magnitude: |w| (a channel: the root of its summed w^2)"),
    Criterion("obd", True, "Optimal Brain Damage (LeCun 1989): 1/2 h_ii w^2, the curvature h_ii by the Gauss-"
              "Newton diagonal of a squared error on the class scores, E[sum_c (dz_c/dw)^2], on calibration data "
              "(a channel: the sum over its weights)"),
    Criterion("taylor", True, "first-order Taylor (Molchanov 2017): E|g w|, the loss change of removing w, "
              "on calibration data (a channel: the sum over its weights)"),
)}
SALIENCY = tuple(c.name for c in CRITERIA.values() if c.data)


def check_amount(amount, where: str = "pruning") -> Union[int, float]:
    """The one validation of a pruning amount (the plan, element and structured pruning all use it): an int
    is the count removed, 0..2**40; a float (not a bool) the fraction removed, in [0, 0.99]. Raises
    PlanError naming ``where`` (e.g. ``layer 'fc1'``)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or (
            isinstance(amount, float) and not math.isfinite(amount)):
        raise PlanError(f"{where}: prune.amount must be a number, got {amount!r}")
    if isinstance(amount, int) and not 0 <= amount <= MAX_COUNT:
        raise PlanError(f"{where}: prune.amount must be a count in 0..{MAX_COUNT} or a fraction in [0, 0.99], "
                        f"got {amount!r}")
    if isinstance(amount, float) and not 0.0 <= amount <= MAX_FRACTION:
        raise PlanError(f"{where}: prune.amount must be a fraction in [0, 0.99] or a count >= 0, got {amount!r}")
    return amount


__all__ = ["CRITERIA", "Criterion", "GRANULARITIES", "Granularity", "MAX_COUNT", "MAX_FRACTION", "SALIENCY",
           "check_amount"]
