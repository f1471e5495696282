"""Print the README's method table: every registered compression method applied alone to digits-cnn, measured
now, with the formula it computes and where it applies.

For each method it compresses the model with a plan of that method only, writes the .cexp file, loads the file
back and measures the accuracy and MACs of the model that came out of the file (not of the in-memory one). Where
the method loses more than a point, the same plan is also fine-tuned on the samples' training split (``--epochs``
epochs at lr 0.003, as ``compression-explorer finetune digits-cnn --plan PLAN --train digits`` runs it) and the
fine-tuned file is measured the same way.

    .venv/bin/python benchmarks/method_table.py [--epochs 6] [--no-finetune]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.engine import Plan, compress, load_model  # noqa: E402
from explorer.engine.finetune.data import load_train_data  # noqa: E402
from explorer.engine.finetune.recipe import check_recipe  # noqa: E402
from explorer.engine.finetune.trainer import finetune  # noqa: E402
from explorer.engine.measure.metrics import accuracy, model_macs  # noqa: E402
from explorer.engine.storage import fileformat  # noqa: E402

MODEL = "digits-cnn"
FINETUNE_BELOW = 0.01  # fine-tuned too where the method alone loses more than this (a point)

HEAVY = {"conv2": {"prune": {"amount": 0.8, "granularity": "filter"}},
         "fc1": {"prune": {"amount": 0.9, "granularity": "filter"}}}

# (method, formula, where it applies, plan of that method alone on every layer it applies to[, fine-tuning
# options of its row: always fine-tuned with them])
METHODS = [
    ("magnitude pruning (element)", "keep the ⌈(1 − s)·n⌉ largest ∣w∣", "every weight",
     {"default": {"prune": {"amount": 0.8}}}),
    ("filter pruning (structured)", "drop rows of smallest ‖w_i‖₁; the next layer loses its inputs",
     "layers whose outputs can shrink (not the output layer)",
     {"layers": {"conv2": {"prune": {"amount": 0.5, "granularity": "filter"}},
                 "fc1": {"prune": {"amount": 0.5, "granularity": "filter"}}}}),
    ("channel pruning (structured)", "drop input columns of smallest ‖w_:,j‖₁; the producer loses its rows",
     "layers whose inputs can shrink (not the first)",
     {"layers": {"fc2": {"prune": {"amount": 0.5, "granularity": "channel"}}}}),
    ("neuron merging (structured, data-free)", "merge j of least ‖a_j‖²·min_i ‖W_i − W_j‖² into its twin: a_i += a_j",
     "Linear layers feeding Linear layers", {"layers": {"fc1": {"prune": {"amount": 0.9, "granularity": "merge"}}}}),
    ("filter pruning of the same layer", "drop rows of smallest ‖w_i‖₁", "(beside merging: fc1 at 90%)",
     {"layers": {"fc1": {"prune": {"amount": 0.9, "granularity": "filter"}}}}),
    ("magnitude pruning of conv2 alone", "keep the largest ∣w∣", "(beside the saliencies: conv2 at 80%)",
     {"layers": {"conv2": {"prune": {"amount": 0.8}}}}),
    ("Optimal Brain Damage (element)", "keep the largest ½·h_ii·w², h_ii ≈ E Σ_c (∂z_c/∂w)² (Gauss-Newton)",
     "every weight of a classifier with data", {"layers": {"conv2": {"prune": {"amount": 0.8, "criterion": "obd"}}}}),
    ("first-order Taylor (element)", "keep the largest E∣g·w∣", "every weight of a classifier with data",
     {"layers": {"conv2": {"prune": {"amount": 0.8, "criterion": "taylor"}}}}),
    ("Taylor filter pruning", "drop filters of least Σ E∣g·w∣", "(as filter pruning above, ranked by data)",
     {"layers": {"conv2": {"prune": {"amount": 0.5, "granularity": "filter", "criterion": "taylor"}},
                 "fc1": {"prune": {"amount": 0.5, "granularity": "filter", "criterion": "taylor"}}}}),
    ("heavy filter pruning (conv2 80%, fc1 90%)", "drop rows of smallest ‖w_i‖₁", "(the student of the next three rows)",
     {"layers": HEAVY}),
    ("… fine-tuned with output distillation", "(1 − α)·CE + α·T²·KL(teacher_T ‖ student_T), T = 4, α = 0.7",
     "fine-tuning", {"layers": HEAVY}, {"distill": {"temperature": 4.0, "alpha": 0.7}}),
    ("… fine-tuned with FitNets hints", "CE + β·‖r(F_s) − F_t‖² on conv2 (r: 1×1 conv 10 → 50), β = 1",
     "fine-tuning", {"layers": HEAVY}, {"hints": {"layers": ["conv2"], "weight": 1.0}}),
    ("… fine-tuned after group lasso (SSL)", "first 6 epochs of CE + λ·Σ_g ‖W_g‖₂ on the filters removed, λ = 0.01",
     "fine-tuning", {"layers": HEAVY}, {"group_lasso": {"strength": 0.01, "epochs": 6}}),
    ("k-means weight sharing", "2^b shared values, b-bit indices (linear init)", "every weight",
     {"default": {"quantize": {"bits": 4, "method": "kmeans", "init": "linear"}}}),
    ("uniform", "levels scale·{−Q…Q}, Q = 2^(b−1) − 1", "every weight",
     {"default": {"quantize": {"bits": 4, "method": "uniform"}}}),
    ("binary", "{−a, +a}, a = mean ∣w∣", "unpruned weights", {"default": {"quantize": {"method": "binary"}}}),
    ("ternary", "{−a, 0, +a}, t = 0.7·mean ∣w∣", "every weight", {"default": {"quantize": {"method": "ternary"}}}),
    ("float16", "IEEE binary16 of each weight (16 bits)", "∣w∣ ≤ 65504",
     {"default": {"quantize": {"method": "float16"}}}),
    ("bfloat16", "a float32's upper 16 bits (8-bit exponent)", "every weight",
     {"default": {"quantize": {"method": "bfloat16"}}}),
    ("low rank: SVD", "W ≈ U_r Σ_r V_rᵀ: r(m + n) weights", "Linear, Embedding",
     {"layers": {"fc1": {"lowrank": {"rank": 0.25, "method": "svd"}}}}),
    ("low rank: Tucker-2", "1×1 S→R3, D×D R3→R4, 1×1 R4→T", "Conv",
     {"layers": {"conv2": {"lowrank": {"rank": 0.5, "method": "tucker2"}}}}),
    ("tensor train", "W[(i₁i₂i₃),(j₁j₂j₃)] = G₁[i₁,j₁]·G₂[i₂,j₂]·G₃[i₃,j₃]: Σ r_{k−1}·m_k·n_k·r_k weights",
     "Linear (inputs and outputs not prime)", {"layers": {"fc1": {"lowrank": {"rank": 0.1, "method": "tt"}}}}),
    ("block-circulant (FFT)", "b×b blocks C_ij = c_{(i−j) mod b}: mn/b weights, FFTs of length b",
     "Linear", {"layers": {"fc1": {"lowrank": {"rank": 0.1, "method": "circulant"}},
                           "fc2": {"lowrank": {"rank": 0.1, "method": "circulant"}}}}),
    ("SVD at the same 10%", "W ≈ U_r Σ_r V_rᵀ", "(beside TT and circulant: fc1 at 10%)",
     {"layers": {"fc1": {"lowrank": {"rank": 0.1, "method": "svd"}}}}),
    ("Deep Compression pipeline", "prune → k-means → Huffman/rANS", "every weight",
     {"default": {"prune": {"amount": 0.9}, "quantize": {"bits": 5, "method": "kmeans"}}}),
]


def measure_file(res, loaded, path: str) -> tuple:
    """(file bytes, accuracy, MACs) of the model loaded back from the file ``res`` writes."""
    written = fileformat.save(res, path, loaded)
    back = fileformat.load(path)
    return written, accuracy(back, loaded.eval_data), model_macs(back, loaded.example_input)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs where a method loses (default 6)")
    ap.add_argument("--no-finetune", action="store_true", help="the methods alone only")
    args = ap.parse_args(argv)
    loaded = load_model(MODEL)
    train = None if args.no_finetune else load_train_data("digits")
    dense = accuracy(loaded.model, loaded.eval_data)
    macs = model_macs(loaded.model, loaded.example_input)
    plain = compress(loaded.model, Plan())
    base = plain.bytes["dense"]  # the ratios' basis, as the CLI's: the dense model's float32 bytes
    print(f"{MODEL}: dense {base:,} bytes ({fileformat.predicted_bytes(plain, loaded):,} as a file), {macs:,} MACs, "
          f"accuracy {dense:.2%}")
    print("| method | formula | applies to | file bytes | ratio | MACs | accuracy (from the file) | fine-tuned |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.cexp")
        for name, formula, where, spec, *options in METHODS:
            plan = Plan.from_dict({"version": 1, **spec})
            size, acc, m = measure_file(compress(loaded.model, plan, loaded.example_input), loaded, path)
            tuned = "–"
            if train is not None and (dense - acc > FINETUNE_BELOW or options):
                ft = finetune(loaded, plan, train, recipe=check_recipe({"epochs": args.epochs, "lr": 0.003,
                                                                        **(options[0] if options else {})}))
                tuned = f"{measure_file(ft.compressed, loaded, path)[1]:.2%}"
            print(f"| {name} | {formula} | {where} | {size:,} | {base / size:.1f}× | {m:,} | {acc:.2%} | {tuned} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
