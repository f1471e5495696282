"""Automatic allocation (issue 15): a size target met within one step of each layer's grid, the measured
check with max_drop, the plan it writes measuring as reported."""

from __future__ import annotations

import pytest

from explorer.cli import main as cli_main
from explorer.engine.errors import PlanError
from explorer.engine.measure.metrics import accuracy
from explorer.engine.measure.preview import Previewer
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan
from explorer.engine.sensitivity import auto, scan


@pytest.fixture(scope="module")
def mlp():
    return load_model("digits-mlp")


def test_a_size_target_is_met_within_one_step_of_each_layers_grid(mlp):
    r = auto.auto_plan(mlp, target_bytes=30_000, limit=200)
    assert r.file_bytes <= r.target_bytes == 30_000 and r.met
    pv = Previewer(mlp)
    assert pv.measure(r.plan)["size"]["file"] == r.file_bytes  # measured, as the file would be
    points = scan.sensitivity(mlp, kinds=("sparsity", "bits"), limit=200, previewer=pv,
                              sparsities=auto.AUTO_SPARSITIES)
    cands = auto.candidates(pv, points, limit=200)
    chosen = {n: next(c for c in cands[n] if (c[2], c[3]) == r.choices[n][:2]) for n in cands}
    total = sum(c[0] for c in chosen.values())
    slack = r.target_bytes - r.file_bytes
    for n, rows in cands.items():
        bigger = [c for c in rows if c[0] > chosen[n][0]]  # the next step up the layer's (Pareto) grid
        if bigger:
            assert total - chosen[n][0] + bigger[0][0] > total + slack, n  # would not fit


def test_with_max_drop_the_measured_drop_decides(mlp, tmp_path, capsys):
    out = tmp_path / "auto.json"
    assert cli_main(["auto", "digits-mlp", "--target-ratio", "40", "--max-drop", "1", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "not met" in text and "the closest this model allows" in text  # 40x is beyond it without retraining
    plan = Plan.load(out)
    data = mlp.eval_data
    after = accuracy(Previewer(mlp).build(plan, count=False).model, data)
    before = accuracy(mlp.model, data)
    assert 100 * (before - after) <= 1.0
    assert f"{before:.2%} -> {after:.2%} measured" in text


def test_targets_are_checked(mlp):
    with pytest.raises(PlanError, match="one target"):
        auto.auto_plan(mlp)
    with pytest.raises(PlanError, match="above 1"):
        auto.auto_plan(mlp, target_ratio=0.5)


def test_a_macs_target_is_met_as_measured(mlp):
    r = auto.auto_plan(mlp, target_macs=40_000, limit=200)
    assert r.cost == "macs" and r.target_macs == 40_000 and r.target_bytes is None
    summary = Previewer(mlp).measure(r.plan)
    assert r.macs == summary["macs"]["effective"] <= 40_000 < r.dense_macs and r.met
    assert r.file_bytes == summary["size"]["file"]
    assert sum(c[2] for c in r.choices.values()) <= 40_000  # the layers' MACs, the knapsack's cost


def test_a_drop_alone_gives_a_small_plan_within_it(mlp):
    r = auto.auto_plan(mlp, max_drop=0.5, limit=200)
    assert r.met and r.target_bytes is None and r.file_bytes < r.dense_bytes / 5
    assert 100 * (r.accuracy_before - r.accuracy_after) <= 0.5
    sub = mlp.eval_data.subset(200)
    assert accuracy(Previewer(mlp).build(r.plan, count=False).model, sub) == r.accuracy_after


def test_absurd_targets_are_refused(mlp):
    for kw, match in (({"target_bytes": 0}, "positive"), ({"target_macs": -5}, "positive"),
                      ({"max_drop": -1}, "0 or more"), ({"target_ratio": 10, "target_bytes": 5}, "one target")):
        with pytest.raises(PlanError, match=match):
            auto.auto_plan(mlp, **kw)


def test_a_second_search_measures_no_candidate_again(mlp, monkeypatch):
    pv = Previewer(mlp)
    points = scan.sensitivity(mlp, kinds=("sparsity", "bits"), limit=200, previewer=pv, sparsities=(0.0, 0.5),
                              bits=(4, 8))
    first = auto.candidates(pv, points, method="linear", limit=200)
    calls = []
    monkeypatch.setattr(auto, "candidate_cost", lambda *a: calls.append(a))
    assert auto.candidates(Previewer(mlp), points, method="linear", limit=200) == first and calls == []


def test_every_candidate_on_a_front_is_measured_pruned_and_quantized(mlp):
    pv = Previewer(mlp)
    points = scan.sensitivity(mlp, kinds=("sparsity", "bits"), limit=200, previewer=pv,
                              sparsities=(0.0, 0.5, 0.9, 0.98), bits=(1, 2, 4, 8))
    cands = auto.candidates(pv, points, limit=200)
    sub = mlp.eval_data.subset(200)
    base = accuracy(mlp.model, sub)
    for n, rows in cands.items():
        for _, loss, s, b in rows:
            entry = {"prune": {"amount": s} if s else None, "quantize": {"bits": b, "method": "kmeans"}}
            got = accuracy(pv.build(Plan(layers={n: entry}), count=False).model, sub)
            assert loss == pytest.approx(max(base - got, 0.0) + auto.TIE_BREAK * ((8 - b) + 10 * s)), (n, s, b)
