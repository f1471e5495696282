"""Timing a compressed file's model: its dense decode against the compressed runtime, side by side.

``compression-explorer bench FILE.cexp`` and ``benchmarks/runtime.py`` use :func:`bench_runtimes`: the
model as loaded (every tensor decoded dense) and a copy given the compressed runtime
(:mod:`explorer.engine.runtime`), each run on the example input repeated to each batch size, with one
thread and with all of them (torch's and numba's pools set alike), in the same process and run.
"""

from __future__ import annotations

import copy
import os
from typing import Optional

import numba
import numpy as np
import torch

from explorer.engine.errors import LoadError
from explorer.engine.measure.metrics import resident_bytes, time_forward
from explorer.engine.progress import ProgressFn, report, scaled
from explorer.engine.runtime import compressed_runtime
from explorer.engine.storage import fileformat
from explorer.engine.storage.fileformat.decode import WeightParts

__all__ = ["bench_runtimes", "set_threads", "result_parts", "runtime_latency", "sharing_copy"]


def set_threads(n: int) -> None:
    """torch's intra-op threads and numba's parallel kernels' threads, both ``n`` (numba's at most the
    pool it started with)."""
    torch.set_num_threads(n)
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def sharing_copy(model):
    """A copy of ``model``'s modules holding the same tensors (no copy of the weights): the compressed
    runtime replaces modules in it, never in ``model``."""
    return copy.deepcopy(model, memo={id(t): t for t in list(model.parameters()) + list(model.buffers())})


def _batched(x, batch: int):
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise LoadError("bench needs an example input that is one tensor (give --input-shape)")
    one = x[:1]
    return one.repeat(batch, *([1] * (one.dim() - 1)))


def bench_runtimes(loaded, batches=(1, 32), threads: Optional[list] = None, prefer: str = "speed",
                   runtime_batch: int = 1, progress: ProgressFn = None) -> dict:
    """Rows of (runtime, batch, threads, ms, speedup over dense, resident bytes) for the dense decode of
    ``loaded`` (a LoadedModel of a .cexp file) and its compressed runtime; the runtime's per-layer
    decisions; the largest output difference between the two."""
    threads = sorted({1, os.cpu_count() or 1}) if not threads else list(threads)
    before = torch.get_num_threads()
    dense = loaded.model
    compressed = sharing_copy(dense)
    try:
        set_threads(max(threads))
        report(progress, 0.0, "choosing the compressed runtime")
        decisions = fileformat.to_compressed_runtime(loaded.source, compressed, batch=runtime_batch, prefer=prefer,
                                                     progress=scaled(progress, 0.0, 0.3),
                                                     example_input=loaded.example_input)
        rows, steps, done = [], len(threads) * len(batches), 0
        held = {"dense": resident_bytes(dense), "compressed": resident_bytes(compressed)}
        for n in threads:
            set_threads(n)
            for b in batches:
                x = _batched(loaded.example_input, b)
                report(progress, 0.3 + 0.7 * done / steps, f"batch {b}, {n} thread(s)")
                t_dense = time_forward(dense, x)
                t_ours = time_forward(compressed, x)
                rows.append({"runtime": "dense", "batch": b, "threads": n, "ms": t_dense, "speedup": 1.0,
                             "resident_bytes": held["dense"]})
                rows.append({"runtime": "compressed", "batch": b, "threads": n, "ms": t_ours,
                             "speedup": t_dense / t_ours if t_ours > 0 else float("inf"),
                             "resident_bytes": held["compressed"]})
                done += 1
        x = _batched(loaded.example_input, max(batches))
        with torch.no_grad():
            diff = float((dense(x).float() - compressed(x).float()).abs().max())
    finally:
        set_threads(before)
    report(progress, 1.0, "done")
    return {"rows": rows, "layers": [vars(d) for d in decisions], "max_abs_diff": diff}


def result_parts(compressed) -> dict:
    """weight name -> WeightParts of a compressed model built in this process (``compress``'s Compressed):
    what its file would store (the surviving positions, their values, their codes and the codebook),
    without writing the file."""
    state = compressed.model.state_dict()
    out = {}
    for layer in compressed.layers.values():
        for t in layer.tensors:
            if t.sizes_only or t.name not in state or (t.mask is None and t.quant is None):
                continue
            # torch's nonzero and gathers (they release the GIL; numpy's hold it), float32 as the weights are
            flat = state[t.name].detach().reshape(-1).to(torch.float32)
            where = None if t.mask is None else torch.from_numpy(t.mask).nonzero().reshape(-1)
            positions = None if where is None else where.numpy()
            values = (flat if where is None else flat[where]).numpy()
            q = t.quant
            codes = book = None
            if q is not None and q.codebook is not None and q.codes is not None:
                codes = q.codes if where is None else torch.from_numpy(q.codes)[where].numpy()
                book = np.asarray(q.codebook, np.float64)
            out[t.name] = WeightParts(tuple(t.shape), positions, values, codes, book)
    return out


def runtime_latency(compressed, example_input, batch: int = 1, progress: ProgressFn = None,
                    original=None) -> dict:
    """The compressed model of a plan (``compress``'s Compressed) timed as built (dense tensors) and under
    the compressed runtime, on ``example_input`` repeated to ``batch``: what the window's preview shows as
    "latency (measured)". The runtime's model shares the built model's tensors (no copy of the weights).
    With ``original`` (the model before the plan), that too: ``original_ms`` and ``resident_original``, what
    structured pruning and low-rank gain (their layers are already small and dense)."""
    model = compressed.model
    ours = sharing_copy(model)
    report(progress, 0.0, "choosing the compressed runtime")
    decisions = compressed_runtime(ours, result_parts(compressed), batch=batch, example_input=example_input,
                                   progress=scaled(progress, 0.0, 0.6))
    x = _batched(example_input, batch)
    report(progress, 0.6, "timing the dense model")
    dense_ms = time_forward(model, x, min_seconds=0.1)
    report(progress, 0.8, "timing the compressed runtime")
    ours_ms = time_forward(ours, x, min_seconds=0.1)
    out = {"batch": batch, "dense_ms": dense_ms, "compressed_ms": ours_ms,
           "replaced": sum(1 for d in decisions if d.chosen != "dense"), "layers": len(decisions),
           "resident_dense": resident_bytes(model), "resident_compressed": resident_bytes(ours)}
    if original is not None:
        report(progress, 0.9, "timing the original model")
        out.update(original_ms=time_forward(original, x, min_seconds=0.1), resident_original=resident_bytes(original))
    report(progress, 1.0, "timed")
    return out
