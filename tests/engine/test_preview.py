"""The incremental previewer tells exactly what the full pipeline tells, faster."""

from __future__ import annotations

import importlib
import threading

import numpy as np
import pytest
import torch
import zoo

import explorer.engine.measure.preview as preview_mod
from explorer.engine.compress import compress
from explorer.engine.errors import PlanError
from explorer.engine.measure.evaluate import preview_plan
from explorer.engine.measure.layerview import layer_preview
from explorer.engine.measure.preview import Previewer
from explorer.engine.model.loading import LoadedModel, load_model
from explorer.engine.plan import LayerSettings, Plan, validate_settings
from explorer.engine.samples import SAMPLES_DIR

# the module (``explorer.engine.compress`` as an attribute is the package's function of that name)
compress_mod = importlib.import_module("explorer.engine.compress")

ELEMENT_PLANS = [
    {},
    {"default": {"prune": {"amount": 0.7}, "quantize": {"bits": 5, "method": "kmeans", "init": "linear"}}},
    {"default": {"quantize": {"bits": 4, "method": "uniform", "symmetric": False, "per_channel": True}}},
    {"default": {"prune": {"amount": 0.5}, "quantize": {"bits": 3, "method": "uniform"}}},
    {"default": {"prune": {"amount": 0.3}, "quantize": {"method": "ternary"}}},
    {"default": {"quantize": {"method": "binary"}}},
    {"default": {"prune": {"amount": 0.9}}, "layers": {"fc*": {"quantize": {"bits": 2, "init": "density"}}}},
]


def _plan(d: dict) -> Plan:
    return Plan.from_dict({"version": 1, **d})


def _loaded(zoo_name: str) -> LoadedModel:
    model, x = zoo.example_inputs()[zoo_name]
    return LoadedModel(model.eval(), x, None, source=f"zoo:{zoo_name}", kind="factory", factory="zoo:MLP")


@pytest.fixture(scope="module")
def samples():
    return {name: load_model(name) for name in ("digits-mlp", "digits-cnn")}


@pytest.mark.parametrize("sample", ["digits-mlp", "digits-cnn"])
def test_measure_equals_the_full_preview_on_the_samples(samples, sample):
    loaded = samples[sample]
    pv = Previewer(loaded)
    plans = [_plan(p) for p in ELEMENT_PLANS if "fc*" not in str(p) or sample == "digits-mlp"]
    plans += [Plan.load(p) for p in sorted(SAMPLES_DIR.glob(f"{sample}*.plan.json"))]
    for plan in plans:
        expected, _ = preview_plan(loaded, plan)
        assert pv.measure(plan) == expected, plan.to_dict()
        assert pv.measure(plan) == expected  # from the cache too


@pytest.mark.parametrize("zoo_name", ["resnet", "depthwise", "transformer", "lstm", "bigru", "unet", "mobilenetv2",
                                      "mixed"])
def test_measure_equals_the_full_preview_on_other_architectures(zoo_name):
    loaded = _loaded(zoo_name)
    pv = Previewer(loaded)
    for d in ELEMENT_PLANS[:6] + [{"default": {"lowrank": {"rank": 0.5}}}]:
        if zoo_name != "resnet" and "lowrank" in str(d):
            continue
        plan = _plan(d)
        assert pv.measure(plan) == preview_plan(loaded, plan)[0], d


def test_only_changed_tensors_are_recomputed(samples, monkeypatch):
    loaded = samples["digits-mlp"]
    pv = Previewer(loaded)
    base = _plan(ELEMENT_PLANS[1])
    pv.measure(base)
    calls = []  # a tensor is measured by compressing it, or by its sweep
    real = compress_mod.compress_weight  # what the previewer's compress_weight_cached calls
    monkeypatch.setattr(compress_mod, "compress_weight", lambda name, *a: calls.append(name) or real(name, *a))
    real_sweep = preview_mod.TensorSweep.measure
    monkeypatch.setattr(preview_mod.TensorSweep, "measure", lambda self, s: calls.append(self) or real_sweep(self, s))
    changed = Plan(base.default, {"fc2": {"prune": {"amount": 0.4}}})
    out = pv.measure(changed)
    sweeps = {id(pv._sweeps.get(n)[1]): n for n in pv.names if pv._sweeps.get(n) is not None}
    assert [c if isinstance(c, str) else sweeps.get(id(c)) for c in calls] == ["fc2"]
    assert out == preview_plan(loaded, changed)[0]


def test_build_gives_the_same_model_as_compress(samples):
    loaded = samples["digits-cnn"]
    pv = Previewer(loaded)
    plan = Plan.load(SAMPLES_DIR / "digits-cnn.plan.json")
    pv.measure(plan)  # fills the cache that build reuses
    built = pv.build(plan)
    direct = compress(loaded.model, plan, loaded.example_input)
    x = loaded.eval_data.inputs[:64]
    with torch.no_grad():
        assert torch.equal(built.model(x), direct.model(x))
    assert built.summary() == direct.summary()


def test_measure_rejects_what_compress_rejects(samples):
    pv = Previewer(samples["digits-mlp"])
    with pytest.raises(PlanError, match="fc1"):
        pv.measure(_plan({"layers": {"fc1": {"prune": {"amount": 10**9}}}}))


def test_threads_measure_the_same(samples):
    loaded = samples["digits-cnn"]
    pv = Previewer(loaded)
    plans = [_plan(d) for d in ELEMENT_PLANS[:6]]
    expected = [preview_plan(loaded, p)[0] for p in plans]
    got, errors = {}, []

    def run(i):
        try:
            for j in range(len(plans)):
                k = (i + j) % len(plans)
                got[(i, k)] = pv.measure(plans[k])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(got[(i, k)] == expected[k] for (i, k) in got) and len(got) == 3 * len(plans)


def _settings(d: dict) -> LayerSettings:
    return validate_settings("test", d)


SETTINGS = [
    LayerSettings(),
    _settings({"prune": {"amount": 0.6}}),
    _settings({"prune": {"amount": 0.001}}),  # rounds to pruning nothing on small layers
    _settings({"prune": {"amount": 7}}),
    _settings({"prune": {"amount": 0.8}, "quantize": {"bits": 4, "init": "forgy"}}),
    _settings({"quantize": {"bits": 6, "method": "uniform", "per_channel": True,
                                          "symmetric": False}}),
    _settings({"prune": {"amount": 0.5}, "quantize": {"bits": 2, "method": "uniform"}}),
    _settings({"prune": {"amount": 0.4}, "quantize": {"method": "ternary"}}),
    _settings({"quantize": {"method": "binary"}}),
    _settings({"prune": {"amount": 0.5, "granularity": "filter"}, "quantize": {"bits": 3}}),
]


@pytest.mark.parametrize("sample", ["digits-mlp", "digits-cnn"])
def test_layer_view_equals_the_reference(samples, sample):
    loaded = samples[sample]
    pv = Previewer(loaded)
    for name in pv.names:
        for s in SETTINGS:
            got = pv.layer(name, s)
            ref = layer_preview(name, pv.modules[name], s)
            assert got.numel == ref.numel and got.threshold == ref.threshold, (name, s)
            for field in ("edges", "kept", "pruned"):
                np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=f"{name} {s}")
            if ref.levels is None:
                assert got.levels is None
            else:
                np.testing.assert_array_equal(got.levels, ref.levels, err_msg=f"{name} {s}")
            assert got.quant_mse == ref.quant_mse and got.info == ref.info
            if got.ranking is not None:  # the window's ranking counts channels as the pruner: here, as the tensor
                np.testing.assert_array_equal(got.ranking.removed, ref.ranking.removed, err_msg=f"{name} {s}")
            elif s.removes_channels:
                assert got.ranking_error, (name, s)


def test_layer_histogram_bins_match_numpy_on_awkward_values():
    flat = np.array([-1.0, -1.0, 0.0, 1e-12, 0.5, 1.0, 1.0, -0.3333333333333333, 0.9999999999999999])
    edges = np.linspace(flat.min(), flat.max(), 121)
    bins = preview_mod._bin_of(flat, edges)
    np.testing.assert_array_equal(np.bincount(bins, minlength=120), np.histogram(flat, edges)[0])
    rng = np.random.default_rng(0)
    flat = rng.standard_normal(100_000) ** 3
    edges = np.linspace(flat.min(), flat.max(), 121)
    np.testing.assert_array_equal(np.bincount(preview_mod._bin_of(flat, edges), minlength=120),
                                  np.histogram(flat, edges)[0])


def test_a_plan_that_changes_shapes_is_built_once_for_sizes_and_accuracy(samples, monkeypatch):
    loaded = samples["digits-cnn"]
    pv = Previewer(loaded)
    plan = Plan.load(SAMPLES_DIR / "digits-cnn.structured.plan.json")
    calls = []
    real = preview_mod.compress
    monkeypatch.setattr(preview_mod, "compress", lambda *a, **k: calls.append(k.get("count")) or real(*a, **k))
    summary = pv.measure(plan)
    model = pv.build(plan, count=False).model
    assert calls == [True]
    assert summary == preview_plan(loaded, plan)[0]
    x = loaded.eval_data.inputs[:32]
    with torch.no_grad():
        assert torch.equal(model(x), compress(loaded.model, plan, loaded.example_input).model(x))
    pv.build(_plan(ELEMENT_PLANS[1]), count=False)  # another plan is built anew
    assert calls == [True, False]
