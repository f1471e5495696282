"""An independent probe of everything a hostile input can reach: `.cexp` files, plans and eval data.

This re-measures the figures of the external security probe (issue 12) with a corpus and mutations of our
own — it shares nothing with ``tests/engine/test_format_robust.py`` or ``benchmarks/fuzz_format.py``.

**Corpus.** 19 seed files are built in memory (``compress`` + ``fileformat.encode``) from the bundled
samples and from small models defined here (a TorchScript CNN with BatchNorm, an eager model without a
factory — stored as its scripted graph, as a trusted pickle would be —, an Embedding model and an Embedding
tied to an output Linear built by a factory outside the package, ``fuzz_probe_models:...``, a module this
script writes to a scratch directory and puts on ``sys.path``). The manifests are walked and one coverage
line printed: every storage, value kind, gap/index coding, quantizer, architecture kind, edit kind, float16
and alias must appear, or the run fails.

**Mutations.** Case ``i`` draws from ``random.Random(seed + i)``: a family, a seed file, and one to three
edits. Families: ``bytes`` (raw flips, sets, inserts, deletes, truncations, appends, header fields; no CRC
fixed), ``streams`` (stream contents, code tables, rANS tables, the TorchScript blob, stream list and
version, re-sealed), and re-sealed manifest edits — weighted heavily — ``schema`` (wrong types anywhere,
required keys removed, huge/negative/NaN numbers), ``edits`` (replace/resize of hostile paths such as
``__class__.__base__.__call__`` or ``conv1.__class__.forward``, wrong specs, consistent lies that make a
model load), ``shapes`` (transposed, enormous, swapped, extra/missing dims, same product in another order,
dtype lies), ``streamidx`` (stream references that lie), ``codetable`` (quantizer and coding fields), ``arch``
(factory references and kinds) and ``text`` (manifest JSON text the parser must refuse: deep nesting, long
integers, invalid UTF-8, ...).

**Oracle.** ``fileformat.parse``; then ``fileformat.summary`` and the ``info`` verb's own rendering (text and
``--json``; a parsed file must print); then ``decode_tensors`` (shapes and dtypes as declared; a raw
mutation that passes must decode to the intact tensors); then, in 1 of 3 cases and always for a parsed
``edits``/``shapes`` mutation, ``fileformat.load`` of the file and a forward pass on the seed's example
input (a file that loads must run). Anything but success or one :class:`LoadError` with a one-line message
is an unexpected exception, reported by stage, type, innermost ``explorer`` frame, first seed and message.
After every case the dictionaries of ``nn.Module``, ``Linear``, ``Conv2d``, ``Sequential``, ``BatchNorm2d``,
``Embedding``, ``Parameter``, ``Tensor``, ... are compared with a snapshot taken before the run (identity of
every value): a change is a critical finding, reported and then undone so the run goes on.

**Hostile non-.cexp inputs**, each in a fresh ``python -m explorer`` process: a plan of ``/dev/zero``,
nested 10,000 deep, with a 5,000-digit amount, a k-means seed of -1, rank 1e9, a 50 MB plan; eval data
bombs (gzipped IDX and ``.npz`` of 256 MB that compress to a few hundred kB, a ``.npy`` whose header claims
(1e9, 64) float32, IDX headers that lie); ``info``/``evaluate`` of mutated files; ``gui --screenshot`` of a
missing model. Each must exit 2 with exactly one ``error:`` line (or 0 where success is legitimate), in
bounded memory (peak RSS of the child from ``wait4``; over 1 GB is a finding; a child is killed at 3 GB or
after 180 s).

Run::

    .venv/bin/python benchmarks/fuzz_probe.py                  # 20000 cases + hostile inputs (~8 min)
    .venv/bin/python benchmarks/fuzz_probe.py --quick          # ~60 s smoke run (20 s of cases, 10 hostile)
    .venv/bin/python benchmarks/fuzz_probe.py 5000 --seed 7 --seconds 300 --no-hostile
    .venv/bin/python benchmarks/fuzz_probe.py --hostile-only
    .venv/bin/python benchmarks/fuzz_probe.py --replay 123 [--dump bad.cexp]   # one case, with tracebacks

On the 2-core CI machine kind the default run takes about 8 minutes: 20,000 cases at ~55/s with every case
traced by tracemalloc (``--trace-every K`` traces 1 case in K; untraced ~140 cases/s), then the hostile
inputs at 2-5 s each (a fresh process imports torch).

Exit status 1 when anything unexpected was found (an unexpected exception, a class patched, a hostile input
that did not end cleanly or used more than 1 GB, a missing coverage item).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import faulthandler
import gzip
import io
import json
import math
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
PYTHON = ROOT / ".venv" / "bin" / "python"
if not PYTHON.exists():
    PYTHON = Path(sys.executable)

HEAD_SIZE = 28
ENTRY_SIZE = 12
MAGIC = b"\x89CEX\r\n\x1a\n"
SLOW = 5.0  # seconds: a case slower than this is reported
OVER_ALLOCATION = 100 << 20  # traced bytes one case of a <=120 kB file may allocate
RSS_LIMIT_MB = 1024  # a hostile input whose child peaks above this is a finding
CHILD_CAP = 3 << 30  # a child above this RSS is killed
CHILD_TIMEOUT = 180.0

# ================================================================================== models of our own

MODELS_MODULE = "fuzz_probe_models"
MODELS_SRC = '''"""Models of the fuzz probe (written by benchmarks/fuzz_probe.py; a factory outside the package)."""
import torch
from torch import nn


class ProbeBNCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.fc1 = nn.Linear(24 * 2 * 2, 40)
        self.fc2 = nn.Linear(40, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class ProbeMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(torch.flatten(x, 1))


class ProbeTied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens):
        return self.head(torch.relu(self.mid(self.emb(tokens))))


class ProbeEmb(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(60, 24)
        self.fc = nn.Linear(24, 10)

    def forward(self, tokens):
        return self.fc(self.emb(tokens).mean(1))


class ProbeConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def _tokens(hi, shape):
    return torch.randint(0, hi, shape, generator=torch.Generator().manual_seed(3))


def tied():
    torch.manual_seed(1)
    return ProbeTied(), _tokens(40, (2, 6))


def emb():
    torch.manual_seed(2)
    return ProbeEmb(), _tokens(60, (2, 7))


def conv():
    torch.manual_seed(4)
    return ProbeConv(), torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
'''


@dataclass
class Seed:
    name: str
    raw: bytes
    example: object  # the model's example input
    factory: Optional[str]  # the factory a user names at load (a factory outside the package), or None
    modules: list  # module names of the compressed model
    params: list  # parameter and buffer names
    types: dict = field(default_factory=dict)  # module name -> class name
    reference: dict = field(default_factory=dict)  # decoded tensors of the intact file
    build_s: float = 0.0


def _plan(default: dict, layers: Optional[dict] = None):
    from explorer.engine import Plan

    return Plan.from_dict({"format": "compression-explorer-plan", "version": 1, "default": default,
                           "layers": layers or {}})


def _km(bits: int, **kw) -> dict:
    return {"bits": bits, "method": "kmeans", "max_iter": 10, **kw}


def build_corpus(scratch: Path) -> list:
    """The 19 seed files."""
    import torch

    from explorer.engine import Plan, compress, load_model
    from explorer.engine.model.loading import LoadedModel
    from explorer.engine.storage import fileformat as ff

    models = __import__(MODELS_MODULE)
    samples = ROOT / "sample_models"
    mlp, cnn = load_model("digits-mlp"), load_model("digits-cnn")

    torch.manual_seed(0)
    bn = models.ProbeBNCNN()
    bn.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            bn(torch.randn(16, 1, 8, 8))
    bn.eval()
    ts_path = scratch / "probe_bncnn.pt"
    torch.jit.save(torch.jit.script(bn), str(ts_path))
    script = load_model(str(ts_path))
    script.example_input = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(9))

    torch.manual_seed(0)
    eager = LoadedModel(models.ProbeMLP().eval(), torch.randn(2, 64), None, source="probe-mlp (trusted pickle)",
                        kind="pickle")
    tied = load_model(f"{MODELS_MODULE}:tied")
    emb = load_model(f"{MODELS_MODULE}:emb")
    conv = load_model(f"{MODELS_MODULE}:conv")

    user = None  # placeholder: the factory named at load, per seed
    specs = [
        # name, loaded, plan, half, factory named at load
        ("mlp-kmeans-gaps", mlp, _plan({"prune": {"amount": 0.8}, "quantize": _km(5)},
                                       {"fc3": {"prune": {"amount": 0.0}}}), False, user),
        ("mlp-sample-plan", mlp, Plan.load(samples / "digits-mlp.plan.json"), False, user),
        ("mlp-kmeans-2bit-rans", mlp, _plan({"prune": {"amount": 0.7}, "quantize": _km(2)}), False, user),
        ("mlp-uniform-asym-perchannel-bitmask", mlp, _plan(
            {"prune": {"amount": 0.95}, "quantize": {"bits": 3, "method": "uniform", "symmetric": False,
                                                       "per_channel": True}},
            {"fc2": {"quantize": {"method": "ternary"}},
             "fc3": {"prune": {"amount": 0.0}, "quantize": {"method": "binary"}}}), False, user),
        ("mlp-uniform-sym-pertensor", mlp, _plan({"prune": {"amount": 0.3}, "quantize": {"bits": 6, "method": "uniform"}},
                                                 {"fc3": {"prune": {"amount": 0.9}, "quantize": {"bits": 8}}}),
         False, user),
        ("mlp-uniform-asym-pertensor-dense", mlp, _plan(
            {"quantize": {"bits": 4, "method": "uniform", "symmetric": False}}), True, user),
        ("mlp-ternary-dense", mlp, _plan({"quantize": {"method": "ternary"}}), False, user),
        ("cnn-sample-plan", cnn, Plan.load(samples / "digits-cnn.plan.json"), False, user),
        ("cnn-structured-filter-svd", cnn, Plan.load(samples / "digits-cnn.structured.plan.json"), False, user),
        ("cnn-channel", cnn, _plan({"quantize": _km(4)},
                                   {"conv2": {"prune": {"amount": 0.5, "granularity": "channel"}},
                                    "fc2": {"prune": {"amount": 0.6, "granularity": "channel"}}}), False, user),
        ("cnn-tucker2", cnn, _plan({"quantize": {"bits": 5, "method": "uniform", "per_channel": True}},
                                   {"conv2": {"lowrank": {"rank": [8, 10], "method": "tucker2"}}}), False, user),
        ("cnn-cp-svd", cnn, _plan({"prune": {"amount": 0.5}, "quantize": _km(5)},
                                  {"conv2": {"lowrank": {"rank": 4, "method": "cp"}},
                                   "fc1": {"lowrank": {"rank": 16, "method": "svd"}}}), False, user),
        ("cnn-half-float", cnn, _plan({"prune": {"amount": 0.9}}, {"conv1": {"prune": {"amount": 0.3}}}), True, user),
        ("script-bncnn-uniform", script, _plan({"prune": {"amount": 0.5},
                                                "quantize": {"bits": 4, "method": "uniform", "per_channel": True}}),
         False, user),
        ("script-bncnn-kmeans-half", script, _plan({"prune": {"amount": 0.6}, "quantize": _km(6)}), True, user),
        ("eager-noscript-mlp", eager, _plan({"prune": {"amount": 0.6}, "quantize": _km(3)}), False, user),
        ("tied-embedding-factory", tied, _plan({}, {"emb": {"prune": {"amount": 0.5}, "quantize": _km(3)},
                                                    "mid": {"quantize": {"bits": 4, "method": "uniform"}}}),
         False, f"{MODELS_MODULE}:tied"),
        ("embedding-svd-factory", emb, _plan({"quantize": {"bits": 5, "method": "uniform", "symmetric": False}},
                                             {"emb": {"lowrank": {"rank": 6, "method": "svd"}}}),
         False, f"{MODELS_MODULE}:emb"),
        ("conv-cp-filter-factory", conv, _plan({"quantize": _km(4)},
                                               {"conv1": {"prune": {"amount": 0.25, "granularity": "filter"}},
                                                "conv2": {"lowrank": {"rank": 3, "method": "cp"}}}),
         False, f"{MODELS_MODULE}:conv"),
    ]
    seeds = []
    for name, loaded, plan, half, factory in specs:
        t = time.perf_counter()
        compressed = compress(loaded.model, plan, loaded.example_input)
        raw = ff.encode(compressed, loaded, half=half)
        model = compressed.model
        seed = Seed(name, raw, loaded.example_input, factory,
                    [n for n, _ in model.named_modules() if n],
                    list(model.state_dict().keys()))
        seed.types = {n: type(mod).__name__ for n, mod in model.named_modules() if n}
        seed.reference = ff.decode_tensors(ff.parse(raw))
        seed.build_s = time.perf_counter() - t
        seeds.append(seed)
    return seeds


# ============================================================================================ coverage

REQUIRED = [
    "storage:dense", "storage:bitmask", "storage:gaps", "storage:raw", "values:float", "values:codes",
    "gaps:raw", "gaps:huffman", "gaps:rans", "index:raw", "index:huffman", "index:rans",
    "quant:kmeans+zero", "quant:kmeans-nozero", "quant:uniform-sym", "quant:uniform-asym",
    "quant:uniform-per-channel", "quant:uniform-per-tensor", "quant:binary", "quant:ternary",
    "arch:factory-sample", "arch:factory-user", "arch:torchscript", "edit:resize-filter", "edit:resize-channel",
    "edit:replace-svd", "edit:replace-svd-embedding", "edit:replace-tucker2", "edit:replace-cp", "half:float16",
    "alias", "raw:int64",
]


def coverage(manifest: dict) -> set:
    """What one manifest exercises, read from the manifest alone."""
    from explorer.engine.samples import SAMPLE_FACTORIES

    got = set()
    arch = manifest.get("architecture", {})
    if arch.get("kind") == "factory":
        got.add("arch:factory-sample" if arch.get("factory") in SAMPLE_FACTORIES else "arch:factory-user")
    elif arch.get("kind") == "torchscript":
        got.add("arch:torchscript")
    for e in manifest.get("tensors", []):
        if "alias" in e:
            got.add("alias")
            continue
        enc = e["encoding"]
        got.add(f"storage:{enc['storage']}")
        if enc["storage"] == "raw":
            if enc.get("stored_dtype") == "float16":
                got.add("half:float16")
            if enc.get("stored_dtype") == "int64":
                got.add("raw:int64")
            continue
        got.add(f"values:{enc['values']}")
        if enc["storage"] == "gaps":
            got.add(f"gaps:{enc['gaps']['coding']}")
        if enc["values"] == "codes":
            got.add(f"index:{enc['index']['coding']}")
            q = enc["quant"]
            if q["method"] == "kmeans":
                got.add("quant:kmeans+zero" if q.get("reserved_zero") else "quant:kmeans-nozero")
            elif q["method"] == "uniform":
                got.add("quant:uniform-sym" if q.get("symmetric") else "quant:uniform-asym")
                got.add("quant:uniform-per-channel" if q.get("rows", 1) > 1 else "quant:uniform-per-tensor")
            else:
                got.add(f"quant:{q['method']}")
    edits = manifest.get("edits") or {}
    if edits.get("resize"):
        plan = manifest.get("plan") or {}
        entries = [plan.get("default") or {}] + list((plan.get("layers") or {}).values())
        for s in entries:
            g = ((s or {}).get("prune") or {}).get("granularity")
            if g in ("filter", "channel"):
                got.add(f"edit:resize-{g}")
    for chain in (edits.get("replace") or {}).values():
        types = [s["type"] for s in chain]
        if types and types[0] == "Embedding":
            got.add("edit:replace-svd-embedding")
        elif all(t == "Linear" for t in types):
            got.add("edit:replace-svd")
        elif len(types) == 3:
            got.add("edit:replace-tucker2")
        elif len(types) == 4 and any(s.get("groups", 1) > 1 for s in chain):
            got.add("edit:replace-cp")
    return got


# ======================================================================================= file surgery


@dataclass
class Parts:
    manifest: object
    streams: list
    major: int = 1
    minor: int = 0


def split(raw: bytes) -> Parts:
    _, major, minor, n, _, mlen, _ = struct.unpack_from("<8sHHIIII", raw, 0)
    table_end = HEAD_SIZE + ENTRY_SIZE * n
    manifest = json.loads(zlib.decompress(raw[table_end:table_end + mlen]))
    streams, pos = [], table_end + mlen
    for i in range(n):
        length, _ = struct.unpack_from("<QI", raw, HEAD_SIZE + ENTRY_SIZE * i)
        streams.append(raw[pos:pos + length])
        pos += length
    return Parts(manifest, streams, major, minor)


def seal(parts: Parts, text: Optional[bytes] = None, level: int = 6) -> bytes:
    """Every length and CRC recomputed (``text``: the manifest's JSON bytes, else ``parts.manifest``)."""
    if text is None:
        text = json.dumps(parts.manifest, allow_nan=True).encode()
    body = zlib.compress(text, level)
    table = b"".join(struct.pack("<QI", len(s), zlib.crc32(s)) for s in parts.streams)
    head = struct.pack("<8sHHIIII", MAGIC, parts.major, parts.minor, len(parts.streams), zlib.crc32(table),
                       len(body), zlib.crc32(body))
    return head + table + body + b"".join(parts.streams)


def reseal_header(raw: bytes) -> bytes:
    """CRCs recomputed for whatever the header and table declare now (ranges clipped)."""
    if len(raw) < HEAD_SIZE:
        return raw
    magic, major, minor, n, _, mlen, _ = struct.unpack_from("<8sHHIIII", raw, 0)
    out = bytearray(raw)
    table_end = HEAD_SIZE + ENTRY_SIZE * n
    if table_end <= len(out):
        pos = table_end + mlen
        for i in range(n):
            length, _ = struct.unpack_from("<QI", out, HEAD_SIZE + ENTRY_SIZE * i)
            struct.pack_into("<QI", out, HEAD_SIZE + ENTRY_SIZE * i, length, zlib.crc32(out[pos:pos + length]))
            pos += length
    struct.pack_into("<8sHHIIII", out, 0, magic, major, minor, n, zlib.crc32(out[HEAD_SIZE:table_end]), mlen,
                     zlib.crc32(out[table_end:table_end + mlen]))
    return bytes(out)


# ============================================================================================ mutations

STREAM_KEYS = ("stream", "mask", "floats", "codebook", "alpha", "scales", "zero_points")
TOP_KEYS = ("architecture", "accounting", "tensors", "plan", "edits", "format", "version", "producer")
ENTRY_KEYS = ("name", "shape", "dtype", "encoding", "alias")
ENC_KEYS = ("storage", "values", "entries", "mask", "gaps", "gap_bits", "index", "quant", "floats", "stream",
            "stored_dtype")
QUANT_KEYS = ("method", "bits", "k", "codebook", "reserved_zero", "rows", "scales", "zero_points", "symmetric",
              "alpha")
CODED_KEYS = ("coding", "stream", "width", "alphabet")
SPEC_KEYS = ("type", "in_features", "out_features", "bias", "in_channels", "out_channels", "kernel_size", "stride",
             "padding", "dilation", "groups", "padding_mode", "num_embeddings", "embedding_dim", "padding_idx")
HOSTILE_PATHS = [
    "__class__.__base__.__call__", "__class__.__base__.__getattr__", "__class__.__base__.__setattr__",
    "__class__.__base__.__repr__", "__class__.__base__.state_dict", "__class__.__base__.eval",
    "conv1.__class__.forward", "fc1.__class__.forward", "fc2.__class__.forward", "emb.__class__.forward",
    "bn1.__class__.forward", "net.__class__.forward", "net.0.__class__.forward", "mid.__class__.forward",
    "conv2.__class__.__base__.forward", "fc1.__class__.__call__", "fc1.__class__.__init__", "__class__.forward",
    "fc1.weight.__class__.__repr__", "fc1.weight.__class__.__add__", "__class__.__base__.__base__.__repr__",
    "fc1.weight", "fc1.bias", "conv1.weight", "emb.weight", "bn1.running_mean", "bn1.num_batches_tracked",
    "_modules.keys", "_modules", "_parameters", "", ".", "..", "fc1..0", "fc1.", ".fc1", "__dict__", "training",
    "fc1.training", "forward", "__class__", "state_dict", "fc1.0", "fc1.0.0", "net.0", "net.9", "x" * 300,
    "fc1\x00", "fc1.__class__.__mro__", "__init__.__globals__.torch", "dump_patches", "_version",
    "call_super_init", "T_destination", "fc1.in_features", "conv2.1",
]
ATOMS = [None, True, False, 0, 1, -1, 2, 3, 7, 8, 9, 16, 17, 31, 32, 33, 255, 256, 257, 65535, 65536, 65537,
         2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53 + 1, 2 ** 62, 2 ** 63, 2 ** 64, -2 ** 63, 10 ** 30, -10 ** 12,
         0.5, 1.0, 1.5, -0.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), "", "x", "0", "7",
         "float32", "float64", "float16", "bfloat16", "int64", "bool", "uint8", "raw", "huffman", "rans",
         "gaps", "bitmask", "dense", "codes", "float", "kmeans", "uniform", "binary", "ternary", "factory",
         "torchscript", "Linear", "Conv2d", "Conv1d", "Embedding", "\u0000", "\ud800", [], [0], [1, 2], [7],
         ["float32"], [None], [10 ** 6, 10 ** 6], {}, {"stream": 0}, {"coding": "raw", "width": 0, "stream": 0},
         {"a": {"b": {}}}]


def _nodes(value, path=()) -> list:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _nodes(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _nodes(v, path + (i,))
    return out


def _get(root, path):
    for p in path:
        root = root[p]
    return root


def _set(root, path, value):
    _get(root, path[:-1])[path[-1]] = value


def _other_type(rng: random.Random, old):
    """A value of another JSON type than ``old`` (or a lying value of the same type)."""
    for _ in range(20):
        v = rng.choice(ATOMS)
        if type(v) is not type(old) or rng.random() < 0.2:
            return copy.deepcopy(v)
    return None


def _lie_number(rng: random.Random, old):
    if isinstance(old, bool):
        return rng.choice([not old, 0, 1, "true", None])
    if isinstance(old, int):
        return rng.choice([old + 1, old - 1, old * 2, old // 2, -old, -1, 0, old + 2 ** 32, 2 ** 63, 10 ** 30,
                           float(old), float("nan"), float("inf"), str(old), True])
    if isinstance(old, float):
        return rng.choice([float("nan"), float("inf"), -old, old * 1e300, 0, int(old) if math.isfinite(old) else 0])
    return rng.choice(ATOMS)


def _tensors(m) -> list:
    t = m.get("tensors") if isinstance(m, dict) else None
    return [e for e in t if isinstance(e, dict)] if isinstance(t, list) else []


def _weights(m) -> list:
    return [e for e in _tensors(m) if isinstance(e.get("encoding"), dict)
            and e["encoding"].get("storage") not in (None, "raw")]


def _stream_refs(m) -> list:
    """Paths of every stream reference in the manifest."""
    out = []
    for path in _nodes(m):
        if path and path[-1] in STREAM_KEYS:
            v = _get(m, path)
            if isinstance(v, int) and not isinstance(v, bool):
                out.append(path)
    return out


class Mutator:
    """The families. Each method takes and returns the manifest (or the file) and records what it did."""

    def __init__(self, rng: random.Random, seed: Seed, corpus: list):
        self.rng = rng
        self.seed = seed
        self.corpus = corpus
        self.ops: list = []

    # ----------------------------------------------------------------------------------- raw bytes

    def _regions(self, raw: bytes) -> list:
        if len(raw) < HEAD_SIZE:
            return [(0, len(raw))]
        _, _, _, n, _, mlen, _ = struct.unpack_from("<8sHHIIII", raw, 0)
        table_end = min(HEAD_SIZE + ENTRY_SIZE * n, len(raw))
        out = [(0, HEAD_SIZE), (HEAD_SIZE, table_end), (table_end, min(table_end + mlen, len(raw)))]
        pos = table_end + mlen
        for i in range((table_end - HEAD_SIZE) // ENTRY_SIZE):
            length, _ = struct.unpack_from("<QI", raw, HEAD_SIZE + ENTRY_SIZE * i)
            if pos >= len(raw):
                break
            out.append((pos, min(pos + length, len(raw))))
            pos += length
        return [r for r in out if r[1] > r[0]]

    def raw_edit(self, raw: bytes, whole: bool = True) -> bytes:
        rng = self.rng
        if not raw:
            return rng.randbytes(rng.randint(1, 32))
        start, end = rng.choice(self._regions(raw)) if whole else (0, len(raw))
        pos = rng.randint(start, end - 1)
        op = rng.choice(["flip", "set", "insert", "delete", "truncate", "append", "dup", "field"] if whole
                        else ["flip", "set", "insert", "delete", "truncate", "append", "dup", "zero", "ff"])
        self.ops.append(op)
        b = bytearray(raw)
        if op == "flip":
            b[pos] ^= 1 << rng.randint(0, 7)
        elif op == "set":
            b[pos] = rng.choice([0, 0xFF, 0x80, 0x7F, rng.randint(0, 255)])
        elif op == "insert":
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == "delete":
            del b[pos:pos + rng.randint(1, 16)]
        elif op == "truncate":
            del b[pos:]
        elif op == "append":
            b += rng.choice([b"\0", rng.randbytes(rng.randint(1, 64)), bytes(raw)])
        elif op == "dup":
            n = rng.randint(1, 64)
            b[pos:pos] = raw[pos:pos + n]
        elif op == "zero":
            n = rng.randint(1, len(b))
            b[pos:pos + n] = bytes(len(b[pos:pos + n]))
        elif op == "ff":
            n = rng.randint(1, len(b))
            b[pos:pos + n] = b"\xff" * len(b[pos:pos + n])
        else:  # a header or table field at a boundary value
            fields = [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<I"), (24, "<I")]
            n = struct.unpack_from("<I", raw, 12)[0] if len(raw) >= HEAD_SIZE else 0
            fields += [(HEAD_SIZE + ENTRY_SIZE * i, "<Q") for i in range(min(n, (len(raw) - HEAD_SIZE) // ENTRY_SIZE))]
            off, fmt = rng.choice(fields)
            if off + struct.calcsize(fmt) > len(raw):
                return raw[:off]
            (old,) = struct.unpack_from(fmt, raw, off)
            top = (1 << (8 * struct.calcsize(fmt))) - 1
            struct.pack_into(fmt, b, off, rng.choice([0, 1, old + 1, old - 1, old * 2, old // 2, 2 ** 31, top,
                                                      rng.randint(0, top)]) & top)
        return bytes(b)

    def bytes_family(self, raw: bytes) -> bytes:
        for _ in range(self.rng.randint(1, 3)):
            raw = self.raw_edit(raw)
        return raw

    # ----------------------------------------------------------------------------- stream contents

    def _coded(self, m, coding: str) -> list:
        """(stream index, alphabet) of every ``coding`` stream the manifest names."""
        out = []
        for path in _nodes(m):
            v = _get(m, path)
            if isinstance(v, dict) and v.get("coding") == coding and isinstance(v.get("stream"), int) \
                    and isinstance(v.get("alphabet"), int):
                out.append((v["stream"], v["alphabet"]))
        return out

    def streams_family(self, raw: bytes) -> bytes:
        rng = self.rng
        parts = split(raw)
        s, m = parts.streams, parts.manifest
        op = rng.choice(["edit", "edit", "edit", "huffman", "huffman", "rans", "rans", "raw-codes", "codebook",
                         "swap", "list", "version", "header", "torchscript"])
        self.ops.append(op)
        if op == "edit" and s:
            i = rng.randrange(len(s))
            s[i] = self.raw_edit(s[i], whole=False) if s[i] else rng.randbytes(rng.randint(1, 8))
        elif op == "huffman":
            coded = [(i, a) for i, a in self._coded(m, "huffman") if 0 <= i < len(s) and len(s[i]) >= a]
            if coded:
                i, a = rng.choice(coded)
                b = bytearray(s[i])
                k = rng.randint(0, 3)
                if k == 0:
                    b[:a] = bytes(a)
                elif k == 1:
                    b[:a] = b"\x01" * a
                elif k == 2:
                    b[:a] = bytes([1]) + bytes(a - 1)
                else:
                    for _ in range(rng.randint(1, 3)):
                        b[rng.randrange(a)] = rng.choice([0, 1, 2, 15, 16, 31, 32, 33, 63, 64, 65, 100, 255])
                s[i] = bytes(b)
        elif op == "rans":
            coded = [(i, a) for i, a in self._coded(m, "rans") if 0 <= i < len(s) and len(s[i]) >= 2 * a]
            if coded:
                i, a = rng.choice(coded)
                b = bytearray(s[i])
                k = rng.randint(0, 5)
                freqs = list(struct.unpack_from(f"<{a}H", b, 0))
                if k == 0:  # sum lies
                    j = rng.randrange(a)
                    freqs[j] = (freqs[j] + rng.choice([1, -1, 100, 32768])) & 0xFFFF
                elif k == 1:  # a used symbol gets frequency 0, another gets its share
                    used = [j for j, f in enumerate(freqs) if f] or [0]
                    j, o = rng.choice(used), rng.randrange(a)
                    freqs[o] = (freqs[o] + freqs[j]) & 0xFFFF
                    freqs[j] = 0
                elif k == 2:  # one symbol takes everything
                    freqs = [0] * a
                    freqs[rng.randrange(a)] = 32768 & 0xFFFF
                elif k == 3:
                    freqs = [0xFFFF] * a
                if k <= 3:
                    struct.pack_into(f"<{a}H", b, 0, *freqs)
                elif k == 4 and len(b) >= 2 * a + 8:  # the final state
                    struct.pack_into("<Q", b, 2 * a, rng.choice([0, 1, 2 ** 63, 2 ** 64 - 1, 1 << 31]))
                else:  # payload cut or padded
                    b = b[:rng.randint(2 * a, len(b))] if rng.random() < 0.5 else b + bytes(4 * rng.randint(1, 64))
                s[i] = bytes(b)
        elif op == "raw-codes":
            coded = [v["stream"] for v in (_get(m, p) for p in _nodes(m))
                     if isinstance(v, dict) and v.get("coding") == "raw" and isinstance(v.get("stream"), int)]
            coded = [i for i in coded if 0 <= i < len(s)]
            if coded:
                i = rng.choice(coded)
                s[i] = rng.choice([b"\xff", b"\x00"]) * len(s[i]) if rng.random() < 0.7 else s[i] + b"\xff" * 4
        elif op == "codebook":
            refs = [e["encoding"]["quant"].get(k) for e in _weights(m) if isinstance(e["encoding"].get("quant"), dict)
                    for k in ("codebook", "scales", "alpha")]
            refs = [i for i in refs if isinstance(i, int) and 0 <= i < len(s)]
            if refs:
                i = rng.choice(refs)
                val = rng.choice([float("nan"), float("inf"), -float("inf"), 1e38, 0.0, -0.0, 1e-45])
                s[i] = struct.pack("<f", val) * (len(s[i]) // 4)
        elif op == "swap" and len(s) > 1:
            i, j = rng.randrange(len(s)), rng.randrange(len(s))
            s[i], s[j] = s[j], s[i]
        elif op == "list" and s:
            i = rng.randrange(len(s))
            k = rng.randint(0, 2)
            if k == 0:
                del s[i]
            elif k == 1:
                s.insert(i, s[i])
            else:
                s.append(rng.randbytes(rng.randint(0, 32)))
        elif op == "version":
            parts.major, parts.minor = rng.choice([(0, 0), (2, 0), (65535, 65535), (1, rng.randint(0, 65535))])
        elif op == "header":
            return reseal_header(self.raw_edit(seal(parts), whole=True))
        elif op == "torchscript":
            arch = m.get("architecture") if isinstance(m, dict) else None
            if isinstance(arch, dict) and isinstance(arch.get("stream"), int) and 0 <= arch["stream"] < len(s):
                i = arch["stream"]
                k = rng.randint(0, 5)
                if k == 0:  # another seed's graph
                    others = [x for x in self.corpus if x is not self.seed and x.name.startswith(("script", "eager"))]
                    if others:
                        op_parts = split(rng.choice(others).raw)
                        oi = op_parts.manifest["architecture"]["stream"]
                        s[i] = op_parts.streams[oi]
                elif k == 1:  # zlib of garbage
                    s[i] = zlib.compress(rng.randbytes(rng.randint(0, 4096)))
                elif k == 2:  # a zlib bomb (~64 MiB of zeros)
                    s[i] = _zlib_bomb()
                elif k == 3:  # the archive, changed inside and recompressed
                    arc = bytearray(zlib.decompress(s[i]))
                    for _ in range(rng.randint(1, 4)):
                        arc[rng.randrange(len(arc))] = rng.randint(0, 255)
                    s[i] = zlib.compress(bytes(arc))
                elif k == 4:  # cut
                    s[i] = s[i][:rng.randint(0, len(s[i]))]
                else:  # not zlib
                    s[i] = zlib.decompress(s[i])[:4096]
        return seal(parts)

    # -------------------------------------------------------------------------------------- manifest

    def manifest_family(self, raw: bytes, family: str) -> bytes:
        parts = split(raw)
        m = parts.manifest
        if family == "text":
            return self.text_family(parts)
        for _ in range(self.rng.randint(1, 2)):
            try:
                m = getattr(self, f"_{family}")(m, parts)
            except (TypeError, KeyError, IndexError, AttributeError, ValueError):
                # an earlier edit of this case made the manifest too odd for this one: keep what we have
                self.ops.append("(skipped)")
        parts.manifest = m
        return seal(parts)

    def _schema(self, m, parts):
        rng = self.rng
        op = rng.choice(["type", "type", "missing", "missing", "number", "targeted", "targeted", "list", "unknown"])
        self.ops.append(op)
        if not isinstance(m, dict):
            return m
        read = {k: v for k, v in m.items()}
        nodes = [p for p in _nodes(read) if p]
        if op == "type" and nodes:
            path = rng.choice(nodes)
            _set(m, path, _other_type(rng, _get(m, path)))
        elif op == "missing":
            candidates = [(k,) for k in TOP_KEYS if k in m]
            for p in nodes:
                v = _get(m, p)
                if isinstance(v, dict):
                    for k in v:
                        if k in ENTRY_KEYS + ENC_KEYS + QUANT_KEYS + CODED_KEYS + SPEC_KEYS or p[-1] in (
                                "accounting", "architecture", "edits"):
                            candidates.append(p + (k,))
            if rng.random() < 0.3:
                candidates = [c for c in candidates if c[0] in ("accounting", "architecture") or len(c) == 1] \
                    or candidates
            if candidates:
                path = rng.choice(candidates)
                del _get(m, path[:-1])[path[-1]]
                self.ops[-1] = "missing " + ".".join(map(str, path[-2:]))
        elif op == "number":
            nums = [p for p in nodes if isinstance(_get(m, p), (int, float))]
            if nums:
                path = rng.choice(nums)
                _set(m, path, _lie_number(rng, _get(m, path)))
        elif op == "targeted":
            ws = _weights(m)
            choices = [
                lambda: rng.choice(ws or [{"encoding": {}}])["encoding"].__setitem__(
                    rng.choice(["index", "gaps", "quant"]), rng.choice([7, "ab", [], [1, 2], None, True, 1.5])),
                lambda: m.__setitem__("tensors", rng.choice([{}, "x", 7, None, [7], [[]], [None]])),
                lambda: m.__setitem__("architecture", rng.choice(["factory", 7, [], None, {"kind": None}])),
                lambda: m.__setitem__("accounting", rng.choice([[], 7, "x", None, {"dense_bits": "x"},
                                                                {"dense_bits": float("nan"), "coded_bits": 1},
                                                                {"dense_bits": -1, "coded_bits": -1},
                                                                {"dense_bits": 1e308, "coded_bits": 0},
                                                                {"coded_bits": 5}])),
                lambda: m.__setitem__("plan", rng.choice([7, [], "x", None, {"layers": 5}, {"default": []}])),
                lambda: m.__setitem__("edits", rng.choice([[], 7, "x", {"replace": []}, {"resize": []},
                                                           {"resize": {"fc1": 5}}, {"replace": {"fc1": {}}}])),
                lambda: m.__setitem__("producer", rng.choice([{}, [], 7, None, "x" * 10000])),
                lambda: rng.choice(_tensors(m) or [{}]).__setitem__(
                    rng.choice(["shape", "dtype", "name", "encoding"]),
                    rng.choice(["10x500", ["float32"], 5, None, [], {}, [10.5], {"storage": 5}])),
                lambda: rng.choice(_tensors(m) or [{}]).__setitem__("encoding", rng.choice(
                    [[], "raw", 7, None, {}, {"storage": "raw"}, {"storage": "dense"}, {"storage": []}])),
                lambda: m.__setitem__("version", rng.choice([None, "1.0", [2, 0], 1, {}])),
            ]
            if ws:
                for e in ws:
                    if isinstance(e["encoding"].get("quant"), dict):
                        q = e["encoding"]["quant"]
                        choices.append(lambda q=q: q.__setitem__(rng.choice(QUANT_KEYS),
                                                                 rng.choice([[], {}, "x", None, 1.5, -1])))
                        break
            rng.choice(choices)()
        elif op == "list":
            ts = m.get("tensors")
            if isinstance(ts, list) and ts:
                i = rng.randrange(len(ts))
                k = rng.randint(0, 3)
                if k == 0:
                    ts.insert(i, copy.deepcopy(ts[i]))
                elif k == 1:
                    del ts[i]
                elif k == 2:
                    ts.append(ts.pop(i))
                else:
                    e = copy.deepcopy(ts[i])
                    if isinstance(e, dict):
                        e["name"] = str(e.get("name")) + ".extra"
                    ts.append(e)
        else:
            targets = [m] + _tensors(m) + [e["encoding"] for e in _weights(m)]
            t = rng.choice(targets)
            t[rng.choice(["x", "alias", "stream", "encoding", "quant", "shape", "__proto__", "kind"])] = \
                copy.deepcopy(rng.choice(ATOMS))
        return m

    def _module_names(self):
        return self.seed.modules or ["fc1"]

    def _spec_for(self, rng, like=None) -> dict:
        """A plausible module spec (copied from the file, or made up)."""
        chains = _corpus_specs(self.corpus)
        if chains and rng.random() < 0.5:
            return copy.deepcopy(rng.choice(chains))
        kind = rng.choice(["Linear", "Conv2d", "Conv1d", "Embedding"])
        if kind == "Linear":
            return {"type": "Linear", "in_features": rng.choice([1, 8, 200, 500, 64]),
                    "out_features": rng.choice([1, 10, 500, 300]), "bias": rng.random() < 0.5}
        if kind == "Embedding":
            return {"type": "Embedding", "num_embeddings": rng.choice([1, 40, 60]),
                    "embedding_dim": rng.choice([1, 6, 16]), "padding_idx": rng.choice([None, 0, 5, -1])}
        k = rng.choice([1, 3])
        nd = 2 if kind == "Conv2d" else 1
        return {"type": kind, "in_channels": rng.choice([1, 8, 20]), "out_channels": rng.choice([4, 8, 50]),
                "kernel_size": [k] * nd, "stride": [1] * nd, "padding": [k // 2] * nd, "dilation": [1] * nd,
                "groups": 1, "bias": True, "padding_mode": "zeros"}

    def _bad_spec_value(self, rng, spec: dict) -> None:
        key = rng.choice(list(spec) + ["device", "dtype", "_modules"])
        spec[key] = rng.choice({
            "kernel_size": [[-3, 3], [0, 0], [3], [3, 3, 3], [10 ** 6, 10 ** 6], 3, "3", [1.5, 1]],
            "stride": [[0, 0], [-1, 1], [10 ** 9, 1], 1],
            "padding": ["same", "valid", "bogus", [-1, -1], [10 ** 6, 10 ** 6], 1],
            "dilation": [[0, 1], [-2, 1], [10 ** 5, 1]],
            "groups": [0, 3, 7, 8, 10 ** 9, -1, 1.5],
            "padding_mode": ["circular", "reflect", "replicate", "bogus", 0, None],
            "padding_idx": [99, -100, "x", 1.5, 10 ** 9],
            "bias": ["no", 1, None, [], {}],
            "type": ["Conv3d", "LSTM", "Sequential", "Module", "Linear", "Embedding", "Conv1d", "", None, 7],
            "in_features": [0, -1, 2 ** 40, 2 ** 20, 1.0, "8", True],
            "out_features": [0, -1, 2 ** 40, 2 ** 20, True],
            "in_channels": [0, -3, 2 ** 40, 2 ** 16],
            "out_channels": [0, -3, 2 ** 40, 2 ** 16],
            "num_embeddings": [0, -1, 2 ** 40, 2 ** 24],
            "embedding_dim": [0, -1, 2 ** 40, 2 ** 24],
        }.get(key, ["cuda", "float64", "meta", {}, [], None, 7]))

    def _edits(self, m, parts):
        rng = self.rng
        if not isinstance(m, dict):
            return m
        edits = m.get("edits")
        if not isinstance(edits, dict):
            edits = m["edits"] = {"resize": {}, "replace": {}}
        for k in ("resize", "replace"):
            if not isinstance(edits.get(k), dict):
                edits[k] = {}
        op = rng.choice(["replace-path", "replace-path", "resize-path", "resize-path", "spec-value", "spec-value",
                         "spec-type", "resize-attr", "resize-attr", "consistent-replace", "consistent-replace",
                         "consistent-resize", "kinds"])
        self.ops.append(op)
        modules = self._module_names()
        path_pool = HOSTILE_PATHS + modules + self.seed.params
        if op == "replace-path":
            path = rng.choice(path_pool if rng.random() < 0.8 else modules)
            chain = [self._spec_for(rng) for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.1:
                chain = rng.choice([[], {}, "Linear", [7], [None], [[]]])
            edits["replace"][path] = chain
            self.ops[-1] = f"replace-path {path[:40]!r}"
        elif op == "resize-path":
            path = rng.choice(path_pool)
            attrs = {rng.choice(["in_features", "out_features", "in_channels", "out_channels", "groups",
                                 "num_features", "num_embeddings", "embedding_dim", "normalized_shape", "forward",
                                 "weight", "__class__", "training", "_parameters", "__dict__"]):
                     rng.choice([1, 2, 3, 7, 0, -1, 2 ** 40, True, "3", [3], None, 1.5])}
            edits["resize"][path] = attrs if rng.random() < 0.9 else rng.choice([5, [], "x", None])
            self.ops[-1] = f"resize-path {path[:40]!r}"
        elif op == "spec-value":
            chains = [c for c in edits["replace"].values() if isinstance(c, list) and c]
            if chains:
                spec = rng.choice(rng.choice(chains))
                if isinstance(spec, dict):
                    self._bad_spec_value(rng, spec)
            else:
                path = rng.choice(modules)
                spec = self._spec_for(rng)
                self._bad_spec_value(rng, spec)
                edits["replace"][path] = [spec]
        elif op == "spec-type":
            chains = [c for c in edits["replace"].values() if isinstance(c, list) and c]
            if chains:
                c = rng.choice(chains)
                c[rng.randrange(len(c))] = self._spec_for(rng)
            else:
                edits["replace"][rng.choice(modules)] = [self._spec_for(rng)]
        elif op == "resize-attr":
            if edits["resize"] and rng.random() < 0.6:
                path = rng.choice(list(edits["resize"]))
            else:
                path = rng.choice(modules)
            attrs = edits["resize"].get(path)
            if not isinstance(attrs, dict):
                attrs = edits["resize"][path] = {}
            own = _ATTRS_OF.get(self.seed.types.get(path, ""), ())
            a = rng.choice(own) if own and rng.random() < 0.8 else rng.choice(
                ["in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
                 "num_embeddings", "embedding_dim", "normalized_shape"])
            attrs[a] = rng.choice([1, 2, 3, 4, 5, 7, 10, 2 ** 31, 2 ** 40, 0, [5], [0], [-1, 3]])
        elif op == "consistent-replace":
            self._consistent_replace(m, parts)
        elif op == "consistent-resize":
            # a resize the tensors still fit, but the module's own bookkeeping no longer does (groups, ...)
            typed = [n for n in modules if self.seed.types.get(n) in _ATTRS_OF]
            path = rng.choice(typed or modules)
            own = _ATTRS_OF.get(self.seed.types.get(path, ""), ("groups",))
            attrs = edits["resize"].get(path) if isinstance(edits["resize"].get(path), dict) else {}
            attrs[rng.choice(own)] = rng.choice([1, 2, 3, 4, 5, 10])
            edits["resize"][path] = attrs
        else:
            m["edits"] = rng.choice([[], "x", 7, None, {"replace": {"fc1": [{"type": "Linear"}]}},
                                     {"resize": {"": {}}}, {"replace": {".": [{}]}}, {"x": {}}])
        return m

    def _consistent_replace(self, m, parts):
        """Replace a layer by a chain and give the file tensors for it, so loading gets as far as it can:
        the chain may fit (must run), or its tensors' shapes may not fit each other (must be refused or run)."""
        rng = self.rng
        ts = _tensors(m)
        layers = sorted({e["name"].rsplit(".", 1)[0] for e in ts if isinstance(e.get("name"), str)
                         and e["name"].endswith(".weight") and isinstance(e.get("shape"), list)
                         and len(e["shape"]) == 2 and "." not in e["name"].rsplit(".", 1)[0]})
        if not layers:
            return
        layer = rng.choice(layers)
        w = next(e for e in ts if e.get("name") == f"{layer}.weight")
        out_f, in_f = w["shape"]
        r = rng.choice([1, 2, 5, 17])
        lie = rng.random() < 0.5
        chain = [{"type": "Linear", "in_features": in_f, "out_features": r, "bias": False},
                 {"type": "Linear", "in_features": r, "out_features": out_f, "bias": True}]
        shapes = {f"{layer}.0.weight": [r, in_f], f"{layer}.1.weight": [out_f, r], f"{layer}.1.bias": [out_f]}
        if lie:
            key = rng.choice(list(shapes))
            shapes[key] = rng.choice([shapes[key][::-1], [d + 1 for d in shapes[key]], shapes[key] + [1],
                                      [math.prod(shapes[key])]])
        m["tensors"] = [e for e in ts if not (isinstance(e.get("name"), str) and e["name"].startswith(layer + "."))]
        for name, shape in shapes.items():
            parts.streams.append(struct.pack("<f", 0.01) * math.prod(shape))
            m["tensors"].append({"name": name, "shape": shape, "dtype": "float32",
                                 "encoding": {"storage": "raw", "stored_dtype": "float32",
                                              "stream": len(parts.streams) - 1}})
        edits = m["edits"]
        edits["replace"][layer] = chain
        self.ops[-1] = f"consistent-replace {layer} ({'lying shapes' if lie else 'fits'})"

    def _shapes(self, m, parts):
        rng = self.rng
        ts = [e for e in _tensors(m) if isinstance(e.get("shape"), list) and "alias" not in e]
        if not ts:
            return m
        e = rng.choice(ts)
        shape = list(e["shape"])
        n = math.prod(shape) if all(isinstance(d, int) for d in shape) else 1
        op = rng.choice(["transpose", "transpose", "huge", "swap", "swap", "add-dim", "drop-dim", "same-product",
                         "same-product", "scalar", "zero", "weird", "dtype", "dtype"])
        self.ops.append(op)
        if op == "transpose":
            e["shape"] = shape[::-1] if len(shape) > 1 else shape + [1]
        elif op == "huge":
            e["shape"] = rng.choice([[1048576, 16], [n, n], [2 ** 20, 2 ** 20], [2 ** 40], [n * 2] + shape[1:],
                                     [2 ** 31, 1], [10 ** 7]])
        elif op == "swap" and len(ts) > 1:
            same = [o for o in ts if o is not e and isinstance(o.get("shape"), list)
                    and all(isinstance(d, int) for d in o["shape"]) and math.prod(o["shape"]) == n]
            o = rng.choice(same) if same and rng.random() < 0.5 else rng.choice([x for x in ts if x is not e])
            e["shape"], o["shape"] = o["shape"], e["shape"]
        elif op == "add-dim":
            e["shape"] = shape + [rng.choice([1, 2])] if rng.random() < 0.5 else [1] + shape
        elif op == "drop-dim":
            e["shape"] = shape[:-1] if shape else [1]
        elif op == "same-product":
            divisors = [d for d in range(1, min(n, 4096) + 1) if n % d == 0]
            d = rng.choice(divisors) if divisors else 1
            e["shape"] = rng.choice([[n], [d, n // d], [n // d, d], [1, n], [n, 1], [d, 1, n // d],
                                     shape[1:] + shape[:1]])
        elif op == "scalar":
            e["shape"] = []
        elif op == "zero":
            e["shape"] = rng.choice([[0], [0] + shape[1:], shape[:-1] + [0]])
        elif op == "weird":
            e["shape"] = rng.choice([[-1] + shape[1:], [float(d) for d in shape], [True] * len(shape), [2] * 9,
                                     [str(d) for d in shape], [[d] for d in shape], None, "x"])
        else:  # dtype lie
            e["dtype"] = rng.choice(["float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool",
                                     "float", "torch.float32", "complex64"])
        return m

    def _streamidx(self, m, parts):
        rng = self.rng
        refs = _stream_refs(m)
        if not refs:
            return m
        path = rng.choice(refs)
        n = len(parts.streams)
        old = _get(m, path)
        _set(m, path, rng.choice([rng.randrange(max(n, 1)), old + 1, old - 1, -1, n, n + 1, 2 ** 32, 2 ** 64,
                                  True, False, float(old), str(old), None, [old], {}]))
        self.ops.append("streamidx " + ".".join(map(str, path[-2:])))
        return m

    def _codetable(self, m, parts):
        rng = self.rng
        ws = _weights(m)
        if not ws:
            return m
        e = rng.choice(ws)
        enc = e["encoding"]
        q = enc.get("quant") if isinstance(enc.get("quant"), dict) else None
        targets = []
        if q is not None:
            targets += [("quant", "k", [0, 1, 2, 255, 256, 257, q.get("k", 1) + 1, q.get("k", 1) - 1]),
                        ("quant", "bits", [0, 1, 2, 7, 8, 9, 16, 32]),
                        ("quant", "reserved_zero", [not q.get("reserved_zero"), "yes", 1, None]),
                        ("quant", "method", ["kmeans", "uniform", "binary", "ternary", "pq", None]),
                        ("quant", "symmetric", [not q.get("symmetric"), None, "no"]),
                        ("quant", "rows", [0, 1, 2, 3, 7, math.prod(e["shape"]), math.prod(e["shape"]) + 1])]
        for key in ("index", "gaps"):
            if isinstance(enc.get(key), dict):
                c = enc[key]
                targets += [(key, "alphabet", [0, 1, 2, 3, 65536, 65537, (c.get("alphabet") or 2) + 1,
                                               (c.get("alphabet") or 2) - 1]),
                            (key, "width", [0, 1, 7, 9, 16, 32, 33, 64]),
                            (key, "coding", ["raw", "huffman", "rans", "lzma", None])]
        targets += [(None, "gap_bits", [0, 1, 2, 3, 9, 16, 17, 64]),
                    (None, "entries", [0, 1, enc.get("entries", 0) + 1, enc.get("entries", 0) - 1,
                                       math.prod(e["shape"]), math.prod(e["shape"]) + 1]),
                    (None, "storage", ["dense", "bitmask", "gaps", "raw", "csr"]),
                    (None, "values", ["float", "codes", "half"]),
                    (None, "stored_dtype", ["float32", "float16", "int64", "bool", "bfloat16"])]
        sub, key, values = rng.choice(targets)
        d = enc if sub is None else enc[sub]
        d[key] = rng.choice(values)
        self.ops.append(f"codetable {sub or 'encoding'}.{key}")
        return m

    def _arch(self, m, parts):
        rng = self.rng
        if not isinstance(m, dict):
            return m
        arch = m.get("architecture")
        if not isinstance(arch, dict):
            arch = m["architecture"] = {}
        op = rng.choice(["factory", "factory", "kwargs", "kind", "stream", "sample"])
        self.ops.append(f"arch {op}")
        if op == "factory":
            arch["factory"] = rng.choice([
                "explorer.engine.samples:torch.save", "explorer.engine.samples:importlib.import_module",
                "os:system", "builtins:eval", "subprocess:run", "explorer.engine.samples:digits_cnn",
                "explorer.engine.samples:digits_mlp", "explorer.engine.samples:DigitsCNN",
                "explorer.engine.samples:load_sample", "explorer.engine.samples:_digits_bundle",
                f"{MODELS_MODULE}:tied", f"{MODELS_MODULE}:emb", f"{MODELS_MODULE}:ProbeBNCNN",
                "explorer.engine.samples:digits_cnn.__globals__", "a" * 500 + ":b", ":", "x:", ":y", "", 7, None,
                "explorer/engine/samples.py:digits_cnn", "explorer.engine.samples:digits_cnn:x"])
            arch.setdefault("kind", "factory")
        elif op == "kwargs":
            arch["kwargs"] = rng.choice([{"x": 1}, {"obj": "a", "f": "/tmp/fuzz-probe-written"}, [], "x", 7,
                                         {"__class__": 1}, None, {}])
        elif op == "kind":
            arch["kind"] = rng.choice(["factory", "torchscript", "pickle", "onnx", "", None, 7, ["factory"]])
        elif op == "stream":
            arch["stream"] = rng.choice([0, -1, len(parts.streams), len(parts.streams) - 1, None, "0"])
        else:
            arch["sample"] = rng.choice(["digits-cnn", "../../etc/passwd", 7, None, {}])
        return m

    def text_family(self, parts: Parts) -> bytes:
        rng = self.rng
        text = json.dumps(parts.manifest).encode()
        op = rng.choice(["deep", "longint", "utf8", "bom", "garbage", "list", "dupkey", "nan", "bigfloat",
                         "trailing", "empty", "bomb"])
        self.ops.append(f"text {op}")
        head = b'{"format":"compression-explorer-model","x":'
        if op == "deep":
            d = rng.choice([1000, 10_000, 100_000])
            text = head + b"[" * d + b"]" * d + b"," + text[1:]
        elif op == "longint":
            text = text.replace(b'"dense_bits":', b'"dense_bits":' + b"9" * rng.choice([4301, 5000, 100_000]) + b",\"y\":", 1)
        elif op == "utf8":
            text = text.replace(b'"producer":"', b'"producer":"\xff\xfe', 1)
        elif op == "bom":
            text = b"\xef\xbb\xbf" + text
        elif op == "garbage":
            text = rng.randbytes(rng.randint(0, 200))
        elif op == "list":
            text = b"[" + text + b"]"
        elif op == "dupkey":
            text = text[:-1] + b',"tensors":' + rng.choice([b"7", b"{}", b"[]", b"null"]) + b"}"
        elif op == "nan":
            text = text.replace(b'"dense_bits":', b'"dense_bits":NaN,"z":', 1)
        elif op == "bigfloat":
            text = text.replace(b'"dense_bits":', b'"dense_bits":1e999,"z":', 1)
        elif op == "trailing":
            text = text + rng.choice([b" ", b"x", b"{}", b"\0"])
        elif op == "empty":
            text = rng.choice([b"", b"{}", b"null", b"0", b'""'])
        else:  # a manifest that inflates to many objects
            text = head + b"[" + b"{}," * rng.choice([100_000, 2_000_000]) + b"{}]}"
        return seal(parts, text=text, level=9)


_ATTRS_OF = {"Linear": ("in_features", "out_features"),
             "Conv2d": ("in_channels", "out_channels", "groups"), "Conv1d": ("in_channels", "out_channels", "groups"),
             "BatchNorm2d": ("num_features",), "Embedding": ("num_embeddings", "embedding_dim")}
_BOMB = None
_SPECS: dict = {}


def _corpus_specs(corpus: list) -> list:
    """Every module spec of the corpus' factor chains (computed once)."""
    if id(corpus) not in _SPECS:
        _SPECS[id(corpus)] = [s for x in corpus for c in split(x.raw).manifest["edits"]["replace"].values()
                              for s in c]
    return _SPECS[id(corpus)]


def _zlib_bomb() -> bytes:
    global _BOMB
    if _BOMB is None:
        c = zlib.compressobj(9)
        chunk = bytes(1 << 20)
        _BOMB = b"".join(c.compress(chunk) for _ in range(64)) + c.flush()
    return _BOMB


FAMILIES = {  # weight of each family
    "bytes": 12, "streams": 18, "schema": 20, "edits": 16, "shapes": 12, "streamidx": 7, "codetable": 9,
    "arch": 3, "text": 3,
}
ALWAYS_LOAD = ("edits", "shapes")


def make_case(seed_value: int, corpus: list):
    """(family, seed file, ops, mutated bytes, whether to load) of case ``seed_value``."""
    rng = random.Random(seed_value)
    family = rng.choices(list(FAMILIES), weights=list(FAMILIES.values()))[0]
    seed = rng.choice(corpus)
    mut = Mutator(rng, seed, corpus)
    if family == "bytes":
        raw = mut.bytes_family(seed.raw)
    elif family == "streams":
        raw = mut.streams_family(seed.raw)
    else:
        raw = mut.manifest_family(seed.raw, family)
    load = family in ALWAYS_LOAD or rng.randrange(3) == 0
    return family, seed, mut.ops, raw, load


# ============================================================================================== oracle


class Finding(Exception):
    """Not an exception of the engine: an outcome the oracle refuses (wrong tensors, multi-line error...)."""


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/explorer/" in f.filename] or frames
    f = ours[-1] if ours else None
    return f"{Path(f.filename).name}:{f.lineno} {f.name}" if f else "?"


class ClassGuard:
    """Snapshot of the dictionaries of the classes a model file must never change."""

    def __init__(self):
        import torch
        from torch import nn
        from torch.nn.modules import batchnorm, conv

        self.classes = [nn.Module, nn.Linear, nn.Conv1d, nn.Conv2d, conv._ConvNd, nn.Sequential, nn.BatchNorm2d,
                        batchnorm._BatchNorm, batchnorm._NormBase, nn.Embedding, nn.LayerNorm, nn.ReLU,
                        nn.MaxPool2d, nn.Parameter, torch.Tensor, torch.jit.ScriptModule,
                        torch.jit.RecursiveScriptModule, nn.ModuleDict, nn.ModuleList]
        self.snap = {cls: dict(cls.__dict__) for cls in self.classes}
        self.named = {"nn.Module.__call__": nn.Module.__call__, "nn.Module.__getattr__": nn.Module.__getattr__,
                      "nn.Module.__setattr__": nn.Module.__setattr__, "nn.Conv2d.forward": nn.Conv2d.forward,
                      "nn.Linear.forward": nn.Linear.forward, "nn.Sequential.forward": nn.Sequential.forward,
                      "nn.BatchNorm2d.forward": nn.BatchNorm2d.forward, "nn.Embedding.forward": nn.Embedding.forward}

    def changes(self) -> list:
        out = []
        for cls, before in self.snap.items():
            now = cls.__dict__
            if now.keys() == before.keys() and all(now[k] is before[k] for k in before):
                continue
            for k in sorted(set(now) | set(before), key=str):
                if k not in before:
                    out.append(f"{cls.__qualname__}.{k} added ({type(now[k]).__name__})")
                elif k not in now:
                    out.append(f"{cls.__qualname__}.{k} deleted")
                elif now[k] is not before[k]:
                    out.append(f"{cls.__qualname__}.{k} replaced by {type(now[k]).__name__}")
        return out

    def restore(self) -> None:
        for cls, before in self.snap.items():
            now = dict(cls.__dict__)
            for k in now:
                if k not in before:
                    try:
                        type.__delattr__(cls, k)
                    except (TypeError, AttributeError):
                        pass
            for k, v in before.items():
                if k not in now or now[k] is not v:
                    try:
                        type.__setattr__(cls, k, v)
                    except (TypeError, AttributeError):
                        pass


@dataclass
class Outcome:
    result: str  # "ok" | "LoadError" | "FormatError" | ... | "UNEXPECTED"
    stage: str = ""  # where it ended
    exc: Optional[BaseException] = None
    loaded: bool = False
    ran: bool = False
    message: str = ""


def _check_load_error(exc: BaseException) -> None:
    msg = str(exc)
    if not msg.strip() or "\n" in msg.strip():
        raise Finding(f"{type(exc).__name__} without a one-line message: {msg[:120]!r}")


def run_info_cli(path: str) -> None:
    """The ``info`` verb's own rendering of a file (text and --json), in this process."""
    from explorer import cli

    parser = cli.build_parser()
    for extra in ([], ["--json"]):
        args = parser.parse_args(["info", path, *extra])
        with contextlib.redirect_stdout(io.StringIO()):
            args.func(args)


def oracle(raw: bytes, seed: Seed, family: str, load: bool, scratch: Path, info_cli: bool = True,
           trace: Optional[dict] = None) -> Outcome:
    """Read ``raw`` every way a user can. ``trace`` (with tracemalloc running) receives each stage's peak."""
    import torch

    from explorer.engine.errors import LoadError
    from explorer.engine.storage import fileformat as ff

    stage = "parse"

    def enter(next_stage: str) -> None:
        nonlocal stage
        if trace is not None:
            trace[stage] = max(trace.get(stage, 0), tracemalloc.get_traced_memory()[1])
            tracemalloc.reset_peak()
        stage = next_stage

    out = Outcome("ok")
    try:
        mf = ff.parse(raw)
        enter("summary")
        ff.summary(mf)
        path = scratch / "case.cexp"
        if info_cli or load:
            path.write_bytes(raw)
        if info_cli:
            enter("info")
            run_info_cli(str(path))
        enter("decode")
        tensors = ff.decode_tensors(mf)
        for e in mf.manifest["tensors"]:
            t = tensors[e["name"]]
            if list(t.shape) != list(e["shape"]) or t.dtype != ff.DTYPES[e["dtype"]]:
                raise Finding(f"{e['name']}: decoded {tuple(t.shape)} {t.dtype}, the manifest says "
                              f"{e['shape']} {e['dtype']}")
        if family == "bytes":  # no CRC was fixed: passing means nothing changed
            ref = seed.reference
            if set(tensors) != set(ref) or any(tensors[k].dtype != ref[k].dtype or not torch.equal(tensors[k], ref[k])
                                               for k in ref):
                raise Finding("a raw mutation passed every CRC with different tensors")
        if load:
            enter("load")
            model = ff.load(path, factory=seed.factory)
            out.loaded = True
            enter("forward")
            x = seed.example.clone() if hasattr(seed.example, "clone") else seed.example
            with torch.no_grad():
                model(x)
            out.ran = True
        out.stage = "done"
        return out
    except LoadError as exc:
        try:
            _check_load_error(exc)
        except Finding as f:
            return Outcome("UNEXPECTED", stage, f)
        return Outcome(type(exc).__name__, stage, message=str(exc))
    except (Exception, RecursionError, MemoryError) as exc:  # noqa: BLE001 - what we look for
        return Outcome("UNEXPECTED", stage, exc, out.loaded)
    finally:
        enter("")


# ============================================================================================= the run


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fuzz(args, corpus: list, scratch: Path, guard: ClassGuard) -> dict:
    counts = collections.defaultdict(collections.Counter)
    ended = collections.defaultdict(collections.Counter)  # family -> where clean errors were raised / successes
    unexpected: dict = {}  # (stage, type, where) -> [count, first seed, family, file, ops, message]
    patches: list = []  # (seed, family, file, ops, changes)
    slowest = (0.0, None, "")
    largest: dict = {}  # stage -> (traced peak, seed, file size, family)
    over: dict = {}  # stage -> [cases, first seed, its peak, its file size, family]
    loads = runs = 0
    start = last = time.perf_counter()
    done = 0
    trace_every = max(1, args.trace_every)
    for i in range(args.n):
        s = args.seed + i
        traced = i % trace_every == 0
        t = time.perf_counter()
        faulthandler.dump_traceback_later(120, exit=False)
        try:
            family, seed, ops, raw, load = make_case(s, corpus)
        except Exception as exc:  # noqa: BLE001 - a fault of this harness, not of the engine
            key = ("mutate", type(exc).__name__ + " (in the fuzzer)", _where(exc))
            unexpected.setdefault(key, [0, s, "?", "?", [], str(exc).splitlines()[0][:160] if str(exc) else ""])
            unexpected[key][0] += 1
            faulthandler.cancel_dump_traceback_later()
            continue
        stages: Optional[dict] = {} if traced else None
        if traced:
            tracemalloc.start()
        try:
            out = oracle(raw, seed, family, load, scratch, info_cli=(i % args.info_every == 0), trace=stages)
        finally:
            if traced:
                tracemalloc.stop()
        faulthandler.cancel_dump_traceback_later()
        elapsed = time.perf_counter() - t
        changed = guard.changes()
        if changed:
            patches.append((s, family, seed.name, list(ops), changed))
            if len(patches) <= 10:
                print(f"  CLASS PATCHED (seed {s}, {family} {ops} of {seed.name}): {'; '.join(changed[:4])}",
                      flush=True)
            guard.restore()
            if guard.changes():
                print("  could not undo the class patch; stopping", flush=True)
                break
        counts[family][out.result if out.result in ("ok", "UNEXPECTED") else "LoadError"] += 1
        if out.result not in ("ok", "UNEXPECTED"):
            ended[family][out.stage] += 1
        elif out.result == "ok":
            ended[family]["ran" if out.ran else "decoded"] += 1
        loads += out.loaded
        runs += out.ran
        if out.result == "UNEXPECTED":
            exc = out.exc
            key = (out.stage, type(exc).__name__, _where(exc) if not isinstance(exc, Finding) else "oracle")
            if key not in unexpected:
                msg = str(exc).splitlines()[0][:160] if str(exc) else ""
                unexpected[key] = [0, s, family, seed.name, list(ops), msg]
                if len(unexpected) <= 60:
                    print(f"  unexpected {key[1]} in {key[0]} at {key[2]} (seed {s}, {family} {ops} of "
                          f"{seed.name}): {msg}", flush=True)
            unexpected[key][0] += 1
        done += 1
        if elapsed > slowest[0]:
            slowest = (elapsed, s, f"{family} {ops} of {seed.name}")
        if traced:
            for st, peak in stages.items():
                if not st:
                    continue
                if peak > largest.get(st, (0,))[0]:
                    largest[st] = (peak, s, len(raw), family)
                if peak > OVER_ALLOCATION:
                    o = over.setdefault(st, [0, s, peak, len(raw), family])
                    o[0] += 1
        now = time.perf_counter()
        if now - last > 30:
            last = now
            print(f"  {done:,} cases, {done / (now - start):.1f}/s, {sum(v[0] for v in unexpected.values()):,} "
                  f"unexpected, {len(patches)} class patches, RSS {_rss_mb():.0f} MB", file=sys.stderr, flush=True)
        if args.seconds is not None and now - start > args.seconds:
            break
    return dict(counts=counts, ended=ended, unexpected=unexpected, patches=patches, slowest=slowest, largest=largest, over=over,
                done=done, total=time.perf_counter() - start, loads=loads, runs=runs)


def print_fuzz(args, r: dict, trace_every: int) -> bool:
    counts, unexpected, patches = r["counts"], r["unexpected"], r["patches"]
    done, total = r["done"], r["total"]
    outcomes = ["ok", "LoadError", "UNEXPECTED"]
    print(f"\n{done:,} cases (seeds {args.seed}..{args.seed + done - 1}) in {total:.0f} s, "
          f"{done / max(total, 1e-9):.1f} cases/s; {r['loads']:,} files loaded, {r['runs']:,} forward passes")
    print(f"{'family':<10}" + "".join(f"{o:>12}" for o in ["success", "clean error", "unexpected"]) + f"{'total':>9}")
    for fam in FAMILIES:
        if fam in counts:
            c = counts[fam]
            print(f"{fam:<10}" + "".join(f"{c[o]:>12,}" for o in outcomes) + f"{sum(c.values()):>9,}")
    tot = collections.Counter()
    for c in counts.values():
        tot.update(c)
    print(f"{'all':<10}" + "".join(f"{tot[o]:>12,}" for o in outcomes) + f"{sum(tot.values()):>9,}")
    stages = ["parse", "summary", "info", "decode", "load", "forward", "decoded", "ran"]
    print(f"\nhow far cases got: clean errors by the stage that raised them; successes decoded only / loaded and ran")
    print(f"{'family':<10}" + "".join(f"{x:>9}" for x in stages))
    for fam in FAMILIES:
        if fam in r["ended"]:
            print(f"{fam:<10}" + "".join(f"{r['ended'][fam][x]:>9,}" for x in stages))
    print()
    print(f"other exceptions (must be 0): {sum(v[0] for v in unexpected.values()):,} in {len(unexpected)} kinds")
    print(f"class patches (must be 0): {len(patches):,}")
    sl = r["slowest"]
    print(f"slowest case: {sl[0] * 1000:.0f} ms (seed {sl[1]}: {sl[2]})" + ("  <- SLOW" if sl[0] >= SLOW else ""))
    lg = r["largest"]
    if lg:
        top = max(lg.items(), key=lambda kv: kv[1][0])
        print(f"max tracemalloc peak per case (1 case in {trace_every} traced): {top[1][0] / 1e6:.1f} MB in "
              f"{top[0]} (seed {top[1][1]}, a file of {top[1][2]:,} bytes); by stage: " + ", ".join(
                  f"{st} {v[0] / 1e6:.1f} MB" for st, v in lg.items()))
    for st, (n, s, peak, size, fam) in r["over"].items():
        print(f"  OVER-ALLOCATION in {st}: {n:,} traced cases above {OVER_ALLOCATION >> 20} MB; first seed {s} "
              f"({fam}): {peak / 1e6:.0f} MB for a file of {size:,} bytes")
    print(f"process max RSS: {_rss_mb():.0f} MB")
    if patches:
        print(f"\nclass patches (critical; undone after each case), {len(patches)} cases; first ones:")
        kinds = collections.OrderedDict()
        for s, fam, name, ops, changed in patches:
            kinds.setdefault(tuple(changed), (s, fam, name, ops, 0))
            kinds[tuple(changed)] = kinds[tuple(changed)][:4] + (kinds[tuple(changed)][4] + 1,)
        for changed, (s, fam, name, ops, n) in list(kinds.items())[:15]:
            print(f"  {n:>5,} x {'; '.join(changed)}  first seed {s} ({fam} {ops} of {name})")
    if unexpected:
        print(f"\n{len(unexpected)} kinds of unexpected exception (replay with --replay SEED):")
        for (stage, name, where), (n, s, fam, fname, ops, msg) in sorted(unexpected.items(), key=lambda kv: -kv[1][0]):
            print(f"  {n:>6,} x {name} in {stage} at {where}; first seed {s} ({fam} {ops} of {fname}): {msg}")
    else:
        print("no unexpected exception")
    return bool(unexpected or patches or r["over"] or sl[0] >= SLOW)


def replay(seed_value: int, corpus: list, scratch: Path, guard: ClassGuard, dump: Optional[str]) -> int:
    family, seed, ops, raw, load = make_case(seed_value, corpus)
    print(f"seed {seed_value}: {family} {ops} of {seed.name} ({len(raw):,} bytes), load={load}")
    if dump:
        Path(dump).write_bytes(raw)
        print(f"mutated file written to {dump}")
    stages: dict = {}
    tracemalloc.start()
    out = oracle(raw, seed, family, True, scratch, trace=stages)
    tracemalloc.stop()
    print(f"outcome: {out.result} (stage {out.stage}; loaded={out.loaded}, ran={out.ran}); traced peaks: "
          + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in stages.items() if k))
    if out.exc is not None:
        traceback.print_exception(type(out.exc), out.exc, out.exc.__traceback__)
    changed = guard.changes()
    if changed:
        print("CLASS PATCHED: " + "; ".join(changed))
        guard.restore()
    return 1 if out.result == "UNEXPECTED" or changed else 0


# =================================================================================== hostile inputs


@dataclass
class Hostile:
    label: str
    argv: list
    expect: tuple = (2,)  # acceptable exit codes
    env: dict = field(default_factory=dict)
    quick: bool = False  # part of the --quick subset


LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"maxrss_kb": ru.ru_maxrss, "status": status}, fh)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def _child(argv: list, env_extra: dict, cap: int = CHILD_CAP, timeout: float = CHILD_TIMEOUT):
    """Run ``python -m explorer ARGV``; (exit code or 'killed ...', stdout, stderr, peak RSS MB, seconds).

    The child is started by a small launcher process that reports its ``wait4`` rusage: a child forked
    straight from this (large) process would inherit this process's RSS as its starting ``ru_maxrss``."""
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env_extra.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as report:
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, report.name, str(PYTHON), "-m", "explorer",
                              *argv], stdout=out, stderr=err, cwd=str(ROOT), env=env, start_new_session=True)
        killed = None
        while p.poll() is None:
            if killed is None:
                rss = 0
                try:
                    with open(f"/proc/{p.pid}/task/{p.pid}/children") as fh:
                        kids = fh.read().split()
                    for kid in kids:
                        with open(f"/proc/{kid}/status") as fh:
                            rss += next((int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmRSS:")), 0)
                except (OSError, ValueError):
                    pass
                if rss > cap:
                    killed = f"killed at {rss >> 20} MB RSS"
                elif time.perf_counter() - t > timeout:
                    killed = f"killed after {timeout:.0f} s"
                if killed:
                    os.killpg(p.pid, 9)  # the launcher's own session: it and the child it started
            time.sleep(0.02)
        seconds = time.perf_counter() - t
        try:
            rep = json.load(report)
            peak = rep["maxrss_kb"] / 1024
        except (OSError, ValueError, KeyError):
            peak = float("nan")
        out.seek(0)
        err.seek(0)
        code = killed or p.returncode
        return code, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"), peak, seconds


def _idx_header(code: int, dims: tuple) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def build_hostile(tmp: Path, corpus: list, quick: bool) -> list:
    """The hostile inputs (files written to ``tmp``)."""
    import numpy as np

    plan_head = '{"format": "compression-explorer-plan", "version": 1, '
    cases = [Hostile("evaluate --plan /dev/zero", ["evaluate", "digits-mlp", "--plan", "/dev/zero"], quick=True)]

    deep = tmp / "deep.plan.json"
    deep.write_text(plan_head + '"default": {"prune": ' + "[" * 10_000 + "]" * 10_000 + "}}")
    cases.append(Hostile("plan nested 10,000 deep", ["evaluate", "digits-mlp", "--plan", str(deep)], quick=True))

    longint = tmp / "longint.plan.json"
    longint.write_text(plan_head + '"default": {"prune": {"amount": ' + "7" * 5000 + "}}}")
    cases.append(Hostile("plan amount of 5,000 digits", ["evaluate", "digits-mlp", "--plan", str(longint)],
                         quick=True))

    negseed = tmp / "negseed.plan.json"
    negseed.write_text(plan_head + '"default": {"quantize": {"bits": 4, "method": "kmeans", "init": "forgy", '
                                   '"seed": -1}}}')
    cases.append(Hostile("kmeans forgy seed -1", ["evaluate", "digits-mlp", "--plan", str(negseed), "--limit", "10"],
                         expect=(0, 2), quick=True))

    rank = tmp / "rank.plan.json"
    rank.write_text(plan_head + '"default": {"lowrank": {"rank": 1000000000, "method": "svd"}}}')
    cases.append(Hostile("lowrank rank 1e9", ["evaluate", "digits-mlp", "--plan", str(rank), "--limit", "10"],
                         expect=(0, 2), quick=True))

    big = tmp / "big.plan.json"
    with open(big, "w") as fh:
        fh.write(plan_head + '"description": "')
        chunk = "x" * (1 << 20)
        for _ in range(50):
            fh.write(chunk)
        fh.write('", "default": {"prune": {"amount": 0.5}}}')
    cases.append(Hostile("plan of 50 MB", ["evaluate", "digits-mlp", "--plan", str(big), "--limit", "10"],
                         expect=(0, 2)))

    n_bomb = (256 << 20) // 64  # 4,194,304 8x8 uint8 images = 256 MiB
    if not quick:
        gz = tmp / "bomb-images-idx3-ubyte.gz"
        with gzip.open(gz, "wb", compresslevel=9) as fh:
            fh.write(_idx_header(0x08, (n_bomb, 8, 8)))
            zero = bytes(1 << 20)
            for _ in range(256):
                fh.write(zero)
        with gzip.open(tmp / "bomb-labels-idx1-ubyte.gz", "wb", compresslevel=9) as fh:
            fh.write(_idx_header(0x08, (n_bomb,)))
            fh.write(bytes(n_bomb))
        cases.append(Hostile(f"--data gzipped IDX bomb ({gz.stat().st_size >> 10} kB -> 256 MB)",
                             ["evaluate", "digits-cnn", "--data", str(gz), "--limit", "10"], expect=(0, 2)))
        npz = tmp / "bomb.npz"
        np.savez_compressed(npz, x=np.zeros((n_bomb, 1, 8, 8), np.uint8))
        cases.append(Hostile(f"--data .npz bomb ({npz.stat().st_size >> 10} kB -> 256 MB)",
                             ["evaluate", "digits-cnn", "--data", str(npz), "--limit", "10"], expect=(0, 2)))
    npy = tmp / "lying.npy"
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 64), }"
    header += " " * (118 - len(header)) + "\n"
    npy.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(4096))
    cases.append(Hostile(".npy header (1e9, 64) float32, 4 kB of data",
                         ["evaluate", "digits-cnn", "--data", str(npy), "--limit", "10"], quick=True))
    idx = tmp / "lying-images-idx3-ubyte"
    idx.write_bytes(_idx_header(0x08, (1_000_000_000, 8, 8)) + bytes(640))
    cases.append(Hostile("IDX header 1e9 x 8 x 8, 640 B of data",
                         ["evaluate", "digits-cnn", "--data", str(idx), "--limit", "10"]))
    idxgz = tmp / "lying2-images-idx3-ubyte.gz"
    with gzip.open(idxgz, "wb") as fh:
        fh.write(_idx_header(0x0D, (4_000_000_000, 4_000_000_000, 8)) + bytes(640))
    cases.append(Hostile("gzipped IDX header 4e9 x 4e9 x 8 float32",
                         ["evaluate", "digits-cnn", "--data", str(idxgz), "--limit", "10"]))
    idx4 = tmp / "lying3-images-idx3-ubyte"
    idx4.write_bytes(_idx_header(0x08, (0, 8, 8)))
    cases.append(Hostile("IDX of 0 images", ["evaluate", "digits-cnn", "--data", str(idx4), "--limit", "10"],
                         expect=(0, 2)))

    # mutated .cexp files through the verbs
    by_name = {s.name: s for s in corpus}

    def mutated(seed_name: str, edit, label: str, verb: str = "info", expect=(0, 2), extra=(), quick=False):
        seed = by_name[seed_name]
        parts = split(seed.raw)
        edit(parts.manifest, parts)
        path = tmp / (label.replace(" ", "_").replace("/", "_")[:60] + ".cexp")
        path.write_bytes(seal(parts))
        env = {"PYTHONPATH": str(tmp.parent / "models")}
        argv = [verb, str(path), *extra]
        if verb == "evaluate" and seed.factory:
            argv += ["--factory", seed.factory]
        cases.append(Hostile(f"{verb} {' '.join(extra)} {label}".replace("  ", " "), argv, expect=expect, env=env,
                             quick=quick))

    def first_codes(m):
        return next(e for e in m["tensors"] if e.get("encoding", {}).get("values") == "codes")

    mutated("mlp-kmeans-gaps", lambda m, p: first_codes(m)["encoding"].update(index=7), "encoding.index = 7",
            quick=True)
    mutated("mlp-kmeans-gaps", lambda m, p: first_codes(m)["encoding"].update(index=7), "encoding.index = 7",
            extra=("--json",))
    mutated("cnn-sample-plan", lambda m, p: m["accounting"].pop("dense_bits"), "no accounting.dense_bits")
    mutated("cnn-sample-plan", lambda m, p: m.pop("accounting"), "no accounting")
    mutated("cnn-sample-plan", lambda m, p: m.update(architecture="factory"), "architecture is a string")
    mutated("cnn-sample-plan", lambda m, p: m.pop("architecture"), "no architecture")
    mutated("cnn-sample-plan", lambda m, p: m["tensors"][0].update(encoding=[]), "encoding is a list")
    mutated("cnn-sample-plan", lambda m, p: m["tensors"][0].update(shape="20x1x3x3"), "shape is a string")
    mutated("mlp-kmeans-gaps", lambda m, p: m["accounting"].update(dense_bits=float("nan")), "dense_bits NaN")
    mutated("mlp-kmeans-gaps", lambda m, p: m["accounting"].update(dense_bits=0), "dense_bits 0")
    mutated("mlp-kmeans-gaps", lambda m, p: m.update(plan=7), "plan = 7")
    mutated("mlp-kmeans-gaps", lambda m, p: m.pop("tensors"), "no tensors", expect=(2,))
    mutated("cnn-sample-plan", lambda m, p: m["edits"]["replace"].update(
        {"conv1.__class__.forward": [{"type": "Linear", "in_features": 1, "out_features": 1, "bias": False}]}),
        "replace conv1.__class__.forward", verb="evaluate", expect=(2,), quick=True)
    mutated("cnn-sample-plan", lambda m, p: m["edits"]["replace"].update(
        {"__class__.__base__.__call__": [{"type": "Linear", "in_features": 1, "out_features": 1, "bias": False}]}),
        "replace __class__.__base__.__call__", verb="evaluate", expect=(2,))
    mutated("cnn-sample-plan", lambda m, p: next(e for e in m["tensors"] if e["name"] == "fc2.weight").update(
        shape=[500, 10]), "fc2.weight shape transposed", verb="evaluate", expect=(2,))
    mutated("cnn-sample-plan", lambda m, p: m["edits"]["resize"].update({"conv2": {"groups": 2}}),
            "resize conv2 groups=2", verb="evaluate", expect=(2,))
    mutated("tied-embedding-factory", lambda m, p: m["edits"]["replace"].update(
        {"training": [{"type": "Linear", "in_features": 1, "out_features": 1, "bias": False}]}),
        "replace training", verb="evaluate", expect=(2,))

    def scales(value):
        def edit(m, p):
            for e in m["tensors"]:
                q = e.get("encoding", {}).get("quant") or {}
                for key in ("scales", "codebook"):
                    if isinstance(q.get(key), int):
                        p.streams[q[key]] = struct.pack("<f", value) * (len(p.streams[q[key]]) // 4)
        return edit

    mutated("mlp-uniform-sym-pertensor", scales(3e38), "uniform scales 3e38 (overflow)", verb="evaluate",
            expect=(0, 2))
    mutated("mlp-kmeans-gaps", scales(float("nan")), "codebooks of NaN", verb="evaluate", expect=(0, 2))

    cases.append(Hostile("gui --screenshot of a missing model",
                         ["gui", str(tmp / "missing-model.pt"), "--screenshot", str(tmp / "x.png")],
                         env={"QT_QPA_PLATFORM": "offscreen"}, quick=True))
    return [c for c in cases if c.quick] if quick else cases


def run_hostile(tmp: Path, corpus: list, quick: bool) -> bool:
    print("\nhostile inputs (each in a fresh `python -m explorer` process):", flush=True)
    cases = build_hostile(tmp, corpus, quick)
    rows, bad = [], 0
    for h in cases:
        code, out, err, rss, secs = _child(h.argv, h.env)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        problems = []
        if code not in h.expect:
            problems.append(f"exit {code}, expected {'/'.join(map(str, h.expect))}")
        if code == 2 and not (len(lines) == 1 and lines[0].startswith("error: ")):
            problems.append(f"{len(lines)} stderr lines")
        if code == 0 and lines:
            problems.append(f"{len(lines)} stderr lines on success")
        if any("Traceback" in ln for ln in lines):
            problems.append("traceback")
        if any("Warning" in ln for ln in lines):
            problems.append("warning on stderr")
        if rss > RSS_LIMIT_MB:
            problems.append(f"peak RSS {rss:.0f} MB > {RSS_LIMIT_MB}")
        bad += bool(problems)
        first = lines[0] if lines else (out.splitlines()[0] if out.strip() else "")
        first = first.replace(str(tmp) + "/", "")
        rows.append((h.label, str(code), first[:100], f"{rss:,.0f}", f"{secs:.1f}", "; ".join(problems) or "ok"))
        print(f"  {h.label}: exit {code}, {rss:,.0f} MB, {secs:.1f} s" + (f"  <- {'; '.join(problems)}" if problems
                                                                          else ""), flush=True)
    head = ("input", "exit", "first line of stderr (of stdout if none)", "peak RSS MB", "s", "verdict")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(6)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) if i in (0, 2, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print(f"{len(rows)} hostile inputs, {bad} not handled cleanly (paths relative to {tmp})")
    return bad > 0


# =============================================================================================== main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", nargs="?", type=int, default=20_000, help="fuzz cases (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="case i draws from random.Random(seed + i)")
    p.add_argument("--seconds", type=float, default=None, help="stop the fuzzing after this long")
    p.add_argument("--replay", type=int, default=None, help="run the case of this seed alone, with tracebacks")
    p.add_argument("--dump", default=None, help="with --replay: write the mutated file here")
    p.add_argument("--quick", action="store_true", help="a ~60 s smoke run: 20 s of cases, 10 hostile inputs")
    p.add_argument("--no-hostile", action="store_true", help="skip the hostile non-.cexp inputs")
    p.add_argument("--hostile-only", action="store_true", help="only the hostile inputs")
    p.add_argument("--trace-every", type=int, default=1, help="trace allocations in 1 case of K (default 1: all)")
    p.add_argument("--info-every", type=int, default=1, help="render `info` in-process in 1 case of K (default 1)")
    args = p.parse_args(argv)
    if args.quick and args.seconds is None:
        args.seconds = 20.0

    warnings.simplefilter("ignore")
    faulthandler.enable()
    scratch = Path(tempfile.mkdtemp(prefix="fuzz-probe-"))
    models_dir = scratch / "models"
    models_dir.mkdir()
    (models_dir / f"{MODELS_MODULE}.py").write_text(MODELS_SRC)
    sys.path.insert(0, str(models_dir))
    work = scratch / "work"
    work.mkdir()
    try:
        import torch

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        corpus = build_corpus(scratch)
        print(f"corpus: {len(corpus)} seed files built in {time.perf_counter() - t0:.1f} s")
        for s in corpus:
            print(f"  {s.name:<38} {len(s.raw):>8,} B  {s.build_s:5.1f} s" + (f"  (factory {s.factory})"
                                                                             if s.factory else ""))
        got = set()
        for s in corpus:
            got |= coverage(split(s.raw).manifest)
        missing = [f for f in REQUIRED if f not in got]
        print(f"coverage: {len(REQUIRED) - len(missing)}/{len(REQUIRED)}: {', '.join(f for f in REQUIRED if f in got)}"
              + (f"; MISSING: {', '.join(missing)}" if missing else ""))
        # every intact seed must pass the oracle, loading and running
        for s in corpus:
            out = oracle(s.raw, s, "seed", True, work)
            if out.result != "ok" or not out.ran:
                print(f"  seed {s.name} does not pass the oracle: {out.result} in {out.stage}: {out.exc!r}")
                missing.append(f"seed {s.name} broken")
        guard = ClassGuard()
        if args.replay is not None:
            return replay(args.replay, corpus, work, guard, args.dump)
        failed = bool(missing)
        if not args.hostile_only:
            r = run_fuzz(args, corpus, work, guard)
            failed |= print_fuzz(args, r, args.trace_every)
            print(f"named identities after the run: " + ", ".join(
                f"{k} {'same' if eval_named(k) is v else 'CHANGED'}" for k, v in guard.named.items()))
        if not args.no_hostile:
            hostile_dir = scratch / "hostile"
            hostile_dir.mkdir()
            failed |= run_hostile(hostile_dir, corpus, args.quick)
        return 1 if failed else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def eval_named(key: str):
    from torch import nn

    cls_name, attr = key.split(".")[1:]
    return getattr(getattr(nn, cls_name), attr)


if __name__ == "__main__":
    raise SystemExit(main())
