"""The fine-tuning dialog's FitNets field (issue 20): what it says is the recipe's hints, and back."""

from explorer.engine.finetune.recipe import check_recipe
from explorer.gui.qt_finetune import RecipeForm


def test_the_hints_field_is_the_recipes_hints_both_ways(qtbot):
    form = RecipeForm()
    qtbot.addWidget(form)
    assert form.recipe().hints is None  # empty: no hints
    form.hints.setText("conv2, conv1=conv1")
    form.hint_weight.setValue(0.25)
    h = form.recipe().hints
    assert h.layers == (("conv2", "conv2"), ("conv1", "conv1")) and h.weight == 0.25
    form.load(check_recipe({"hints": {"layers": [["fc1", "fc1"], ["conv2", "conv1"]], "weight": 2.0}}))
    assert form.hints.text() == "fc1, conv2=conv1" and form.hint_weight.value() == 2.0
    assert form.recipe().hints.layers == (("fc1", "fc1"), ("conv2", "conv1"))


def test_the_group_lasso_fields_and_the_plot_of_the_groups_norms(qtbot):
    from explorer.engine.finetune.trainer import EpochRecord
    from explorer.gui.qt_finetune import TrainingPlots

    form = RecipeForm()
    qtbot.addWidget(form)
    assert form.recipe().group_lasso is None and not form.ssl_strength.isEnabled()
    form.ssl.setChecked(True)
    form.ssl_strength.setValue(0.03)
    form.ssl_epochs.setValue(5)
    g = form.recipe().group_lasso
    assert (g.strength, g.epochs) == (0.03, 5) and form.recipe().total_epochs() == 4 + 5
    plots = TrainingPlots()
    qtbot.addWidget(plots)
    plots.reset(3, 2)
    assert not plots.groups.isVisibleTo(plots)
    plots.add(EpochRecord(1, "group lasso", 1.0, 0.9, 0.1, None, {"a": [1.0, 0.5, 0.2], "b": [1.0, 1.0]}))
    plots.add(EpochRecord(2, "group lasso", 0.8, 0.9, 0.1, None, {"a": [0.9, 0.005, 0.001], "b": [1.0, 0.9]}))
    assert plots.groups.isVisibleTo(plots) and len(plots.group_lines) == 3  # layer a: most groups near zero
    assert "a's groups (2 of 3 below 0.01)" in plots.groups.plotItem.titleLabel.text
    ys = sorted(tuple(line.getData()[1]) for line in plots.group_lines)
    assert ys == [(0.2, 0.001), (0.5, 0.005), (1.0, 0.9)]
