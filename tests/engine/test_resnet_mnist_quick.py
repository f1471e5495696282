"""benchmarks/resnet_mnist.py --quick: ResNet-18 with every coupled group (the four residual streams and the
blocks' inner convolutions) at half its filters, fine-tuned, written, loaded back smaller and evaluated."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MNIST_T10K", ROOT.parent / "shared" / "data" / "mnist-t10k"))

pytestmark = pytest.mark.skipif(not (DATA / "t10k-images-idx3-ubyte.gz").exists(),
                                reason=f"MNIST's test set is not at {DATA} (set MNIST_T10K)")


def test_the_quick_benchmark_prunes_every_group_and_the_file_loads_back_smaller(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # its factory is 'resnet_mnist:resnet18'
    import deep_compression as dc
    import resnet_mnist as rm
    from explorer.engine.measure.metrics import accuracy

    data = dc._data(str(DATA), {"train": (0, 128), "validation": (7000, 7064), "evaluation": (8000, 8128)})
    run = rm.one_seed(0, data, 0.5, None, True, str(tmp_path), lambda s: None)
    # one request per coupled group: 4 residual streams + 8 inner convs
    assert sorted(run["plan"]["layers"]) == sorted(["conv1", "layer2.0.conv2", "layer3.0.conv2",
                                                    "layer4.0.conv2"]
                                                   + [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)])
    back = run["model"]
    assert back.conv1.out_channels == 32 and back.layer1[1].conv2.out_channels == 32
    assert back.layer4[0].downsample[0].out_channels == 256 and back.layer4[1].conv1.out_channels == 256
    assert back.fc.in_features == 256 and back.layer4[0].conv1.in_channels == 128
    assert run["macs"] < run["dense_macs"] / 3.5 and run["params"] < run["dense_params"] / 3.5
    assert accuracy(back, data["evaluation"].data) == run["file_eval"]
    assert os.path.getsize(run["path"]) == run["file_bytes"] < 4 * run["dense_params"] / 3
    assert [(b, t) for b, t, *_ in run["speed"]] == [(1, 1), (32, 1), (1, 2), (32, 2)]
    rm.report(run, 0.5, None)
    out = capsys.readouterr().out
    assert "50% filters of every coupled group; 12 requests" in out and "| batch | threads |" in out
