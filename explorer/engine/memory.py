"""Freeing a large temporary without holding the GIL while its pages go.

An array above glibc's mmap threshold is its own mapping, and freeing it is a ``munmap``. That runs where
the last reference goes: in a worker, under the GIL. Unmapping 400 MB of touched pages takes about 1 ms on
a quiet process, but in the window, beside other threads that page-fault and run (the accuracy build, the
histogram), the kernel's page-table teardown and TLB shootdowns made single frees hold the GIL for tens of
milliseconds: py-spy ``--gil --native`` on the VGG-16 benchmark found ``NRT_Free -> munmap`` and
``array_dealloc -> munmap`` under the GIL as the workers' largest GIL holders (the survivors a k-means
measurement copies, the bucket arrays of ``kmeans_1d``, the per-init decoded weights), and the window's
event loop stalled behind them.

:func:`drop_pages` gives such an array's pages back first, with ``madvise(MADV_DONTNEED)`` through ctypes,
which releases the GIL for the call; the free that follows then unmaps an empty range. It is for an
array about to be deleted by its only holder: it checks that nothing else refers to the array (no other
reference, no view, no tensor sharing it) and does nothing otherwise, and nothing on platforms without
``madvise`` or below :data:`MIN_BYTES`. After it, the array reads as zeros: the caller deletes it next.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from typing import Optional

import numpy as np

__all__ = ["drop_pages", "MIN_BYTES"]

MIN_BYTES = 16 << 20  # smaller arrays free quickly (and may not be mappings of their own)
CHUNK_BYTES = 8 << 20  # released per call (a multiple of the page size)
_MADV_DONTNEED = 4  # Linux's value
_PAGE = mmap.PAGESIZE
_madvise = None  # the libc function, looked up on first use (False where there is none)


def _libc_madvise():
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            try:
                f = ctypes.CDLL(None, use_errno=True).madvise  # CDLL: the GIL is released during the call
                f.argtypes, f.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
                _madvise = f
            except (OSError, AttributeError):
                pass
    return _madvise


def _holders(a) -> int:
    return sys.getrefcount(a)


def _one_holder() -> int:
    """What :func:`_holders` counts, called from :func:`drop_pages`, for an array held by one local of its
    caller (measured, not assumed: the count differs between Python versions)."""
    def caller():
        x = np.empty(1)
        return drop_pages(x, _count_only=True)
    return caller()


_ONE: Optional[int] = None


def drop_pages(a: np.ndarray, _count_only: bool = False):
    """Return the pages of ``a`` to the kernel now, outside the GIL, if ``a`` is a C-contiguous array of at
    least :data:`MIN_BYTES` that only the caller's one reference holds (its memory its own or numba's, no
    views, no tensor on it). Returns whether it did. The caller must delete ``a`` right after: its contents
    read as zeros from here on."""
    if _count_only:
        return _holders(a)
    global _ONE
    if not isinstance(a, np.ndarray) or a.nbytes < MIN_BYTES or not a.flags.c_contiguous:
        return False
    if _ONE is None:
        _ONE = _one_holder()
    if _holders(a) != _ONE:
        return False  # another reference or a view of it: its memory is still in use
    base = a.base
    if base is not None:
        # numba's arrays: the memory is its MemInfo's, which a alone may hold (getrefcount: a's reference, this
        # local, the argument), and whose memory no other array of numba's shares (each array numba returns
        # gets a MemInfo object of its own: its ``refcount`` counts them)
        if type(base).__name__ != "_MemInfo" or sys.getrefcount(base) > 3 or getattr(base, "refcount", 2) != 1:
            return False
    del base
    madvise = _libc_madvise()
    if not madvise:
        return False
    start = -(-a.ctypes.data // _PAGE) * _PAGE  # the whole pages inside the array
    end = (a.ctypes.data + a.nbytes) // _PAGE * _PAGE
    if end <= start:
        return False
    # in chunks: the kernel holds the process's mmap lock (for reading) while it frees a range, and a thread
    # that maps or unmaps memory meanwhile waits, and every page fault after it (the GUI thread's too)
    for at in range(start, end, CHUNK_BYTES):
        if madvise(at, min(CHUNK_BYTES, end - at), _MADV_DONTNEED) != 0:
            return False
    return True
