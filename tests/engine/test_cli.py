"""The CLI as a user runs it: a subprocess, real output, exit codes."""

import json
import os
import subprocess
import sys

import torch

from explorer.engine.samples import SAMPLES_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAN = str(SAMPLES_DIR / "digits-mlp.plan.json")


def run(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_inspect_table_and_json():
    out = run("inspect", "digits-cnn")
    assert out.returncode == 0, out.stderr
    for name in ("conv1", "conv2", "fc1", "fc2"):
        assert name in out.stdout
    js = run("inspect", "digits-cnn", "--json")
    data = json.loads(js.stdout)
    assert [l["name"] for l in data["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    for l in data["layers"]:
        assert {"name", "type", "shape", "params", "macs"} <= set(l)
    assert data["total"]["macs"] == sum(l["macs"] for l in data["layers"])
    assert {"params", "macs", "bytes"} <= set(data["total"])


def test_evaluate_json_has_the_documented_keys_and_stages_shrink():
    out = run("evaluate", "digits-mlp", "--plan", PLAN, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    size = data["size"]
    assert size["dense"] > size["pruned"] > size["quantized"] > size["coded"]
    assert set(data["macs"]) >= {"before", "after"} and set(data["accuracy"]) >= {"before", "after"}
    assert 0.9 < data["accuracy"]["before"] <= 1.0


def test_evaluate_prints_stages_and_accuracy():
    out = run("evaluate", "digits-mlp", "--plan", PLAN)
    assert out.returncode == 0, out.stderr
    for word in ("dense", "pruned", "quantized", "Huffman", "accuracy", "MACs"):
        assert word in out.stdout


def test_failures_are_one_line_without_traceback(tmp_path):
    out = run("inspect", str(tmp_path / "missing.pt"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no such file" in out.stderr
    assert "Traceback" not in out.stderr
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text('{"default": {"quantize": {"bits": 12}}}')
    out = run("evaluate", "digits-mlp", "--plan", str(bad_plan))
    assert out.returncode == 2 and "quantize.bits" in out.stderr and "Traceback" not in out.stderr
    out = run("inspect", str(tmp_path / "missing.pt"), "--debug")
    assert "Traceback" in out.stderr


def test_pickle_refused_without_trust(tmp_path):
    import zoo

    torch.save(zoo.MLP(), tmp_path / "whole.pt")
    out = run("inspect", str(tmp_path / "whole.pt"))
    assert out.returncode == 2 and "--trust" in out.stderr
    out = run("inspect", str(tmp_path / "whole.pt"), "--trust", "--input-shape", "1,64")
    assert out.returncode == 0, out.stderr
    assert "net.0" in out.stdout


def test_state_dict_with_factory(tmp_path):
    import zoo

    torch.save(zoo.SmallCNN().state_dict(), tmp_path / "w.pt")
    out = run("inspect", str(tmp_path / "w.pt"), "--factory", "zoo:SmallCNN", "--input-shape", "1,1,8,8",
              "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"]["macs"] > 0


def test_evaluate_on_eval_data_from_a_factory():
    out = run("evaluate", "digits-mlp", "--plan", "sample_models/digits-mlp.plan.json", "--data",
              "zoo:digits_eval_tuple", "--json")
    assert out.returncode == 0, out.stderr
    acc = json.loads(out.stdout)["accuracy"]
    assert acc["data"] == "zoo:digits_eval_tuple (100)" and acc["samples"] == 100
    out = run("evaluate", "digits-mlp", "--plan", "sample_models/digits-mlp.plan.json", "--data", "zoo:eval_raises")
    assert out.returncode == 2 and "no data here" in out.stderr and "Traceback" not in out.stderr


def test_inspect_names_what_does_not_apply_and_what_is_kept_dense(capsys):
    """Issue 16: the text and the JSON of inspect name each layer's refusals and every module kept dense
    (in this process: the verb is the same function)."""
    from explorer.cli import main

    assert main(["inspect", "zoo:mixed_example"]) == 0
    text = capsys.readouterr().out
    assert "attn.in_proj_weight  MultiheadAttention" in text
    assert "why some layers cannot be factorised (low-rank):\n" in text
    assert "  bag: its factors would be an Embedding and a Linear" in text
    assert "kept dense (stored as they are; no method applies):\n" in text
    assert "  (the model) (MixedSequenceNet, 1 param): parameters of the model itself" in text
    assert "  norm (LayerNorm, 16 params): normalization" in text
    assert main(["inspect", "zoo:mixed_example", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in d["dense"]] == ["", "act", "norm"]
    layers = {l["name"]: l for l in d["layers"]}
    assert layers["conv"]["methods"]["lowrank"] and not layers["bag"]["methods"]["lowrank"]
    assert "pooling" in layers["bag"]["methods"]["lowrank_reason"]
    assert main(["inspect", "zoo:resnet_model"]) == 0  # the residual streams' coupled groups
    text = capsys.readouterr().out
    assert "coupled groups: outputs added together (residual adds)" in text
    assert "  16 channels: stem + layer1.conv2\n  32 channels: layer2.down.0 + layer2.conv2\n" in text
    assert main(["inspect", "zoo:resnet_model", "--json"]) == 0
    layers = {l["name"]: l for l in json.loads(capsys.readouterr().out)["layers"]}
    assert layers["stem"]["structured"]["producers"] == ["stem", "layer1.conv2"]
