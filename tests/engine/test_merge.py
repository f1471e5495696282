"""Data-free neuron merging (Srinivas & Babu 2015; issue 20): a structured granularity for Linear layers that
removes the neurons whose incoming weights have a near twin and adds their outgoing weights to the twin's —
registered like every granularity (plan, CLI help, window), refused with a reason where it cannot apply, and
the merged model is a smaller dense one that the file holds and the MACs count as it runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explorer.cli import main
from explorer.engine import compress, load_model
from explorer.engine.errors import CompressionError
from explorer.engine.inspect import inspect_model
from explorer.engine.measure.metrics import accuracy, fidelity, model_macs
from explorer.engine.methods.channels import merge_pairs, prune_structured
from explorer.engine.methods.granularities import GRANULARITIES
from explorer.engine.plan import Plan
from explorer.engine.storage import fileformat as ff


def _plan(layers: dict) -> Plan:
    return Plan.from_dict({"version": 1, "layers": layers})


class Twins(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc1.weight[2] = self.fc1.weight[0]  # neuron 2 is neuron 0's exact twin
            self.fc1.bias[2] = self.fc1.bias[0]

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_an_exact_twin_merges_with_no_change_to_the_outputs():
    model, x = Twins().eval(), torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    saliency, removed, merges = merge_pairs(model.fc1.weight, (model.fc2.weight,), 1)
    assert merges[0] in ((2, 0), (0, 2)) and saliency[merges[0][0]] == 0.0 and removed.sum() == 1
    small, report = prune_structured(model, x, {"fc1": ("merge", 1, "l1")})
    assert small.fc1.out_features == 2 and small.fc2.in_features == 2
    assert report["fc1"]["merged"] == [list(merges[0])]
    assert torch.allclose(small(x), model(x), atol=1e-6)  # the twin carries both outgoing weights
    assert model_macs(small, x[:1]) == 4 * 2 + 2 * 2  # counted on the real forward


def test_on_digits_mlp_merging_keeps_more_than_removing_the_same_share():
    loaded = load_model("digits-mlp")
    results = {}
    for g in ("filter", "merge"):
        plan = _plan({"fc1": {"prune": {"amount": 0.5, "granularity": g}}, "fc2": {"prune": {"amount": 0.5,
                                                                                              "granularity": g}}})
        res = compress(loaded.model, plan, loaded.example_input)
        results[g] = (res, fidelity(res.model, loaded.model, loaded.eval_data.inputs), accuracy(res.model, loaded.eval_data))
    (f_res, f_fid, f_acc), (m_res, m_fid, m_acc) = results["filter"], results["merge"]
    assert m_res.macs_after == f_res.macs_after < m_res.macs_before  # the same smaller layers
    assert m_fid["rel_error"] < 0.5 * f_fid["rel_error"] and m_acc > f_acc  # 0.12 against 0.62; 96.9% against 88.9%


def test_a_merged_model_round_trips_bit_identically(tmp_path):
    loaded = load_model("digits-cnn")
    res = compress(loaded.model, _plan({"fc1": {"prune": {"amount": 0.6, "granularity": "merge"},
                                                "quantize": {"bits": 6}}}), loaded.example_input)
    path = tmp_path / "m.cexp"
    assert ff.save(res, path, loaded) == ff.predicted_bytes(res, loaded) == path.stat().st_size
    back = ff.load(path)
    for k, v in res.model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert back.fc1.out_features == 200 and back.fc2.in_features == 200
    x = loaded.eval_data.inputs[:32]
    assert torch.equal(back(x), res.model(x))


def test_where_merging_cannot_apply_it_says_why():
    loaded = load_model("digits-cnn")
    info = {l.name: l for l in inspect_model(loaded.model, loaded.example_input).layers}
    assert info["fc1"].merge_ok and not info["conv2"].merge_ok and not info["fc2"].merge_ok
    assert "only a Linear layer" in info["conv2"].merge_reason and "output" in info["fc2"].merge_reason
    with pytest.raises(CompressionError, match="conv2: cannot merge neurons: only a Linear layer"):
        compress(loaded.model, _plan({"conv2": {"prune": {"amount": 0.5, "granularity": "merge"}}}),
                 loaded.example_input)


def test_the_registry_names_it_in_the_plan_and_the_help(capsys):
    assert GRANULARITIES["merge"].structured and GRANULARITIES["merge"].unit == "neurons"
    plan = _plan({"fc1": {"prune": {"amount": 0.5, "granularity": "merge"}}})
    assert plan.settings_for("fc1").prune.granularity == "merge"
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "prune.granularity: element, filter, channel, merge" in capsys.readouterr().out
