import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from explorer.engine.compress import inspect_model
from explorer.engine.data import EvalData
from explorer.engine.errors import Cancelled
from explorer.engine.loading import load_model
from explorer.engine.metrics import accuracy, fidelity, layer_macs, model_macs


def flop_counter_macs(model, x):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_sample_macs_equal_flop_counter(name):
    loaded = load_model(name)
    info = inspect_model(loaded.model, loaded.example_input)
    expected = flop_counter_macs(loaded.model, loaded.example_input)
    assert sum(l.macs for l in info.layers) == expected == info.macs


def test_resnet_macs_equal_flop_counter_and_hand_count():
    model, x = zoo.TinyResNet().eval(), torch.randn(1, 3, 16, 16)
    macs = layer_macs(model, x)
    assert sum(macs.values()) == flop_counter_macs(model, x) == model_macs(model, x)
    # hand count: stem conv 3->16, 3x3, 16x16 output
    assert macs["stem"] == 16 * 16 * 16 * 3 * 9
    assert macs["layer2.down.0"] == 32 * 8 * 8 * 16 * 1  # 1x1 stride 2
    assert macs["fc"] == 32 * 10


def test_grouped_conv1d_and_embedding_macs():
    model, x = zoo.DepthwiseNet().eval(), torch.randn(1, 3, 4, 4)
    macs = layer_macs(model, x)
    assert macs["dw"] == 16 * 4 * 4 * 1 * 9  # depthwise: one input channel per group
    assert macs["grouped"] == 16 * 4 * 4 * 4 * 9
    assert macs["conv1d"] == 4 * 16 * 8 * 3
    assert sum(macs.values()) == flop_counter_macs(model, x)
    t = zoo.TinyTransformer().eval()
    tokens = torch.randint(0, 50, (1, 12))
    tm = layer_macs(t, tokens)
    assert tm["emb"] == 0 and tm["qkv"] == 12 * 32 * 96
    # the whole-model count also has the attention products q@k and att@v
    assert model_macs(t, tokens) == sum(tm.values()) + 2 * 4 * 12 * 12 * 8


def test_inspect_reports_params_and_bytes():
    model, x = zoo.SmallCNN().eval(), torch.randn(1, 1, 8, 8)
    info = inspect_model(model, x)
    fc1 = info.layer("fc1")
    assert fc1.shape == (32, 64) and fc1.params == 32 * 64 + 32 and fc1.bytes == 4 * fc1.params
    bn = 2 * (8 + 16) + 2 * (8 + 16)  # weight, bias, running mean, running var
    assert info.other_params == bn
    assert info.total_params == sum(p.numel() for p in model.parameters()) + 2 * (8 + 16)


def test_accuracy_progress_and_cancel():
    loaded = load_model("digits-mlp")
    seen = []
    acc = accuracy(loaded.model, loaded.eval_data, progress=lambda f, m: seen.append(f), batch_size=100)
    assert acc == pytest.approx(loaded.meta["baseline_accuracy"])
    assert seen[-1] == 1.0 and len(seen) == 4
    with pytest.raises(Cancelled):
        accuracy(loaded.model, loaded.eval_data, progress=lambda f, m: False)


def test_fidelity_of_a_model_with_itself_and_a_perturbed_copy():
    model, x = zoo.MLP().eval(), torch.randn(20, 64)
    same = fidelity(model, model, x)
    assert same["cosine"] == pytest.approx(1.0) and same["rel_error"] == 0.0
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.net[0].weight.mul_(0.5)
    diff = fidelity(other, model, x)
    assert diff["rel_error"] > 0.01 and diff["cosine"] < 1.0
