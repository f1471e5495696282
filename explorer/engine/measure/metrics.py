"""Counting work and measuring quality.

MACs (multiply-accumulates) of the compressible layers are measured with forward hooks on the model's
example input: Linear = output elements x in_features; Conv = output elements x (in_channels / groups)
x kernel area; Embedding = 0 (a lookup). FLOPs = 2 x MACs, the convention of
``torch.utils.flop_counter.FlopCounterMode``. Bias additions, norms, activations, pooling and other
element-wise work are not counted. ``model_macs`` counts the whole model with FlopCounterMode / 2, which
also covers matrix products outside layers (e.g. attention scores).
"""

from __future__ import annotations

import copy
import math
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import sdpa_flop_count

from explorer.engine.errors import Cancelled, ExplorerError
from explorer.engine.layers import SCRIPTED_TYPES, kind_of, module_layers, module_macs, type_name
from explorer.engine.modules import BlockCirculant, TTCore
from explorer.engine.progress import ProgressFn, report

# the types a low-rank factor chain is built from
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, TTCore, BlockCirculant)


def eval_mode(model):
    """``model`` in eval mode for the ``with`` block (BatchNorm statistics untouched), its mode restored."""
    return _eval_mode(model)


@contextmanager
def _eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def layer_type(module) -> Optional[str]:
    """The compressible type name of ``module`` (a module, a :class:`~explorer.engine.layers.WeightSlot`,
    or a TorchScript submodule), else None."""
    if kind_of(module) is not None and not isinstance(module, torch.jit.ScriptModule):
        return type_name(module)
    if isinstance(module, torch.jit.ScriptModule):
        name = getattr(module, "original_name", "")
        if name in SCRIPTED_TYPES and hasattr(module, "weight"):
            return name
    return None


def compressible_layers(model: nn.Module) -> list:
    """(name, layer) of every compressible layer, in module order: modules with a weight (Linear, Conv,
    Embedding, ...) and the weight matrices of LSTM/GRU/RNN and MultiheadAttention modules, each a
    :class:`~explorer.engine.layers.WeightSlot` (see :data:`explorer.engine.layers.KINDS`)."""
    out = []
    for n, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            if n and layer_type(m) is not None:
                out.append((n, m))
            continue
        out.extend((ln, layer) for ln, layer in module_layers(n, m) if ln)
    return out


def _call(model: nn.Module, example):
    with torch.no_grad():
        if isinstance(example, dict):
            return model(**example)
        if isinstance(example, (tuple, list)):
            return model(*example)
        return model(example)


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_like(x, device="meta")
    if isinstance(x, (tuple, list)):
        return type(x)(_to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the 'meta' device: same shapes, no data,
    no copying of weights (they are swapped out through deepcopy's memo)."""
    memo: dict = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in memo:
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _count(model: nn.Module, example, hooks: bool) -> tuple:
    counts: dict = {}
    handles = []

    def hook(name):
        def fn(mod, args, kwargs, out):
            for lname, macs in module_macs(name, mod, args, kwargs, out).items():
                counts[lname] = counts.get(lname, 0) + macs
        return fn

    if hooks:
        for name, mod in model.named_modules():
            layers = module_layers(name, mod)
            if layers:
                for lname, _ in layers:
                    counts.setdefault(lname, 0)
                handles.append(mod.register_forward_hook(hook(name), with_kwargs=True))
    # torch counts scaled_dot_product_attention on its GPU kernels but not on the CPU one: count it the same way
    extra = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        extra[cpu_sdpa] = _cpu_sdpa_flops
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=extra)
    try:
        with counter:
            run_model(model, example)
    finally:
        for h in handles:
            h.remove()
    # FlopCounterMode misses fused kernels (an LSTM's, the native MultiheadAttention path): the model runs at
    # least its layers' MACs
    return counts, max(counter.get_total_flops() // 2, sum(counts.values()))


def count_macs(model: nn.Module, example) -> tuple:
    """``(per-layer MACs, whole-model MACs)`` from one forward pass on ``example``.

    Per layer: forward hooks on every module holding layers (any depth, by name; a module run twice counts
    twice), each layer's MACs as its type in :data:`explorer.engine.layers.KINDS` counts them (an LSTM's
    matrix: its (batch, step) positions x its size; a transposed convolution: input elements x out/groups
    x kernel). Whole model: FlopCounterMode's FLOPs / 2, at least the layers' sum (it misses fused
    kernels: an LSTM's, MultiheadAttention's native path). The pass runs on 'meta' tensors where the model
    allows it (shapes only: no arithmetic, milliseconds even for big models), else on the real example.
    TorchScript modules run no Python hooks: their per-layer dict is empty.
    """
    scripted = isinstance(model, torch.jit.ScriptModule)
    if not scripted:
        try:
            return _count(_meta_copy(model), _to_meta(example), hooks=True)
        except Exception:  # data-dependent control flow, tensors outside parameters, ...: count for real
            pass
    return _count(model, example, hooks=not scripted)


def layer_macs(model: nn.Module, example) -> dict:
    """MACs of every Linear/Conv/Embedding module for one forward pass on ``example`` (see count_macs)."""
    return count_macs(model, example)[0]


def model_macs(model: nn.Module, example) -> int:
    """Whole-model MACs: FlopCounterMode's FLOPs / 2 for one forward pass on ``example``."""
    return count_macs(model, example)[1]


@contextmanager
def _counting():
    """No gradients, and torch's fused attention fast path off: FlopCounterMode cannot see inside it."""
    mha = getattr(torch.backends, "mha", None)
    was = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(was)


def describe_input(example) -> str:
    if isinstance(example, torch.Tensor):
        return str(tuple(example.shape))
    if isinstance(example, (tuple, list)):
        return "(" + ", ".join(describe_input(e) for e in example) + ")"
    if isinstance(example, dict):
        return "{" + ", ".join(f"{k}: {describe_input(v)}" for k, v in example.items()) + "}"
    return type(example).__name__


def run_model(model, example, what: str = "its example input"):
    """One forward pass on ``example`` in eval mode (BatchNorm statistics untouched, the mode restored);
    an error names the input."""
    try:
        with _eval_mode(model), _counting():
            return _call(model, example)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ExplorerError(f"the model failed on {what} {describe_input(example)}: {type(exc).__name__}: "
                            f"{text[0][:300] if text else ''}") from None


def output_tensor(model, example) -> torch.Tensor:
    """One forward pass on ``example`` in eval mode (the mode restored), without gradients: the output tensor
    (a tuple's or dict's first). The model's own exceptions propagate; an output with no tensor is an
    :class:`~explorer.engine.errors.ExplorerError`."""
    with _eval_mode(model), _counting():
        return _outputs(_call(model, example))


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# ----------------------------------------------------------------------------------------- quality


def first_output(out) -> torch.Tensor:
    """The tensor a model's output stands for: itself, a tuple's or list's first, a dict's first tensor."""
    return _outputs(out)


def _outputs(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    raise ExplorerError(f"cannot measure accuracy: the model returned {type(out).__name__}, not a tensor")


def _run_on_data(model, x, eval_data):
    try:
        with _counting():
            return _call(model, x)
    except Cancelled:
        raise
    except Exception as exc:
        name = eval_data.name if eval_data is not None else "the data"
        text = str(exc).strip().splitlines()
        raise ExplorerError(f"{name}: the model cannot run on these inputs {describe_input(x)}: "
                            f"{type(exc).__name__}: {text[0][:200] if text else ''}") from None


_here = threading.local()  # .checkpoint: what the module hook calls on this thread (None: nothing)
_hook_lock = threading.Lock()
_hook = None


def _module_hook(module, args):
    checkpoint = getattr(_here, "checkpoint", None)
    if checkpoint is not None:
        checkpoint()


@contextmanager
def _checkpoints(progress: ProgressFn, where: list):
    """Report ``where`` (fraction, message) to ``progress`` before every module call on this thread, not
    only between batches: a caller can then stop (or pause) a measurement within one layer of a batch,
    rather than after the whole batch (32 images through ResNet-18 take seconds on one core).

    One global forward pre-hook (torch's ``register_module_forward_pre_hook``, installed once) calls this
    thread's checkpoint: nothing is attached to the modules themselves, so a model copied meanwhile (the
    previewer deep-copies the original while an accuracy job may be running it) carries nothing along,
    and runs on other threads are not affected. TorchScript modules report between batches only."""
    global _hook
    if progress is None:
        yield
        return
    with _hook_lock:
        if _hook is None:
            _hook = torch.nn.modules.module.register_module_forward_pre_hook(_module_hook)
    outer = getattr(_here, "checkpoint", None)
    _here.checkpoint = lambda: report(progress, where[0], where[1])
    try:
        yield
    finally:
        _here.checkpoint = outer


def model_outputs(model: nn.Module, x, eval_data=None) -> torch.Tensor:
    """The output tensor of ``model`` on inputs ``x`` (eval mode, no gradients), read as :func:`accuracy`
    reads it (a tuple's or dict's first tensor); a model that cannot run on ``x`` names ``eval_data``."""
    with _eval_mode(model), torch.no_grad():
        return _outputs(_run_on_data(model, x, eval_data))


def accuracy(model: nn.Module, eval_data, progress: ProgressFn = None, batch_size: int = 256,
             limit: Optional[int] = None) -> float:
    """Top-1 accuracy of ``model`` on ``eval_data`` (inputs and integer labels), in [0, 1].

    Outputs are argmax'd over their last dimension. ``progress`` is called after every batch and before
    each layer runs, and may cancel (see :mod:`explorer.engine.progress`).
    """
    if eval_data.labels is None:
        raise ExplorerError(f"{eval_data.name}: has no labels; use fidelity() against the original model")
    if limit is not None and limit < 1:
        raise ExplorerError(f"the evaluation limit must be at least 1 sample, got {limit}")
    n = len(eval_data) if limit is None else min(limit, len(eval_data))
    correct = 0
    done = 0
    where = [0.0, "accuracy"]
    with _eval_mode(model), torch.no_grad(), _checkpoints(progress, where):
        for start in range(0, n, batch_size):
            where[0] = start / max(n, 1)
            x = eval_data.inputs[start:min(start + batch_size, n)]
            y = eval_data.labels[start:min(start + batch_size, n)]
            out = _outputs(_run_on_data(model, x, eval_data))
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= out.shape[-1]):
                raise ExplorerError(f"{eval_data.name}: labels run from {int(y.min())} to {int(y.max())}, but the "
                                    f"model has {out.shape[-1]} outputs")
            pred = out.argmax(dim=-1)
            if pred.shape != y.shape:
                raise ExplorerError(f"{eval_data.name}: predictions have shape {tuple(pred.shape)} but the "
                                    f"labels {tuple(y.shape)}")
            correct += int((pred == y).sum())
            done += y.numel()
            report(progress, min(start + batch_size, n) / max(n, 1), "accuracy")
    return correct / max(done, 1)


def fidelity(model: nn.Module, reference: nn.Module, inputs: torch.Tensor, progress: ProgressFn = None,
             batch_size: int = 256) -> dict:
    """How close ``model``'s outputs are to ``reference``'s on ``inputs`` (for data without labels).

    Returns ``{"cosine": mean cosine similarity per sample, "rel_error": ||y - y_ref|| / ||y_ref||}``.
    """
    cos_sum, n, err2, ref2 = 0.0, 0, 0.0, 0.0
    total = inputs.shape[0]
    where = [0.0, "fidelity"]
    with _eval_mode(model), _eval_mode(reference), torch.no_grad(), _checkpoints(progress, where):
        for start in range(0, total, batch_size):
            where[0] = start / max(total, 1)
            x = inputs[start:start + batch_size]
            y = _outputs(_run_on_data(model, x, None)).reshape(x.shape[0], -1).double()
            r = _outputs(_run_on_data(reference, x, None)).reshape(x.shape[0], -1).double()
            cos_sum += float(torch.nn.functional.cosine_similarity(y, r, dim=1, eps=1e-12).sum())
            n += x.shape[0]
            err2 += float(((y - r) ** 2).sum())
            ref2 += float((r ** 2).sum())
            report(progress, min(start + batch_size, total) / max(total, 1), "fidelity")
    return {"cosine": cos_sum / max(n, 1), "rel_error": math.sqrt(err2 / ref2) if ref2 > 0 else math.sqrt(err2)}


def resident_bytes(model: nn.Module) -> int:
    """The bytes the model's tensors hold (parameters and buffers, each storage once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is None or t.is_meta:
            continue
        s = t.untyped_storage()
        key = (s.data_ptr(), s.nbytes())
        if key not in seen:
            seen.add(key)
            total += s.nbytes()
    return total


def time_forward(model, x, min_runs: int = 5, min_seconds: float = 0.2) -> float:
    """The median wall time of ``model(x)`` in ms (no grad), after one warm-up run: at least ``min_runs``
    runs and ``min_seconds``."""
    with torch.no_grad():
        model(x)
        times, start = [], time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
            if len(times) >= 1000:
                break
    return statistics.median(times) * 1000.0
