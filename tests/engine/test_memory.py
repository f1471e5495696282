"""drop_pages gives a large array's pages back only where nothing else uses its memory."""

import sys

import numpy as np
import pytest
import torch
from numba import njit

from explorer.engine import memory
from explorer.engine.memory import MIN_BYTES, drop_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise: Linux")
N = MIN_BYTES // 4 + 1024  # float32 entries: just above the threshold


@njit(cache=True, nogil=True)
def _made(n):
    return np.ones(n, np.float32)


@njit(cache=True, nogil=True)
def _two_sharing(n):
    a = np.ones(n, np.float32)
    return a, a[: n // 2]


def test_an_array_held_once_is_given_back_and_reads_zeros():
    a = np.ones(N, np.float32)
    assert drop_pages(a)
    assert a[4096:-4096].max() == 0  # its whole pages are zero pages now
    b = _made(N)  # numba's memory
    assert drop_pages(b) and b[4096:-4096].max() == 0


def test_memory_anything_else_refers_to_is_left_alone():
    a = np.ones(N, np.float32)
    other = a  # another reference
    assert not drop_pages(a)
    del other
    view = a[10:]
    assert not drop_pages(a) and view.min() == 1
    del view
    t = torch.from_numpy(a)  # a tensor sharing it
    assert not drop_pages(a) and float(t.min()) == 1
    del t
    holder = [a]
    assert not drop_pages(a)
    del holder
    x, y = _two_sharing(N)  # two arrays of one numba allocation
    assert not drop_pages(x) and y.min() == 1
    small = np.ones(1000, np.float32)
    assert not drop_pages(small)
    strided = np.ones(2 * N, np.float32)[::2]
    assert not drop_pages(strided)
    assert drop_pages(a)  # held once again


def test_without_madvise_nothing_happens(monkeypatch):
    monkeypatch.setattr(memory, "_madvise", False)
    a = np.ones(N, np.float32)
    assert not drop_pages(a) and a.min() == 1
