"""The structured layers a factorisation builds that torch does not have: runnable, trainable, scriptable
``nn.Module`` s with one ``weight`` each (so pruning, quantization, the file and fine-tuning treat them like
any factor), and their multiply-accumulates as their forward runs them.

* :class:`TTCore` -- one core of a tensor-train matrix (Novikov et al. 2015). A ``Linear(n -> m)`` with
  ``n = n_1 ... n_d`` and ``m = m_1 ... m_d`` becomes ``d`` cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``
  (``r_0 = r_d = 1``), ``W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ... G_d[:, i_d, j_d, :]``. The chain
  runs core ``d`` first; each core is one batched matrix product of its ``(r_{k-1} m_k) x (n_k r_k)`` weight
  with the running tensor, viewed as ``(rows, N_<k, n_k r_k, M_>k)`` -- between cores only a reshape, no copy.
* :class:`BlockCirculant` -- a ``Linear(n -> m)`` as a ``ceil(m/b) x ceil(n/b)`` grid of ``b x b`` circulant
  blocks, each defined by one vector (its first column): ``m n / b`` weights instead of ``m n``, run with real
  FFTs (``torch.fft``). One block of size ``max(m, n)`` is Cheng et al. 2015's circulant projection
  (``d`` weights instead of ``d^2``); smaller blocks are Ding et al. 2017's block-circulant layers.

MACs as run (what the model's count and the window show), for ``L`` input rows:

* TTCore: ``L N_<k M_>k (r_{k-1} m_k)(n_k r_k)`` -- the output's elements times the contracted length, which is
  what torch's flop counter sees of the core's ``matmul``.
* BlockCirculant: ``L q`` real FFTs of length ``b`` (the input blocks), ``p q`` (the weight's, once per call),
  ``L p q (b/2 + 1)`` complex products of 4 real MACs each, and ``L p`` inverse FFTs; a real FFT of length ``b``
  counted as ``b log2 b`` real MACs (a radix-2 complex FFT of ``b/2`` points plus its split, to leading order).

References
----------
.. [1] A. Novikov, D. Podoprikhin, A. Osokin, D. Vetrov, "Tensorizing Neural Networks", NeurIPS 2015.
.. [2] Y. Cheng, F. X. Yu, R. S. Feris, S. Kumar, A. Choudhary, S.-F. Chang, "An exploration of parameter
   redundancy in deep networks with circulant projections", ICCV 2015.
.. [3] C. Ding et al., "CirCNN: Accelerating and Compressing Deep Neural Networks Using Block-Circulant Weight
   Matrices", MICRO 2017.
"""

from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

__all__ = ["TTCore", "BlockCirculant", "fft_macs", "trace"]


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with the structured layers as leaves (their forward reshapes by the input's shape,
    which a symbolic trace cannot follow)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (TTCore, BlockCirculant)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> "torch.fx.GraphModule":
    """:func:`torch.fx.symbolic_trace` of ``model``, its tensor-train cores and circulant layers as leaves."""
    graph = _Tracer().trace(model)
    return torch.fx.GraphModule(model, graph, model.__class__.__name__)


def fft_macs(length: int) -> int:
    """Real MACs counted for one real FFT (or inverse) of ``length`` points: ``length log2 length``."""
    return 0 if length <= 1 else int(math.ceil(length * math.log2(length)))


@torch.jit.unused
def _exporting_onnx():
    return torch.onnx.is_in_onnx_export()


class TTCore(nn.Module):
    """One tensor-train core as a layer: maps ``(*, prefix * n * rank * suffix)`` to
    ``(*, prefix * rank_prev * m * suffix)`` by contracting the ``n * rank`` axis with ``weight``
    (``(rank_prev * m) x (n * rank)``, the core ``G[a, i, j, b]`` at row ``a m + i``, column ``j rank + b``).
    The last core of a chain (the one run last) carries the layer's bias."""

    def __init__(self, prefix: int, n: int, rank: int, rank_prev: int, m: int, suffix: int, bias: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.prefix, self.n, self.rank, self.rank_prev, self.m, self.suffix = prefix, n, rank, rank_prev, m, suffix
        self.in_features = prefix * n * rank * suffix
        self.out_features = prefix * rank_prev * m * suffix
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(rank_prev * m, n * rank, **kw))
        self.bias = nn.Parameter(torch.empty(self.out_features, **kw)) if bias else None
        if device is None or torch.device(device).type != "meta":
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(n * rank))
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead: List[int] = list(x.shape[:-1])
        z = x.reshape(-1, self.prefix, self.n * self.rank, self.suffix)
        y = torch.matmul(self.weight, z).reshape(lead + [self.out_features])
        if self.bias is not None:
            y = y + self.bias
        return y

    def macs(self, rows: int) -> int:
        """MACs for ``rows`` input rows: the output's elements times the contracted length."""
        return rows * self.out_features * self.n * self.rank

    def extra_repr(self) -> str:
        return (f"prefix={self.prefix}, n={self.n}, rank={self.rank}, rank_prev={self.rank_prev}, m={self.m}, "
                f"suffix={self.suffix}, bias={self.bias is not None}")


class BlockCirculant(nn.Module):
    """``Linear(in_features -> out_features)`` as a grid of ``block x block`` circulant blocks: ``weight``
    of shape ``(ceil(out/block), ceil(in/block), block)``, row ``P``, column ``Q`` the first column of that
    block, ``C[i, j] = c[(i - j) mod block]``; the input is zero-padded to whole blocks, the output cut back."""

    def __init__(self, in_features: int, out_features: int, block: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.block = in_features, out_features, block
        self.p = -(-out_features // block)
        self.q = -(-in_features // block)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.p, self.q, block, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        if device is None or torch.device(device).type != "meta":
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(in_features))
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if _exporting_onnx():
                # ONNX has no complex tensors: the exported graph multiplies by the expanded matrix (same result)
                return nn.functional.linear(x, self.dense(), self.bias)
        lead: List[int] = list(x.shape[:-1])
        b = self.block
        z = x.reshape(-1, self.in_features)
        if z.shape[0] == 0:  # no rows: the FFT has nothing to transform
            y = x.new_zeros(lead + [self.out_features])
            return y + self.bias if self.bias is not None else y
        work = torch.float64 if x.dtype == torch.float64 else torch.float32  # no half-precision FFT on the CPU
        z = z.to(work)
        pad = self.q * b - self.in_features
        if pad:
            z = nn.functional.pad(z, [0, pad])
        zf = torch.fft.rfft(z.reshape(-1, self.q, b), dim=-1)  # (L, q, b/2 + 1)
        wf = torch.fft.rfft(self.weight.to(work), dim=-1)  # (p, q, b/2 + 1)
        yf = torch.einsum("lqf,pqf->lpf", zf, wf)
        y = torch.fft.irfft(yf, n=b, dim=-1).reshape(-1, self.p * b)[:, : self.out_features]
        y = y.reshape(lead + [self.out_features]).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y

    def macs(self, rows: int) -> int:
        """MACs for ``rows`` input rows (see the module's docstring)."""
        b, p, q = self.block, self.p, self.q
        return (rows * q + p * q + rows * p) * fft_macs(b) + 4 * rows * p * q * (b // 2 + 1)

    def dense(self) -> torch.Tensor:
        """The ``out x in`` matrix this layer multiplies by (for error measures and tests)."""
        b, dev = self.block, self.weight.device
        i = torch.arange(self.out_features, device=dev)
        j = torch.arange(self.in_features, device=dev)
        # C[i, j] = c[i // b, j // b, (i - j) mod b]: only the matrix's own m x n entries, never the padding
        return self.weight[(i // b)[:, None], (j // b)[None, :], (i[:, None] - j[None, :]) % b]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}, "
                f"bias={self.bias is not None}")


def tt_dense(cores: "list[TTCore]") -> torch.Tensor:
    """The ``out x in`` matrix a chain of :class:`TTCore` s (in run order: core d first) multiplies by: the
    cores ``G_k`` (r_{k-1}, m_k, n_k, r_k) contracted along their ranks, O(out x in x rank) memory."""
    g = [c.weight.reshape(c.rank_prev, c.m, c.n, c.rank) for c in reversed(cores)]  # G_1 .. G_d
    t = g[0][0]  # (m_1, n_1, r_1)
    ms, ns = [g[0].shape[1]], [g[0].shape[2]]
    for core in g[1:]:
        t = torch.tensordot(t, core, dims=([t.dim() - 1], [0]))  # (..., m_k, n_k, r_k)
        ms.append(core.shape[1])
        ns.append(core.shape[2])
    t = t.squeeze(-1)  # (m_1, n_1, ..., m_d, n_d)
    d = len(g)
    return t.permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2)).reshape(math.prod(ms), math.prod(ns))

