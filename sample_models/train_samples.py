"""Train the bundled sample models and write their weights and metadata next to this script.

    python sample_models/train_samples.py            # both samples
    python sample_models/train_samples.py digits-cnn # one of them

Each model is trained on the digits TRAIN split (scikit-learn's bundled digits, seeded split), on the CPU,
with a fixed seed and deterministic algorithms, then scored on the TEST split. Outputs per sample:
``<name>.safetensors`` (the state_dict, no pickle) and ``<name>.json`` (metadata incl. baseline_accuracy).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from explorer.engine import samples  # noqa: E402
from explorer.engine.model.data import EvalData, digits_split  # noqa: E402

SEED = 0
SPLIT_SEED = 0
TEST_FRACTION = 0.2

SAMPLES = {
    "digits-mlp": {
        "factory": "digits_mlp",
        "description": "A LeNet-300-100-shaped fully connected classifier of 8x8 handwritten digits.",
        "architecture": "flatten 64 -> Linear 300 -> ReLU -> Linear 100 -> ReLU -> Linear 10",
        "hyper": {"optimizer": "Adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 100, "batch_size": 32},
    },
    "digits-cnn": {
        "factory": "digits_cnn",
        "description": "A LeNet-5 (Caffe variant) convolutional classifier of 8x8 handwritten digits.",
        "architecture": (
            "conv 1->20 3x3 pad 1 -> ReLU -> maxpool 2 -> conv 20->50 3x3 pad 1 -> ReLU -> maxpool 2 -> "
            "flatten 200 -> Linear 500 -> ReLU -> Linear 10"
        ),
        "hyper": {"optimizer": "Adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 100, "batch_size": 32},
    },
}


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: EvalData, batch_size: int = 512) -> float:
    """Top-1 accuracy as ``correct / total`` (a Python float), the way the tests recompute it."""
    model.eval()
    correct = 0
    for x, y in data.batches(batch_size):
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / len(data)


def train(model: torch.nn.Module, data: EvalData, hyper: dict) -> None:
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=hyper["lr"], weight_decay=hyper["weight_decay"])
    n = len(data)
    for _ in range(hyper["epochs"]):
        model.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, hyper["batch_size"]):
            idx = order[start:start + hyper["batch_size"]]
            opt.zero_grad()
            loss = F.cross_entropy(model(data.inputs[idx]), data.labels[idx])
            loss.backward()
            opt.step()


def build(name: str) -> dict:
    spec = SAMPLES[name]
    torch.manual_seed(SEED)  # the initial weights depend on this
    bundle = getattr(samples, spec["factory"])()
    model = bundle["model"]
    train_data, test_data = digits_split(seed=SPLIT_SEED, test_fraction=TEST_FRACTION)
    t0 = time.perf_counter()
    train(model, train_data, spec["hyper"])
    seconds = time.perf_counter() - t0
    train_acc = accuracy(model, train_data)
    test_acc = accuracy(model, test_data)

    weights = f"{name}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(HERE / weights), metadata={"name": name, "format": "pt"})
    (HERE / weights).chmod(0o644)  # safetensors creates the file owner-only
    info = {
        "name": name,
        "description": spec["description"],
        "architecture": spec["architecture"],
        "factory": f"explorer.engine.samples:{spec['factory']}",
        "weights": weights,
        "data": {
            "source": "sklearn.datasets.load_digits",
            "split": (
                f"pixels / 16; numpy RandomState({SPLIT_SEED}).permutation; first {len(test_data)} test, "
                f"rest train (explorer.engine.model.data.digits_split(seed={SPLIT_SEED}, "
                f"test_fraction={TEST_FRACTION}))"
            ),
            "seed": SPLIT_SEED,
            "train": len(train_data),
            "test": len(test_data),
        },
        "baseline_accuracy": test_acc,
        "train_accuracy": train_acc,
        "params": sum(p.numel() for p in model.parameters()),
        "trained_with": {
            **spec["hyper"],
            "loss": "cross_entropy",
            "seed": SEED,
            "device": "cpu",
            "deterministic": True,
            "torch": torch.__version__.split("+")[0],
        },
    }
    with open(HERE / f"{name}.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(f"{name}: {info['params']} params, train {train_acc:.4f}, test {test_acc:.4f} ({seconds:.1f} s)")
    return info


def main(argv: list[str]) -> int:
    names = argv or list(SAMPLES)
    unknown = [n for n in names if n not in SAMPLES]
    if unknown:
        print(f"unknown sample(s): {', '.join(unknown)}; known: {', '.join(SAMPLES)}", file=sys.stderr)
        return 2
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # same float summation order on every machine
    for name in names:
        build(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
