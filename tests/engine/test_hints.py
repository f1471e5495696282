"""FitNets hints (issue 20): feature-map distillation from chosen teacher layers to student layers, through a
1x1 regressor where the widths differ, as a fine-tuning option beside output distillation."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from explorer.engine import compress, load_model
from explorer.engine.errors import CompressionError, PlanError
from explorer.engine.finetune.data import load_train_data
from explorer.engine.finetune.recipe import check_recipe, parse_hints
from explorer.engine.finetune.trainer import _Hints, finetune
from explorer.engine.plan import Plan
from explorer.engine.storage import fileformat as ff

PRUNED = {"conv2": {"prune": {"amount": 0.8, "granularity": "filter"}},
          "fc1": {"prune": {"amount": 0.9, "granularity": "filter"}}}


def _plan(layers):
    return Plan.from_dict({"version": 1, "layers": layers})


def test_the_hint_loss_is_the_mse_of_the_regressed_student_map_to_the_teachers():
    loaded = load_model("digits-cnn")
    student = compress(loaded.model, _plan(PRUNED), loaded.example_input).model
    hints = _Hints(check_recipe({"hints": {"layers": ["conv2", ["fc1", "fc1"], ["conv1", "conv1"]],
                                           "weight": 0.5}}).hints, loaded.model.eval())
    x = loaded.eval_data.inputs[:8]
    hints.bind(student, x)
    r = hints.regressors
    assert isinstance(r["conv2->conv2"], nn.Conv2d) and (r["conv2->conv2"].in_channels,
                                                         r["conv2->conv2"].out_channels) == (10, 50)
    assert isinstance(r["fc1->fc1"], nn.Linear) and (r["fc1->fc1"].in_features, r["fc1->fc1"].out_features) == (50, 500)
    assert isinstance(r["conv1->conv1"], nn.Identity)  # same width: compared directly
    with torch.no_grad():
        loaded.model(x)
        student(x)
        got = hints.loss()
        want = [F.mse_loss(r["conv2->conv2"](hints.seen_student["conv2"]), hints.seen_teacher["conv2"]),
                F.mse_loss(r["fc1->fc1"](hints.seen_student["fc1"]), hints.seen_teacher["fc1"]),
                F.mse_loss(hints.seen_student["conv1"], hints.seen_teacher["conv1"])]
    assert float(got) == pytest.approx(0.5 * float(torch.stack(want).mean()), rel=1e-6)
    assert float(want[2]) == 0.0  # conv1 is untouched by the plan: the same map
    hints.close()


def test_fine_tuning_with_hints_lowers_them_and_writes_only_the_plans_model(tmp_path):
    loaded = load_model("digits-cnn")
    plan = _plan(PRUNED)
    res = finetune(loaded, plan, load_train_data("digits"),
                   recipe=check_recipe({"epochs": 3, "lr": 0.003, "hints": {"layers": ["conv2"]}}))
    losses = [h.hint_loss for h in res.history]
    assert all(v is not None for v in losses) and losses[-1] < losses[0]
    plain = compress(loaded.model, plan, loaded.example_input).model
    assert list(res.compressed.model.state_dict()) == list(plain.state_dict())  # no regressor in the model
    assert not res.compressed.model.conv2._forward_hooks  # nor a hook left behind
    assert res.record["recipe"]["hints"]["layers"] == (("conv2", "conv2"),)
    path = tmp_path / "h.cexp"
    assert ff.save(res.compressed, path, loaded) == ff.predicted_bytes(res.compressed, loaded)
    back = ff.load(path)
    x = loaded.eval_data.inputs[:16]
    assert torch.equal(back(x), res.compressed.model(x))


def test_hints_name_what_is_wrong():
    loaded = load_model("digits-cnn")
    train = load_train_data("digits")
    with pytest.raises(CompressionError, match="has no layer 'conv9'"):
        finetune(loaded, _plan(PRUNED), train, recipe=check_recipe({"epochs": 1, "hints": {"layers": ["conv9"]}}))
    with pytest.raises(CompressionError, match="must agree but for their width"):
        finetune(loaded, _plan(PRUNED), train,
                 recipe=check_recipe({"epochs": 1, "hints": {"layers": [["conv1", "fc1"]]}}))
    for bad in ({"layers": []}, {"layers": [["a", "b", "c"]]}, {"layers": [3]}, {"layers": ["a"], "weight": -1},
                {"layers": ["a"], "beta": 1}):
        with pytest.raises(PlanError, match="hints"):
            check_recipe({"hints": bad})


def test_the_cli_flag_reads_layers_pairs_and_a_weight():
    h = parse_hints("conv2,conv1=conv1:0.25")
    assert h.layers == (("conv2", "conv2"), ("conv1", "conv1")) and h.weight == 0.25
    with pytest.raises(PlanError, match="--hints"):
        parse_hints("conv2:heavy")


def test_no_hook_is_left_on_the_model_after_a_scheduled_run():
    loaded = load_model("digits-cnn")
    recipe = check_recipe({"epochs": 1, "lr": 0.003, "hints": {"layers": ["fc1"]},
                           "schedule": {"kind": "iterative", "steps": 2, "epochs_per_step": 1}})
    res = finetune(loaded, _plan({"fc1": {"prune": {"amount": 0.8}}}), load_train_data("digits"), recipe=recipe)
    assert not any(m._forward_hooks for m in res.compressed.model.modules())
    assert all(h.hint_loss is not None for h in res.history)
