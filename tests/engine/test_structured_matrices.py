"""Tensor-train and block-circulant layers (issue 20): they compute the matrix their factors say, hold the
weights and run the MACs the accounting counts (MACs from what the forward pass really runs), round-trip
bit-identically, fine-tune, export, and appear in the plan, the CLI's help and the window through the registry."""

import math

import pytest
import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

from explorer.engine import compress, load_model
from explorer.engine.errors import CompressionError, LoadError, PlanError
from explorer.engine.measure.layerview import layer_preview
from explorer.engine.measure.metrics import count_macs
from explorer.engine.methods import lowrank
from explorer.engine.modules import BlockCirculant, TTCore, fft_macs, tt_dense
from explorer.engine.plan import LayerSettings, LowRankSettings, Plan, QuantSettings
from explorer.engine.storage import fileformat as ff

from test_fileformat import check_round_trip


def _linear(out_f, in_f, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f)


def _weights(seq):
    return sum(m.weight.numel() for m in seq)


# ------------------------------------------------------------------------------------- what they compute


@pytest.mark.parametrize("shape", [(500, 200), (12, 18), (10, 500), (64, 64)])
def test_full_rank_tt_and_block_one_circulant_are_the_layer(shape):
    lin = _linear(*shape)
    x = torch.randn(5, shape[1])
    for method, rank in (("tt", 10 ** 6), ("circulant", 1)):
        seq, info = lowrank.factorize(lin, method, rank)
        assert info["rel_error"] < 1e-6, (method, info)
        assert torch.allclose(seq(x), lin(x), atol=1e-5)
    cores = list(lowrank.factorize(lin, "tt", 3)[0])
    assert all(isinstance(c, TTCore) for c in cores) and len(cores) == len(lowrank.tt_modes(*shape)[0])


@pytest.mark.parametrize("method,rank", [("tt", 2), ("tt", 7), ("circulant", 7), ("circulant", 50)])
def test_the_chain_multiplies_by_the_matrix_its_factors_define_on_any_leading_shape(method, rank):
    lin = _linear(60, 84)
    seq, info = lowrank.factorize(lin, method, rank)
    dense = tt_dense(list(seq)) if method == "tt" else seq[0].dense()
    x = torch.randn(2, 3, 84)
    assert torch.allclose(seq(x), x @ dense.T + lin.bias, atol=1e-5)
    assert info["rel_error"] == pytest.approx(float((dense - lin.weight).norm() / lin.weight.norm()), rel=1e-4)
    assert info["params_after"] == _weights(seq) == lowrank.lowrank_params(lin, method, rank)


def test_a_true_block_circulant_is_fitted_exactly_and_any_fit_is_the_least_squares_one():
    torch.manual_seed(1)
    truth = BlockCirculant(30, 20, 7)  # padded: 3 x 5 blocks of 7
    lin = nn.Linear(30, 20)
    with torch.no_grad():
        lin.weight.copy_(truth.dense())
    seq, info = lowrank.factorize(lin, "circulant", 7)
    assert info["rel_error"] < 1e-6
    # on a random matrix: the gradient of ||C(c) - W||^2 in c vanishes at the fit (inside the matrix only)
    lin = _linear(20, 30, seed=2)
    fit = lowrank.factorize(lin, "circulant", 7)[0][0]
    c = fit.weight.detach().clone().requires_grad_(True)
    probe = BlockCirculant(30, 20, 7)
    with torch.no_grad():
        probe.weight.copy_(c)
    probe.weight.requires_grad_(True)
    ((probe.dense() - lin.weight.detach()) ** 2).sum().backward()
    assert float(probe.weight.grad.abs().max()) < 1e-5


def test_one_block_is_chengs_circulant_projection_d_weights_instead_of_d_squared():
    lin = _linear(64, 64)
    seq, info = lowrank.factorize(lin, "circulant", 64)
    assert info["params_after"] == 64 and tuple(seq[0].weight.shape) == (1, 1, 64)


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3])
def test_a_fraction_is_the_most_weights_within_the_budget(fraction):
    lin = _linear(500, 200)
    budget = fraction * lin.weight.numel()
    (b,) = lowrank.choose_rank(lin, "circulant", fraction)
    assert lowrank.lowrank_params(lin, "circulant", b) <= budget < lowrank.lowrank_params(lin, "circulant", b - 1)
    ranks = lowrank.choose_rank(lin, "tt", fraction)
    assert lowrank.lowrank_params(lin, "tt", ranks) <= budget
    bigger = lowrank.choose_rank(lin, "tt", max(ranks) + 1)
    assert lowrank.lowrank_params(lin, "tt", bigger) > budget


def test_what_cannot_be_a_tensor_train_or_circulant_is_refused_naming_why():
    with pytest.raises(CompressionError, match="Linear layers"):
        lowrank.factorize(nn.Conv2d(4, 8, 3), "tt", 2)
    with pytest.raises(CompressionError, match="Linear layers"):
        lowrank.factorize(nn.Embedding(10, 4), "circulant", 2)
    with pytest.raises(CompressionError, match="131 \\(inputs\\) is prime"):
        lowrank.factorize(nn.Linear(131, 12), "tt", 2)
    with pytest.raises(PlanError, match="2 TT-ranks"):
        lowrank.factorize(nn.Linear(64, 64), "tt", [2, 2, 2])
    with pytest.raises(PlanError, match="break-even"):  # a full-rank train holds more than the matrix
        lowrank.factorize(nn.Linear(64, 64), "tt", 10 ** 6, grow=False)


# ------------------------------------------------------------------------------------------------ MACs


class OpLog(TorchDispatchMode):
    """Every aten op the forward pass runs, with its arguments and output."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append((func, args, out))
        return out


def _macs_run(ops) -> int:
    """The real MACs of what ran: every real FFT (forward or inverse) as fft_macs of its length, and every
    matrix product (a complex one as 4 real MACs a product)."""
    total = 0
    for func, args, out in ops:
        name = func.__name__
        if name.startswith("_fft_r2c"):
            x = args[0]
            total += x.numel() // x.shape[-1] * fft_macs(x.shape[-1])
        elif name.startswith("_fft_c2r"):
            total += out.numel() // out.shape[-1] * fft_macs(out.shape[-1])
        elif name.startswith(("bmm", "mm")):
            a, b = args[0], args[1]
            macs = a.numel() // a.shape[-1] * a.shape[-1] * b.shape[-1]
            total += 4 * macs if a.is_complex() else macs
    return total


@pytest.mark.parametrize("method,rank", [("tt", 3), ("tt", 9), ("circulant", 10), ("circulant", 64)])
@pytest.mark.parametrize("shape", [(1, 200), (4, 200), (2, 3, 200)])
def test_the_counted_macs_are_the_ones_the_forward_pass_runs(method, rank, shape):
    lin = _linear(500, 200)
    seq, _ = lowrank.factorize(lin, method, rank)
    model = nn.Sequential(seq)
    x = torch.randn(*shape)
    per_layer, total = count_macs(model, x)
    rows = x.numel() // 200
    assert sum(per_layer.values()) == total == lowrank.factor_macs(lin, method, lowrank.choose_rank(lin, method, rank),
                                                                   rows)
    log = OpLog()
    with torch.no_grad(), log:
        model(x)
    assert _macs_run(log.ops) == total
    if method == "tt":  # torch's own flop counter agrees
        counter = flop_counter.FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        assert counter.get_total_flops() // 2 == total


def test_the_model_count_is_the_factors_and_a_tensor_train_may_cost_more_than_it_saves():
    loaded = load_model("digits-cnn")
    plan = Plan.from_dict({"version": 1, "layers": {"fc1": {"lowrank": {"method": "tt", "rank": 0.1}},
                                                    "fc2": {"lowrank": {"method": "circulant", "rank": 10}}}})
    res = compress(loaded.model, plan, loaded.example_input)
    fc1, fc2 = res.layers["fc1"], res.layers["fc2"]
    assert fc1.macs_after == sum(c.macs(1) for c in res.model.fc1)
    assert fc2.macs_after == res.model.fc2[0].macs(1) and fc2.macs_after < fc2.macs_before
    assert fc1.macs_after > fc1.macs_before  # at TT-rank 13 the middle core costs more than the dense layer
    assert res.macs_after == res.macs_before - fc1.macs_before - fc2.macs_before + fc1.macs_after + fc2.macs_after


# ---------------------------------------------------------------------------------- the file and exports


PLANS = {
    "digits-cnn": {"fc1": {"lowrank": {"method": "tt", "rank": 0.1}, "prune": {"amount": 0.3},
                           "quantize": {"bits": 5}},
                   "fc2": {"lowrank": {"method": "circulant", "rank": 10}, "quantize": {"method": "float16"}}},
    "digits-mlp": {"fc1": {"lowrank": {"method": "circulant", "rank": 0.05}},
                   "fc2": {"lowrank": {"method": "tt", "rank": [4, 6]}, "quantize": {"bits": 4,
                                                                                     "method": "uniform"}}},
}


@pytest.mark.parametrize("sample", sorted(PLANS))
def test_files_round_trip_bit_identically_with_their_sizes_predicted(sample, tmp_path):
    loaded = load_model(sample)
    res, written = check_round_trip(loaded, Plan(layers=PLANS[sample]), tmp_path / "m.cexp")
    kinds = {type(m).__name__ for m in ff.load(tmp_path / "m.cexp").modules()}
    assert {"TTCore", "BlockCirculant"} <= kinds
    scripted = torch.jit.script(res.model)  # a model without a factory is stored as TorchScript
    x = loaded.eval_data.inputs[:8]
    assert torch.equal(scripted(x), res.model(x))


def _encoded(sample="digits-cnn"):
    loaded = load_model(sample)
    res = compress(loaded.model, Plan(layers=PLANS[sample]), loaded.example_input)
    return ff.encode(res, loaded)


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["fc2"][0].update(block=10 ** 6), "larger than the matrix"),
    (lambda r: r["fc2"][0].update(block=0), "block"),
    (lambda r: r["fc1"][1].update(rank=2 ** 30, rank_prev=2 ** 30), "more than a tensor may hold"),
    (lambda r: r["fc1"][0].update(rank=3), "declares shape"),
    (lambda r: r["fc1"][0].pop("suffix"), "suffix"),
    (lambda r: r["fc1"][0].update(type="FFT"), "type"),
])
def test_a_file_that_lies_about_its_structured_layers_is_refused_before_anything_is_allocated(edit, message,
                                                                                               tmp_path):
    from test_format_robust import seal, split

    parts = split(_encoded())
    edit(parts.manifest["edits"]["replace"])
    path = tmp_path / "lie.cexp"
    path.write_bytes(seal(parts))
    with pytest.raises(LoadError, match=message):
        ff.load(path)


def test_onnx_and_torchscript_exports_compute_the_same(tmp_path):
    pytest.importorskip("onnx")
    from explorer.engine.model.export import export

    from test_export import run_onnx

    loaded = load_model("digits-cnn")
    res = compress(loaded.model, Plan(layers=PLANS["digits-cnn"]), loaded.example_input)
    x = loaded.example_input
    export(res, x, tmp_path / "m.onnx", fmt="onnx")
    _, y = run_onnx(tmp_path / "m.onnx", x)  # the circulant blocks as their expanded matrix: ONNX has no complex
    with torch.no_grad():
        want = res.model(x)
    assert torch.allclose(y, want, atol=1e-5)
    info = export(res, x, tmp_path / "m.pt", fmt="torchscript")
    assert info["method"] == "script"
    assert torch.allclose(torch.jit.load(str(tmp_path / "m.pt"))(x), want, atol=1e-6)


def test_fine_tuning_trains_the_cores_and_the_circulant_vectors(tmp_path):
    from explorer.engine.finetune.data import load_train_data
    from explorer.engine.finetune.recipe import check_recipe
    from explorer.engine.finetune.trainer import finetune
    from explorer.engine.measure.metrics import accuracy

    loaded = load_model("digits-mlp")
    plan = Plan(layers={"fc1": {"lowrank": {"method": "tt", "rank": 0.1}},
                        "fc2": {"lowrank": {"method": "circulant", "rank": 0.05}}})
    before = compress(loaded.model, plan, loaded.example_input)
    res = finetune(loaded, plan, load_train_data("digits"), recipe=check_recipe({"epochs": 3, "lr": 0.003}))
    tuned = res.compressed
    for name in ("fc1.0", "fc1.2", "fc2.0"):
        mod, mod0 = tuned.model.get_submodule(name), before.model.get_submodule(name)
        assert type(mod) is type(mod0) and not torch.equal(mod.weight, mod0.weight)
    assert accuracy(tuned.model, loaded.eval_data) > accuracy(before.model, loaded.eval_data)
    path = tmp_path / "ft.cexp"
    assert ff.save(tuned, path, loaded) == ff.predicted_bytes(tuned, loaded)
    back = ff.load(path)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in tuned.model.state_dict().items())


# ------------------------------------------------------------------------------ registry: plan, help, views


def test_the_plan_the_help_and_the_description_name_them():
    from explorer.cli import plan_vocabulary

    help_text = plan_vocabulary()
    for name in ("tt", "circulant"):
        assert f"    {name:<10} Linear:" in help_text
        Plan.from_dict({"version": 1, "default": {"lowrank": {"method": name, "rank": 0.2}}})
    s = Plan.from_dict({"version": 1, "layers": {"fc1": {"lowrank": {"method": "circulant", "rank": 16}}}})
    assert s.settings_for("fc1").describe() == "circulant block 16"
    with pytest.raises(PlanError, match="must be one of"):
        Plan.from_dict({"version": 1, "default": {"lowrank": {"method": "fft"}}})


def test_the_layer_view_draws_the_factors_the_file_stores():
    loaded = load_model("digits-cnn")
    settings = LayerSettings(lowrank=LowRankSettings(0.1, "tt"), quantize=QuantSettings(bits=4))
    view = layer_preview("fc1", loaded.model.fc1, settings)
    res = compress(loaded.model, Plan(layers={"fc1": settings.to_dict()}), loaded.example_input)
    cores = list(res.model.fc1)
    assert view.numel == sum(c.weight.numel() for c in cores) and view.threshold is None
    stored = torch.cat([c.weight.detach().reshape(-1) for c in cores]).double().unique().numpy()
    assert set(stored) <= set(view.levels) and len(view.info["factors"]) == 3
    from explorer.engine.measure.preview import Previewer

    got = Previewer(loaded).layer("fc1", settings)
    assert got.numel == view.numel and (got.kept == view.kept).all() and (got.levels == view.levels).all()


def test_the_spectrum_view_cuts_each_bond_and_says_a_circulants_numbers():
    from explorer.engine.teach.layer import spectrum_view

    fc1 = load_model("digits-cnn").model.fc1
    tt = spectrum_view("fc1", fc1, LayerSettings(lowrank=LowRankSettings(0.1, "tt")), macs=100_000,
                       input_shape=(1, 200))
    assert list(tt.spectra) == ["bond 1", "bond 2"] and tt.mode_ranks() == tt.ranks
    unfold = lowrank.tt_unfoldings(fc1.weight)
    assert [len(v) for v in tt.spectra.values()] == [min(u.shape) for u in unfold]
    assert tt.macs_at == lowrank.factor_macs(fc1, "tt", tt.ranks, 1)
    circ = spectrum_view("fc1", fc1, LayerSettings(lowrank=LowRankSettings(10, "circulant")), macs=100_000,
                         input_shape=(1, 200))
    assert not circ.drawable and "10 x 10" in circ.explain() and f"{circ.params_at:,} weights" in circ.explain()
    assert circ.params_at == math.ceil(500 / 10) * math.ceil(200 / 10) * 10


# ---------------------------------------------------------------------------- found by review: edge cases


def test_uneven_tt_ranks_are_clamped_to_what_tt_svd_can_give_and_blocks_to_the_most_that_fit():
    seq, info = lowrank.factorize(nn.Linear(20, 12), "tt", [1, 15])
    assert info["ranks"] == [1, 4] and info["clamped"]
    x = torch.randn(3, 20)
    assert seq(x).shape == (3, 12)
    assert lowrank.choose_rank(nn.Linear(10, 10), "circulant", 0.3) == [7]  # 28 weights, not 20
    assert lowrank.choose_rank(nn.Linear(8000, 8), "circulant", 0.01) == [8]  # none fits: the fewest, small
    assert lowrank.break_even_rank(nn.Linear(100, 1), "circulant") == 100  # b = 3 would hold 102


def test_circulant_and_tt_work_on_the_matrix_s_entries_never_its_padded_square():
    for method, rank, shape in (("circulant", 8000, (8, 8000)), ("tt", 2, (8, 8192))):
        lin = nn.Linear(shape[1], shape[0])
        log = OpLog()
        with log:
            lowrank.factorize(lin, method, rank)
        largest = max(out.numel() for _, _, out in log.ops if isinstance(out, torch.Tensor))
        assert largest <= 2 * lin.weight.numel(), (method, largest)  # was 8000^2 (circulant), 8192^2 (tt)


def test_circulant_runs_in_half_precision_and_on_no_rows():
    seq, _ = lowrank.factorize(nn.Linear(20, 12), "circulant", 5)
    assert seq(torch.randn(0, 20)).shape == (0, 12)
    half = seq.to(torch.bfloat16)
    assert half(torch.randn(2, 20, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_structured_layers_leave_the_rest_of_the_model_traceable_for_channel_removal(tmp_path):
    loaded = load_model("digits-cnn")
    res = compress(loaded.model, Plan(layers={"fc1": {"lowrank": {"method": "tt", "rank": 0.1}}}),
                   loaded.example_input)
    ff.save(res, tmp_path / "tt.cexp", loaded)
    back = load_model(str(tmp_path / "tt.cexp"))
    again = compress(back.model, Plan(layers={"conv1": {"prune": {"amount": 5, "granularity": "filter"}}}),
                     back.example_input)
    assert again.model.conv1.out_channels == 15


def test_a_chain_that_does_not_compose_or_outgrows_its_file_is_refused(tmp_path):
    from test_format_robust import seal, split

    parts = split(_encoded())
    core = lambda pre: {"type": "TTCore", "prefix": pre, "n": 1, "rank": 1, "rank_prev": 200, "m": 1,  # noqa
                        "suffix": 1, "bias": False}
    parts.manifest["edits"]["replace"]["fc1"] = [core(200), core(200 * 200), core(200 * 200 * 200)]
    path = tmp_path / "grow.cexp"
    path.write_bytes(seal(parts))
    with pytest.raises(LoadError, match="more than a file of"):
        ff.load(path)
    parts = split(_encoded())
    parts.manifest["edits"]["replace"]["fc1"][1]["prefix"] += 1
    path.write_bytes(seal(parts))
    with pytest.raises(LoadError, match=r"takes .* inputs, but \[0\] gives"):
        ff.load(path)


def test_a_torchscript_model_with_circulant_layers_is_refused_by_onnx_in_one_message(tmp_path):
    pytest.importorskip("onnx")
    from explorer.engine.errors import ExplorerError
    from explorer.engine.model.export import export

    loaded = load_model("digits-mlp")
    res = compress(loaded.model, Plan(layers={"fc1": {"lowrank": {"method": "circulant", "rank": 0.05}}}),
                   loaded.example_input)
    scripted = torch.jit.script(res.model)
    with pytest.raises(ExplorerError, match="FFTs ONNX cannot express"):
        export(scripted, loaded.example_input, tmp_path / "m.onnx", fmt="onnx")
    assert not (tmp_path / "m.onnx").exists()
