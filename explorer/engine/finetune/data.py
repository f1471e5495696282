"""Training data for fine-tuning: separate from the evaluation data, and every split explicit and recorded.

A training source is one of:

- ``digits``: the scikit-learn digits training split the sample models were trained on (1,437 images; the
  samples' eval data is the other 360);
- a file the evaluation readers take (:func:`~explorer.engine.model.data.load_eval_data`: IDX pairs as MNIST
  ships them, ``.npz`` with ``x``/``y``, ``.npy``), read under the same limits;
- ``package.module:callable``: a factory returning a torch ``DataLoader`` (iterated once per epoch as it is:
  batching, shuffling and augmentation are the factory's), a ``Dataset`` (its ``(input, label)`` items are
  stacked once), an :class:`~explorer.engine.model.data.EvalData`, or arrays as the eval-data factories do.

Any of them may end in ``@START:STOP`` to take the samples with index START..STOP-1 (e.g.
``t10k-images-idx3-ubyte.gz@0:7000``), so a split of one file is written down where it is used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from explorer.engine.errors import LoadError
from explorer.engine.measure.datafit import TRIAL_SAMPLES, check_fits
from explorer.engine.model.data import (MAX_EVAL_BYTES, EvalData, digits_split, eval_data_from_output, is_integer,
                                        load_eval_data)
from explorer.engine.model.factories import is_factory_ref, resolve_factory

_RANGE = re.compile(r"^(?P<src>.+)@(?P<start>\d*):(?P<stop>\d*)$")
MAX_SAMPLES = 50_000_000


@dataclass
class TrainData:
    """Samples to train on: tensors (``data``) or a loader the factory made (``loader``)."""

    name: str
    data: Optional[EvalData] = None
    loader: object = None

    def __len__(self) -> int:
        if self.data is not None:
            return len(self.data)
        try:
            return len(self.loader.dataset)
        except (AttributeError, TypeError):
            return 0

    @property
    def labelled(self) -> bool:
        return self.data is None or self.data.labels is not None

    def epoch(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
        """One pass: ``(inputs, labels or None)`` batches, shuffled by ``generator`` (a loader's own order)."""
        if self.loader is not None:
            for batch in self.loader:
                yield _as_pair(batch, self.name)
            return
        order = torch.randperm(len(self.data), generator=generator)
        x, y = self.data.inputs, self.data.labels
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], (None if y is None else y[idx])

    def split(self, fraction: float) -> tuple:
        """``(train, validation)``: the last ``fraction`` of the samples held out (tensor data only)."""
        if self.data is None:
            raise LoadError(f"{self.name}: a data loader cannot be split; give validation data (--val)")
        n = len(self.data)
        n_val = max(1, int(round(fraction * n)))
        if n - n_val < 1:
            raise LoadError(f"{self.name}: {n} samples are too few to hold out {fraction:.0%} for validation")
        head = self.data.subset(slice(0, n - n_val))
        tail = self.data.subset(slice(n - n_val, n))
        return (TrainData(f"{self.name} [0:{n - n_val}]", head),
                TrainData(f"{self.name} [{n - n_val}:{n}] (held out for validation)", tail))


def _as_pair(batch, where: str) -> tuple:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        return batch.get("x", batch.get("inputs")), batch.get("y", batch.get("labels"))
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise LoadError(f"{where}: a batch must be (inputs, labels), got {type(batch).__name__}")


def _from_dataset(ds, name: str) -> EvalData:
    n = len(ds)
    if n > MAX_SAMPLES:
        raise LoadError(f"{name}: {n:,} samples (at most {MAX_SAMPLES:,}; return a DataLoader instead)")
    xs, ys = [], []
    nbytes = 0
    for i in range(n):
        x, y = _as_pair(ds[i], name)
        x = _item_tensor(x, name, i, "input")
        nbytes += x.numel() * x.element_size()
        if nbytes > MAX_EVAL_BYTES:
            raise LoadError(f"{name}: more than {MAX_EVAL_BYTES >> 30} GiB of samples; return a DataLoader instead")
        xs.append(x)
        ys.append(None if y is None else _item_tensor(y, name, i, "label"))
    if not xs:
        raise LoadError(f"{name}: the dataset is empty")
    try:
        inputs = torch.stack(xs)
    except RuntimeError as exc:
        raise LoadError(f"{name}: samples of different shapes ({exc})") from None
    if inputs.is_floating_point():
        inputs = inputs.to(torch.float32)
    labels = None
    if not any(y is None for y in ys):
        if any(y.numel() != 1 for y in ys):
            raise LoadError(f"{name}: each label must be one class index, got one of shape {tuple(ys[0].shape)}")
        labels = torch.stack([y.reshape(()) for y in ys])  # its dtype kept: EvalData refuses float labels
        if is_integer(labels):
            labels = labels.to(torch.int64)
    return EvalData(inputs, labels, name)


def _item_tensor(v, name: str, i: int, what: str) -> torch.Tensor:
    """A dataset item's input or label as a tensor; LoadError naming the item if it is not numbers."""
    try:
        return torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LoadError(f"{name}: item {i}'s {what} is {type(v).__name__} {str(v)[:40]!r}, not numbers "
                        f"({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})") from None


def _from_factory(ref: str, limit: Optional[int]) -> TrainData:
    fn = resolve_factory(ref)
    try:
        out = fn()
    except Exception as exc:
        raise LoadError(f"training data {ref!r}: the factory failed: {type(exc).__name__}: {exc}") from None
    if isinstance(out, torch.utils.data.DataLoader):
        return TrainData(ref, loader=out)
    try:
        if isinstance(out, torch.utils.data.Dataset) and hasattr(out, "__len__"):
            data = _from_dataset(out, ref)
            return TrainData(ref, data if limit is None else data.subset(limit))
        # EvalData or arrays, as eval-data factories return: converted as they are, the factory not called again
        return TrainData(ref, eval_data_from_output(out, ref, limit))
    except LoadError as exc:
        raise LoadError(f"training data {ref!r}: {exc}") from None


def load_train_data(spec: str, limit: Optional[int] = None) -> TrainData:
    """Read the training (or validation) source ``spec`` (see the module's docstring)."""
    if not isinstance(spec, str) or not spec:
        raise LoadError(f"training data must be named, got {spec!r}")
    m = _RANGE.match(spec)
    source, rng = (m.group("src"), (m.group("start"), m.group("stop"))) if m else (spec, None)
    if source == "digits":
        data = TrainData("digits train split (1437)", digits_split()[0])
    elif is_factory_ref(source) and not os.path.exists(source):
        data = _from_factory(source, None if rng else limit)
    else:
        data = TrainData(source, load_eval_data(source, None if rng else limit))
    if rng is not None:
        if data.data is None:
            raise LoadError(f"{spec}: a data loader cannot be sliced; slice it in the factory")
        n = len(data.data)
        start = int(rng[0]) if rng[0] else 0
        stop = min(int(rng[1]), n) if rng[1] else n
        if not start < stop:
            raise LoadError(f"{spec}: the range {start}:{stop} holds no sample of the {n:,} there are")
        part = data.data.subset(slice(start, stop))
        if limit is not None:
            part = part.subset(limit)
        data = TrainData(f"{data.name} [{start}:{start + len(part)}]", part)
    if data.data is not None and len(data.data) == 0:
        raise LoadError(f"{data.name}: no samples")
    return data


def check_train_data(model: torch.nn.Module, data: TrainData, what: str = "training data", *, example=None,
                     model_name: str = "the model") -> int:
    """Report bad data before training starts: a batch the model cannot run (the message names the samples'
    shape and the one the model expects, from its own ``example`` input or its first layer), outputs that are
    not class scores, labels that are not class indices in range. Returns the number of classes."""
    gen = torch.Generator().manual_seed(0)
    batch = next(iter(data.epoch(TRIAL_SAMPLES, gen)), None)
    if batch is None:
        raise LoadError(f"{what} {data.name}: no samples")
    x, y = batch
    if not isinstance(x, torch.Tensor):
        raise LoadError(f"{what} {data.name}: a batch's inputs must be a tensor, got {type(x).__name__}")
    labels = data.data.labels if data.data is not None else y
    if labels is not None and not isinstance(labels, torch.Tensor):
        raise LoadError(f"{what} {data.name}: a batch's labels must be a tensor, got {type(labels).__name__}")
    return check_fits(model, x, labels, f"{what} {data.name}", example=example, model_name=model_name, scores=True)
