"""Opening what people have (issue 16): a Hugging Face folder, an ONNX file, a torchvision factory with a weights
file; each through the CLI as a user types it, compressed, and the compressed file loaded back."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
import zoo

from explorer.cli import main as cli_main
from explorer.engine.errors import LoadError, TrustRequired
from explorer.engine.model.loading import load_model
from explorer.engine.storage import fileformat

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PLAN = {"format": "compression-explorer-plan", "version": 1,
        "default": {"prune": {"amount": 0.5, "granularity": "element", "criterion": "l1"},
                    "quantize": {"bits": 4, "method": "kmeans", "init": "linear", "max_iter": 20}}}


@pytest.fixture
def plan_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(PLAN))
    return str(path)


def _cli(capsys, *args):
    code = cli_main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    return zoo.tiny_bert_folder(tmp_path_factory.mktemp("bert"))


def test_hf_folder_inspect_compress_and_load_back(bert_folder, plan_file, tmp_path, capsys):
    code, out, err = _cli(capsys, "inspect", bert_folder)
    assert code == 0, err
    assert "(hf), example input (1, 16)" in out and "model.classifier" in out and "Linear" in out
    cexp = tmp_path / "bert.cexp"
    code, out, err = _cli(capsys, "compress", bert_folder, "--plan", plan_file, "-o", cexp)
    assert code == 0, err
    loaded = load_model(str(bert_folder))
    assert loaded.kind == "hf" and loaded.example_input.dtype == torch.int64
    back = load_model(str(cexp))  # no --factory: the stored config is rebuilt by transformers, no user code
    assert back.kind == "compressed" and back.factory == "explorer.engine.model.hf:rebuild"
    from explorer.engine.compress import compress
    from explorer.engine.plan import Plan

    ours = compress(loaded.model, Plan.from_dict(PLAN), loaded.example_input).model
    x = loaded.example_input
    with torch.no_grad():
        assert back.model(x).shape == (1, 3)
        assert torch.equal(back.model(x), ours(x))
    manifest = fileformat.read(str(cexp)).manifest
    assert manifest["architecture"]["kwargs"]["config"]["model_type"] == "bert"
    assert manifest["architecture"]["kwargs"]["auto_class"] == "AutoModelForSequenceClassification"


def test_hf_folder_bad_inputs_get_one_clear_message(bert_folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _cli(capsys, "inspect", empty)
    assert code != 0 and "is a directory without config.json" in err and len(err.strip().splitlines()) == 1
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((bert_folder / "config.json").read_text())
    with pytest.raises(LoadError, match="no weights file"):
        load_model(str(no_weights))
    (no_weights / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(TrustRequired, match="pickled pytorch_model.bin"):
        load_model(str(no_weights))
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "my_custom", "architectures": ["MyModel"],
                                                    "auto_map": {"AutoModel": "modeling.MyModel"}}))
    (remote / "model.safetensors").write_bytes(b"")
    with pytest.raises(TrustRequired, match="model code of its own"):
        load_model(str(remote))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(LoadError, match="config.json cannot be read"):
        load_model(str(broken))


def test_hf_example_input_comes_from_the_folders_tokenizer(bert_folder, tmp_path):
    import shutil

    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "with_tokenizer"
    shutil.copytree(bert_folder, folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "compression", "makes", "models", "small", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(folder)
    loaded = load_model(str(folder))
    assert loaded.example_input.tolist() == [[2, 5, 6, 7, 8, 9, 3]]  # [CLS] compression makes models small . [SEP]
    assert loaded.model(loaded.example_input).shape == (1, 3)


def test_a_stored_hf_config_that_lies_about_its_sizes_allocates_nothing(bert_folder, plan_file, tmp_path):
    """The config in a .cexp is built on the meta device and checked against the file's tensors first."""
    loaded = load_model(str(bert_folder))
    kwargs = dict(loaded.factory_kwargs, config=dict(loaded.factory_kwargs["config"], intermediate_size=1 << 30))
    loaded.factory_kwargs = kwargs
    from explorer.engine.compress import compress
    from explorer.engine.plan import Plan

    comp = compress(loaded.model, Plan.from_dict(PLAN), loaded.example_input)
    path = tmp_path / "lying.cexp"
    fileformat.save(comp, str(path), loaded)
    with pytest.raises(LoadError, match="shape"):
        fileformat.load(str(path))
    kwargs["config"] = dict(kwargs["config"], model_type="not_a_model")
    fileformat.save(comp, str(path), loaded)
    with pytest.raises(LoadError, match="model_type 'not_a_model'"):
        fileformat.load(str(path))


# ------------------------------------------------------------------------------------------- ONNX


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 16, 3)
        self.fc = torch.nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        return self.fc(torch.flatten(torch.relu(self.c2(x)), 1))


def _need_onnx2torch():
    """onnx2torch installed (imported through the loader, which stands in for a torchvision that cannot load)."""
    if importlib.util.find_spec("onnx2torch") is None:
        pytest.skip("onnx2torch is not installed (pip install 'compression-explorer[onnx]')")


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    _need_onnx2torch()
    torch.manual_seed(0)
    model = SmallCNN().eval()
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    # the TorchScript-based exporter (fast); the torch.export-based one writes opset 18, converted down on load
    torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17)
    return model, path


def test_onnx_inspect_compress_evaluate_and_export_back(cnn_onnx, plan_file, tmp_path, capsys):
    import onnx

    model, path = cnn_onnx
    loaded = load_model(str(path))
    assert loaded.kind == "onnx" and loaded.example_input.shape == (1, 1, 8, 8)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=1e-5, atol=1e-5)
    code, out, err = _cli(capsys, "inspect", path)
    assert code == 0, err
    assert "(onnx), example input (1, 1, 8, 8)" in out and "Conv2d" in out and "Linear" in out
    cexp = tmp_path / "cnn.cexp"
    code, out, err = _cli(capsys, "compress", path, "--plan", plan_file, "-o", cexp)
    assert code == 0 and "smaller" in out, err
    code, out, err = _cli(capsys, "evaluate", cexp)
    assert code == 0 and "compressed file" in out, err
    back = load_model(str(cexp))  # the graph was traced into the file: no onnx2torch needed to read it
    from explorer.engine.compress import compress
    from explorer.engine.plan import Plan

    ours = compress(loaded.model, Plan.from_dict(PLAN), loaded.example_input).model
    with torch.no_grad():
        assert torch.equal(back.model(loaded.example_input), ours(loaded.example_input))
    out_onnx = tmp_path / "back.onnx"
    code, out, err = _cli(capsys, "export", cexp, "-o", out_onnx, "--input-shape", "1,1,8,8")
    assert code == 0, err
    onnx.checker.check_model(onnx.load(str(out_onnx)))
    again = load_model(str(out_onnx))  # and the exported file opens again
    with torch.no_grad():
        torch.testing.assert_close(again.model(loaded.example_input), ours(loaded.example_input), rtol=1e-4,
                                   atol=1e-5)


def _onnx_file(path, op: str, domain: str = ""):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))


def test_onnx_what_cannot_be_converted_is_named_in_one_line(tmp_path, capsys):
    _need_onnx2torch()
    _onnx_file(tmp_path / "det.onnx", "Det")  # a standard op onnx2torch has no converter for
    code, _, err = _cli(capsys, "inspect", tmp_path / "det.onnx")
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "onnx2torch has no converter for Det (opset" in err
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff")
    code, _, err = _cli(capsys, "inspect", tmp_path / "corrupt.onnx")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "corrupt.onnx:" in err
    assert "ONNX" in err
    code, _, err = _cli(capsys, "inspect", tmp_path / "missing.onnx")
    assert code != 0 and "no such file" in err


def test_onnx_is_told_by_its_content_not_its_name(cnn_onnx, tmp_path, capsys):
    from explorer.engine.model.onnx_import import looks_like_onnx

    model, path = cnn_onnx
    renamed = tmp_path / "cnn.bin"  # an ONNX file under another name still opens as ONNX
    renamed.write_bytes(path.read_bytes())
    loaded = load_model(str(renamed))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert loaded.kind == "onnx"
        torch.testing.assert_close(loaded.model(x), model(x), rtol=1e-5, atol=1e-5)
    text = tmp_path / "notes.onnx"  # and a text file named .onnx is said to be what it is not
    text.write_text("ir_version: 8\n")
    code, _, err = _cli(capsys, "inspect", text)
    assert code == 2 and "named .onnx, but does not begin with an ONNX model" in err, err
    torchscript = tmp_path / "scripted.onnx"  # a TorchScript archive named .onnx opens as TorchScript
    torch.jit.save(torch.jit.script(model), str(torchscript))
    assert load_model(str(torchscript)).kind == "torchscript"
    assert not looks_like_onnx(b"\x08\x01\x00\x00\x00\x00\x00\x00{")  # a safetensors header of 264 bytes


# ------------------------------------------------------------------------------------------- torchvision


def _torchvision():
    """torchvision, if installed and loadable beside this torch (pip's CUDA build fails beside the CPU wheel)."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (pip install 'compression-explorer[vision]')")
    try:
        import torchvision.models
    except Exception as exc:  # RuntimeError: operator torchvision::nms does not exist, and the like
        pytest.skip(f"torchvision cannot load beside this torch: {type(exc).__name__}")
    return torchvision


def test_torchvision_factory_with_a_local_weights_file(plan_file, tmp_path, capsys):
    from safetensors.torch import save_file

    torchvision = _torchvision()
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1().eval()  # weights=None: built here, nothing downloaded
    weights = tmp_path / "squeezenet1_1.safetensors"
    save_file(model.state_dict(), str(weights))
    ref = "torchvision.models:squeezenet1_1"
    code, out, err = _cli(capsys, "inspect", weights, "--factory", ref, "--input-shape", "1,3,64,64")
    assert code == 0 and "(state_dict), example input (1, 3, 64, 64)" in out and "features.0" in out, err
    cexp = tmp_path / "sq.cexp"
    code, out, err = _cli(capsys, "compress", weights, "--factory", ref, "--input-shape", "1,3,64,64",
                          "--plan", plan_file, "-o", cexp)
    assert code == 0, err
    code, _, err = _cli(capsys, "evaluate", cexp)  # user code: rebuilt only when the user names it
    assert code != 0 and f"--factory {ref}" in err
    back = load_model(str(cexp), factory=ref)
    from explorer.engine.compress import compress
    from explorer.engine.plan import Plan

    x = torch.randn(1, 3, 64, 64)
    ours = compress(load_model(str(weights), factory=ref).model, Plan.from_dict(PLAN), x).model
    with torch.no_grad():
        assert torch.equal(back.model(x), ours(x))
