"""The window's controls list the methods the registries hold (issue 13): one registered in the test
appears without the window being touched."""


def test_the_controls_list_registered_methods(registered_methods, qtbot):
    from explorer.gui.qt_controls import Controls

    controls = Controls()
    qtbot.addWidget(controls)
    assert "sign" in [controls.method.itemText(i) for i in range(controls.method.count())]
    assert "median" in [controls.init.itemText(i) for i in range(controls.init.count())]
    controls.quant_on.setChecked(True)
    controls.method.setCurrentText("sign")
    controls._enable()
    assert not controls.bits.isEnabled() and not controls.init.isEnabled()  # "sign" reads only its seed
    assert controls.patch()["quantize"]["method"] == "sign"
    controls.method.setCurrentText("kmeans")
    controls._enable()
    assert controls.bits.isEnabled() and controls.init.isEnabled()


def test_the_granularity_box_lists_the_registry(qtbot):
    from explorer.engine.methods.prune import GRANULARITIES
    from explorer.gui.qt_controls import Controls

    controls = Controls()
    qtbot.addWidget(controls)
    assert [controls.granularity.itemText(i) for i in range(controls.granularity.count())] == list(GRANULARITIES)
