"""Per-layer sensitivity scans (issue 15, first part): each layer alone, the others untouched; sizes from the
previewer; points cached per (weights, data, layer, settings) — a second scan measures nothing, a cancelled
scan leaves only whole points; points a layer cannot take are kept with the reason."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from explorer.cli import main as cli_main
from explorer.engine.errors import Cancelled, PlanError
from explorer.engine.measure.metrics import accuracy
from explorer.engine.model.loading import load_model
from explorer.engine.measure.preview import Previewer
from explorer.engine.plan import Plan
from explorer.engine.samples import SAMPLES_DIR
from explorer.engine.sensitivity import scan


@pytest.fixture()
def cnn():
    scan.CACHE.clear()
    return load_model("digits-cnn")


def test_each_layer_alone_with_its_bytes(cnn):
    points = scan.sensitivity(cnn, layers="fc*", kinds=("sparsity",), limit=200)
    assert {p.layer for p in points} == {"fc1", "fc2"} and len(points) == 2 * len(scan.SPARSITIES)
    before = accuracy(cnn.model, cnn.eval_data.subset(200))
    for name in ("fc1", "fc2"):
        pts = [p for p in points if p.layer == name]
        assert pts[0].value == 0 and pts[0].metric == before  # nothing pruned: the model as it is
        sizes = [p.layer_bytes for p in pts]
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 5
        assert all(p.file_bytes > p.layer_bytes for p in pts)


def test_a_second_scan_measures_nothing(cnn, monkeypatch):
    first = scan.sensitivity(cnn, layers="conv2", kinds=("bits",), limit=100)
    calls = []
    real = scan._measure
    monkeypatch.setattr(scan, "_measure", lambda *a: calls.append(a) or real(*a))
    again = scan.sensitivity(cnn, layers="conv2", kinds=("bits",), limit=100)
    assert calls == [] and [p.to_dict() for p in again] == [p.to_dict() for p in first]
    scan.sensitivity(cnn, layers="conv2", kinds=("bits",), limit=101)  # other data: measured again
    assert len(calls) == len(scan.BITS)


def test_a_cancelled_scan_leaves_only_whole_points(cnn, monkeypatch):
    seen = []

    def stop_after_three(fraction, message):
        seen.append(message)
        return len(seen) <= 3

    with pytest.raises(Cancelled):
        scan.sensitivity(cnn, layers="fc1", kinds=("sparsity",), limit=100, progress=stop_after_three)
    assert len(scan.CACHE) == 3  # the three points measured before the stop, each whole
    calls = []
    real = scan._measure
    monkeypatch.setattr(scan, "_measure", lambda *a: calls.append(a) or real(*a))
    points = scan.sensitivity(cnn, layers="fc1", kinds=("sparsity",), limit=100)
    assert len(calls) == len(scan.SPARSITIES) - 3 and all(p.metric is not None for p in points)


def test_points_a_layer_cannot_take_are_kept_with_the_reason(cnn):
    base = Plan.from_dict({"default": {"quantize": {"method": "uniform", "bits": 4}}})
    points = scan.sensitivity(cnn, base, layers="fc2", kinds=("bits",), limit=50)
    one = [p for p in points if p.value == 1][0]
    assert one.metric is None and "bits must be >= 2" in one.note
    assert all(p.metric is not None for p in points if p.value >= 2)
    with pytest.raises(PlanError, match="no layer matches"):
        scan.sensitivity(cnn, layers="nope*")
    with pytest.raises(PlanError, match="unknown sensitivity kind"):
        scan.sensitivity(cnn, kinds=("depth",))


def test_the_cli_writes_csv_and_json(cnn, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert cli_main(["sensitivity", "digits-cnn", "--layers", "fc2", "--what", "sparsity,rank", "--limit", "60",
                     "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "accuracy (%) against sparsity" in text and "accuracy (%) against params kept" in text
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(scan.SPARSITIES) + len(scan.RANKS) and rows[0]["layer"] == "fc2"
    js = tmp_path / "s.json"
    assert cli_main(["sensitivity", "digits-cnn", "--layers", "fc2", "--what", "bits", "--limit", "60",
                     "-o", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["samples"] == 60 and len(data["points"]) == len(scan.BITS)


def test_with_a_base_plan_the_point_of_its_own_setting_is_the_plan(cnn):
    plan = Plan.load(SAMPLES_DIR / "digits-cnn.plan.json")  # fc1: prune 95%, 5 bits k-means
    points = scan.sensitivity(cnn, plan, layers="fc1", kinds=("sparsity", "bits"), limit=200,
                              sparsities=(0.5, 0.95), bits=(3, 5))
    pv = Previewer(cnn)
    whole = accuracy(pv.build(plan, count=False).model, cnn.eval_data.subset(200))
    own = [p for p in points if (p.kind, p.value) in (("sparsity", 0.95), ("bits", 5))]
    assert len(own) == 2 and all(p.settings == plan.settings_for("fc1").to_dict() for p in own)
    summary = pv.measure(plan)
    fc1 = next(l for l in summary["layers"] if l["name"] == "fc1")
    assert all(p.metric == whole and p.layer_bytes == (fc1["bits"]["coded"] + 7) // 8 for p in own)
    # the file: the same tensors; its manifest holds the point's plan, which spells fc1's entry out in full
    assert all(0 <= p.file_bytes - summary["size"]["file"] < 16 for p in own)
    half = next(p for p in points if p.value == 0.5)  # pruned less, still quantized as the plan has it
    assert half.settings["quantize"]["bits"] == 5 and half.settings["prune"]["amount"] == 0.5


def test_the_weights_hash_follows_every_change(cnn):
    model = cnn.model
    first = scan.fingerprint_model(model)
    assert scan.fingerprint_model(model) == first  # nothing changed: the same (not hashed again)
    with torch.no_grad():
        model.fc2.weight[0, 0] += 1.0  # in place: the version counter moves
    changed = scan.fingerprint_model(model)
    assert changed != first
    model.fc2.weight = torch.nn.Parameter(model.fc2.weight.detach().clone())  # replaced, equal values
    assert scan.fingerprint_model(model) == changed
