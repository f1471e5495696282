"""Evaluation data: the samples a compressed model is scored on.

Readers for the formats a user is likely to hold (IDX as MNIST ships it, plain or gzipped; NumPy ``.npz``
and ``.npy``) and the bundled digits split the sample models were trained on. Every reader returns an
:class:`EvalData`. Nothing here unpickles: NumPy files are always opened with ``allow_pickle=False``.

Conventions
-----------
- ``uint8`` inputs are taken for 8-bit images and scaled to float32 in [0, 1]; other integer inputs are kept
  as int64 (token ids); floating inputs become float32.
- Labels are 1-D integer class indices, stored as int64. Without labels the explorer measures fidelity
  (agreement with the original model) instead of accuracy.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch

from .errors import LoadError

PathLike = Union[str, os.PathLike]

__all__ = [
    "EvalData",
    "read_idx",
    "load_idx_pair",
    "load_npz",
    "load_npy",
    "load_eval_data",
    "digits_split",
]

# IDX element types: code -> big-endian NumPy dtype (LeCun's format description).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CHUNK = 1 << 20  # bytes read at a time from a compressed stream


@dataclass
class EvalData:
    """Inputs (and optionally labels) to evaluate a model on.

    Parameters
    ----------
    inputs : torch.Tensor
        float32 (or int64 token ids); the first dimension indexes samples.
    labels : torch.Tensor or None
        int64 class indices, one per sample; ``None`` means "compare against the original model".
    name : str
        What to call the data in the interface, e.g. ``"digits test split (360)"`` or a file name.
    """

    inputs: torch.Tensor
    labels: Optional[torch.Tensor]
    name: str

    def __post_init__(self) -> None:
        if self.inputs.dim() < 1:
            raise LoadError(f"{self.name}: inputs must have a sample dimension, got a scalar")
        if self.labels is not None:
            if self.labels.dim() != 1:
                raise LoadError(
                    f"{self.name}: labels must be 1-D class indices, got shape {tuple(self.labels.shape)}"
                )
            if self.labels.shape[0] != self.inputs.shape[0]:
                raise LoadError(
                    f"{self.name}: {self.inputs.shape[0]} inputs but {self.labels.shape[0]} labels"
                )

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """Yield ``(inputs, labels)`` slices of at most ``batch_size`` samples, in order.

        ``labels`` is ``None`` in every pair when the data has no labels.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch_size = int(batch_size)
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            labels = None if self.labels is None else self.labels[start:stop]
            yield self.inputs[start:stop], labels

    def subset(self, index: Union[int, slice]) -> "EvalData":
        """The first ``index`` samples (an int) or a slice of them, as a new :class:`EvalData`."""
        sl = slice(0, int(index)) if not isinstance(index, slice) else index
        inputs = self.inputs[sl]
        labels = None if self.labels is None else self.labels[sl]
        return EvalData(inputs, labels, f"{self.name} [{inputs.shape[0]} of {len(self)}]")


# --------------------------------------------------------------------------------------------------- IDX


def _open_binary(path: Path):
    """Open ``path`` for reading bytes, transparently un-gzipping; LoadError if missing."""
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a folder, not a data file")
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return (gzip.open(path, "rb") if gz else open(path, "rb")), gz


def _read_exactly(stream, n: int) -> bytes:
    """Read up to ``n`` bytes in bounded chunks (never asks the stream for ``n`` at once)."""
    parts = []
    got = 0
    while got < n:
        part = stream.read(min(_CHUNK, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    The header is four bytes ``0, 0, type code, ndim`` followed by ``ndim`` big-endian uint32 sizes;
    MNIST's magic numbers 2051 (images) and 2049 (labels) are this header for uint8 data with 3 and 1
    dimensions. The header, the sizes and the payload length are all checked before the payload is read,
    so a corrupt header claiming a huge array fails at once instead of allocating it.

    Parameters
    ----------
    path : str or path-like
        An IDX file, optionally gzipped (detected from its first bytes, not its name).

    Returns
    -------
    numpy.ndarray
        The array in native byte order, of shape given by the header.

    Raises
    ------
    LoadError
        If the file is missing, is not IDX, or its payload does not match its header.
    """
    path = Path(path)
    stream, gz = _open_binary(path)
    kind = "gzipped IDX" if gz else "IDX"
    try:
        with stream:
            head = stream.read(4)
            if len(head) < 4:
                raise LoadError(f"{path}: too short for an IDX header ({len(head)} bytes)")
            if head[0] != 0 or head[1] != 0:
                magic = int.from_bytes(head, "big")
                raise LoadError(
                    f"{path}: not an IDX file (magic number {magic} / 0x{magic:08x}; "
                    "expected 0x0000TTNN, e.g. 2051 for images, 2049 for labels)"
                )
            code, ndim = head[2], head[3]
            if code not in _IDX_DTYPES:
                raise LoadError(f"{path}: unknown IDX element type 0x{code:02x}")
            if ndim == 0:
                raise LoadError(f"{path}: IDX header declares 0 dimensions")
            raw_dims = stream.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise LoadError(f"{path}: IDX header truncated (expected {ndim} dimension sizes)")
            dims = tuple(int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            dtype = _IDX_DTYPES[code]
            expected = math.prod(dims) * dtype.itemsize
            header_len = 4 + 4 * ndim
            shape_txt = " x ".join(str(d) for d in dims)

            if not gz:
                actual = path.stat().st_size - header_len
                if actual != expected:
                    raise LoadError(
                        f"{path}: {kind} header declares {shape_txt} {dtype.name} "
                        f"({expected} bytes of data) but the file holds {actual}"
                    )
                payload = _read_exactly(stream, expected)
            else:
                # The decompressed size is unknown up front: read in bounded chunks, so a header that
                # lies about the size costs only as much memory as the data really there.
                payload = _read_exactly(stream, expected)
                extra = stream.read(1)
                if len(payload) != expected or extra:
                    found = f"{len(payload)}" if not extra else f"more than {expected}"
                    raise LoadError(
                        f"{path}: {kind} header declares {shape_txt} {dtype.name} "
                        f"({expected} bytes of data) but the file holds {found}"
                    )
            if len(payload) != expected:  # file changed under us
                raise LoadError(f"{path}: {kind} payload truncated ({len(payload)} of {expected} bytes)")
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise LoadError(f"{path}: cannot read {kind} data ({exc})") from exc

    arr = np.frombuffer(payload, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # native order, writable copy


def _infer_labels_path(images_path: Path) -> Optional[Path]:
    """``t10k-images-idx3-ubyte.gz`` -> ``t10k-labels-idx1-ubyte.gz`` (also ``images.idx3``); None if no match."""
    name = images_path.name
    for sep in ("-", "."):
        key = f"images{sep}idx3"
        if key in name:
            return images_path.with_name(name.replace(key, f"labels{sep}idx1"))
    return None


def _images_to_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    if arr.ndim == 3:  # (N, H, W) -> (N, 1, H, W); (N, D) features and (N, C, H, W) stay as they are
        arr = arr[:, None, :, :]
    elif arr.ndim not in (2, 4):
        raise LoadError(f"{where}: images must have 3 dimensions (N, H, W), got shape {arr.shape}")
    return torch.from_numpy(_as_float_inputs(arr))


def _as_float_inputs(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) / np.float32(255.0))
    return np.ascontiguousarray(arr, dtype=np.float32)


def _labels_to_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    if arr.ndim != 1:
        raise LoadError(f"{where}: labels must be 1-D class indices, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise LoadError(f"{where}: labels must be integers (class indices), got {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise LoadError(f"{where}: labels must be non-negative class indices, found {int(arr.min())}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))


def load_idx_pair(images_path: PathLike, labels_path: Optional[PathLike] = None) -> EvalData:
    """Load IDX images and their labels as :class:`EvalData`.

    Parameters
    ----------
    images_path : str or path-like
        IDX images, shape (N, H, W) (also (N, C, H, W) or (N, D) features); uint8 is scaled to [0, 1].
    labels_path : str or path-like, optional
        IDX labels, shape (N,). If omitted it is inferred by renaming ``images-idx3`` to ``labels-idx1``;
        if that file does not exist the data has no labels (fidelity is measured instead).

    Returns
    -------
    EvalData
        ``inputs`` float32 of shape (N, 1, H, W), ``labels`` int64 of shape (N,) or None.
    """
    images_path = Path(images_path)
    images = read_idx(images_path)
    inputs = _images_to_tensor(images, str(images_path))
    if labels_path is None:
        guess = _infer_labels_path(images_path)
        labels_path = guess if guess is not None and guess.exists() else None
    labels = None
    if labels_path is not None:
        labels_path = Path(labels_path)
        labels = _labels_to_tensor(read_idx(labels_path), str(labels_path))
        if labels.shape[0] != inputs.shape[0]:
            raise LoadError(
                f"{labels_path}: {labels.shape[0]} labels, but {images_path.name} has {inputs.shape[0]} images"
            )
    return EvalData(inputs, labels, f"{images_path.name} ({inputs.shape[0]})")


# ------------------------------------------------------------------------------------------------- NumPy

_INPUT_KEYS = ("x", "inputs", "x_test")
_LABEL_KEYS = ("y", "labels", "y_test")


def _inputs_to_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    if arr.ndim < 1:
        raise LoadError(f"{where}: inputs must have a sample dimension, got a scalar")
    if arr.dtype == np.uint8 or arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.floating):
        return torch.from_numpy(_as_float_inputs(arr))
    if np.issubdtype(arr.dtype, np.integer):
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
    raise LoadError(f"{where}: inputs must be numbers, got {arr.dtype}")


def _np_load_error(path: Path, exc: Exception) -> LoadError:
    if isinstance(exc, ValueError) and "pickle" in str(exc).lower():
        return LoadError(
            f"{path}: contains Python objects (a pickled array); refusing to unpickle it. "
            "Save plain numeric arrays instead"
        )
    return LoadError(f"{path}: cannot read NumPy data ({exc})")


def load_npz(path: PathLike) -> EvalData:
    """Load a NumPy ``.npz`` archive with inputs under ``x`` (or ``inputs``) and labels under ``y`` (or ``labels``).

    Keras' ``mnist.npz`` layout (``x_test``, ``y_test``) is accepted too. Labels are optional. The file is
    opened with ``allow_pickle=False``: an archive holding object arrays is refused.
    """
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            xkey = next((k for k in _INPUT_KEYS if k in keys), None)
            if xkey is None:
                raise LoadError(
                    f"{path}: no inputs array; expected a key 'x' or 'inputs', found {keys or 'no arrays'}"
                )
            ykey = next((k for k in _LABEL_KEYS if k in keys), None)
            x = archive[xkey]
            y = archive[ykey] if ykey is not None else None
    except LoadError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise _np_load_error(path, exc) from exc
    return _eval_data(x, y, str(path), xkey, ykey, path.name)


def load_npy(path: PathLike) -> EvalData:
    """Load a single ``.npy`` array as unlabelled inputs (``allow_pickle=False``)."""
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _np_load_error(path, exc) from exc
    inputs = _inputs_to_tensor(x, str(path))
    return EvalData(inputs, None, f"{path.name} ({inputs.shape[0]})")


# -------------------------------------------------------------------------------------------- dispatch


def eval_data_from_factory(ref: str) -> EvalData:
    """Call the factory ``package.module:callable`` (no arguments) for eval data. It may return an
    :class:`EvalData` (used as it is), ``(inputs[, labels])``, or a dict with inputs under ``x``/``inputs``
    and labels under ``y``/``labels``: arrays or tensors, converted as the file readers convert them. Only
    code the user named is imported and run."""
    from .loading import resolve_factory

    fn = resolve_factory(ref)
    try:
        out = fn()
    except Exception as exc:
        raise LoadError(f"factory failed: {type(exc).__name__}: {exc}") from None
    if isinstance(out, EvalData):
        return out
    if isinstance(out, dict):
        xkey = next((k for k in _INPUT_KEYS if k in out), None)
        if xkey is None:
            raise LoadError(f"the factory returned a dict without inputs; expected a key 'x' or 'inputs', found "
                            f"{sorted(map(str, out)) or 'no keys'}")
        ykey = next((k for k in _LABEL_KEYS if k in out), None)
        x, y = out[xkey], (out[ykey] if ykey is not None else None)
    elif isinstance(out, (tuple, list)) and 1 <= len(out) <= 2:
        x, y = out[0], (out[1] if len(out) > 1 else None)
    else:
        raise LoadError(f"the factory returned {type(out).__name__}; expected EvalData, (inputs[, labels]) or a "
                        "dict with 'x'[, 'y']")

    def array(v, what):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            return (v.float() if v.is_floating_point() and v.dtype not in (torch.float32, torch.float64)
                    else v).numpy()
        if isinstance(v, np.ndarray):
            return v
        raise LoadError(f"{what} must be an array or a tensor, got {type(v).__name__}")

    return _eval_data(array(x, "inputs"), None if y is None else array(y, "labels"), ref, "inputs", "labels", ref)


def _eval_data(x: np.ndarray, y: Optional[np.ndarray], where: str, xname: str, yname: str, label: str) -> EvalData:
    """Inputs and optional labels as an :class:`EvalData` named ``label (count)``, with the conversions
    and checks every reader applies."""
    inputs = _inputs_to_tensor(x, f"{where} [{xname!r}]")
    labels = None
    if y is not None:
        labels = _labels_to_tensor(y, f"{where} [{yname!r}]")
        if labels.shape[0] != inputs.shape[0]:
            raise LoadError(f"{where}: {inputs.shape[0]} inputs ({xname!r}) but {labels.shape[0]} labels ({yname!r})")
    return EvalData(inputs, labels, f"{label} ({inputs.shape[0]})")


def load_eval_data(path: PathLike) -> EvalData:
    """Load evaluation data from ``path``, choosing the reader by content (and name as a fallback).

    - ``.npz`` (zip archive): :func:`load_npz`
    - ``.npy``: :func:`load_npy` (inputs only)
    - IDX, plain or gzipped: :func:`load_idx_pair` (labels found next to the images if named the MNIST way);
      a lone IDX labels file is refused.
    - ``package.module:callable`` that is not an existing path: :func:`eval_data_from_factory`.
    """
    from .loading import is_factory_ref

    if is_factory_ref(path):
        try:
            return eval_data_from_factory(path)
        except LoadError as exc:
            raise LoadError(f"eval data {path!r}: {exc}") from None
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a folder; choose the images file inside it")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:4] == b"PK\x03\x04" or path.suffix.lower() == ".npz":
        return load_npz(path)
    if magic == b"\x93NUMPY":
        return load_npy(path)
    if magic[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                magic = g.read(4)
        except (OSError, EOFError, zlib.error) as exc:
            raise LoadError(f"{path}: cannot read gzip data ({exc})") from exc
    if len(magic) >= 4 and magic[0] == 0 and magic[1] == 0:
        if magic[3] == 1 and magic[2] in _IDX_DTYPES:
            raise LoadError(f"{path}: this is an IDX labels file; choose the matching images file instead")
        return load_idx_pair(path)
    raise LoadError(f"{path}: unknown data format (expected .npz, .npy or IDX such as MNIST's *-idx3-ubyte[.gz])")


# ---------------------------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def digits_split(seed: int = 0, test_fraction: float = 0.2) -> Tuple[EvalData, EvalData]:
    """The scikit-learn digits (1797 8x8 images, 10 classes) split into train and test parts.

    Pixels (0..16) are divided by 16 and shaped (N, 1, 8, 8) float32. The samples are shuffled by a fixed
    permutation from ``numpy.random.RandomState(seed)`` (a generator whose stream NumPy keeps frozen across
    versions, so the split never changes); the first ``ceil(test_fraction * N)`` form the test part.

    Parameters
    ----------
    seed : int
        Seed of the permutation.
    test_fraction : float
        Fraction of samples in the test part, in (0, 1). The default gives 1437 train, 360 test.

    Returns
    -------
    (EvalData, EvalData)
        ``(train, test)``.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = _digits_arrays()
    n = images.shape[0]
    order = np.random.RandomState(int(seed)).permutation(n)
    n_test = int(math.ceil(float(test_fraction) * n))
    test_idx, train_idx = order[:n_test], order[n_test:]

    def part(idx: np.ndarray, what: str) -> EvalData:
        return EvalData(
            torch.from_numpy(images[idx].copy()),
            torch.from_numpy(labels[idx].copy()),
            f"digits {what} split ({idx.size})",
        )

    return part(train_idx, "train"), part(test_idx, "test")
