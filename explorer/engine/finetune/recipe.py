"""How a compressed model is retrained: the recipe, a plan-level option (``"finetune"`` in a plan file) that
the CLI's flags and the window's dialog fill in or override.

    "finetune": {"epochs": 8, "lr": 0.001, "optimizer": "adam", "batch_size": 64,
                 "distill": {"temperature": 4.0, "alpha": 0.7},
                 "schedule": {"kind": "polynomial", "steps": 4, "epochs_per_step": 2},
                 "seed": 0, "val_fraction": 0.1}

- ``epochs``: epochs of retraining after the last pruning step (masked weights, shared centroids).
- ``distill``: knowledge distillation from the uncompressed model: the loss is ``(1 - alpha) * CE(labels) +
  alpha * T^2 * KL(teacher_T || student_T)``; data without labels uses the teacher's outputs alone.
- ``schedule``: gradual pruning before quantization: ``iterative`` (Han et al. 2015: equal steps of sparsity)
  or ``polynomial`` (Zhu & Gupta 2017: ``s_t = s_f (1 - (1 - t/n)^3)``), ``steps`` pruning steps each followed by
  ``epochs_per_step`` epochs of masked retraining; then the plan's quantization, then ``epochs`` of retraining.
  Without a schedule the plan is applied at once and retrained.
- ``hints``: feature-map distillation (FitNets, Romero et al. 2015) beside (or instead of) the output's:
  ``{"layers": [["conv2", "conv2"], "fc1"], "weight": 1.0}`` pairs a teacher layer's output with a student
  layer's (a name alone: the same layer in both); the loss gains ``weight`` times the mean squared error
  between each teacher feature map and the student's, passed through a 1x1 regressor (a 1x1 convolution or
  a Linear, trained with the student and then discarded) where their widths differ, as after filter pruning.
- ``group_lasso``: structured sparsity learning (Wen et al. 2016) first: ``{"strength": 0.001, "epochs": 4}``
  trains the uncompressed model for ``epochs`` epochs with ``strength`` times the sum of the L2 norms of the
  groups the plan removes (each filter of a filter-pruned layer, each input channel of a channel-pruned one)
  added to the loss, which drives whole groups towards zero; the plan then removes the smallest, for real, and
  ``epochs`` of retraining follow. Every epoch records each group's norm.
- ``val_fraction``: the share of the training data held out for validation (the last samples) when no
  validation data is given; the split is recorded with the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Optional

from explorer.engine.errors import PlanError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("iterative", "polynomial")
MAX_EPOCHS = 10_000
MAX_STEPS = 1_000


@dataclass(frozen=True)
class Distill:
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft (teacher) loss; the hard loss gets 1 - alpha


@dataclass(frozen=True)
class Hints:
    layers: tuple = ()  # (teacher layer, student layer) pairs
    weight: float = 1.0  # the hint loss's weight beside the task (or distillation) loss


@dataclass(frozen=True)
class GroupLasso:
    strength: float = 1e-3  # lambda: the weight of sum_g ||W_g||_2 in the loss
    epochs: int = 4  # epochs of penalised training of the uncompressed model, before the plan is applied


@dataclass(frozen=True)
class Schedule:
    kind: str = "polynomial"
    steps: int = 4
    epochs_per_step: int = 1


@dataclass(frozen=True)
class Recipe:
    epochs: int = 4
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    batch_size: int = 64
    distill: Optional[Distill] = None
    schedule: Optional[Schedule] = None
    hints: Optional[Hints] = None
    group_lasso: Optional[GroupLasso] = None
    seed: int = 0
    val_fraction: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    def with_changes(self, **changes) -> "Recipe":
        """A copy with ``changes`` (flag values from the CLI or the dialog), validated like a plan's."""
        raw = self.to_dict()
        raw.update({k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in changes.items()})
        return check_recipe(raw)

    def total_epochs(self) -> int:
        s, g = self.schedule, self.group_lasso
        return self.epochs + (s.steps * s.epochs_per_step if s is not None else 0) + (g.epochs if g else 0)


def _number(raw: Mapping, key: str, where: str, lo: float, hi: float, integer: bool = False):
    v = raw[key]
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)) or not lo <= v <= hi:
        kind = "an integer" if integer else "a number"
        raise PlanError(f"{where}.{key} must be {kind} in [{lo:g}, {hi:g}], got {v!r}")
    return int(v) if integer else float(v)


def _section(raw: Any, where: str, keys: tuple) -> dict:
    if not isinstance(raw, Mapping):
        raise PlanError(f"{where} must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise PlanError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(keys)})")
    return dict(raw)


def check_recipe(raw: Any, where: str = "plan finetune") -> Recipe:
    """Validate a recipe (a plan's ``"finetune"`` object); every refusal is one :class:`PlanError` naming the
    key."""
    if isinstance(raw, Recipe):
        return raw
    keys = tuple(Recipe.__dataclass_fields__)
    raw = _section(raw, where, keys)
    base = Recipe()
    out: dict = {}
    limits = {"epochs": (0, MAX_EPOCHS, True), "lr": (1e-12, 10.0, False), "momentum": (0.0, 0.999, False),
              "weight_decay": (0.0, 1.0, False), "batch_size": (1, 1 << 16, True), "seed": (0, 2 ** 32 - 1, True),
              "val_fraction": (0.0, 0.5, False)}
    for key, (lo, hi, integer) in limits.items():
        if key in raw:
            out[key] = _number(raw, key, where, lo, hi, integer)
    if "optimizer" in raw:
        if not isinstance(raw["optimizer"], str) or raw["optimizer"] not in OPTIMIZERS:
            raise PlanError(f"{where}.optimizer must be one of {', '.join(OPTIMIZERS)}, got {raw['optimizer']!r}")
        out["optimizer"] = raw["optimizer"]
    for key, cls, limits in (("distill", Distill, {"temperature": (0.1, 100.0, False), "alpha": (0.0, 1.0, False)}),
                             ("group_lasso", GroupLasso, {"strength": (0.0, 100.0, False),
                                                          "epochs": (1, MAX_EPOCHS, True)})):
        if raw.get(key) is not None:
            sub = _section(raw[key], f"{where}.{key}", tuple(limits))
            out[key] = cls(**{k: _number(sub, k, f"{where}.{key}", *limits[k]) for k in limits if k in sub})
        elif key in raw:
            out[key] = None
    if raw.get("hints") is not None:
        out["hints"] = _hints(raw["hints"], f"{where}.hints")
    elif "hints" in raw:
        out["hints"] = None
    if raw.get("schedule") is not None:
        s = _section(raw["schedule"], f"{where}.schedule", ("kind", "steps", "epochs_per_step"))
        ss = {}
        if "kind" in s:
            if not isinstance(s["kind"], str) or s["kind"] not in SCHEDULES:
                raise PlanError(f"{where}.schedule.kind must be one of {', '.join(SCHEDULES)}, got {s['kind']!r}")
            ss["kind"] = s["kind"]
        if "steps" in s:
            ss["steps"] = _number(s, "steps", f"{where}.schedule", 1, MAX_STEPS, True)
        if "epochs_per_step" in s:
            ss["epochs_per_step"] = _number(s, "epochs_per_step", f"{where}.schedule", 0, MAX_EPOCHS, True)
        out["schedule"] = Schedule(**ss)
    elif "schedule" in raw:
        out["schedule"] = None
    return replace(base, **out)


MAX_HINTS = 64


def _hints(raw: Any, where: str) -> Hints:
    h = _section(raw, where, ("layers", "weight"))
    layers = h.get("layers")
    if not isinstance(layers, (list, tuple)) or not 1 <= len(layers) <= MAX_HINTS:
        raise PlanError(f"{where}.layers must be a list of 1 to {MAX_HINTS} layer names or [teacher, student] pairs")
    pairs = []
    for i, item in enumerate(layers):
        pair = (item, item) if isinstance(item, str) else tuple(item) if isinstance(item, (list, tuple)) else None
        if pair is None or len(pair) != 2 or not all(isinstance(n, str) and 0 < len(n) <= 1000 for n in pair):
            raise PlanError(f"{where}.layers[{i}] must be a layer name or a [teacher, student] pair, got {item!r}")
        pairs.append(pair)
    weight = _number(h, "weight", where, 0.0, 1e6) if "weight" in h else 1.0
    return Hints(tuple(pairs), weight)


def parse_hints(text: str) -> Hints:
    """``"conv2,fc1[:WEIGHT]"`` or ``"conv2=conv2"`` pairs (the CLI's ``--hints``): teacher=student names."""
    names, _, weight = str(text).partition(":")
    layers = [list(part.split("=", 1)) if "=" in part else part for part in names.split(",") if part]
    raw: dict = {"layers": layers}
    if weight:
        try:
            raw["weight"] = float(weight)
        except ValueError:
            raise PlanError(f"--hints takes LAYER[,LAYER...][:WEIGHT] (e.g. conv2,fc1:0.5), got {text!r}") from None
    return check_recipe({"hints": raw}, "--hints").hints


def parse_group_lasso(text: str) -> GroupLasso:
    """``"STRENGTH[:EPOCHS]"`` (the CLI's ``--group-lasso``), e.g. ``0.001:4``."""
    strength, _, epochs = str(text).partition(":")
    try:
        raw = {"strength": float(strength)}
        if epochs:
            raw["epochs"] = int(epochs)
    except ValueError:
        raise PlanError(f"--group-lasso takes STRENGTH[:EPOCHS] (e.g. 0.001:4), got {text!r}") from None
    return check_recipe({"group_lasso": raw}, "--group-lasso").group_lasso


def parse_distill(text: str) -> Distill:
    """``"T,alpha"`` (the CLI's ``--distill``), e.g. ``4,0.7``."""
    parts = str(text).split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        raw = {"temperature": float(parts[0]), "alpha": float(parts[1])}
    except ValueError:
        raise PlanError(f"--distill takes T,alpha (e.g. 4,0.7), got {text!r}") from None
    return check_recipe({"distill": raw}, "--distill").distill


def parse_schedule(text: str) -> Schedule:
    """``"kind[:steps[:epochs_per_step]]"`` (the CLI's ``--schedule``), e.g. ``polynomial:4:2``."""
    parts = str(text).split(":")
    raw: dict = {"kind": parts[0]}
    try:
        if len(parts) > 1:
            raw["steps"] = int(parts[1])
        if len(parts) > 2:
            raw["epochs_per_step"] = int(parts[2])
        if len(parts) > 3:
            raise ValueError
    except ValueError:
        raise PlanError(f"--schedule takes kind[:steps[:epochs_per_step]] (e.g. polynomial:4:2), got {text!r}") from None
    return check_recipe({"schedule": raw}, "--schedule").schedule
