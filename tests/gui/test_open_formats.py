"""The window opens a Hugging Face folder through File → Open Hugging Face folder… (issue 16)."""

import pytest
import torch
from PySide6.QtWidgets import QFileDialog



def test_the_window_opens_a_hugging_face_folder(make_window, qtbot, settle, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, num_labels=3)
    folder = tmp_path / "bert"
    transformers.BertForSequenceClassification(config).eval().save_pretrained(folder, safe_serialization=True)
    win = make_window()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    action = next(a for a in win.menuBar().actions()[0].menu().actions() if "Hugging Face" in a.text())
    action.trigger()
    qtbot.waitUntil(lambda: win.session.loaded is not None and win.session.results is not None, timeout=30_000)
    settle(win)
    assert win.session.loaded.kind == "hf" and "model.classifier" in win.session.layer_names
