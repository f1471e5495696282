"""The centroid comparison's numbers (issue 17): how well each k-means init keeps the largest weights, and the
accuracy of the model with one layer quantized by each init, measured by the engine."""

import copy

import numpy as np
import pytest
import torch

from explorer.engine.errors import Cancelled
from explorer.engine.measure.layerview import init_accuracies, init_comparison
from explorer.engine.measure.metrics import accuracy
from explorer.engine.methods.prune import magnitude_mask
from explorer.engine.methods.quantize import compare_inits, quantize_kmeans
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan

# fc1 of digits-mlp pruned to 92% and quantized to 2 bits: the inits' codebooks differ enough to show
SETTINGS = Plan.from_dict({"layers": {"fc1": {"prune": {"amount": 0.92},
                                               "quantize": {"bits": 2, "method": "kmeans", "init": "linear"}}}}
                          ).settings_for("fc1")


@pytest.fixture(scope="module")
def loaded():
    return load_model("digits-mlp")


def test_accuracy_per_init_differs_and_is_what_evaluating_by_hand_gives(loaded):
    weight = loaded.model.fc1.weight.detach().clone()
    acc = init_accuracies(loaded, "fc1", SETTINGS)
    assert set(acc.accuracies) == {"forgy", "density", "linear"} and acc.bits == 2
    assert len(set(acc.accuracies.values())) > 1  # the inits do not all give the same model
    assert torch.equal(loaded.model.fc1.weight, weight)  # the original is never changed
    by_hand = copy.deepcopy(loaded.model)
    q = quantize_kmeans(weight, magnitude_mask(weight, 0.92), 2, "linear", 50, 0)
    with torch.no_grad():
        by_hand.fc1.weight.copy_(q.decoded)
    assert acc.accuracies["linear"] == accuracy(by_hand, loaded.eval_data)
    assert acc.before == accuracy(loaded.model, loaded.eval_data)
    assert acc.samples == len(loaded.eval_data)


def test_the_copy_shares_every_parameter_but_the_layers_weight(loaded):
    from explorer.engine.measure.layerview import _copy_but

    model = loaded.model
    copied, own = _copy_but(model, model.fc1.weight, "fc1.weight")
    assert copied.fc1.weight is own and own is not model.fc1.weight and torch.equal(own, model.fc1.weight)
    assert copied.fc1.bias is model.fc1.bias and copied.fc2.weight is model.fc2.weight  # shared, not copied
    with torch.no_grad():
        own.zero_()
    assert model.fc1.weight.abs().sum() > 0  # the original is untouched


def test_init_accuracies_can_be_cancelled(loaded):
    seen = []

    def stop_at_the_second_init(fraction, message):
        seen.append(message)
        return "density" not in message

    with pytest.raises(Cancelled):
        init_accuracies(loaded, "fc1", SETTINGS, before=0.98, progress=stop_at_the_second_init)
    assert any("forgy" in m for m in seen)


def test_top_error_is_the_largest_error_over_the_largest_one_percent():
    torch.manual_seed(0)
    w = torch.randn(50, 40) * 0.05
    res = compare_inits(w, None, bits=3)
    flat = w.reshape(-1).double().numpy()
    top = np.argsort(-np.abs(flat))[:20]  # 1% of 2,000
    for init, r in res.items():
        decoded = quantize_kmeans(w, None, 3, init, 50, 0).decoded.reshape(-1).double().numpy()
        assert r["top_error"] == pytest.approx(np.abs(flat[top] - decoded[top]).max())


def test_the_comparison_names_the_lowest_mse_and_the_best_on_large_weights(loaded):
    comp = init_comparison("fc1", loaded.model.fc1, SETTINGS)
    mse = {i: r["mse_final"] for i, r in comp.results.items()}
    top = {i: r["top_error"] for i, r in comp.results.items()}
    assert comp.lowest_mse() == min(mse, key=mse.get) and comp.best_top() == min(top, key=top.get)
    assert comp.top_count == round(0.01 * comp.values.size)
