"""The Qt-free session behind the window: plan edits merged per layer and validated before anything
changes, undo/redo, selection and the events views listen to."""

import pytest
import torch
import zoo

from explorer.engine.errors import PlanError
from explorer.engine.inspect import inspect_model
from explorer.engine.model.loading import LoadedModel
from explorer.engine.plan import Plan
from explorer.session import Session


@pytest.fixture
def session():
    torch.manual_seed(0)
    model = zoo.SmallCNN().eval()
    x = torch.randn(1, 1, 8, 8)
    loaded = LoadedModel(model, x, source="small-cnn", kind="factory")
    s = Session()
    s.events = []
    for event in ("model", "plan", "selection", "results"):
        s.on(event, lambda e=event: s.events.append(e))
    s.set_model(loaded, inspect_model(model, x))
    return s


def test_set_model_starts_on_the_largest_layer_with_an_empty_plan(session):
    assert session.events == ["model", "plan", "selection"]
    assert session.layer_names == ["conv1", "conv2", "fc1", "fc2"]
    assert session.selection == ["fc1"] and session.current == "fc1"  # 64x32 weights, the most
    assert session.plan.to_dict() == Plan().to_dict()
    assert not session.can_undo() and not session.can_redo()
    assert session.results is None and session.accuracy is None


def test_update_layers_merges_sections_field_by_field(session):
    session.update_layers(["fc1"], {"prune": {"amount": 0.5}})
    session.update_layers(["fc1"], {"quantize": {"bits": 4}})
    session.update_layers(["fc1"], {"prune": {"granularity": "filter"}})
    s = session.settings("fc1")
    assert (s.prune.amount, s.prune.granularity) == (0.5, "filter")
    assert (s.quantize.bits, s.quantize.method) == (4, "kmeans")
    session.update_layers(["fc1"], {"quantize": None})  # None turns a section off
    assert session.settings("fc1").quantize is None
    assert session.settings("fc1").prune.amount == 0.5
    assert session.settings("fc2").is_empty  # other layers untouched
    assert session.events.count("plan") == 1 + 4


def test_update_layers_applies_to_every_named_layer_over_the_plan_default(session):
    session.set_plan(Plan.from_dict({"default": {"quantize": {"bits": 5, "method": "kmeans"}}}))
    session.update_layers(["conv1", "fc2"], {"prune": {"amount": 0.3}, "quantize": {"bits": 3}})
    for name in ("conv1", "fc2"):
        s = session.settings(name)
        assert s.prune.amount == 0.3 and s.quantize.bits == 3
    assert session.settings("fc1").quantize.bits == 5 and session.settings("fc1").prune is None


@pytest.mark.parametrize("patch, words", [
    ({"prune": {"amount": 1.5}}, ["fc1", "amount"]),
    ({"quantize": {"bits": 9}}, ["fc1", "bits"]),
    ({"quantize": {"method": "magic"}}, ["fc1", "method"]),
    ({"prune": {"colour": "red"}}, ["fc1", "colour"]),
    ({"pruning": {"amount": 0.5}}, ["fc1", "pruning"]),
])
def test_an_invalid_patch_raises_naming_the_layer_and_changes_nothing(session, patch, words):
    session.update_layers(["fc1"], {"prune": {"amount": 0.2}})
    before, events = session.plan.to_dict(), list(session.events)
    with pytest.raises(PlanError) as err:
        session.update_layers(["fc1"], patch)
    assert all(w in str(err.value) for w in words)
    assert session.plan.to_dict() == before
    assert session.events == events
    session.undo()
    assert session.settings("fc1").is_empty  # the failed edit left no undo step


def test_a_patch_valid_for_one_layer_but_not_another_changes_neither(session):
    session.update_layers(["fc2"], {"quantize": {"method": "binary"}})
    before = session.plan.to_dict()
    # binary weights have no zero level, so fc2 cannot also be element-pruned; fc1 could
    with pytest.raises(PlanError, match="fc2"):
        session.update_layers(["fc1", "fc2"], {"prune": {"amount": 0.5}})
    assert session.plan.to_dict() == before


def test_a_patch_is_checked_against_the_patterns_that_also_match_the_layer(session):
    session.set_plan(Plan.from_dict({"layers": {"fc*": {"quantize": {"method": "binary"}}}}))
    with pytest.raises(PlanError, match="fc1"):
        session.update_layers(["fc1"], {"prune": {"amount": 0.5}})
    assert session.settings("fc1").prune is None  # the plan stays usable: every layer still resolves
    session.update_layers(["fc1"], {"prune": {"amount": 0.5}, "quantize": {"method": "ternary"}})
    assert session.settings("fc1").quantize.method == "ternary"


def test_an_edit_wins_over_a_later_pattern_that_matches_the_layer(session):
    session.set_plan(Plan.from_dict({"layers": {
        "fc1": {"prune": {"amount": 0.2}, "quantize": {"bits": 8}},
        "fc*": {"prune": {"amount": 0.9}, "quantize": {"bits": 4}},
    }}))
    assert session.settings("fc1").prune.amount == 0.9  # as written, the pattern comes last and wins
    session.update_layers(["fc1"], {"prune": {"amount": 0.3}})
    s = session.settings("fc1")
    assert s.prune.amount == 0.3  # the slider moved: the layer follows it
    assert s.quantize.bits == 4  # what it had before, untouched by the edit
    assert session.settings("fc2").prune.amount == 0.9
    session.undo()
    assert session.settings("fc1").prune.amount == 0.9


def test_undo_and_redo(session):
    plans = [session.plan.to_dict()]
    for amount in (0.2, 0.4, 0.6):
        session.update_layers(["fc1"], {"prune": {"amount": amount}})
        plans.append(session.plan.to_dict())
    assert session.can_undo() and not session.can_redo()
    session.undo()
    session.undo()
    assert session.plan.to_dict() == plans[1] and session.can_redo()
    session.redo()
    assert session.plan.to_dict() == plans[2]
    session.undo()
    session.undo()
    assert session.plan.to_dict() == plans[0] and not session.can_undo()
    session.undo()  # nothing to undo: no change, no event
    assert session.plan.to_dict() == plans[0]
    session.redo()
    session.update_layers(["fc2"], {"prune": {"amount": 0.1}})  # a new edit forgets the redo steps
    assert not session.can_redo()
    session.undo()
    assert session.plan.to_dict() == plans[1]


def test_a_change_to_the_same_plan_is_not_an_undo_step(session):
    session.update_layers(["fc1"], {"prune": {"amount": 0.3}})
    n = session.events.count("plan")
    session.update_layers(["fc1"], {"prune": {"amount": 0.3}})
    session.set_plan(Plan.from_dict(session.plan.to_dict()))
    assert session.events.count("plan") == n
    session.undo()
    assert session.settings("fc1").is_empty and not session.can_undo()


def test_set_plan_without_recording_and_a_new_model_clear_history(session):
    session.set_plan(Plan.from_dict({"default": {"prune": {"amount": 0.5}}}), record=False)
    assert session.settings("fc2").prune.amount == 0.5 and not session.can_undo()
    session.update_layers(["fc1"], {"prune": {"amount": 0.1}})
    session.set_results({"size": {"dense": 1}})
    session.set_model(session.loaded, session.info, Plan.from_dict({"default": {"quantize": {"bits": 6}}}))
    assert not session.can_undo() and not session.can_redo()
    assert session.results is None and session.settings("fc1").quantize.bits == 6


def test_selection_keeps_known_layers_and_emits_only_on_change(session):
    session.events.clear()
    session.select(["fc2", "nope", "conv1"])
    assert session.selection == ["fc2", "conv1"] and session.current == "fc2"
    session.select(["fc2", "conv1"])
    assert session.events == ["selection"]
    session.select([])
    assert session.current is None and session.events == ["selection", "selection"]


def test_results_and_accuracy_emit_results(session):
    session.events.clear()
    session.set_results({"size": {"dense": 10}})
    session.set_accuracy({"before": 0.9, "after": 0.8})
    assert session.events == ["results", "results"]
    assert session.results == {"size": {"dense": 10}} and session.accuracy["after"] == 0.8


def test_an_empty_session_has_no_layers():
    s = Session()
    assert s.layer_names == [] and s.current is None
    s.select(["fc1"])
    assert s.selection == []


def test_undo_history_is_capped_at_the_limit_dropping_the_oldest(session):
    from explorer.session import UNDO_LIMIT

    assert UNDO_LIMIT == 1000
    plans = [session.plan.to_dict()]
    for i in range(UNDO_LIMIT + 25):  # 1,025 edits: the first 25 steps fall off the end
        session.update_layers(["fc1"], {"prune": {"amount": round(0.01 + (i % 90) / 100, 2)},
                                        "quantize": {"bits": 1 + i // 90 % 8}})
        plans.append(session.plan.to_dict())
    assert len(session._undo) == UNDO_LIMIT
    session.undo()  # undo still works, one step at a time
    assert session.plan.to_dict() == plans[-2] and session.can_redo()
    session.redo()
    assert session.plan.to_dict() == plans[-1] and len(session._undo) == UNDO_LIMIT
    undone = 0
    while session.can_undo():
        session.undo()
        undone += 1
    assert undone == UNDO_LIMIT
    # the oldest plan still reachable is the one after the 25 dropped steps, not the empty plan
    assert session.plan.to_dict() == plans[-1 - UNDO_LIMIT] == plans[25]
    assert session.plan.to_dict() != plans[0]
    session.undo()  # nothing left: no change
    assert session.plan.to_dict() == plans[25]
    # redo is unchanged: every undone step comes back, in order
    for expected in plans[26:]:
        session.redo()
        assert session.plan.to_dict() == expected
    assert not session.can_redo() and len(session._undo) == UNDO_LIMIT


def test_redo_beyond_the_limit_keeps_undo_at_the_limit(session):
    from explorer.session import UNDO_LIMIT

    for i in range(UNDO_LIMIT):
        session.update_layers(["fc2"], {"prune": {"amount": round(0.01 + (i % 95) / 100, 2)},
                                        "quantize": {"bits": 1 + i // 95 % 8}})
    session.undo()
    session.undo()
    assert len(session._undo) == UNDO_LIMIT - 2
    session.redo()
    session.redo()
    assert len(session._undo) == UNDO_LIMIT
    session.update_layers(["fc2"], {"prune": {"amount": 0.97}})  # one more edit: still at the limit
    assert len(session._undo) == UNDO_LIMIT and not session.can_redo()
    session.undo()
    assert session.settings("fc2").prune.amount != 0.97


# ------------------------------------------------------------------------------ a fine-tuned model


def fake_finetuned(session, plan=None, after=0.9):
    """A Finetuned as the window makes it (the engine's result, its summary and measured quality), without
    training: the session only holds it."""
    from types import SimpleNamespace

    from explorer.session import Finetuned

    history = [SimpleNamespace(epoch=1, phase="retrain", loss=0.5, val=after, seconds=0.1)]
    result = SimpleNamespace(compressed=SimpleNamespace(model=torch.nn.Identity()), history=history,
                             metric="accuracy", before=0.1, best=after, best_epoch=1, cancelled=False)
    return Finetuned(result, plan or session.plan, {"size": {"dense": 10, "file": 2}},
                     {"before": 0.95, "after": after, "data": "d", "samples": 3})


def test_a_fine_tuned_model_is_current_until_undone(session):
    session.on("finetuned", lambda: session.events.append("finetuned"))
    session.update_layers(["fc1"], {"prune": {"amount": 0.9}})
    plan = session.plan.to_dict()
    session.set_results({"size": {"dense": 10, "file": 5}})
    session.set_accuracy({"before": 0.95, "after": 0.2}, model="plan's model")
    session.events.clear()
    ft = fake_finetuned(session)
    session.set_finetuned(ft)
    assert session.events == ["finetuned", "plan", "results"]
    assert session.finetuned is ft and session.plan.to_dict() == plan
    assert session.results is ft.summary and session.accuracy["after"] == 0.9
    assert session.compressed_model is ft.compressed.model
    assert ft.describe() == "fine-tuned model (1 epoch; best: epoch 1, validation accuracy 90.00%)"

    session.events.clear()
    session.undo()  # back to before fine-tuning: the same plan, on the original weights, measured again
    assert session.events == ["finetuned", "plan"]
    assert session.finetuned is None and session.plan.to_dict() == plan and session.compressed_model is None
    session.redo()
    assert session.finetuned is ft and session.accuracy["after"] == 0.9 and not session.can_redo()
    session.undo()
    session.undo()  # and the edit before it
    assert session.settings("fc1").is_empty and session.finetuned is None


def test_a_new_plan_sets_the_fine_tuned_model_aside_and_undo_brings_it_back(session):
    session.on("finetuned", lambda: session.events.append("finetuned"))
    ft = fake_finetuned(session)
    session.set_finetuned(ft)
    session.set_plan(Plan.from_dict(session.plan.to_dict()))  # the same plan: it stays
    assert session.finetuned is ft
    session.events.clear()
    session.update_layers(["fc2"], {"prune": {"amount": 0.5}})
    assert session.events == ["finetuned", "plan"] and session.finetuned is None
    session.undo()
    assert session.finetuned is ft and session.settings("fc2").is_empty and session.accuracy["after"] == 0.9
    session.redo()
    assert session.finetuned is None and session.settings("fc2").prune.amount == 0.5


def test_a_fine_tuned_model_brings_its_own_plan_and_a_new_model_forgets_it(session):
    trained = Plan.from_dict({"default": {"prune": {"amount": 0.3}}})
    ft = fake_finetuned(session, plan=trained)
    session.set_finetuned(ft)  # e.g. "Use this model" after the plan changed during training
    assert session.plan is trained and session.finetuned is ft
    session.undo()
    assert session.plan.to_dict() == Plan().to_dict() and session.finetuned is None
    session.redo()
    session.set_model(session.loaded, session.info)
    assert session.finetuned is None and not session.can_undo() and session.results is None
