import json
import os

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


# ----------------------------------------------------------------- issue 12, item 4: unbounded plan readers


def _plan_text(default: str) -> str:
    return '{"format": "compression-explorer-plan", "version": 1, "default": ' + default + '}'


HOSTILE_PLANS = {  # name -> (file content or a special path, what the one error line says)
    "dev-zero": ("/dev/zero", "not a regular file"),
    "directory": ("<dir>", "is a directory"),
    "fifo": ("<fifo>", "not a regular file"),
    "missing": ("<missing>", "no such plan file"),
    "nested-10000": ('{"layers": {"fc1": ' + "[" * 10000 + "]" * 10000 + "}}", "nested 10,00"),
    "nested-in-a-string-is-fine": (None, None),
    "int-5000-digits": (_plan_text('{"prune": {"amount": ' + "9" * 5000 + "}}"), "5,000 digits"),
    "seed-negative": (_plan_text('{"quantize": {"seed": -1}}'), "seed must be an integer from 0 to 4294967295"),
    "seed-2**32": (_plan_text('{"quantize": {"seed": 4294967296}}'), "seed must be an integer from 0"),
    "count-2**41": (_plan_text('{"prune": {"amount": 2199023255552}}'), "must be a count in 0.."),
    "rank-2**41": (_plan_text('{"lowrank": {"rank": 2199023255552}}'), "rank must be an integer >= 1"),
    "nan": (_plan_text('{"prune": {"amount": NaN}}'), "NaN is not a JSON number"),
    "infinity": (_plan_text('{"prune": {"amount": -Infinity}}'), "-Infinity is not a JSON number"),
    "float-overflow": (_plan_text('{"prune": {"amount": 1e400}}'),
                       "field default.prune.amount: 1e400 is beyond the largest float"),
    "not-utf8": (b'{"description": "\xff\xfe"}', "not UTF-8"),
    "too-large": ('{"description": "' + "x" * (5 << 20) + '"}', "too large for a plan"),
    "too-many-entries": ('{"layers": {' + ",".join(f'"l{i}": {{}}' for i in range(10_001)) + "}}",
                         "10,001 layer entries"),
    "truncated": (_plan_text('{"prune": {"amount": 0.5}'), "not valid JSON"),
    "empty": ("", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PLANS))
def test_plan_readers_are_bounded(case, tmp_path, capsys):
    """Issue 12, item 4: ``--plan /dev/zero`` read until 7 GB and a MemoryError; a plan nested 10,000 deep
    ended in RecursionError; a 5,000-digit integer and a seed of -1 in ValueError tracebacks (exit 1).
    Plans are regular files under a size cap, parsed with depth and number limits, and every refusal is
    one ``error:`` line with exit status 2."""
    import threading

    from explorer.cli import main

    content, said = HOSTILE_PLANS[case]
    if content is None:  # brackets inside strings are not nesting
        path = tmp_path / "plan.json"
        path.write_text('{"description": "' + "[" * 10000 + '"}')
        assert Plan.load(path).description.startswith("[[[")
        return
    if content == "/dev/zero":
        path = "/dev/zero"
    elif content == "<dir>":
        path = tmp_path
    elif content == "<fifo>":
        path = tmp_path / "pipe.json"
        os.mkfifo(path)
    elif content == "<missing>":
        path = tmp_path / "missing.json"
    else:
        path = tmp_path / "plan.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result: list = []
    worker = threading.Thread(target=lambda: result.append(main(["evaluate", "digits-mlp", "--plan", str(path)])),
                              daemon=True)
    worker.start()
    worker.join(120)
    if worker.is_alive() and content == "<fifo>":
        os.close(os.open(path, os.O_WRONLY))  # release the blocked reader before failing
    assert not worker.is_alive(), "reading the plan blocked"
    err = capsys.readouterr().err
    assert result == [2], err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and said in lines[0], err
    with pytest.raises(PlanError, match=said.replace("(", r"\(")):
        Plan.load(path)


@pytest.mark.parametrize("section,key", [("prune", "granularity"), ("quantize", "method"), ("quantize", "init"),
                                         ("lowrank", "method")])
@pytest.mark.parametrize("value", [["element"], {"a": 1}, 3, None])
def test_a_registry_name_that_is_not_a_string_is_refused_in_one_line(section, key, value):
    """Found by the extended probe after the registries became dicts: a list where a name goes raised
    TypeError (unhashable) in the membership test instead of the plan's error."""
    entry = {"prune": {"amount": 0.5}, "quantize": {"bits": 4}, "lowrank": {"rank": 0.5}}[section]
    entry = dict(entry, **{key: value})
    with pytest.raises(PlanError, match=key):
        Plan.from_dict({"layers": {"fc1": {section: entry}}}).settings_for("fc1")
