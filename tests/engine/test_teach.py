"""The teaching views' numbers (issue 18) are the engine's own: each view is checked against the function that
computes the same quantity for compression (the mask, the ranking, the file's storage and streams, the
quantizers, the factorization, the MACs counter, the measured summary, the accuracy)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explorer.engine.compress import compress
from explorer.engine.inspect import inspect_model
from explorer.engine.measure.metrics import accuracy, model_macs
from explorer.engine.measure.preview import Previewer
from explorer.engine.methods.channels import layer_ranking
from explorer.engine.methods.lowrank import break_even_rank, factorize, lowrank_params
from explorer.engine.methods.prune import magnitude_mask
from explorer.engine.methods.quantize import quantize_binary, quantize_kmeans, quantize_ternary
from explorer.engine.model.loading import load_model
from explorer.engine.plan import LayerSettings, LowRankSettings, Plan, PruneSettings, QuantSettings
from explorer.engine.storage.size import GAP_BITS
from explorer.engine.teach.help import HELP, help_text
from explorer.engine.teach.layer import (LAYER_VIEWS, element_only, entropy_view, granularity_view,
                                         layer_concept, layer_input_shape, quantization_view, spectrum_view,
                                         storage_view)
from explorer.engine.teach.model import MEASURES, graph_values, model_graph, outputs_view, pipeline_view

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "sample_models" / "digits-cnn.plan.json"


@pytest.fixture(scope="module")
def cnn():
    loaded = load_model("digits-cnn")
    plan = Plan.load(PLAN)
    pv = Previewer(loaded)
    return loaded, inspect_model(loaded.model, loaded.example_input), pv, plan


def _plan_of(pv):
    return Plan.load(PLAN)


def _result(pv, plan, name):
    return pv.tensor(name, element_only(plan.settings_for(name)))[0]


# ------------------------------------------------------------------------------------- granularity
def test_element_granularity_removes_what_the_magnitude_mask_removes(cnn):
    loaded, info, pv, plan = cnn
    s = plan.settings_for("fc1")
    view = granularity_view(loaded.model, loaded.example_input, info, "fc1", s)
    assert view.granularity == "element" and not view.illustrative and view.amount == 0.95
    w = loaded.model.fc1.weight
    assert view.removed == int((~magnitude_mask(w, 0.95)).sum()) and view.total == w.numel()
    assert abs(view.removed_image.mean() - view.removed / view.total) < 0.02  # block means of the mask
    assert f"{view.removed:,} of {view.total:,}" in view.explain()


def test_filter_granularity_removes_the_rankings_rows_and_the_next_layers_columns(cnn):
    loaded, info, _, plan = cnn
    view = granularity_view(loaded.model, loaded.example_input, info, "conv2", plan.settings_for("conv2"), "filter")
    assert view.illustrative and view.refused is None  # the plan prunes elements: filters at 50%, an illustration
    ranking = layer_ranking(loaded.model, loaded.example_input, "conv2", "filter", 0.5)
    w = loaded.model.conv2.weight
    assert view.channels == w.shape[0] and view.channels_removed == int(ranking.removed.sum())
    assert view.removed == view.channels_removed * w[0].numel()
    by_name = {a.name: a for a in view.affected}
    fc1 = by_name["fc1"]  # the flatten feeds each of conv2's channels to a block of fc1's inputs
    assert fc1.kind == "columns" and fc1.removed == view.channels_removed
    assert fc1.weights == fc1.removed * loaded.model.fc1.weight.numel() // w.shape[0]
    assert "fc1 loses" in view.explain()


def test_a_granularity_the_layer_cannot_take_is_refused_with_the_reason(cnn):
    loaded, info, _, plan = cnn
    view = granularity_view(loaded.model, loaded.example_input, info, "fc2", plan.settings_for("fc2"), "filter")
    assert view.refused and "does not apply" in view.explain()
    assert info.layer("fc2").filter_ok is False


# ------------------------------------------------------------------------------------- storage
def test_storage_bits_are_the_files_for_the_width_it_chose(cnn):
    _, _, pv, plan = cnn
    for name in ("conv2", "fc1"):
        result = _result(pv, plan, name)
        view = storage_view(name, result, pv.modules[name].weight)
        q, stages = result.quant, result.sizes.stages
        assert view.value_bits == q.bits and view.side_bits == q.side_bits and view.survivors == result.sizes.nnz
        assert sorted(view.per_gap) == list(GAP_BITS)
        for b, row in view.per_gap.items():
            assert row["bits"] == row["entries"] * (b + q.bits) + q.side_bits
            assert row["entries"] == view.survivors + row["fillers"]
        quantized = stages["quantized"]  # before entropy coding, the file's gaps cost what the view says
        if quantized["format"] == "gaps":
            b = quantized["gap_bits"]
            assert view.per_gap[b]["bits"] == quantized["bits"]
            assert view.per_gap[b]["fillers"] == quantized["fillers"]
        assert view.bitmask_bits == view.numel + view.survivors * q.bits + q.side_bits
        assert view.chosen is stages["coded"]
        first = view.rows[view.row_gap_bits]  # a row's entries: the positions its gaps add up to
        assert all(p == first[0][0] + sum(g for _, g, _, _ in first[1:i + 1]) for i, (p, _, _, _) in enumerate(first))
        assert all(v == 0.0 for _, _, v, f in first if f)
        assert f"{stages['coded']['bits']:,} bits" in view.explain()


STORAGE_CASES = [  # (sample, layer, settings): codes with and without a zero code, float values winning
    ("digits-mlp", "fc1", {"prune": {"amount": 0.6}, "quantize": {"bits": 4, "method": "uniform",
                                                                "symmetric": False, "per_channel": True}}),
    ("digits-mlp", "fc3", {"quantize": {"bits": 8, "method": "kmeans"}}),
    ("digits-mlp", "fc3", {"prune": {"amount": 0.5}, "quantize": {"bits": 8, "method": "kmeans"}}),
    ("digits-cnn", "conv1", {"prune": {"amount": 0.3}, "quantize": {"method": "ternary"}}),
    ("digits-cnn", "fc1", {"prune": {"amount": 0.9}}),
    ("digits-cnn", "fc2", {"prune": {"amount": 0.5}, "quantize": {"method": "float16"}}),
]


@pytest.mark.parametrize("sample, name, settings", STORAGE_CASES)
def test_the_cheapest_storage_drawn_is_what_the_file_stores_before_coding(sample, name, settings):
    loaded = load_model(sample)
    pv = Previewer(loaded)
    s = Plan.from_dict({"version": 1, "layers": {name: settings}}).settings_for(name)
    result = pv.tensor(name, element_only(s))[0]
    view = storage_view(name, result, pv.modules[name].weight)
    drawn = [row["bits"] for row in view.per_gap.values()] + [view.bitmask_bits, view.dense_bits]
    assert min(drawn) == result.sizes.stages["quantized"]["bits"]
    stage = result.sizes.stages["coded"]
    streams = {st.kind: st.bits for st in entropy_view(name, result).streams}
    assert streams.get("index") == stage.get("index_stream") and streams.get("gap") == stage.get("gap_stream")


# ------------------------------------------------------------------------------------- quantization
def test_quantization_errors_are_the_quantizers(cnn):
    _, _, pv, plan = cnn
    s = element_only(plan.settings_for("conv2"))
    w = pv.modules["conv2"].weight
    view = quantization_view("conv2", w, s, _result(pv, plan, "conv2"), bits=(2, 6), inits=("linear", "forgy"))
    keep = magnitude_mask(w, s.prune.amount)
    survivors = torch.from_numpy(w.detach().reshape(-1).numpy()[keep].copy())
    assert view.stride == 1 and view.survivors == survivors.numel()
    with_zero = torch.cat([survivors, torch.zeros(1)])  # the pruned weights' reserved zero, as the plan's
    for i, b in enumerate((2, 6)):
        for init in ("linear", "forgy"):
            assert view.errors[f"k-means ({init})"][i] == pytest.approx(quantize_kmeans(
                with_zero, np.append(np.ones(survivors.numel(), bool), False), b, init, 30, 0).rel_error)
    assert view.binary == pytest.approx(quantize_binary(survivors).rel_error)
    assert view.ternary == pytest.approx(quantize_ternary(survivors).rel_error)
    assert view.errors["uniform"][1] < view.errors["uniform"][0]  # more bits, less error
    assert view.at_bits == 6 and len(view.levels["k-means (linear)"]) <= 2 ** 6
    assert view.plan_error == _result(pv, plan, "conv2").quant.rel_error
    assert "6 bits" in view.explain()


def test_a_large_layer_is_sampled_and_says_so(cnn):
    _, _, pv, plan = cnn
    w = torch.randn(300, 200)  # 60,000 survivors > QUANT_SAMPLE
    view = quantization_view("big", w, LayerSettings(), bits=(3,), inits=("linear",))
    assert view.stride == 4 and view.survivors == 60_000
    assert "one survivor in 4 of its 60,000" in view.explain()


# ------------------------------------------------------------------------------------- entropy
def test_entropy_streams_are_the_coded_stages(cnn):
    _, _, pv, plan = cnn
    result = _result(pv, plan, "fc1")
    stage = result.sizes.stages["coded"]
    view = entropy_view("fc1", result)
    kinds = {s.kind: s for s in view.streams}
    assert set(kinds) == ({"index", "gap"} if stage["format"] == "gaps" else {"index"})
    assert kinds["index"].bits == stage["index_stream"]
    if "gap" in kinds:
        assert kinds["gap"].bits == stage["gap_stream"] and kinds["gap"].width == stage["gap_bits"]
    for s in view.streams:
        assert s.entropy <= s.huffman + 1e-9 < s.entropy + 1  # Huffman: H <= L < H + 1
        present = s.counts > 0
        assert np.all(s.lengths[present] > 0) and np.all(s.lengths[~present] == 0)
    assert kinds["index"].symbols == result.sizes.nnz + (stage.get("fillers") or 0)


def test_an_uncompressed_layer_has_nothing_to_code(cnn):
    _, _, pv, _ = cnn
    result = pv.tensor("fc2", LayerSettings())[0]
    view = entropy_view("fc2", result)
    assert view.streams == [] and "nothing to entropy-code" in view.explain()
    assert not view.drawable and not storage_view("fc2", result, pv.modules["fc2"].weight).drawable
    assert entropy_view("fc1", _result(pv, _plan_of(pv), "fc1")).drawable


# ------------------------------------------------------------------------------------- low rank
@pytest.mark.parametrize("name, method, rank", [("fc1", "svd", 12), ("conv2", "tucker2", (8, 12))])
def test_the_spectrum_cut_is_the_factorizations(cnn, name, method, rank):
    loaded, info, pv, _ = cnn
    module = pv.modules[name]
    s = LayerSettings(lowrank=LowRankSettings(rank, method))
    shape = layer_input_shape(loaded.model, loaded.example_input, name)
    view = spectrum_view(name, module, s, info.layer(name).macs, shape)
    factors, done = factorize(module, method, rank, name=name)
    assert view.rel_error == pytest.approx(done["rel_error"])
    assert view.params_at == lowrank_params(module, method, rank, name=name)
    assert view.break_even == break_even_rank(module, method)
    assert view.macs == info.layer(name).macs
    assert view.macs_at == model_macs(factors, torch.zeros(shape))  # what the MACs counter counts
    if method == "svd":  # Eckart-Young: the error of the best rank-r matrix is the energy cut
        assert view.rel_error == pytest.approx(math.sqrt(1 - view.energy("singular", rank)), rel=1e-6)
    assert view.mac_break_even is not None and view.macs_at is not None
    assert f"reconstruction error {view.rel_error:.1%}" in view.explain()


def test_no_lowrank_in_the_plan_still_shows_the_break_even(cnn):
    loaded, info, pv, plan = cnn
    view = spectrum_view("fc1", pv.modules["fc1"], plan.settings_for("fc1"), info.layer("fc1").macs)
    assert view.ranks is None and view.break_even == break_even_rank(pv.modules["fc1"], "svd")
    assert "no low-rank in the plan" in view.explain()


# ------------------------------------------------------------------------------------- model views
def test_the_pipeline_is_the_measured_summary(cnn):
    _, _, pv, plan = cnn
    summary = pv.measure(plan)
    view = pipeline_view(summary)
    assert {k: v for k, v in view.totals.items()} == {k: summary["size"][k] for k in view.totals}
    for stage in ("dense", "pruned", "quantized", "coded"):
        layers = sum(b[stage] for _, b in view.layers) + view.other[stage]
        assert layers == summary["size_bits"][stage]
    assert view.ratio("file") == summary["size"]["dense"] / summary["size"]["file"]
    assert f"({view.ratio('coded'):.1f}×)" in view.explain()


def test_the_graph_follows_the_model_and_colours_by_the_summary(cnn):
    loaded, info, pv, plan = cnn
    graph = model_graph(loaded.model, info)
    assert graph.traced
    layers = [n.layer for n in graph.nodes if n.kind == "layer"]
    assert layers == ["conv1", "conv2", "fc1", "fc2"]
    assert graph.nodes[0].kind == "input" and graph.nodes[-1].kind == "output"
    depths = [graph.node_of(n).depth for n in layers]
    assert depths == sorted(depths) and len(set(depths)) == 4
    assert graph.node_of("fc2").fixed  # its outputs are the classes
    summary = pv.measure(plan)
    for measure in MEASURES[:-1]:
        values = graph_values(summary, measure)
        assert set(values) == set(layers)
    share = graph_values(summary, "share")
    assert sum(share.values()) < 1  # the biases are coded too
    ratio = graph_values(summary, "ratio")
    fc1 = next(l for l in summary["layers"] if l["name"] == "fc1")
    assert ratio["fc1"] == fc1["bits"]["dense"] / fc1["bits"]["coded"]


def test_the_graph_shows_resnets_residual_adds(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import resnet_mnist

    model, x = resnet_mnist.resnet18()
    graph = model_graph(model, inspect_model(model, x))
    merges = [n for n in graph.nodes if n.kind == "merge"]
    assert len(merges) == 8 and {n.op for n in merges} == {"add"}  # one per basic block
    assert len([n for n in graph.nodes if n.kind == "layer"]) == 21  # 20 convs (3 shortcuts among them), fc
    by_id = {n.id: n for n in graph.nodes}
    for m in merges:
        assert len([a for a, b in graph.edges if b == m.id]) == 2  # the block's output and its shortcut
        assert all(by_id[a].depth < m.depth for a, b in graph.edges if b == m.id)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


def test_an_untraceable_model_is_a_list_that_says_why():
    model = Untraceable()
    graph = model_graph(model, inspect_model(model, torch.ones(1, 4)))
    assert not graph.traced and "fx cannot trace it" in graph.reason
    assert [n.layer for n in graph.nodes] == ["fc"]
    assert "drawn as a list" in graph.explain({}, "ratio")


def test_outputs_compare_the_teacher_with_its_students(cnn):
    loaded, _, pv, plan = cnn
    student = pv.build(plan, count=False).model
    view = outputs_view({"teacher": loaded.model, "twin": loaded.model, "student": student}, loaded.eval_data, n=200)
    assert view.agreement["teacher"] == 1.0 and view.agreement["twin"] == 1.0
    for label, model in (("teacher", loaded.model), ("student", student)):
        assert view.accuracy[label] == pytest.approx(accuracy(model, loaded.eval_data, limit=200))
    assert view.classifier and len(view.samples) == 4
    for row in view.samples:
        probs = [p for _, p in row["outputs"]["teacher"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        classes = [c for c, _ in row["outputs"]["teacher"]]
        with torch.no_grad():
            out = torch.softmax(student(loaded.eval_data.inputs[row["index"]:row["index"] + 1])[0], -1)
        assert row["outputs"]["student"] == [(c, pytest.approx(float(out[c]))) for c in classes]  # at the teacher's
        assert row["top"]["student"] == (int(out.argmax()), pytest.approx(float(out.max())))
    assert "student agrees with the teacher's top class on" in view.explain()


# ------------------------------------------------------------------------------------- one entry point, help
def test_layer_concept_is_the_direct_call_and_every_view_has_help(cnn):
    loaded, info, pv, plan = cnn
    s = plan.settings_for("conv2")
    result = _result(pv, plan, "conv2")
    direct = {"storage": storage_view("conv2", result, pv.modules["conv2"].weight),
              "entropy": entropy_view("conv2", result)}
    for key, view in direct.items():
        assert layer_concept(key, loaded, info, pv, "conv2", s).explain() == view.explain()
    shapes = {}
    layer_concept("lowrank", loaded, info, pv, "conv2", s, input_shapes=shapes)
    assert shapes["conv2"] == layer_input_shape(loaded.model, loaded.example_input, "conv2")
    with pytest.raises(ValueError, match="no layer view"):
        layer_concept("nonsense", loaded, info, pv, "conv2", s)
    assert set(HELP) == set(LAYER_VIEWS) | {"pipeline", "graph", "outputs"}
    for key in HELP:
        text = help_text(key)
        assert HELP[key].formula in text and HELP[key].reference in text


def test_element_only_keeps_what_the_tensor_result_covers():
    p = PruneSettings(amount=0.5, granularity="filter")
    q = QuantSettings(bits=4)
    s = LayerSettings(prune=p, quantize=q, lowrank=LowRankSettings(4))
    assert element_only(s) == LayerSettings(quantize=q)
    e = PruneSettings(amount=0.5)
    assert element_only(LayerSettings(prune=e, quantize=q)) == LayerSettings(prune=e, quantize=q)


# ------------------------------------------------------------------------------------- the test zoo's models
def _zoo(name: str):
    import zoo
    from explorer.engine.model.loading import LoadedModel

    model, x = zoo.example_inputs()[name]
    loaded = LoadedModel(model.eval(), x, None, source=f"zoo:{name}", kind="factory", factory=f"zoo:{name}")
    return loaded, inspect_model(loaded.model, x), Previewer(loaded)


def test_macs_at_a_rank_count_the_whole_batch():
    loaded, info, pv = _zoo("cnn")  # its example input holds 2 images
    for name in ("conv1", "conv2"):
        module = pv.modules[name]
        shape = layer_input_shape(loaded.model, loaded.example_input, name)
        assert shape[0] == 2
        view = spectrum_view(name, module, LayerSettings(lowrank=LowRankSettings((2, 3), "tucker2")),
                             info.layer(name).macs, shape)
        factors, _ = factorize(module, "tucker2", (2, 3), name=name)
        assert view.macs_at == model_macs(factors, torch.zeros(shape))


@pytest.mark.parametrize("zoo_name", ["lstm", "bigru", "depthwise", "mixed"])
def test_every_layer_view_answers_on_every_layer_of_the_zoo(zoo_name):
    loaded, info, pv = _zoo(zoo_name)
    s = LayerSettings(prune=PruneSettings(amount=0.5), quantize=QuantSettings(bits=3))
    for name in pv.names:
        for key in LAYER_VIEWS:
            text = layer_concept(key, loaded, info, pv, name, s).explain()
            assert name in text, (key, name)
    graph = model_graph(loaded.model, info)
    assert {n.layer for n in graph.nodes if n.kind == "layer"} <= set(pv.names)


def test_outputs_of_a_regression_model_are_compared_by_fidelity():
    from explorer.engine.measure.metrics import fidelity
    from explorer.engine.model.data import EvalData

    teacher = nn.Linear(4, 1)
    student = nn.Linear(4, 1)
    with torch.no_grad():
        student.weight.copy_(-teacher.weight)
        student.bias.copy_(-teacher.bias)
    data = EvalData(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), None, "random inputs")
    view = outputs_view({"teacher": teacher, "flipped": student}, data)
    assert not view.classifier and view.agreement == {}
    assert view.fidelity["flipped"] == fidelity(student, teacher, data.inputs)
    assert view.fidelity["flipped"]["cosine"] == pytest.approx(-1.0)
    assert "cosine similarity -1.0000" in view.explain()
    assert len(view.samples[0]["outputs"]["teacher"]) == 1


def _lost(model, res) -> dict:
    """Weights each module lost in ``res`` (a BatchNorm: its scale and shift)."""
    after = dict(res.model.named_parameters())
    out: dict = {}
    for n, p in model.named_parameters():
        d = p.numel() - (after[n].numel() if n in after else 0)
        mod, attr = n.rpartition(".")[::2]
        norm = isinstance(model.get_submodule(mod), nn.modules.batchnorm._BatchNorm)
        if d and (attr == "weight" or norm):
            out[mod] = out.get(mod, 0) + d
    return out


@pytest.mark.parametrize("zoo_name", ["cnn", "resnet", "depthwise", "mobilenetv2", "mlp"])
def test_what_goes_with_a_layers_channels_is_what_compress_removes(zoo_name):
    loaded, info, _ = _zoo(zoo_name)
    for layer in info.layers:
        for g, ok in (("filter", layer.filter_ok), ("channel", layer.channel_ok), ("merge", layer.merge_ok)):
            if not ok:
                continue
            plan = Plan.from_dict({"version": 1, "layers": {layer.name: {"prune": {"amount": 0.5, "granularity": g}}}})
            view = granularity_view(loaded.model, loaded.example_input, info, layer.name, plan.settings_for(layer.name))
            shown = {layer.name: view.removed, **{a.name: a.weights for a in view.affected}}
            res = compress(loaded.model, plan, loaded.example_input)
            assert shown == _lost(loaded.model, res), (layer.name, g)


def test_views_of_a_structured_plan_show_the_layers_as_the_file_gets_them():
    """Channel removals come first in the file: the low-rank view factorises what they leave, the storage
    view stores the shrunk weight, and a layer's granularity view starts from the other layers' removals."""
    loaded = load_model("digits-cnn")
    info, pv = inspect_model(loaded.model, loaded.example_input), Previewer(loaded)
    plan = Plan.load(ROOT / "sample_models" / "digits-cnn.structured.plan.json")  # fc1: 60% filters, then SVD
    res = compress(loaded.model, plan, loaded.example_input)
    fc1 = res.layers["fc1"]
    view = layer_concept("lowrank", loaded, info, pv, "fc1", plan.settings_for("fc1"), plan=plan)
    assert view.ranks == fc1.lowrank["ranks"] and view.params_at == fc1.lowrank["params_after"]
    assert view.rel_error == pytest.approx(fc1.lowrank["rel_error"])
    assert view.params == fc1.lowrank["params_before"] < loaded.model.fc1.weight.numel()
    fc2 = res.layers["fc2"]  # its inputs went with fc1's filters; 6-bit k-means on what is left
    storage = layer_concept("storage", loaded, info, pv, "fc2", plan.settings_for("fc2"), plan=plan)
    assert storage.numel == fc2.tensors[0].numel and storage.chosen["bits"] == fc2.tensors[0].sizes.bits["coded"]
    merge = Plan.from_dict({"version": 1, "layers": {n: {"prune": {"amount": 0.5, "granularity": "merge"}}
                                                     for n in ("fc1", "fc2")}})
    mlp = load_model("digits-mlp")
    g = layer_concept("granularity", mlp, inspect_model(mlp.model, mlp.example_input), Previewer(mlp), "fc2",
                      merge.settings_for("fc2"), plan=merge)
    assert g.shape == (100, 150)  # fc1's merges took half of its inputs first
