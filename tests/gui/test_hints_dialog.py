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
