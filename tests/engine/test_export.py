import os

import pytest
import torch
import zoo
from torch import nn

from explorer.engine import ExplorerError, Plan, compress, load_model
from explorer.engine.model import export as export_mod
from explorer.engine.model.export import export, export_onnx, export_state_dict, export_torchscript
from explorer.engine.samples import SAMPLES_DIR

# torch deprecates torch.jit.trace and the TorchScript-based ONNX exporter; the fallbacks under test use them
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

PLANS = {"structured": "digits-cnn.structured.plan.json", "element": "digits-cnn.plan.json"}
ATOL = 1e-5


@pytest.fixture(scope="module")
def digits():
    return load_model("digits-cnn")


@pytest.fixture(scope="module", params=list(PLANS))
def case(request, digits):
    """(compressed, fresh, inputs): the compressed sample, a second compression of it with its state zeroed
    (the architecture a user rebuilds before loading weights), and a batch of real digits."""
    plan = Plan.load(SAMPLES_DIR / PLANS[request.param])
    c = compress(digits.model, plan, digits.example_input)
    fresh = compress(digits.model, plan, digits.example_input).model
    return c, fresh, digits.eval_data.inputs[:16]


def zeroed(model):
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()
    return model


def outputs(model, x):
    with torch.no_grad():
        return model(x)


def no_leftovers(directory, keep=()):
    left = sorted(set(os.listdir(directory)) - set(keep))
    assert left == [], f"files left behind: {left}"


# ---------------------------------------------------------------------------------------------- state_dict


@pytest.mark.parametrize("ext", [".safetensors", ".pt", ".pth"])
def test_state_dict_reloads_into_fresh_compressed_model(case, tmp_path, ext):
    c, fresh, x = case
    path = tmp_path / f"w{ext}"
    n = export_state_dict(c, path)  # a Compressed stands for its model
    assert n == path.stat().st_size > 0
    if ext == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, weights_only=True)
        assert type(state) is dict and all(isinstance(v, torch.Tensor) for v in state.values())
    zeroed(fresh).load_state_dict(state, strict=True)
    assert torch.allclose(outputs(fresh, x), outputs(c.model, x), atol=ATOL)
    no_leftovers(tmp_path, keep=[path.name])


def test_tied_weights_safetensors_clones_and_records_pt_keeps_tie(tmp_path):
    torch.manual_seed(0)
    model = zoo.TinyTransformer().eval()
    model.head.weight = model.emb.weight  # tie: (vocab, dim) both
    x = torch.randint(0, 50, (2, 12))
    st = tmp_path / "tied.safetensors"
    export_state_dict(model, st)
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(st, "pt") as f:
        meta = f.metadata()
    assert meta["tied"] == '{"head.weight": "emb.weight"}'
    copy = zeroed(zoo.TinyTransformer().eval())
    copy.load_state_dict(load_file(st))
    assert torch.allclose(outputs(copy, x), outputs(model, x), atol=ATOL)

    pt = tmp_path / "tied.pt"
    export_state_dict(model, pt)
    state = torch.load(pt, weights_only=True)
    assert state["head.weight"].data_ptr() == state["emb.weight"].data_ptr()
    assert pt.stat().st_size < st.stat().st_size  # the tied tensor is stored once


def test_state_dict_rejects_non_tensor_state(tmp_path):
    class WithExtra(nn.Linear):
        def get_extra_state(self):
            return {"note": "hello"}

        def set_extra_state(self, state):
            pass

    with pytest.raises(ExplorerError, match=r"_extra_state' is a dict, not a tensor"):
        export_state_dict(WithExtra(2, 2), tmp_path / "x.pt")
    no_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------- TorchScript


def test_torchscript_scripts_compressed_model(case, digits, tmp_path):
    c, _, x = case
    path = tmp_path / "m.pt"
    info = export(c, digits.example_input, path, fmt="torchscript")
    assert info == {"format": "torchscript", "path": str(path), "bytes": path.stat().st_size, "method": "script"}
    loaded = torch.jit.load(str(path))
    assert torch.allclose(outputs(loaded, x), outputs(c.model, x), atol=ATOL)


class NeedsTrace(nn.Module):
    """numpy in forward: TorchScript cannot compile it, tracing records it as a constant."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        import numpy as np
        return self.fc(x) * float(np.sqrt(4.0))


class Hopeless(NeedsTrace):
    """Neither scriptable (numpy) nor traceable (returns a list of floats)."""

    def forward(self, x):
        return self.fc(x).detach().numpy().tolist()


def test_torchscript_falls_back_to_trace_and_saves_script_modules(tmp_path):
    torch.manual_seed(0)
    model, x = NeedsTrace().eval(), torch.randn(5, 4)
    info = export(model, x[:1], tmp_path / "t.pt", fmt="torchscript")
    assert info["method"] == "trace"
    assert torch.allclose(outputs(torch.jit.load(info["path"]), x), outputs(model, x), atol=ATOL)

    scripted = torch.jit.script(zoo.MLP().eval())
    info = export(scripted, None, tmp_path / "s.pt", fmt="torchscript")
    assert info["method"] == "scripted"
    y = torch.randn(3, 64)
    assert torch.allclose(outputs(torch.jit.load(info["path"]), y), outputs(scripted, y), atol=ATOL)


def test_torchscript_unscriptable_and_untraceable_raises_one_line(tmp_path):
    path = tmp_path / "h.pt"
    with pytest.raises(ExplorerError) as err:
        export_torchscript(Hopeless(), torch.randn(1, 4), path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("TorchScript export to")
    assert "torch.jit.script" in msg and "torch.jit.trace" in msg
    with pytest.raises(ExplorerError, match="no example input"):
        export_torchscript(Hopeless(), None, path)
    no_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------- ONNX


def run_onnx(path, x):
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    (name,) = [i.name for i in proto.graph.input]
    return proto, torch.from_numpy(ReferenceEvaluator(proto).run(None, {name: x.numpy()})[0])


def test_onnx_single_file_matches_compressed_model(case, digits, tmp_path):
    pytest.importorskip("onnx")
    c, _, _ = case
    x = digits.example_input  # the graph's shapes are the example input's
    path = tmp_path / "m.onnx"
    opset = 18 if c.model.conv2.out_channels == 50 else None  # one case with an explicit opset
    n = export_onnx(c, x, path, opset=opset)
    assert n == path.stat().st_size
    no_leftovers(tmp_path, keep=["m.onnx"])  # no external-data sidecar
    proto, y = run_onnx(path, x)
    if opset is not None:
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert torch.allclose(y, outputs(c.model, x), atol=ATOL)


def test_onnx_dispatch_by_extension_and_script_module_fallback(tmp_path):
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    scripted = torch.jit.script(zoo.SmallCNN().eval())
    x = torch.randn(2, 1, 8, 8)
    info = export(scripted, x, tmp_path / "s.onnx")
    assert info["format"] == "onnx" and info["method"] == "torchscript"  # torch.export cannot take a ScriptModule
    _, y = run_onnx(info["path"], x)
    assert torch.allclose(y, outputs(scripted, x), atol=ATOL)


def test_onnx_without_onnxscript_uses_torchscript_exporter(monkeypatch, tmp_path):
    pytest.importorskip("onnx")
    real = export_mod.importlib.util.find_spec
    monkeypatch.setattr(export_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    torch.manual_seed(0)
    model, x = zoo.MLP().eval(), torch.randn(3, 64)
    info = export(model, x, tmp_path / "m.onnx")
    assert info["method"] == "torchscript"
    _, y = run_onnx(info["path"], x)
    assert torch.allclose(y, outputs(model, x), atol=ATOL)


class Histogram(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.histc(self.fc(x), bins=4)


def test_onnx_unsupported_operator_raises_one_line_and_leaves_no_file(tmp_path):
    pytest.importorskip("onnx")
    path = tmp_path / "h.onnx"
    path.write_bytes(b"old")
    with pytest.raises(ExplorerError) as err:
        export(Histogram().eval(), torch.randn(2, 4), path)
    msg = str(err.value)
    assert "\n" not in msg and "\x1b" not in msg and msg.startswith("ONNX export to")
    assert "histc" in msg
    assert path.read_bytes() == b"old"
    no_leftovers(tmp_path, keep=["h.onnx"])


def test_onnx_needs_example_input(tmp_path):
    pytest.importorskip("onnx")
    with pytest.raises(ExplorerError, match="example input"):
        export_onnx(zoo.MLP(), None, tmp_path / "m.onnx")


# ---------------------------------------------------------------------------------------------- atomicity, errors


class _BreaksMidway:
    """A file that accepts some bytes, then fails like a full disk."""

    def __init__(self, fh, budget=64):
        self._fh, self._budget = fh, budget

    def write(self, data):
        data = bytes(data)
        if len(data) > self._budget:
            self._fh.write(data[: self._budget])
            self._budget = 0
            raise OSError(28, "No space left on device")
        self._budget -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)


@pytest.mark.parametrize("name, fmt", [("w.safetensors", None), ("w.pt", None), ("m.pt", "torchscript")])
def test_failed_write_leaves_no_file_and_keeps_old_one(monkeypatch, tmp_path, name, fmt):
    from contextlib import contextmanager

    real = export_mod.atomic_open

    @contextmanager
    def breaking_open(path, mode="wb"):
        with real(path, mode) as fh:
            yield _BreaksMidway(fh)

    monkeypatch.setattr(export_mod, "atomic_open", breaking_open)
    model, x = zoo.SmallCNN().eval(), torch.randn(1, 1, 8, 8)
    with pytest.raises(ExplorerError, match="No space left on device") as err:
        export(model, x, tmp_path / name, fmt=fmt)
    assert "\n" not in str(err.value)
    no_leftovers(tmp_path)

    (tmp_path / name).write_bytes(b"previous export")
    with pytest.raises(ExplorerError):
        export(model, x, tmp_path / name, fmt=fmt)
    assert (tmp_path / name).read_bytes() == b"previous export"
    no_leftovers(tmp_path, keep=[name])


def test_unknown_extension_and_format_are_clear_errors(tmp_path):
    model = zoo.MLP()
    with pytest.raises(ExplorerError, match=r"cannot tell the format from the extension '\.bin'"):
        export(model, None, tmp_path / "m.bin")
    with pytest.raises(ExplorerError, match="unknown format 'tflite'"):
        export(model, None, tmp_path / "m.pt", fmt="tflite")
    with pytest.raises(ExplorerError, match=r"unknown extension '\.npz'"):
        export_state_dict(model, tmp_path / "m.npz")
    with pytest.raises(ExplorerError, match="expected a torch.nn.Module"):
        export("not a model", None, tmp_path / "m.pt")
    no_leftovers(tmp_path)


def test_unwritable_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "w.safetensors"
    with pytest.raises(ExplorerError, match=r"^safetensors export to .*w\.safetensors failed: the directory "
                                            r".*dir does not exist$"):
        export(zoo.MLP(), None, missing)
    a_dir = tmp_path / "taken.pt"
    a_dir.mkdir()
    with pytest.raises(ExplorerError, match="^PyTorch state_dict export to .* failed: it is a directory$"):
        export(zoo.MLP(), None, a_dir)
    assert a_dir.is_dir() and os.listdir(a_dir) == []
    no_leftovers(tmp_path, keep=["taken.pt"])


def test_read_only_directory_is_a_clear_error(read_only_dir):
    with pytest.raises(ExplorerError, match="^ONNX export to .* failed: PermissionError: Permission denied$"):
        export_onnx(zoo.MLP(), torch.randn(1, 64), read_only_dir / "m.onnx")
    assert os.listdir(read_only_dir) == []


def test_explicit_format_overrides_unknown_extension_but_not_a_known_one(tmp_path):
    model = zoo.MLP().eval()
    info = export(model, None, tmp_path / "weights.bin", fmt="safetensors")
    assert (info["format"], info["method"]) == ("state_dict", "safetensors")
    from safetensors.torch import load_file
    assert set(load_file(info["path"])) == set(model.state_dict())
    info = export(model, None, tmp_path / "weights.ckpt", fmt="pt")
    assert info["method"] == "torch.save"
    assert set(torch.load(info["path"], weights_only=True)) == set(model.state_dict())
    for name, fmt in (("w.safetensors", "pt"), ("w.safetensors", "torchscript"), ("w.onnx", "state_dict"),
                      ("w.pt", "onnx"), ("w.pth", "safetensors")):
        with pytest.raises(ExplorerError, match="contradicts"):
            export(model, torch.randn(1, 64), tmp_path / name, fmt=fmt)
    with pytest.raises(ExplorerError, match="contradicts"):
        export_state_dict(model, tmp_path / "w.safetensors", container="pt")
    assert sorted(os.listdir(tmp_path)) == ["weights.bin", "weights.ckpt"]
