import pytest
import torch
import zoo
from torch.utils.flop_counter import FlopCounterMode

from explorer.engine.errors import Cancelled
from explorer.engine.inspect import inspect_model
from explorer.engine.measure.metrics import accuracy, fidelity, layer_macs, model_macs
from explorer.engine.model.data import EvalData
from explorer.engine.model.loading import load_model


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
    assert fc1.shape == (32, 64) and fc1.params == 32 * 64 + 32
    assert fc1.layer_bytes == 4 * fc1.params and fc1.weight_bytes == 4 * 32 * 64
    bn = 2 * (8 + 16) + 2 * (8 + 16)  # weight, bias, running mean, running var
    assert info.other_params == bn
    assert info.total_params == sum(p.numel() for p in model.parameters()) + 2 * (8 + 16)


def test_accuracy_progress_and_cancel():
    loaded = load_model("digits-mlp")
    seen = []
    acc = accuracy(loaded.model, loaded.eval_data, progress=lambda f, m: seen.append(f), batch_size=100)
    assert acc == pytest.approx(loaded.meta["baseline_accuracy"])
    n = len(loaded.eval_data)
    # after each of the 4 batches, and before every module call inside them (at the batch's start)
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert set(seen) == {0.0, 100 / n, 200 / n, 300 / n, 1.0} and len(seen) > 4 * 2
    with pytest.raises(Cancelled):
        accuracy(loaded.model, loaded.eval_data, progress=lambda f, m: False)


def test_cancel_within_a_batch_and_only_on_the_calling_thread():
    """A measurement stops at the next module call once its progress says so, not at the end of the batch;
    other threads running the same model meanwhile, and copies of it, are not touched."""
    import copy
    import threading

    loaded = load_model("digits-cnn")
    calls = []

    def stop_at_third(f, m):
        calls.append(f)
        return len(calls) < 3

    ran = {}

    def other_thread():  # the same modules, on another thread, while the hook is live
        ran["acc"] = accuracy(loaded.model, loaded.eval_data, batch_size=360)
        ran["copy"] = accuracy(copy.deepcopy(loaded.model), loaded.eval_data, batch_size=360)

    class Gate:
        def __init__(self):
            self.started = False

        def __call__(self, f, m):
            if not self.started:
                self.started = True
                t = threading.Thread(target=other_thread)
                t.start()
                t.join()
            return stop_at_third(f, m)

    with pytest.raises(Cancelled):
        accuracy(loaded.model, loaded.eval_data, progress=Gate(), batch_size=360)  # one batch
    assert len(calls) == 3 and calls == [0.0, 0.0, 0.0]  # stopped inside the only batch
    assert ran["acc"] == pytest.approx(loaded.meta["baseline_accuracy"]) == ran["copy"]
    # after the measurement, nothing is called any more
    calls.clear()
    accuracy(loaded.model, loaded.eval_data, batch_size=360)
    assert calls == []


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


class Attn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.enc(x))


def test_torch_attention_is_counted_even_on_its_fast_path():
    model, x = Attn().eval(), torch.randn(1, 5, 16)
    total = model_macs(model, x)
    # in_proj (3 x 16 x 16) + scores and weighted sum (2 x 5 x 5 x 16) + out_proj + feed-forward + head, per token
    expected = 5 * 3 * 16 * 16 + 2 * 5 * 5 * 16 + 5 * 16 * 16 + 5 * (16 * 32 + 32 * 16) + 5 * 16 * 4
    assert total == expected
    assert torch.backends.mha.get_fastpath_enabled()  # restored afterwards


def test_counting_leaves_a_training_model_untouched():
    import copy

    model, x = zoo.SmallCNN().train(), torch.randn(4, 1, 8, 8)
    before = copy.deepcopy(model.state_dict())
    inspect_model(model, x)
    from explorer.engine.compress import compress
    from explorer.engine.plan import uniform_plan

    compress(model, uniform_plan(prune={"amount": 0.5}), x)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_eval_data_that_does_not_fit_is_named():
    from explorer.engine.errors import ExplorerError

    loaded = load_model("digits-mlp")
    bad = EvalData(torch.randn(10, 3), torch.zeros(10, dtype=torch.long), "wrong.npz")
    with pytest.raises(ExplorerError, match="wrong.npz: the model cannot run"):
        accuracy(loaded.model, bad)
    labels = EvalData(loaded.eval_data.inputs[:10], torch.full((10,), 12, dtype=torch.long), "labels.npz")
    with pytest.raises(ExplorerError, match="labels.npz: labels run from 12 to 12, but the model has 10"):
        accuracy(loaded.model, labels)
    with pytest.raises(ExplorerError, match="at least 1"):
        accuracy(loaded.model, loaded.eval_data, limit=0)
