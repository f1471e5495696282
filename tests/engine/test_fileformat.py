"""The compressed file: round trips bit-identical, the preview predicts its size, writes are atomic."""

import json
import os
import subprocess
import sys

import pytest
import torch
import zoo

from explorer.engine import compress, load_model
from explorer.engine.errors import LoadError
from explorer.engine.plan import Plan
from explorer.engine.storage import fileformat as ff

P = {"amount": 0.7}
METHODS = {
    "dense": {},
    "prune": {"prune": P},
    "kmeans-linear": {"prune": P, "quantize": {"bits": 5, "method": "kmeans", "init": "linear"}},
    "kmeans-forgy-noprune": {"quantize": {"bits": 4, "method": "kmeans", "init": "forgy"}},
    "kmeans-density": {"prune": {"amount": 0.9}, "quantize": {"bits": 3, "method": "kmeans", "init": "density"}},
    "kmeans++-8bit": {"prune": P, "quantize": {"bits": 8, "method": "kmeans", "init": "kmeans++"}},
    "uniform-sym-tensor": {"prune": P, "quantize": {"bits": 6, "method": "uniform"}},
    "uniform-sym-channel": {"quantize": {"bits": 4, "method": "uniform", "per_channel": True}},
    "uniform-asym-channel": {"prune": P, "quantize": {"bits": 5, "method": "uniform", "symmetric": False,
                                                      "per_channel": True}},
    "uniform-asym-tensor": {"quantize": {"bits": 2, "method": "uniform", "symmetric": False}},
    "binary": {"quantize": {"method": "binary"}},
    "ternary-pruned": {"prune": P, "quantize": {"method": "ternary"}},
    "float16-pruned": {"prune": P, "quantize": {"method": "float16"}},
    "bfloat16": {"quantize": {"method": "bfloat16"}},
    "lowrank": {"lowrank": {"rank": 0.5}, "prune": {"amount": 0.3}, "quantize": {"bits": 6}},
}
STRUCTURED = {
    "digits-mlp": {"fc1": {"prune": {"amount": 0.5, "granularity": "filter"}},
                   "fc2": {"prune": {"amount": 10, "granularity": "filter"}, "lowrank": {"rank": 8}}},
    "digits-cnn": {"conv2": {"prune": {"amount": 0.5, "granularity": "filter", "criterion": "l2"},
                             "lowrank": {"rank": [6, 12], "method": "tucker2"}},
                   "conv1": {"lowrank": {"rank": 3, "method": "cp"}},
                   "fc2": {"prune": {"amount": 0.3, "granularity": "channel"}, "quantize": {"bits": 4}}},
}


def check_round_trip(loaded, plan, path):
    res = compress(loaded.model, plan, loaded.example_input)
    predicted = ff.predicted_bytes(res, loaded)
    written = ff.save(res, path, loaded)
    assert written == os.path.getsize(path)
    assert abs(written - predicted) <= 0.01 * written, (written, predicted)
    back = ff.load(path)
    want = res.model.state_dict()
    got = back.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
        if want[k].dtype == torch.float32:  # to the bit: a pruned weight is +0.0 in both (torch.equal: -0.0 == 0.0)
            assert torch.equal(got[k].view(torch.int32), want[k].view(torch.int32)), k
    x = loaded.eval_data.inputs[:64]
    assert torch.equal(back(x), res.model(x))
    return res, written


@pytest.mark.parametrize("sample", ["digits-mlp", "digits-cnn"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_round_trip_is_bit_identical_and_predicted(sample, method, tmp_path):
    loaded = load_model(sample)
    check_round_trip(loaded, Plan(default=METHODS[method]), tmp_path / "m.cexp")


@pytest.mark.parametrize("sample", sorted(STRUCTURED))
def test_structured_and_lowrank_round_trip(sample, tmp_path):
    loaded = load_model(sample)
    res, written = check_round_trip(loaded, Plan(layers=STRUCTURED[sample]), tmp_path / "s.cexp")
    assert res.macs_after < res.macs_before


def test_a_coupled_group_across_residual_adds_round_trips(tmp_path):
    """Filters removed from a ResNet's residual stream (the stem and the block output it is added to, with
    their BatchNorms and every reader) and from the second stage's stream: the file names every resized
    module and loads back into the same smaller model."""
    loaded = load_model("zoo:resnet_model")
    plan = Plan(layers={"layer1.conv2": {"prune": {"amount": 0.5, "granularity": "filter"},
                                         "quantize": {"bits": 4, "method": "kmeans"}},
                        "layer2.down.0": {"prune": {"amount": 0.25, "granularity": "filter", "criterion": "l2"}},
                        "layer2.conv1": {"prune": {"amount": 0.5, "granularity": "filter"}}})
    res = compress(loaded.model, plan, loaded.example_input)
    assert res.model.stem.out_channels == 8 and res.model.layer1.conv1.in_channels == 8
    assert res.model.layer2.conv2.out_channels == 24 and res.model.fc.in_features == 24
    predicted = ff.predicted_bytes(res, loaded)
    written = ff.save(res, tmp_path / "r.cexp", loaded)
    assert abs(written - predicted) <= 0.01 * written, (written, predicted)
    back = ff.load(tmp_path / "r.cexp", factory="zoo:resnet_model")
    want, got = res.model.state_dict(), back.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    x = torch.randn(4, *loaded.example_input.shape[1:])
    assert torch.equal(back(x), res.model(x))
    assert res.macs_after < res.macs_before / 2


@pytest.mark.parametrize("name", ["digits-mlp.plan.json", "digits-cnn.plan.json", "digits-cnn.structured.plan.json"])
def test_sample_plans_make_small_files(name, tmp_path):
    sample = "digits-cnn" if "cnn" in name else "digits-mlp"
    loaded = load_model(sample)
    res, written = check_round_trip(loaded, Plan.load(f"sample_models/{name}"), tmp_path / "f.cexp")
    assert written * 10 < res.bytes["dense"]


def test_torchscript_source_keeps_its_graph(tmp_path):
    model, x = zoo.SmallCNN().eval(), torch.randn(3, 1, 8, 8)
    torch.jit.save(torch.jit.script(model), tmp_path / "m.pt")
    loaded = load_model(str(tmp_path / "m.pt"))
    loaded.example_input = x
    res = compress(loaded.model, Plan(default={"prune": P, "quantize": {"bits": 4}}), x)
    written = ff.save(res, tmp_path / "m.cexp", loaded)
    assert written < os.path.getsize(tmp_path / "m.pt") / 3
    back = ff.load(tmp_path / "m.cexp")
    assert torch.equal(back(x), res.model(x))


def test_trusted_pickle_is_stored_as_a_scripted_graph(tmp_path):
    model, x = zoo.MLP().eval(), torch.randn(2, 64)
    torch.save(model, tmp_path / "whole.pt")
    loaded = load_model(str(tmp_path / "whole.pt"), trust=True)
    res = compress(loaded.model, Plan(default={"quantize": {"bits": 3}}), x)
    ff.save(res, tmp_path / "w.cexp", loaded)
    assert torch.equal(ff.load(tmp_path / "w.cexp")(x), res.model(x))



class _ScriptedNet(torch.nn.Module):  # a class of its own: no other test scripts it
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(64, 200), torch.nn.Linear(200, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_a_scripted_architecture_has_one_archive_per_process(tmp_path):
    """An eager model without a factory is stored as its scripted graph. Scripting the same class again
    after other shapes of it were scripted names it anew (torch's ___torch_mangle_N), which changed the
    archive, and the file, by a byte: the size predicted before must still be the size written."""
    from explorer.engine.model.loading import LoadedModel

    loaded = LoadedModel(_ScriptedNet().eval(), torch.randn(2, 64), None, source="net")
    plan = Plan.from_dict({"version": 1, "layers": {"fc1": {"prune": {"amount": 0.6}, "quantize": {"bits": 5}}}})
    sizes = set()
    for i in range(4):
        res = compress(loaded.model, plan, loaded.example_input)
        predicted = ff.predicted_bytes(res, loaded)
        # meanwhile the user tries filter pruning: other shapes of the same class are scripted
        other = Plan.from_dict({"version": 1, "layers": {"fc1": {"prune": {"amount": 0.1 + 0.1 * i,
                                                                             "granularity": "filter"}}}})
        ff.predicted_bytes(compress(loaded.model, other, loaded.example_input), loaded)
        written = ff.save(res, tmp_path / "n.cexp", loaded)
        assert written == predicted == os.path.getsize(tmp_path / "n.cexp")
        sizes.add(written)
        assert torch.equal(ff.load(tmp_path / "n.cexp")(loaded.example_input), res.model(loaded.example_input))
    assert len(sizes) == 1

def test_user_factory_must_be_confirmed(tmp_path):
    import zoo as _  # noqa: F401  (importable: tests/ is on sys.path)

    model = zoo.SmallCNN().eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model(str(tmp_path / "w.pt"), factory="zoo:SmallCNN")
    loaded.example_input = torch.randn(1, 1, 8, 8)
    res = compress(loaded.model, Plan(default={"quantize": {"bits": 4}}), loaded.example_input)
    ff.save(res, tmp_path / "u.cexp", loaded)
    with pytest.raises(LoadError, match="--factory zoo:SmallCNN"):
        ff.load(tmp_path / "u.cexp")
    with pytest.raises(LoadError, match="not 'zoo:MLP'"):
        ff.load(tmp_path / "u.cexp", factory="zoo:MLP")
    back = ff.load(tmp_path / "u.cexp", factory="zoo:SmallCNN")
    assert torch.equal(back(loaded.example_input), res.model(loaded.example_input))


def test_half_precision_for_other_tensors(tmp_path):
    loaded = load_model("digits-mlp")
    res = compress(loaded.model, Plan(default={"quantize": {"bits": 4}}), loaded.example_input)
    full = ff.save(res, tmp_path / "a.cexp", loaded)
    half = ff.save(res, tmp_path / "b.cexp", loaded, half=True)
    assert half == ff.predicted_bytes(res, loaded, half=True) and half < full
    back = ff.load(tmp_path / "b.cexp")
    torch.testing.assert_close(back.fc1.bias, res.model.fc1.bias, atol=1e-3, rtol=1e-3)
    assert torch.equal(back.fc1.weight, res.model.fc1.weight)  # weights are exact either way


def test_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    loaded = load_model("digits-mlp")
    res = compress(loaded.model, Plan(default={"quantize": {"bits": 4}}), loaded.example_input)
    target = tmp_path / "m.cexp"
    target.write_bytes(b"previous content")
    real_encode = ff.encode

    def half_then_fail(*a, **k):
        data = real_encode(*a, **k)
        raise OSError("disk full")  # noqa: the write never completes

    class Boom(Exception):
        pass

    import explorer.engine.storage.atomic as atomic

    real_fdopen = os.fdopen

    def exploding_fdopen(fd, mode="r", *args, **kw):
        fh = real_fdopen(fd, mode, *args, **kw)
        real_write = fh.write

        def write(data):
            real_write(data[: len(data) // 2])
            raise Boom("interrupted midway")

        fh.write = write
        return fh

    monkeypatch.setattr(atomic.os, "fdopen", exploding_fdopen)
    with pytest.raises(Boom):
        ff.save(res, target, loaded)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cexp"]  # no temporary file left


def test_tied_weights_round_trip(tmp_path):
    from test_compress import Tied

    model, x = Tied().eval(), torch.randint(0, 20, (2, 5))
    script = torch.jit.script(model)
    torch.jit.save(script, tmp_path / "t.pt")
    loaded = load_model(str(tmp_path / "t.pt"))
    res = compress(loaded.model, Plan(layers={"emb": {"prune": P, "quantize": {"bits": 3}}}), x)
    ff.save(res, tmp_path / "t.cexp", loaded)
    back = ff.load(tmp_path / "t.cexp")
    assert torch.equal(back(x), res.model(x))


def run_cli(*args):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.path.join(root, "tests")]))
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, text=True, cwd=root,
                          env=env, timeout=300)


def test_cli_compress_info_evaluate(tmp_path):
    out = run_cli("compress", "digits-mlp", "--plan", "sample_models/digits-mlp.plan.json", "-o",
                  str(tmp_path / "m.cexp"), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["file_bytes"] == os.path.getsize(tmp_path / "m.cexp")
    assert abs(data["predicted_bytes"] - data["file_bytes"]) <= 0.01 * data["file_bytes"]
    info = run_cli("info", str(tmp_path / "m.cexp"), "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["file_bytes"] == data["file_bytes"]
    ev = run_cli("evaluate", str(tmp_path / "m.cexp"), "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["accuracy"]["value"] > 0.9
    raw = (tmp_path / "m.cexp").read_bytes()
    (tmp_path / "bad.cexp").write_bytes(raw[:-10])
    bad = run_cli("info", str(tmp_path / "bad.cexp"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "bad.cexp" in bad.stderr


def reseal(raw: bytes, edit) -> bytes:
    """Apply ``edit(manifest)`` to a file's manifest and fix the checksums, as an attacker would."""
    import zlib

    magic, major, minor, n, tcrc, mlen, mcrc = ff.HEADER.unpack_from(raw, 0)
    start = ff.HEADER.size + ff.TABLE_ENTRY.size * n
    manifest = json.loads(zlib.decompress(raw[start:start + mlen]))
    edit(manifest)
    body = zlib.compress(json.dumps(manifest).encode())
    head = ff.HEADER.pack(magic, major, minor, n, tcrc, len(body), zlib.crc32(body))
    return head + raw[ff.HEADER.size:start] + body + raw[start + mlen:]


@pytest.mark.parametrize("ref, kwargs", [
    ("explorer.engine.samples:torch.fx.graph_module._exec_with_source", {"src": "open(MARKER,'w')", "globals": {}}),
    ("os:system", {"command": "touch MARKER"}),
    ("builtins:exec", {"source": "open(MARKER,'w')"}),
    ("explorer.engine.samples:digits_mlp", {"x": 1}),
])
def test_a_file_cannot_make_the_reader_run_code(ref, kwargs, tmp_path):
    marker = str(tmp_path / "pwned")
    kwargs = {k: (v.replace("MARKER", repr(marker)) if isinstance(v, str) else v) for k, v in kwargs.items()}
    loaded = load_model("digits-mlp")
    res = compress(loaded.model, Plan(default={"quantize": {"bits": 4}}), loaded.example_input)
    raw = ff.encode(res, loaded)

    def edit(m):
        m["architecture"].update(factory=ref, kwargs=kwargs)

    (tmp_path / "evil.cexp").write_bytes(reseal(raw, edit))
    with pytest.raises(LoadError):
        load_model(str(tmp_path / "evil.cexp"))
    assert not os.path.exists(marker)


def test_cli_export_standard_formats(tmp_path):
    for name in ("dense.safetensors", "model.onnx", "scripted.pt"):
        args = ["export", "digits-cnn", "--plan", "sample_models/digits-cnn.structured.plan.json", "-o",
                str(tmp_path / name), "--json"]
        if name.endswith(".pt"):
            args += ["--format", "torchscript"]
        out = run_cli(*args)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["bytes"] == os.path.getsize(tmp_path / name) > 0
    scripted = torch.jit.load(str(tmp_path / "scripted.pt"))
    loaded = load_model("digits-cnn")
    res = compress(loaded.model, Plan.load("sample_models/digits-cnn.structured.plan.json"), loaded.example_input)
    x = loaded.eval_data.inputs[:16]
    torch.testing.assert_close(scripted(x), res.model(x))


def test_predicted_bytes_follow_a_model_whose_tensors_change():
    # a dry run reuses the model's state layout; a replaced tensor (another dtype, another shape) is seen
    loaded = load_model("digits-mlp")
    plan = Plan.from_dict({"version": 1, "default": {"prune": {"amount": 0.5}, "quantize": {"bits": 4}}})
    result = compress(loaded.model, plan, loaded.example_input)
    assert ff.predicted_bytes(result, loaded) == len(ff.encode(result, loaded))
    assert ff.predicted_bytes(result, loaded, half=True) == len(ff.encode(result, loaded, half=True))
    result.model.fc2.bias = torch.nn.Parameter(result.model.fc2.bias.detach().double())
    assert ff.predicted_bytes(result, loaded) == len(ff.encode(result, loaded))
    result.model.register_buffer("extra", torch.zeros(123))
    assert ff.predicted_bytes(result, loaded) == len(ff.encode(result, loaded))
