"""The compressed runtime against the dense decode, side by side in one run (issue 19).

1. A 4096x4096 Linear at 50/80/90/95 % element sparsity with 5-bit shared weights (k-means, Deep
   Compression's fully connected setting), written to a .cexp and loaded back: torch's dense Linear on the
   decoded weight against each of our forms (torch's CSR matmul, the numba CSR kernels on float32 values
   and on uint8 codes, the dense matrix of codes) and the form the measured crossover chose; batch 1 and 32,
   one thread and all threads; the weight's resident bytes of each.
2. The sample models with their plans (digits-mlp, digits-cnn; the fine-tuned plans too), and a
   ResNet-18-shaped model (random weights) with a structured + low-rank plan: the whole model, dense decode
   against the compressed runtime (``fileformat.load(runtime="compressed")``), and resident weight memory.

    .venv/bin/python benchmarks/runtime.py [--quick]

Prints tables (not a test: nothing here asserts). DC's anchor: 3x at ~90 % on CPU (Han et al. 2016, §6).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the factories below: 'runtime:...'

import torch  # noqa: E402
from torch import nn  # noqa: E402

SIZE = 4096


def fc_model():
    """A factory: one 4096x4096 Linear (random weights, seeded), input 1 x 4096."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(SIZE, SIZE)).eval(), torch.randn(1, SIZE)


def resnet18_model():
    """A factory: gui_latency's ResNet-18 shape (random weights), input 1 x 3 x 224 x 224."""
    from gui_latency import ResNet18

    torch.manual_seed(0)
    return ResNet18().eval(), torch.randn(1, 3, 224, 224)


def _mb(b: int) -> str:
    return f"{b / 1e6:.1f} MB"


def linear_table(threads: list, batches: list, sparsities: list, tmp: str) -> None:
    from explorer.engine.compress import compress
    from explorer.engine.measure.bench import set_threads
    from explorer.engine.measure.metrics import time_forward
    from explorer.engine.model.loading import load_model
    from explorer.engine.plan import Plan
    from explorer.engine.runtime import CompressedLinear, candidates, choose
    from explorer.engine.storage import fileformat
    from explorer.engine.storage.fileformat.decode import weight_parts
    from explorer.engine.storage.fileformat.reader import read

    loaded = load_model("runtime:fc_model")
    print(f"\n4096x4096 Linear, 5-bit k-means shared weights (dense weight {_mb(SIZE * SIZE * 4)}); ms per forward "
          "pass, median; speedup over dense in the same run")
    head = ["sparsity", "batch", "threads", "dense", "torch-csr", "csr", "csr-codes", "codes", "chosen", "speedup",
            "resident"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for sp in sparsities:
        plan = Plan.from_dict({"version": 1, "layers": {"0": {"prune": {"amount": sp},
                                                               "quantize": {"method": "kmeans", "bits": 5}}}})
        path = os.path.join(tmp, f"fc{sp}.cexp")
        fileformat.save(compress(loaded.model, plan, loaded.example_input), path, loaded)
        dense = fileformat.load(path, factory="runtime:fc_model")[0]
        mf = read(path)
        parts = weight_parts(mf, next(e for e in mf.manifest["tensors"] if e["name"] == "0.weight"))
        forms = {k: CompressedLinear(k, SIZE, SIZE, a, dense.bias) for k, a in candidates(parts, SIZE, SIZE).items()}
        for n in threads:
            set_threads(n)
            for b in batches:
                x = torch.randn(b, SIZE)
                t = {"dense": time_forward(dense, x)}
                for k, m in forms.items():
                    t[k] = time_forward(m, x)
                _, decision = choose("0", dense, parts, batch=b)
                best = decision.chosen
                resident = decision.sizes[best] if best != "dense" else SIZE * SIZE * 4
                row = [f"{sp:.0%}", str(b), str(n), f"{t['dense']:.2f}"] + \
                      [f"{t[k]:.2f}" if k in t else "–" for k in ("torch-csr", "csr", "csr-codes", "codes")] + \
                      [best, f"{t['dense'] / t[best]:.2f}x", _mb(resident)]
                print("| " + " | ".join(row) + " |", flush=True)


def model_table(threads: list, batches: list, tmp: str, quick: bool) -> None:
    from explorer.engine.compress import compress
    from explorer.engine.measure.bench import bench_runtimes
    from explorer.engine.model.loading import load_model
    from explorer.engine.plan import Plan
    from explorer.engine.storage import fileformat
    from resnet_mnist import group_requests, speed_rows

    cases = [("digits-mlp", "digits-mlp.plan.json"), ("digits-mlp", "digits-mlp.finetuned.plan.json"),
             ("digits-cnn", "digits-cnn.plan.json"), ("digits-cnn", "digits-cnn.finetuned.plan.json")]
    if not quick:
        cases.append(("runtime:resnet18_model", None))
    print("\nWhole models: dense decode against the compressed runtime (chosen at batch 1, all threads); ms per "
          "forward pass, median")
    head = ["model", "plan", "batch", "threads", "dense ms", "compressed ms", "speedup", "resident dense",
            "resident compressed", "layers replaced"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for source, plan_file in cases:
        loaded = load_model(source)
        if plan_file is None:  # structured + low-rank: already small dense layers
            # every coupled group at half its filters: the four residual streams (each stage's block outputs
            # and shortcut together) and every block's inner conv; the head at a quarter of its parameters
            layers = group_requests(loaded.model, loaded.example_input, 0.5)
            layers["fc"] = {"lowrank": {"rank": 0.25}}
            plan = Plan.from_dict({"version": 1, "layers": layers})
            plan_name = "every coupled group 50% filters + low-rank fc"
        else:
            plan = Plan.load(str(ROOT / "sample_models" / plan_file))
            plan_name = plan_file
        path = os.path.join(tmp, "model.cexp")
        fileformat.save(compress(loaded.model, plan, loaded.example_input), path, loaded)
        back = load_model(path, factory=source if source.startswith("runtime:") else None)
        out = bench_runtimes(back, batches=batches, threads=threads)
        replaced = sum(1 for d in out["layers"] if d["chosen"] != "dense")
        rows = out["rows"]
        for dense_row, ours in zip(rows[::2], rows[1::2]):
            row = [source.replace("runtime:", ""), plan_name, str(dense_row["batch"]), str(dense_row["threads"]),
                   f"{dense_row['ms']:.3f}", f"{ours['ms']:.3f}", f"{ours['speedup']:.2f}x",
                   _mb(dense_row["resident_bytes"]), _mb(ours["resident_bytes"]),
                   f"{replaced} of {len(out['layers'])}"]
            print("| " + " | ".join(row) + " |", flush=True)
        if source.startswith("runtime:resnet"):  # the structure's gain: against the model before the plan
            dense_size = sum(p.numel() * 4 for p in loaded.model.parameters())
            for b, n, t0, t1 in speed_rows(loaded.model, back.model, loaded.example_input, 0.2, threads, batches):
                print(f"| {source.replace('runtime:', '')} | the original (dense, {_mb(dense_size)}) against "
                      f"the file's model | {b} | {n} | {t0:.3f} | {t1:.3f} | {t0 / t1:.2f}x | "
                      f"{_mb(dense_size)} | {_mb(dense_row['resident_bytes'])} | – |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="90%% sparsity and batch 1 only, no ResNet-18")
    ap.add_argument("--models", action="store_true", help="the whole models' table only (no 4096x4096 Linear)")
    args = ap.parse_args(argv)
    threads = sorted({1, os.cpu_count() or 1})
    batches = [1] if args.quick else [1, 32]
    sparsities = [0.9] if args.quick else [0.5, 0.8, 0.9, 0.95]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; threads {threads}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.models:
            linear_table(threads, batches, sparsities, tmp)
        model_table(threads, batches, tmp, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
