"""Running compressed: layers that compute on their stored form instead of a dense decode.

A loaded ``.cexp`` decodes every tensor to dense float32, so a model 28x smaller on disk is as large in
memory and element pruning buys no speed. :func:`compressed_runtime` replaces each ``nn.Linear`` (and
1x1 ``nn.Conv2d``) whose stored weight pays off by a :class:`CompressedLinear` that keeps

- the weight's surviving entries in compressed sparse rows (CSR: row starts, column indices as uint16
  where the inputs fit, else int32) with float32 values — or, for a codebook quantizer (k-means, binary,
  ternary), with one uint8 code per entry and the codebook, as EIE computes on the shared-weight indices
  (Han et al. 2016); or, unpruned, the dense matrix of uint8 codes;
- and multiplies on it: torch's sparse CSR matmul, or this module's numba kernels (row-parallel, nogil),
  which read the codes through the codebook without building the dense matrix.

Which form a layer takes is measured, not set by a threshold: each candidate and the dense layer run the
layer's shape on a random input of the batch asked for (the median of a few runs after a warm-up), and the
fastest wins; the dense layer stays unless a candidate beats it by :data:`MARGIN`. With ``prefer="memory"``
the smallest form is taken when it is smaller than the dense weight, even if slower (where memory matters
more). Structured-pruned and low-rank layers are already small dense layers: they, and everything else,
stay normal torch modules.

Outputs equal the dense decode's within float32 rounding (the sums are in another order). The modules are
for running (inference); they hold no parameters to train.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from numba import njit, prange
from torch import nn

from explorer.engine.measure.metrics import run_model, time_forward
from explorer.engine.progress import report

__all__ = ["CompressedLinear", "compressed_runtime", "Decision", "KERNELS", "MARGIN"]

MARGIN = 0.9  # a candidate replaces the dense layer when it takes at most this share of its time
TIE = 1.05  # forms this close to the fastest count as equally fast: the smallest of them is taken
KERNELS = ("torch-csr", "csr", "csr-codes", "codes")
_RUNS = 7  # timed runs per candidate (after one warm-up)


# ------------------------------------------------------------------------------------------ kernels
def _csr_mv(indptr, indices, values, x, out):
    """out[r] = sum_p values[p] * x[indices[p]] over row r's entries (one input vector); four partial sums,
    so that the adds do not wait on each other."""
    for r in prange(indptr.size - 1):
        a0 = a1 = a2 = a3 = np.float32(0.0)
        p, end = indptr[r], indptr[r + 1]
        while p + 4 <= end:
            a0 += values[p] * x[indices[p]]
            a1 += values[p + 1] * x[indices[p + 1]]
            a2 += values[p + 2] * x[indices[p + 2]]
            a3 += values[p + 3] * x[indices[p + 3]]
            p += 4
        while p < end:
            a0 += values[p] * x[indices[p]]
            p += 1
        out[r] = (a0 + a1) + (a2 + a3)


def _csr_mm(indptr, indices, values, xt, out):
    """out[r, :] = sum_p values[p] * xt[indices[p], :] (xt: the inputs transposed, one column each)."""
    m = xt.shape[1]
    for r in prange(indptr.size - 1):
        for p in range(indptr[r], indptr[r + 1]):
            v = values[p]
            c = indices[p]
            for j in range(m):
                out[r, j] += v * xt[c, j]


def _csr_codes_mv(indptr, indices, codes, book, x, out):
    for r in prange(indptr.size - 1):
        a0 = a1 = a2 = a3 = np.float32(0.0)
        p, end = indptr[r], indptr[r + 1]
        while p + 4 <= end:
            a0 += book[codes[p]] * x[indices[p]]
            a1 += book[codes[p + 1]] * x[indices[p + 1]]
            a2 += book[codes[p + 2]] * x[indices[p + 2]]
            a3 += book[codes[p + 3]] * x[indices[p + 3]]
            p += 4
        while p < end:
            a0 += book[codes[p]] * x[indices[p]]
            p += 1
        out[r] = (a0 + a1) + (a2 + a3)


def _csr_codes_mm(indptr, indices, codes, book, xt, out):
    m = xt.shape[1]
    for r in prange(indptr.size - 1):
        for p in range(indptr[r], indptr[r + 1]):
            v = book[codes[p]]
            c = indices[p]
            for j in range(m):
                out[r, j] += v * xt[c, j]


def _codes_mv(codes, book, x, out):
    """A dense matrix of codes: out[r] = sum_c book[codes[r, c]] * x[c]."""
    for r in prange(codes.shape[0]):
        acc = np.float32(0.0)
        for c in range(codes.shape[1]):
            acc += book[codes[r, c]] * x[c]
        out[r] = acc


def _codes_mm(codes, book, xt, out):
    m = xt.shape[1]
    for r in prange(codes.shape[0]):
        for c in range(codes.shape[1]):
            v = book[codes[r, c]]
            for j in range(m):
                out[r, j] += v * xt[c, j]


def _compiled(fn):
    """(serial, row-parallel) compilations of a kernel: a small layer runs serially (waking the pool's
    threads costs more than its work, and far more on a busy host, where a parallel run waits for a thread
    the scheduler has not run yet). The serial one is a copy under another name: numba's cache is keyed by
    the function's name and line, so the two would share one cache entry (the parallel one then ran serially)."""
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__)
    serial.__qualname__ = fn.__qualname__ + "_serial"
    return njit(cache=True, nogil=True)(serial), njit(cache=True, nogil=True, parallel=True)(fn)


_KERNEL_FNS = {name: _compiled(fn) for name, fn in (
    ("csr_mv", _csr_mv), ("csr_mm", _csr_mm), ("csr_codes_mv", _csr_codes_mv), ("csr_codes_mm", _csr_codes_mm),
    ("codes_mv", _codes_mv), ("codes_mm", _codes_mm))}
PARALLEL_WORK = 1 << 18  # multiply-adds from which a kernel runs on the thread pool


# ------------------------------------------------------------------------------------------ the module
class CompressedLinear(nn.Module):
    """``y = x W^T + b`` with W kept as :func:`compressed_runtime` chose (``kernel``): "torch-csr" (torch's
    sparse CSR tensor), "csr" (CSR, float32 values), "csr-codes" (CSR, uint8 codes into ``book``) or
    "codes" (a dense uint8 matrix of codes). ``conv``: a 1x1 convolution (inputs N x C x H x W) rather
    than a linear layer. For running: no gradients flow through it."""

    def __init__(self, kernel: str, in_features: int, out_features: int, arrays: dict,
                 bias: Optional[torch.Tensor] = None, conv: bool = False):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; one of {', '.join(KERNELS)}")
        self.kernel, self.in_features, self.out_features, self.conv = kernel, in_features, out_features, conv
        for k, v in arrays.items():
            self.register_buffer(k, torch.from_numpy(np.ascontiguousarray(v)))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self._sparse = None
        if kernel == "torch-csr":  # on the buffers themselves (int64, as torch's CSR matmul takes them)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                self._sparse = torch.sparse_csr_tensor(self.indptr, self.indices, self.values,
                                                       (out_features, in_features), check_invariants=False)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, kernel={self.kernel}" + (", 1x1 conv" if self.conv else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            n, c, h, w = x.shape
            y = self._linear(x.permute(0, 2, 3, 1).reshape(-1, c))
            return y.reshape(n, h, w, self.out_features).permute(0, 3, 1, 2)
        lead = x.shape[:-1]
        return self._linear(x.reshape(-1, self.in_features)).reshape(*lead, self.out_features)

    def _linear(self, x2: torch.Tensor) -> torch.Tensor:
        x2 = x2.detach().to(torch.float32)
        if self.kernel == "torch-csr":
            y = torch.sparse.mm(self._sparse, x2.t().contiguous()).t()
        else:
            y = torch.from_numpy(self._numba(x2))
        return y if self.bias is None else y + self.bias

    def _numba(self, x2: torch.Tensor) -> np.ndarray:
        m = x2.shape[0]
        entries = self.codes.numel() if self.kernel == "codes" else self.indices.numel()
        pick = 1 if entries * m >= PARALLEL_WORK else 0
        if self.kernel == "codes":
            name, matrix = "codes", (self.codes.numpy(), self.book.numpy())
        elif self.kernel == "csr-codes":
            name, matrix = "csr_codes", (self.indptr.numpy(), self.indices.numpy(), self.codes.numpy(),
                                         self.book.numpy())
        else:
            name, matrix = "csr", (self.indptr.numpy(), self.indices.numpy(), self.values.numpy())
        if m == 1:
            out = np.empty(self.out_features, np.float32)
            _KERNEL_FNS[name + "_mv"][pick](*matrix, x2.reshape(-1).contiguous().numpy(), out)
            return out.reshape(1, -1)
        out = np.zeros((self.out_features, m), np.float32)
        _KERNEL_FNS[name + "_mm"][pick](*matrix, x2.t().contiguous().numpy(), out)
        return out.T


# ------------------------------------------------------------------------------------------ choosing
@dataclass
class Decision:
    """What :func:`compressed_runtime` chose for one layer, and what it measured (ms per forward pass at
    the batch it was asked for; bytes its weight holds)."""

    layer: str
    chosen: str  # "dense" or a kernel
    times: dict = field(default_factory=dict)  # kernel or "dense" -> ms
    sizes: dict = field(default_factory=dict)  # kernel or "dense" -> bytes
    note: str = ""  # why a faster form was not kept

    def summary(self) -> str:
        ms = ", ".join(f"{k} {v:.3f} ms" for k, v in self.times.items())
        return f"{self.layer}: {self.chosen} ({ms})" + (f"; {self.note}" if self.note else "")


@njit(cache=True, nogil=True)
def _row_counts(positions, values, cols, counts):
    """counts[r + 1] = the nonzero stored entries of row r (``positions`` row-major, increasing)."""
    for i in range(positions.size):
        if values[i] != 0:
            counts[positions[i] // cols + 1] += 1


@njit(cache=True, nogil=True)
def _fill_csr(positions, values, codes, cols, indices, vals_out, codes_out):
    """The nonzero stored entries' columns, float32 values and (where ``codes`` has them) codes, in order."""
    j = 0
    for i in range(positions.size):
        if values[i] != 0:  # the filler entries of a gap stream, and survivors quantized to 0, are not kept
            indices[j] = positions[i] % cols
            vals_out[j] = values[i]
            if codes.size:
                codes_out[j] = codes[i]
            j += 1


def _csr(parts, rows: int, cols: int, coded: bool) -> dict:
    """CSR arrays of a stored weight's nonzero entries, made in two compiled passes (no GIL held, no
    temporaries of the layer's size: a VGG-16 layer has 10 M survivors)."""
    pos = np.arange(rows * cols) if parts.positions is None else np.ascontiguousarray(parts.positions, np.int64)
    values = np.ascontiguousarray(parts.values)
    counts = np.zeros(rows + 1, np.int64)
    _row_counts(pos, values, cols, counts)
    indptr = np.cumsum(counts)
    nnz = int(indptr[-1])
    indices = np.empty(nnz, np.uint16 if cols <= 65535 else np.int32)
    vals = np.empty(nnz, np.float32)
    codes_in = np.ascontiguousarray(parts.codes, np.uint8) if coded else np.zeros(0, np.uint8)
    codes = np.empty(nnz if coded else 0, np.uint8)
    _fill_csr(pos, values, codes_in, cols, indices, vals, codes)
    out = {"indptr": indptr.astype(np.int32 if nnz < 2 ** 31 else np.int64), "indices": indices, "values": vals}
    if coded:
        out["codes"] = codes
    return out


def candidates(parts, rows: int, cols: int) -> dict:
    """kernel -> the arrays of each form the stored weight ``parts``
    (:class:`~explorer.engine.storage.fileformat.decode.WeightParts`) can take. A pruned layer takes the
    sparse forms only (the dense matrix of codes does more work than its sparse rows, in more bytes)."""
    out = {}
    coded = parts.codes is not None and parts.book is not None and parts.book.size <= 256
    pruned = parts.positions is not None or bool(np.any(np.asarray(parts.values) == 0))
    if pruned:
        csr = _csr(parts, rows, cols, coded)
        wide = {k: torch.from_numpy(csr[k]).to(torch.int64).numpy() for k in ("indptr", "indices")}  # (no GIL)
        out["torch-csr"] = dict(wide, values=csr["values"])
        out["csr"] = {k: csr[k] for k in ("indptr", "indices", "values")}
        if coded:
            out["csr-codes"] = {"indptr": csr["indptr"], "indices": csr["indices"], "codes": csr["codes"],
                                "book": parts.book.astype(np.float32)}
    elif coded:
        out["codes"] = {"codes": np.ascontiguousarray(parts.codes, np.uint8).reshape(rows, cols),
                        "book": parts.book.astype(np.float32)}
    return out


def _time(module: nn.Module, x: torch.Tensor) -> float:
    return time_forward(module, x, min_runs=_RUNS, min_seconds=0.0)  # after a warm-up (compiles the kernel)


def _bytes(arrays: dict) -> int:
    return sum(int(np.asarray(a).nbytes) for a in arrays.values())


def choose(name: str, dense: nn.Module, parts, batch: int = 1, prefer: str = "speed"):
    """(module to use, Decision) for one Linear or 1x1 Conv2d ``dense`` whose weight the file stores as
    ``parts``: each candidate timed against the dense layer on a random input of ``batch`` rows (or
    images of 8x8 for a convolution)."""
    conv = isinstance(dense, nn.Conv2d)
    rows, cols = (dense.out_channels, dense.in_channels) if conv else (dense.out_features, dense.in_features)
    x = torch.randn(batch, cols, 8, 8) if conv else torch.randn(batch, cols)
    w = dense.weight
    decision = Decision(name, "dense", {"dense": _time(dense, x)}, {"dense": w.numel() * w.element_size()})
    built = {}
    for kernel, arrays in candidates(parts, rows, cols).items():
        module = CompressedLinear(kernel, cols, rows, arrays, dense.bias, conv=conv)
        built[kernel] = module
        decision.times[kernel] = _time(module, x)
        decision.sizes[kernel] = _bytes(arrays)
    if not built:
        return dense, decision
    if prefer == "memory":
        kernel = min(built, key=lambda k: (decision.sizes[k], decision.times[k]))
        if decision.sizes[kernel] < decision.sizes["dense"]:
            decision.chosen = kernel
    else:  # the fastest; of those within TIE of it (timing noise), the smallest
        fastest = min(decision.times[k] for k in built)
        kernel = min((k for k in built if decision.times[k] <= fastest * TIE), key=lambda k: decision.sizes[k])
        if decision.times[kernel] <= MARGIN * decision.times["dense"]:
            decision.chosen = kernel
    return (built[decision.chosen] if decision.chosen != "dense" else dense), decision


def _applies(module: nn.Module, parent: Optional[nn.Module] = None) -> bool:
    if isinstance(parent, nn.MultiheadAttention):
        return False  # its forward reads out_proj's weight and bias: it never calls the module
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1)
            and module.padding in ((0, 0), "valid") and module.dilation == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros")


def _runs(model: nn.Module, example_input) -> bool:
    try:
        with torch.no_grad():
            run_model(model, example_input)
        return True
    except Exception:  # noqa: BLE001 - any failure means: not with this module replaced
        return False


def compressed_runtime(model: nn.Module, parts: dict, batch: int = 1, prefer: str = "speed",
                       progress=None, example_input=None) -> list:
    """Replace, in ``model`` (in place), each Linear or 1x1 Conv2d whose weight ``parts`` holds (weight
    name -> WeightParts, as the file stores it) by the form :func:`choose` measures fastest (or, with
    ``prefer="memory"``, smallest); a weight shared by several modules is left as it is. With
    ``example_input``, the model is run on it after each replacement, and a layer whose replacement it
    cannot run with (its parent reads the layer's weight instead of calling it) is put back. Returns the
    decisions, one per layer considered."""
    if prefer not in ("speed", "memory"):
        raise ValueError(f"prefer must be 'speed' or 'memory', not {prefer!r}")
    modules = dict(model.named_modules())
    owners: dict = {}
    for name, module in modules.items():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(id(w), []).append(name)
    todo = [(n, m) for n, m in modules.items()
            if n and _applies(m, modules[n.rpartition(".")[0]]) and f"{n}.weight" in parts
            and len(owners.get(id(m.weight), ())) == 1 and m.weight.dtype == torch.float32]
    decisions = []
    for i, (name, module) in enumerate(todo):
        report(progress, i / max(len(todo), 1), f"timing {name}")
        chosen, decision = choose(name, module, parts[f"{name}.weight"], batch, prefer)
        decisions.append(decision)
        if chosen is not module:
            parent_name, _, attr = name.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            setattr(parent, attr, chosen)
            if example_input is not None and not _runs(model, example_input):
                setattr(parent, attr, module)
                decision.chosen, decision.note = "dense", "the model does not run with it replaced"
    report(progress, 1.0, "runtime chosen")
    return decisions
