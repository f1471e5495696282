import pytest
import torch
from safetensors.torch import save_file

from explorer.engine.errors import LoadError, TrustRequired
from explorer.engine.model.loading import load_model

FACTORY = "zoo:SmallCNN"


class Boom:
    """A pickle payload that would create a marker file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_samples_load_with_no_flags():
    for name in ("digits-mlp", "digits-cnn"):
        loaded = load_model(name)
        assert loaded.kind == "sample" and loaded.eval_data is not None
        assert loaded.example_input.shape == (1, 1, 8, 8)
        assert not loaded.model.training


def test_state_dict_pt_and_safetensors_with_factory(tmp_path):
    import zoo

    model = zoo.SmallCNN().eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    x = torch.randn(2, 1, 8, 8)
    for f in ("w.pt", "w.safetensors"):
        loaded = load_model(str(tmp_path / f), factory=FACTORY)
        assert loaded.kind == "state_dict"
        assert torch.equal(loaded.model(x), model(x))
    # a training checkpoint with the weights under "model_state_dict"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict()}, tmp_path / "ckpt.pth")
    assert torch.equal(load_model(str(tmp_path / "ckpt.pth"), factory=FACTORY).model(x), model(x))


def test_torchscript_loads(tmp_path):
    import zoo

    model = zoo.MLP().eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "m.pt")
    loaded = load_model(str(tmp_path / "m.pt"))
    assert loaded.kind == "torchscript"
    x = torch.randn(3, 64)
    assert torch.equal(loaded.model(x), model(x))


def test_factory_alone_and_its_errors():
    loaded = load_model("zoo:SmallCNN")
    assert loaded.kind == "factory" and loaded.example_input is None
    with pytest.raises(LoadError, match="cannot import module 'no_such_module'"):
        load_model(factory="no_such_module:build")
    with pytest.raises(LoadError, match="has no attribute 'Nope'"):
        load_model(factory="zoo:Nope")
    with pytest.raises(LoadError, match="expected 'package.module:callable'"):
        load_model(factory="zoo.SmallCNN")
    with pytest.raises(LoadError, match="not a torch.nn.Module"):
        load_model(factory="zoo:example_inputs")


def test_mismatched_state_dict_lists_the_keys(tmp_path):
    import zoo

    state = zoo.SmallCNN().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc2.bias"]
    state["fc1.weight"] = torch.zeros(5, 5)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(LoadError) as err:
        load_model(str(tmp_path / "w.pt"), factory=FACTORY)
    msg = str(err.value)
    assert "w.pt" in msg and "missing keys: fc2.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "fc1.weight (file (5, 5), model (32, 64))" in msg


def test_pickled_module_needs_trust_and_runs_nothing_without_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": Boom(str(marker))}, path)
    with pytest.raises(TrustRequired) as err:
        load_model(str(path), factory=FACTORY)
    assert "--trust" in str(err.value) and "evil.pt" in str(err.value)
    assert not marker.exists()  # nothing from the file ran


def test_pickled_module_loads_with_trust(tmp_path):
    # a module class importable by the unpickler (a subprocess writes it, as a user's own code would)
    import zoo

    model = zoo.MLP().eval()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(TrustRequired):
        load_model(str(tmp_path / "whole.pt"))
    loaded = load_model(str(tmp_path / "whole.pt"), trust=True)
    assert loaded.kind == "pickle"
    x = torch.randn(2, 64)
    assert torch.equal(loaded.model(x), model(x))


def test_bad_files_get_one_clear_message(tmp_path):
    with pytest.raises(LoadError, match="nope.pt: no such file"):
        load_model(str(tmp_path / "nope.pt"))
    with pytest.raises(LoadError, match="is a directory"):
        load_model(str(tmp_path))
    (tmp_path / "notes.pt").write_text("hello world, not a model")
    with pytest.raises(LoadError, match="notes.pt: not a model file"):
        load_model(str(tmp_path / "notes.pt"), factory=FACTORY)
    import zoo

    torch.save(zoo.SmallCNN().state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match="cut.pt: corrupt"):
        load_model(str(tmp_path / "cut.pt"), factory=FACTORY)
    with pytest.raises(LoadError, match="holds only weights"):
        load_model(str(tmp_path / "w.pt"))
    save_file({"a": torch.zeros(3)}, tmp_path / "t.safetensors")
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:-4])
    with pytest.raises(LoadError, match="t.safetensors: corrupt"):
        load_model(str(tmp_path / "t.safetensors"), factory=FACTORY)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(LoadError, match="not a model"):
        load_model(str(tmp_path / "list.pt"), factory=FACTORY)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_of_any_protocol_is_refused_in_one_line(tmp_path, protocol):
    """Issue 12, item 7: a protocol-4 pickle made torch's restricted unpickler print a two-line UserWarning
    before our message. The refusal is the one line, whatever the protocol."""
    import pickle
    import subprocess
    import sys

    path = tmp_path / "whole.pt"
    with open(path, "wb") as fh:
        pickle.dump(torch.nn.Linear(3, 2), fh, protocol=protocol)
    out = subprocess.run([sys.executable, "-m", "explorer", "inspect", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and "--trust" in out.stderr, out.stderr
