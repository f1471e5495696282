"""Fine-tuning (issue 14): masks survive every step and the optimizer's state, k-means centroids train by the
summed gradients of their weights and the values never multiply, uniform weights stay on their grid,
distillation lowers its loss, the file stays true (predicted = written, the trained weights read back bit for
bit), the run is reproducible, bad data is refused before training, a cancel keeps the best epoch."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from explorer.cli import main as cli_main
from explorer.engine.compress import compress
from explorer.engine.errors import LoadError, PlanError
from explorer.engine.finetune import constraints as C
from explorer.engine.finetune.data import TrainData, load_train_data
from explorer.engine.finetune.recipe import check_recipe, parse_distill, parse_schedule
from explorer.engine.finetune.trainer import _loss, _scales, finetune
from explorer.engine.measure.metrics import accuracy
from explorer.engine.model.data import EvalData
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan
from explorer.engine.storage import fileformat as ff


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits-cnn")


@pytest.fixture(scope="module")
def digits():
    return load_train_data("digits")


DC = {"default": {"prune": {"amount": 0.9}, "quantize": {"bits": 5, "method": "kmeans"}},
      "layers": {"conv*": {"quantize": {"bits": 8}}}}


def _small(data: TrainData, n: int) -> TrainData:
    return TrainData(f"{data.name} [:{n}]", data.data.subset(n))


# ------------------------------------------------------------------------------------------ constraints


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_pruned_weights_stay_exactly_zero_through_every_step_and_the_optimizer_state(cnn, digits, optimizer):
    plan = Plan.from_dict({"default": {"prune": {"amount": 0.8}}})
    recipe = check_recipe({"epochs": 3, "lr": 0.01, "optimizer": optimizer, "weight_decay": 0.01, "batch_size": 32})
    comp = compress(cnn.model, plan, cnn.example_input)
    masks = {t.name: t.mask.copy() for lr in comp.layers.values() for t in lr.tensors}
    res = finetune(cnn, plan, _small(digits, 400), recipe=recipe)
    state = res.compressed.model.state_dict()
    moved = 0
    for name, mask in masks.items():
        w = state[name].reshape(-1).numpy()
        assert np.all(w[~mask] == 0.0), name  # exactly zero, not small
        moved += int(np.sum(w[mask] != comp.model.state_dict()[name].reshape(-1).numpy()[mask]))
        stored = {t.name: t for lr in res.compressed.layers.values() for t in lr.tensors}[name]
        assert np.array_equal(stored.mask, mask)  # the file stores the same mask
    assert moved > 0  # the survivors did train


def test_masked_gradients_and_momentum_never_revive_a_weight():
    """The constraint itself, against an optimizer whose state already holds momentum for the pruned entries."""
    layer = nn.Linear(6, 4)
    mask = np.ones(24, bool)
    mask[::3] = False
    t = C.TensorResult("weight", (4, 6), mask, None, None, 16)
    with torch.no_grad():
        layer.weight.mul_(torch.from_numpy(mask.reshape(4, 6)))
    c = C.constraint_for(t, layer.weight)
    opt = torch.optim.SGD([layer.weight], lr=0.5, momentum=0.9, weight_decay=0.1)
    opt.state[layer.weight]["momentum_buffer"] = torch.ones(4, 6)  # stale momentum on every entry
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(3, 6)).pow(2).sum().backward()
        c.after_backward()
        assert torch.all(layer.weight.grad.reshape(-1)[~torch.from_numpy(mask)] == 0)
        opt.step()
        c.after_step()
        assert torch.all(layer.weight.detach().reshape(-1)[~torch.from_numpy(mask)] == 0)


def test_centroids_move_by_the_summed_gradient_of_their_weights_by_hand():
    """Deep Compression Figure 3 on a 2x3 layer: codes fixed, each centroid -= lr * (sum of its weights' grads)."""
    from explorer.engine.methods.quantize import QuantResult

    codes = np.array([1, 2, 1, 0, 2, 2])
    book = np.array([0.0, -0.5, 0.25], np.float32)  # code 0 is the reserved zero (the pruned weight)
    q = QuantResult("kmeans", 2, codes, torch.from_numpy(book[codes].reshape(2, 3)), 0, 4, codebook=book,
                    info={"reserved_zero": True})
    mask = codes != 0
    w = nn.Parameter(torch.zeros(2, 3))
    c = C.constraint_for(C.TensorResult("w", (2, 3), mask, q, None, 5), w)
    assert isinstance(c, C.SharedValues) and torch.equal(w.detach().reshape(-1), torch.from_numpy(book[codes]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    y = (x @ w.t()).sum()  # dy/dw[i, j] = x[j]
    y.backward()
    grad = w.grad.reshape(-1).numpy().copy()  # [1, 2, 3, 1, 2, 3]
    c.after_backward()
    opt = torch.optim.SGD(c.trainable(), lr=0.1)
    opt.step()
    c.after_step()
    expected = book.astype(np.float64).copy()
    for k in (1, 2):
        expected[k] -= 0.1 * grad[codes == k].sum()  # code 1: 1 + 1 = 2; code 2: 3 + 2 + 3 = 8
    assert np.allclose(c.centroids.detach().numpy(), expected.astype(np.float32))
    assert c.centroids.detach()[0] == 0.0  # the reserved zero stays zero
    assert np.allclose(w.detach().reshape(-1).numpy(), expected[codes])
    assert len(np.unique(w.detach().numpy())) == 3


def test_trained_quantization_keeps_each_layers_distinct_values_and_the_file_is_true(cnn, digits, tmp_path):
    plan = Plan.from_dict(DC)
    comp = compress(cnn.model, plan, cnn.example_input)
    res = finetune(cnn, plan, _small(digits, 600), recipe=check_recipe({"epochs": 3, "lr": 0.003}))
    for name, lr in res.compressed.layers.items():
        t0 = comp.layers[name].tensors[0]
        t1 = lr.tensors[0]
        assert np.array_equal(t1.quant.codes, t0.quant.codes), name  # same assignments: no re-clustering
        w = res.compressed.model.state_dict()[t1.name]
        assert len(np.unique(w.numpy())) <= len(np.unique(comp.model.state_dict()[t1.name].numpy())), name
        assert not np.array_equal(t1.quant.codebook, t0.quant.codebook), name  # the centroids moved
        assert t1.sizes.to_dict() == t0.sizes.to_dict()  # codes unchanged: the same bytes
    path = tmp_path / "ft.cexp"
    written = ff.save(res.compressed, path, cnn)
    assert written == ff.predicted_bytes(res.compressed, cnn) == os.path.getsize(path)
    back = ff.load(path)
    for name, t in res.compressed.model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    assert accuracy(back, cnn.eval_data) == accuracy(res.compressed.model, cnn.eval_data)


def test_uniform_weights_train_on_their_fixed_grid_and_round_trip(cnn, digits, tmp_path):
    plan = Plan.from_dict({"default": {"prune": {"amount": 0.8},
                                       "quantize": {"method": "uniform", "bits": 3, "per_channel": True}}})
    comp = compress(cnn.model, plan, cnn.example_input)
    res = finetune(cnn, plan, _small(digits, 1000), recipe=check_recipe({"epochs": 3, "lr": 0.01}))
    assert res.best_epoch > 0 and res.best > res.before  # an epoch beat the model before retraining
    changed = 0
    for name, lr in res.compressed.layers.items():
        t0, t1 = comp.layers[name].tensors[0], lr.tensors[0]
        assert np.array_equal(t1.quant.scales, t0.quant.scales)  # the grid is fixed
        w = res.compressed.model.state_dict()[t1.name].to(torch.float64).reshape(t0.quant.scales.size, -1)
        levels = w / torch.from_numpy(t0.quant.scales.astype(np.float64))[:, None]
        assert torch.allclose(levels, levels.round(), atol=1e-4), name  # every weight on the grid
        assert np.all(w.reshape(-1).numpy()[~t0.mask] == 0)
        changed += int(np.sum(t1.quant.codes != t0.quant.codes))
    assert changed > 0
    path = tmp_path / "u.cexp"
    assert ff.save(res.compressed, path, cnn) == ff.predicted_bytes(res.compressed, cnn)
    back = ff.load(path)
    for name, t in res.compressed.model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name


# ------------------------------------------------------------------------------------------ losses, schedules


def test_the_distillation_loss_falls_on_a_tiny_model():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    student = nn.Sequential(nn.Linear(8, 4))
    x = torch.randn(256, 8)
    d = parse_distill("3,1.0")  # the teacher's outputs alone: data without labels
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    with torch.no_grad():
        t_out = teacher(x)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = _loss(student(x), None, t_out, d)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    mixed = _loss(student(x), torch.zeros(256, dtype=torch.long), t_out, parse_distill("3,0.5"))
    assert torch.isfinite(mixed)


def test_schedules_reach_the_target_in_their_steps():
    it = _scales(check_recipe({"schedule": {"kind": "iterative", "steps": 4}}))
    assert it == [0.25, 0.5, 0.75, 1.0]
    poly = _scales(check_recipe({"schedule": {"kind": "polynomial", "steps": 4}}))
    assert poly[-1] == 1.0 and poly == sorted(poly) and poly[0] > 0.25  # Zhu & Gupta: fast first, slow last
    assert parse_schedule("polynomial:3:2").epochs_per_step == 2


def test_a_schedule_prunes_gradually_then_quantizes(cnn, digits):
    plan = Plan.from_dict(dict(DC, finetune={"epochs": 1, "lr": 0.003, "schedule": {"steps": 2, "epochs_per_step": 1}}))
    res = finetune(cnn, plan, _small(digits, 400))
    assert [h.phase.split(" (")[0] for h in res.history] == ["prune 1/2", "prune 2/2", "retrain"]
    for lr in res.compressed.layers.values():
        t = lr.tensors[0]
        assert t.quant.method == "kmeans" and abs((~t.mask).mean() - 0.9) < 0.01
    with pytest.raises(PlanError, match="schedule"):
        finetune(cnn, Plan.from_dict({"default": {"prune": {"amount": 0.5, "granularity": "filter"}},
                                      "layers": {"fc2": {"prune": None}},
                                      "finetune": {"schedule": {"steps": 2}}}), _small(digits, 100))


# ------------------------------------------------------------------------------------------ runs


def test_the_same_seed_writes_the_same_bytes(cnn, digits, tmp_path):
    plan = Plan.from_dict(DC)
    recipe = check_recipe({"epochs": 2, "lr": 0.003, "seed": 7})
    raws = []
    for i in range(2):
        res = finetune(cnn, plan, _small(digits, 300), recipe=recipe)
        path = tmp_path / f"{i}.cexp"
        ff.save(res.compressed, path, cnn)
        raws.append(path.read_bytes())
    assert raws[0] == raws[1]


def test_a_cancel_keeps_the_best_epoch_so_far(cnn, digits):
    plan = Plan.from_dict(DC)
    calls = []

    def progress(fraction, message):
        calls.append(message)
        return not (len(calls) > 30)  # stop in the middle of the run

    res = finetune(cnn, plan, _small(digits, 800), recipe=check_recipe({"epochs": 20, "lr": 0.003, "batch_size": 64}),
                   progress=progress)
    assert res.cancelled and 0 < len(res.history) < 20
    best = max([res.before] + [h.val for h in res.history])
    assert res.best == best
    # the model returned is that epoch's: measured again on the validation data, it scores the same
    val = res.record["validation"]
    assert "held out" in val
    assert ff.predicted_bytes(res.compressed, cnn) > 0


def test_bad_data_is_refused_before_training(cnn):
    def data(x, y):
        return TrainData("bad", EvalData(x, y, "bad"))

    with pytest.raises(LoadError, match=r"training data bad: samples are 3×5×5 float32 \(75 values\), but .* expects "
                                        r"1×8×8 float32 \(64 values\), the shape of its example input"):
        finetune(cnn, Plan.from_dict(DC), data(torch.zeros(10, 3, 5, 5), torch.zeros(10, dtype=torch.long)))
    with pytest.raises(LoadError, match=r"labels run from 3 to 12, but .* has 10 outputs \(labels must be 0\.\.9\)"):
        finetune(cnn, Plan.from_dict(DC), data(torch.zeros(10, 1, 8, 8), torch.arange(10) + 3))
    with pytest.raises(LoadError, match="no samples"):
        finetune(cnn, Plan.from_dict(DC), data(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(LoadError, match="holds no sample"):
        load_train_data("digits@5000:6000")


def test_recipes_are_checked_like_plans():
    for bad, match in (({"epochs": -1}, "epochs"), ({"lr": "fast"}, "lr"), ({"optimizer": "lion"}, "optimizer"),
                       ({"distill": {"alpha": 2}}, "alpha"), ({"schedule": {"kind": "cubic"}}, "kind"),
                       ({"nope": 1}, "unknown key 'nope'"), ({"schedule": []}, "schedule must be an object")):
        with pytest.raises(PlanError, match=match):
            check_recipe(bad)
    plan = Plan.from_dict(dict(DC, finetune={"epochs": 3}))
    assert Plan.from_json(plan.to_json()).finetune == plan.finetune and plan.finetune["epochs"] == 3
    with pytest.raises(PlanError, match="distill"):
        parse_distill("4")


def test_the_cli_fine_tunes_the_sample_and_evaluate_reads_the_accuracy_it_reported(tmp_path, capsys):
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps(DC))
    out = tmp_path / "ft.cexp"
    rc = cli_main(["finetune", "digits-cnn", "--plan", str(plan), "--train", "digits", "--epochs", "3",
                   "--lr", "0.003", "--seed", "1", "--threads", "1", "-o", str(out)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "epoch 3 (retrain)" in text.err and "wrote" in text.out
    reported = [line for line in text.out.splitlines() if line.startswith("accuracy")][0].split("-> ")[1]
    record = json.loads((tmp_path / "ft.cexp.finetune.json").read_text())
    assert record["file_bytes"] == record["predicted_bytes"] == os.path.getsize(out)
    assert record["train"].startswith("digits train split") and "held out" in record["validation"]
    assert cli_main(["evaluate", str(out)]) == 0
    assert reported in capsys.readouterr().out


def test_ctrl_c_writes_the_best_model_so_far_and_says_so(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps(DC))
    out = tmp_path / "ft.cexp"
    proc = subprocess.Popen([sys.executable, "-m", "explorer", "finetune", "digits-cnn", "--plan", str(plan),
                             "--train", "digits", "--epochs", "2000", "--lr", "0.003", "-o", str(out)],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=root), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 120
    while "epoch 3 " not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert stdout.startswith("interrupted: kept the best model so far (epoch "), stdout
    record = json.loads((tmp_path / "ft.cexp.finetune.json").read_text())
    assert record["cancelled"] and record["file_bytes"] == os.path.getsize(out)
    assert cli_main(["evaluate", str(out)]) == 0


def test_a_training_data_factory_is_called_once(tmp_path, monkeypatch):
    (tmp_path / "ft_factory.py").write_text(
        "import torch\nCALLS = []\n"
        "def arrays():\n    CALLS.append(1)\n    return torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_train_data("ft_factory:arrays")
    import ft_factory

    assert len(data) == 40 and ft_factory.CALLS == [1]


def test_agreement_scoring_runs_the_teacher_on_the_validation_data_once(digits):
    loaded = load_model("digits-cnn")  # its own: a hook goes on it (and on the teacher, its copy)
    calls = {}  # model (the teacher, the student: copies, the hook with them) -> its passes over the 37 samples
    loaded.model.register_forward_hook(
        lambda m, inp, out: calls.__setitem__(id(m), calls.get(id(m), 0) + (int(inp[0].shape[0]) == 37)))
    train = TrainData("unlabelled", EvalData(digits.data.inputs[:48], None, "48"))
    val = TrainData("unlabelled val", EvalData(digits.data.inputs[48:85], None, "37"))
    r = finetune(loaded, Plan.from_dict(DC), train, val, {"epochs": 3, "batch_size": 16})
    assert r.metric == "agreement" and all(e.val is not None for e in r.history)
    # the student scored before training and after each of 3 epochs, against one pass of the teacher
    assert sorted(c for c in calls.values() if c) == [1, 4]
