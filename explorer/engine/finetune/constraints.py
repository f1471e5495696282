"""What stays true of a compressed weight while it trains, one :class:`Constraint` per stored tensor.

- :class:`Masked`: element-pruned weights stay exactly zero. The gradient is masked after every backward
  pass and the mask re-applied after every optimizer step, so neither the gradient nor the optimizer's
  state (momentum, Adam's moments, weight decay) can revive a pruned weight.
- :class:`SharedValues` (k-means): trained quantization (Deep Compression §3.3, Figure 3). Each weight keeps
  its code; the gradient of every weight in a cluster is summed into its centroid, the optimizer moves the
  centroids, and the weights are set to ``centroids[codes]``. The number of distinct values never grows,
  and the reserved zero code (pruned weights) stays 0.
- :class:`Grid` (uniform): a straight-through estimator on a *fixed* grid: the scales and zero points the
  quantizer chose are kept (the file's table does not change), a float copy of the weights ("latent") is
  what the optimizer moves, and every forward pass runs with the latent weights rounded to the grid. Codes
  may change; the sizes are counted again from the final codes.
- :class:`Half` (float16, bfloat16): the same straight-through estimator, rounding to the 16-bit format.
- :class:`Frozen`: quantizers with no trainable table in the file (binary, ternary, registered ones): the
  weights stay as quantized.

Each constraint ends in :meth:`Constraint.result`, the :class:`~explorer.engine.compress.TensorResult` the
file stores for the trained weight: the same mask, and codes and table that decode exactly to it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import torch
from torch import nn

from explorer.engine.compress import TensorResult
from explorer.engine.methods.quantize import quantize_half
from explorer.engine.storage.size import tensor_sizes


class Constraint:
    """A stored tensor ``t`` of the compressed model and its parameter ``param`` in the model being trained."""

    def __init__(self, t: TensorResult, param: nn.Parameter):
        self.t, self.param = t, param
        self.mask = None if t.mask is None else torch.from_numpy(
            np.asarray(t.mask, bool).reshape(tuple(param.shape)).copy())

    def trainable(self) -> list:
        """The tensors the optimizer updates for this weight."""
        return [self.param]

    def forward_values(self) -> None:
        """Before a forward pass: the parameter holds the values the compressed model runs with."""

    def after_backward(self) -> None:
        """After ``backward()``: turn the weight's gradient into the gradient of what is trained."""
        if self.mask is not None and self.param.grad is not None:
            self.param.grad.mul_(self.mask)
        self.trained_values()

    def trained_values(self) -> None:
        """After a forward pass (and its backward): the parameter holds what the optimizer moves again."""

    def after_step(self) -> None:
        """After the optimizer's step: restore the invariant (zeros, shared values, the grid)."""
        if self.mask is not None:
            with torch.no_grad():
                self.param.mul_(self.mask)

    def snapshot(self) -> dict:
        return {"param": self.param.detach().clone()}

    def restore(self, state: dict) -> None:
        with torch.no_grad():
            self.param.copy_(state["param"])

    def result(self) -> TensorResult:
        """The stored form of the trained weight (mask unchanged; values as the parameter now holds them)."""
        return replace(self.t, nonzero=int(torch.count_nonzero(self.param.detach())))


class Masked(Constraint):
    """Pruned weights stay exactly zero; the others train freely (stored as float32)."""


class Frozen(Constraint):
    """A quantized weight whose table the file cannot train: kept as it is."""

    def trainable(self) -> list:
        return []

    def after_backward(self) -> None:
        self.param.grad = None

    def after_step(self) -> None:
        pass


class SharedValues(Constraint):
    """k-means weight sharing: the centroids train, every weight keeps its code."""

    def __init__(self, t: TensorResult, param: nn.Parameter):
        super().__init__(t, param)
        q = t.quant
        self.codes = torch.from_numpy(np.asarray(q.codes, np.int64).reshape(-1).copy())
        self.reserved = q.zero_code if q.info.get("reserved_zero") else None
        self.centroids = nn.Parameter(torch.from_numpy(np.asarray(q.codebook, np.float32).copy()))
        self._write()

    def trainable(self) -> list:
        return [self.centroids]

    def _write(self) -> None:
        with torch.no_grad():
            if self.reserved is not None:
                self.centroids[self.reserved] = 0.0
            self.param.copy_(self.centroids.detach()[self.codes].reshape(self.param.shape).to(self.param.dtype))

    def after_backward(self) -> None:
        g = self.param.grad
        if g is None:
            return
        summed = torch.zeros_like(self.centroids).index_add_(0, self.codes, g.reshape(-1).to(torch.float32))
        if self.reserved is not None:
            summed[self.reserved] = 0.0
        self.centroids.grad = summed if self.centroids.grad is None else self.centroids.grad + summed
        self.param.grad = None

    def after_step(self) -> None:
        self._write()

    def snapshot(self) -> dict:
        return {"centroids": self.centroids.detach().clone()}

    def restore(self, state: dict) -> None:
        with torch.no_grad():
            self.centroids.copy_(state["centroids"])
        self._write()

    def result(self) -> TensorResult:
        q = self.t.quant
        book = self.centroids.detach().numpy().astype(np.float32)
        decoded = self.param.detach().clone()
        new_q = replace(q, codebook=book, decoded=decoded, info=dict(q.info, trained=True))
        return replace(self.t, quant=new_q, nonzero=int(torch.count_nonzero(decoded)))


class Latent(Constraint):
    """A straight-through estimator: a float copy of the weights ("latent") is what the optimizer moves, and
    every forward pass runs with the latent weights as the quantizer stores them (:meth:`rounded`)."""

    def __init__(self, t: TensorResult, param: nn.Parameter):
        super().__init__(t, param)
        self.latent = param.detach().clone()  # the float weights the optimizer moves (start: as stored)
        self._swapped = False

    def rounded(self, latent: torch.Tensor) -> torch.Tensor:
        """The weights the stored form gives for ``latent`` (pruned ones 0)."""
        raise NotImplementedError

    def forward_values(self) -> None:
        if not self._swapped:
            with torch.no_grad():
                self.latent.copy_(self.param)
                self.param.copy_(self.rounded(self.latent))
            self._swapped = True

    def trained_values(self) -> None:
        # the gradient at the rounded weights is applied to the latent ones (straight through)
        if self._swapped:
            with torch.no_grad():
                self.param.copy_(self.latent)
            self._swapped = False

    def snapshot(self) -> dict:
        return {"param": (self.latent if self._swapped else self.param).detach().clone()}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self._swapped = False


class Grid(Latent):
    """Uniform quantization trained with a straight-through estimator; the grid (scales, zero points) fixed."""

    def __init__(self, t: TensorResult, param: nn.Parameter):
        super().__init__(t, param)
        q = t.quant
        self.symmetric = bool(q.info.get("symmetric", True))
        shape = tuple(param.shape)
        rows = shape[0] if (q.info.get("per_channel") and len(shape) >= 2) else 1
        self.rows = rows
        self.scale = torch.from_numpy(np.asarray(q.scales, np.float32).astype(np.float64)).reshape(rows, 1)
        if self.symmetric:
            self.qmax = 2 ** (q.bits - 1) - 1
            self.lo, self.hi, self.zp = -self.qmax, self.qmax, torch.zeros(rows, 1, dtype=torch.float64)
        else:
            self.lo, self.hi = 0, 2 ** q.bits - 1
            self.zp = torch.from_numpy(np.asarray(q.zero_points, np.float64)).reshape(rows, 1)

    def _levels(self, latent: torch.Tensor) -> torch.Tensor:
        x = latent.detach().to(torch.float64).reshape(self.rows, -1)
        return torch.clamp(torch.round(x / self.scale) + self.zp, self.lo, self.hi)

    def _decoded(self, levels: torch.Tensor) -> torch.Tensor:
        q = ((levels - self.zp) * self.scale).reshape(-1)
        if self.mask is not None:
            q = q * self.mask.reshape(-1)
        return q.reshape(self.param.shape).to(self.param.dtype)

    def rounded(self, latent: torch.Tensor) -> torch.Tensor:
        return self._decoded(self._levels(latent))

    def result(self) -> TensorResult:
        q = self.t.quant
        latent = self.latent if self._swapped else self.param.detach()
        levels = self._levels(latent)
        decoded = self._decoded(levels)
        with torch.no_grad():
            self.param.copy_(decoded)
        self._swapped = False
        codes = (levels + (self.qmax if self.symmetric else 0)).to(torch.int64).reshape(-1).numpy().copy()
        if self.mask is not None and q.zero_code is not None:
            codes[~self.mask.reshape(-1).numpy()] = q.zero_code
        keep = np.ones(codes.size, bool) if self.mask is None else self.mask.reshape(-1).numpy()
        w = latent.detach().to(torch.float64).reshape(-1).numpy()
        d = (w - decoded.detach().to(torch.float64).reshape(-1).numpy())[keep]
        norm = float(np.linalg.norm(w[keep]))
        new_q = replace(q, codes=codes, decoded=decoded.clone(), mse=float(np.dot(d, d) / max(int(keep.sum()), 1)),
                        rel_error=float(np.linalg.norm(d)) / norm if norm > 0 else 0.0, info=dict(q.info, trained=True))
        sizes = tensor_sizes(codes.size, self.t.mask, new_q.tensor_code())
        return replace(self.t, quant=new_q, sizes=sizes, nonzero=int(torch.count_nonzero(decoded)))


class Half(Latent):
    """float16 / bfloat16 trained with a straight-through estimator: the latent float32 weights move, every
    forward pass runs with them rounded to the format; the file stores the final rounding's codes."""

    def _quantized(self, latent: torch.Tensor):
        mask = None if self.mask is None else self.mask.reshape(-1).numpy()
        return quantize_half(latent.detach(), mask, self.t.quant.method)

    def rounded(self, latent: torch.Tensor) -> torch.Tensor:
        return self._quantized(latent).decoded

    def result(self) -> TensorResult:
        latent = self.latent if self._swapped else self.param.detach()
        q = replace(self._quantized(latent), info=dict(self.t.quant.info, trained=True))
        with torch.no_grad():
            self.param.copy_(q.decoded)
        self._swapped = False
        sizes = tensor_sizes(q.codes.size, self.t.mask, q.tensor_code())
        return replace(self.t, quant=q, sizes=sizes, nonzero=int(torch.count_nonzero(q.decoded)))


#: how each quantizer's weights train (see the module's docstring); a quantizer not named here is frozen
TRAINERS = {"kmeans": SharedValues, "uniform": Grid, "float16": Half, "bfloat16": Half}


def constraint_for(t: TensorResult, param: nn.Parameter) -> Constraint:
    if t.quant is None:
        return Masked(t, param)
    return TRAINERS.get(t.quant.method, Frozen)(t, param)


def constraints_of(compressed) -> list:
    """One constraint per stored weight tensor of ``compressed`` (tied layers share their owner's)."""
    params = dict(compressed.model.named_parameters(remove_duplicate=False))
    out = []
    for lr in compressed.layers.values():
        for t in lr.tensors:
            param: Optional[nn.Parameter] = params.get(t.name)
            if param is None:
                raise KeyError(t.name)
            out.append(constraint_for(t, param))
    return out

