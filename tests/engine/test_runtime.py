"""The compressed runtime (issue 19): layers computing on their stored form give the dense decode's outputs;
the measured crossover keeps a layer dense where the dense layer is faster; the memory it holds shrinks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from explorer.engine import runtime
from explorer.engine.compress import compress
from explorer.engine.inspect import inspect_model
from explorer.engine.measure.metrics import resident_bytes
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan
from explorer.engine.runtime import CompressedLinear, candidates, compressed_runtime
from explorer.engine.storage import fileformat
from explorer.engine.storage.fileformat.decode import weight_parts
from explorer.engine.storage.fileformat.reader import read

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE_PLANS = sorted(f for f in os.listdir(os.path.join(ROOT, "sample_models")) if f.endswith(".plan.json"))
# its compressed layers are tensor-train cores and circulant blocks, which run as themselves (the runtime's kernels
# are a Linear's and a 1x1 convolution's): tested below to run the same with nothing chosen
STRUCTURED_MATRICES = "digits-cnn.tt-circulant.plan.json"


def _parts(path) -> dict:
    mf = read(path)
    return {e["name"]: weight_parts(mf, e) for e in mf.manifest["tensors"]
            if "alias" not in e and e["encoding"]["storage"] != "raw"}


def _each_form_equals_the_dense_decode(model, parts, x_of):
    """Every candidate form of every Linear / 1x1 conv the file compresses, against the dense module."""
    seen = 0
    for name, module in model.named_modules():
        if not runtime._applies(module) or f"{name}.weight" not in parts:
            continue
        conv = isinstance(module, nn.Conv2d)
        rows, cols = (module.out_channels, module.in_channels) if conv else (module.out_features, module.in_features)
        for kernel, arrays in candidates(parts[f"{name}.weight"], rows, cols).items():
            ours = CompressedLinear(kernel, cols, rows, arrays, module.bias, conv=conv)
            for batch in (1, 5):
                x = x_of(module, batch)
                with torch.no_grad():
                    torch.testing.assert_close(ours(x), module(x), rtol=1e-5, atol=1e-5)
            seen += 1
    return seen


def _x_of(module, batch):
    g = torch.Generator().manual_seed(batch)
    if isinstance(module, nn.Conv2d):
        return torch.randn(batch, module.in_channels, 3, 2, generator=g)
    return torch.randn(batch, 2, module.in_features, generator=g)  # leading dims kept


def test_structured_matrix_layers_run_as_themselves_under_the_compressed_runtime(tmp_path):
    loaded = load_model("digits-cnn")
    res = compress(loaded.model, Plan.load(os.path.join(ROOT, "sample_models", STRUCTURED_MATRICES)),
                   loaded.example_input)
    path = tmp_path / "m.cexp"
    fileformat.save(res, path, loaded)
    dense, ours = fileformat.load(path), fileformat.load(path, runtime="compressed")
    x = loaded.eval_data.inputs[:16]
    with torch.no_grad():
        assert torch.equal(ours(x), dense(x))
    assert {d.layer for d in ours.compressed_runtime if d.chosen != "dense"} <= {"conv1", "conv2"}


@pytest.mark.parametrize("plan_file", [p for p in SAMPLE_PLANS if p != STRUCTURED_MATRICES])
def test_every_form_of_every_sample_plan_computes_the_dense_decode(plan_file, tmp_path):
    sample = plan_file.split(".")[0]
    loaded = load_model(sample)
    res = compress(loaded.model, Plan.load(os.path.join(ROOT, "sample_models", plan_file)), loaded.example_input)
    path = tmp_path / "m.cexp"
    fileformat.save(res, path, loaded)
    dense = fileformat.load(path)
    assert _each_form_equals_the_dense_decode(dense, _parts(path), _x_of) >= 1
    ours = fileformat.load(path, runtime="compressed")  # whatever the crossover chose: the same outputs
    x = loaded.eval_data.inputs[:16]
    with torch.no_grad():
        torch.testing.assert_close(ours(x), dense(x), rtol=1e-5, atol=1e-5)
    layers = {d.layer for d in ours.compressed_runtime}  # fc1, or its low-rank factors fc1.0 / fc1.1
    assert "fc2" in layers and len(layers) >= 2


def _saved(factory: str, plan, path):
    loaded = load_model(f"zoo:{factory}")
    fileformat.save(compress(loaded.model, plan(loaded) if callable(plan) else plan, loaded.example_input), path,
                    loaded)
    return loaded


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "transformer", "unet", "mobilenetv2", "lstm", "mixed"])
def test_the_zoo_under_the_compressed_runtime_equals_its_dense_decode(name, tmp_path, monkeypatch):
    path = tmp_path / "z.cexp"
    loaded = _saved(f"{name}_model", lambda lm: zoo.mixed_plan(inspect_model(lm.model, lm.example_input)), path)
    factory = f"zoo:{name}_model"
    dense = fileformat.load(path, factory=factory)
    assert _each_form_equals_the_dense_decode(dense, _parts(path), _x_of) >= 1
    # every layer that can, replaced (each form measured faster than dense): the whole model's outputs agree
    monkeypatch.setattr(runtime, "_time", lambda module, x: 0.1 if isinstance(module, CompressedLinear) else 1.0)
    ours = fileformat.load(path, factory=factory, runtime="compressed")
    assert any(isinstance(m, CompressedLinear) for m in ours.modules())
    x = loaded.example_input
    with torch.no_grad():
        torch.testing.assert_close(ours(x), dense(x), rtol=1e-5, atol=1e-5)


PRUNED = Plan.from_dict({"version": 1, "layers": {"0": {"prune": {"amount": 0.9},
                                                         "quantize": {"method": "kmeans", "bits": 5}}}})


def test_a_layer_the_crossover_rejects_stays_dense(tmp_path, monkeypatch):
    path = tmp_path / "p.cexp"
    _saved("sparse_mlp_model", PRUNED, path)
    load = lambda **kw: fileformat.load(path, factory="zoo:sparse_mlp_model", runtime="compressed", **kw)  # noqa
    # the dense layer measured faster than every form: kept, the very module
    monkeypatch.setattr(runtime, "_time", lambda module, x: 1.0 if isinstance(module, CompressedLinear) else 0.5)
    back = load()
    assert type(back[0]) is nn.Linear
    (d,) = [d for d in back.compressed_runtime if d.layer == "0"]
    assert d.chosen == "dense" and set(d.times) == {"dense", "torch-csr", "csr", "csr-codes"}  # sparse forms only
    # a form within the margin of dense (not clearly faster) is rejected too
    monkeypatch.setattr(runtime, "_time", lambda module, x: 0.95 if isinstance(module, CompressedLinear) else 1.0)
    assert type(load()[0]) is nn.Linear
    # faster: replaced, by the fastest
    times = {"torch-csr": 0.4, "csr": 0.3, "csr-codes": 0.2}
    monkeypatch.setattr(runtime, "_time",
                        lambda module, x: times[module.kernel] if isinstance(module, CompressedLinear) else 1.0)
    back = load()
    assert isinstance(back[0], CompressedLinear) and back[0].kernel == "csr-codes"


def test_preferring_memory_takes_the_smallest_form_and_the_resident_memory_shrinks(tmp_path):
    path = tmp_path / "m.cexp"
    loaded = _saved("sparse_mlp_model", PRUNED, path)
    dense = fileformat.load(path, factory="zoo:sparse_mlp_model")
    ours = fileformat.load(path, factory="zoo:sparse_mlp_model", runtime="compressed", prefer="memory")
    assert isinstance(ours[0], CompressedLinear) and ours[0].kernel == "csr-codes"  # uint16 index + uint8 code
    nnz = int(ours[0].indices.numel())
    assert nnz <= 0.1 * 256 * 512 + 1
    # the 512 KB weight -> 3 bytes a survivor, the row starts (int32) and the 32-entry codebook
    assert resident_bytes(dense) - resident_bytes(ours) == 256 * 512 * 4 - (nnz * 3 + 257 * 4 + 32 * 4)
    x = loaded.example_input
    with torch.no_grad():
        torch.testing.assert_close(ours(x), dense(x), rtol=1e-5, atol=1e-5)


def test_a_shared_weight_and_a_strided_conv_are_left_as_they_are():
    tied = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    tied[1].weight = tied[0].weight
    strided = nn.Conv2d(8, 8, 1, stride=2)
    parts = {"0.weight": object(), "1.weight": object()}
    assert compressed_runtime(tied, parts) == []
    assert not runtime._applies(strided) and runtime._applies(nn.Conv2d(8, 8, 1))
    with pytest.raises(ValueError, match="prefer"):
        compressed_runtime(tied, parts, prefer="fast")
    with pytest.raises(ValueError, match="kernel"):
        CompressedLinear("blas", 2, 2, {})


def test_the_cli_evaluates_and_benches_the_compressed_runtime(tmp_path):
    path = tmp_path / "b.cexp"
    sample = load_model("digits-mlp")
    fileformat.save(compress(sample.model, Plan.load(os.path.join(ROOT, "sample_models", "digits-mlp.plan.json")),
                             sample.example_input), path, sample)
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = lambda *a: subprocess.run([sys.executable, "-m", "explorer", *a], capture_output=True, text=True,  # noqa
                                    env=env, cwd=ROOT, timeout=300)
    out = run("evaluate", str(path), "--runtime", "compressed", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["runtime"] == "compressed" and r["resident_bytes"] <= r["dense_resident_bytes"]
    assert {d["layer"] for d in r["layers"]} == {"fc1", "fc2", "fc3"} and r["accuracy"]["value"] > 0.9
    out = run("bench", str(path), "--batch", "1", "4", "--threads", "1", "--json")
    assert out.returncode == 0, out.stderr
    b = json.loads(out.stdout)
    assert [(row["runtime"], row["batch"]) for row in b["rows"]] == [("dense", 1), ("compressed", 1),
                                                                     ("dense", 4), ("compressed", 4)]
    assert b["max_abs_diff"] < 1e-4
    bad = run("evaluate", "digits-mlp", "--runtime", "compressed")
    assert bad.returncode == 2 and "--runtime compressed runs a .cexp file" in bad.stderr


class _ReadsWeight(nn.Module):
    """A parent that reads its child's weight instead of calling it (as MultiheadAttention does out_proj)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return x @ self.fc.weight.t()


def test_a_layer_whose_parent_reads_its_weight_is_put_back(monkeypatch):
    from explorer.engine.storage.fileformat.decode import WeightParts

    model = _ReadsWeight()
    w = model.fc.weight.detach().numpy().astype("float64").reshape(-1)
    parts = {"fc.weight": WeightParts((8, 16), np.arange(0, 128, 2), w[::2])}
    monkeypatch.setattr(runtime, "_time", lambda module, x: 0.1 if isinstance(module, CompressedLinear) else 1.0)
    (d,) = compressed_runtime(model, parts, example_input=torch.randn(1, 16))
    assert type(model.fc) is nn.Linear and d.chosen == "dense" and "does not run" in d.note
    assert not runtime._applies(nn.MultiheadAttention(8, 2).out_proj, nn.MultiheadAttention(8, 2))


def test_an_unpruned_shared_weight_layer_runs_on_its_dense_matrix_of_codes():
    from explorer.engine.storage.fileformat.decode import WeightParts

    g = torch.Generator().manual_seed(3)
    book = np.linspace(-0.5, 0.5, 16)
    codes = torch.randint(0, 16, (24 * 40,), generator=g).numpy().astype(np.uint8)
    parts = WeightParts((24, 40), None, book[codes], codes, book)
    forms = candidates(parts, 24, 40)
    assert set(forms) == {"codes"} and forms["codes"]["codes"].shape == (24, 40)  # nothing pruned: no sparse rows
    dense = nn.Linear(40, 24)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(book[codes].reshape(24, 40)))
    ours = CompressedLinear("codes", 40, 24, forms["codes"], dense.bias)
    for batch in (1, 3):
        x = torch.randn(batch, 40, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), dense(x), rtol=1e-5, atol=1e-5)
    assert sum(b.numel() * b.element_size() for b in ours.buffers()) < dense.weight.numel() * 4 / 3


def test_info_says_what_the_dense_decode_holds(tmp_path):
    """``info`` (no torch) gives the loaded model's resident bytes from the manifest alone: those the load holds."""
    from explorer.engine.storage.fileformat.manifest import DTYPE_BYTES, DTYPE_NAMES
    from explorer.engine.storage.fileformat.reader import summary

    assert set(DTYPE_BYTES) == set(DTYPE_NAMES)
    for dtype, n in DTYPE_BYTES.items():
        assert torch.empty(0, dtype=getattr(torch, dtype)).element_size() == n
    for plan_file in ("digits-cnn.plan.json", "digits-cnn.structured.plan.json", "digits-mlp.plan.json"):
        sample = plan_file.split(".")[0]
        loaded = load_model(sample)
        path = tmp_path / plan_file.replace(".plan.json", ".cexp")
        res = compress(loaded.model, Plan.load(os.path.join(ROOT, "sample_models", plan_file)), loaded.example_input)
        fileformat.save(res, path, loaded)
        assert summary(read(path))["dense_resident_bytes"] == resident_bytes(fileformat.load(path))
