import numpy as np
import pytest
import torch
import zoo

from explorer.engine.compress import compress
from explorer.engine.errors import Cancelled, CompressionError, PlanError
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan, uniform_plan
from explorer.engine.samples import SAMPLES_DIR


def params_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_empty_plan_changes_nothing_and_sizes_are_dense():
    model, x = zoo.SmallCNN().eval(), torch.randn(2, 1, 8, 8)
    res = compress(model, Plan(), x)
    assert torch.equal(res.model(x), model(x))
    bits = res.bits
    assert bits["dense"] == bits["pruned"] == bits["quantized"] == bits["coded"]
    total = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()
                                                             if b.is_floating_point())
    assert bits["dense"] == 32 * total
    assert res.macs_before == res.macs_after == res.macs_effective


def test_original_is_untouched_and_stages_shrink():
    model, x = zoo.SmallCNN().eval(), torch.randn(2, 1, 8, 8)
    before = params_of(model)
    res = compress(model, uniform_plan(prune={"amount": 0.8}, quantize={"bits": 4, "method": "kmeans"}), x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    b = res.bits
    assert b["dense"] > b["pruned"] > b["quantized"] > b["coded"]
    assert res.macs_effective < res.macs_after == res.macs_before
    for layer in res.layers.values():
        (t,) = layer.tensors
        assert t.nonzero <= int(np.ceil(0.2 * t.numel))


def test_compressed_weights_are_the_decoded_codes():
    model, x = zoo.MLP().eval(), torch.randn(2, 64)
    res = compress(model, uniform_plan(prune={"amount": 0.5}, quantize={"bits": 3}), x)
    for name, layer in res.layers.items():
        (t,) = layer.tensors
        w = res.model.get_submodule(name).weight.detach().reshape(-1).numpy()
        assert np.array_equal(t.quant.codebook[t.quant.codes], w)
        assert np.all(w[~t.mask] == 0)


def test_lowrank_then_prune_and_quantize_every_factor():
    model, x = zoo.SmallCNN().eval(), torch.randn(2, 1, 8, 8)
    plan = Plan(layers={"fc1": {"lowrank": {"rank": 8}, "prune": {"amount": 0.5}, "quantize": {"bits": 4}},
                        "conv2": {"lowrank": {"rank": 4, "method": "tucker2"}}})
    res = compress(model, plan, x)
    assert [t.name for t in res.layers["fc1"].tensors] == ["fc1.0.weight", "fc1.1.weight"]
    assert all(t.quant is not None and t.mask is not None for t in res.layers["fc1"].tensors)
    assert len(res.layers["conv2"].tensors) == 3
    assert res.macs_after < res.macs_before
    assert res.layers["fc1"].macs_after == 64 * 8 * 2 + 8 * 32 * 2
    assert res.model(x).shape == (2, 10)


def test_exact_ranks_and_zero_pruning_keep_outputs():
    """Factors wired in place of the layers reproduce them where the weights have exactly that rank."""
    model, x = zoo.SmallCNN().eval(), torch.randn(4, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fc1 of rank 8; conv2 of Tucker-2 ranks (4, 4)
        model.fc1.weight.copy_(torch.randn(32, 8, generator=g) @ torch.randn(8, 64, generator=g) / 8)
        u, v, core = torch.randn(16, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(4, 4, 3, 3, generator=g)
        model.conv2.weight.copy_(torch.einsum("oa,ib,abhw->oihw", u, v, core) / 4)
    plan = Plan(layers={"fc1": {"lowrank": {"rank": 8}}, "conv2": {"lowrank": {"rank": [4, 4], "method": "tucker2"}},
                        "conv1": {"prune": {"amount": 0, "granularity": "filter"}}})
    res = compress(model, plan, x)
    torch.testing.assert_close(res.model(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layer,rank,even", [("fc1", 32, 21), ("fc1", 10 ** 9, 21), ("conv2", [16, 16], 12),
                                             ("conv2", 100, 12)])
def test_a_rank_whose_factors_outgrow_the_layer_is_refused(layer, rank, even):
    """Issue 12, item 7: a plan rank of 1e9 was clamped to full rank and made the layer bigger than dense.
    A plan's rank must keep the factors no larger than the layer; the refusal names the break-even rank
    (fc1 32x64: floor(2048 / 96) = 21; conv2 16x8x3x3, Tucker-2 R3 = min(r, 8), R4 = r: 8 R3 + 9 R3 R4 + 16 R4
    <= 1152 up to r = 12)."""
    from explorer.engine.methods.lowrank import break_even_rank

    model, x = zoo.SmallCNN().eval(), torch.randn(2, 1, 8, 8)
    method = "svd" if layer == "fc1" else "tucker2"
    assert break_even_rank(getattr(model, layer), method) == even
    with pytest.raises(PlanError, match=f"layer '{layer}'.*break-even rank is {even}"):
        compress(model, Plan(layers={layer: {"lowrank": {"rank": rank, "method": method}}}), x)
    res = compress(model, Plan(layers={layer: {"lowrank": {"rank": even if layer == "fc1" else [even, even],
                                                           "method": method}}}), x)
    assert res.layers[layer].lowrank["params_after"] <= getattr(model, layer).weight.numel()


def test_structured_pruning_shrinks_the_model_and_its_size():
    model, x = zoo.SmallCNN().eval(), torch.randn(2, 1, 8, 8)
    res = compress(model, Plan(layers={"conv2": {"prune": {"amount": 0.5, "granularity": "filter"}}}), x)
    assert res.model.conv2.out_channels == 8 and res.model.bn2.num_features == 8
    assert res.model.fc1.in_features == 32
    assert res.macs_after < res.macs_before
    assert res.bits["pruned"] < res.bits["dense"]
    assert res.layers["conv2"].structural["removed"] == 8
    assert res.model(x).shape == (2, 10)


def test_unsafe_structured_request_is_refused():
    model, x = zoo.example_inputs()["transformer"]
    with pytest.raises(CompressionError, match=r"qkv: cannot remove output channels: .*chunk"):
        compress(model.eval(), Plan(layers={"qkv": {"prune": {"amount": 0.5, "granularity": "filter"}}}), x)


def test_zoo_models_compress_and_run():
    for name, (model, x) in zoo.example_inputs().items():
        model.eval()
        plan = uniform_plan(prune={"amount": 0.7}, quantize={"bits": 4, "method": "kmeans", "init": "density"})
        res = compress(model, plan, x)
        out = res.model(x)
        assert out.shape == model(x).shape, name
        assert res.bits["coded"] < res.bits["dense"], name


def test_torchscript_supports_element_pruning_and_quantization(tmp_path):
    model = zoo.MLP().eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 64)
    res = compress(scripted, uniform_plan(prune={"amount": 0.5}, quantize={"bits": 4}), x)
    assert res.macs_before == res.macs_after > 0
    assert not torch.equal(res.model(x), scripted(x))
    assert torch.equal(scripted(x), model(x))  # original untouched
    with pytest.raises(CompressionError, match="TorchScript"):
        compress(scripted, uniform_plan(lowrank={"rank": 2}), x)


def test_progress_and_cancel():
    model, x = zoo.MLP().eval(), torch.randn(2, 64)
    seen = []
    compress(model, uniform_plan(quantize={"bits": 4}), x, progress=lambda f, m: seen.append((f, m)))
    assert seen[0][0] == 0.0 and seen[-1] == (1.0, "done")
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    with pytest.raises(Cancelled):
        compress(model, uniform_plan(quantize={"bits": 4}), x, progress=lambda f, m: f < 0.5)


def test_sample_plan_each_stage_shrinks():
    loaded = load_model("digits-mlp")
    plan = Plan.load(SAMPLES_DIR / "digits-mlp.plan.json")
    res = compress(loaded.model, plan, loaded.example_input)
    b = res.bits
    assert b["dense"] > b["pruned"] > b["quantized"] > b["coded"]


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        self.mid = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, t):
        return self.head(torch.relu(self.mid(self.emb(t))))


def test_tied_weights_are_stored_once_and_cannot_be_set_twice():
    model, x = Tied().eval(), torch.randint(0, 20, (2, 5))
    info = __import__("explorer.engine.inspect", fromlist=["x"]).inspect_model(model, x)
    assert info.layer("head").shared_with == "emb"
    assert info.other_params == 0 and info.total_params == 20 * 8 + 8 * 8 + 8
    res = compress(model, Plan(layers={"emb": {"prune": {"amount": 0.5}, "quantize": {"bits": 3}}}), x)
    assert res.layers["head"].tensors == [] and res.layers["head"].shared_with == "emb"
    assert torch.equal(res.model.head.weight, res.model.emb.weight)
    assert res.bits["dense"] == 32 * (20 * 8 + 8 * 8 + 8)
    assert res.layers["head"].macs_after == 2 * 5 * 8 * 20
    with pytest.raises(CompressionError, match="tied"):
        compress(model, Plan(layers={"head": {"quantize": {"bits": 3}}}), x)
    with pytest.raises(CompressionError, match="tied"):
        compress(model, Plan(layers={"emb": {"lowrank": {"rank": 2}}}), x)


@pytest.mark.parametrize("layer, prune, fragment", [
    ("net.4", {"amount": 5000}, "removes all of its 200 weights"),
    ("net.0", {"amount": 32, "granularity": "filter"}, "removes all of its 32 output channels"),
])
def test_pruning_counts_must_leave_something(layer, prune, fragment):
    from explorer.engine.errors import PlanError

    model = zoo.MLP(sizes=(64, 32, 20, 10)).eval()
    with pytest.raises(PlanError, match=fragment):
        compress(model, Plan(layers={layer: {"prune": prune}}), torch.randn(1, 64))


def test_lowrank_errors_name_the_layer():
    from explorer.engine.errors import PlanError

    model, x = zoo.MLP().eval(), torch.randn(1, 64)
    with pytest.raises((PlanError, CompressionError), match="net.0"):
        compress(model, Plan(layers={"net.0": {"lowrank": {"rank": [2, 3], "method": "svd"}}}), x)


class ReadsWeight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.fc.weight)


def test_lowrank_on_a_weight_read_directly_is_explained():
    with pytest.raises(CompressionError, match="after low-rank replacement of fc"):
        compress(ReadsWeight().eval(), Plan(layers={"fc": {"lowrank": {"rank": 2}}}), torch.randn(1, 8))


def test_cache_reuses_unchanged_tensors_and_gives_identical_results():
    from explorer.engine.cache import TensorCache

    model, x = zoo.SmallCNN().eval(), torch.randn(2, 1, 8, 8)
    plan = uniform_plan(prune={"amount": 0.6}, quantize={"bits": 4})
    cache = TensorCache()
    first = compress(model, plan, x, cache=cache)
    changed = plan.with_layer("fc1", {"quantize": {"bits": 3}})
    again = compress(model, changed, x, cache=cache)
    assert cache.hits == 3  # conv1, conv2, fc2 reused; fc1 recomputed
    fresh = compress(model, changed, x)
    assert again.bits == fresh.bits
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k
    assert first.bits != again.bits
    # structured pruning changes the tensors: nothing of those layers may come from the cache
    structured = plan.with_layer("conv2", {"prune": {"amount": 0.5, "granularity": "filter"}})
    hits = cache.hits
    out = compress(model, structured, x, cache=cache)
    assert out.model.conv2.out_channels == 8 and cache.hits == hits + 2  # only conv1 and fc2
