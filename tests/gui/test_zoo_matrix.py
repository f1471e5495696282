"""The zoo through both front doors (issue 16): every model — MLP, a LeNet-5-like CNN, a ResNet-shaped net
(BatchNorm, residual adds), depthwise convs, MobileNetV2-style inverted residuals, a transformer encoder
(Embedding, LayerNorm, attention), an LSTM text classifier, a bidirectional GRU, a U-Net (ConvTranspose2d,
concatenations), Conv1d + MultiheadAttention + EmbeddingBag, a Hugging Face folder and an ONNX file — is
opened, inspected, compressed with a mixed plan (element pruning and 4-bit k-means everywhere, filter
pruning and low-rank where ``inspect`` says they apply), written, read back with bit-identical weights and
equal outputs, and measured: through the CLI and through the window, one parametrized matrix."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import zoo

from explorer.cli import main as cli_main
from explorer.engine.inspect import inspect_model
from explorer.engine.measure.preview import Previewer
from explorer.engine.model.loading import load_model
from explorer.engine.storage import fileformat as ff

ZOO = ["mlp", "cnn", "resnet", "depthwise", "mobilenetv2", "transformer", "lstm", "bigru", "unet", "mixed"]
FACTORY = {"lstm": "lstm_example", "bigru": "bigru_example", "mixed": "mixed_example"}
EXPORT_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """model name -> what the user names (a factory, a folder, a file)."""
    out = {n: f"zoo:{FACTORY.get(n, n + '_model')}" for n in ZOO}
    pytest.importorskip("transformers")
    out["hf-bert"] = str(zoo.tiny_bert_folder(tmp_path_factory.mktemp("bert")))
    if importlib.util.find_spec("onnx2torch") is None:  # (it imports torchvision: the loader stands in)
        pytest.skip("onnx2torch is not installed (pip install --no-deps 'onnx2torch>=1.5')")
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    torch.onnx.export(zoo.SmallCNN().eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17)
    out["onnx-cnn"] = str(path)
    return out


def expected(source: str):
    """The model as opened, its mixed plan, and the compressed model built in this process (the reference)."""
    loaded = load_model(source)
    plan = zoo.mixed_plan(inspect_model(loaded.model, loaded.example_input))
    return loaded, plan, Previewer(loaded).build(plan, count=False)


def same(back, ref, example) -> None:
    got, want = back.state_dict(), ref.model.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    with torch.no_grad():
        a, b = back(example), ref.model(example)
    a = a if isinstance(a, torch.Tensor) else a[0]
    b = b if isinstance(b, torch.Tensor) else b[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("door", ["cli", "window"])
@pytest.mark.parametrize("name", ZOO + ["hf-bert", "onnx-cnn"])
def test_the_zoo_through_both_doors(name, door, sources, tmp_path, capsys, make_window, qtbot):
    source = sources[name]
    loaded, plan, ref = expected(source)
    out = tmp_path / f"{name}.cexp"
    if door == "cli":
        assert cli_main(["inspect", source]) == 0
        plan_path = tmp_path / "plan.json"
        plan.save(plan_path)
        capsys.readouterr()
        assert cli_main(["compress", source, "--plan", str(plan_path), "--json", "-o", str(out)]) == 0
        said = json.loads(capsys.readouterr().out)
        assert said["file_bytes"] == said["predicted_bytes"] == out.stat().st_size
        confirm = ["--factory", source] if source.startswith("zoo:") else []  # user code: confirmed by name
        assert cli_main(["evaluate", str(out)] + confirm) == 0
    else:
        win = make_window(source)
        win.session.set_plan(plan)
        qtbot.waitUntil(lambda: win.idle() and win.session.results is not None
                        and win.session.results.get("plan_key", None) in (None, plan.to_json()), timeout=60_000)
        qtbot.waitUntil(win.idle, timeout=60_000)
        written = []
        win.exports.export(str(out), on_done=written.append)
        qtbot.waitUntil(lambda: bool(written), timeout=EXPORT_TIMEOUT_MS)
        assert written[0] == out.stat().st_size == win.session.results["size"]["file"]  # previewed = written
        assert win.last_error is None
    back = ff.load(str(out), factory=source if source.startswith("zoo:") else None)
    same(back, ref, loaded.example_input)
