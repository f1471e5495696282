"""One definition of a layer's size (issue 17): "weights" is the weight tensor alone, "layer" the weight with
the bias and any other parameter of its module; inspect's table and JSON show both."""

import json
import subprocess
import sys

import torch
from torch import nn

from explorer.engine.inspect import inspect_model, layer_numels
from test_cli import ROOT, run


class ScaledLinear(nn.Linear):
    """A Linear with one more parameter of its own: it counts with the layer."""

    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out)
        self.scale = nn.Parameter(torch.ones(n_out))


def test_a_layer_with_bias_counts_its_bias_in_layer_bytes_and_not_in_weight_bytes():
    model = nn.Sequential(nn.Conv2d(1, 20, 3), nn.Flatten(), nn.Linear(20 * 6 * 6, 10, bias=False),
                          ScaledLinear(10, 4))
    info = inspect_model(model, torch.zeros(1, 1, 8, 8))
    conv, fc, scaled = info.layers
    assert (conv.weight_bytes, conv.layer_bytes) == (4 * 20 * 9, 4 * (20 * 9 + 20)) == (720, 800)
    assert fc.weight_bytes == fc.layer_bytes == 4 * 720 * 10
    assert (scaled.weight_bytes, scaled.layer_bytes) == (4 * 40, 4 * (40 + 4 + 4))  # weight, bias, scale
    assert layer_numels(model[3]) == (40, 8)
    assert info.other_params == 0  # nothing of the layers' modules counted twice, nothing lost


def test_an_lstm_weight_matrix_is_its_weight_alone():
    model = nn.Sequential(nn.LSTM(4, 3))
    info = inspect_model(model)
    for layer in info.layers:
        assert layer.weight_bytes == layer.layer_bytes == 4 * layer.weight_params
    assert info.other_params == 2 * 4 * 3  # bias_ih and bias_hh, 4 gates × 3: kept dense with the module


def test_inspect_json_and_table_show_both():
    data = json.loads(run("inspect", "digits-cnn", "--json").stdout)
    conv1 = data["layers"][0]
    assert conv1["name"] == "conv1" and (conv1["weight_bytes"], conv1["layer_bytes"]) == (720, 800)
    assert "bytes" not in conv1  # one of the two, named; no third
    out = run("inspect", "digits-cnn").stdout
    header = out.splitlines()[1].split("  ")
    assert "weight bytes" in header and "layer bytes" in header
    row = next(line for line in out.splitlines() if line.startswith("conv1"))
    assert "720 B" in row and "800 B" in row
    assert "weight bytes: the weight tensor alone" in out
