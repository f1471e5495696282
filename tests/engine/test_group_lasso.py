"""Structured sparsity learning (issue 20, Wen et al. 2016): a group-lasso penalty on the filters and channels the
plan removes, during fine-tuning of the uncompressed model, drives whole groups towards zero; then the plan
removes them for real. The strength is a recipe option; every epoch records the groups' norms."""

import numpy as np
import pytest
import torch

from explorer.engine import compress, load_model
from explorer.engine.errors import PlanError
from explorer.engine.finetune.data import load_train_data
from explorer.engine.finetune.recipe import check_recipe, parse_group_lasso
from explorer.engine.finetune.trainer import _GroupLasso, finetune
from explorer.engine.plan import Plan
from explorer.engine.storage import fileformat as ff

HEAVY = {"conv2": {"prune": {"amount": 0.8, "granularity": "filter"}},
         "fc2": {"prune": {"amount": 0.9, "granularity": "channel"}}}


def _plan(layers):
    return Plan.from_dict({"version": 1, "layers": layers})


def test_the_penalty_is_the_sum_of_the_removed_groups_l2_norms():
    loaded = load_model("digits-cnn")
    plan = _plan(HEAVY)
    gl = _GroupLasso(check_recipe({"group_lasso": {"strength": 0.5}}).group_lasso,
                     plan.resolve(["conv1", "conv2", "fc1", "fc2"]), loaded.model, loaded.example_input)
    w2, w4 = loaded.model.conv2.weight, loaded.model.fc2.weight
    want = w2.flatten(1).norm(dim=1).sum() + w4.norm(dim=0).sum()  # conv2's 50 filters, fc2's 500 input columns
    assert float(gl.loss(loaded.model)) == pytest.approx(0.5 * float(want), rel=1e-6)
    assert [len(v) for v in gl.norms(loaded.model).values()] == [50, 500]


def test_ssl_shrinks_the_groups_and_the_plan_then_removes_them_at_little_cost(tmp_path):
    loaded = load_model("digits-cnn")
    plan = _plan(HEAVY)
    train = load_train_data("digits")
    plain = finetune(loaded, plan, train, recipe=check_recipe({"epochs": 1, "lr": 0.003}))
    ssl = finetune(loaded, plan, train, recipe=check_recipe({"epochs": 1, "lr": 0.003,
                                                               "group_lasso": {"strength": 0.03, "epochs": 4}}))
    phases = [h.phase for h in ssl.history]
    assert phases == ["group lasso"] * 4 + ["retrain"]
    before = ssl.record["group_norms_before"]["fc2"]
    after = ssl.history[3].group_norms["fc2"]
    assert np.median(after) < 0.5 * np.median(before)  # the channels shrink
    assert sum(v < 0.01 for v in after) > sum(v < 0.01 for v in before)
    # removing the groups costs less after SSL: the plan's model before retraining keeps more
    assert ssl.before > plain.before + 0.1, (ssl.before, plain.before)
    assert ssl.compressed.model.conv2.out_channels == 10 and ssl.compressed.model.fc2.in_features == 50
    path = tmp_path / "ssl.cexp"
    assert ff.save(ssl.compressed, path, loaded) == ff.predicted_bytes(ssl.compressed, loaded)
    x = loaded.eval_data.inputs[:16]
    assert torch.equal(ff.load(path)(x), ssl.compressed.model(x))


def test_group_lasso_needs_groups_to_remove_and_valid_numbers():
    loaded = load_model("digits-cnn")
    with pytest.raises(PlanError, match="prunes no layer by filter or channel"):
        finetune(loaded, _plan({"fc1": {"prune": {"amount": 0.5}}}), load_train_data("digits"),
                 recipe=check_recipe({"epochs": 1, "group_lasso": {"strength": 0.01}}))
    for bad in ({"strength": -1}, {"epochs": 0}, {"lambda": 1}):
        with pytest.raises(PlanError, match="group_lasso"):
            check_recipe({"group_lasso": bad})
    g = parse_group_lasso("0.02:3")
    assert (g.strength, g.epochs) == (0.02, 3)
    assert check_recipe({"group_lasso": {"strength": 0.01, "epochs": 3}, "epochs": 2}).total_epochs() == 5
    with pytest.raises(PlanError, match="--group-lasso"):
        parse_group_lasso("strong")
    compress(loaded.model, _plan(HEAVY), loaded.example_input)  # the plan itself is fine
