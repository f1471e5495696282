"""Method families are declared once (issue 13): a quantization method or a k-means initialisation
registered here, in the test, appears in the plan's validation, the compressor, the file format (written,
checked and read back), the CLI's help and the window's controls, without any of them being touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.engine.compress import compress
from explorer.engine.errors import PlanError
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan, uniform_plan
from explorer.engine.storage import fileformat as ff


def test_a_registered_method_is_everywhere(registered_methods, tmp_path):
    loaded = load_model("digits-mlp")
    plan = Plan(layers={"fc1": {"prune": {"amount": 0.5}, "quantize": {"method": "sign"}},
                        "fc2": {"quantize": {"bits": 3, "method": "kmeans", "init": "median"}}})
    # the plan's validation takes both, and says so in its summary
    assert plan.settings_for("fc1").describe() == "prune 50%, sign"
    with pytest.raises(PlanError, match="must be one of .*sign"):
        uniform_plan(quantize={"method": "nope"})
    # the compressor quantizes with it; the file stores its table, checks it and reads it back
    res = compress(loaded.model, plan, loaded.example_input)
    assert res.layers["fc1"].tensors[0].quant.method == "sign"
    path = tmp_path / "sign.cexp"
    written = ff.save(res, path, loaded)
    assert written == ff.predicted_bytes(res, loaded)
    info = {t["name"]: t["encoding"] for t in ff.summary(ff.read(path))["tensors"]}
    assert "sign 2b" in info["fc1.weight"]
    back = ff.load(path)
    for name, t in res.model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    assert len(np.unique(back.fc1.weight.detach().numpy())) == 3
    # k-means started from the made-up init: one initial centroid, one shared value plus the reserved zero
    assert res.layers["fc2"].tensors[0].quant.info["init"] == "median"


def test_the_cli_help_lists_registered_methods(registered_methods):
    from explorer.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    for verb in ("evaluate", "compress", "gui"):
        text = verbs[verb].format_help()
        for name in ("sign", "median", "kmeans", "ternary", "huffman", "rans", "filter"):
            assert name in text, (verb, name)


def test_granularities_are_declared_once_and_read_by_the_plan_and_the_amount_check(monkeypatch):
    from explorer.engine.compress import check_layer_amount
    from explorer.engine.methods import prune

    assert [g for g in prune.GRANULARITIES] == ["element", "filter", "channel", "merge"]
    assert [g.name for g in prune.GRANULARITIES.values() if g.structured] == ["filter", "channel", "merge"]
    layer = torch.nn.Conv2d(3, 8, 3)
    for name, total in (("element", 8 * 3 * 9), ("filter", 8), ("channel", 3), ("merge", 8)):
        assert prune.GRANULARITIES[name].total(layer.weight) == total
        s = Plan(layers={"c": {"prune": {"amount": total, "granularity": name}}}).settings_for("c")
        with pytest.raises(PlanError, match=f"removes all of its {total} {prune.GRANULARITIES[name].unit}"):
            check_layer_amount("c", layer, s)
    # a granularity the registry does not hold is refused by the plan, which lists the registry's
    with pytest.raises(PlanError, match="must be one of element, filter, channel, merge"):
        Plan(layers={"c": {"prune": {"amount": 0.5, "granularity": "row"}}}).settings_for("c")
    monkeypatch.setitem(prune.GRANULARITIES, "row", prune.Granularity("row", 0, "rows", "test only"))
    assert Plan(layers={"c": {"prune": {"amount": 0.5, "granularity": "row"}}}).settings_for("c").prune.granularity \
        == "row"
