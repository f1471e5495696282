"""Hostile and bad input, by class: data the model cannot take (shape, dtype, label range) is refused before any
work with one message naming what was given and what the model expects; giant declared sizes are refused
before allocation; a plan that is huge, deeply nested or holds NaN/Infinity is refused with the field named."""

import io
import json
import struct
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explorer.cli import main as cli_main
from explorer.engine.errors import LoadError, PlanError
from explorer.engine.finetune.data import TrainData, check_train_data, load_train_data
from explorer.engine.measure.datafit import check_fits, expected_input
from explorer.engine.model.data import EvalData, load_eval_data
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan
from explorer.engine.storage import jsonio

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist-t10k" / "t10k-images-idx3-ubyte.gz"
needs_mnist = pytest.mark.skipif(not MNIST.exists(), reason="shared MNIST t10k files not present")


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


# ------------------------------------------------------------------------------------ shape: both named


@needs_mnist
@pytest.mark.parametrize("sample", ["digits-mlp", "digits-cnn"])
def test_wrong_shape_eval_data_names_the_given_and_the_expected_shape(sample):
    with pytest.raises(LoadError) as err:
        load_model(sample, data=str(MNIST), limit=4)
    msg = str(err.value)
    assert msg.startswith("eval data t10k-images-idx3-ubyte.gz")
    assert "samples are 1×28×28 float32 (784 values)" in msg
    assert f"{sample} expects 1×8×8 float32 (64 values), the shape of its example input" in msg
    assert "\n" not in msg


def test_without_an_example_input_the_first_layer_says_what_is_expected():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(LoadError, match=r"samples are 64 float32 values, but m expects 784 values per sample "
                                        r"\(its first layer '1' is Linear\(784 → 16\)\)"):
        check_fits(mlp, torch.zeros(5, 64), None, "eval data x", model_name="m")
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    assert "C×H×W samples with 3 channels" in expected_input(cnn)
    with pytest.raises(LoadError, match="samples are 1×8×8 float32 .* expects C×H×W samples with 3 channels"):
        check_fits(cnn, torch.zeros(5, 1, 8, 8), None, "eval data x")
    assert "token ids from 0 to 99" in expected_input(nn.Sequential(nn.Embedding(100, 8)))
    assert "input_size=7" in expected_input(nn.Sequential(nn.GRU(7, 4)))
    assert expected_input(nn.Sequential(nn.ReLU())) is None


def test_an_example_taken_from_earlier_data_is_not_what_later_data_is_held_to(tmp_path, monkeypatch):
    (tmp_path / "flatmodel.py").write_text(
        "from torch import nn\n"
        "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    good = _npz(tmp_path / "good.npz", x=np.zeros((6, 1, 28, 28), np.float32), y=np.arange(6))
    loaded = load_model("flatmodel:build", data=good)
    assert loaded.meta["example_from_data"] and tuple(loaded.example_input.shape) == (1, 1, 28, 28)
    from explorer.engine.measure.datafit import check_eval_data

    small = load_eval_data(_npz(tmp_path / "small.npz", x=np.zeros((6, 64), np.float32)))
    with pytest.raises(LoadError, match=r"samples are 64 float32 values, but flatmodel:build expects 784 values"):
        check_eval_data(loaded, small)
    sys.modules.pop("flatmodel", None)


def test_data_the_model_takes_in_another_shape_is_accepted(tmp_path):
    flat = _npz(tmp_path / "flat.npz", x=np.zeros((6, 64), np.float32), y=np.arange(6))
    assert load_model("digits-mlp", data=flat).eval_data.inputs.shape == (6, 64)  # the MLP flattens its input


def test_wrong_shape_training_and_validation_data_name_both_shapes():
    loaded = load_model("digits-cnn")
    wrong = TrainData("wrong", EvalData(torch.zeros(10, 1, 28, 28), torch.zeros(10, dtype=torch.long), "wrong"))
    for what in ("training data", "validation data"):
        with pytest.raises(LoadError, match=f"{what} wrong: samples are 1×28×28 float32 .* but digits-cnn expects "
                                            r"1×8×8 float32 \(64 values\)"):
            check_train_data(loaded.model, wrong, what, example=loaded.example_input, model_name="digits-cnn")


# ----------------------------------------------------------------------------------------------- dtype


@pytest.mark.parametrize("inputs", [torch.zeros(4, 2, dtype=torch.complex64), torch.zeros(4, 2, dtype=torch.bool)])
def test_inputs_that_are_not_real_numbers_are_refused(inputs):
    with pytest.raises(LoadError, match="inputs must be real numbers"):
        EvalData(inputs, None, "d")


@pytest.mark.parametrize("x", [np.array([["a"] * 4] * 3), np.zeros((3, 4), np.complex64)])
def test_string_and_complex_arrays_are_refused_as_inputs(tmp_path, x):
    with pytest.raises(LoadError, match="inputs must be numbers"):
        load_eval_data(_npz(tmp_path / "x.npz", x=x))


def test_datasets_of_strings_or_float_labels_are_refused_naming_the_item(tmp_path, monkeypatch):
    (tmp_path / "dsfac.py").write_text(
        "import torch\n"
        "class DS(torch.utils.data.Dataset):\n"
        "    def __init__(self, item): self.item = item\n"
        "    def __len__(self): return 4\n"
        "    def __getitem__(self, i): return self.item\n"
        "def floatlab(): return DS((torch.zeros(1, 8, 8), 1.5))\n"
        "def strlab(): return DS((torch.zeros(1, 8, 8), 'cat'))\n"
        "def strx(): return DS(('img', 1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for ref, match in (("dsfac:floatlab", "labels must be integers .*got float32"),
                       ("dsfac:strlab", "item 0's label is str 'cat', not numbers"),
                       ("dsfac:strx", "item 0's input is str 'img', not numbers")):
        with pytest.raises(LoadError, match=f"training data '{ref}': .*{match}"):
            load_train_data(ref)
    sys.modules.pop("dsfac", None)


# ----------------------------------------------------------------------------------------- label range


def test_labels_are_checked_whole_before_any_work(tmp_path):
    y = np.arange(600) % 10
    y[550] = 10  # past the first batch of 256: found before the first accuracy is measured
    late = _npz(tmp_path / "late.npz", x=np.zeros((600, 1, 8, 8), np.float32), y=y)
    with pytest.raises(LoadError, match=r"eval data late.npz \(600\): labels run from 0 to 10, but digits-cnn has "
                                        r"10 outputs \(labels must be 0\.\.9\)"):
        load_model("digits-cnn", data=late)
    with pytest.raises(LoadError, match="labels must be non-negative class indices, found -1"):
        EvalData(torch.zeros(3, 1, 8, 8), torch.tensor([0, -1, 2]), "neg")
    with pytest.raises(LoadError, match="labels must be integers .*got float32"):
        EvalData(torch.zeros(3, 1, 8, 8), torch.tensor([0.0, 1.0, 2.0]), "float")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(6, 1, 8, 8), torch.rand(6)),
                                         batch_size=3)
    loaded = load_model("digits-cnn")
    with pytest.raises(LoadError, match="labels must be 1-D integer class indices, got float32"):
        check_train_data(loaded.model, TrainData("loader", loader=loader))


@needs_mnist
def test_the_cli_says_it_in_one_line_before_work_for_each_verb(tmp_path, capsys):
    plan = str(Path(__file__).resolve().parents[2] / "sample_models" / "digits-cnn.plan.json")
    for argv in (["evaluate", "digits-mlp", "--data", str(MNIST), "--limit", "5"],
                 ["sensitivity", "digits-mlp", "--data", str(MNIST), "--limit", "5"],
                 ["auto", "digits-mlp", "--data", str(MNIST), "--limit", "5", "--target-ratio", "4",
                  "-o", str(tmp_path / "a.json")],
                 ["finetune", "digits-cnn", "--plan", plan, "--train", str(MNIST), "--limit", "5",
                  "-o", str(tmp_path / "f.cexp")]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "1×28×28" in err and "expects 1×8×8 float32 (64 values)" in err, err
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "f.cexp").exists()


# ------------------------------------------------------------------------- giant declared sizes, refused early


def _giant_files(tmp_path):
    idx = tmp_path / "g-images-idx3-ubyte"
    idx.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**16, 2**16) + b"\0" * 64)
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 64)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    member = buf.getvalue() + b"\0" * 64
    npz = tmp_path / "g.npz"
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", member)
    st = tmp_path / "g.safetensors"
    head = json.dumps({"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 16]}}).encode()
    st.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 16)
    st2 = tmp_path / "g2.safetensors"
    st2.write_bytes(struct.pack("<Q", 2**62) + b'{"a":1}')
    return idx, npz, st, st2


def test_giant_declared_sizes_are_refused_before_allocation(tmp_path):
    idx, npz, st, st2 = _giant_files(tmp_path)
    tracemalloc.start()
    try:
        for path, match in ((idx, "IDX header declares 2147483648 x 65536 x 65536"),
                            (npz, ".npy header declares 1000000000000 x 64")):
            with pytest.raises(LoadError, match=match):
                load_eval_data(path)
        for path in (st, st2):
            with pytest.raises(LoadError, match="corrupt safetensors"):
                load_model(str(path), factory="explorer.engine.samples:digits_mlp")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_npz_never_unpickles(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object()] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(LoadError, match="refusing to unpickle"):
        load_eval_data(path)


# ------------------------------------------------------------------------------ plans: the field named


@pytest.mark.parametrize("text, field", [
    ('{"default": {"prune": {"amount": NaN}}}', "default.prune.amount: NaN is not a JSON number"),
    ('{"layers": {"fc1": {"prune": {"amount": -Infinity}}}}', "layers.fc1.prune.amount: -Infinity is not"),
    ('{"layers": {"fc1": {"quantize": {"bits": 1e999}}}}', "layers.fc1.quantize.bits: 1e999 is beyond the largest"),
    ('{"default": {"prune": {"amount": ' + "9" * 5000 + "}}}", "default.prune.amount: an integer of 5,000 digits"),
    ('{"layers": {"fc1": ' + "[" * 10_000 + "]" * 10_000 + "}}", r"layers.fc1\[0\]\[0\]\[0\]\[0\]…: nested 10,002"),
    ('{"x": "[[[[{{", "layers": {"f": {"a": [1, {"b": ' + "{" * 70 + "}" * 70 + "}]}}}",
     r"layers.f.a\[1\].b: nested 75 deep"),
])
def test_a_plan_with_non_finite_huge_or_deep_values_is_refused_naming_the_field(text, field):
    with pytest.raises(PlanError, match="field " + field):
        Plan.from_json(text)


def test_json_limits_name_fields_in_lists_and_leave_good_documents_alone():
    with pytest.raises(jsonio.JSONLimit, match=r"field tensors\[2\].shape\[0\]: NaN"):
        jsonio.loads('{"tensors": [{}, {}, {"shape": [NaN]}]}')
    assert jsonio.loads('{"a": [1, 2.5, {"b": "NaN"}], "c": 1e308}') == {"a": [1, 2.5, {"b": "NaN"}], "c": 1e308}


def test_a_huge_plan_is_refused_by_size_and_by_entries(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"description": "' + "a" * (5 << 20) + '"}')
    with pytest.raises(PlanError, match="too large for a plan"):
        Plan.load(big)
    with pytest.raises(PlanError, match="20,000 layer entries"):
        Plan.from_dict({"layers": {f"l{i}": {} for i in range(20_000)}})
