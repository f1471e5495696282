import json

import pytest

from explorer.engine.errors import PlanError
from explorer.engine.plan import Plan, QuantSettings, uniform_plan, validate_settings


def test_json_round_trip_keeps_everything():
    plan = Plan.from_dict({
        "format": "compression-explorer-plan", "version": 1,
        "default": {"prune": {"amount": 0.9}, "quantize": {"bits": 5, "method": "kmeans", "init": "linear"}},
        "layers": {"conv*": {"quantize": {"bits": 8}}, "fc2": {"prune": None, "lowrank": {"rank": [3, 4],
                                                                                         "method": "tucker2"}}},
    })
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    assert json.loads(plan.to_json())["version"] == 1


def test_entries_merge_field_by_field_over_the_default_in_file_order():
    plan = Plan.from_dict({"default": {"prune": {"amount": 0.9}, "quantize": {"bits": 5, "init": "density"}},
                           "layers": {"conv*": {"quantize": {"bits": 8}}, "conv2": {"prune": None}}})
    s = plan.settings_for("conv2")
    assert s.quantize == QuantSettings(bits=8, init="density")  # init inherited from the default
    assert s.prune is None  # null turns the section off
    assert plan.settings_for("conv1").prune.amount == 0.9
    assert plan.settings_for("fc1").quantize.bits == 5


@pytest.mark.parametrize("raw, fragment", [
    ({"prune": {"amount": 1.5}}, "prune.amount"),
    ({"prune": {"amount": -3}}, "prune.amount"),
    ({"prune": {"amount": "lots"}}, "prune.amount"),
    ({"prune": {"granularity": "rows"}}, "prune.granularity"),
    ({"quantize": {"bits": 9}}, "quantize.bits"),
    ({"quantize": {"bits": 0}}, "quantize.bits"),
    ({"quantize": {"bits": 4.0}}, "quantize.bits"),
    ({"quantize": {"method": "magic"}}, "quantize.method"),
    ({"quantize": {"init": "random"}}, "quantize.init"),
    ({"quantize": {"bits": 1, "method": "uniform"}}, "symmetric"),
    ({"lowrank": {"rank": 0}}, "lowrank.rank"),
    ({"lowrank": {"rank": 1.5}}, "lowrank.rank"),
    ({"lowrank": {"rank": [1, 2, 3]}}, "lowrank.rank"),
    ({"lowrank": {"method": "qr"}}, "lowrank.method"),
    ({"quantize": {"colour": 3}}, "quantize.colour"),
    ({"pruning": {}}, "pruning"),
    ({"prune": {"amount": 0.5}, "quantize": {"method": "binary"}}, "binary"),
])
def test_invalid_settings_name_the_layer_and_field(raw, fragment):
    with pytest.raises(PlanError) as err:
        Plan(layers={"fc1": raw})
    assert "fc1" in str(err.value) and fragment in str(err.value)


def test_entry_that_matches_no_layer_is_an_error():
    plan = Plan(layers={"features.*": {"prune": {"amount": 0.5}}})
    with pytest.raises(PlanError, match="features"):
        plan.resolve(["fc1", "fc2"])
    assert plan.resolve(["features.0", "fc1"])["features.0"].prune.amount == 0.5


def test_bad_files(tmp_path):
    with pytest.raises(PlanError, match="no such plan file"):
        Plan.load(tmp_path / "missing.json")
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(PlanError, match="bad.json.*not valid JSON"):
        Plan.load(p)
    p.write_text(json.dumps({"version": 99}))
    with pytest.raises(PlanError, match="version 99"):
        Plan.load(p)
    p.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PlanError, match="not a compression plan"):
        Plan.load(p)


def test_save_is_atomic_and_loads_back(tmp_path):
    plan = uniform_plan(prune={"amount": 0.5}, quantize={"bits": 4, "method": "uniform", "per_channel": True})
    path = tmp_path / "p.json"
    plan.save(path)
    assert Plan.load(path).to_dict() == plan.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_counts_and_fractions_are_distinct():
    assert validate_settings("x", {"prune": {"amount": 3}}).prune.amount == 3
    assert validate_settings("x", {"prune": {"amount": 0.3}}).prune.amount == 0.3
    with pytest.raises(PlanError):
        validate_settings("x", {"prune": {"amount": True}})
