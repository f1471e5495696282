"""Evaluation data: the samples a compressed model is scored on.

Readers for the formats a user is likely to hold (IDX as MNIST ships it, plain or gzipped; NumPy ``.npz``
and ``.npy``) and the bundled digits split the sample models were trained on. Every reader returns an
:class:`EvalData`. Nothing here unpickles: NumPy headers are parsed with :mod:`numpy.lib.format` and arrays
of Python objects are refused before anything else is read.

Conventions
-----------
- ``uint8`` inputs are taken for 8-bit images and scaled to float32 in [0, 1]; other integer inputs are kept
  as int64 (token ids); floating inputs become float32.
- Labels are 1-D integer class indices, stored as int64. Without labels the explorer measures fidelity
  (agreement with the original model) instead of accuracy.
- ``limit=N`` (every reader, ``None`` = all) keeps the first ``N`` samples. Samples are the leading
  dimension, stored in C order, so only the bytes of those samples are read, or inflated, and the rest of
  the file is not touched (so it is not verified either). A limit above the number of samples reads them all.

Files are not trusted
---------------------
Every size a header declares is checked against what the file can hold before any array is allocated:
exactly for plain files (IDX, ``.npy``, stored ``.npz`` members: header + declared data == file or entry
size), and for compressed data against the most its compressed size can inflate to (:data:`MAX_INFLATE_RATIO`)
and, for ``.npz`` members, against the zip entry's declared size. Compressed data is streamed in bounded
chunks straight into one preallocated array of the final dtype (no chunk lists, joins or ``astype`` copies;
``uint8`` becomes float32 once, chunk by chunk). No more than the declared size plus one byte, which detects
excess, is asked of a compressed stream (gzip's and zipfile's own read-ahead add a few KiB at most).
Decoded eval data larger than :data:`MAX_EVAL_BYTES` is refused with a hint to use ``--limit``. Every
refusal is a :class:`~explorer.engine.errors.LoadError` naming the file and the problem.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import numbers
import os
import struct
import tokenize
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch

from explorer.engine.errors import LoadError, NotFound
from explorer.engine.model.factories import is_factory_ref, resolve_factory

try:  # optional in CPython builds; zipfile needs it only for ZIP_LZMA members
    import lzma

    _LZMA_ERRORS: tuple = (lzma.LZMAError,)
except ImportError:  # pragma: no cover
    _LZMA_ERRORS = ()

PathLike = Union[str, os.PathLike]

__all__ = [
    "EvalData",
    "is_integer",
    "is_real",
    "dtype_name",
    "MAX_EVAL_BYTES",
    "MAX_INFLATE_RATIO",
    "read_idx",
    "load_idx_pair",
    "load_npz",
    "load_npy",
    "load_eval_data",
    "eval_data_from_factory",
    "digits_split",
]

MAX_EVAL_BYTES = 8 * 2**30
"""Largest decoded array (bytes, in the dtype it is returned in: float32 inputs, int64 labels) that eval data
may take: 8 GiB, i.e. 2^31 float32 values, about 2.7 million 28x28 images. On a 24 GiB machine this leaves
room for the model, its compressed copy and a batch's activations. Larger data is refused with a hint to
evaluate on fewer samples with ``--limit``. Module-level so that a caller (or a test) can change it."""

MAX_INFLATE_RATIO = 1100
"""The most one compressed byte is believed to inflate to. Deflate's ceiling is 1032:1 (a 258-byte match
coded in 2 bits); 1100 gives it a ~7 % margin. bzip2 and lzma can go further on constant data, but no real
eval data does: the same cap is applied to them, conservatively."""

_INFLATE_SLACK = 1 << 16  # bytes allowed on top of the ratio, for tiny files whose headers dominate
_NPY_MAX_HEADER = 10000  # numpy.load's max_header_size without allow_pickle; real headers are ~128 bytes
_CHUNK = 1 << 20  # bytes read (or inflated) at a time

# IDX element types: code -> big-endian NumPy dtype (LeCun's format description).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)


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
    unlabelled : str
        Without labels, why, when the reader knows (IDX images whose labels file is not beside them):
        one line the interface shows, as accuracy silently becoming agreement would mislead.
    """

    inputs: torch.Tensor
    labels: Optional[torch.Tensor]
    name: str
    unlabelled: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, torch.Tensor):
            raise LoadError(f"{self.name}: inputs must be a tensor, got {type(self.inputs).__name__}")
        if self.inputs.dim() < 1:
            raise LoadError(f"{self.name}: inputs must have a sample dimension, got a scalar")
        if not is_real(self.inputs):
            raise LoadError(f"{self.name}: inputs must be real numbers (floats, or integer token ids), got "
                            f"{dtype_name(self.inputs)}")
        if self.labels is not None:
            if not isinstance(self.labels, torch.Tensor):
                raise LoadError(f"{self.name}: labels must be a tensor, got {type(self.labels).__name__}")
            if self.labels.dim() != 1:
                raise LoadError(
                    f"{self.name}: labels must be 1-D class indices, got shape {tuple(self.labels.shape)}"
                )
            if not is_integer(self.labels):
                raise LoadError(f"{self.name}: labels must be integers (class indices), got {dtype_name(self.labels)}")
            if self.labels.shape[0] != self.inputs.shape[0]:
                raise LoadError(
                    f"{self.name}: {self.inputs.shape[0]} inputs but {self.labels.shape[0]} labels"
                )
            if self.labels.numel() and int(self.labels.min()) < 0:
                raise LoadError(f"{self.name}: labels must be non-negative class indices, found "
                                f"{int(self.labels.min())}")

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
        return EvalData(inputs, labels, f"{self.name} [{inputs.shape[0]} of {len(self)}]", self.unlabelled)


def is_integer(t: torch.Tensor) -> bool:
    """Whether ``t`` holds integers (class indices, token ids): not floats, complex numbers or booleans."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def is_real(t: torch.Tensor) -> bool:
    """Whether ``t`` holds what a model takes as input: floats or integers (not complex numbers or booleans)."""
    return t.is_floating_point() or is_integer(t)


def dtype_name(t: torch.Tensor) -> str:
    """``"float32"``, not ``"torch.float32"``."""
    return str(t.dtype).replace("torch.", "")


# --------------------------------------------------------------------------------- limits and checks


def _check_limit(limit, where=None) -> Optional[int]:
    """``limit`` as a positive int (``None`` stays ``None``); LoadError naming ``where`` (if given) otherwise."""
    if limit is None:
        return None
    said = "" if where is None else f"{where}: "
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral):
        raise LoadError(f"{said}limit must be a whole number of samples, got {limit!r}")
    if int(limit) < 1:
        raise LoadError(f"{said}limit must be at least 1 sample, got {int(limit)}")
    return int(limit)


def _shape_txt(shape) -> str:
    return " x ".join(str(d) for d in shape) if len(shape) else "a scalar"


def _max_inflated(compressed: int) -> int:
    """The most ``compressed`` bytes of deflate (or bzip2/lzma, see MAX_INFLATE_RATIO) can inflate to."""
    return compressed * MAX_INFLATE_RATIO + _INFLATE_SLACK


def _check_cap(where: str, shape: tuple, n: int, dtype: np.dtype) -> None:
    """Refuse decoding ``n`` records of ``shape[1:]`` as ``dtype`` if that exceeds MAX_EVAL_BYTES."""
    nbytes = n * math.prod(shape[1:]) * dtype.itemsize
    if nbytes > MAX_EVAL_BYTES:
        what = f"{n} samples of {_shape_txt(shape[1:])}" if len(shape) > 1 else f"{n} values"
        raise LoadError(
            f"{where}: {what} as {dtype.name} would take {nbytes / 2**30:.1f} GiB, more than the "
            f"{MAX_EVAL_BYTES / 2**30:g} GiB allowed for eval data (MAX_EVAL_BYTES); "
            "evaluate on fewer samples with --limit N"
        )


def _pickle_refusal(where) -> LoadError:
    return LoadError(
        f"{where}: contains Python objects (a pickled array); refusing to unpickle it. "
        "Save plain numeric arrays instead"
    )


def _input_dtype(dtype: np.dtype, where: str) -> np.dtype:
    """The dtype NumPy inputs of ``dtype`` are returned in (see Conventions); LoadError if not numbers."""
    if dtype.hasobject:
        raise _pickle_refusal(where)
    if dtype == np.uint8 or dtype.kind in "bf":
        return _F32
    if dtype.kind in "iu":
        return _I64
    raise LoadError(f"{where}: inputs must be numbers, got {dtype}")


def _check_label_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.hasobject:
        raise _pickle_refusal(where)
    if dtype.kind not in "iu":
        raise LoadError(f"{where}: labels must be integers (class indices), got {dtype}")


def _sized_name(label: str, n: int, total: int) -> str:
    return f"{label} ({n})" if n == total else f"{label} ({n} of {total})"


# ------------------------------------------------------------------------------------ streamed arrays

_READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile) + _LZMA_ERRORS  # BadGzipFile is an OSError


def _readinto(stream, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` in chunks of at most _CHUNK bytes; the number of bytes filled."""
    got = 0
    while got < len(view):
        k = stream.readinto(view[got: got + _CHUNK])
        if not k:
            break
        got += k
    return got


class _Declared:
    """An array a header has declared (checked against the file's size), its stream at the first data byte.

    ``read`` allocates the result once, in its final dtype, and streams the data into it.
    """

    def __init__(self, where: str, kind: str, stream, shape: tuple, dtype: np.dtype, *, fortran: bool = False,
                 compressed: bool = False, container: str = "file"):
        self.where, self.kind, self.stream = where, kind, stream
        self.shape, self.dtype = tuple(shape), dtype
        self.fortran = bool(fortran) and len(self.shape) > 1  # 0-D and 1-D arrays are the same in both orders
        self.compressed, self.container = compressed, container

    def __enter__(self) -> "_Declared":
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def count(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def declares(self) -> str:
        return f"{self.kind} header declares {_shape_txt(self.shape)} {self.dtype.name} ({self.nbytes} bytes of data)"

    def read(self, n: int, out_dtype: np.dtype, scale: bool = False) -> np.ndarray:
        """The first ``n`` records (``n <= count``) as a new C-contiguous ``out_dtype`` array.

        ``scale`` divides by 255 (uint8 images to [0, 1]) while converting. All ``count`` records read means
        the whole payload: a compressed stream must then end exactly there. Fortran-order data has the first
        records spread through the file, so it is read whole (the cap applies to the whole array) and the
        first ``n`` records are copied out in C order: peak memory is the whole array plus that copy.
        """
        n = min(int(n), self.count)
        whole = self.fortran or n == self.count
        _check_cap(self.where, self.shape, self.count if self.fortran else n, out_dtype)
        try:
            if self.fortran:
                full = np.empty(self.shape[::-1], out_dtype)  # the file's element order, in C order
                self._fill(full, scale, whole, n)
                return np.ascontiguousarray(full.T[:n])
            out = np.empty((n,) + self.shape[1:], out_dtype)
            self._fill(out, scale, whole, n)
            return out
        except _READ_ERRORS as exc:
            raise LoadError(f"{self.where}: cannot read {self.kind} data ({exc})") from exc

    def _fill(self, out: np.ndarray, scale: bool, whole: bool, n: int) -> None:
        src = self.dtype
        flat = out.reshape(-1)  # a view: out is C-contiguous
        want = flat.size * src.itemsize
        if out.dtype == src and not scale:  # same bytes: read straight into the result
            got = _readinto(self.stream, memoryview(flat.view(np.uint8)))
        else:  # convert chunk by chunk from a small scratch buffer
            per = max(1, _CHUNK // src.itemsize)
            scratch = np.empty(min(per, flat.size), src)
            raw = memoryview(scratch.view(np.uint8))
            got = pos = 0
            while pos < flat.size:
                k = min(per, flat.size - pos)
                g = _readinto(self.stream, raw[: k * src.itemsize])
                got += g
                if g < k * src.itemsize:
                    break
                if scale:
                    np.divide(scratch[:k], np.float32(255.0), out=flat[pos: pos + k])
                else:
                    flat[pos: pos + k] = scratch[:k]  # casts, and swaps byte order where needed
                pos += k
        if got < want:
            if whole:
                raise LoadError(f"{self.where}: {self.declares()} but the {self.container} holds {got}")
            raise LoadError(
                f"{self.where}: {self.declares()} but the {self.container} ends after {got} bytes of data "
                f"({want} needed for the first {n} samples)"
            )
        if whole and self.compressed and self.stream.read(1):  # inflate one byte past the end, no more
            raise LoadError(f"{self.where}: {self.declares()} but the {self.container} holds more than {self.nbytes}")


# --------------------------------------------------------------------------------------------------- IDX


def _open_binary(path: Path):
    """Open ``path`` for reading bytes, transparently un-gzipping; LoadError if missing."""
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a folder, not a data file")
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return (gzip.open(path, "rb") if gz else open(path, "rb")), gz


def _open_idx(path: Path) -> _Declared:
    """Parse an IDX header and check its declared size against the file; the array, ready to read."""
    stream, gz = _open_binary(path)
    kind = "gzipped IDX" if gz else "IDX"
    try:
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
        dims = struct.unpack(f">{ndim}I", raw_dims)
        arr = _Declared(str(path), kind, stream, dims, _IDX_DTYPES[code], compressed=gz)
        header_len = 4 + 4 * ndim
        size = path.stat().st_size
        if not gz:
            if size - header_len != arr.nbytes:
                raise LoadError(f"{path}: {arr.declares()} but the file holds {size - header_len}")
        elif header_len + arr.nbytes > _max_inflated(size):
            raise LoadError(
                f"{path}: {arr.declares()}, more than a {size}-byte gzip file can inflate to "
                "(deflate gives at most ~1032 bytes per byte)"
            )
        return arr
    except BaseException as exc:
        stream.close()
        if isinstance(exc, _READ_ERRORS):
            raise LoadError(f"{path}: cannot read {kind} data ({exc})") from exc
        raise


def read_idx(path: PathLike, limit: Optional[int] = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    The header is four bytes ``0, 0, type code, ndim`` followed by ``ndim`` big-endian uint32 sizes;
    MNIST's magic numbers 2051 (images) and 2049 (labels) are this header for uint8 data with 3 and 1
    dimensions. Before anything is allocated, the declared payload is checked against the file: exactly
    for a plain file, and for a gzipped one against the most its size can inflate to. A gzipped payload is
    then inflated in bounded chunks straight into the result; read whole, it must end exactly where the
    header says (one byte more is inflated to tell).

    Parameters
    ----------
    path : str or path-like
        An IDX file, optionally gzipped (detected from its first bytes, not its name).
    limit : int, optional
        Read only the first ``limit`` records (along the first dimension); the rest is not read.

    Returns
    -------
    numpy.ndarray
        The array in native byte order, of shape given by the header (first dimension at most ``limit``).

    Raises
    ------
    LoadError
        If the file is missing, is not IDX, its payload does not match its header, or it is too large
        (:data:`MAX_EVAL_BYTES`).
    """
    path = Path(path)
    limit = _check_limit(limit, path)
    with _open_idx(path) as arr:
        n = arr.count if limit is None else min(limit, arr.count)
        return arr.read(n, arr.dtype.newbyteorder("="))


def _infer_labels_path(images_path: Path) -> Optional[Path]:
    """``t10k-images-idx3-ubyte.gz`` -> ``t10k-labels-idx1-ubyte.gz`` (also ``images.idx3``); None if no match."""
    name = images_path.name
    for sep in ("-", "."):
        key = f"images{sep}idx3"
        if key in name:
            return images_path.with_name(name.replace(key, f"labels{sep}idx1"))
    return None


def _as_float_inputs(arr: np.ndarray) -> np.ndarray:
    """float32 inputs from an in-memory array, in one allocation (uint8 scaled to [0, 1])."""
    if arr.dtype == np.uint8:
        return np.divide(arr, np.float32(255.0), out=np.empty(arr.shape, np.float32))
    return np.ascontiguousarray(arr, dtype=np.float32)


def _labels_to_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    if arr.ndim != 1:
        raise LoadError(f"{where}: labels must be 1-D class indices, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise LoadError(f"{where}: labels must be integers (class indices), got {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise LoadError(f"{where}: labels must be non-negative class indices, found {int(arr.min())}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))


def load_idx_pair(images_path: PathLike, labels_path: Optional[PathLike] = None,
                  limit: Optional[int] = None) -> EvalData:
    """Load IDX images and their labels as :class:`EvalData`.

    Parameters
    ----------
    images_path : str or path-like
        IDX images, shape (N, H, W) (also (N, C, H, W) or (N, D) features); uint8 is scaled to [0, 1].
    labels_path : str or path-like, optional
        IDX labels, shape (N,). If omitted it is inferred by renaming ``images-idx3`` to ``labels-idx1``;
        if that file does not exist the data has no labels (fidelity is measured instead).
    limit : int, optional
        Only the first ``limit`` images and labels (both headers are still checked in full, and their
        counts must agree).

    Returns
    -------
    EvalData
        ``inputs`` float32 of shape (N, 1, H, W), ``labels`` int64 of shape (N,) or None.
    """
    images_path = Path(images_path)
    limit = _check_limit(limit, images_path)
    guess = None
    if labels_path is None:
        guess = _infer_labels_path(images_path)
        labels_path = guess if guess is not None and guess.exists() else None
    with ExitStack() as stack:
        img = stack.enter_context(_open_idx(images_path))
        if img.ndim not in (2, 3, 4):
            raise LoadError(f"{images_path}: images must have 3 dimensions (N, H, W), got shape {img.shape}")
        lab = None
        if labels_path is not None:
            labels_path = Path(labels_path)
            lab = stack.enter_context(_open_idx(labels_path))
            if lab.ndim != 1:
                raise LoadError(f"{labels_path}: labels must be 1-D class indices, got shape {lab.shape}")
            _check_label_dtype(lab.dtype, str(labels_path))
            if lab.count != img.count:
                raise LoadError(
                    f"{labels_path}: {lab.count} labels, but {images_path.name} has {img.count} images"
                )
        n = img.count if limit is None else min(limit, img.count)
        x = img.read(n, _F32, scale=img.dtype == np.uint8)
        labels = None if lab is None else _labels_to_tensor(lab.read(n, _I64), str(labels_path))
    if x.ndim == 3:  # (N, H, W) -> (N, 1, H, W); (N, D) features and (N, C, H, W) stay as they are
        x = x.reshape(x.shape[0], 1, *x.shape[1:])
    why = "" if labels is not None else (
        f"no labels file beside images {images_path}" + (f" (looked for {guess.name})" if guess is not None else
                                                         " (its name has no images-idx3 to turn into labels-idx1)"))
    return EvalData(torch.from_numpy(x), labels, _sized_name(images_path.name, n, img.count), why)


# ------------------------------------------------------------------------------------------------- NumPy

_INPUT_KEYS = ("x", "inputs", "x_test")
_LABEL_KEYS = ("y", "labels", "y_test")
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}


def _inputs_to_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    if arr.ndim < 1:
        raise LoadError(f"{where}: inputs must have a sample dimension, got a scalar")
    if _input_dtype(arr.dtype, where) == _F32:
        return torch.from_numpy(_as_float_inputs(arr))
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))


def _read_exactly(stream, n: int, what: str, where: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise LoadError(f"{where}: .npy {what} truncated ({len(data)} of {n} bytes)")
    return data


def _read_npy_header(stream, where: str) -> Tuple[tuple, bool, np.dtype, int]:
    """Parse a ``.npy`` header from ``stream`` (left at the first data byte), reading at most
    _NPY_MAX_HEADER + 12 bytes; ``(shape, fortran_order, dtype, header length)``. Object dtypes are refused.

    Format 3.0 differs from 2.0 only in its header's encoding (UTF-8 instead of latin-1), which matters only
    for the field names of structured dtypes, refused anyway: it is parsed as 2.0.
    """
    fmt = np.lib.format
    try:
        major, minor = fmt.read_magic(stream)
    except ValueError as exc:
        raise LoadError(f"{where}: not a .npy array ({exc})") from None
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise LoadError(f"{where}: unsupported .npy format version {major}.{minor}")
    length_fmt = "<H" if major == 1 else "<I"
    length_raw = _read_exactly(stream, struct.calcsize(length_fmt), "header length", where)
    (header_len,) = struct.unpack(length_fmt, length_raw)
    if header_len > _NPY_MAX_HEADER:
        raise LoadError(f"{where}: .npy header of {header_len} bytes, more than the {_NPY_MAX_HEADER} allowed")
    header = _read_exactly(stream, header_len, "header", where)
    parse = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
    try:
        shape, fortran, dtype = parse(io.BytesIO(length_raw + header), max_header_size=_NPY_MAX_HEADER)
    except (ValueError, TypeError, SyntaxError, RecursionError, tokenize.TokenError) as exc:
        # (numpy tokenizes the header's dict literal: an unclosed one ends in a TokenError)
        raise LoadError(f"{where}: bad .npy header ({exc})") from None
    if any(d < 0 for d in shape):
        raise LoadError(f"{where}: bad .npy header (negative size in shape {shape})")
    if dtype.hasobject:
        raise _pickle_refusal(where)
    return tuple(int(d) for d in shape), fortran, dtype, fmt.MAGIC_LEN + len(length_raw) + header_len


def _open_npy(path: Path) -> _Declared:
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a folder, not a data file")
    stream = open(path, "rb")
    try:
        shape, fortran, dtype, header_len = _read_npy_header(stream, str(path))
        arr = _Declared(str(path), ".npy", stream, shape, dtype, fortran=fortran)
        held = path.stat().st_size - header_len
        if held != arr.nbytes:
            raise LoadError(f"{path}: {arr.declares()} but the file holds {held}")
        return arr
    except BaseException as exc:
        stream.close()
        if isinstance(exc, _READ_ERRORS):
            raise LoadError(f"{path}: cannot read .npy data ({exc})") from exc
        raise


def _open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, archive_size: int) -> _Declared:
    """A ``.npy`` member of an ``.npz``, its header parsed from the member's stream and its declared size
    checked against the zip entry's sizes (which are checked against each other and the archive)."""
    method = _ZIP_METHODS.get(info.compress_type)
    if method is None:
        raise LoadError(f"{where}: compressed with zip method {info.compress_type}, which is not supported "
                        "(stored, deflate, bzip2 and lzma are)")
    if info.flag_bits & 0x1:
        raise LoadError(f"{where}: the zip entry is encrypted")
    if info.header_offset + info.compress_size > archive_size:
        raise LoadError(f"{where}: the zip entry claims {info.compress_size} compressed bytes at offset "
                        f"{info.header_offset}, past the end of the {archive_size}-byte archive")
    if method == "stored" and info.compress_size != info.file_size:
        raise LoadError(f"{where}: stored zip entry of {info.compress_size} bytes claims {info.file_size} "
                        "uncompressed")
    if method != "stored" and info.file_size > _max_inflated(info.compress_size):
        raise LoadError(f"{where}: the zip entry claims {info.file_size} bytes from {info.compress_size} "
                        f"compressed ({method}), more than compression can give (~1032:1 at most for deflate)")
    stream = zf.open(info)
    try:
        shape, fortran, dtype, header_len = _read_npy_header(stream, where)
        arr = _Declared(where, ".npy", stream, shape, dtype, fortran=fortran, compressed=method != "stored",
                        container="zip entry")
        if header_len + arr.nbytes != info.file_size:
            raise LoadError(f"{where}: {arr.declares()} but the zip entry holds {info.file_size - header_len}")
        return arr
    except BaseException as exc:
        stream.close()
        if isinstance(exc, _READ_ERRORS):
            raise LoadError(f"{where}: cannot read .npy data ({exc})") from exc
        raise


def load_npz(path: PathLike, limit: Optional[int] = None) -> EvalData:
    """Load a NumPy ``.npz`` archive with inputs under ``x`` (or ``inputs``) and labels under ``y`` (or ``labels``).

    Keras' ``mnist.npz`` layout (``x_test``, ``y_test``) is accepted too. Labels are optional. The archive is
    read with :mod:`zipfile`, not ``np.load`` (which reads whole members): each member's ``.npy`` header is
    parsed from its stream and checked against the zip entry (declared size, and what its compressed size
    can inflate to) before anything is allocated; then only the first ``limit`` samples are inflated, into
    the result. Arrays of Python objects and non-numeric arrays are refused, as are compression methods
    other than stored, deflate, bzip2 and lzma. Read whole, a member is checked to its CRC.
    """
    path = Path(path)
    limit = _check_limit(limit, path)
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a folder, not a data file")
    try:
        with zipfile.ZipFile(path) as zf, ExitStack() as stack:
            infos = {info.filename: info for info in zf.infolist()}
            keys = [name[:-4] if name.endswith(".npy") else name for name in infos]
            xkey = next((k for k in _INPUT_KEYS if f"{k}.npy" in infos), None)
            if xkey is None:
                raise LoadError(
                    f"{path}: no inputs array; expected a key 'x' or 'inputs', found {keys or 'no arrays'}"
                )
            ykey = next((k for k in _LABEL_KEYS if f"{k}.npy" in infos), None)
            size = path.stat().st_size
            xwhere = f"{path} [{xkey!r}]"
            x = stack.enter_context(_open_member(zf, infos[f"{xkey}.npy"], xwhere, size))
            if x.ndim < 1:
                raise LoadError(f"{xwhere}: inputs must have a sample dimension, got a scalar")
            xdtype = _input_dtype(x.dtype, xwhere)
            y = None
            if ykey is not None:
                ywhere = f"{path} [{ykey!r}]"
                y = stack.enter_context(_open_member(zf, infos[f"{ykey}.npy"], ywhere, size))
                if y.ndim != 1:
                    raise LoadError(f"{ywhere}: labels must be 1-D class indices, got shape {y.shape}")
                _check_label_dtype(y.dtype, ywhere)
                if y.count != x.count:
                    raise LoadError(f"{path}: {x.count} inputs ({xkey!r}) but {y.count} labels ({ykey!r})")
            n = x.count if limit is None else min(limit, x.count)
            inputs = torch.from_numpy(x.read(n, xdtype, scale=x.dtype == np.uint8))
            labels = None if y is None else _labels_to_tensor(y.read(n, _I64), ywhere)
    except LoadError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) + _LZMA_ERRORS \
            as exc:
        raise LoadError(f"{path}: cannot read the .npz archive ({exc})") from exc
    return EvalData(inputs, labels, _sized_name(path.name, n, x.count))


def load_npy(path: PathLike, limit: Optional[int] = None) -> EvalData:
    """Load a single ``.npy`` array as unlabelled inputs.

    The header is parsed with :mod:`numpy.lib.format` (object dtypes refused: nothing is unpickled) and
    header + declared data must be the file's size exactly before anything is allocated; then only the
    first ``limit`` samples are read. A Fortran-order array is read whole (its first samples are spread
    through the file) and the first ``limit`` copied out; :data:`MAX_EVAL_BYTES` applies to the whole array.
    """
    path = Path(path)
    limit = _check_limit(limit, path)
    with _open_npy(path) as x:
        if x.ndim < 1:
            raise LoadError(f"{path}: inputs must have a sample dimension, got a scalar")
        xdtype = _input_dtype(x.dtype, str(path))
        n = x.count if limit is None else min(limit, x.count)
        inputs = torch.from_numpy(x.read(n, xdtype, scale=x.dtype == np.uint8))
    return EvalData(inputs, None, _sized_name(path.name, n, x.count))


# -------------------------------------------------------------------------------------------- dispatch


def eval_data_from_factory(ref: str, limit: Optional[int] = None) -> EvalData:
    """Call the factory ``package.module:callable`` (no arguments) for eval data. It may return an
    :class:`EvalData` (used as it is, or its :meth:`~EvalData.subset` with a limit), ``(inputs[, labels])``,
    or a dict with inputs under ``x``/``inputs`` and labels under ``y``/``labels``: arrays or tensors,
    converted as the file readers convert them (only the first ``limit`` samples). Only code the user
    named is imported and run."""
    limit = _check_limit(limit)  # named by load_eval_data, as the other factory errors are
    fn = resolve_factory(ref)
    try:
        out = fn()
    except Exception as exc:
        raise LoadError(f"factory failed: {type(exc).__name__}: {exc}") from None
    return eval_data_from_output(out, ref, limit)


def eval_data_from_output(out, ref: str, limit: Optional[int] = None) -> EvalData:
    """What a data factory ``ref`` returned, as :class:`EvalData` (see :func:`eval_data_from_factory`)."""
    limit = _check_limit(limit)
    if isinstance(out, EvalData):
        return out if limit is None or limit >= len(out) else out.subset(limit)
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

    return _eval_data(array(x, "inputs"), None if y is None else array(y, "labels"), ref, "inputs", "labels", ref,
                      limit)


def _eval_data(x: np.ndarray, y: Optional[np.ndarray], where: str, xname: str, yname: str, label: str,
               limit: Optional[int] = None) -> EvalData:
    """In-memory inputs and optional labels as an :class:`EvalData` named ``label (count)``, with the
    conversions and checks every reader applies; only the first ``limit`` samples are converted."""
    xwhere = f"{where} [{xname!r}]"
    if x.ndim < 1:
        raise LoadError(f"{xwhere}: inputs must have a sample dimension, got a scalar")
    total = x.shape[0]
    if y is not None and y.ndim == 1 and y.shape[0] != total:
        raise LoadError(f"{where}: {total} inputs ({xname!r}) but {y.shape[0]} labels ({yname!r})")
    n = total if limit is None else min(limit, total)
    _check_cap(xwhere, x.shape, n, _input_dtype(x.dtype, xwhere))
    inputs = _inputs_to_tensor(x[:n], xwhere)
    labels = None
    if y is not None:
        labels = _labels_to_tensor(y[:n] if y.ndim == 1 else y, f"{where} [{yname!r}]")
    return EvalData(inputs, labels, _sized_name(label, n, total))


def load_eval_data(path: PathLike, limit: Optional[int] = None) -> EvalData:
    """Load evaluation data from ``path``, choosing the reader by content (and name as a fallback).

    - ``.npz`` (zip archive): :func:`load_npz`
    - ``.npy``: :func:`load_npy` (inputs only)
    - IDX, plain or gzipped: :func:`load_idx_pair` (labels found next to the images if named the MNIST way);
      a lone IDX labels file is refused.
    - ``package.module:callable`` that is not an existing path: :func:`eval_data_from_factory`.

    ``limit`` keeps the first ``limit`` samples (``None``: all), reading only the bytes they need.
    """
    if is_factory_ref(path):
        try:
            return eval_data_from_factory(path, limit)
        except LoadError as exc:
            raise LoadError(f"eval data {path!r}: {exc}") from None
    path = Path(path)
    limit = _check_limit(limit, path)
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a folder; choose the images file inside it")
    if not path.is_file():  # a FIFO would block the reader, a device (/dev/zero) never end
        raise LoadError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:4] == b"PK\x03\x04" or path.suffix.lower() == ".npz":
        return load_npz(path, limit)
    if magic == b"\x93NUMPY":
        return load_npy(path, limit)
    if magic[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                magic = g.read(4)
        except (OSError, EOFError, zlib.error) as exc:
            raise LoadError(f"{path}: cannot read gzip data ({exc})") from exc
    if len(magic) >= 4 and magic[0] == 0 and magic[1] == 0:
        if magic[3] == 1 and magic[2] in _IDX_DTYPES:
            raise LoadError(f"{path}: this is an IDX labels file; choose the matching images file instead")
        return load_idx_pair(path, limit=limit)
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
