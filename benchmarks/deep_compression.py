"""Deep Compression on MNIST (Han, Mao, Dally, ICLR 2016, Tables 2 and 3), with the explorer's engine.

LeNet-300-100 (784-300-100-10, ReLU) and LeNet-5 in Caffe's shapes (conv 20@5x5, max-pool 2, conv 50@5x5,
max-pool 2, fc 500, ReLU, fc 10; no activation after the convolutions, as in Caffe's lenet.prototxt) are
trained dense with plain torch, then compressed through the engine's fine-tuning: gradual magnitude pruning
with masked retraining (the plan's schedule), the plan's k-means quantization, the centroids retrained
(each weight keeps its code), then entropy coding when the ``.cexp`` file is written. Each file is loaded
back and evaluated from the file.

The data is MNIST's test set only (10,000 images), split by index: 0-6999 train, 7000-7999 validation
(every setting below, dense and compressed, was chosen on these, seeds 0-2), 8000-9999 evaluation, read once
per model for the final table. Sizes are the files' bytes on disk (header, manifest, biases included).

    .venv/bin/python benchmarks/deep_compression.py --data ../shared/data/mnist-t10k [--seeds 0,1,2]
    .venv/bin/python benchmarks/deep_compression.py --data ../shared/data/mnist-t10k --quick   # smoke test

About 8 minutes on a 2-core machine with one torch thread (``--threads``; on a shared host one thread ran
these small models several times faster than two). The plans (``NETWORKS``) carry their recipe in their
``"finetune"`` section, as a plan file would. The architectures are built by this module's factories
(``deep_compression:lenet300``, ``deep_compression:lenet5``), which is what the files name: loading one needs
this directory on ``sys.path`` and ``factory=`` (``--factory``) naming the same reference.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the factories below are 'deep_compression:...'

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from explorer.engine import Plan, load_model  # noqa: E402
from explorer.engine.finetune.data import load_train_data  # noqa: E402
from explorer.engine.finetune.recipe import check_recipe  # noqa: E402
from explorer.engine.finetune.trainer import finetune  # noqa: E402
from explorer.engine.measure.metrics import accuracy  # noqa: E402
from explorer.engine.storage import fileformat  # noqa: E402
from explorer.units import table  # noqa: E402

IMAGES = "t10k-images-idx3-ubyte.gz"
SPLITS = {"train": (0, 7000), "validation": (7000, 8000), "evaluation": (8000, 10000)}
QUICK_SPLITS = {"train": (0, 400), "validation": (7000, 7200), "evaluation": (8000, 8300)}


# ----------------------------------------------------------------------------- the models (factories)


class LeNet300(nn.Module):
    """LeNet-300-100: 784-300-100-10 fully connected, ReLU (266,610 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """LeNet-5 as Caffe's MNIST example builds it (431,080 parameters): conv1 20@5x5 -> 20x24x24, max-pool 2,
    conv2 50@5x5 -> 50x8x8, max-pool 2, fc1 800 -> 500, ReLU, fc2 500 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def lenet300():
    """Factory: an untrained LeNet-300-100 and an example input (one 28x28 image)."""
    return LeNet300(), torch.zeros(1, 1, 28, 28)


def lenet5():
    """Factory: an untrained LeNet-5 (Caffe) and an example input (one 28x28 image)."""
    return LeNet5(), torch.zeros(1, 1, 28, 28)


# ----------------------------------------------------------------------------- settings and the paper


@dataclass(frozen=True)
class Dense:
    """How the uncompressed baseline is trained (plain torch, Adam, cosine learning rate; the epoch with the
    best validation accuracy kept)."""

    epochs: int
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0


def _kmeans(bits: int) -> dict:
    return {"bits": bits, "method": "kmeans", "init": "linear", "max_iter": 300}


def _layer(amount: float, bits: int) -> dict:
    return {"prune": {"amount": amount, "granularity": "element", "criterion": "l1"}, "quantize": _kmeans(bits)}


#: the recipe of both plans (a plan's "finetune" section): 8 pruning steps on Zhu & Gupta's polynomial schedule,
#: 2 epochs of masked retraining after each, then the plan's k-means and 12 epochs of centroid training; the
#: loss 0.1 x cross-entropy + 0.9 x distillation from the dense model at T = 1; the seed is the run's
FINETUNE = {"epochs": 12, "lr": 2e-3, "optimizer": "adam", "batch_size": 64, "weight_decay": 1e-4,
            "distill": {"temperature": 1.0, "alpha": 0.9},
            "schedule": {"kind": "polynomial", "steps": 8, "epochs_per_step": 2}}

NETWORKS = {
    "LeNet-300-100": {
        "factory": "deep_compression:lenet300",
        "table": "Table 2",
        "dense": Dense(epochs=50, weight_decay=1e-3),
        "plan": {
            "format": "compression-explorer-plan", "version": 1,
            "description": "LeNet-300-100 at twice Deep Compression's ratio: gradual pruning to 97/94/70%, "
                           "3-bit k-means on fc1, 4-bit on fc2, 5-bit on fc3, trained centroids",
            "default": _layer(0.97, 3),
            "layers": {"fc2": _layer(0.94, 4), "fc3": _layer(0.7, 5)},
            "finetune": FINETUNE,
        },
        # Han et al. 2016, Table 2: weights, % kept, weight bits (P+Q, +H), index bits (P+Q, +H), size % (P+Q+H)
        "paper": [("ip1", "235K", "8%", "6 / 4.4", "5 / 3.7", "2.32%"),
                  ("ip2", "30K", "9%", "6 / 4.4", "5 / 4.3", "3.04%"),
                  ("ip3", "1K", "26%", "6 / 4.3", "5 / 3.2", "12.70%"),
                  ("total", "266K", "8%", "6 / 5.1", "5 / 3.7", "2.49% (40x)")],
        "paper_accuracy": (98.36, 98.42),  # top-1 error 1.64% -> 1.58% (Table 1)
        "paper_ratio": 40,
    },
    "LeNet-5": {
        "factory": "deep_compression:lenet5",
        "table": "Table 3",
        "dense": Dense(epochs=25),
        "plan": {
            "format": "compression-explorer-plan", "version": 1,
            "description": "LeNet-5 at twice Deep Compression's ratio: gradual pruning (fc1 98%), 8-bit k-means on "
                           "conv1, 6-bit on conv2, 4-bit on fc1, 5-bit on fc2, trained centroids",
            "default": _layer(0.98, 4),
            "layers": {"conv1": _layer(0.4, 8), "conv2": _layer(0.9, 6), "fc2": _layer(0.85, 5)},
            "finetune": FINETUNE,
        },
        "paper": [("conv1", "0.5K", "66%", "8 / 7.2", "5 / 1.5", "67.45%"),
                  ("conv2", "25K", "12%", "8 / 7.2", "5 / 3.9", "5.28%"),
                  ("ip1", "400K", "8%", "5 / 4.5", "5 / 4.5", "2.45%"),
                  ("ip2", "5K", "19%", "5 / 5.2", "5 / 3.7", "6.13%"),
                  ("total", "431K", "8%", "5.3 / 4.1", "5 / 4.4", "2.55% (39x)")],
        "paper_accuracy": (99.20, 99.26),  # top-1 error 0.80% -> 0.74% (Table 1)
        "paper_ratio": 39,
    },
}

#: --quick: the same pipeline, tiny (one seed, a few hundred images, an epoch or two per phase)
QUICK_DENSE = Dense(epochs=2)
QUICK_FINETUNE = {"epochs": 1, "schedule": {"kind": "polynomial", "steps": 2, "epochs_per_step": 1}}


# ----------------------------------------------------------------------------- one run


@dataclass
class Run:
    network: str
    seed: int
    path: str
    dense_bytes: int
    file_bytes: int  # on disk
    predicted_bytes: int
    written_bytes: int  # what save() returned
    dense_val: float
    dense_eval: float
    before_retrain_val: Optional[float]  # the plan applied to the gradually pruned model, before retraining
    val: Optional[float]  # validation accuracy of the model kept (the best retraining epoch)
    memory_eval: float  # the in-memory compressed model on the evaluation split
    file_eval: float  # the model loaded from the file, on the evaluation split
    rows: list = field(default_factory=list)  # per-layer table rows
    seconds: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.file_bytes


def _data(root: str, splits: dict) -> dict:
    images = os.path.join(root, IMAGES)
    if not os.path.exists(images):
        raise SystemExit(f"error: {images}: no such file (give --data the directory holding MNIST's t10k files)")
    return {name: load_train_data(f"{images}@{a}:{b}") for name, (a, b) in splits.items()}


def train_dense(model: nn.Module, cfg: Dense, seed: int, train, val) -> float:
    """Train ``model`` in place; the weights of the epoch with the best validation accuracy are kept."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    x, y = train.data.inputs, train.data.labels
    best, best_state = -1.0, None
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        acc = accuracy(model, val.data)
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best


def _per_kept(nbytes: int, kept: int) -> str:
    return f"{8 * nbytes / kept:.1f}" if kept else "-"


def layer_rows(path: str, model: nn.Module) -> list:
    """The paper's columns for every compressed weight of the file at ``path`` (``model``: the model loaded
    from it): weights, % kept, how the positions are stored, weight bits and index bits as stored (P+Q) and
    after entropy coding (+H, bits of the coded stream per kept weight), all of the weight's bits per kept
    weight, and the layer's bytes (weight and bias) against its dense fp32 bytes."""
    mf = fileformat.read(path)
    by_name = {t["name"]: t for t in fileformat.summary(mf)["tensors"]}
    params = dict(model.named_parameters())
    length = [n for _, n in mf.offsets]
    rows = []
    for e in mf.manifest["tensors"]:
        enc, name = e.get("encoding") or {}, e["name"]
        if not name.endswith(".weight") or enc.get("storage") in (None, "raw"):
            continue
        layer = name[: -len(".weight")]
        n = params[name].numel()
        kept = int(torch.count_nonzero(params[name].detach()))
        coded = enc.get("values") == "codes"
        wbits = f"{enc['quant']['bits']} / {_per_kept(length[enc['index']['stream']], kept)}" if coded else "32 / 32"
        storage = enc["storage"]
        if storage == "gaps":
            ibits = f"{enc['gap_bits']} / {_per_kept(length[enc['gaps']['stream']], kept)}"
        elif storage == "bitmask":
            ibits = f"mask / {_per_kept(length[enc['mask']], kept)}"
        else:  # dense codes: a pruned weight is the zero code, so the positions are in the weight bits
            ibits = "in the codes"
        bias = by_name.get(layer + ".bias")
        dense = 4 * (n + (params[layer + ".bias"].numel() if bias else 0))
        stored = by_name[name]["bytes"] + (bias["bytes"] if bias else 0)
        rows.append({"layer": layer, "weights": n, "kept": kept, "storage": storage, "wbits": wbits, "ibits": ibits,
                     "bits": _per_kept(by_name[name]["bytes"], kept), "stored": stored, "dense": dense,
                     "encoding": by_name[name]["encoding"]})
    return rows


def train_one(network: str, seed: int, data: dict, quick: bool) -> tuple:
    """The network's dense model from ``seed``, trained: ``(loaded, validation accuracy, seconds)``."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # the dense model's initialisation
    loaded = load_model(NETWORKS[network]["factory"])
    dense_val = train_dense(loaded.model, QUICK_DENSE if quick else NETWORKS[network]["dense"], seed, data["train"],
                            data["validation"])
    return loaded, dense_val, time.perf_counter() - t0


def finetune_one(network: str, seed: int, loaded, dense_val: float, plan_raw: dict, data: dict, path: str,
                 quick: bool, log) -> Run:
    """``plan_raw`` (its ``"finetune"`` section the recipe, the seed ``seed``) applied to the trained dense
    model ``loaded`` through the engine's fine-tuning, written to ``path``, loaded back and evaluated."""
    t1 = time.perf_counter()
    plan_raw = copy.deepcopy(plan_raw)
    recipe = dict(plan_raw["finetune"], seed=seed, **(QUICK_FINETUNE if quick else {}))
    plan = Plan.from_dict(plan_raw)
    result = finetune(loaded, plan, data["train"], data["validation"], check_recipe(recipe),
                      on_epoch=lambda r: log(f"    epoch {r.epoch} ({r.phase}): loss {r.loss:.4f}, "
                                             f"validation {r.val:.2%} [{r.seconds:.1f} s]"))
    t2 = time.perf_counter()
    comp = result.compressed
    factory = NETWORKS[network]["factory"]
    predicted = fileformat.predicted_bytes(comp, loaded)
    written = fileformat.save(comp, path, loaded)
    back = fileformat.load(path, factory=factory)
    evaluation = data["evaluation"].data
    run = Run(network, seed, path, comp.bytes["dense"], os.path.getsize(path), predicted, written, dense_val,
              accuracy(loaded.model, evaluation), result.before, result.best, accuracy(comp.model, evaluation),
              accuracy(back, evaluation), layer_rows(path, back))
    run.seconds = {"finetune": t2 - t1}
    return run


def compress_one(network: str, seed: int, data: dict, out_dir: str, quick: bool, log) -> Run:
    loaded, dense_val, dense_seconds = train_one(network, seed, data, quick)
    path = os.path.join(out_dir, f"{network.lower()}-seed{seed}.cexp")
    run = finetune_one(network, seed, loaded, dense_val, NETWORKS[network]["plan"], data, path, quick, log)
    run.seconds["dense"] = dense_seconds
    run.seconds["total"] = dense_seconds + run.seconds["finetune"]
    return run


# ----------------------------------------------------------------------------- the tables


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2%}"


def seed_table(run: Run) -> str:
    rows = []
    for r in run.rows:
        rows.append([r["layer"], f"{r['weights']:,}", f"{r['kept'] / r['weights']:.1%}", r["storage"], r["wbits"],
                     r["ibits"], r["bits"], f"{r['stored'] / r['dense']:.2%}", f"{r['stored']:,}"])
    weights, kept = sum(r["weights"] for r in run.rows), sum(r["kept"] for r in run.rows)
    rows.append(["total (file)", f"{weights:,}", f"{kept / weights:.1%}", "", "", "",
                 _per_kept(run.file_bytes, kept), f"{run.file_bytes / run.dense_bytes:.2%} ({run.ratio:.1f}x)",
                 f"{run.file_bytes:,}"])
    head = ["layer", "weights", "kept", "positions", "weight bits (P+Q / +H)", "index bits (P+Q / +H)",
            "bits / kept weight", "size %", "bytes"]
    return table(rows, head, "lrrlrrrrr")


def paper_table(network: str) -> str:
    head = ["layer", "weights", "kept", "weight bits (P+Q / +H)", "index bits (P+Q / +H)", "size % (P+Q+H)"]
    return table([list(r) for r in NETWORKS[network]["paper"]], head, "lrrrrr")


def summary_table(runs: list) -> str:
    rows = []
    for net in NETWORKS:
        mine = [r for r in runs if r.network == net]
        if not mine:
            continue
        for r in mine:
            rows.append([net, str(r.seed), f"{r.file_bytes:,}", f"{r.ratio:.1f}x", _pct(r.dense_val), _pct(r.val),
                         f"{_pct(r.dense_eval)} -> {_pct(r.file_eval)}", f"{100 * (r.file_eval - r.dense_eval):+.2f}"])
        mean = statistics.mean
        d, c = mean(r.dense_eval for r in mine), mean(r.file_eval for r in mine)
        rows.append([net, "mean", f"{mean(r.file_bytes for r in mine):,.0f}",
                     f"{mean(r.ratio for r in mine):.1f}x", _pct(mean(r.dense_val for r in mine)),
                     _pct(mean(r.val for r in mine)), f"{_pct(d)} -> {_pct(c)}", f"{100 * (c - d):+.2f}"])
        pa, pb = NETWORKS[net]["paper_accuracy"]
        rows.append([net, "paper", "", f"{NETWORKS[net]['paper_ratio']}x", "", "",
                     f"{pa:.2f}% -> {pb:.2f}%", f"{pb - pa:+.2f}"])
    head = ["network", "seed", "file bytes", "ratio", "validation (dense)", "validation (compressed)",
            "evaluation: dense -> compressed (from the file)", "points"]
    return table(rows, head, "llrrrrrr")


def verdict(runs: list) -> list:
    lines = []
    for net in NETWORKS:
        mine = [r for r in runs if r.network == net]
        if not mine:
            continue
        ratio = min(r.ratio for r in mine)
        change = 100 * (statistics.mean(r.file_eval for r in mine) - statistics.mean(r.dense_eval for r in mine))
        ok = ratio >= 80 and change >= -0.2
        lines.append(f"{net}: smallest ratio {ratio:.1f}x (target >= 80x); mean accuracy {change:+.2f} points against "
                     f"the dense models' (target: at most 0.20 below): {'MET' if ok else 'NOT MET'}")
    return lines


def benchmark(data_dir: str, seeds=(0, 1, 2), networks=tuple(NETWORKS), out_dir: Optional[str] = None,
              quick: bool = False, log=None) -> list:
    """Run every network from every seed, printing each seed's table as it finishes, then the paper's tables
    and the summary; returns the :class:`Run` of each. ``out_dir`` keeps the ``.cexp`` files (default: a
    temporary directory, removed at the end)."""
    splits = QUICK_SPLITS if quick else SPLITS
    data = _data(data_dir, splits)
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    runs = []
    print("splits of MNIST's test set: " + ", ".join(f"{k} {a}-{b - 1}" for k, (a, b) in splits.items())
          + f"; torch threads {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = out_dir or tmp
        os.makedirs(out_dir, exist_ok=True)
        for net in networks:
            for seed in seeds:
                print(f"{net}, seed {seed}: training ...", file=sys.stderr, flush=True)
                run = compress_one(net, seed, data, out_dir, quick, log)
                runs.append(run)
                print(f"\n{net} (as {NETWORKS[net]['table']} of Han et al. 2016), seed {seed}: dense "
                      f"{run.dense_bytes:,} bytes -> file {run.file_bytes:,} bytes (predicted {run.predicted_bytes:,},"
                      f" written {run.written_bytes:,}); accuracy {_pct(run.dense_eval)} -> {_pct(run.file_eval)} "
                      f"(from the file; in memory {_pct(run.memory_eval)}); validation {_pct(run.dense_val)} dense, "
                      f"{_pct(run.before_retrain_val)} pruned and quantized, {_pct(run.val)} after retraining the "
                      f"centroids; {run.seconds['dense']:.0f} s dense, {run.seconds['finetune']:.0f} s compressing")
                print(seed_table(run), flush=True)
            print(f"\n{net}: the paper ({NETWORKS[net]['table']}; sizes of the weights, P+Q+H)")
            print(paper_table(net))
    a, b = splits["evaluation"]
    print(f"\nAccuracy on the evaluation split (images {a}-{b - 1} of MNIST's test set, read once per model; the "
          "paper's: the whole test set, trained on the 60,000 training images)")
    print(summary_table(runs))
    for line in verdict(runs):
        print(line)
    print(f"wall time {time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()}", flush=True)
    return runs


def parse_args(description: str, argv=None, extra=None) -> tuple:
    """The options of the MNIST benchmarks (``extra(ap)`` adds a script's own), parsed, torch's threads set:
    ``(args, seeds, log)``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", required=True, help="directory with MNIST's t10k-images-idx3-ubyte.gz and labels")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--out", default=None, help="directory for the .cexp files (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on this shared 2-core machine one thread ran faster than two)")
    ap.add_argument("--quick", action="store_true", help="smoke test: one seed, a few hundred images, 1-2 epochs")
    ap.add_argument("--verbose", action="store_true", help="one line per fine-tuning epoch (on stderr)")
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else None
    return args, seeds, log


def main(argv=None) -> int:
    args, seeds, log = parse_args(__doc__.split("\n\n")[0], argv, lambda ap: ap.add_argument(
        "--networks", default=",".join(NETWORKS), help="comma-separated: " + ", ".join(NETWORKS)))
    networks = [n.strip() for n in args.networks.split(",")]
    for n in networks:
        if n not in NETWORKS:
            raise SystemExit(f"error: unknown network {n!r} (known: {', '.join(NETWORKS)})")
    benchmark(args.data, seeds, networks, args.out, args.quick, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
