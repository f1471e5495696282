"""Low-rank factorisation: exactness at full rank, real MAC and parameter savings, rank resolution, errors."""

import math

import pytest
import torch
import zoo
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from explorer.engine.errors import Cancelled, CompressionError, PlanError
from explorer.engine.methods.lowrank import (_tucker2_path, choose_rank, cp_conv, factorize, lowrank_params,
                                             svd_embedding, svd_linear, tucker2_conv)


def macs(module, x):
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2


def weight_count(seq):
    return sum(m.weight.numel() for m in seq)


def bias_count(seq):
    return sum(m.bias.numel() for m in seq if getattr(m, "bias", None) is not None)


def cp_kernel(shape, rank, seed=0):
    """A kernel of CP rank exactly ``rank`` (generically), built from random factors."""
    gen = torch.Generator().manual_seed(seed)
    factors = [torch.randn(n, rank, generator=gen) for n in shape]
    kernel = torch.zeros(shape)
    for r in range(rank):
        term = factors[0][:, r]
        for f in factors[1:]:
            term = torch.tensordot(term, f[:, r], dims=0)
        kernel += term
    return kernel


# (conv, input) pairs covering stride, padding (int, tuple, 'same', 'valid'), dilation and padding modes.
CONVS = {
    "conv1d-stride-pad-dil": (lambda: nn.Conv1d(5, 7, 3, stride=2, padding=2, dilation=2), (2, 5, 17)),
    "conv1d-same-replicate": (lambda: nn.Conv1d(4, 6, 4, padding="same", padding_mode="replicate"), (2, 4, 9)),
    "conv2d-stride-pad-dil": (lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1, dilation=2), (2, 6, 11, 9)),
    "conv2d-tuples-nobias": (
        lambda: nn.Conv2d(5, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), bias=False),
        (2, 5, 8, 7),
    ),
    "conv2d-same-reflect": (lambda: nn.Conv2d(4, 6, (3, 2), padding="same", padding_mode="reflect"), (2, 4, 7, 6)),
    "conv2d-valid-circular": (lambda: nn.Conv2d(3, 5, 3, padding="valid", padding_mode="circular"), (1, 3, 6, 6)),
    "conv2d-circular-pad": (lambda: nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular"), (1, 3, 6, 6)),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------------------------
# Exactness at full rank
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,bias", [((12, 7), True), ((5, 9), False)])
def test_svd_linear_full_rank_is_exact(shape, bias):
    lin = nn.Linear(*shape, bias=bias)
    x = torch.randn(3, 4, shape[0])
    seq, info = factorize(lin, "svd", min(shape))
    assert [type(m) for m in seq] == [nn.Linear, nn.Linear]
    assert seq[0].bias is None and (seq[1].bias is not None) == bias
    assert torch.allclose(seq(x), lin(x), atol=1e-5)
    assert info["ranks"] == [min(shape)] and not info["clamped"]
    assert info["energy"] == pytest.approx(1.0) and info["rel_error"] < 1e-6
    assert torch.allclose(svd_linear(lin, min(shape))(x), lin(x), atol=1e-5)


def test_svd_embedding_full_rank_is_exact():
    emb = nn.Embedding(20, 6, padding_idx=0)
    tokens = torch.randint(0, 20, (3, 5))
    seq, info = factorize(emb, "svd", 6)
    assert isinstance(seq[0], nn.Embedding) and isinstance(seq[1], nn.Linear) and seq[1].bias is None
    assert seq[0].padding_idx == 0
    assert torch.allclose(seq(tokens), emb(tokens), atol=1e-5)
    assert torch.allclose(svd_embedding(emb, 6)(tokens), emb(tokens), atol=1e-5)
    assert info["params_after"] == 6 * (20 + 6)


@pytest.mark.parametrize("key", list(CONVS))
def test_tucker2_full_ranks_is_exact(key):
    make, shape = CONVS[key]
    conv = make()
    x = torch.randn(shape)
    out_ch, in_ch = conv.weight.shape[:2]
    seq, info = factorize(conv, "tucker2", (in_ch, out_ch))
    assert len(seq) == 3 and seq[1].kernel_size == conv.kernel_size
    assert seq[1].padding_mode == conv.padding_mode
    assert torch.allclose(seq(x), conv(x), atol=1e-5)
    assert info["rel_error"] < 1e-6 and info["energy"] is None
    assert torch.allclose(tucker2_conv(conv, (in_ch, out_ch))(x), conv(x), atol=1e-5)


def test_tucker2_int_rank_above_channels_is_full_and_clamped():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    seq, info = factorize(conv, "tucker2", 100)
    assert info["ranks"] == [3, 8] and info["clamped"]
    assert torch.allclose(seq(x), conv(x), atol=1e-5)


@pytest.mark.parametrize("key", ["conv1d-stride-pad-dil", "conv2d-stride-pad-dil", "conv2d-same-reflect",
                                 "conv2d-circular-pad"])
def test_cp_exact_rank_kernel_is_recovered(key):
    make, shape = CONVS[key]
    conv = make()
    rank = 3
    with torch.no_grad():
        conv.weight.copy_(cp_kernel(tuple(conv.weight.shape), rank))
    x = torch.randn(shape)
    seq, info = factorize(conv, "cp", rank)
    spatial = conv.weight.dim() - 2
    assert len(seq) == 2 + spatial
    assert all(m.groups == rank for m in seq[1:-1])  # depthwise spatial factors
    ref = conv(x).detach()
    assert info["rel_error"] < 1e-5
    assert torch.allclose(seq(x), ref, atol=1e-4 * float(ref.abs().max()))
    low, low_info = factorize(conv, "cp", rank - 1)
    assert low_info["rel_error"] > 1e-3
    assert not torch.allclose(low(x), ref, atol=1e-4 * float(ref.abs().max()))


def test_cp_conv_function_matches_factorize():
    conv = nn.Conv2d(4, 5, 3, padding=1)
    seq, _ = factorize(conv, "cp", 4)
    direct = cp_conv(conv, 4)  # same defaults, same seed: identical factors
    x = torch.randn(1, 4, 5, 5)
    assert torch.allclose(seq(x), direct(x))


def test_zoo_resnet_tucker2_full_rank_keeps_outputs():
    model, x = zoo.example_inputs()["resnet"]
    model.eval()
    ref = model(x)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name, conv in convs:
        seq, _ = factorize(conv, "tucker2", 10_000, name=name)
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], seq)
    assert torch.allclose(model(x), ref, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# MACs and parameter counts
# ---------------------------------------------------------------------------------------------------------------


def test_svd_macs_and_params_drop():
    lin = nn.Linear(256, 128)
    x = torch.randn(4, 256)
    r = 16
    seq, info = factorize(lin, "svd", r)
    assert macs(lin, x) == 4 * 256 * 128
    assert macs(seq, x) == 4 * r * (256 + 128) < macs(lin, x)
    assert info["params_after"] == lowrank_params(lin, "svd", r) == weight_count(seq) == r * (256 + 128)
    assert info["params_before"] == 256 * 128
    assert info["bias_params"] == bias_count(seq) == 128


def test_tucker2_macs_and_params_drop():
    s, t, d, r3, r4 = 32, 48, 3, 6, 8
    conv = nn.Conv2d(s, t, d, padding=1)
    x = torch.randn(1, s, 8, 8)
    seq, info = factorize(conv, "tucker2", (r3, r4))
    assert info["ranks"] == [r3, r4]
    expected = s * r3 + d * d * r3 * r4 + t * r4
    assert info["params_after"] == lowrank_params(conv, "tucker2", (r3, r4)) == weight_count(seq) == expected
    assert bias_count(seq) == t
    area = 8 * 8
    assert macs(conv, x) == area * s * t * d * d
    assert macs(seq, x) == area * expected < macs(conv, x)  # stride 1, 'same'-sized output everywhere


def test_cp_macs_and_params_drop():
    s, t, d, r = 32, 48, 3, 8
    conv = nn.Conv2d(s, t, d, padding=1)
    with torch.no_grad():  # an exact rank-r kernel: ALS converges in a few iterations (the test is about sizes)
        conv.weight.copy_(cp_kernel((t, s, d, d), r))
    x = torch.randn(1, s, 8, 8)
    seq, info = factorize(conv, "cp", r)
    expected = r * (s + 2 * d + t)
    assert info["params_after"] == lowrank_params(conv, "cp", r) == weight_count(seq) == expected
    assert bias_count(seq) == t
    assert macs(seq, x) == 8 * 8 * expected < macs(conv, x)


def test_conv1d_cp_params_and_layout():
    conv = nn.Conv1d(10, 12, 5, padding=2)
    seq, info = factorize(conv, "cp", 4)
    assert [m.kernel_size for m in seq] == [(1,), (5,), (1,)]
    assert info["params_after"] == weight_count(seq) == 4 * (10 + 5 + 12)


# ---------------------------------------------------------------------------------------------------------------
# Rank resolution
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("method,make", [
    ("svd", lambda: nn.Linear(64, 48)),
    ("svd", lambda: nn.Embedding(100, 24)),
    ("cp", lambda: nn.Conv2d(16, 24, 3)),
    ("tucker2", lambda: nn.Conv2d(16, 24, 3)),
    ("tucker2", lambda: nn.Conv1d(8, 40, 5)),
])
def test_fraction_picks_largest_rank_within_budget(method, make, fraction):
    module = make()
    budget = fraction * module.weight.numel()
    ranks = choose_rank(module, method, fraction)
    _, info = factorize(module, method, fraction)
    assert info["ranks"] == ranks and not info["clamped"]
    smallest = [1, 1] if method == "tucker2" else [1]
    if lowrank_params(module, method, smallest) > budget:  # even rank 1 is over budget: rank 1 it is
        assert ranks == smallest
        return
    assert info["params_after"] <= budget
    if method == "tucker2":
        path = _tucker2_path(module.weight.shape[1], module.weight.shape[0])
        nxt = path[path.index(ranks) + 1:]
        assert not nxt or lowrank_params(module, method, nxt[-1]) > budget
        bigger = [p for p in nxt if p != ranks]
        assert not bigger or lowrank_params(module, method, bigger[0]) > budget
    else:
        top = choose_rank(module, method, 10**9)[0]
        assert ranks[0] == top or (ranks[0] + 1) * lowrank_params(module, method, 1) > budget


def test_svd_fraction_formula():
    lin = nn.Linear(64, 48)  # W is 48 x 64
    assert choose_rank(lin, "svd", 0.5) == [math.floor(0.5 * 48 * 64 / (48 + 64))]


def test_tiny_fraction_gives_rank_one():
    lin = nn.Linear(64, 48)
    assert choose_rank(lin, "svd", 1e-6) == [1]


def test_int_rank_clamps_and_says_so():
    lin = nn.Linear(10, 4)
    seq, info = factorize(lin, "svd", 99)
    assert info["ranks"] == [4] and info["clamped"]
    conv = nn.Conv2d(2, 3, 2)
    assert choose_rank(conv, "cp", 10**6) == [2 * 3 * 2 * 2 // 3]


def test_choose_rank_round_trips():
    conv = nn.Conv2d(16, 24, 3)
    ranks = choose_rank(conv, "tucker2", 0.3)
    assert choose_rank(conv, "tucker2", ranks) == ranks
    assert factorize(conv, "tucker2", ranks)[1]["ranks"] == ranks


def test_svd_info_energy_and_error():
    lin = nn.Linear(20, 16)
    seq, info = factorize(lin, "svd", 5)
    s = torch.linalg.svdvals(lin.weight.detach().double())
    assert info["energy"] == pytest.approx(float((s[:5] ** 2).sum() / (s ** 2).sum()))
    approx = (seq[1].weight @ seq[0].weight).detach().double()
    w = lin.weight.detach().double()
    actual = float((approx - w).norm() / w.norm())
    assert info["rel_error"] == pytest.approx(actual, rel=1e-4)
    assert info["rel_error"] == pytest.approx(math.sqrt(1 - info["energy"]), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Housekeeping: mode, dtype, gradients, RNG, zero weights, progress
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,make", [
    ("svd", lambda: nn.Linear(6, 5, dtype=torch.float64)),
    ("tucker2", lambda: nn.Conv2d(3, 4, 3, dtype=torch.float64)),
    ("cp", lambda: nn.Conv1d(3, 4, 3, dtype=torch.float64)),
])
@pytest.mark.parametrize("training", [True, False])
def test_mode_dtype_and_original_untouched(method, make, training):
    module = make().train(training)
    before = module.weight.detach().clone()
    rng = torch.get_rng_state()
    seq, _ = factorize(module, method, 2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training == training for m in seq.modules())
    assert all(p.dtype == torch.float64 and p.requires_grad for p in seq.parameters())
    assert torch.equal(module.weight, before)


@pytest.mark.parametrize("method,module", [
    ("svd", nn.Linear(6, 5)),
    ("tucker2", nn.Conv2d(3, 4, 3)),
    ("cp", nn.Conv2d(3, 4, 3)),
])
def test_zero_weight(method, module):
    with torch.no_grad():
        module.weight.zero_()
    seq, info = factorize(module, method, 2)
    x = torch.randn((2, 6) if method == "svd" else (1, 3, 5, 5))
    assert info["rel_error"] == 0.0
    assert torch.allclose(seq(x), module(x))


def test_progress_and_cancel():
    conv = nn.Conv2d(4, 6, 3)
    with torch.no_grad():
        conv.weight.copy_(cp_kernel((6, 4, 3, 3), 3))
    seen = []
    factorize(conv, "cp", 3, progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) > 2
    with pytest.raises(Cancelled):
        factorize(conv, "cp", 3, progress=lambda f, m: f < 0.01)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attr", ["dw", "grouped"])
@pytest.mark.parametrize("method", ["tucker2", "cp"])
def test_grouped_conv_is_refused(attr, method):
    conv = getattr(zoo.DepthwiseNet(), attr)
    with pytest.raises(CompressionError, match=r"Conv2d.*groups=") as err:
        factorize(conv, method, 2, name=attr)
    assert attr in str(err.value)


@pytest.mark.parametrize("method,module,hint", [
    ("svd", nn.Conv2d(3, 4, 3), "tucker2"),
    ("tucker2", nn.Linear(3, 4), "svd"),
    ("cp", nn.Embedding(10, 4), "svd"),
    ("svd", nn.Conv3d(2, 2, 3), "Conv3d"),
    ("tucker2", nn.LayerNorm(4), "LayerNorm"),
])
def test_wrong_method_or_layer_is_refused(method, module, hint):
    with pytest.raises(CompressionError, match=hint):
        factorize(module, method, 2)


def test_embedding_with_max_norm_is_refused():
    with pytest.raises(CompressionError, match="max_norm"):
        factorize(nn.Embedding(10, 4, max_norm=1.0), "svd", 2)


def test_non_finite_weight_is_refused():
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(CompressionError, match="NaN"):
        factorize(lin, "svd", 2)


@pytest.mark.parametrize("rank", [0, -3, 0.0, -0.5, 1.5, float("nan"), float("inf"), True, "4", (0, 2), (2, 2, 2),
                                  (1.5, 2), None])
def test_bad_rank_is_a_plan_error(rank):
    with pytest.raises(PlanError):
        factorize(nn.Conv2d(3, 4, 3), "tucker2", rank)


def test_pair_is_only_for_tucker2_and_unknown_method():
    with pytest.raises(PlanError, match="single int"):
        factorize(nn.Linear(4, 4), "svd", (2, 2))
    with pytest.raises(PlanError, match="unknown"):
        factorize(nn.Linear(4, 4), "wavelet", 2)
    with pytest.raises(PlanError):
        svd_linear(nn.Linear(4, 4), 0)
