"""The bundled sample models: architectures, factories, committed weights and metadata, example plans."""

import json

import pytest
import torch
import torch.fx
from safetensors.torch import load_file

from explorer.engine import samples
from explorer.engine.errors import LoadError
from explorer.engine.model.data import EvalData, digits_split
from explorer.engine.samples import (SAMPLES_DIR, DigitsCNN, DigitsMLP, digits_cnn, digits_mlp, load_sample,
                                     sample_info, sample_names)

EXPECTED = {"digits-mlp": (digits_mlp, DigitsMLP, 50_610), "digits-cnn": (digits_cnn, DigitsCNN, 114_760)}


@torch.no_grad()
def accuracy(model, data):
    model.eval()
    correct = sum(int((model(x).argmax(dim=1) == y).sum()) for x, y in data.batches(512))
    return correct / len(data)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_factory_contract_and_param_count(name):
    factory, cls, params = EXPECTED[name]
    bundle = factory()
    assert set(bundle) == {"model", "example_input", "eval_data"}
    model = bundle["model"]
    assert type(model) is cls
    assert sum(p.numel() for p in model.parameters()) == params
    assert bundle["example_input"].shape == (1, 1, 8, 8) and bundle["example_input"].dtype == torch.float32
    assert isinstance(bundle["eval_data"], EvalData) and bundle["eval_data"].name == "digits test split (360)"
    out = model(bundle["eval_data"].inputs[:5])
    assert out.shape == (5, 10)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(bundle["example_input"]), model(bundle["example_input"]))


def test_layer_shapes():
    mlp, cnn = DigitsMLP(), DigitsCNN()
    assert [(m.in_features, m.out_features) for m in (mlp.fc1, mlp.fc2, mlp.fc3)] == [(64, 300), (300, 100), (100, 10)]
    assert cnn.conv1.weight.shape == (20, 1, 3, 3) and cnn.conv2.weight.shape == (50, 20, 3, 3)
    assert cnn.fc1.weight.shape == (500, 200) and cnn.fc2.weight.shape == (10, 500)


def test_sample_names_and_unknown():
    assert sample_names() == ["digits-cnn", "digits-mlp"]
    with pytest.raises(LoadError, match="unknown sample model 'lenet'; known samples: digits-cnn, digits-mlp"):
        sample_info("lenet")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metadata(name):
    info = sample_info(name)
    factory, _, params = EXPECTED[name]
    assert info["name"] == name
    assert info["factory"] == f"explorer.engine.samples:{factory.__name__}"
    assert info["weights"] == f"{name}.safetensors" and (SAMPLES_DIR / info["weights"]).is_file()
    assert info["params"] == params
    assert info["data"]["source"] == "sklearn.datasets.load_digits"
    assert (info["data"]["seed"], info["data"]["train"], info["data"]["test"]) == (0, 1437, 360)
    assert info["baseline_accuracy"] >= 0.97
    assert info["trained_with"]["torch"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_weights_reproduce_baseline(name):
    info = sample_info(name)
    factory, _, _ = EXPECTED[name]
    bundle = factory()
    bundle["model"].load_state_dict(load_file(str(SAMPLES_DIR / info["weights"])))
    acc = accuracy(bundle["model"], bundle["eval_data"])
    assert acc == pytest.approx(info["baseline_accuracy"], abs=1e-9)

    loaded = load_sample(name)
    assert not loaded["model"].training
    assert accuracy(loaded["model"], loaded["eval_data"]) == pytest.approx(info["baseline_accuracy"], abs=1e-9)
    assert loaded["plan_path"] == SAMPLES_DIR / f"{name}.plan.json"


def test_eval_split_matches_metadata():
    _, test = digits_split(seed=sample_info("digits-mlp")["data"]["seed"])
    assert torch.equal(test.inputs, digits_mlp()["eval_data"].inputs)


def test_load_sample_rejects_foreign_factory(monkeypatch, tmp_path):
    (tmp_path / "evil.json").write_text(json.dumps({"name": "evil", "factory": "os:system", "weights": "x"}))
    monkeypatch.setattr(samples, "SAMPLES_DIR", tmp_path)
    with pytest.raises(LoadError, match="not a bundled sample factory"):
        load_sample("evil")
    (tmp_path / "gone.json").write_text(json.dumps({"factory": "explorer.engine.samples:digits_mlp"}))
    with pytest.raises(LoadError, match=r"gone\.safetensors: no such file"):
        load_sample("gone")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_plans(name):
    from explorer.engine import load_model
    from explorer.engine.measure.evaluate import evaluate_plan
    from explorer.engine.plan import Plan

    loaded = load_model(name)
    # the tuned plan: every stage shrinks, accuracy within 1.5 points of the baseline, with no retraining
    result = evaluate_plan(loaded, Plan.load(SAMPLES_DIR / f"{name}.plan.json"))
    size = result["size"]
    assert size["dense"] > size["pruned"] > size["quantized"] > size["coded"]
    assert size["dense"] / size["coded"] > 10
    assert result["accuracy"]["before"] == pytest.approx(loaded.meta["baseline_accuracy"])
    assert result["accuracy"]["after"] > result["accuracy"]["before"] - 0.015
    # the paper's recipe as published: 90% pruning and 5-bit linear k-means (8-bit on convs)
    recipe = Plan.load(SAMPLES_DIR / f"{name}.deep-compression.plan.json")
    for layer, settings in recipe.resolve([n for n, _ in loaded.model.named_children()]).items():
        assert settings.prune.amount == 0.9 and settings.quantize.init == "linear"
        assert settings.quantize.bits == (8 if layer.startswith("conv") else 5)
