"""The engine's caches are bounded by the bytes their values hold (issue 12, item 8): ``Recent``, an LRU
dict with a byte budget and a cost function, is the one mechanism; ``held_bytes`` measures a value."""

from __future__ import annotations

import importlib
import random
import sys
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from explorer.engine.cache import Recent, TensorCache, held_bytes
from explorer.engine.compress import compress_weight
from explorer.engine.measure import preview as preview_mod
from explorer.engine.measure import sweep as sweep_mod
from explorer.engine.measure.preview import PREPARED_AMOUNTS, Previewer
from explorer.engine.measure.sweep import TensorSweep
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan, validate_settings


def _entry(key, n: int) -> int:
    """What an entry of an n-byte array under ``key`` costs in a Recent: the array and the key."""
    return held_bytes(np.zeros(n, np.uint8)) + held_bytes(key)


# ------------------------------------------------------------------------------------------ held_bytes


def test_held_bytes_counts_array_and_tensor_buffers_once():
    a = np.zeros(10_000)  # 80,000 bytes
    assert 80_000 <= held_bytes(a) < 80_000 + 200
    assert held_bytes((a, a)) < 80_000 + 400  # the same array twice: its buffer once
    assert held_bytes((a, a[10:], a.view(np.uint64))) < 80_000 + 600  # views: the buffer they view, once
    b = np.ones(5_000, np.float32)
    assert 100_000 <= held_bytes([a, b]) < 100_000 + 400
    t = torch.zeros(1000, 100)  # 400,000 bytes of storage
    assert 400_000 <= held_bytes(t) < 400_000 + 200
    assert held_bytes((t, t.reshape(-1), t[:10], t.numpy())) < 400_000 + 600  # views and numpy's view of it
    assert 400_000 + 80_000 <= held_bytes({"t": t, "a": a}) < 480_000 + 1000
    blob = bytes(123_456)
    assert 123_456 <= held_bytes(blob) < 123_456 + 100


@dataclass
class _Result:
    mask: np.ndarray
    codes: np.ndarray
    info: dict


class _Slotted:
    __slots__ = ("values", "name")

    def __init__(self, values, name):
        self.values, self.name = values, name


class _SaysItsOwn:
    def __init__(self, n):
        self.hidden = np.zeros(n)  # not walked: the object's own figure counts

    def held_bytes(self) -> int:
        return 7


def test_held_bytes_walks_dataclasses_slots_containers_and_asks_objects_that_know():
    r = _Result(np.zeros(1000, bool), np.zeros(1000, np.int64), {"initial": [0.5] * 100})
    got = held_bytes(r)
    assert 1000 + 8000 + 100 * sys.getsizeof(0.5) <= got < 1000 + 8000 + 100 * sys.getsizeof(0.5) + 2000
    assert 40_000 <= held_bytes(_Slotted(np.zeros(5000), "x")) < 40_000 + 500
    assert held_bytes(_SaysItsOwn(10_000)) == 7
    inner = Recent(limit_bytes=1 << 20)
    inner.put("k", np.zeros(1000))
    assert held_bytes([inner]) - sys.getsizeof([inner]) == inner.nbytes  # a cache inside a value: what it holds
    cyclic: list = [np.zeros(100)]
    cyclic.append(cyclic)
    assert 800 <= held_bytes(cyclic) < 800 + 500  # cycles end


def test_tensor_cache_entries_cost_their_mask_codes_and_decoded_weight():
    w = torch.randn(200, 100)
    settings = validate_settings("t", {"prune": {"amount": 0.5}, "quantize": {"bits": 4, "method": "uniform"}})
    result, new = compress_weight("fc", w, settings)
    n = w.numel()
    cost = held_bytes((result, new))
    # mask (1 byte per weight), codes (int64) and the decoded weight (float32), which `new` is
    assert n * (1 + 8 + 4) <= cost < n * (1 + 8 + 4) + 16_000
    key_cost = held_bytes(("fc", 0))
    cache = TensorCache(limit_bytes=3 * (cost + key_cost))
    for i in range(5):
        cache.put(("fc", i), (result, new))
    assert len(cache) == 3 and cache.nbytes == 3 * (cost + key_cost)
    assert cache.get(("fc", 0)) is None and cache.get(("fc", 4))[0] is result
    assert cache.hits == 1


# ------------------------------------------------------------------------------------------ Recent


def _array(n: int, fill: int = 0) -> np.ndarray:
    return np.full(n, fill, np.uint8)


def test_recent_evicts_by_bytes_least_recently_used_first():
    one = _entry("a", 4000)
    cache = Recent(limit_bytes=3 * one)
    for key in "abc":
        cache.put(key, _array(4000))
    assert len(cache) == 3 and cache.nbytes == 3 * one
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", _array(4000))
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put("e", _array(8000))  # twice as large: two entries go, the least recently used first
    assert [k for k in "acde" if k in cache] == ["d", "e"]
    assert cache.nbytes == one + _entry("e", 8000) <= cache.limit_bytes
    assert cache.evicted == 3


def test_recent_counts_keys_too():
    cache = Recent(limit_bytes=1 << 20, cost=lambda v: 0)
    cache.put("k" * 10_000, None)
    assert cache.nbytes >= 10_000


def test_recent_counts_many_small_values_against_the_same_budget():
    cache = Recent(limit_bytes=100_000)
    for i in range(1000):
        cache.put(i, _array(1000))
    assert cache.nbytes <= 100_000 and 80 <= len(cache) < 100  # by bytes, not by entries
    assert list(cache._items) == list(range(1000 - len(cache), 1000))  # the most recent ones


def test_recent_keeps_the_value_put_last_even_when_it_alone_is_over_budget():
    cache = Recent(limit_bytes=10_000)
    cache.put("small", _array(1000))
    cache.put("huge", _array(50_000))
    assert list(cache._items) == ["huge"] and cache.nbytes == _entry("huge", 50_000)
    cache.put("small", _array(1000))  # the next put lets it go
    assert list(cache._items) == ["small"]


def test_recent_replacing_a_value_replaces_its_cost():
    cache = Recent(limit_bytes=1 << 20)
    cache.put("k", _array(10_000))
    cache.put("k", _array(100))
    assert len(cache) == 1 and cache.nbytes == _entry("k", 100)
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_recent_refresh_measures_a_grown_value_again_and_evicts_for_it():
    k = held_bytes("old")  # both keys cost the same
    cache = Recent(limit_bytes=20_000 + 2 * k, cost=lambda v: sum(a.nbytes for a in v))
    cache.put("old", [_array(5000)])
    grows = [_array(1000)]
    cache.put("new", grows)
    assert cache.nbytes == 6000 + 2 * k
    grows.append(_array(13_000))  # the value filled in after it was put
    cache.refresh("new")
    assert cache.nbytes == 19_000 + 2 * k and "old" in cache
    grows.append(_array(2000))
    cache.refresh("new")
    assert list(cache._items) == ["new"] and cache.nbytes == 16_000 + k
    cache.refresh("missing")  # nothing to do


def test_recent_with_an_entry_count_still_works_and_has_a_byte_budget_too():
    cache = Recent(2)  # as fileformat's _SCRIPTED_BLOBS is built
    for key in "abc":
        cache.put(key, b"x")
    assert list(cache._items) == ["b", "c"]
    assert cache.limit_bytes is not None
    small = Recent(100, limit_bytes=10_000)
    for i in range(10):
        small.put(i, _array(3000))
    assert len(small) == 3
    with pytest.raises(ValueError):
        Recent(limit_bytes=None)


def test_recent_get_tells_a_stored_none_from_a_miss_by_its_default():
    cache = Recent(limit_bytes=1 << 20)
    marker = object()
    assert cache.get("x", marker) is marker and cache.misses == 1
    cache.put("x", 0)
    assert cache.get("x", marker) == 0 and cache.hits == 1


def test_recent_is_consistent_under_concurrent_puts_gets_and_refreshes():
    cache = Recent(limit_bytes=200_000)
    errors = []
    start = threading.Barrier(8)

    def work(seed):
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(3000):
                key = rng.randrange(200)
                op = rng.random()
                if op < 0.5:
                    cache.put(key, _array(rng.choice((100, 1000, 5000)), key % 256))
                elif op < 0.9:
                    value = cache.get(key)
                    if value is not None and int(value[0]) != key % 256:
                        errors.append(f"key {key} gave another key's value")
                else:
                    cache.refresh(key)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # the count kept matches the entries'
    assert cache.nbytes == sum(held_bytes(v) + held_bytes(k) for k, v in cache._items.items())
    assert set(cache._costs) == set(cache._items)
    assert cache.nbytes <= cache.limit_bytes or len(cache) == 1


# ------------------------------------------------------------------------------------------ users


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits-cnn")


def test_every_previewer_cache_is_bounded_by_bytes(cnn):
    pv = Previewer(cnn)
    for cache in (pv.cache, pv._measured, pv._summaries, pv._sweeps, pv._bins):
        assert isinstance(cache, Recent) and cache.limit is None and cache.limit_bytes > 0
    sweep = pv.sweep("fc1")
    assert sweep._groups.limit is None and sweep._groups.limit_bytes == sweep_mod.GROUP_BYTES
    weights = sum(m.weight.numel() for _, m in pv.layers)  # 114,180: a model this small gets the floor
    plans = preview_mod.TENSOR_PLANS * preview_mod.TENSOR_BYTES_PER_WEIGHT * weights
    assert preview_mod.tensor_cache_bytes(pv.layers) == pv.cache.limit_bytes == TensorCache().limit_bytes > plans


def test_the_slider_amounts_prepared_for_two_layers_stay_hits(cnn, monkeypatch):
    """The budgets hold what the window measures ahead: the 99 slider amounts of the layer being tuned
    and of the one before, with their k-means settings, are all found without measuring again."""
    pv = Previewer(cnn)
    plan = Plan.from_dict({"default": {"prune": {"amount": 0.5}, "quantize": {"bits": 5}}})
    pv.measure(plan)  # the other layers' tensors at the plan's settings
    for name in ("fc1", "conv2"):
        pv.prepare(name, plan.settings_for(name))
    calls = []
    compress_mod = importlib.import_module("explorer.engine.compress")  # what compress_weight_cached calls
    real_measure, real_compress = TensorSweep.measure, compress_mod.compress_weight
    monkeypatch.setattr(TensorSweep, "measure", lambda self, s: calls.append("sweep") or real_measure(self, s))
    monkeypatch.setattr(compress_mod, "compress_weight", lambda *a: calls.append("compress") or real_compress(*a))
    for name in ("fc1", "conv2"):
        for amount in PREPARED_AMOUNTS:
            pv.measure(Plan(plan.default, {name: {"prune": {"amount": amount}}}))
    assert calls == []
    assert pv._measured.nbytes <= pv._measured.limit_bytes


def test_summaries_are_kept_compact_and_come_back_equal(cnn):
    pv = Previewer(cnn)
    plan = Plan.from_dict({"default": {"prune": {"amount": 0.6}, "quantize": {"bits": 4}}})
    first = pv.measure(plan)
    again = pv.measure(plan)
    assert again == first
    assert len(pv._summaries) == 1 and pv._summaries.nbytes < held_bytes(first) / 3


def test_sweep_groups_fit_their_byte_budget_and_prepare_fills_no_more_than_fits(monkeypatch):
    w = torch.randn(300, 400, generator=torch.Generator().manual_seed(1))
    one = TensorSweep(w)._group_bytes(4096)
    monkeypatch.setattr(sweep_mod, "GROUP_BYTES", 3 * one)
    sweep = TensorSweep(w)
    s = validate_settings("t", {"prune": {"amount": 0.5}, "quantize": {"bits": 5}})
    sweep.prepare(s)
    groups = sweep._groups
    assert 1 <= len(groups) <= 3 and groups.evicted == 0
    assert groups.nbytes <= groups.limit_bytes == 3 * one
    for nb, value in groups._items.items():  # the estimate prepare plans with covers what a group holds
        assert held_bytes(value) <= sweep._group_bytes(nb)
    # the groups, the magnitude histogram (a fixed-size table) and the thresholds found: no sorted copy of the keys
    extra = sweep.held_bytes() - groups.nbytes
    assert extra == 512 + sweep._magnitudes.held_bytes() and extra < w.numel() * 4
    before = sweep.measure(s)
    assert before is not None and before.sizes.to_dict() == compress_weight("w", w, s)[0].sizes.to_dict()


def test_the_previewer_re_measures_a_sweep_as_its_state_fills_in(cnn):
    pv = Previewer(cnn)
    sweep = pv.sweep("fc1")
    empty = pv._sweeps.nbytes
    pv.prepare("fc1", validate_settings("t", {"prune": {"amount": 0.5}, "quantize": {"bits": 5}}))
    assert pv._sweeps.nbytes >= empty + sweep.held_bytes() - 1024 > empty
    assert pv._sweeps.nbytes == sum(preview_mod._sweep_cost(v) + held_bytes(k) for k, v in pv._sweeps._items.items())


def test_the_tensor_cache_budget_follows_the_model_between_its_floor_and_cap():
    from torch import nn

    def layers(*sizes):  # on the meta device: shapes without memory
        return [(f"l{i}", nn.Linear(n, 1000, device="meta")) for i, n in enumerate(sizes)]

    per_plan = preview_mod.TENSOR_PLANS * preview_mod.TENSOR_BYTES_PER_WEIGHT
    assert preview_mod.tensor_cache_bytes(layers(10)) == TensorCache().limit_bytes  # the floor
    assert preview_mod.tensor_cache_bytes(layers(4000, 1000)) == per_plan * 5_000_000  # ResNet-18-sized
    assert preview_mod.tensor_cache_bytes(layers(100_000)) == preview_mod.TENSOR_MAX_BYTES  # VGG-sized: the cap
    tied = layers(4000)
    tied.append(("tied", tied[0][1]))  # the same weight under two names counts once
    assert preview_mod.tensor_cache_bytes(tied) == per_plan * 4_000_000
