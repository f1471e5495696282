"""The Concepts tab (issue 18), headless on both samples: every view shows data, its explanation is the
engine's own (computed again here, independently of the window), a view out of sight does no work, a newer
request drops an older one, a click on the graph selects the layer, the "?" says the formula, and the teacher
view compares the model before and after fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pytest

from explorer.engine.measure.evaluate import quality, summarize
from explorer.engine.plan import Plan
from explorer.engine.teach.help import HELP
from explorer.engine.teach.layer import LAYER_VIEWS, layer_concept
from explorer.engine.teach.model import graph_values, model_graph, outputs_view, pipeline_view

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def _open(make_window, settle, qtbot, sample: str):
    win = make_window(sample)
    win.load_plan(str(SAMPLES / f"{sample}.plan.json"))
    settle(win)
    return win


def _show(win, qtbot, settle, key: str):
    """Bring page ``key`` of the Concepts tab into sight and wait for its explanation."""
    win.concepts.view.select(key)  # out of sight: no work yet
    win.tabs.setCurrentWidget(win.concepts.view)
    page = win.concepts.view.pages[key]
    qtbot.waitUntil(lambda: win.concepts.shown_for == win.concepts.wanted(), timeout=30_000)
    settle(win)
    return page


@pytest.mark.parametrize("sample", ["digits-cnn", "digits-mlp"])
def test_every_view_shows_the_engines_numbers_on_both_samples(make_window, settle, qtbot, sample):
    win = _open(make_window, settle, qtbot, sample)
    s = win.session
    for name in (s.layer_names[0], s.layer_names[-1]):
        s.select([name])
        for key in LAYER_VIEWS:
            page = _show(win, qtbot, settle, key)
            expected = layer_concept(key, s.loaded, s.info, s.previewer, name, s.settings(name)).explain()
            assert page.explanation.text() == expected, (key, name)
            assert name in expected
            assert page.state.text() == ""
    page = _show(win, qtbot, settle, "pipeline")
    assert page.explanation.text() == pipeline_view(s.results).explain()
    assert f"{s.results['size']['dense'] / s.results['size']['file']:.1f}×" in page.explanation.text()
    bars = [b for b in page.plot.bars if len(b.opts["height"])]
    assert len(bars) == len(s.layer_names) + 1  # a block per layer, and the biases
    labels = [t.toPlainText() for t in page.plot.labels if t.isVisible()]
    assert len(labels) == 5 and labels[-1].endswith(f"{s.results['size']['dense'] / s.results['size']['file']:.1f}×")
    page = _show(win, qtbot, settle, "graph")
    graph = model_graph(s.loaded.model, s.info)
    values = graph_values(s.results, "ratio")
    assert page.explanation.text() == graph.explain(values, "ratio")
    assert len(page.plot.layers.data) == len(s.layer_names)
    page = _show(win, qtbot, settle, "outputs")
    student = s.previewer.build(s.plan, count=False).model
    expected = outputs_view({"teacher (original)": s.loaded.model, "compressed (this plan)": student},
                            s.loaded.eval_data).explain()
    assert page.explanation.text() == expected
    assert "agrees with the teacher" in expected


def test_views_out_of_sight_do_no_work_and_a_newer_request_drops_the_older(make_window, settle, qtbot):
    win = _open(make_window, settle, qtbot, "digits-cnn")
    submitted = []
    real = win.workers.submit

    def spy(channel, *args, **kwargs):
        submitted.append(channel)
        return real(channel, *args, **kwargs)

    win.workers.submit = spy
    win.session.update_layers(["fc1"], {"prune": {"amount": 0.8}})  # the histogram tab is in sight
    settle(win)
    assert "concepts" not in submitted
    page = _show(win, qtbot, settle, "quantization")
    assert submitted.count("concepts") == 1  # the one page in sight, not the seven others
    assert all(win.concepts.view.pages[k].explanation.text() == "" for k in LAYER_VIEWS if k != "quantization")
    before = win.workers.dropped
    win.session.select(["conv2"])
    win.session.select(["fc1"])  # the conv2 request is superseded before it is shown
    settle(win)
    qtbot.waitUntil(lambda: win.concepts.shown_for == win.concepts.wanted(), timeout=30_000)
    assert page.explanation.text().startswith("fc1")
    assert win.workers.dropped >= before
    win.tabs.setCurrentWidget(win.layer_view)
    submitted.clear()
    win.session.select(["conv1"])
    settle(win)
    assert "concepts" not in submitted


def test_a_click_on_the_graph_selects_the_layer_and_the_help_names_the_formula(make_window, settle, qtbot):
    win = _open(make_window, settle, qtbot, "digits-cnn")
    page = _show(win, qtbot, settle, "graph")
    spot = next(p for p in page.plot.layers.points() if p.data() == "conv2")
    page.plot._clicked(page.plot.layers, [spot])
    assert win.session.current == "conv2"
    assert win.table.selected_names() == ["conv2"]
    page.help.click()
    qtbot.waitUntil(lambda: page.box is not None and page.box.isVisible())
    assert HELP["graph"].formula in page.box.text() and HELP["graph"].reference in page.box.text()
    page.box.close()
    page = _show(win, qtbot, settle, "granularity")
    page.plot.granularity_chosen.emit("filter")  # the page's own choice, at the illustration amount
    qtbot.waitUntil(lambda: win.concepts.shown_for == win.concepts.wanted(), timeout=30_000)
    assert "filter pruning at 50%" in page.explanation.text() and "fc1 loses 25 of its 50" in page.explanation.text()


def test_the_teacher_view_compares_before_and_after_fine_tuning(make_window, settle, qtbot):
    from explorer.engine.finetune.data import load_train_data
    from explorer.engine.finetune.recipe import check_recipe
    from explorer.engine.finetune.trainer import finetune
    from explorer.session import Finetuned

    win = _open(make_window, settle, qtbot, "digits-mlp")
    s = win.session
    plan = Plan.load(str(SAMPLES / "digits-mlp.deep-compression.plan.json"))
    s.set_plan(plan)
    settle(win)
    train = load_train_data("digits")
    result = finetune(s.loaded, plan, train, recipe=check_recipe({"epochs": 1, "lr": 0.003}))
    s.set_finetuned(Finetuned(result, plan, summarize(result.compressed, s.loaded),
                              quality(s.loaded, result.compressed.model)))
    settle(win)
    page = _show(win, qtbot, settle, "outputs")
    models = {"teacher (original)": s.loaded.model,
              "compressed, before fine-tuning": s.previewer.build(plan, count=False).model,
              "fine-tuned": result.compressed.model}
    view = outputs_view(models, s.loaded.eval_data)
    assert page.explanation.text() == view.explain()
    assert view.accuracy["fine-tuned"] > view.accuracy["compressed, before fine-tuning"]


def test_the_controller_keeps_up_with_the_window(make_window, settle, qtbot):
    """A refused granularity keeps its chooser; new eval data recomputes the teacher page; the pipeline says
    it is measuring until the new plan's numbers are in; a page that computes nothing cancels the job before."""
    from explorer.engine.model.data import EvalData

    win = _open(make_window, settle, qtbot, "digits-cnn")
    s = win.session
    s.select(["fc2"])  # the output layer: its filters cannot go
    page = _show(win, qtbot, settle, "granularity")
    page.plot.granularity_chosen.emit("filter")
    qtbot.waitUntil(lambda: "does not apply" in page.explanation.text(), timeout=30_000)
    assert page.plot.isVisible() and page.plot.choice.isVisible() and not page.plot.plot.isVisible()
    page.plot.granularity_chosen.emit("element")
    qtbot.waitUntil(lambda: page.plot.plot.isVisible(), timeout=30_000)

    page = _show(win, qtbot, settle, "outputs")
    assert "first 256 inputs" in page.explanation.text()
    ev = s.loaded.eval_data
    s.set_eval_data(EvalData(ev.inputs[:40], ev.labels[:40], "forty digits"))
    settle(win)
    qtbot.waitUntil(lambda: "first 40 inputs of forty digits" in page.explanation.text(), timeout=30_000)

    page = _show(win, qtbot, settle, "pipeline")
    shown = page.explanation.text()
    win.session.update_layers(["fc1"], {"prune": {"amount": 0.5}})  # not measured yet, at this instant
    assert not s.results_current and page.state.text() == "measuring the plan…"
    assert page.explanation.text() == shown
    settle(win)
    assert page.explanation.text() == pipeline_view(s.results).explain() != shown and page.state.text() == ""

    s.select(["fc1"])
    _show(win, qtbot, settle, "storage")
    win.concepts.view.select("quantization")  # a long job starts …
    assert win.workers.busy("concepts")
    win.concepts.view.select("pipeline")  # … and a page drawn from the results replaces it
    assert not win.workers.busy("concepts") and win.concepts.pending_for is None
