"""A layer of a few million weights through the paths VGG-16's 102.8 M-weight classifier.0 takes in the window
(benchmarks/gui_latency.py --model vgg16): the sweep without positions, the histogram drawn from a sample,
the centroid comparison on a sample, and the accuracy build sharing the loaded model's tensors."""

import numpy as np
import pytest
import torch
from torch import nn

from explorer.engine.compress import compress, compress_weight
from explorer.engine.measure import layerview
from explorer.engine.measure.evaluate import preview_plan
from explorer.engine.measure.layerview import DISPLAY_MAX, display_stride
from explorer.engine.measure.preview import Previewer
from explorer.engine.measure.sweep import TensorSweep
from explorer.engine.methods.prune import keep_count
from explorer.engine.model.loading import LoadedModel
from explorer.engine.plan import Plan


def _plan(amount, bits=5):
    entry = {"prune": {"amount": amount}}
    if bits:
        entry["quantize"] = {"method": "kmeans", "bits": bits}
    return Plan.from_dict({"version": 1, "layers": {"fc": entry}})


@pytest.fixture(scope="module")
def big():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(2304, 2048))  # 4,718,592 weights: drawn from every 2nd
    model.add_module("out", nn.Linear(2048, 10))
    return LoadedModel(model.eval(), example_input=torch.randn(2, 2304))


def test_large_layer_is_swept_sampled_for_display_and_built_without_a_copy(big):
    fc = big.model.fc
    n = fc.weight.numel()
    assert n > DISPLAY_MAX and display_stride(n) == 2
    pv = Previewer(big)
    plan = _plan(0.9)
    settings = plan.resolve(pv.names)["fc"]

    # sizes: the sweep's (no positions kept), equal to compressing the tensor
    summary = pv.measure(plan)
    assert pv.sweep("fc") is not None and pv.cache.get(pv.cache.key(fc.weight, "fc", settings)) is None
    full, _ = compress_weight("fc.weight", fc.weight, settings)
    layer = next(entry for entry in summary["layers"] if entry["name"] == "fc")
    assert layer["bits"]["coded"] == full.sizes.bits["coded"] and layer["nonzero"] == full.nonzero

    # the histogram: every 2nd weight, split as the whole layer's mask splits them; pruned count and
    # threshold of the whole layer
    view = pv.layer("fc", settings)
    assert view.stride == 2 and view.numel == n
    assert int(view.kept.sum() + view.pruned.sum()) == (n + 1) // 2
    assert view.pruned_count == n - full.nonzero
    mask = full.mask
    assert int(view.kept.sum()) == int(mask[::2].sum())
    assert view.threshold == pytest.approx(float(np.abs(fc.weight.detach().reshape(-1).numpy()[mask]).min()), rel=0)

    # the centroid comparison on the sample
    comp = layerview.init_comparison("fc", fc, settings, bits=3, max_iter=5)
    assert comp.stride == 2 and comp.values.size == keep_count((n + 1) // 2, 0.9)

    # measured ahead, then a release is a lookup that equals the full measurement
    pv.prepare("fc", settings, amounts=(0.5, 0.8))
    fast, slow = pv.measure(_plan(0.8)), preview_plan(big, _plan(0.8))[0]
    assert fast["size"] == slow["size"] and fast["layers"][0]["bits"] == slow["layers"][0]["bits"]
    assert fast["layers"][0]["tensors"][0]["quant"]["mse"] == pytest.approx(slow["layers"][0]["tensors"][0]["quant"]["mse"],
                                                                            rel=1e-6)  # per-cluster sums

    # the runnable model shares what the plan leaves alone, and runs as compress()'s copy does
    built = pv.build(plan, count=False).model
    assert built.out.weight is big.model.out.weight and built.fc.bias is big.model.fc.bias
    assert built.fc.weight is not fc.weight
    copied = compress(big.model, plan, big.example_input, count=False).model
    assert copied.out.weight is not big.model.out.weight
    x = big.example_input
    torch.testing.assert_close(built(x), copied(x))
    assert torch.equal(big.model.fc.weight, fc.weight)  # the loaded model is untouched


@pytest.mark.parametrize("ties", [False, True])
def test_sampled_mask_is_the_whole_mask_sampled(ties):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(300_000, generator=g)
    if ties:  # groups of equal magnitudes, +t and -t: thresholds fall inside them
        w = torch.round(w * 8) / 8
    sweep = TensorSweep(w)
    for amount in (0.1, 0.37, 0.5, 0.93):
        whole = sweep.mask(amount)
        for stride in (2, 7):
            np.testing.assert_array_equal(sweep.mask(amount, stride), whole[::stride])
