"""Every plan measured in a session (issue 15, the Compare tab): one point a distinct plan, with the sizes and
accuracy its measurement gave, where it came from, bounded; the Pareto front of such points; restoring one."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import zoo

from explorer.engine.inspect import inspect_model
from explorer.engine.measure.compare import pareto_front, settings_cells, staircase
from explorer.engine.model.loading import LoadedModel
from explorer.engine.plan import LayerSettings, Plan
from explorer.session import Finetuned, MeasuredPlans, Session


def plan(amount: float) -> Plan:
    return Plan.from_dict({"layers": {"fc1": {"prune": {"amount": amount}}}})


def results(file_bytes: int) -> dict:
    return {"size": {"dense": 10_000, "coded": file_bytes - 100, "file": file_bytes},
            "layers": [{"name": "fc1", "bits": {"coded": 8 * (file_bytes - 300) + 3}},
                       {"name": "fc2", "bits": {"coded": 1600}}]}


def acc(after: float) -> dict:
    return {"before": 0.9, "after": after, "data": "test (100)", "samples": 100}


@pytest.fixture
def session():
    torch.manual_seed(0)
    model = zoo.SmallCNN().eval()
    x = torch.randn(1, 1, 8, 8)
    s = Session()
    s.points = []
    s.on("measured", s.points.append)
    s.set_model(LoadedModel(model, x, source="small-cnn", kind="factory"), inspect_model(model, x))
    return s


def measure(s: Session, file_bytes: int, after: float) -> None:
    """What the window does for the current plan: its sizes arrive, then its accuracy."""
    s.set_results(results(file_bytes))
    s.set_accuracy(acc(after), model=object())


def test_each_measured_plan_is_kept_once_with_its_measured_bytes_and_accuracy(session):
    assert session.points == [None] and len(session.measured) == 0  # cleared with the model
    measure(session, 5000, 0.88)  # no compression
    session.set_plan(plan(0.5))
    measure(session, 3000, 0.86)
    session.undo()  # the first plan again, measured again: the same point, updated
    measure(session, 5000, 0.88)
    pts = session.measured.points
    assert [(p.number, p.file_bytes, p.quality, p.origin) for p in pts] == [(1, 5000, 0.88, "hand"),
                                                                           (2, 3000, 0.86, "hand")]
    assert pts[0].label == "no compression" and pts[0].title == "#1 no compression"
    assert pts[1].layer_bytes == {"fc1": 2701, "fc2": 200} and pts[1].data == "test (100)"
    assert pts[1].metric == "accuracy" and pts[1].plan.to_dict() == plan(0.5).to_dict()
    assert session.current_key == pts[0].key
    assert len(session.points) == 4  # cleared, then one event per measurement


def test_sizes_without_accuracy_or_an_accuracy_of_another_plan_are_not_kept(session):
    session.set_results(results(5000))
    session.set_accuracy(None)  # no eval data: nothing to plot
    session.set_plan(plan(0.5))  # the accuracy of the plan before arrives late: its sizes are not this plan's
    session.set_accuracy(acc(0.8))
    assert len(session.measured) == 0
    session.set_results(results(3000))
    session.set_accuracy({"cosine": 0.97, "rel_error": 0.1, "data": "x (10)"})  # data without labels
    assert [(p.quality, p.metric) for p in session.measured.points] == [(0.97, "fidelity")]


def test_an_expected_origin_names_the_point_and_is_kept_when_measured_again(session):
    session.measured.expect(plan(0.9), "auto", "auto 8.0×")
    session.set_plan(plan(0.9))
    measure(session, 2000, 0.5)
    session.set_plan(plan(0.1))
    measure(session, 4500, 0.87)
    session.undo()
    measure(session, 2000, 0.5)
    assert [(p.origin, p.label) for p in session.measured.points] == [("auto", "auto 8.0×"),
                                                                      ("hand", "by hand")]
    with pytest.raises(ValueError):
        session.measured.expect(plan(0.9), "magic")


def test_the_history_is_bounded_and_only_the_last_fine_tuned_points_keep_their_model():
    history = MeasuredPlans(limit=3, kept=1)
    for i in range(5):
        history.record(plan(i / 10), results(1000 + i), acc(0.5))
    assert [p.file_bytes for p in history.points] == [1002, 1003, 1004]
    fts = [Finetuned(SimpleNamespace(history=[1, 2]), plan(0.5), results(900), acc(0.7)) for _ in range(2)]
    history.record(plan(0.3), results(1100), acc(0.5))  # measured again: the most recent, not dropped
    for ft in fts:
        history.record(ft.plan, ft.summary, ft.quality, ft)
    pts = history.points  # the oldest measured went; the two fine-tuned models of one plan are one point
    assert [(p.number, p.origin, p.file_bytes) for p in pts] == [(4, "hand", 1100), (5, "hand", 1004),
                                                                 (6, "fine-tuned", 900)]
    assert pts[2].finetuned is fts[1] and pts[2].label == "fine-tuned (2 epochs)"  # the latest
    history.record(plan(0.7), results(800), acc(0.6))
    assert [p.number for p in history.points] == [4, 6, 7] and history.points[1].finetuned is fts[1]
    other = Finetuned(SimpleNamespace(history=[1]), plan(0.7), results(700), acc(0.8))
    history.record(other.plan, other.summary, other.quality, other)  # the same plan, fine-tuned: its own point
    assert [(p.number, p.origin) for p in history.points] == [(6, "fine-tuned"), (7, "hand"), (8, "fine-tuned")]
    assert [p.finetuned for p in history.points if p.origin == "fine-tuned"] == [None, other]


def test_restoring_a_point_is_one_undo_step_and_a_fine_tuned_one_brings_its_model_back(session):
    measure(session, 5000, 0.88)
    first = session.measured.points[0]
    session.set_plan(plan(0.5))
    measure(session, 3000, 0.86)
    assert session.restore_measured(first) is True
    assert session.plan.to_dict() == Plan().to_dict()
    session.undo()
    assert session.plan.to_dict() == plan(0.5).to_dict()
    assert session.restore_measured(session.measured.get(session.current_key))  # current: nothing to do
    assert session.can_redo() and session.plan.to_dict() == plan(0.5).to_dict()

    result = SimpleNamespace(history=[1], compressed=SimpleNamespace(model=object()))
    ft = Finetuned(result, session.plan, results(2900), acc(0.89))
    session.set_finetuned(ft)
    tuned = session.measured.get(session.current_key)
    assert tuned.origin == "fine-tuned" and tuned.finetuned is ft and tuned.quality == 0.89
    session.restore_measured(first)
    assert session.finetuned is None
    assert session.restore_measured(tuned) is True and session.finetuned is ft and session.accuracy["after"] == 0.89
    gone = replace(tuned, finetuned=None)  # its model no longer held
    session.restore_measured(first)
    assert session.restore_measured(gone) is False
    assert session.finetuned is None and session.plan.to_dict() == plan(0.5).to_dict()


# ------------------------------------------------------------------------------------------ the front


def test_the_pareto_front_keeps_the_points_none_beats_smallest_first():
    pts = [(100, 0.50), (200, 0.70), (150, 0.40),  # (150, 0.40) is beaten by (100, 0.50)
           (200, 0.60), (300, 0.70),  # beaten by (200, 0.70): larger and no better
           (400, 0.90), (400, 0.90),  # equal: the first kept
           (50, 0.10), (500, 0.85)]
    front = pareto_front(pts)
    assert front == [(50, 0.10), (100, 0.50), (200, 0.70), (400, 0.90)]
    assert front[2] is pts[1] and front[3] is pts[5]
    assert pareto_front([]) == [] and pareto_front([(1, 0.5)]) == [(1, 0.5)]
    named = [{"b": 3, "a": 0.2}, {"b": 1, "a": 0.3}]
    assert pareto_front(named, lambda p: p["b"], lambda p: p["a"]) == [named[1]]
    xs, ys = staircase(front)
    assert list(zip(xs, ys)) == [(50, 0.10), (100, 0.10), (100, 0.50), (200, 0.50), (200, 0.70),
                                 (400, 0.70), (400, 0.90)]


def test_settings_cells_say_each_section_in_short():
    s = Plan.from_dict({"default": {"prune": {"amount": 0.95}, "quantize": {"bits": 5, "method": "kmeans",
                                                                             "init": "linear"}}}).default
    assert settings_cells(s) == ("95%", "5b kmeans/linear", "–")
    assert settings_cells(LayerSettings()) == ("–", "–", "–")
    f = Plan.from_dict({"default": {"prune": {"amount": 4, "granularity": "filter"},
                                    "lowrank": {"rank": 0.5}}}).default
    assert settings_cells(f) == ("4 filters", "–", "auto 50% of weights")
