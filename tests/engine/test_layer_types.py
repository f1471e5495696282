"""Issue 16, unknown layers: every layer type is compressible or kept dense with its reason, never a crash.

Each model of ``zoo.layer_types_inputs`` (LSTM, bidirectional GRU, U-Net with ConvTranspose2d, MobileNetV2
blocks, Conv1d + MultiheadAttention + EmbeddingBag) is inspected, compressed with a mixed plan chosen from
what ``inspect`` says applies (element pruning + k-means everywhere, structured pruning on a layer that allows
it, low-rank on one that allows it), written, read back bit-identical with equal outputs, and measured.
"""

import pytest
import torch
import zoo
from torch import nn

from explorer.engine import compress
from explorer.engine.errors import CompressionError
from explorer.engine.inspect import inspect_model
from explorer.engine.layers import refusal
from explorer.engine.measure.evaluate import preview_plan
from explorer.engine.measure.metrics import compressible_layers, count_macs, fidelity
from explorer.engine.measure.preview import Previewer
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan
from explorer.engine.storage import fileformat as ff

FACTORIES = {"lstm": "LSTMClassifier", "bigru": "BiGRUTagger", "unet": "TinyUNet", "mobilenetv2": "MobileNetV2ish",
             "mixed": "MixedSequenceNet"}


def _loaded(name, tmp_path):
    model, x = zoo.layer_types_inputs()[name]
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model(str(tmp_path / "w.pt"), factory=f"zoo:{FACTORIES[name]}")
    loaded.example_input = x
    loaded.model.eval()
    return loaded


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_inspect_compress_write_read_back(name, tmp_path):
    loaded = _loaded(name, tmp_path)
    model, x = loaded.model, loaded.example_input
    info = inspect_model(model, x)
    assert info.layers, name
    plan = zoo.mixed_plan(info)
    summary, res = preview_plan(loaded, plan)
    path = tmp_path / "m.cexp"
    written = ff.save(res, path, loaded)
    assert written == summary["size"]["file"] == ff.predicted_bytes(res, loaded), name
    assert res.bits["coded"] < res.bits["dense"]
    back = ff.load(path, factory=loaded.factory)
    ref = res.model.state_dict()
    got = back.state_dict()
    assert list(got) == list(ref)
    for key in ref:
        assert torch.equal(got[key], ref[key]), key
    with torch.no_grad():
        assert torch.equal(back(x), res.model(x))
    quality = fidelity(back, model, x)
    assert quality["cosine"] > 0 and summary["macs"]["before"] >= sum(l.macs or 0 for l in info.layers)
    # the window's previewer measures the same plan the same way
    assert Previewer(loaded).measure(plan) == summary


def _by_name(info):
    return {l.name: l for l in info.layers}


def test_recurrent_weight_matrices_are_layers_per_layer_and_direction():
    model, x = zoo.layer_types_inputs()["bigru"]
    layers = _by_name(inspect_model(model.eval(), x))
    want = [f"gru.weight_{k}_l{i}{d}" for i in (0, 1) for d in ("", "_reverse") for k in ("ih", "hh")]
    assert set(want) <= set(layers)
    for n in want:
        l = layers[n]
        assert l.type == "GRU" and not l.filter_ok and "gates" in l.filter_reason
        assert "fused kernel" in l.lowrank_reason and "bias_ih" in l.kept_dense
        assert l.macs == 2 * 6 * l.weight_params  # every (batch, step) position multiplies the whole matrix
    lstm, tokens = zoo.layer_types_inputs()["lstm"]
    with pytest.raises(CompressionError, match=r"layer 'lstm.weight_hh_l0' \(LSTM\): filter pruning does not apply"):
        compress(lstm, Plan(layers={"lstm.weight_hh_l0": {"prune": {"amount": 0.5, "granularity": "filter"}}}), tokens)
    with pytest.raises(CompressionError, match="low-rank does not apply: LSTM runs its weight matrices"):
        compress(lstm, Plan(layers={"lstm.*": {"lowrank": {"rank": 0.5}}}), tokens)
    res = compress(lstm.eval(), Plan(layers={"lstm.weight_hh_l0": {"prune": {"amount": 0.75}}}), tokens)
    assert res.model.lstm.weight_hh_l0.count_nonzero() == 64 * 16 // 4
    assert torch.equal(res.model.lstm.weight_ih_l0, lstm.lstm.weight_ih_l0)


def test_conv_transpose_is_pruned_and_quantized_and_refuses_the_rest():
    model, x = zoo.layer_types_inputs()["unet"]
    layers = _by_name(inspect_model(model.eval(), x))
    up = layers["up2"]
    assert up.type == "ConvTranspose2d" and up.shape == (8, 8, 2, 2)
    assert up.macs == x.shape[0] * 8 * 2 * 2 * 8 * 2 * 2  # input elements x out/groups x kernel
    assert "in x out/groups x kernel" in up.filter_reason and "transposed core" in up.lowrank_reason
    res = compress(model, Plan(layers={"up*": {"prune": {"amount": 0.5}, "quantize": {"bits": 3}}}), x)
    assert len(torch.unique(res.model.up1.weight)) <= 8 and res.layers["up1"].nonzero <= 8 * 2 * 2 * 2
    for method in ({"lowrank": {"rank": 2}}, {"prune": {"amount": 0.5, "granularity": "channel"}}):
        with pytest.raises(CompressionError, match="layer 'up2' \\(ConvTranspose2d\\)"):
            compress(model, Plan(layers={"up2": method}), x)


def test_inspect_names_every_layer_kept_dense_with_its_reason():
    model, x = zoo.layer_types_inputs()["mixed"]
    info = inspect_model(model.eval(), x)
    dense = {d.name: d for d in info.dense}
    assert set(dense) == {"", "act", "norm"}
    assert dense[""].params == 1 and "outside any layer" in dense[""].reason
    assert dense["act"].type == "PReLU" and "activation" in dense["act"].reason
    assert dense["norm"].params == 16 and "normalization" in dense["norm"].reason
    layers = _by_name(info)
    assert {"attn.in_proj_weight", "attn.out_proj", "bag", "conv", "emb", "head"} <= set(layers)
    assert "reads" in layers["attn.in_proj_weight"].lowrank_reason
    assert "reads this projection" in layers["attn.out_proj"].lowrank_reason
    assert "pooling" in layers["bag"].lowrank_reason
    d = info.to_dict()
    assert {e["name"] for e in d["dense"]} == {"", "act", "norm"} and all(e["reason"] for e in d["dense"])
    assert d["layers"][0]["methods"]["prune_element"] and "kept_dense" in d["layers"][0]
    # beside the layers (weights and biases): the scale, the PReLU, attention's in_proj_bias, the LayerNorm
    assert info.other_params == 1 + 1 + 24 + 16


class _Odd(nn.Module):
    """Types the engine does not compress: a Bilinear, an LSTMCell, a Conv3d beside a Linear."""

    def __init__(self):
        super().__init__()
        self.bil = nn.Bilinear(4, 4, 4)
        self.cell = nn.LSTMCell(4, 4)
        self.c3 = nn.Conv3d(1, 2, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h, _ = self.cell(self.bil(x, x))
        return self.fc(h) + self.c3(x.view(-1, 1, 1, 2, 2)).sum((1, 2, 3, 4))[:, None]


def test_unsupported_types_are_listed_dense_and_never_crash(tmp_path):
    model, x = _Odd().eval(), torch.randn(3, 4)
    info = inspect_model(model, x)
    assert {l.name for l in info.layers} == {"c3", "fc"}
    dense = {d.name: d.reason for d in info.dense}
    assert set(dense) == {"bil", "cell"}
    assert "Bilinear is not among" in dense["bil"] and "LSTMCell" in dense["cell"]
    res = compress(model, Plan(default={"prune": {"amount": 0.5}, "quantize": {"bits": 4}}), x)
    assert torch.equal(res.model.bil.weight, model.bil.weight)
    layer_macs, total = count_macs(model, x)
    assert total >= sum(layer_macs.values())


def test_torchscript_models_compress_the_one_weight_types_and_list_the_rest(tmp_path):
    """In a TorchScript graph only modules with one weight can be compressed (their weights are changed in
    place); an LSTM there is listed kept dense, saying how to compress it."""
    model, x = zoo.layer_types_inputs()["lstm"]
    torch.jit.save(torch.jit.script(model.eval()), tmp_path / "m.pt")
    loaded = load_model(str(tmp_path / "m.pt"))
    info = inspect_model(loaded.model, x)
    assert [l.name for l in info.layers] == ["emb", "fc", "head"]
    (dense,) = info.dense
    assert dense.name == "lstm" and dense.type == "LSTM" and "factory" in dense.reason
    unet, y = zoo.layer_types_inputs()["unet"]
    torch.jit.save(torch.jit.script(unet.eval()), tmp_path / "u.pt")
    loaded = load_model(str(tmp_path / "u.pt"))
    loaded.example_input = y
    assert "up2" in _by_name(inspect_model(loaded.model, y))
    res = compress(loaded.model, Plan(default={"prune": {"amount": 0.5}, "quantize": {"bits": 4}}), y)
    written = ff.save(res, tmp_path / "u.cexp", loaded)
    assert written == ff.predicted_bytes(res, loaded)
    assert torch.equal(ff.load(tmp_path / "u.cexp")(y), res.model(y))


@pytest.mark.parametrize("name", sorted(zoo.example_inputs()))
def test_what_inspect_says_applies_is_what_compress_does(name):
    """For every zoo model: low-rank succeeds on every layer where inspect says it applies and is refused (an
    error naming the layer, never a crash) where it says not; filter pruning is refused on every layer whose
    type refuses it and succeeds on the first layer inspect allows it on (the tracer's own refusals are
    tested in test_structure)."""
    model, x = zoo.example_inputs()[name]
    model.eval()
    info = inspect_model(model, x)
    owners = [l for l in info.layers if not l.shared_with]
    by_type = {n for n, mod in compressible_layers(model) if refusal(mod, "structured")}
    first_ok = next((l.name for l in owners if l.filter_ok), None)
    cases = [(l.name, l.lowrank_reason is None, {"lowrank": {"rank": 1}}) for l in owners]
    cases += [(l.name, l.name == first_ok, {"prune": {"amount": 1, "granularity": "filter"}}) for l in owners
              if l.name in by_type or l.name == first_ok]
    for layer, ok, settings in cases:
        plan = Plan(layers={layer: settings})
        if ok:
            compress(model, plan, x, count=False)
        else:
            with pytest.raises(CompressionError, match=layer.replace(".", r"\.")):
                compress(model, plan, x, count=False)
