"""Quantization of one weight tensor: uniform, k-means weight sharing, binary, ternary, half precision.

Every method returns a :class:`QuantResult`: an integer code per weight, the table that decodes codes
to values (codebook, or per-channel scales and zero points), the decoded tensor, and the error. The
file format stores exactly the codes and the table; the size accounting counts exactly those.

Pruned weights (``mask`` False) are excluded from fitting and decode to exactly 0. A method that is
used on a pruned tensor therefore always has a code for 0 (``zero_code``): k-means reserves code 0 for
it and clusters the survivors into the other 2**bits - 1 codes; symmetric uniform has level 0;
asymmetric uniform puts the zero point on an integer; ternary has 0; binary has none (the plan refuses
binary on a pruned layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch
from numba import njit

from explorer.engine.errors import CompressionError
from explorer.engine.memory import drop_pages
from explorer.engine.methods.kmeans import INITS, kmeans_1d
from explorer.engine.methods.quantizers import QUANTIZERS, Quantizer, register  # noqa: F401  (their home)
from explorer.engine.storage.coding import counts
from explorer.engine.storage.size import TensorCode


@dataclass
class QuantResult:
    method: str
    bits: int  # bits per stored code
    codes: np.ndarray  # integers (k-means: uint8, else int64), one per weight (flat, row-major); pruned weights hold zero_code (or 0)
    decoded: torch.Tensor  # the weight tensor the compressed model runs with (same shape/dtype as input)
    zero_code: Optional[int]  # the code that decodes to exactly 0 (None: no such code)
    alphabet_size: int  # number of distinct codes the format allows (2**bits, 3 for ternary)
    codebook: Optional[np.ndarray] = None  # k-means / binary / ternary: value of each code (float32)
    scales: Optional[np.ndarray] = None  # uniform: one per tensor or per output channel (float32)
    zero_points: Optional[np.ndarray] = None  # uniform asymmetric: integer zero point per scale
    side_bits: int = 0  # bits to store the decoding table
    mse: float = 0.0  # mean squared error over the surviving weights
    rel_error: float = 0.0  # ||w - q|| / ||w|| over the surviving weights
    info: dict = field(default_factory=dict)  # method details (init, iterations, initial centroids)

    def tensor_code(self) -> TensorCode:
        return TensorCode(codes=self.codes, code_bits=self.bits, alphabet_size=self.alphabet_size,
                          zero_code=self.zero_code, side_bits=self.side_bits)


def _errors(w: np.ndarray, q: np.ndarray, keep: np.ndarray) -> tuple[float, float]:
    d = (w - q)[keep]
    n = max(int(keep.sum()), 1)
    norm = float(np.linalg.norm(w[keep]))
    return float(np.dot(d, d) / n), (float(np.linalg.norm(d)) / norm if norm > 0 else 0.0)


def _prepare(weight: torch.Tensor, mask):
    w = weight.detach().to(torch.float64).cpu().numpy().reshape(-1)
    if not np.all(np.isfinite(w)):
        raise CompressionError("cannot quantize: the weights contain NaN or infinite values")
    keep = np.ones(w.size, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if keep.size != w.size:
        raise CompressionError(f"mask has {keep.size} entries for a tensor of {w.size}")
    return w, keep


def _finish(weight, q: np.ndarray) -> torch.Tensor:
    np.add(q, 0.0, out=q)  # -0.0 (a level of zero times a negative rounding) is +0.0, as the file decodes it
    return torch.from_numpy(q.reshape(tuple(weight.shape))).to(dtype=weight.dtype, device=weight.device)


def quantize_kmeans(weight: torch.Tensor, mask=None, bits: int = 5, init: str = "linear", max_iter: int = 10_000,
                    seed: int = 0) -> QuantResult:
    """Weight sharing: cluster the surviving weights into shared values (Deep Compression §3).

    With no pruned weight there are 2**bits centroids. With pruned weights, code 0 is the exact zero and
    the survivors get 2**bits - 1 centroids, so pruned positions (and the filler entries of sparse
    storage) decode to 0 with the same b-bit codes. The codebook is stored as float32.
    """
    if not isinstance(init, str) or init not in INITS:
        raise CompressionError(f"unknown k-means init {init!r} (known: {', '.join(INITS)})")
    # Only the survivors are converted to float64 and touched one by one; the result is the same as
    # quantizing the whole float64 tensor (see _prepare / _errors), at a fraction of the memory traffic.
    n = weight.numel()
    flat = weight.detach().reshape(-1)
    keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if keep.size != n:
        raise CompressionError(f"mask has {keep.size} entries for a tensor of {n}")
    nkeep = int(np.count_nonzero(keep))
    pruned = nkeep < n
    k = 2 ** bits - (1 if pruned else 0)
    if not pruned:
        survivors = flat.to(device="cpu", dtype=torch.float64).numpy()
        finite = bool(np.isfinite(survivors).all())
    elif flat.dtype == torch.float32:
        survivors, finite = gather(np.ascontiguousarray(flat.cpu().numpy()), keep, nkeep)
    else:
        finite = bool(torch.isfinite(flat).all())
        survivors = flat.cpu()[torch.from_numpy(keep)].to(torch.float64).numpy()
    if not finite:
        raise CompressionError("cannot quantize: the weights contain NaN or infinite values")
    codebook, labels, zero_code, mse, rel, info = shared_values(survivors, k, init, max_iter, seed, pruned)
    # decoded values: codebook entries (float32 numbers, so the cast to the weight's dtype is the same
    # from float32 as from float64), exact zero where pruned
    codes = np.empty(n, np.uint8 if 2 ** bits <= 256 else np.int64)  # a byte a weight: 102.8 M weights, 103 MB
    decoded = np.empty(n, np.float32)
    _scatter(keep, labels, codebook if codebook.size else np.zeros(1, np.float32), codes, decoded)
    drop_pages(survivors)  # their pages go outside the GIL (see engine.memory): 4-8 and 8 bytes a survivor
    drop_pages(labels)
    q_t = torch.from_numpy(decoded.reshape(tuple(weight.shape))).to(dtype=weight.dtype, device=weight.device)
    return QuantResult("kmeans", bits, codes, q_t, zero_code, 2 ** bits, codebook=codebook,
                       side_bits=32 * info["k"], mse=mse, rel_error=rel, info=info)


def shared_values(survivors: np.ndarray, k: int, init: str, max_iter: int, seed: int, pruned: bool):
    """Weight sharing of ``survivors`` (float64, in position order): k-means with ``k`` centroids stored as
    float32, the centroids no survivor uses dropped. Returns ``(codebook, labels, zero_code, mse,
    rel_error, info)``: with ``pruned``, code 0 of the codebook is the exact zero and the labels start at 1.
    What quantize_kmeans stores, and what the sweep measures without building the whole tensor's codes."""
    if k < 1 or survivors.size == 0:
        centroids = np.zeros(0)
        res = None
        labels = np.zeros(0, np.int64)
    else:
        # the centroids are stored as float32: k-means assigns the weights to them as rounded, so codes and
        # decoded values agree exactly; then the centroids no weight uses are dropped (the codebook stores
        # only what decodes something)
        res = kmeans_1d(survivors, k, init=init, max_iter=max_iter, seed=seed, snap=np.float32)
        centroids, labels = res.centroids, res.labels
        present = counts(labels, centroids.size) > 0  # (numpy's bincount holds the GIL)
        if not present.all():
            centroids = centroids[present]
            labels = (np.cumsum(present) - 1)[labels]  # the rank of each used centroid
        if pruned:
            labels += 1
    if pruned:
        codebook = np.concatenate([[0.0], centroids]).astype(np.float32)
        zero_code = 0
    else:
        codebook = centroids.astype(np.float32)
        exact = np.flatnonzero(codebook == 0)
        zero_code = int(exact[0]) if exact.size else None
    # errors over the survivors: the same arrays and the same numpy reductions as _errors
    # (the differences computed in the array of the gathered levels: one temporary, which drop_pages frees
    # below; survivors - levels would free the levels under the GIL)
    if labels.size:
        d = codebook.astype(np.float64)[labels]
        np.subtract(survivors, d, out=d)
    else:
        d = survivors - 0.0
    nn_ = max(int(survivors.size), 1)
    norm = float(np.linalg.norm(survivors))
    mse, rel = float(np.dot(d, d) / nn_), (float(np.linalg.norm(d)) / norm if norm > 0 else 0.0)
    drop_pages(d)  # 8 bytes a survivor: its pages go outside the GIL (see engine.memory)
    info = {"init": init, "k": int(centroids.size), "reserved_zero": pruned,
            "initial": (res.initial.tolist() if res is not None else []),
            "iterations": (res.n_iter if res is not None else 0)}
    return codebook, labels, zero_code, mse, rel, info


# The loops below run over every weight with a mask that, after magnitude pruning, is in no order: they
# are written without a branch on it (a mispredicted branch per weight costs more than the work).


@njit(cache=True, nogil=True)
def gather(flat, keep, count):
    """flat[keep] as float64, and whether every value of flat (kept or not) is finite."""
    out = np.empty(count + 1)
    j = 0
    bad = 0
    for i in range(flat.size):
        v = flat[i]
        bad += not np.isfinite(v)
        out[j] = v  # overwritten unless kept
        j += keep[i]
    return out[:count], bad == 0


@njit(cache=True, nogil=True)
def _scatter(keep, labels, codebook, codes, decoded):
    """codes[keep] = labels, 0 elsewhere; decoded = codebook[codes] where kept, 0 elsewhere (one pass)."""
    nl = labels.size
    j = 0
    for i in range(keep.size):
        kk = keep[i] and nl > 0
        c = labels[j] if j < nl else 0
        c = c if kk else 0
        codes[i] = c
        decoded[i] = codebook[c] if kk else np.float32(0.0)
        j += kk


def _channel_view(w: np.ndarray, shape, per_channel: bool) -> np.ndarray:
    rows = shape[0] if (per_channel and len(shape) >= 2) else 1
    return w.reshape(rows, -1)


def quantize_uniform(weight: torch.Tensor, mask=None, bits: int = 8, symmetric: bool = True,
                     per_channel: bool = False) -> QuantResult:
    """Uniform (linear) quantization with float32 scales, per tensor or per output channel (dim 0).

    Symmetric: integer levels -Q..Q with Q = 2**(bits-1) - 1, scale = max|w| / Q, code = level + Q.
    Asymmetric: levels 0..2**bits - 1 over [min(w, 0), max(w, 0)], integer zero point, code = level.
    Scales are fitted to the surviving weights; pruned weights decode to 0.
    """
    w, keep = _prepare(weight, mask)
    shape = tuple(weight.shape)
    rows = _channel_view(w, shape, per_channel)
    kept = _channel_view(keep, shape, per_channel)
    masked = np.where(kept, rows, 0.0)
    if symmetric:
        if bits < 2:
            raise CompressionError("symmetric uniform quantization needs at least 2 bits")
        qmax = 2 ** (bits - 1) - 1
        amax = np.abs(masked).max(axis=1)
        scale = (np.where(amax > 0, amax / qmax, 1.0)).astype(np.float32).astype(np.float64)
        level = np.clip(np.rint(rows / scale[:, None]), -qmax, qmax)
        codes = (level + qmax).astype(np.int64)
        q = level * scale[:, None]
        zero_code, zero_points = qmax, None
        side = 32 * scale.size
    else:
        top = 2 ** bits - 1
        lo = np.minimum(masked.min(axis=1), 0.0)
        hi = np.maximum(masked.max(axis=1), 0.0)
        scale = np.where(hi > lo, (hi - lo) / top, 1.0).astype(np.float32).astype(np.float64)
        zp = np.clip(np.rint(-lo / scale), 0, top)
        level = np.clip(np.rint(rows / scale[:, None]) + zp[:, None], 0, top)
        codes = level.astype(np.int64)
        q = (level - zp[:, None]) * scale[:, None]
        zero_points = zp.astype(np.int64)
        # one zero code for the whole tensor only when every channel shares the zero point
        zero_code = int(zp[0]) if np.all(zp == zp[0]) else None
        side = 32 * scale.size + bits * scale.size
    codes = codes.reshape(-1)
    q = q.reshape(-1)
    q[~keep] = 0.0
    if zero_code is not None:
        codes[~keep] = zero_code
    mse, rel = _errors(w, q, keep)
    return QuantResult("uniform", bits, codes, _finish(weight, q), zero_code, 2 ** bits,
                       scales=scale.astype(np.float32), zero_points=zero_points, side_bits=side, mse=mse,
                       rel_error=rel, info={"symmetric": symmetric, "per_channel": per_channel})


def quantize_binary(weight: torch.Tensor, mask=None) -> QuantResult:
    """Binary weights {-a, +a}, a = mean |w| (float32); 1 bit per weight."""
    w, keep = _prepare(weight, mask)
    if not keep.all():
        raise CompressionError("binary quantization cannot represent pruned weights (no zero level); "
                               "use ternary")
    alpha = np.float32(np.abs(w).mean() if w.size else 0.0)
    codebook = np.array([-alpha, alpha], np.float32)
    codes = (w >= 0).astype(np.int64)
    q = codebook.astype(np.float64)[codes]
    mse, rel = _errors(w, q, keep)
    return QuantResult("binary", 1, codes, _finish(weight, q), None, 2, codebook=codebook, side_bits=32,
                       mse=mse, rel_error=rel, info={"alpha": float(alpha)})


def quantize_ternary(weight: torch.Tensor, mask=None) -> QuantResult:
    """Ternary weights {-a, 0, +a} (Li & Liu 2016): threshold t = 0.7 * mean |w| over the surviving
    weights; a = mean |w| of the weights kept above t. Codes 0, 1, 2 = -a, 0, +a (2 bits)."""
    w, keep = _prepare(weight, mask)
    mags = np.abs(w[keep])
    t = 0.7 * mags.mean() if mags.size else 0.0
    big = keep & (np.abs(w) > t)
    alpha = np.float32(np.abs(w[big]).mean() if big.any() else 0.0)
    codebook = np.array([-alpha, 0.0, alpha], np.float32)
    codes = np.where(big, np.where(w > 0, 2, 0), 1).astype(np.int64)
    q = codebook.astype(np.float64)[codes]
    mse, rel = _errors(w, q, keep)
    return QuantResult("ternary", 2, codes, _finish(weight, q), 1, 3, codebook=codebook, side_bits=32,
                       mse=mse, rel_error=rel, info={"alpha": float(alpha), "threshold": float(t)})


HALF_MAX = {"float16": 65504.0, "bfloat16": float(torch.finfo(torch.bfloat16).max)}


def quantize_half(weight: torch.Tensor, mask=None, dtype: str = "float16") -> QuantResult:
    """Half precision: each surviving weight rounded (to nearest, ties to even) to ``dtype`` (``float16``:
    IEEE binary16; ``bfloat16``: a float32's upper 16 bits), its code the 16-bit pattern; pruned weights hold
    code 0 (+0.0). No table. Raises CompressionError where a weight is beyond the format's range."""
    w, keep = _prepare(weight, mask)
    top = float(np.abs(w[keep]).max()) if keep.any() else 0.0
    if top > HALF_MAX[dtype]:
        raise CompressionError(f"cannot store in {dtype}: a weight of magnitude {top:.6g} exceeds its largest "
                               f"value {HALF_MAX[dtype]:.6g}; use bfloat16, kmeans or uniform")
    t = torch.from_numpy(np.where(keep, w, 0.0))
    half = t.to(torch.float16 if dtype == "float16" else torch.bfloat16)
    codes = half.view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    codes[~keep | (codes == 0x8000)] = 0  # a weight that rounds to -0.0 is stored +0.0, as _finish decodes it
    q = half.to(torch.float64).numpy().copy()
    q[~keep] = 0.0
    mse, rel = _errors(w, q, keep)
    return QuantResult(dtype, 16, codes, _finish(weight, q), 0, 1 << 16, side_bits=0, mse=mse, rel_error=rel,
                       info={"dtype": dtype})


def quantize_tensor(weight: torch.Tensor, settings, mask=None) -> QuantResult:
    """Quantize ``weight`` as ``settings`` (a :class:`~explorer.engine.plan.QuantSettings`) say: the one
    entry point the compressor uses, through :data:`QUANTIZERS`."""
    q = QUANTIZERS.get(settings.method)
    if q is None:
        raise CompressionError(f"unknown quantization method {settings.method!r}")
    return q.quantize(weight, mask, settings)


# the built-in methods' quantize functions, bound to the entries :mod:`.quantizers` declares (unless one
# was registered in their place first)
for _name, _fn in {
        "kmeans": lambda w, mask, s: quantize_kmeans(w, mask, s.bits, s.init, s.max_iter, s.seed),
        "uniform": lambda w, mask, s: quantize_uniform(w, mask, s.bits, s.symmetric, s.per_channel),
        "binary": lambda w, mask, s: quantize_binary(w, mask),
        "ternary": lambda w, mask, s: quantize_ternary(w, mask),
        "float16": lambda w, mask, s: quantize_half(w, mask, "float16"),
        "bfloat16": lambda w, mask, s: quantize_half(w, mask, "bfloat16")}.items():
    if QUANTIZERS[_name].quantize is None:
        register(replace(QUANTIZERS[_name], quantize=_fn))


def compare_inits(weight: torch.Tensor, mask=None, bits: int = 5, max_iter: int = 50, seed: int = 0,
                  inits=("forgy", "density", "linear")) -> dict:
    """The centroids and error of each k-means initialisation, before and after k-means.

    Returns ``{init: {"initial": centroids, "final": centroids, "mse_initial": float, "mse_final": float,
    "iterations": int, "top_error": float}}`` (centroids exclude the reserved zero), the data behind Deep
    Compression's Figure 4. ``top_error`` is the largest ``|w - q|`` after k-means over the largest
    :data:`TOP_FRACTION` of the surviving weights by magnitude (at least one weight): how well an init keeps
    the few large weights, which the MSE, an average over all of them, hardly sees.
    """
    flat = weight.detach().reshape(-1).to(torch.float64).cpu().numpy()
    keep = np.ones(flat.size, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    top = _top_positions(flat, keep)
    out = {}
    for init in inits:
        before = quantize_kmeans(weight, mask, bits, init, 0, seed)
        after = quantize_kmeans(weight, mask, bits, init, max_iter, seed)
        reserved = 1 if before.info["reserved_zero"] else 0
        at_top = after.decoded.reshape(-1)[torch.from_numpy(top)].to(torch.float64).cpu().numpy()
        out[init] = {"initial": before.codebook[reserved:].astype(float).tolist(),
                     "final": after.codebook[reserved:].astype(float).tolist(),
                     "mse_initial": before.mse, "mse_final": after.mse,
                     "iterations": after.info["iterations"],
                     "top_error": float(np.abs(flat[top] - at_top).max()) if top.size else 0.0}
    return out


TOP_FRACTION = 0.01  # compare_inits' "top_error": over the largest 1% of the surviving weights by magnitude


def _top_positions(flat: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Positions of the largest :data:`TOP_FRACTION` of the surviving weights by magnitude (at least one)."""
    survivors = np.flatnonzero(keep)
    if survivors.size == 0:
        return survivors
    k = max(1, int(round(TOP_FRACTION * survivors.size)))
    return survivors[np.argpartition(-np.abs(flat[survivors]), k - 1)[:k]]
