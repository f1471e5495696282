"""ResNet-18 on MNIST, structured pruning across its residual adds and fine-tuning: faster and smaller, and
how much accuracy it costs (issue 19's target: >= 2x faster at <= 1 point lost, after fine-tuning; the
Torch-Pruning anchor is 2.2x on ResNet-50 at 50%).

The model is ResNet-18 as He et al. 2016 build it (7x7 stride-2 stem, max-pool, four stages of two basic
blocks, 64-128-256-512 channels, 11.2 M parameters) with a one-channel stem and a ten-way head, on MNIST's
28x28 images (so its feature maps are 14, 7, 4, 2 and 1 pixels wide). It is trained dense with plain torch,
then the plan removes filters from every coupled group -- the four residual streams (each stage's block
outputs and its shortcut, which lose the same channels together) and every block's inner convolution --
and, optionally, factorizes what remains; the engine fine-tunes it, writes the ``.cexp``, loads it back and
evaluates it from the file. The speed is measured on the loaded file's model against the trained dense
model, in the same run, batch 1 and 32, one and two threads (median of repeated forward passes).

The data is MNIST's test set only (10,000 images), split by index as in ``deep_compression.py``: 0-6999
train, 7000-7999 validation, 8000-9999 evaluation.

    .venv/bin/python benchmarks/resnet_mnist.py --data ../shared/data/mnist-t10k [--amount 0.5] [--seeds 0]
    .venv/bin/python benchmarks/resnet_mnist.py --data ../shared/data/mnist-t10k --quick   # smoke test

About 10 minutes per seed on a 2-core machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the factory below is 'resnet_mnist:resnet18'

import torch  # noqa: E402
from torch import nn  # noqa: E402

from deep_compression import QUICK_SPLITS, SPLITS, Dense, _data, parse_args, train_dense  # noqa: E402
from gui_latency import ResNet18  # noqa: E402
from explorer.engine import Plan, load_model  # noqa: E402
from explorer.engine.finetune.recipe import check_recipe  # noqa: E402
from explorer.engine.finetune.trainer import finetune  # noqa: E402
from explorer.engine.measure.bench import set_threads  # noqa: E402
from explorer.engine.measure.metrics import accuracy, model_macs, time_forward  # noqa: E402
from explorer.engine.methods.channels import analyze  # noqa: E402
from explorer.engine.storage import fileformat  # noqa: E402

FACTORY = "resnet_mnist:resnet18"
DENSE = Dense(epochs=6, lr=1e-3, batch_size=64)
QUICK_DENSE = Dense(epochs=1, lr=1e-3, batch_size=64)
RECIPE = {"epochs": 12, "lr": 5e-4, "optimizer": "adam", "batch_size": 64}
QUICK_RECIPE = {"epochs": 1}


def resnet18():
    """Factory: an untrained ResNet-18 for one-channel 28x28 images and ten classes, and an example input (a
    seeded random image in [0, 1): an all-zero one passes a fresh model's BatchNorms as zeros, so the window's
    fidelity and the sizes of its activations would say nothing)."""
    model = ResNet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model, torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def group_requests(model: nn.Module, example: torch.Tensor, amount: float) -> dict:
    """A plan's layers: filter pruning of ``amount`` on every coupled group of ``model``, one request per group
    on its first producer, as the engine's analysis names them."""
    layers, covered = {}, set()
    for name, info in analyze(model, example).items():
        if info.filter_ok and name not in covered:
            layers[name] = {"prune": {"amount": amount, "granularity": "filter"}}
            covered.update(info.producers)
    return layers


def structured_plan(model: nn.Module, example: torch.Tensor, amount: float, lowrank: float | None) -> dict:
    """:func:`group_requests` and, with ``lowrank``, the inner convolutions of the last two stages' second
    blocks (``layer3.1.conv1``, ``layer4.1.conv1``) factorized (Tucker-2) at that share of their parameters."""
    layers = group_requests(model, example, amount)
    if lowrank is not None:
        for stage in (3, 4):
            layers.setdefault(f"layer{stage}.1.conv1", {})["lowrank"] = {"rank": lowrank}
    return {"version": 1, "layers": layers, "finetune": dict(RECIPE)}


def speed_rows(dense: nn.Module, small: nn.Module, example: torch.Tensor, seconds: float = 1.0,
               threads_list=(1, 2), batches=(1, 32)) -> list:
    """``(batch, threads, dense ms, ours ms)`` for each thread count and batch (each timing at least
    ``seconds`` long), torch's threads restored after."""
    rows, before = [], torch.get_num_threads()
    for threads in threads_list:
        set_threads(threads)
        for batch in batches:
            x = example.repeat(batch, 1, 1, 1)
            rows.append((batch, threads, time_forward(dense, x, min_seconds=seconds),
                         time_forward(small, x, min_seconds=seconds)))
    set_threads(before)
    return rows


def one_seed(seed: int, data: dict, amount: float, lowrank, quick: bool, out_dir: str, log) -> dict:
    torch.manual_seed(seed)
    loaded = load_model(FACTORY)
    t0 = time.perf_counter()
    dense_val = train_dense(loaded.model, QUICK_DENSE if quick else DENSE, seed, data["train"], data["validation"])
    t1 = time.perf_counter()
    raw = structured_plan(loaded.model, loaded.example_input, amount, lowrank)
    recipe = dict(raw.pop("finetune"), seed=seed, **(QUICK_RECIPE if quick else {}))
    result = finetune(loaded, Plan.from_dict(raw), data["train"], data["validation"], check_recipe(recipe),
                      on_epoch=lambda r: log(f"    epoch {r.epoch} ({r.phase}): loss {r.loss:.4f}, "
                                             f"validation {r.val:.2%} [{r.seconds:.1f} s]"))
    t2 = time.perf_counter()
    path = os.path.join(out_dir, f"resnet18-mnist-seed{seed}.cexp")
    fileformat.save(result.compressed, path, loaded)
    back = fileformat.load(path, factory=FACTORY)
    evaluation = data["evaluation"].data
    dense_eval, file_eval = accuracy(loaded.model, evaluation), accuracy(back, evaluation)
    example = loaded.example_input
    return {
        "seed": seed, "plan": raw, "path": path, "file_bytes": os.path.getsize(path),
        "dense_params": sum(p.numel() for p in loaded.model.parameters()),
        "params": sum(p.numel() for p in back.parameters()),
        "dense_macs": model_macs(loaded.model, example), "macs": model_macs(back, example),
        "dense_val": dense_val, "before": result.before, "best": result.best,
        "dense_eval": dense_eval, "file_eval": file_eval,
        "speed": speed_rows(loaded.model, back.eval(), example, 0.05 if quick else 1.0),  # finetune trains a copy
        "model": back,
        "seconds": {"dense": t1 - t0, "finetune": t2 - t1},
    }


def report(run: dict, amount: float, lowrank) -> None:
    plan = f"{amount:.0%} filters of every coupled group" + (f", Tucker-2 at {lowrank:g}" if lowrank else "")
    drop = 100 * (run["dense_eval"] - run["file_eval"])
    print(f"\nResNet-18 on MNIST, seed {run['seed']} ({plan}; {len(run['plan']['layers'])} requests): "
          f"parameters {run['dense_params']:,} -> {run['params']:,}, MACs {run['dense_macs']:,} -> {run['macs']:,} "
          f"({run['dense_macs'] / run['macs']:.2f}x fewer), file {run['file_bytes']:,} bytes")
    print(f"accuracy on the evaluation split: dense {run['dense_eval']:.2%} -> from the file {run['file_eval']:.2%} "
          f"({drop:+.2f} points lost; validation: dense {run['dense_val']:.2%}, pruned before fine-tuning "
          f"{run['before']:.2%}, after {run['best']:.2%}); {run['seconds']['dense']:.0f} s training, "
          f"{run['seconds']['finetune']:.0f} s fine-tuning")
    print("| batch | threads | dense ms | pruned ms (the file's model) | speedup |")
    print("|---|---|---|---|---|")
    for batch, threads, t_dense, t_ours in run["speed"]:
        print(f"| {batch} | {threads} | {t_dense:.3f} | {t_ours:.3f} | {t_dense / t_ours:.2f}x |", flush=True)


def main(argv=None) -> int:
    def extra(ap):
        ap.add_argument("--amount", type=float, default=0.5, help="share of filters removed per group (0.5)")
        ap.add_argument("--lowrank", type=float, default=None,
                        help="also factorize layer3.1.conv1 and layer4.1.conv1 at this share of parameters")

    args, seeds, log = parse_args(__doc__.split("\n\n")[0], argv, extra)
    data = _data(args.data, QUICK_SPLITS if args.quick else SPLITS)
    log = log or (lambda s: None)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out or tmp
        os.makedirs(out_dir, exist_ok=True)
        for seed in seeds:
            report(one_seed(seed, data, args.amount, args.lowrank, args.quick, out_dir, log), args.amount,
                   args.lowrank)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
