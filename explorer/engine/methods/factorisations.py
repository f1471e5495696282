"""The low-rank and structured-matrix factorisations by name (without torch or tensorly, for the plan's
validation, the CLI's help and the window's controls); :mod:`explorer.engine.methods.lowrank` computes them."""

from typing import NamedTuple


class Factorisation(NamedTuple):
    name: str
    applies: str  # the layer types it replaces
    summary: str  # what it builds, for the CLI's help and the window's tooltip
    rank: str  # what an integer rank means for it


FACTORISATIONS = {f.name: f for f in (
    Factorisation("svd", "Linear, Embedding", "truncated SVD: two thin layers, r (m + n) weights", "the rank r"),
    Factorisation("tucker2", "Conv1d, Conv2d", "Tucker-2 on the channel modes: 1x1, k x k core, 1x1 convs",
                  "R3 = R4, or a pair [R3, R4]"),
    Factorisation("cp", "Conv1d, Conv2d", "CP of the kernel: 1x1, one depthwise conv per axis, 1x1",
                  "the number of rank-one terms"),
    Factorisation("tt", "Linear", "tensor train (Novikov 2015): 2-3 cores, sum r_{k-1} m_k n_k r_k weights",
                  "the TT-rank of every bond, or one per bond"),
    Factorisation("circulant", "Linear", "block-circulant matrix run by FFT (Cheng 2015): m n / b weights",
                  "the block size b (max(m, n): one circulant, Cheng 2015)"),
)}
METHODS = tuple(FACTORISATIONS)  # in the order a UI offers them
#: the methods for a Linear layer's matrix (svd also for an Embedding's), and for a convolution's kernel
MATRIX_METHODS = ("svd", "tt", "circulant")
KERNEL_METHODS = ("tucker2", "cp")

__all__ = ["Factorisation", "FACTORISATIONS", "METHODS", "MATRIX_METHODS", "KERNEL_METHODS"]
