"""benchmarks/deep_compression.py --quick: the Deep Compression pipeline end to end on a few hundred MNIST images
(train dense, prune gradually, k-means, retrain the centroids, write the .cexp, load it back, evaluate it)."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MNIST_T10K", ROOT.parent / "shared" / "data" / "mnist-t10k"))

pytestmark = pytest.mark.skipif(not (DATA / "t10k-images-idx3-ubyte.gz").exists(),
                                reason=f"MNIST's test set is not at {DATA} (set MNIST_T10K)")


def test_the_quick_benchmark_round_trips_its_files_and_prints_the_tables(tmp_path, capsys, monkeypatch):
    # benchmarks/ on the path for this test only (its factories are 'deep_compression:...'); no benchmark is
    # named like an installed package (kernel_bench.py, not kernels.py: transformers imports `kernels`)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import deep_compression as dc
    from explorer.engine.measure.metrics import accuracy
    from explorer.engine.storage import fileformat

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = dc.benchmark(str(DATA), seeds=[0], out_dir=str(tmp_path), quick=True)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert [r.network for r in runs] == list(dc.NETWORKS)
    evaluation = dc._data(str(DATA), dc.QUICK_SPLITS)["evaluation"].data
    for run in runs:
        assert run.predicted_bytes == run.written_bytes == run.file_bytes == os.path.getsize(run.path)
        assert run.file_eval == run.memory_eval  # the file holds the trained model exactly
        back = fileformat.load(run.path, factory=dc.NETWORKS[run.network]["factory"])
        assert accuracy(back, evaluation) == run.file_eval
        assert fileformat.summary(fileformat.read(run.path))["architecture"]["factory"] == \
            dc.NETWORKS[run.network]["factory"]
        layers = [r["layer"] for r in run.rows]
        assert layers == [n for n, m in back.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        assert all(0 < r["kept"] < r["weights"] for r in run.rows)
        assert f"{run.network} (as {dc.NETWORKS[run.network]['table']} of Han et al. 2016), seed 0" in out
    for heading in ("weight bits (P+Q / +H)", "index bits (P+Q / +H)", "size %", "total (file)",
                    "evaluation: dense -> compressed (from the file)", "LeNet-300-100  paper", "LeNet-5        paper"):
        assert heading in out
    assert "40x" in out and "39x" in out
