"""Low-rank factorisation: replace one layer by a chain of smaller, real layers.

A weight matrix or convolution kernel that is close to low rank can be written as a product of thin factors.
Each factor becomes an ordinary layer, so the parameter count and the multiply-accumulates really drop
(unlike pruning, nothing needs sparse kernels to pay off).

* ``svd`` -- ``nn.Linear`` and ``nn.Embedding``: truncated SVD ``W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``,
  two layers with ``r (m + n)`` weights instead of ``m n``.
* ``tucker2`` -- ``nn.Conv1d`` / ``nn.Conv2d``: Tucker decomposition on the two channel modes only
  (Kim et al. 2015): a 1x1 conv ``S -> R3``, the spatial conv ``R3 -> R4``, a 1x1 conv ``R4 -> T``.
* ``cp`` -- ``nn.Conv1d`` / ``nn.Conv2d``: CP (PARAFAC) decomposition of the whole kernel (Lebedev et al. 2015):
  a 1x1 conv ``S -> R``, one depthwise conv per spatial axis, a 1x1 conv ``R -> T``.
* ``tt`` -- ``nn.Linear``: a tensor-train matrix (Novikov et al. 2015). ``n = n_1 n_2 n_3`` and
  ``m = m_1 m_2 m_3`` (balanced factors, at most 3 modes), the matrix reshaped to the tensor of modes
  ``(m_k n_k)`` and split by TT-SVD (tensorly's ``tensor_train``) into cores at TT-rank ``r``:
  ``sum_k r_{k-1} m_k n_k r_k`` weights, run as a chain of :class:`~explorer.engine.modules.TTCore` contractions.
* ``circulant`` -- ``nn.Linear``: a grid of ``b x b`` circulant blocks (Cheng et al. 2015 at one block,
  ``b = max(m, n)``; Ding et al. 2017 in blocks), each the least-squares fit of its part of the matrix (the mean
  of each wrapped diagonal), run with FFTs (:class:`~explorer.engine.modules.BlockCirculant`):
  ``ceil(m/b) ceil(n/b) b`` weights. Its "rank" is the block size ``b``: the larger, the fewer weights.

``rank`` follows tensorly: an int is a rank, a float in (0, 1] is the fraction of the layer's weight parameters
to keep, validated in one place (:func:`choose_rank`).

References
----------
.. [1] Y.-D. Kim, E. Park, S. Yoo, T. Choi, L. Yang, D. Shin, "Compression of Deep Convolutional Neural Networks
   for Fast and Low Power Mobile Applications", ICLR 2016 (arXiv 2015).
.. [2] V. Lebedev, Y. Ganin, M. Rakhuba, I. Oseledets, V. Lempitsky, "Speeding-up Convolutional Neural Networks
   Using Fine-tuned CP-Decomposition", ICLR 2015.
.. [3] E. Denton, W. Zaremba, J. Bruna, Y. LeCun, R. Fergus, "Exploiting Linear Structure Within Convolutional
   Networks for Efficient Evaluation", NeurIPS 2014.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Sequence, Union

import tensorly as tl
import torch
from tensorly.decomposition import parafac, partial_tucker, tensor_train
from torch import nn

from explorer.engine.errors import CompressionError, PlanError
from explorer.engine.methods.factorisations import METHODS  # the factorisations, in the order a UI offers them
from explorer.engine.methods.factorisations import MATRIX_METHODS
from explorer.engine.modules import BlockCirculant, TTCore, tt_dense
from explorer.engine.progress import ProgressFn, report

tl.set_backend("pytorch")

__all__ = [
    "METHODS",
    "factorize",
    "choose_rank",
    "break_even_rank",
    "lowrank_params",
    "svd_linear",
    "svd_embedding",
    "tucker2_conv",
    "cp_conv",
    "resolve_method",
    "tt_modes",
    "tt_unfoldings",
    "factor_macs",
]

Rank = Union[int, float, Sequence[int]]

_CONVS = (nn.Conv1d, nn.Conv2d)


# ----------------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------------


def factorize(
    module: nn.Module, method: str, rank: Rank, *, name: Optional[str] = None, progress: ProgressFn = None,
    grow: bool = True,
) -> tuple[nn.Sequential, dict]:
    """Factorise one layer into a chain of smaller layers.

    Parameters
    ----------
    module : nn.Linear, nn.Embedding, nn.Conv1d or nn.Conv2d
        The layer to replace. It is not modified.
    method : {"svd", "tucker2", "cp"}
        ``svd`` for Linear and Embedding, ``tucker2`` or ``cp`` for Conv1d and Conv2d (``groups=1`` only).
    rank : int, float or pair of int
        int: the rank (for ``tucker2``: ``R3 = R4 = rank``); ranks above the layer's maximum are clamped to it.
        float in (0, 1]: the fraction of the layer's weight parameters to keep; the largest rank(s) whose
        weight count is ``<= fraction * original`` are chosen (at least 1).
        pair ``(R3, R4)``: the two Tucker-2 ranks (input side, output side). A sequence as returned by
        :func:`choose_rank` is accepted for every method.
    name : str, optional
        The layer's name in its model, used in error messages.
    progress : callable, optional
        ``progress(fraction, message)``; returning ``False`` cancels (see :mod:`explorer.engine.progress`).
        CP reports after every ALS iteration, the other methods at start and end.
    grow : bool
        Whether the factors may hold more weights than the layer (full-rank factors reproduce it exactly,
        which teaching and tests use). ``False`` (what a plan gets) refuses such a rank, naming the
        break-even rank (:func:`break_even_rank`).

    Returns
    -------
    replacement : nn.Sequential
        Layers with the same input and output shapes as ``module``, on its device, in its dtype and in its
        train/eval mode; the bias (if any) sits on the last layer.
    info : dict
        ``method``; ``ranks`` (list of int: ``[r]`` for svd and cp, ``[R3, R4]`` for tucker2); ``clamped``
        (an int rank exceeded the maximum); ``params_before`` and ``params_after`` (weights only);
        ``bias_params`` (same before and after); ``energy`` (svd: share of the squared singular values kept,
        else ``None``); ``rel_error`` (``||W - W_r||_F / ||W||_F``, 0 for an all-zero weight).

    Raises
    ------
    Cancelled
        ``progress`` asked to stop.
    PlanError
        Unknown method, or a rank that is not an int >= 1, a float in (0, 1] or a valid pair; with
        ``grow=False``, a rank whose factors hold more weights than the layer.
    CompressionError
        The method does not apply to this layer (wrong type, grouped convolution, non-finite weights...).

    Examples
    --------
    >>> small, info = factorize(nn.Linear(256, 128), "svd", 0.25)
    >>> info["params_after"] <= 0.25 * info["params_before"]
    True
    """
    ranks, clamped = _resolve(module, method, rank, name)
    weight = module.weight
    if not grow and _count(module, method, ranks) > weight.numel():
        even = break_even_rank(module, method)
        raise PlanError(
            f"{_label(module, name)}: rank {_rank_text(rank)} gives {method} factors of "
            f"{_count(module, method, ranks):,} weights, more than the layer's {weight.numel():,}; the break-even "
            + (f"rank is {even} (at most {even} keeps it smaller)" if even else "is below rank 1: factorising "
               "this layer cannot make it smaller")
            + (" for equal ranks R3 = R4" if method == "tucker2" and even else ""))
    report(progress, 0.0, f"{method} of {_label(module, name)}")
    with torch.no_grad():
        if method == "svd":
            if isinstance(module, nn.Linear):
                seq, s = _svd_linear(module, ranks[0])
            else:
                seq, s = _svd_embedding(module, ranks[0])
            total = float(s.double().pow(2).sum())
            kept = float(s[: ranks[0]].double().pow(2).sum())
            energy = kept / total if total > 0 else 1.0
            rel_error = math.sqrt(max(total - kept, 0.0) / total) if total > 0 else 0.0
        elif method in ("tt", "circulant"):
            seq = _tt_linear(module, ranks) if method == "tt" else _circulant_linear(module, ranks[0])
            energy = None
            dense = tt_dense(list(seq)) if method == "tt" else seq[0].dense()
            rel_error = _relative_error(weight, dense.double())
        else:
            if method == "tucker2":
                seq = _tucker2_conv(module, ranks)
            else:
                seq = _cp_conv(module, ranks[0], progress=progress)
            energy = None
            rel_error = _relative_error(weight, _effective_kernel(seq, method))
    info = {
        "method": method,
        "ranks": list(ranks),
        "clamped": clamped,
        "params_before": weight.numel(),
        "params_after": _count(module, method, ranks),
        "bias_params": 0 if getattr(module, "bias", None) is None else module.bias.numel(),
        "energy": energy,
        "rel_error": rel_error,
    }
    report(progress, 1.0, f"{method} of {_label(module, name)}")
    return seq, info


def resolve_method(module: nn.Module, method: str) -> str:
    """The factorisation a plan's ``method`` means for ``module``: ``auto`` is svd for Linear and Embedding,
    tucker2 for anything else (a convolution); a named method is itself."""
    if method == "auto":
        return "svd" if isinstance(module, (nn.Linear, nn.Embedding)) else "tucker2"
    return method


def choose_rank(module: nn.Module, method: str, rank: Rank, *, name: Optional[str] = None) -> list[int]:
    """Resolve ``rank`` (int, fraction or pair) into the concrete ranks :func:`factorize` would use.

    Parameters
    ----------
    module : nn.Module
        The layer (see :func:`factorize` for the supported types).
    method : {"svd", "tucker2", "cp"}
    rank : int, float or pair of int
        As in :func:`factorize`.
    name : str, optional
        The layer's name, for error messages.

    Returns
    -------
    list of int
        ``[r]`` for svd and cp, ``[R3, R4]`` for tucker2.

    Notes
    -----
    Maximum ranks: ``min(m, n)`` for svd; ``(S, T)`` for tucker2; for cp, ``prod(shape) / max(shape)`` of the
    kernel (every tensor has a CP decomposition with that many terms). For a fraction, tucker2 keeps
    ``R3 / S ~ R4 / T`` and walks up that path while the count fits the budget.
    """
    return list(_resolve(module, method, rank, name)[0])


def break_even_rank(module: nn.Module, method: str) -> int:
    """The largest rank whose factors hold no more weights than ``module`` (0 if even rank 1 holds more):
    ``floor(m n / (m + n))`` for svd, ``floor(S T k / (S + T + sum k))`` for cp, for tucker2 the largest
    ``R3 = R4 = r`` (each capped at its mode's size) with ``S r + k r^2 + T r <= S T k``, and for tt the largest
    TT-rank whose cores hold no more. Every block size of circulant holds at most the layer's weights (block 1
    is the dense matrix): its largest, ``max(m, n)``."""
    _check(module, method, None)
    numel = module.weight.numel()
    if method == "circulant":  # counts do not fall monotonically with the block: the largest that fits
        fit = [b for b in range(1, _max_ranks(module, method)[0] + 1) if _count(module, method, [b]) <= numel]
        return max(fit) if fit else 0
    if method == "tt":
        best = 0
        for r in range(1, max(_max_ranks(module, method)) + 1):
            if _count(module, method, _clamped(module, method, r)) > numel:
                break
            best = r
        return best
    if method == "tucker2":
        top = _max_ranks(module, method)
        best = 0
        for r in range(1, max(top) + 1):
            if _count(module, method, [min(r, top[0]), min(r, top[1])]) > numel:
                break
            best = r
        return best
    return numel // _count(module, method, [1])  # svd and cp counts are linear in the rank


def _rank_text(rank) -> str:
    return str(list(rank)) if isinstance(rank, (tuple, list)) else f"{rank:g}" if isinstance(rank, float) else str(rank)


def lowrank_params(module: nn.Module, method: str, ranks: Rank, *, name: Optional[str] = None) -> int:
    """Number of weights of the factorised layer (biases excluded).

    Parameters
    ----------
    module : nn.Module
        The original layer.
    method : {"svd", "tucker2", "cp"}
    ranks : int, float or sequence of int
        As in :func:`factorize`.
    name : str, optional
        The layer's name, for error messages.

    Returns
    -------
    int
        svd: ``r (m + n)``; tucker2: ``S R3 + K R3 R4 + T R4`` with ``K`` the kernel area;
        cp: ``R (S + k_1 + ... + k_d + T)`` (``R (S + 2D + T)`` for a square ``D x D`` kernel).
    """
    ranks, _ = _resolve(module, method, ranks, name)
    return _count(module, method, ranks)


def svd_linear(linear: nn.Linear, rank: int, *, name: Optional[str] = None) -> nn.Sequential:
    """Replace ``Linear(n -> m)`` by ``Linear(n -> r, bias=False)`` then ``Linear(r -> m)``.

    Parameters
    ----------
    linear : nn.Linear
    rank : int
        Clamped to ``min(m, n)``.
    name : str, optional
        The layer's name, for error messages.

    Returns
    -------
    nn.Sequential
        ``W ~ U_r S_r V_r^T`` with ``sqrt(S_r)`` split onto both factors; the bias goes to the second layer.
    """
    if not isinstance(linear, nn.Linear):
        raise CompressionError(f"svd_linear needs an nn.Linear, got {_label(linear, name)}")
    ranks, _ = _resolve(linear, "svd", rank, name)
    with torch.no_grad():
        return _svd_linear(linear, ranks[0])[0]


def svd_embedding(emb: nn.Embedding, rank: int, *, name: Optional[str] = None) -> nn.Sequential:
    """Replace ``Embedding(num, dim)`` by ``Embedding(num, r)`` then ``Linear(r -> dim, bias=False)``.

    Parameters
    ----------
    emb : nn.Embedding
        ``max_norm`` must be unset (its renormalisation of looked-up rows cannot be reproduced by factors).
    rank : int
        Clamped to ``min(num, dim)``.
    name : str, optional
        The layer's name, for error messages.

    Returns
    -------
    nn.Sequential
    """
    if not isinstance(emb, nn.Embedding):
        raise CompressionError(f"svd_embedding needs an nn.Embedding, got {_label(emb, name)}")
    ranks, _ = _resolve(emb, "svd", rank, name)
    with torch.no_grad():
        return _svd_embedding(emb, ranks[0])[0]


def tucker2_conv(conv: nn.Module, ranks: Union[int, Sequence[int]], *, name: Optional[str] = None) -> nn.Sequential:
    """Tucker-2 factorisation of a convolution (Kim et al. 2015).

    Parameters
    ----------
    conv : nn.Conv1d or nn.Conv2d
        With ``groups=1``.
    ranks : int or pair of int
        ``(R3, R4)``: ranks of the input-channel and output-channel modes; an int means ``R3 = R4``.
        Clamped to ``(S, T)``.
    name : str, optional
        The layer's name, for error messages.

    Returns
    -------
    nn.Sequential
        1x1 conv ``S -> R3``; conv ``R3 -> R4`` with the original kernel size, stride, padding, dilation and
        padding mode; 1x1 conv ``R4 -> T`` with the original bias.

    Notes
    -----
    Computed with :func:`tensorly.decomposition.partial_tucker` on modes (0, 1) of the ``T x S x k...`` kernel
    (HOOI, SVD initialisation), so the factors are orthonormal and full ranks ``(S, T)`` reproduce the layer.
    """
    ranks, _ = _resolve(conv, "tucker2", ranks, name)
    with torch.no_grad():
        return _tucker2_conv(conv, ranks)


def cp_conv(
    conv: nn.Module,
    rank: int,
    *,
    n_iter_max: int = 300,
    tol: float = 1e-8,
    random_state: int = 0,
    name: Optional[str] = None,
    progress: ProgressFn = None,
) -> nn.Sequential:
    """CP factorisation of a convolution (Lebedev et al. 2015).

    Parameters
    ----------
    conv : nn.Conv1d or nn.Conv2d
        With ``groups=1``.
    rank : int
        Number of rank-one terms ``R``; clamped to ``prod(shape) / max(shape)`` of the kernel.
    n_iter_max, tol : int, float
        Passed to :func:`tensorly.decomposition.parafac` (ALS with line search, SVD initialisation).
    random_state : int
        Seed for the parts of the SVD initialisation that need random columns (rank above a mode's size).
    name : str, optional
        The layer's name, for error messages.
    progress : callable, optional
        Called after every ALS iteration with the fraction of ``n_iter_max`` done; returning ``False`` cancels.

    Returns
    -------
    nn.Sequential
        Conv2d: 1x1 ``S -> R``; ``k_h x 1`` depthwise; ``1 x k_w`` depthwise; 1x1 ``R -> T`` with the bias.
        Conv1d: 1x1 ``S -> R``; ``k`` depthwise; 1x1 ``R -> T``. Stride, padding, dilation and padding mode of
        each spatial axis go to that axis's depthwise conv.

    Notes
    -----
    ALS may converge slowly or to a local minimum; the result is deterministic for a given ``random_state``.
    The decomposition runs in float64: in float32 ALS's error estimate drowns in rounding and it stops early.
    An ALS iteration costs about ``R * T * S * K`` operations; a 128x128x3x3 kernel at R=64 takes
    ~30 ms each on two CPU cores, so ``progress`` (which can cancel) matters for large layers.
    The scale of every rank-one term is shared evenly by its factors.
    """
    ranks, _ = _resolve(conv, "cp", rank, name)
    with torch.no_grad():
        return _cp_conv(
            conv, ranks[0], n_iter_max=n_iter_max, tol=tol, random_state=random_state, progress=progress
        )


# ----------------------------------------------------------------------------------------------------------------
# Validation and rank resolution: the one place where rank arguments are checked
# ----------------------------------------------------------------------------------------------------------------


def _label(module: nn.Module, name: Optional[str]) -> str:
    kind = type(module).__name__
    return f"layer '{name}' ({kind})" if name else f"{kind} layer"


def _check(module: nn.Module, method: str, name: Optional[str]) -> None:
    """Raise if ``method`` cannot factorise ``module``."""
    label = _label(module, name)
    if not isinstance(method, str) or method not in METHODS:
        raise PlanError(f"{label}: unknown low-rank method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(module, (nn.Linear, nn.Embedding)):
        if method not in MATRIX_METHODS or (method != "svd" and not isinstance(module, nn.Linear)):
            raise CompressionError(
                f"{label}: {method} factorises "
                + ("convolution kernels (Conv1d, Conv2d)" if method not in MATRIX_METHODS else "Linear layers")
                + f"; use 'svd' for a {type(module).__name__}"
            )
    elif isinstance(module, _CONVS):
        if method in MATRIX_METHODS:
            raise CompressionError(
                f"{label}: {method} factorises "
                + ("Linear and Embedding weight matrices" if method == "svd" else "Linear layers' matrices")
                + f"; use 'tucker2' or 'cp' for a {type(module).__name__}"
            )
        if module.groups != 1:
            raise CompressionError(
                f"{label}: a grouped or depthwise convolution (groups={module.groups}) cannot be factorised by "
                f"{method}: each filter sees only the channels of its own group, so the kernel has no full "
                f"output x input channel structure to decompose"
            )
    else:
        raise CompressionError(
            f"{label}: low-rank factorisation supports Linear and Embedding (svd) and Conv1d and Conv2d "
            f"(tucker2, cp), not {type(module).__name__}"
        )
    weight = module.weight
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise CompressionError(f"{label}: the weight is not initialised yet (lazy module); run one forward pass first")
    if not weight.is_floating_point():
        raise CompressionError(f"{label}: weight dtype {weight.dtype} is not a floating-point type")
    if not bool(torch.isfinite(weight).all()):
        raise CompressionError(f"{label}: the weight contains NaN or infinite values")
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        raise CompressionError(
            f"{label}: max_norm={module.max_norm} renormalises looked-up rows, which a factorised embedding "
            f"cannot reproduce"
        )
    if method == "tt":
        out_f, in_f = weight.shape
        if len(tt_modes(out_f, in_f)[0]) < 2:
            which = [f"{n} ({what})" for n, what in ((in_f, "inputs"), (out_f, "outputs")) if _prime_count(n) < 2]
            raise CompressionError(
                f"{label}: a tensor train needs the inputs and the outputs to factor into at least 2 modes each; "
                f"{' and '.join(which)} {'is' if len(which) == 1 else 'are'} prime or 1")


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def _prime_count(n: int) -> int:
    return len(_prime_factors(n))


def _balanced(n: int, d: int) -> list[int]:
    """``n`` as ``d`` factors as equal as its primes allow (largest primes placed first), ascending."""
    modes = [1] * d
    for p in sorted(_prime_factors(n), reverse=True):
        modes[modes.index(min(modes))] *= p
    return sorted(modes)


def tt_modes(out_features: int, in_features: int) -> tuple[list[int], list[int]]:
    """The modes ``(m_1..m_d), (n_1..n_d)`` a tensor train of a ``Linear(in -> out)`` uses: ``d`` the fewest of
    3 and the two numbers' prime-factor counts, each number split into ``d`` balanced factors, ascending."""
    d = min(3, _prime_count(out_features), _prime_count(in_features))
    if d < 1:
        return [out_features], [in_features]
    return _balanced(out_features, d), _balanced(in_features, d)


def tt_unfoldings(weight: torch.Tensor) -> list[torch.Tensor]:
    """The matrices TT-SVD cuts, one per bond: the ``(m_1 n_1 .. m_k n_k) x (rest)`` unfoldings of a Linear's
    weight as the tensor of modes ``(m_k n_k)`` (float64)."""
    t = _tt_tensor(weight)
    sizes = list(t.shape)
    return [t.reshape(math.prod(sizes[: k + 1]), -1) for k in range(len(sizes) - 1)]


def _tt_tensor(weight: torch.Tensor) -> torch.Tensor:
    """``W[(i_1..i_d), (j_1..j_d)]`` as the tensor of modes ``(m_k n_k)`` (output and input indices interleaved),
    float64: what TT-SVD splits."""
    ms, ns = tt_modes(*weight.shape)
    d = len(ms)
    t = weight.detach().double().reshape(*ms, *ns).permute(*[a for k in range(d) for a in (k, d + k)])
    return t.reshape([m * n for m, n in zip(ms, ns)])


def _tt_bounds(module: nn.Module) -> list[int]:
    """The largest TT-rank of each bond ``r_1..r_{d-1}``: the smaller side of that unfolding."""
    ms, ns = tt_modes(*module.weight.shape)
    sizes = [m * n for m, n in zip(ms, ns)]
    return [min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1:])) for k in range(len(sizes) - 1)]


def _clamped(module: nn.Module, method: str, r: int) -> list[int]:
    ranks = [min(r, t) for t in _max_ranks(module, method)]
    return _tt_feasible(module, ranks) if method == "tt" else ranks


def factor_macs(module: nn.Module, method: str, ranks: Sequence[int], rows: int) -> Optional[int]:
    """MACs of the factors of a Linear layer at ``ranks`` for ``rows`` input rows, as they run (svd:
    ``rows r (m + n)``; tt and circulant: their modules' counts); None for another layer or method."""
    if not isinstance(module, nn.Linear) or method not in MATRIX_METHODS:
        return None
    out_f, in_f = module.weight.shape
    if method == "svd":
        return rows * ranks[0] * (out_f + in_f)
    if method == "circulant":
        return BlockCirculant(in_f, out_f, ranks[0], device="meta").macs(rows)
    return sum(core.macs(rows) for core in _tt_cores(out_f, in_f, ranks, False, "meta", None))


def _max_ranks(module: nn.Module, method: str) -> list[int]:
    shape = tuple(module.weight.shape)
    if method == "svd":
        return [min(shape)]
    if method == "tt":
        return _tt_bounds(module)
    if method == "circulant":
        return [max(shape)]
    if method == "tucker2":
        return [shape[1], shape[0]]  # (S, T)
    return [max(1, math.prod(shape) // max(shape))]


def _count(module: nn.Module, method: str, ranks: Sequence[int]) -> int:
    shape = tuple(module.weight.shape)
    if method == "svd":
        return ranks[0] * (shape[0] + shape[1])
    if method == "circulant":
        b = ranks[0]
        return -(-shape[0] // b) * -(-shape[1] // b) * b
    if method == "tt":
        ms, ns = tt_modes(shape[0], shape[1])
        bonds = [1, *ranks, 1]
        return sum(bonds[k] * m * n * bonds[k + 1] for k, (m, n) in enumerate(zip(ms, ns)))
    out_ch, in_ch, kernel = shape[0], shape[1], shape[2:]
    if method == "tucker2":
        r3, r4 = ranks
        return in_ch * r3 + math.prod(kernel) * r3 * r4 + out_ch * r4
    return ranks[0] * (in_ch + sum(kernel) + out_ch)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _resolve(module: nn.Module, method: str, rank: Rank, name: Optional[str]) -> tuple[list[int], bool]:
    """Validate ``rank`` and return (concrete ranks, clamped)."""
    _check(module, method, name)
    label = _label(module, name)
    top = _max_ranks(module, method)

    if _is_int(rank):
        wanted = [int(rank)] * len(top)
    elif isinstance(rank, numbers.Real) and not isinstance(rank, bool):
        return _from_fraction(module, method, float(rank), top, label), False
    elif isinstance(rank, (tuple, list)) and len(rank) == len(top) and all(_is_int(r) for r in rank):
        wanted = [int(r) for r in rank]
    elif isinstance(rank, (tuple, list)):
        need = ("a pair (R3, R4)" if method == "tucker2" else
                f"{len(top)} TT-ranks (one per bond)" if method == "tt" else "a single int")
        raise PlanError(f"{label}: rank {rank!r} is not valid for {method}: give an int, a fraction or {need}")
    else:
        raise PlanError(f"{label}: rank must be an int >= 1 or a float in (0, 1], got {rank!r}")

    if any(r < 1 for r in wanted):
        raise PlanError(f"{label}: rank must be at least 1, got {rank!r}")
    ranks = [min(r, t) for r, t in zip(wanted, top)]
    if method == "tt":
        ranks = _tt_feasible(module, ranks)
    return ranks, ranks != wanted


def _tt_feasible(module: nn.Module, ranks: Sequence[int]) -> list[int]:
    """TT-ranks TT-SVD can give: bond k at most ``r_{k-1} m_k n_k`` (left to right) and ``r_{k+1} m_{k+1}
    n_{k+1}`` (right to left)."""
    ms, ns = tt_modes(*module.weight.shape)
    sizes = [m * n for m, n in zip(ms, ns)]
    out = list(ranks)
    for k in range(len(out)):
        out[k] = min(out[k], (out[k - 1] if k else 1) * sizes[k])
    for k in reversed(range(len(out))):
        out[k] = min(out[k], (out[k + 1] if k + 1 < len(out) else 1) * sizes[k + 1])
    return out


def _from_fraction(module: nn.Module, method: str, fraction: float, top: list[int], label: str) -> list[int]:
    if not math.isfinite(fraction) or not 0.0 < fraction <= 1.0:
        raise PlanError(f"{label}: a rank fraction must be a finite number in (0, 1], got {fraction!r}")
    budget = fraction * module.weight.numel()
    if method == "circulant":  # the most weights within the budget (ties: the smaller block), else the fewest
        counts = [(_count(module, method, [b]), b) for b in range(1, top[0] + 1)]
        fits = [(c, -b) for c, b in counts if c <= budget]
        if fits:
            return [-max(fits)[1]]
        return [min(counts)[1]]
    if method == "tt":  # the largest TT-rank within the budget (counts never decrease with it)
        best = _clamped(module, method, 1)
        for r in range(2, max(top) + 1):
            ranks = _clamped(module, method, r)
            if _count(module, method, ranks) > budget:
                break
            best = ranks
        return best
    if method == "tucker2":
        best = [1, 1]
        for ranks in _tucker2_path(*top):
            if _count(module, method, ranks) > budget:
                break
            best = ranks
        return best
    per_rank = _count(module, method, [1])  # svd and cp counts are linear in the rank
    r = int(budget // per_rank)
    while r > 0 and r * per_rank > budget:  # guard against float rounding at the boundary
        r -= 1
    return [min(max(r, 1), top[0])]


def _tucker2_path(in_ch: int, out_ch: int) -> list[list[int]]:
    """Rank pairs ``(R3, R4)`` growing in step with ``(S, T)``, from small to ``(S, T)``; counts never decrease."""
    steps = max(in_ch, out_ch)
    return [
        [max(1, (t * in_ch + steps // 2) // steps), max(1, (t * out_ch + steps // 2) // steps)]
        for t in range(1, steps + 1)
    ]


# ----------------------------------------------------------------------------------------------------------------
# Builders (inputs already validated; callers hold torch.no_grad())
# ----------------------------------------------------------------------------------------------------------------


def _work_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _new(cls: type, *args, like: torch.Tensor, **kwargs) -> nn.Module:
    """A layer on ``like``'s device and dtype, without random initialisation (leaves the global RNG alone)."""
    return nn.utils.skip_init(cls, *args, device=like.device, dtype=like.dtype, **kwargs)


def _set(param: torch.Tensor, value: torch.Tensor, source: torch.Tensor) -> None:
    param.copy_(value.reshape(param.shape))
    param.requires_grad_(source.requires_grad)


def _finish(module: nn.Module, layers: list[nn.Module]) -> nn.Sequential:
    seq = nn.Sequential(*layers)
    last = layers[-1]
    bias = getattr(module, "bias", None)
    if bias is not None:
        _set(last.bias, bias.detach(), bias)
    seq.train(module.training)
    return seq


def _svd(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight (m, n) ~ left (m, r) @ right (r, n)`` with ``sqrt(S)`` on both sides; also the singular values."""
    u, s, vh = torch.linalg.svd(weight.detach().to(_work_dtype(weight)), full_matrices=False)
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r], s


def _svd_linear(linear: nn.Linear, r: int) -> tuple[nn.Sequential, torch.Tensor]:
    w = linear.weight
    out_f, in_f = w.shape
    left, right, s = _svd(w, r)
    first = _new(nn.Linear, in_f, r, bias=False, like=w)
    second = _new(nn.Linear, r, out_f, bias=linear.bias is not None, like=w)
    _set(first.weight, right, w)
    _set(second.weight, left, w)
    return _finish(linear, [first, second]), s


def _svd_embedding(emb: nn.Embedding, r: int) -> tuple[nn.Sequential, torch.Tensor]:
    w = emb.weight
    num, dim = w.shape
    left, right, s = _svd(w, r)
    table = _new(
        nn.Embedding,
        num,
        r,
        padding_idx=emb.padding_idx,
        norm_type=emb.norm_type,
        scale_grad_by_freq=emb.scale_grad_by_freq,
        sparse=emb.sparse,
        like=w,
    )
    proj = _new(nn.Linear, r, dim, bias=False, like=w)
    _set(table.weight, left, w)
    _set(proj.weight, right.T, w)
    return _finish(emb, [table, proj]), s


def _conv_class(conv: nn.Module) -> type:
    return nn.Conv2d if isinstance(conv, nn.Conv2d) else nn.Conv1d


def _tucker2_conv(conv: nn.Module, ranks: Sequence[int]) -> nn.Sequential:
    w = conv.weight
    r3, r4 = ranks
    out_ch, in_ch, *kernel = w.shape
    ones = (1,) * len(kernel)
    work = w.detach().double()  # kernels are small; float64 keeps HOOI's error estimates meaningful
    if bool((work == 0).all()):
        core = work.new_zeros((r4, r3, *kernel))
        u_out, u_in = work.new_zeros((out_ch, r4)), work.new_zeros((in_ch, r3))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (core, (u_out, u_in)), _ = partial_tucker(work, rank=[r4, r3], modes=[0, 1], init="svd", random_state=0)
    cls = _conv_class(conv)
    first = _new(cls, in_ch, r3, 1, bias=False, like=w)
    middle = _new(
        cls,
        r3,
        r4,
        tuple(kernel),
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        padding_mode=conv.padding_mode,
        bias=False,
        like=w,
    )
    last = _new(cls, r4, out_ch, 1, bias=conv.bias is not None, like=w)
    _set(first.weight, u_in.T.reshape(r3, in_ch, *ones), w)
    _set(middle.weight, core, w)
    _set(last.weight, u_out.reshape(out_ch, r4, *ones), w)
    return _finish(conv, [first, middle, last])


def _tt_cores(out_f: int, in_f: int, ranks: Sequence[int], bias: bool, device, dtype) -> list[TTCore]:
    """The :class:`TTCore` chain of a ``Linear(in_f -> out_f)`` at bond ranks ``ranks``, in run order (core
    ``d`` first), the last carrying the bias; weights uninitialised on ``device``."""
    ms, ns = tt_modes(out_f, in_f)
    bonds = [1, *ranks, 1]
    d = len(ms)
    cores = []
    for k in reversed(range(d)):
        cores.append(nn.utils.skip_init(
            TTCore, math.prod(ns[:k]), ns[k], bonds[k + 1], bonds[k], ms[k], math.prod(ms[k + 1:]),
            bias=bias and k == 0, device=device, dtype=dtype))
    return cores


def _tt_linear(linear: nn.Linear, ranks: Sequence[int]) -> nn.Sequential:
    w = linear.weight
    out_f, in_f = w.shape
    ms, ns = tt_modes(out_f, in_f)
    d = len(ms)
    tensor = _tt_tensor(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factors = tensor_train(tensor, rank=[1, *ranks, 1]).factors  # (r_{k-1}, m_k n_k, r_k)
    cores = _tt_cores(out_f, in_f, ranks, linear.bias is not None, w.device, w.dtype)
    for core, k in zip(cores, reversed(range(d))):
        g = factors[k]
        _set(core.weight, g.reshape(g.shape[0] * ms[k], ns[k] * g.shape[2]), w)
    return _finish(linear, cores)


def _circulant_linear(linear: nn.Linear, b: int) -> nn.Sequential:
    """Each ``b x b`` block's least-squares circulant: ``c[k]`` the mean of the block's entries on the wrapped
    diagonal ``(i - j) mod b = k`` that lie inside the matrix (the padding's are free)."""
    w = linear.weight
    out_f, in_f = w.shape
    layer = _new(BlockCirculant, in_f, out_f, b, bias=linear.bias is not None, like=w)
    p, q = layer.p, layer.q
    i, j = torch.arange(out_f)[:, None], torch.arange(in_f)[None, :]
    # the bin (block row, block column, wrapped diagonal) of each of the m x n entries: O(m n), no padding
    slot = (((i // b) * q + j // b) * b + (i - j) % b).reshape(-1)
    sums = torch.zeros(p * q * b, dtype=torch.float64).scatter_add_(0, slot, w.detach().double().reshape(-1))
    counts = torch.zeros(p * q * b, dtype=torch.float64).scatter_add_(0, slot, torch.ones(slot.numel(),
                                                                                        dtype=torch.float64))
    c = (sums / counts.clamp(min=1.0)).reshape(p, q, b)
    _set(layer.weight, c.to(w.dtype), w)
    return _finish(linear, [layer])


def _parafac(
    work: torch.Tensor, r: int, n_iter_max: int, tol: float, random_state: int, progress: ProgressFn
) -> list[torch.Tensor]:
    """CP factors ``[A_T, A_S, A_k1, ...]`` of ``work``, each rank-one term's scale shared evenly."""
    if bool((work == 0).all()):
        return [work.new_zeros((n, r)) for n in work.shape]
    scale = float(work.pow(2).sum())
    done = [0]

    def step(_cp, _error) -> bool:
        done[0] += 1
        report(progress, min(done[0] / (n_iter_max + 1), 1.0), f"CP decomposition at rank {r}")
        return False
    last_problem: Optional[Exception] = None
    for l2_reg in (0.0, 1e-10 * scale, 1e-6 * scale):  # a tiny ridge rescues singular normal equations
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                weights, factors = parafac(
                    work,
                    rank=r,
                    init="svd",
                    n_iter_max=n_iter_max,
                    tol=tol,
                    l2_reg=l2_reg,
                    random_state=random_state,
                    linesearch=tol > 0,  # extrapolation gets ALS out of "swamps"; tensorly needs tol > 0 for it
                    callback=None if progress is None else step,
                )
        except RuntimeError as exc:  # torch.linalg errors derive from RuntimeError
            last_problem = exc
            continue
        if all(bool(torch.isfinite(f).all()) for f in factors) and bool(torch.isfinite(weights).all()):
            break
        last_problem = ValueError("non-finite factors")
    else:
        raise CompressionError(f"CP decomposition at rank {r} failed to converge ({last_problem})")
    norms = [f.norm(dim=0) for f in factors]
    total = weights.abs() * torch.stack(norms).prod(dim=0)
    share = total.pow(1.0 / len(factors))
    out = []
    for i, (f, n) in enumerate(zip(factors, norms)):
        unit = f / torch.where(n > 0, n, torch.ones_like(n))
        if i == 0:
            unit = unit * torch.sign(weights).where(weights != 0, torch.ones_like(weights))
        out.append(unit * share)
    return out


def _cp_conv(
    conv: nn.Module,
    r: int,
    *,
    n_iter_max: int = 300,
    tol: float = 1e-8,
    random_state: int = 0,
    progress: ProgressFn = None,
) -> nn.Sequential:
    w = conv.weight
    out_ch, in_ch, *kernel = w.shape
    ones = (1,) * len(kernel)
    # float64: in float32 ALS's error estimate drowns in rounding and it stops early
    a_out, a_in, *a_space = _parafac(w.detach().double(), r, n_iter_max, tol, random_state, progress)
    cls = _conv_class(conv)
    first = _new(cls, in_ch, r, 1, bias=False, like=w)
    _set(first.weight, a_in.T.reshape(r, in_ch, *ones), w)
    layers = [first]
    for axis, factor in enumerate(a_space):
        # A depthwise conv along ``axis`` only: the other axes get kernel 1, stride 1, no padding.
        def along(value, neutral):
            return tuple(value[axis] if i == axis else neutral for i in range(len(kernel)))

        padding = conv.padding if isinstance(conv.padding, str) else along(conv.padding, 0)
        spatial = _new(
            cls,
            r,
            r,
            along(kernel, 1),
            stride=along(conv.stride, 1),
            padding=padding,
            dilation=along(conv.dilation, 1),
            groups=r,
            padding_mode=conv.padding_mode,
            bias=False,
            like=w,
        )
        _set(spatial.weight, factor.T.reshape(r, 1, *along(kernel, 1)), w)
        layers.append(spatial)
    last = _new(cls, r, out_ch, 1, bias=conv.bias is not None, like=w)
    _set(last.weight, a_out.reshape(out_ch, r, *ones), w)
    layers.append(last)
    return _finish(conv, layers)


def _effective_kernel(seq: nn.Sequential, method: str) -> torch.Tensor:
    """The ``T x S x k...`` kernel that a factorised convolution computes, in float64."""
    weights = [m.weight.detach().double() for m in seq]
    first = weights[0].flatten(1)  # (R3 or R, S)
    last = weights[-1].flatten(1)  # (T, R4 or R)
    if method == "tucker2":
        return torch.einsum("ta,abk,bs->tsk", last, weights[1].flatten(2), first).reshape(
            last.shape[0], first.shape[1], *weights[1].shape[2:]
        )
    spatial = [w.reshape(w.shape[0], -1) for w in weights[1:-1]]  # each (R, k_axis)
    kernel = torch.einsum("tr,rs->rts", last, first)
    for factor in spatial:
        kernel = kernel.unsqueeze(-1) * factor.reshape(factor.shape[0], *([1] * (kernel.dim() - 1)), -1)
    return kernel.sum(0)


def _relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    w = weight.detach().double()
    norm = float(w.norm())
    if norm == 0.0:
        return float((approx - w).norm())
    return float((approx - w).norm()) / norm
