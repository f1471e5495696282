"""The engine's caches, bounded by the bytes they hold: :class:`Recent` (a thread-safe LRU dict with a byte
budget; what an entry holds is measured by :func:`held_bytes`) and :class:`TensorCache` (per-tensor
results of pruning + quantization, reused by the next :func:`~explorer.engine.compress.compress` of the
same model). Used by the compression pipeline, the window's preview and sweeps, and the file reader.
"""

from __future__ import annotations

import functools
import sys
import threading
import types
from typing import Any, Callable, Optional

import numpy as np
import torch

from explorer.engine.plan import LayerSettings

DEFAULT_CACHE_BYTES = 64 << 20  # a Recent given no byte budget of its own
TENSOR_CACHE_BYTES = 64 << 20  # TensorCache(): full per-tensor results (mask, codes, decoded weight)
_OBJECT_BYTES = 56  # an ndarray's or tensor's own header, beyond its buffer (a rough figure)


def held_bytes(value) -> int:
    """The memory ``value`` holds, in bytes: what a cache entry costs.

    Counts the buffers of numpy arrays and torch tensors (a tensor's storage; each buffer once, a view as
    the array or tensor it views), and the Python objects around them (``sys.getsizeof``), walking
    containers, dataclasses, ``__slots__`` and attributes. An object whose type has a ``held_bytes()``
    method says its own (e.g. a :class:`Recent` inside a value: what it holds now). Functions, classes
    and modules are not walked. A container or object reached twice is counted once; strings and numbers
    are counted where they occur (a small overestimate for shared ones, e.g. dict keys)."""
    getsizeof = sys.getsizeof
    seen: set = set()
    buffers: set = set()
    total = 0
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        obj = pop()
        t = type(obj)
        if t in _ATOMS:
            total += getsizeof(obj)
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if t is dict:
            total += getsizeof(obj)
            extend(obj.keys())
            extend(obj.values())
        elif t is list or t is tuple:
            total += getsizeof(obj)
            extend(obj)
        elif isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            total += _OBJECT_BYTES
            if base.base is not None and isinstance(base.base, (torch.Tensor, bytes, bytearray)):
                push(base.base)  # a view of a tensor's (or a bytes object's) memory
                continue
            key = (base.__array_interface__["data"][0], base.nbytes)
            if key not in buffers:
                buffers.add(key)
                total += base.nbytes
        elif isinstance(obj, torch.Tensor):
            total += _OBJECT_BYTES
            try:
                storage = obj.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
            except (RuntimeError, NotImplementedError, TypeError):  # sparse, meta, ...: its elements
                key = (id(obj), obj.numel() * obj.element_size())
            if key not in buffers:
                buffers.add(key)
                total += key[1]
        elif isinstance(obj, (str, bytes, bytearray, int, float, complex, np.generic)):
            total += getsizeof(obj)
        elif isinstance(obj, memoryview):
            total += getsizeof(obj) + obj.nbytes
        elif isinstance(obj, _OPAQUE):
            continue
        else:
            own = getattr(t, "held_bytes", None)
            if callable(own):
                total += int(own(obj))
                continue
            total += getsizeof(obj)
            if isinstance(obj, dict):
                extend(obj.keys())
                extend(obj.values())
            elif isinstance(obj, (list, tuple, set, frozenset)):
                extend(obj)
            else:
                d = getattr(obj, "__dict__", None)
                if isinstance(d, dict):
                    total += getsizeof(d)
                    extend(d.values())
                for slot in _slots(t):
                    push(getattr(obj, slot, None))
    return total


_ATOMS = frozenset({str, int, float, bool, type(None), bytes, complex})
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


@functools.lru_cache(maxsize=None)  # one entry per class: bounded by the program's classes
def _slots(cls) -> tuple:
    out = []
    for klass in cls.__mro__:
        slots = getattr(klass, "__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__"):
                out.append(slot)
    return tuple(out)


class Recent:
    """A thread-safe LRU dict bounded by the bytes its entries hold: the least recently used entries are
    dropped first once their costs add up to more than ``limit_bytes`` (and, if ``limit`` is given, once
    there are more than ``limit`` entries). The entry put last is always kept, even when it alone is over
    the budget (the caller is about to use it). An entry costs ``cost(value)`` (:func:`held_bytes` by
    default) plus ``held_bytes(key)``, measured when it is put; a value that grows after that (e.g. a
    sweep state filling in) is measured again by :meth:`refresh`. ``Recent(16)`` (an entry count alone)
    keeps the default byte budget too. Every operation is one dict operation under a lock, the cost
    measured outside it."""

    def __init__(self, limit: Optional[int] = None, limit_bytes: Optional[int] = DEFAULT_CACHE_BYTES,
                 cost: Callable[[Any], int] = held_bytes):
        if limit is None and limit_bytes is None:
            raise ValueError("Recent needs a byte budget (limit_bytes) or an entry count (limit)")
        self.limit, self.limit_bytes, self.cost = limit, limit_bytes, cost
        self._items: dict = {}  # key -> value, least recently used first
        self._costs: dict = {}  # key -> bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evicted = 0

    def get(self, key, default=None):
        """The value under ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            value = self._items.pop(key, _MISSING)
            if value is _MISSING:
                self.misses += 1
                return default
            self._items[key] = value  # most recent last
            self.hits += 1
            return value

    def put(self, key, value) -> None:
        cost = int(self.cost(value)) + held_bytes(key)
        with self._lock:
            if key in self._items:
                del self._items[key]
                self._bytes -= self._costs.pop(key)
            self._items[key] = value
            self._costs[key] = cost
            self._bytes += cost
            self._evict()

    def refresh(self, key) -> None:
        """Measure the value under ``key`` again (it has grown or shrunk since it was put) and drop the
        least recently used others if it no longer fits."""
        with self._lock:
            value = self._items.get(key, _MISSING)
        if value is _MISSING:
            return
        cost = int(self.cost(value)) + held_bytes(key)
        with self._lock:
            if self._items.get(key, _MISSING) is value:
                self._bytes += cost - self._costs[key]
                self._costs[key] = cost
                self._evict()

    def _evict(self) -> None:
        while len(self._items) > 1 and ((self.limit_bytes is not None and self._bytes > self.limit_bytes)
                                        or (self.limit is not None and len(self._items) > self.limit)):
            oldest = next(iter(self._items))
            del self._items[oldest]
            self._bytes -= self._costs.pop(oldest)
            self.evicted += 1

    def clear(self) -> None:
        self.drain()

    def drain(self) -> list:
        """Empty it; the values it held, least recently used first (the caller frees them as it likes)."""
        with self._lock:
            values = list(self._items.values())
            self._items.clear()
            self._costs.clear()
            self._bytes = 0
        return values

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def keys(self) -> list:
        """The keys held now, least recently used first (a snapshot; their order is not changed)."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """What the entries hold, in bytes (as their costs were measured)."""
        return self._bytes

    def held_bytes(self) -> int:
        """For :func:`held_bytes` of a value that holds this cache: what its entries hold."""
        return self._bytes


_MISSING = object()


class TensorCache(Recent):
    """Results of element pruning + quantization per weight tensor — ``(TensorResult, new weight or
    None)`` — reused by the next :func:`compress` of the same model when a tensor and its settings are
    unchanged (the window re-measures after every slider release; usually one layer changed). Keys hold
    the identity and version of the original weight, so a tensor that structured pruning or low-rank
    replaced is never matched. A :class:`Recent`: the least recently used results go first once their
    masks, codes and decoded weights add up to more than ``limit_bytes``. Safe to share between threads."""

    def __init__(self, limit: Optional[int] = None, limit_bytes: int = TENSOR_CACHE_BYTES):
        super().__init__(limit=limit, limit_bytes=limit_bytes)

    @staticmethod
    def key(source: torch.Tensor, tname: str, s: LayerSettings):
        return (tname, id(source), source._version, tuple(source.shape), s.prune, s.quantize)
