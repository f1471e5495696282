"""The sample models bundled with the explorer: two small digit classifiers in the shapes of the Deep
Compression paper's MNIST networks, trained on scikit-learn's digits (no download needed).

- ``digits-mlp``: LeNet-300-100's shape on 8x8 inputs, 64-300-100-10 (50,610 parameters).
- ``digits-cnn``: a LeNet-5 (Caffe variant) on 8x8 inputs, two 3x3 convolutions of 20 and 50 filters, then
  200-500-10 (114,760 parameters).

Their weights (``sample_models/<name>.safetensors``) and metadata (``<name>.json``) are produced by
``sample_models/train_samples.py``; ``<name>.plan.json`` next to them is the paper's recipe as a plan.

Factory contract
----------------
A factory is a zero-argument callable the loader calls to build a model (for samples and for users'
models alike). It returns one of

- an ``nn.Module``;
- a tuple ``(model, example_input)`` or ``(model, example_input, eval_data)``;
- a dict with key ``model`` and optional keys ``example_input`` and ``eval_data`` (an :class:`EvalData`).

The model it returns is untrained; weights are loaded into it afterwards.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Dict, List

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from explorer.engine.errors import LoadError
from explorer.engine.model.data import digits_split

__all__ = [
    "DigitsMLP",
    "DigitsCNN",
    "digits_mlp",
    "digits_cnn",
    "SAMPLES_DIR",
    "sample_names",
    "sample_info",
    "load_sample",
]

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "sample_models"


class DigitsMLP(nn.Module):
    """64-300-100-10 fully connected network with ReLU (LeNet-300-100's shape for 8x8 inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class DigitsCNN(nn.Module):
    """LeNet-5 (Caffe variant) for 1x8x8 inputs.

    conv 1->20 (3x3, pad 1), ReLU, max-pool 2 -> 20x4x4; conv 20->50 (3x3, pad 1), ReLU, max-pool 2 -> 50x2x2;
    flatten (200), Linear 200->500, ReLU, Linear 500->10.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(200, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def _digits_bundle(model: nn.Module) -> Dict[str, Any]:
    _, test = digits_split()
    return {"model": model, "example_input": test.inputs[:1].clone(), "eval_data": test}


def digits_mlp() -> Dict[str, Any]:
    """Factory of ``digits-mlp``: an untrained :class:`DigitsMLP`, a (1, 1, 8, 8) example input and the
    digits test split."""
    return _digits_bundle(DigitsMLP())


def digits_cnn() -> Dict[str, Any]:
    """Factory of ``digits-cnn``: an untrained :class:`DigitsCNN`, a (1, 1, 8, 8) example input and the
    digits test split."""
    return _digits_bundle(DigitsCNN())


#: The only factories a compressed file may name without the user confirming it (they build our samples).
SAMPLE_FACTORIES = frozenset({f"{__name__}:digits_mlp", f"{__name__}:digits_cnn"})


def sample_names() -> List[str]:
    """Names of the bundled samples (each ``sample_models/<name>.json`` that is not a plan), sorted."""
    if not SAMPLES_DIR.is_dir():
        return []
    return sorted(
        p.name[: -len(".json")]
        for p in SAMPLES_DIR.glob("*.json")
        if not p.name.endswith(".plan.json")
    )


def sample_info(name: str) -> Dict[str, Any]:
    """The metadata of sample ``name``, as written in ``sample_models/<name>.json``.

    Raises
    ------
    LoadError
        If there is no such sample (the message lists the known ones) or its metadata is unreadable.
    """
    names = sample_names()
    if name not in names:
        known = ", ".join(names) if names else f"none (no metadata in {SAMPLES_DIR})"
        raise LoadError(f"unknown sample model '{name}'; known samples: {known}")
    path = SAMPLES_DIR / f"{name}.json"
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path}: cannot read sample metadata ({exc})") from exc
    if not isinstance(info, dict):
        raise LoadError(f"{path}: sample metadata must be a JSON object")
    return info


def load_sample(name: str) -> Dict[str, Any]:
    """Build sample ``name`` with its trained weights.

    Returns
    -------
    dict
        ``model`` (in eval mode, weights loaded), ``example_input``, ``eval_data``, ``info`` (the metadata)
        and ``plan_path`` (the example plan's path, or None).
    """
    info = sample_info(name)
    module_name, _, attr = str(info.get("factory", "")).partition(":")
    if str(info.get("factory", "")) not in SAMPLE_FACTORIES:  # samples only name our own factories
        raise LoadError(f"sample '{name}': factory {info.get('factory')!r} is not a bundled sample factory")
    factory = getattr(importlib.import_module(module_name), attr, None)
    if factory is None:
        raise LoadError(f"sample '{name}': {module_name} has no factory '{attr}'")
    bundle = dict(factory())
    weights = SAMPLES_DIR / str(info.get("weights", f"{name}.safetensors"))
    if not weights.exists():
        raise LoadError(f"{weights}: no such file (run `make samples` to train the sample models)")
    try:
        bundle["model"].load_state_dict(load_file(str(weights)))
    except Exception as exc:  # SafetensorError, RuntimeError on mismatched keys or shapes, OSError
        raise LoadError(f"{weights}: weights do not fit sample '{name}' ({exc})") from exc
    bundle["model"].eval()
    bundle["info"] = info
    plan = SAMPLES_DIR / f"{name}.plan.json"
    bundle["plan_path"] = plan if plan.exists() else None
    return bundle
