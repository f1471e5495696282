"""Opening what people have (issue 16): a Hugging Face folder, an ONNX file, a torchvision factory with a weights
file; each through the CLI as a user types it, compressed, and the compressed file loaded back."""

from __future__ import annotations

import json
import os

import pytest
import torch

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
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=3)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(folder, safe_serialization=True)
    return folder


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
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(LoadError, match="config.json cannot be read"):
        load_model(str(broken))


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
