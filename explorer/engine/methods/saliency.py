"""Saliency criteria for pruning: rank weights by their estimated effect on the loss instead of their magnitude.

* ``obd`` -- Optimal Brain Damage (LeCun, Denker & Solla 1989): removing weight ``w_i`` raises the loss by about
  ``s_i = 1/2 h_ii w_i^2`` at a minimum, ``h_ii`` the Hessian's diagonal. Estimated here by its Gauss-Newton
  (Fisher) approximation ``h_ii ~ E_x sum_c (dz_c/dw_i)^2``, the squared gradients of the class scores ``z``
  (the curvature of a squared error on the class scores, LeCun et al.'s own setting; not the cross-entropy's own
  Gauss-Newton, which weights the classes by diag(p) - p p^T), unbiased from one backward pass per
  batch: the gradient of ``sum_x,c v_xc z_xc`` with ``v`` random signs. (The squared gradients of the
  cross-entropy itself, the empirical Fisher, vanish on data a trained model fits: it ranked digits-cnn's conv2
  no better, and its fully connected layers worse.)
* ``taylor`` -- first-order Taylor (Molchanov et al. 2017): setting ``w_i`` to 0 changes the loss by about
  ``-g_i w_i``; ranked by ``E_b |g_i w_i|`` over the same batches.

A structured request (filters, channels) ranks each channel by the sum of its weights' saliencies (OBD's
saliency of deleting a set of weights, under its diagonal approximation; for Taylor the sum of the per-weight
terms). Neuron merging is data-free and keeps its own saliency.

The data: the calibration examples of the model as it was loaded (:func:`calibration`): a bundled sample's
training split (never the test split its accuracy is measured on), else the first :data:`CALIBRATION` examples
of the eval data; their labels, or where there are none the model's own top class. The scores are computed
once per model, data and weights (one forward and backward pass per batch of :data:`BATCH`, with
``torch.autograd.grad``: the parameters' ``.grad`` is never touched) and looked up by the weight tensor, so
every path that compresses the loaded model (the CLI, the window's preview, fine-tuning, sensitivity) ranks the
same way.
"""

from __future__ import annotations

import threading
import weakref
from typing import Optional

import torch
from torch import nn

from explorer.engine.errors import CompressionError
from explorer.engine.measure.metrics import compressible_layers, eval_mode, first_output
from explorer.engine.methods.granularities import SALIENCY
from explorer.engine.methods.prune import magnitude_mask
from explorer.engine.model.data import digits_split

CALIBRATION = 256  # examples at most
BATCH = 16

__all__ = ["SALIENCY", "CALIBRATION", "BATCH", "provide", "importance", "element_mask", "calibration", "token"]

# id(weight tensor) -> (a weak reference to it, its models' providers, newest last); an entry goes with its
# tensor. Keyed by id, not by the tensor (a tensor's == is elementwise); a detached view of a weight (what the
# views read) is found by its storage (_VIEWS: data pointer, shape -> id)
_OWNERS: dict = {}
_VIEWS: dict = {}


class _Provider:
    """The saliencies of one loaded model's layer weights, computed on first use."""

    def __init__(self, loaded):
        self.loaded = weakref.ref(loaded)
        self.lock = threading.Lock()
        self.key = None
        self.scores: dict = {}  # id(weight) -> {"obd": tensor, "taylor": tensor}

    def get(self, weight: torch.Tensor, criterion: str, name: str) -> torch.Tensor:
        loaded = self.loaded()
        if loaded is None:
            raise CompressionError(f"layer '{name}': criterion {criterion} needs the model it was loaded as")
        with self.lock:
            key = _state_key(loaded)
            if key != self.key:
                self.scores = _compute(loaded)
                self.key = key
            hit = self.scores.get(id(weight))
        if hit is None:
            raise CompressionError(f"layer '{name}': criterion {criterion} has no saliency for this tensor")
        return hit[criterion]


def provide(loaded) -> None:
    """Make ``loaded``'s layer weights rankable by saliency (computed on first use, from :func:`calibration`)."""
    provider = _Provider(loaded)
    try:
        layers = compressible_layers(loaded.model)
    except Exception:  # a model whose layers cannot be listed has nothing to rank
        return
    for _, layer in layers:
        w = getattr(layer, "weight", None)
        if isinstance(w, torch.Tensor):
            key = id(w)
            held = _OWNERS.get(key)
            providers = [p for p in held[1] if p.loaded() is not None] if held is not None and held[0]() is w else []
            view = (w.data_ptr(), tuple(w.shape))

            def gone(_, key=key, view=view):
                _OWNERS.pop(key, None)
                if _VIEWS.get(view) == key:
                    del _VIEWS[view]
            _OWNERS[key] = (weakref.ref(w, gone), providers + [provider])  # the newest loaded model ranks it
            _VIEWS[view] = key


def importance(weight: torch.Tensor, criterion: str, name: str = "layer") -> torch.Tensor:
    """The saliency of every weight of ``weight`` (same shape, >= 0) under ``criterion`` (``obd``, ``taylor``).

    Raises
    ------
    CompressionError
        The tensor is not a layer weight of a loaded model (a factor of a factorised layer, a layer whose
        channels were removed first), or its model cannot give a loss to differentiate (no data, no class
        scores).
    """
    if criterion not in SALIENCY:
        raise CompressionError(f"layer '{name}': {criterion!r} is not a saliency criterion ({', '.join(SALIENCY)})")
    owner, provider = _owner(weight)
    if provider is None:
        raise CompressionError(
            f"layer '{name}': criterion {criterion} ranks a loaded model's own layer weights by their effect on the "
            "loss; this tensor is not one (a factor of a factorised layer, or a layer whose channels are removed "
            "first): prune it with criterion l1")
    return provider.get(owner, criterion, name)


def _owner(weight: torch.Tensor):
    """``(the registered layer weight, its newest live provider)`` for ``weight`` or a detached view of it
    (``detach()``: the same storage), else ``(None, None)``."""
    entry = _OWNERS.get(id(weight))
    owner = weight
    if entry is None or entry[0]() is not weight:
        key = _VIEWS.get((weight.data_ptr(), tuple(weight.shape)))
        entry = _OWNERS.get(key) if key is not None else None
        owner = entry[0]() if entry is not None else None
        if owner is None or owner.data_ptr() != weight.data_ptr() or owner.dtype != weight.dtype:
            return None, None
    live = [p for p in entry[1] if p.loaded() is not None]
    return (owner, live[-1]) if live else (None, None)


def _provider_of(weight: torch.Tensor):
    return _owner(weight)[1]


def token(weight: torch.Tensor):
    """What a saliency ranking of ``weight`` depends on besides the weight: its provider's data and the model's
    weights (a cache of a pruned tensor keys on it), or None."""
    provider = _provider_of(weight)
    loaded = provider.loaded() if provider is not None else None
    return None if loaded is None else (id(provider), _state_key(loaded))


def element_mask(weight: torch.Tensor, amount, criterion: str = "l1", name: str = "layer",
                 ranked: Optional[torch.Tensor] = None):
    """The element-pruning mask (flat, row-major) keeping the weights ``criterion`` ranks highest: the largest
    |w| for l1 and l2, the largest saliency for obd and taylor (ties by position, as
    :func:`~explorer.engine.methods.prune.magnitude_mask`). ``ranked``: the loaded model's tensor of the same
    values whose saliency is looked up (``weight`` itself by default; a copy of the model has its own tensors)."""
    if criterion in SALIENCY:
        return magnitude_mask(importance(weight if ranked is None else ranked, criterion, name), amount)
    return magnitude_mask(weight, amount)


def calibration(loaded) -> Optional[tuple]:
    """``(inputs, labels or None, what)``: a sample's training split (the first :data:`CALIBRATION`), else the
    eval data's first :data:`CALIBRATION` examples; None when there is neither."""
    if getattr(loaded, "kind", "") == "sample" or (getattr(loaded, "meta", {}) or {}).get("sample"):
        train, _ = digits_split()
        return train.inputs[:CALIBRATION], train.labels[:CALIBRATION], "the digits training split"
    ev = getattr(loaded, "eval_data", None)
    if ev is None:
        return None
    labels = ev.labels[:CALIBRATION] if ev.labels is not None else None
    return ev.inputs[:CALIBRATION], labels, ev.name


def _state_key(loaded) -> tuple:
    ev = getattr(loaded, "eval_data", None)
    return (id(loaded.model), id(ev), tuple((id(p), p._version) for p in loaded.model.parameters()))


def _compute(loaded) -> tuple:
    model = loaded.model
    data = calibration(loaded)
    if data is None:
        raise CompressionError("pruning by saliency (obd, taylor) needs data to estimate the loss's gradients: give "
                               "eval data (--data, or Data in the window)")
    x, y, what = data
    if isinstance(model, torch.jit.ScriptModule):
        raise CompressionError("pruning by saliency (obd, taylor) differentiates the model, which this TorchScript "
                               "graph does not allow here: use criterion l1")
    weights, seen = [], set()
    for _, layer in compressible_layers(model):
        w = getattr(layer, "weight", None)
        if isinstance(w, torch.Tensor) and w.is_floating_point() and id(w) not in seen:
            seen.add(id(w))
            weights.append(w)
    fisher = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    taylor = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    was = [w.requires_grad for w in weights]
    batches = examples = 0
    gen = torch.Generator().manual_seed(0)
    try:
        for w in weights:
            w.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            for start in range(0, x.shape[0], BATCH):
                xb = x[start:start + BATCH]
                out = first_output(model(xb))
                if out.dim() != 2:
                    raise CompressionError(
                        f"pruning by saliency needs class scores (batch x classes) to take a cross-entropy; the "
                        f"model returns shape {tuple(out.shape)}: use criterion l1")
                target = y[start:start + BATCH] if y is not None else out.detach().argmax(1)
                loss = nn.functional.cross_entropy(out.float(), target.long())
                # the Gauss-Newton diagonal sum_x sum_c (dz_c/dw)^2 of the class scores z, unbiased from one
                # backward pass: the gradient of sum v * z with v a random sign per example and class
                signs = torch.randint(0, 2, out.shape, generator=gen).to(out.dtype) * 2 - 1
                grads = torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
                projected = torch.autograd.grad((signs * out).sum(), weights, allow_unused=True)
                for i, (w, g, j) in enumerate(zip(weights, grads, projected)):
                    if g is not None:
                        taylor[i] += (g.detach().float() * w.detach().float()).abs()
                    if j is not None:
                        fisher[i] += j.detach().float() ** 2
                batches += 1
                examples += xb.shape[0]
    except CompressionError:
        raise
    except Exception as exc:
        raise CompressionError(f"pruning by saliency: the model failed on its calibration data ({what}): "
                               f"{type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        for w, r in zip(weights, was):
            w.requires_grad_(r)
    n = max(batches, 1)
    return {id(w): {"obd": 0.5 * (f / max(examples, 1)) * w.detach().float() ** 2, "taylor": t / n}
            for w, f, t in zip(weights, fisher, taylor)}
