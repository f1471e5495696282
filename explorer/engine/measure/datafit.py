"""Does data fit a model? Asked once, on its first samples, before any work starts; answered in one message.

Eval data (``--data``, File → Open eval data, a factory's) and training or validation data run two samples
through the model in eval mode before anything is compressed, measured or trained. When the model cannot
run on them, the message names what the samples are (shape, dtype, values per sample) and what the model
expects, from the first of:

- its own example input (a sample's, a factory's, a compressed file's; not one taken from the data itself);
- its first layer: a ``Linear``'s ``in_features``, a convolution's ``in_channels``, an ``Embedding``'s number
  of tokens, a recurrent layer's ``input_size``.

With labels, the model's outputs must be one row of class scores per sample and every label (all of them,
not only the trial batch's) an index below the number of classes. Labels that are not integers, and
negative ones, are refused where :class:`~explorer.engine.model.data.EvalData` is made.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import nn

from explorer.engine.errors import Cancelled, ExplorerError, LoadError, first_line
from explorer.engine.measure.metrics import output_tensor
from explorer.engine.model.data import dtype_name, is_integer, is_real

TRIAL_SAMPLES = 2  # run through the model before any work: two, so that a batch dimension is a batch

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RNN = (nn.RNN, nn.LSTM, nn.GRU)


def describe_samples(x: torch.Tensor) -> str:
    """One sample of the batch ``x``: ``"1×28×28 float32 (784 values)"``, ``"64 float32 values"``."""
    dims = tuple(int(d) for d in x.shape[1:])
    dtype = dtype_name(x)
    if not dims:
        return f"single {dtype} values"
    if len(dims) == 1:
        return f"{dims[0]:,} {dtype} values"
    return f"{'×'.join(map(str, dims))} {dtype} ({math.prod(dims):,} values)"


def first_layer(model: nn.Module) -> Optional[tuple]:
    """``(name, module)`` of the first Linear, convolution, Embedding or recurrent layer registered in
    ``model`` (registration order, which is the order of the forward pass in nearly every model); None if
    there is none (or the model is TorchScript, whose modules are not those classes)."""
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Embedding) + _CONV + _RNN):
            return name, mod
    return None


def expected_input(model: nn.Module, example=None) -> Optional[str]:
    """What ``model`` takes per sample, in words, from its own ``example`` input (a tensor whose first
    dimension is the batch) or else its first layer; None when neither tells."""
    if isinstance(example, torch.Tensor) and example.dim() >= 1:
        return f"{describe_samples(example)}, the shape of its example input"
    found = first_layer(model)
    if found is None:
        return None
    name, mod = found
    if isinstance(mod, nn.Linear):
        return (f"{mod.in_features:,} values per sample (its first layer '{name}' is Linear({mod.in_features} → "
                f"{mod.out_features}))")
    if isinstance(mod, _CONV):
        k = len(mod.kernel_size)
        layout = {1: "C×L", 2: "C×H×W", 3: "C×D×H×W"}[k]
        return (f"{layout} samples with {mod.in_channels} channel{'s' if mod.in_channels != 1 else ''} (its first "
                f"layer '{name}' is a {type(mod).__name__} with {mod.in_channels} input channels)")
    if isinstance(mod, nn.Embedding):
        return (f"integer token ids from 0 to {mod.num_embeddings - 1} (its first layer '{name}' is an Embedding of "
                f"{mod.num_embeddings:,} tokens)")
    return (f"sequences of {mod.input_size} features per step (its first layer '{name}' is {type(mod).__name__}"
            f"(input_size={mod.input_size}))")


def model_label(source) -> str:
    """What to call a model in a message: a sample's or factory's name as given, a file by its name."""
    text = str(source or "")
    if not text:
        return "the model"
    return os.path.basename(text.rstrip("/\\")) if os.path.exists(text) else text


def check_fits(model: nn.Module, inputs: torch.Tensor, labels: Optional[torch.Tensor], where: str, *,
               example=None, model_name: str = "the model", scores: bool = False) -> Optional[int]:
    """Refuse, in one :class:`~explorer.engine.errors.LoadError` starting with ``where``, data that ``model``
    cannot be measured or trained on: the first :data:`TRIAL_SAMPLES` of ``inputs`` must run (the message
    says what the samples are and what the model expects, see :func:`expected_input`) and, with ``labels``
    (or ``scores``), give one row of class scores per sample, with every label below the number of classes.
    Returns that number (None when neither asked for it)."""
    if not is_real(inputs):
        raise LoadError(f"{where}: samples are {describe_samples(inputs)}; a model takes real numbers (floats, or "
                        "integer token ids)")
    x = inputs[:TRIAL_SAMPLES]
    given = describe_samples(x)
    expected = expected_input(model, example)
    wants = f"{model_name} expects {expected}" if expected else f"{model_name} cannot run on them"
    try:
        out = output_tensor(model, x)
    except Cancelled:
        raise
    except ExplorerError as exc:  # the model returned no tensor
        raise LoadError(f"{where}: {exc}") from None
    except Exception as exc:
        raise LoadError(f"{where}: samples are {given}, but {wants} ({first_line(exc)})") from None
    if labels is None and not scores:
        return None
    if labels is not None and (not is_integer(labels) or labels.dim() != 1):
        raise LoadError(f"{where}: labels must be 1-D integer class indices, got {dtype_name(labels)} of shape "
                        f"{tuple(labels.shape)}")
    if out.dim() < 1 or tuple(out.argmax(dim=-1).shape) != (x.shape[0],):
        raise LoadError(f"{where}: {model_name} gives outputs of shape {tuple(out.shape)} for {x.shape[0]} samples "
                        f"of {given}, not one row of class scores per sample"
                        + (f" ({model_name} expects {expected})" if expected else ""))
    classes = int(out.shape[-1])
    if labels is not None and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= classes:
            raise LoadError(f"{where}: labels run from {lo} to {hi}, but {model_name} has {classes} outputs "
                            f"(labels must be 0..{classes - 1})")
    return classes


def own_example(loaded):
    """The model's own example input, or None when the only one there is was taken from its eval data."""
    return None if loaded.meta.get("example_from_data") else loaded.example_input


def check_eval_data(loaded, data):
    """``data`` (an :class:`~explorer.engine.model.data.EvalData`) if ``loaded``'s model can be measured on it,
    else the :class:`~explorer.engine.errors.LoadError` of :func:`check_fits`, naming the data and the model."""
    if data is not None and len(data):
        check_fits(loaded.model, data.inputs, data.labels, f"eval data {data.name}", example=own_example(loaded),
                   model_name=model_label(loaded.source))
    return data


__all__ = ["TRIAL_SAMPLES", "describe_samples", "first_layer", "expected_input", "model_label", "check_fits",
           "own_example", "check_eval_data"]
