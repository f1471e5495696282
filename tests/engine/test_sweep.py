"""A tensor's sweep state gives the sizes compress_weight gives, to the bit, at any amount."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
from torch import nn

from explorer.engine.compress import compress_weight
from explorer.engine.measure.evaluate import preview_plan
from explorer.engine.measure.preview import Previewer
from explorer.engine.measure.sweep import TensorSweep
from explorer.engine.model.loading import LoadedModel
from explorer.engine.plan import Plan, validate_settings


def _weights():
    g = torch.Generator().manual_seed(3)
    normal = torch.randn(256, 128, 3, 3, generator=g) * 0.05
    heavy = torch.randn(300, 400, generator=g) ** 3
    # few distinct magnitudes: thresholds fall inside large groups of ties (+t and -t)
    coarse = torch.randint(-40, 41, (200, 300), generator=g).float() / 8
    zeros = torch.randn(400, 400, generator=g)
    zeros[torch.rand(400, 400, generator=g) < 0.4] = 0.0
    skewed = torch.randn(240, 240, generator=g).abs() + 0.01  # all positive: survivors' min moves
    skewed[0, 0] = -3.0
    return {"normal": normal, "heavy": heavy, "coarse": coarse, "zeros": zeros, "skewed": skewed}


WEIGHTS = _weights()
AMOUNTS = [0.05, 0.3, 0.5, 0.77, 0.9, 0.99, 12345]


def _same(fast, full):
    assert fast.sizes.to_dict() == full.sizes.to_dict()
    assert fast.nonzero == full.nonzero
    if full.quant is None:
        assert fast.quant is None
        return
    np.testing.assert_array_equal(fast.quant.codebook, full.quant.codebook)
    assert fast.quant.info == full.quant.info and fast.quant.side_bits == full.quant.side_bits
    assert fast.quant.mse == pytest.approx(full.quant.mse, rel=1e-9, abs=1e-300)
    assert fast.quant.rel_error == pytest.approx(full.quant.rel_error, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_pruning_sizes_equal_compress_weight(name):
    w = WEIGHTS[name]
    sweep = TensorSweep(w)
    for amount in AMOUNTS:
        s = validate_settings("t", {"prune": {"amount": amount}})
        fast = sweep.measure(s)
        assert fast is not None, amount
        _same(fast, compress_weight("t", w, s)[0])


@pytest.mark.parametrize("name", sorted(WEIGHTS))
@pytest.mark.parametrize("bits,init", [(1, "linear"), (3, "density"), (5, "linear"), (8, "linear"), (8, "density")])
def test_kmeans_sizes_equal_compress_weight(name, bits, init):
    w = WEIGHTS[name]
    sweep = TensorSweep(w)
    for amount in AMOUNTS:  # the bucket path, and (few survivors, survivors' extremes moved) the direct one
        s = validate_settings("t", {"prune": {"amount": amount},
                                    "quantize": {"method": "kmeans", "bits": bits, "init": init}})
        fast = sweep.measure(s)
        assert fast is not None, amount
        _same(fast, compress_weight("t", w, s)[0])


def test_kmeans_takes_both_paths(monkeypatch):
    """Many survivors go through the bucket path, few (and a moved extreme) through the direct one."""
    taken = []
    real = TensorSweep._kmeans_exact
    monkeypatch.setattr(TensorSweep, "_kmeans_exact", lambda self, *a: taken.append("direct") or real(self, *a))
    s = lambda a: validate_settings("t", {"prune": {"amount": a}, "quantize": {"bits": 5}})  # noqa: E731
    sweep = TensorSweep(WEIGHTS["normal"])
    assert sweep.measure(s(0.5)) is not None and taken == []
    assert sweep.measure(s(0.99)) is not None and taken == ["direct"]
    positive = torch.rand(300, 300, generator=torch.Generator().manual_seed(5)) + 0.01  # the minimum is pruned
    fast = TensorSweep(positive).measure(s(0.3))  # 63,000 survivors, more than kmeans_1d sorts
    assert taken == ["direct", "direct"]
    _same(fast, compress_weight("t", positive, s(0.3))[0])


def test_partial_ties_take_the_earliest_positions():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(300, 300, generator=g)
    flat = w.view(-1)
    tied = torch.randperm(flat.numel(), generator=g)[:6000]
    flat[tied] = torch.where(torch.rand(6000, generator=g) < 0.5, -0.5, 0.5)
    below = int((flat.abs() < 0.5).sum())
    sweep = TensorSweep(w)
    covered = 0
    # counts that cut through the 6,000 weights of magnitude 0.5: some kept, the earliest first
    for amount in (below, below + 1, below + 2999, below + 5999, below + 6000):
        for q in (None, {"method": "kmeans", "bits": 4}, {"method": "kmeans", "bits": 6, "init": "density"}):
            raw = {"prune": {"amount": amount}}
            if q:
                raw["quantize"] = q
            s = validate_settings("t", raw)
            fast = sweep.measure(s)
            if fast is not None:
                covered += 1
                _same(fast, compress_weight("t", w, s)[0])
    assert covered >= 10  # k-means too (a heavy tie bucket can make kmeans_1d sort instead: not covered)


def test_what_is_not_covered_returns_none():
    w = WEIGHTS["normal"]
    sweep = TensorSweep(w)
    for raw in ({}, {"quantize": {"bits": 4}}, {"prune": {"amount": 0.5, "granularity": "filter"}},
                {"prune": {"amount": 0.5}, "quantize": {"method": "uniform", "bits": 4}},
                {"prune": {"amount": 0.5}, "quantize": {"bits": 4, "init": "forgy"}}):
        assert sweep.measure(validate_settings("t", raw)) is None, raw
    assert TensorSweep(w.double()).measure(validate_settings("t", {"prune": {"amount": 0.5}})) is None
    bad = w.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert TensorSweep(bad).measure(validate_settings("t", {"prune": {"amount": 0.5}})) is None


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(256, 400)
        self.fc2 = nn.Linear(400, 300)
        self.fc3 = nn.Linear(300, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _without_errors(summary):
    out = copy.deepcopy(summary)
    errors = []
    for layer in out["layers"]:
        for t in layer["tensors"]:
            if t["quant"]:
                errors.append((t["quant"].pop("mse"), t["quant"].pop("rel_error")))
    return out, errors


def test_previewer_uses_the_sweep_and_equals_the_full_preview(monkeypatch):
    import explorer.engine.measure.preview as preview_mod

    loaded = LoadedModel(Wide().eval(), torch.randn(2, 256), None, source="wide")
    pv = Previewer(loaded)
    calls = []
    compress_mod = importlib.import_module("explorer.engine.compress")  # what compress_weight_cached calls

    real = compress_mod.compress_weight
    monkeypatch.setattr(compress_mod, "compress_weight", lambda name, *a: calls.append(name) or real(name, *a))
    for amount in (0.4, 0.55, 0.65):  # fc1 keeps > 32768 weights: k-means buckets rather than sorts
        for bits in (None, 5):
            layer = {"prune": {"amount": amount}}
            if bits:
                layer["quantize"] = {"method": "kmeans", "bits": bits}
            plan = Plan.from_dict({"version": 1, "layers": {"fc1": layer, "fc2": layer}})
            got, got_err = _without_errors(pv.measure(plan))
            want, want_err = _without_errors(preview_plan(loaded, plan)[0])
            assert got == want
            np.testing.assert_allclose(got_err, want_err, rtol=1e-9)
    assert "fc1" not in calls and "fc2" not in calls  # both measured by their sweeps
    # the runnable model is still built from the full results, and the sizes agree
    built = pv.build(plan)
    assert built.bytes == preview_plan(loaded, plan)[1].bytes
    assert not any(t.sizes_only for layer in built.layers.values() for t in layer.tensors)


def test_layer_view_from_the_sweep_equals_the_reference():
    from explorer.engine.measure.layerview import layer_preview

    loaded = LoadedModel(Wide().eval(), torch.randn(2, 256), None, source="wide")
    pv = Previewer(loaded)
    for raw in ({"prune": {"amount": 0.45}}, {"prune": {"amount": 0.6}, "quantize": {"bits": 5}},
                {"prune": {"amount": 0.3}, "quantize": {"bits": 3, "init": "density"}}):
        s = validate_settings("t", raw)
        pv.measure(Plan.from_dict({"version": 1, "layers": {"fc2": raw}}))  # as the window does: sizes first
        got, ref = pv.layer("fc2", s), layer_preview("fc2", pv.modules["fc2"], s)
        assert pv.cache.get(pv.cache.key(pv.modules["fc2"].weight, "fc2", s)) is None  # nothing was compressed
        assert got.threshold == ref.threshold
        for field in ("edges", "kept", "pruned", "levels"):
            if getattr(ref, field) is None:
                assert getattr(got, field) is None
            else:
                np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=field)
        if ref.quant_mse is not None:
            assert got.quant_mse == pytest.approx(ref.quant_mse, rel=1e-9)
            assert got.info["rel_error"] == pytest.approx(ref.info["rel_error"], rel=1e-9)


def test_prepare_measures_the_slider_amounts_ahead(monkeypatch):
    import explorer.engine.measure.sweep as sweep_mod

    loaded = LoadedModel(Wide().eval(), torch.randn(2, 256), None, source="wide")
    pv = Previewer(loaded)
    s = validate_settings("t", {"prune": {"amount": 0.5}, "quantize": {"bits": 4}})
    reports = []
    pv.prepare("fc2", s, lambda f, m: reports.append(f) or True, amounts=(0.36, 0.37, 0.5))
    assert reports and reports[-1] == 1.0
    calls = []
    real = sweep_mod.TensorSweep.measure
    monkeypatch.setattr(sweep_mod.TensorSweep, "measure", lambda self, st: calls.append(st) or real(self, st))
    plan = Plan.from_dict({"version": 1, "layers": {"fc2": {"prune": {"amount": 0.37}, "quantize": {"bits": 4}}}})
    got, _ = _without_errors(pv.measure(plan))
    assert [c for c in calls if c.prune is not None] == []  # fc2 was measured ahead (the others: nothing to do)
    assert got == _without_errors(preview_plan(loaded, plan)[0])[0]
    # cancelled: stops at its next report
    from explorer.engine.errors import Cancelled

    pv2 = Previewer(loaded)
    seen = []
    with pytest.raises(Cancelled):
        pv2.prepare("fc2", s, lambda f, m: seen.append(f) or len(seen) < 2)
    assert len(seen) == 2


def test_prepare_skips_what_the_sweep_does_not_cover():
    loaded = LoadedModel(Wide().eval(), torch.randn(2, 256), None, source="wide")
    pv = Previewer(loaded)
    pv.prepare("fc2", validate_settings("t", {"prune": {"amount": 0.5, "granularity": "filter"}}))
    pv.prepare("fc2", validate_settings("t", {"quantize": {"bits": 4, "method": "uniform"}}))
    assert len(pv.cache._items) == 0 and len(pv._measured) == 0  # nothing was compressed


def test_sorted_magnitudes_are_the_layers_or_its_samples():
    loaded = LoadedModel(Wide().eval(), torch.randn(2, 256), None, source="wide")
    pv = Previewer(loaded)
    w = pv.modules["fc2"].weight.detach().reshape(-1)
    got = pv.sorted_magnitudes("fc2")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.astype(np.float64), np.sort(np.abs(w.double().numpy())))
    pv64 = Previewer(LoadedModel(Wide().double().eval(), torch.randn(2, 256).double(), None, source="wide"))
    np.testing.assert_array_equal(pv64.sorted_magnitudes("fc2"), np.sort(np.abs(w.double().numpy())))


def test_sorted_magnitudes_of_a_large_layer_are_its_histograms_sample(monkeypatch):
    import explorer.engine.measure.layerview as layerview
    import explorer.engine.measure.preview as preview

    monkeypatch.setattr(layerview, "DISPLAY_MAX", 1000)
    monkeypatch.setattr(preview, "DISPLAY_MAX", 1000, raising=False)
    pv = Previewer(LoadedModel(Wide().eval(), torch.randn(2, 256), None, source="wide"))
    w = pv.modules["fc2"].weight.detach().reshape(-1).numpy()
    stride = layerview.display_stride(w.size)
    assert stride > 1
    np.testing.assert_array_equal(pv.sorted_magnitudes("fc2"), np.sort(np.abs(w[::stride])))


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_thresholds_equal_a_full_sort_at_every_rank_kind(name, monkeypatch):
    """The radix select (a bin histogram, then one bin's members sorted) finds what sorting every key finds:
    the key at each rank, the ties kept, and the count of equal keys; with batches split (a small batch
    limit) as with one pass for all."""
    import explorer.engine.measure.sweep as sweep_module

    w = WEIGHTS[name].reshape(-1).numpy()
    keys = np.sort(w.view(np.uint32) & np.uint32(0x7FFFFFFF))
    n = w.size
    ks = sorted({1, 2, n // 3, n // 2, n - 2, n - 1} | {max(1, min(n - 1, round(n * f))) for f in np.linspace(0, 1, 41)})
    for limit in (sweep_module.BATCH_MEMBERS, 1):
        monkeypatch.setattr(sweep_module, "BATCH_MEMBERS", limit)
        sweep = TensorSweep(WEIGHTS[name])
        sweep._magnitudes.ranked([n - k for k in ks])  # all at once (in batches), then each looked up
        for k in ks:
            T = int(keys[n - k])
            above = n - int(np.searchsorted(keys, np.uint32(T), side="right"))
            assert sweep.threshold(k) == (T, k - above), (k, limit)
            assert sweep._count(T) == int(np.count_nonzero(keys == T))
        assert sweep._count(0) == int(np.count_nonzero(keys == 0))
        fresh = TensorSweep(WEIGHTS[name])  # one at a time, no batch
        for k in ks[::7]:
            assert fresh.threshold(k) == sweep.threshold(k)


def test_the_sweep_holds_no_copy_of_the_weights_magnitudes():
    w = torch.randn(1000, 1000)
    sweep = TensorSweep(w)
    sweep.measure(validate_settings("t", {"prune": {"amount": 0.9}}))
    sweep.prepare(validate_settings("t", {"prune": {"amount": 0.9}}))
    assert sweep.held_bytes() < 0.5 * 4 * w.numel()  # the histogram and the thresholds found, no sorted keys

@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_coarser_bucket_counts_are_read_from_a_finer_grouping(name, monkeypatch):
    """A large layer holds one grouping (the finest its amounts chose); counting a coarser bucket number, as
    choose_buckets does first, sums its counts instead of grouping the weights again, and gives the same
    results, to the bit."""
    import explorer.engine.measure.sweep as sweep_mod
    from explorer.engine.methods.kmeans import HIST_BINS

    w = WEIGHTS[name]
    sweep = TensorSweep(w)
    fine = sweep._group(HIST_BINS)
    for nb in (4096, 8192, 32768):  # the counts of nb buckets are a finer grouping's summed by runs
        coarse = sweep_mod._group_kernel(sweep.values, sweep.lo, nb / (sweep.hi - sweep.lo), nb)
        np.testing.assert_array_equal(np.diff(coarse[1]), np.diff(fine[1]).reshape(nb, -1).sum(axis=1))
    made, chosen = [], []
    group_kernel, choose = sweep_mod._group_kernel, sweep_mod.choose_buckets
    monkeypatch.setattr(sweep_mod, "_group_kernel", lambda *a: made.append(a[-1]) or group_kernel(*a))
    monkeypatch.setattr(sweep_mod, "choose_buckets",
                        lambda *a: (lambda c: chosen.append(c and c[0]) or c)(choose(*a)))
    for amount in AMOUNTS:
        for bits, init in ((3, "density"), (5, "linear")):
            s = validate_settings("t", {"prune": {"amount": amount},
                                        "quantize": {"method": "kmeans", "bits": bits, "init": init}})
            _same(sweep.measure(s), compress_weight("t", w, s)[0])
    assert set(made) <= set(chosen) - {HIST_BINS}  # grouped again only for a bucket number chosen
