"""The low-rank factorisations by name (without torch or tensorly, for the plan's validation and the CLI's
help); :mod:`explorer.engine.methods.lowrank` computes them."""

METHODS = ("svd", "tucker2", "cp")  # SVD of a matrix; Tucker-2 and CP of a convolution's kernel

__all__ = ["METHODS"]
