"""Half precision as quantization methods (issue 20): float16 and bfloat16 store each surviving weight's
16-bit pattern, decode to exactly what torch's casts give, refuse a weight beyond the format's range, count
16 bits a survivor before entropy coding, and are named by the plan, the file's schema and the CLI's help."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.cli import main
from explorer.engine import compress, load_model
from explorer.engine.errors import CompressionError, PlanError
from explorer.engine.methods.prune import magnitude_mask
from explorer.engine.methods.quantize import quantize_half, quantize_tensor
from explorer.engine.methods.quantizers import QUANTIZERS
from explorer.engine.plan import Plan, QuantSettings
from explorer.engine.storage import fileformat as ff
from explorer.engine.storage.coders import stream_bits

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_codes_are_the_bit_patterns_and_decode_as_torch_casts(name):
    w = torch.randn(64, 33, generator=torch.Generator().manual_seed(1)) * 3
    keep = magnitude_mask(w, 0.4)
    q = quantize_tensor(w, QuantSettings(method=name), keep)
    cast = w.to(DTYPES[name])
    flat = cast.reshape(-1)
    want = flat.view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    assert q.bits == 16 and q.alphabet_size == 1 << 16 and q.zero_code == 0 and q.side_bits == 0
    assert np.array_equal(q.codes[keep], want[keep]) and np.all(q.codes[~keep] == 0)
    expected = torch.where(torch.from_numpy(keep.reshape(w.shape)), cast.float(), torch.zeros(()))
    assert torch.equal(q.decoded, expected) and q.decoded.dtype == torch.float32
    err = (w - expected)[torch.from_numpy(keep.reshape(w.shape))]
    assert q.rel_error == pytest.approx(float(err.norm() / w[torch.from_numpy(keep.reshape(w.shape))].norm()))
    assert 0 < q.rel_error < (1e-3 if name == "float16" else 1e-2)


def test_a_weight_beyond_float16s_range_is_refused_and_bfloat16_takes_it():
    w = torch.tensor([1.0, -70000.0, 3.0])
    with pytest.raises(CompressionError, match="cannot store in float16: a weight of magnitude 70000"):
        quantize_half(w, None, "float16")
    assert quantize_half(w, None, "bfloat16").decoded[1] == -70144.0  # its nearest bfloat16
    assert quantize_half(w, np.array([True, False, True]), "float16").decoded[1] == 0.0  # pruned: not stored


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_sizes_count_16_bits_a_survivor_and_the_file_holds_them(name, tmp_path):
    loaded = load_model("digits-mlp")
    plan = Plan.from_dict({"version": 1, "default": {"prune": {"amount": 0.5}, "quantize": {"method": name}}})
    res = compress(loaded.model, plan, loaded.example_input)
    for layer in res.layers.values():
        for t in layer.tensors:
            quantized = t.sizes.stages["quantized"]
            if quantized["format"] != "bitmask":  # gaps + 16-bit values, or dense 16-bit codes
                assert quantized["value_bits"] == 16
            assert t.sizes.stages["coded"]["bits"] <= quantized["bits"]
    path = tmp_path / "h.cexp"
    assert ff.save(res, path, loaded) == ff.predicted_bytes(res, loaded) == path.stat().st_size
    back = ff.load(path)
    for k, v in res.model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert path.read_bytes() == (ff.save(res, tmp_path / "again.cexp", loaded) and
                                 (tmp_path / "again.cexp").read_bytes())  # the same bytes each time


def test_a_16_bit_alphabet_is_never_given_to_rans():
    counts = np.zeros(1 << 16, np.int64)
    counts[[0, 5, 40000]] = [100, 3, 1]
    sb = stream_bits(counts, 1 << 16, 16, counts=True)
    assert [name for name, _, _ in sb.costs] == ["huffman"]  # rANS codes at most 2^15 symbols


def test_the_plan_the_schema_and_the_help_name_them(capsys):
    for name in DTYPES:
        assert name in QUANTIZERS and QUANTIZERS[name].code_bits == 16 and QUANTIZERS[name].fields == ()
        plan = Plan.from_dict({"version": 1, "default": {"quantize": {"method": name}}})
        assert plan.settings_for("x").describe() == name
    with pytest.raises(PlanError, match="method"):
        Plan.from_dict({"version": 1, "default": {"quantize": {"method": "float17"}}})
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "float16    half precision" in out and "bfloat16   brain float" in out


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_a_weight_that_rounds_to_minus_zero_is_stored_plus_zero(name):
    w = torch.tensor([-1e-41, 1e-41, -1e-30, 0.5])  # below both formats' smallest subnormal: rounds to -0.0 / +0.0
    q = quantize_half(w, None, name)
    assert q.codes[0] == q.codes[1] == 0  # not 0x8000: the file decodes what the model runs with, to the bit
    assert torch.equal(q.decoded.view(torch.int32)[:2], torch.zeros(2, dtype=torch.int32))


def test_fine_tuning_trains_half_precision_weights_on_their_format(tmp_path):
    from explorer.engine.finetune.data import load_train_data
    from explorer.engine.finetune.recipe import check_recipe
    from explorer.engine.finetune.trainer import finetune
    from explorer.engine.measure.metrics import accuracy

    loaded = load_model("digits-mlp")
    plan = Plan.from_dict({"version": 1, "default": {"prune": {"amount": 0.9}, "quantize": {"method": "float16"}}})
    before = compress(loaded.model, plan, loaded.example_input)
    res = finetune(loaded, plan, load_train_data("digits"), recipe=check_recipe({"epochs": 3, "lr": 0.003}))
    tuned = res.compressed
    for name in ("fc1", "fc2"):
        w, w0 = getattr(tuned.model, name).weight.detach(), getattr(before.model, name).weight.detach()
        assert torch.equal(w, w.half().float())  # on the format
        assert torch.equal(w == 0, w0 == 0)  # the mask kept
        assert not torch.equal(w, w0)  # trained
        t = tuned.layers[name].tensors[0]
        assert t.quant.method == "float16" and t.quant.info["trained"] and torch.equal(t.quant.decoded, w)
    assert accuracy(tuned.model, loaded.eval_data) > accuracy(before.model, loaded.eval_data)
    path = tmp_path / "ft.cexp"
    assert ff.save(tuned, path, loaded) == ff.predicted_bytes(tuned, loaded)
    back = ff.load(path)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in tuned.model.state_dict().items())
