"""`auto --finetune` (issue 15): the automatic plan handed to fine-tuning as the finetune verb does it; the three
accuracies printed, the fine-tuned one what the written file evaluates to, the plan written with its recipe
(``finetune --plan`` on it writes the same bytes)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from explorer.cli import _train_source
from explorer.cli import main as cli_main
from explorer.engine.errors import LoadError
from explorer.engine.plan import Plan
from explorer.engine.sensitivity import auto


@pytest.fixture(autouse=True)
def few_candidates(monkeypatch):
    """auto's grids cut to a few points (a second's choice): these tests are about what follows the choice."""
    monkeypatch.setattr(auto, "AUTO_SPARSITIES", (0.0, 0.5, 0.8, 0.9))
    monkeypatch.setattr(auto, "BITS", (2, 3, 4, 5))
    threads = torch.get_num_threads()  # --threads sets torch's for the process
    yield
    torch.set_num_threads(threads)


def _row(text: str, label: str) -> list:
    return next(line.split() for line in text.splitlines() if line.startswith(label + "  "))


def test_auto_finetune_prints_three_accuracies_and_the_file_evaluates_to_the_last(tmp_path, capsys):
    plan, out = tmp_path / "auto.json", tmp_path / "ft.cexp"
    rc = cli_main(["auto", "digits-mlp", "--target-ratio", "20", "--limit", "120", "--finetune", "--epochs", "1",
                   "--seed", "3", "--threads", "1", "-o", str(plan), "--cexp", str(out)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "epoch 1 (retrain)" in text.err  # one line per epoch, as finetune prints them
    dense, auto, tuned = _row(text.out, "dense"), _row(text.out, "auto plan"), _row(text.out, "auto plan, fine-tuned")
    assert dense[1] == "1.0x" and float(auto[2].rstrip("x")) >= 20
    assert all(r[-1].endswith("%") for r in (dense, auto, tuned))
    assert f"{dense[-1]} -> {auto[-1]} measured" in text.out  # the table repeats what auto measured
    assert cli_main(["evaluate", str(out), "--limit", "120"]) == 0
    evaluated = capsys.readouterr().out
    assert f"[120 of 360]): {tuned[-1]}" in evaluated  # the same images, the file's accuracy
    assert f"{tuned[-2]} smaller" in evaluated  # and its ratio
    record = json.loads((tmp_path / "ft.cexp.finetune.json").read_text())
    assert record["file_bytes"] == os.path.getsize(out) and record["train"].startswith("digits train split")
    written = Plan.load(plan)
    assert written.finetune["epochs"] == 1 and written.finetune["seed"] == 3
    assert Plan.from_dict(record["plan"]).to_dict() == written.to_dict()
    again = tmp_path / "again.cexp"  # the plan with its recipe repeats the run: the same bytes
    assert cli_main(["finetune", "digits-mlp", "--plan", str(plan), "--threads", "1", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_auto_finetune_without_a_file_and_in_json(tmp_path, capsys):
    rc = cli_main(["auto", "digits-mlp", "--target-ratio", "20", "--limit", "120", "--finetune", "--epochs", "1",
                   "--threads", "1", "--json", "-o", str(tmp_path / "p.json")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    ft = out["finetune"]
    assert ft["file_bytes"] is None and ft["output"] is None and ft["predicted_bytes"] > 0
    assert ft["ratio"] == ft["dense_bytes"] / ft["predicted_bytes"]
    assert os.listdir(tmp_path) == ["p.json"]
    assert ft["accuracy"] == ft["quality"]["after"] and ft["quality"]["before"] == out["accuracy_before"]


def test_fine_tuning_options_need_finetune_and_other_models_need_training_data(tmp_path, capsys):
    assert cli_main(["auto", "digits-mlp", "--target-ratio", "20", "--epochs", "2", "-o", str(tmp_path / "p.json")]) == 2
    assert "--epochs is an option of fine-tuning: add --finetune" in capsys.readouterr().err
    args = SimpleNamespace(train=None)
    assert _train_source(args, SimpleNamespace(factory="explorer.engine.samples:digits_cnn")) == "digits"
    with pytest.raises(LoadError, match="give --train"):
        _train_source(args, SimpleNamespace(factory="mymodels:net"))
    assert _train_source(SimpleNamespace(train="x.npz"), SimpleNamespace(factory="mymodels:net")) == "x.npz"
