"""The channel ranking the layer view draws for filter/channel pruning marks exactly what the pruner removes."""

import numpy as np
import pytest
import torch

from explorer.engine.errors import CompressionError, PlanError
from explorer.engine.measure.preview import Previewer
from explorer.engine.methods.channels import channel_ranking, layer_ranking, prune_structured
from explorer.engine.model.loading import load_model
from explorer.engine.plan import validate_settings


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits-cnn")


@pytest.mark.parametrize("layer, granularity, amount, criterion", [
    ("conv1", "filter", 0.5, "l1"), ("conv2", "filter", 0.3, "l2"), ("conv2", "filter", 7, "l1"),
    ("conv2", "channel", 0.4, "l2"), ("fc1", "channel", 0.25, "l1"), ("fc1", "filter", 0.6, "l2")])
def test_ranking_marks_exactly_the_pruned_channels(cnn, layer, granularity, amount, criterion):
    model, x = cnn.model, cnn.example_input
    ranking = layer_ranking(model, x, layer, granularity, amount, criterion)
    _, report = prune_structured(model, x, {layer: (granularity, amount, criterion)})
    assert ranking.kept == report[layer]["kept"]
    assert int(ranking.removed.sum()) == report[layer]["removed"] > 0
    # every removed channel's norm is at most every kept one's, and the cut is the smallest kept norm
    assert ranking.norms[ranking.removed].max() <= ranking.norms[~ranking.removed].min() == ranking.cut
    assert np.all(np.diff(ranking.norms[ranking.order]) >= 0)


def test_channel_ranking_counts_flattened_channels_as_blocks(cnn):
    # fc1 takes conv2's 50 channels flattened (50 x 4 inputs): a channel is a block of 4 columns
    ranking = layer_ranking(cnn.model, cnn.example_input, "fc1", "channel", 0.5, "l1")
    w = cnn.model.fc1.weight.detach().to(torch.float64)
    assert ranking.norms.size == 50
    np.testing.assert_allclose(ranking.norms, w.t().reshape(50, -1).abs().sum(1).numpy())


def test_channel_ranking_norms_and_ties():
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 1.0], [6.0, 8.0]])
    r = channel_ranking(w, "filter", 2, "l2")
    np.testing.assert_allclose(r.norms, [5.0, 1.0, 1.0, 10.0])
    assert r.removed.tolist() == [False, True, True, False] and r.cut == 5.0
    r = channel_ranking(w, "filter", 1, "l2")  # a tie: the earlier channel is kept, as the pruner keeps it
    assert r.removed.tolist() == [False, False, True, False]
    assert channel_ranking(w, "filter", 0.0, "l1").cut is None


def test_channel_ranking_refuses_bad_requests(cnn):
    with pytest.raises(PlanError):
        channel_ranking(torch.ones(3, 3), "filter", 0.5, "l3")
    with pytest.raises(PlanError):
        channel_ranking(torch.ones(3, 3), "filter", 3, "l1")  # removes all
    with pytest.raises(CompressionError, match="fc2"):
        layer_ranking(cnn.model, cnn.example_input, "fc2", "filter", 0.5, "l1")  # the model's output


def test_previewer_carries_the_ranking(cnn):
    pv = Previewer(cnn)
    s = validate_settings("conv2", {"prune": {"amount": 0.5, "granularity": "filter", "criterion": "l2"}})
    got = pv.layer("conv2", s)
    _, report = prune_structured(cnn.model, cnn.example_input, {"conv2": ("filter", 0.5, "l2")})
    assert got.threshold is None and got.ranking.kept == report["conv2"]["kept"]
    assert pv.layer("fc2", validate_settings("fc2", {"prune": {"amount": 0.5, "granularity": "filter"}})).ranking_error
    assert pv.layer("conv2", validate_settings("conv2", {"prune": {"amount": 0.5}})).ranking is None
