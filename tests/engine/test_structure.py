"""Structured pruning: coupling analysis, exact index mapping, smaller models, honest refusals."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zoo
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from explorer.engine.errors import CompressionError, PlanError
from explorer.engine.methods.channels import analyze, prune_structured


@pytest.fixture(scope="module")
def examples():
    return zoo.example_inputs()


def fresh(name):
    model, x = zoo.example_inputs()[name]
    return model.eval(), x


def run(model, x):
    with torch.no_grad():
        return model(x)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def macs(model, x):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


# ------------------------------------------------------------------------------------------- analysis


def test_analyze_mlp(examples):
    info = analyze(*examples["mlp"])
    assert set(info) == {"net.0", "net.2", "net.4"}
    assert info["net.0"].filter_ok and info["net.0"].coupled == ["net.2"]
    assert info["net.2"].filter_ok and info["net.2"].coupled == ["net.4"]
    assert not info["net.4"].filter_ok
    assert info["net.4"].filter_reason == "its output is the model's output"
    assert not info["net.0"].channel_ok and info["net.0"].channel_reason == "its input is the model input"
    assert info["net.2"].channel_ok and info["net.4"].channel_ok


def test_analyze_small_cnn(examples):
    info = analyze(*examples["cnn"])
    for name in ("conv1", "conv2", "fc1"):
        assert info[name].filter_ok, info[name].filter_reason
    assert info["conv1"].coupled == ["bn1", "conv2"]
    assert info["conv2"].coupled == ["bn2", "fc1"]  # through relu, pool and flatten
    assert info["fc1"].channel_ok  # fed by conv2 through flatten
    assert not info["fc2"].filter_ok


def test_analyze_tiny_resnet(examples):
    """A residual add couples the layers whose outputs it sums: they form one group and shrink together."""
    info = analyze(*examples["resnet"])
    for name in info:
        if name != "fc":
            assert info[name].filter_ok, (name, info[name].filter_reason)
    # the stem's channels are layer1's stream: layer1.conv2's output is added to them
    assert info["stem"].producers == info["layer1.conv2"].producers == ["stem", "layer1.conv2"]
    assert info["layer2.conv2"].producers == ["layer2.down.0", "layer2.conv2"]
    assert info["stem"].coupled == ["layer1.conv2", "bn", "layer1.conv1", "layer1.bn2", "layer2.down.0",
                                    "layer2.conv1"]
    assert info["layer1.conv2"].coupled[0] == "stem" and set(info["layer1.conv2"].coupled) == \
        set(info["stem"].coupled) - {"layer1.conv2"} | {"stem"}
    # layer2's stream: its conv2 and its 1x1 downsample, read by the head through pool and flatten
    assert info["layer2.conv2"].coupled == ["layer2.down.0", "layer2.down.1", "layer2.bn2", "fc"]
    assert info["layer1.conv1"].coupled == ["layer1.bn1", "layer1.conv2"]
    assert info["layer1.conv2"].channel_ok  # its input is layer1.conv1's output
    assert info["layer1.conv1"].channel_ok and info["layer2.conv1"].channel_ok  # the stream groups'
    assert info["fc"].channel_ok  # layer2's stream group
    assert not info["fc"].filter_ok and info["fc"].filter_reason == "its output is the model's output"


def test_analyze_depthwise_net(examples):
    info = analyze(*examples["depthwise"])
    # pw1's channels pass the depthwise conv (which shrinks with them) but then meet the grouped conv
    assert "dw" in info["pw1"].coupled
    assert not info["pw1"].filter_ok and "grouped" in info["pw1"].filter_reason
    assert not info["dw"].filter_ok and "depthwise" in info["dw"].filter_reason
    assert not info["grouped"].filter_ok and "groups=4" in info["grouped"].filter_reason
    assert not info["grouped"].channel_ok
    # pw2 -> flatten(2) -> conv1d and conv1d -> flatten(1) -> head are followed
    assert info["pw2"].filter_ok and info["pw2"].coupled == ["conv1d"]
    assert info["conv1d"].filter_ok and info["conv1d"].coupled == ["head"]
    assert info["conv1d"].channel_ok and info["head"].channel_ok


def test_analyze_transformer(examples):
    info = analyze(*examples["transformer"])
    assert not info["emb"].filter_ok and "vocabulary" in info["emb"].filter_reason
    assert not info["qkv"].filter_ok and "chunk" in info["qkv"].filter_reason
    assert not info["proj"].filter_ok and "residual add" in info["proj"].filter_reason
    assert not info["ff2"].filter_ok and "residual add" in info["ff2"].filter_reason
    assert info["ff1"].filter_ok and info["ff1"].coupled == ["ff2"]
    assert info["ff2"].channel_ok
    assert not info["proj"].channel_ok and "reshape" in info["proj"].channel_reason
    assert not info["head"].filter_ok


def test_untraceable_model_is_blocked_everywhere():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                x = -x
            return self.b(self.a(x))

    info = analyze(Branchy(), torch.randn(2, 4))
    for item in info.values():
        assert not item.filter_ok and not item.channel_ok
        assert item.filter_reason.startswith("model cannot be traced by torch.fx: ")


def test_shared_and_reused_layers_are_blocked():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.a = nn.Linear(4, 6)
            self.twice = nn.Linear(6, 6)
            self.b = nn.Linear(6, 4)
            self.head = nn.Linear(4, 10)
            self.head.weight = self.emb.weight

        def forward(self, t):
            return self.head(self.b(self.twice(self.twice(self.a(self.emb(t))))))

    info = analyze(Tied(), torch.randint(0, 10, (2, 3)))
    assert not info["a"].filter_ok and "called 2 times" in info["a"].filter_reason
    assert not info["twice"].filter_ok and "called 2 times" in info["twice"].filter_reason
    assert not info["b"].filter_ok and "shares parameters" in info["b"].filter_reason


def test_analyze_leaves_the_model_alone():
    model, x = fresh("cnn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, x)
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics included


# -------------------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "depthwise", "transformer"])
def test_zero_pruning_changes_nothing(name):
    model, x = fresh(name)
    ok, covered = [], set()
    for layer, item in analyze(model, x).items():
        if item.filter_ok and layer not in covered:  # one request per group
            ok.append(layer)
            covered.update(item.producers)
    assert ok
    pruned, report = prune_structured(model, x, {layer: ("filter", 0.0, "l1") for layer in ok})
    assert all(r["removed"] == 0 for r in report.values())
    torch.testing.assert_close(run(pruned, x), run(model, x))


def test_exact_mlp_filters():
    model, x = fresh("mlp")
    dead = [3, 7, 11]
    with torch.no_grad():
        model.net[0].weight[dead] = 0
        model.net[0].bias[dead] = 0  # relu(0) = 0: these channels contribute nothing
    pruned, report = prune_structured(model, x, {"net.0": ("filter", 3, "l1")})
    assert report["net.0"]["kept"] == [i for i in range(30) if i not in dead]
    assert report["net.0"]["removed"] == 3 and report["net.0"]["granularity"] == "filter"
    assert pruned.net[0].weight.shape == (27, 64) and pruned.net[2].weight.shape == (20, 27)
    assert pruned.net[0].out_features == 27 and pruned.net[2].in_features == 27
    torch.testing.assert_close(run(pruned, x), run(model, x))


def test_exact_cnn_filters_through_flatten():
    model, x = fresh("cnn")
    dead = [1, 6, 10]
    with torch.no_grad():
        model.conv2.weight[dead] = 0
        model.conv2.bias[dead] = 0
        cols = fc1_columns(dead, block=4)  # flatten: channel c -> inputs 4c .. 4c+3
        model.fc1.weight[:, cols] = 0  # BN makes the channels non-zero: the consumer ignores them
    pruned, report = prune_structured(model, x, {"conv2": ("filter", 3, "l2")})
    assert report["conv2"]["kept"] == [i for i in range(16) if i not in dead]
    assert pruned.conv2.weight.shape == (13, 8, 3, 3) and pruned.bn2.num_features == 13
    assert pruned.bn2.running_mean.shape == (13,) and pruned.fc1.weight.shape == (32, 13 * 4)
    torch.testing.assert_close(run(pruned, x), run(model, x))


def test_exact_cnn_filters_with_batchnorm():
    model, x = fresh("cnn")
    dead = [0, 5]
    with torch.no_grad():
        model.conv1.weight[dead] = 0
        model.conv1.bias[dead] = 0
        model.bn1.weight[dead] = 0
        model.bn1.bias[dead] = 0  # the channel is exactly 0 after BN
    pruned, report = prune_structured(model, x, {"conv1": ("filter", 0.25, "l1")})
    assert report["conv1"]["kept"] == [1, 2, 3, 4, 6, 7]
    assert pruned.conv2.weight.shape == (16, 6, 3, 3)
    torch.testing.assert_close(run(pruned, x), run(model, x))


def test_exact_channel_pruning_shrinks_the_producer():
    model, x = fresh("cnn")
    dead = [2, 9]
    with torch.no_grad():
        model.fc1.weight[:, fc1_columns(dead, block=4)] = 0
    pruned, report = prune_structured(model, x, {"fc1": ("channel", 2, "l2")})
    assert report["fc1"]["kept"] == [i for i in range(16) if i not in dead]
    assert report["fc1"]["producer"] == "conv2" and report["fc1"]["granularity"] == "channel"
    assert pruned.conv2.out_channels == 14 and pruned.fc1.in_features == 14 * 4
    torch.testing.assert_close(run(pruned, x), run(model, x))


def test_exact_depthwise_net_flatten_paths():
    model, x = fresh("depthwise")
    with torch.no_grad():
        model.pw2.weight[[4]] = 0
        model.pw2.bias[[4]] = 0  # pw2 -> flatten(2) -> conv1d: channel 4 stays channel 4
        model.head.weight[:, 16:32] = 0  # conv1d channel 1 -> head inputs 16..31
    pruned, report = prune_structured(
        model, x, {"pw2": ("filter", 1, "l1"), "head": ("channel", 1, "l1")}
    )
    assert report["pw2"]["kept"] == [0, 1, 2, 3, 5, 6, 7]
    assert report["head"]["kept"] == [0, 2, 3] and report["head"]["producer"] == "conv1d"
    assert pruned.conv1d.weight.shape == (3, 7, 3) and pruned.head.weight.shape == (5, 48)
    torch.testing.assert_close(run(pruned, x), run(model, x))


def test_exact_transformer_feed_forward():
    model, x = fresh("transformer")
    dead = list(range(0, 128, 4))
    with torch.no_grad():
        model.ff1.weight[dead] = 0
        model.ff1.bias[dead] = 0
    pruned, report = prune_structured(model, x, {"ff1": ("filter", 0.25, "l1")})
    assert report["ff1"]["removed"] == 32 and pruned.ff2.in_features == 96
    torch.testing.assert_close(run(pruned, x), run(model, x))


def test_functional_ops_are_followed_exactly():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3)
            self.c2 = nn.Conv2d(8, 6, 1)
            self.fc = nn.Linear(6 * 16, 5)
            self.gap = nn.Linear(8, 5)

        def forward(self, x):
            y = F.max_pool2d(F.relu(self.c1(x)), 2) * 0.5 + 1.0
            z = self.c2(y)
            return self.fc(z.view(z.size(0), -1)) + self.gap(y.mean((2, 3)))

    torch.manual_seed(1)
    model, x = Functional().eval(), torch.randn(2, 3, 10, 10)
    info = analyze(model, x)
    assert info["c1"].filter_ok and info["c1"].coupled == ["c2", "gap"]
    assert info["c2"].filter_ok and info["c2"].coupled == ["fc"]
    with torch.no_grad():
        model.c2.weight[[2]] = 0
        model.c2.bias[[2]] = 0
        model.fc.weight[:, 2 * 16:3 * 16] = 0  # view(B, -1) is a flatten: channel 2 -> inputs 32..47
    pruned, report = prune_structured(model, x, {"c1": ("filter", 0.5, "l1"), "c2": ("filter", 1, "l1")})
    assert report["c2"]["kept"] == [0, 1, 3, 4, 5]
    assert pruned.gap.in_features == 4 and pruned.fc.in_features == 5 * 16
    only_c2 = prune_structured(model, x, {"c2": ("filter", 1, "l1")})[0]
    torch.testing.assert_close(run(only_c2, x), run(model, x))
    assert run(pruned, x).shape == (2, 5)


def test_smaller_model_and_original_untouched():
    model, x = fresh("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, _ = prune_structured(
        model, x, {"conv1": ("filter", 0.5, "l1"), "conv2": ("filter", 0.5, "l2"), "fc1": ("filter", 0.5, "l1")}
    )
    assert pruned is not model
    assert macs(pruned, x) < macs(model, x)
    assert n_params(pruned) < n_params(model)
    assert model.conv1.out_channels == 8 and model.fc1.in_features == 64
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_amount_rounds_down_and_keeps_one():
    model, x = fresh("mlp")  # net.0 has 30 output channels
    for amount, removed in [(0.1, 3), (0.5, 15), (0.99, 29), (0.29, 8), (7, 7), (29, 29)]:
        _, report = prune_structured(model, x, {"net.0": ("filter", amount, "l1")})
        assert report["net.0"]["removed"] == removed, amount
        assert len(report["net.0"]["kept"]) == 30 - removed
    # a count that would remove them all is refused, as the plan refuses it (one validation of amounts)
    with pytest.raises(PlanError, match=r"net\.0.*prune.amount 100 removes all of its 30 channels"):
        prune_structured(model, x, {"net.0": ("filter", 100, "l1")})


def test_l1_and_l2_rank_differently_and_keep_order():
    model = zoo.MLP(sizes=(4, 3, 2)).eval()
    with torch.no_grad():
        model.net[0].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [9, 9, 9, 9], [3, 0, 0, 0]]))
    x = torch.randn(2, 4)
    _, l1 = prune_structured(model, x, {"net.0": ("filter", 1, "l1")})  # L1: 4, 36, 3
    _, l2 = prune_structured(model, x, {"net.0": ("filter", 1, "l2")})  # L2: 2, 18, 3
    assert l1["net.0"]["kept"] == [0, 1]
    assert l2["net.0"]["kept"] == [1, 2]


# --------------------------------------------------------------------------------------------- errors


def _dead_stream_channels(model, dead):
    """Make the stream channels ``dead`` of TinyResNet's first group exactly 0 everywhere and the weakest."""
    with torch.no_grad():
        for conv, bn in ((model.stem, model.bn), (model.layer1.conv2, model.layer1.bn2)):
            conv.weight[dead] *= 1e-3
            bn.weight[dead] = 0
            bn.bias[dead] = 0  # the channel leaves each BN as 0: the stream carries 0 there


def test_exact_coupled_group_across_residual_adds():
    model, x = fresh("resnet")
    dead = [2, 5, 11, 12]
    _dead_stream_channels(model, dead)
    before = run(model, x)
    pruned, report = prune_structured(model, x, {"layer1.conv2": ("filter", 4, "l1")})
    kept = [i for i in range(16) if i not in dead]
    assert report["layer1.conv2"]["kept"] == kept and report["layer1.conv2"]["producer"] == "stem"
    assert report["layer1.conv2"]["coupled"][0] == "stem"
    assert pruned.stem.weight.shape == (12, 3, 3, 3) and pruned.bn.num_features == 12
    assert pruned.layer1.conv1.weight.shape == (16, 12, 3, 3)  # reads the stream
    assert pruned.layer1.conv2.weight.shape == (12, 16, 3, 3) and pruned.layer1.bn2.num_features == 12
    assert pruned.layer2.conv1.weight.shape == (32, 12, 3, 3) and pruned.layer2.down[0].weight.shape == (32, 12, 1, 1)
    torch.testing.assert_close(run(pruned, x), before)
    torch.testing.assert_close(pruned.stem.weight, model.stem.weight[kept])
    torch.testing.assert_close(pruned.layer2.down[0].weight, model.layer2.down[0].weight[:, kept])
    assert macs(pruned, x) < macs(model, x)


def test_a_coupled_group_is_ranked_by_all_its_producers():
    model, x = fresh("resnet")
    with torch.no_grad():
        model.stem.weight.fill_(1.0)
        model.layer1.conv2.weight.fill_(1.0)
        model.stem.weight[3] = 0.01  # the stem alone would drop channel 3 ...
        model.layer1.conv2.weight[3] = 5.0  # ... but its rows in the group are the largest
        model.layer1.conv2.weight[9] = 0.01
        model.stem.weight[9] = 0.5
    _, report = prune_structured(model, x, {"stem": ("filter", 1, "l1")})
    assert report["stem"]["kept"] == [i for i in range(16) if i != 9]
    from explorer.engine.methods.channels import layer_ranking
    ranking = layer_ranking(model, x, "stem", "filter", 1, "l1")
    assert ranking.kept == report["stem"]["kept"]
    w = torch.cat([model.stem.weight.flatten(1), model.layer1.conv2.weight.flatten(1)], 1).double()
    np.testing.assert_allclose(ranking.norms, w.detach().abs().sum(1).numpy())


def test_two_requests_on_one_coupled_group_are_refused():
    model, x = fresh("resnet")
    with pytest.raises(CompressionError, match=r"stem and layer1\.conv2: both requests remove output channels"):
        prune_structured(model, x, {"stem": ("filter", 0.5, "l1"), "layer1.conv2": ("filter", 0.25, "l1")})


class ReadsWhatItWrites(nn.Module):
    """y = x + b(relu(x)) with x = a(input): b reads the channels it writes (a pre-activation residual)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.a(x)
        return self.head(x + self.b(torch.relu(x)))


def test_a_layer_that_reads_the_channels_it_writes_loses_rows_and_columns():
    model, x = ReadsWhatItWrites().eval(), torch.randn(4, 6)
    info = analyze(model, x)
    assert info["a"].producers == ["a", "b"] and info["a"].filter_ok
    assert info["a"].coupled == ["b", "head"]  # b: a producer (rows) and a reader (columns), named once
    dead = [1, 6]
    with torch.no_grad():  # the channels are exactly 0 everywhere: removing them changes nothing
        for layer in (model.a, model.b):
            layer.weight[dead] = 0
            layer.bias[dead] = 0
    before = run(model, x)
    pruned, report = prune_structured(model, x, {"b": ("filter", 2, "l1")})
    assert report["b"]["kept"] == [0, 2, 3, 4, 5, 7]
    assert pruned.a.weight.shape == (6, 6) and pruned.b.weight.shape == (6, 6) and pruned.head.weight.shape == (3, 6)
    torch.testing.assert_close(run(pruned, x), before)


def test_refuses_a_residual_add_with_the_model_input():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    model, x = Residual().eval(), torch.randn(2, 8)
    info = analyze(model, x)
    assert not info["a"].filter_ok
    assert "residual add" in info["a"].filter_reason and "the model input" in info["a"].filter_reason
    with pytest.raises(CompressionError, match=r"a: cannot remove output channels: .*residual add.*model input"):
        prune_structured(model, x, {"a": ("filter", 0.5, "l1")})


def test_refuses_model_output_and_model_input():
    model, x = fresh("mlp")
    with pytest.raises(CompressionError, match=r"net\.4: cannot remove output channels: its output is the model"):
        prune_structured(model, x, {"net.4": ("filter", 1, "l1")})
    with pytest.raises(CompressionError, match=r"net\.0: cannot remove input channels: its input is the model input"):
        prune_structured(model, x, {"net.0": ("channel", 1, "l1")})


def test_refuses_two_requests_on_one_group():
    model, x = fresh("mlp")
    with pytest.raises(CompressionError, match=r"net\.0 and net\.2"):
        prune_structured(model, x, {"net.0": ("filter", 1, "l1"), "net.2": ("channel", 1, "l2")})
    model, x = fresh("cnn")
    with pytest.raises(CompressionError, match=r"conv2 and fc1"):
        prune_structured(model, x, {"conv2": ("filter", 0.5, "l1"), "fc1": ("channel", 0.5, "l1")})


def test_refuses_bad_requests():
    model, x = fresh("mlp")
    with pytest.raises(CompressionError, match="nope"):
        prune_structured(model, x, {"nope": ("filter", 1, "l1")})
    with pytest.raises(PlanError, match=r"net\.0': prune.amount"):
        prune_structured(model, x, {"net.0": ("filter", 1.0, "l1")})
    with pytest.raises(PlanError, match=r"net\.0': prune.amount"):
        prune_structured(model, x, {"net.0": ("filter", -1, "l1")})
    with pytest.raises(PlanError, match="granularity"):
        prune_structured(model, x, {"net.0": ("element", 1, "l1")})
    with pytest.raises(PlanError, match="criterion"):
        prune_structured(model, x, {"net.0": ("filter", 1, "linf")})


def fc1_columns(channels, block):
    return [c * block + t for c in channels for t in range(block)]


def test_a_model_is_traced_once_and_a_trace_never_meets_another_threads_forward(monkeypatch):
    """torch.fx patches nn.Module for the whole process while it traces: tracing on every structured plan
    handed the window's other jobs proxies for their weights (benchmarks/soak.py found it)."""
    import threading

    from explorer.engine.methods import channels

    model, x = fresh("cnn")
    traces = []
    real = channels.trace
    monkeypatch.setattr(channels, "trace", lambda m: traces.append(m) or real(m))
    name = next(n for n, info in analyze(model, x).items() if info.channel_ok)
    assert len(traces) == 1
    errors, stop = [], threading.Event()

    def forward_meanwhile():  # what the window's preview and accuracy jobs do beside a compression
        while not stop.is_set():
            try:
                with torch.no_grad():
                    model(x)
                _ = [tuple(p.shape) for p in model.parameters()]
            except Exception as exc:  # noqa: BLE001 - any error here is the bug
                errors.append(exc)

    t = threading.Thread(target=forward_meanwhile)
    t.start()
    try:
        for amount in (0.25, 0.5, 0.75) * 4:
            prune_structured(model, x, {name: ("channel", amount, "l1")})
    finally:
        stop.set()
        t.join()
    assert len(traces) == 1 and errors == []  # twelve structured compressions, no trace: the first one's
    model.extra = nn.Linear(2, 2)  # a structural change: traced again
    analyze(model, x)
    assert len(traces) == 2
