"""The manifest of a ``.cexp`` file: its schema, checked once and completely when the file is read.

:func:`check` is the reader's only gate between the file's JSON and everything that uses it (``info``,
``evaluate``, ``load``): every key that is read is there, of its type and in its range; every stream it
names exists; every module path in ``edits`` is a plain dotted name (whether it names a submodule of the
rebuilt architecture is checked when the architecture is rebuilt, by :mod:`explorer.engine.storage.fileformat`);
every module spec can be built without torch refusing it. Unknown keys are ignored (a newer minor
version may add some). Any violation is one :class:`~explorer.engine.errors.FormatError` naming the place,
e.g. ``tensors[3] 'fc1.weight': encoding.index must be an object, got int``.

What the file's bytes hold (stream lengths against encodings, code tables, codes against codebooks) is
checked by the decoders, which may rely on the types checked here.
"""

from __future__ import annotations

import math
import re
from typing import Any

from explorer.engine.errors import FormatError, PlanError
from explorer.engine.methods.quantizers import QUANTIZERS
from explorer.engine.plan import Plan
from explorer.engine.storage.coders import CODERS

FORMAT_NAME = "compression-explorer-model"
#: the dtypes a file may name: torch's names (:mod:`.dtypes` maps them to torch dtypes)
DTYPE_NAMES = ("float32", "float16", "float64", "bfloat16", "int64", "int32", "uint8", "bool")
DTYPE_BYTES = {"float32": 4, "float16": 2, "float64": 8, "bfloat16": 2, "int64": 8, "int32": 4, "uint8": 1, "bool": 1}
FLOAT_DTYPES = ("float32", "float16", "float64", "bfloat16")
#: the architecture of a file made from a Hugging Face folder (its config in the manifest): ``info`` names it
HF_FACTORY = "explorer.engine.model.hf:rebuild"
WEIGHT_STORAGES = ("dense", "bitmask", "gaps")
#: what a structurally pruned module may have resized, by module type (``edits.resize``)
RESIZE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
                "num_embeddings", "embedding_dim")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: the module types of a factor chain (``edits.replace``): torch's, and the tensor-train and circulant layers of
#: :mod:`explorer.engine.modules`
FACTOR_TYPES = ("Linear", "Conv1d", "Conv2d", "Embedding", "TTCore", "BlockCirculant")
FACTORY_REF = re.compile(r"[A-Za-z]\w*(\.[A-Za-z]\w*)*:[A-Za-z]\w*(\.[A-Za-z]\w*)*")
#: a module path: dotted names of letters, digits and underscores, no part a dunder (``__class__``)
#: a submodule's name as ``named_modules()`` gives it: dot-separated parts of printable ASCII (an imported
#: ONNX graph names its modules ``conv1/Conv``), none starting with ``__``; it is only ever looked up among the
#: rebuilt model's ``named_modules()``, never followed as attributes
MODULE_PATH = re.compile(r"(?!__)[!-\-/-~]+(\.(?!__)[!-\-/-~]+)*", re.ASCII)
MAX_DIM = 1 << 40
MAX_WIDTH = 1 << 31  # channels, features, embedding sizes, kernel sizes
MAX_TENSORS = 1_000_000
MAX_EDITS = 100_000
MAX_CHAIN = 8  # modules in one low-rank factor chain (CP has 4)
MAX_NAME = 1000


def check(manifest: Any, nstreams: int, file_bytes: int, max_decoded: int) -> dict:
    """Validate ``manifest`` (parsed JSON) for a file of ``file_bytes`` bytes and ``nstreams`` streams whose
    tensors may declare at most ``max_decoded`` bytes once decoded (8 per value: a lying shape cannot make
    the reader allocate without bound). Returns, per stored tensor, the streams its encoding uses (what
    ``info`` counts as its bytes: only streams the schema read, never a key it ignores)."""
    m = _obj(manifest, "the manifest")
    _need(m.get("format") == FORMAT_NAME, "the manifest does not describe a compressed model")
    checker = _Check(nstreams, file_bytes, max_decoded)
    checker.manifest(m)
    return checker.used


def tensor_numel(entry: dict) -> int:
    return math.prod(entry["shape"])


# ============================================================================================ primitives


def _need(cond, msg: str) -> None:
    if not cond:
        raise FormatError(msg)


def _kind(v) -> str:
    return "null" if v is None else "bool" if isinstance(v, bool) else type(v).__name__


def _obj(v, where: str) -> dict:
    _need(isinstance(v, dict), f"{where} must be an object, got {_kind(v)}")
    return v


def _list(v, where: str, lo: int = 0, hi: int = MAX_TENSORS) -> list:
    _need(isinstance(v, list), f"{where} must be a list, got {_kind(v)}")
    _need(lo <= len(v) <= hi, f"{where} must have {lo}..{hi} items, has {len(v):,}")
    return v


def _int(v, where: str, lo: int = 0, hi: int = 1 << 62) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool), f"{where} must be an integer, got {_kind(v)}")
    _need(lo <= v <= hi, f"{where} must be in {lo}..{hi}, got {v}")
    return v


def _bool(v, where: str) -> bool:
    _need(isinstance(v, bool), f"{where} must be true or false, got {_kind(v)}")
    return v


def _str(v, where: str, choices=None, maxlen: int = MAX_NAME) -> str:
    _need(isinstance(v, str), f"{where} must be a string, got {_kind(v)}")
    _need(len(v) <= maxlen, f"{where} is longer than {maxlen} characters")
    if choices is not None:
        _need(v in choices, f"{where} must be one of {', '.join(choices)}, got {v[:40]!r}")
    return v


def _has(d: dict, key: str, where: str):
    _need(key in d, f"{where} has no '{key}'")
    return d[key]


# ============================================================================================ the schema


class _Check:
    def __init__(self, nstreams: int, file_bytes: int, max_decoded: int):
        self.nstreams, self.file_bytes, self.max_decoded = nstreams, file_bytes, max_decoded
        self.used: dict = {}  # tensor name -> the streams its encoding names
        self._streams: list = []  # where stream() records, while one tensor is checked

    def stream(self, v, where: str) -> int:
        _need(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < self.nstreams,
              f"{where} names stream {v!r}, which the file does not have (it has {self.nstreams})")
        self._streams.append(v)
        return v

    # ------------------------------------------------------------------------------ top level
    def manifest(self, m: dict) -> None:
        version = _list(_has(m, "version", "the manifest"), "version", 2, 2)
        for i, part in enumerate(version):
            _int(part, f"version[{i}]", 0, 65535)
        _str(_has(m, "producer", "the manifest"), "producer", maxlen=200)
        self.architecture(_obj(_has(m, "architecture", "the manifest"), "architecture"))
        self.edits(_obj(m.get("edits", {}), "edits"))
        plan = _has(m, "plan", "the manifest")
        if plan is not None:
            try:
                Plan.from_dict(_obj(plan, "plan"))
            except PlanError as exc:
                raise FormatError(f"the plan it records is invalid: {exc}") from None
        accounting = _obj(_has(m, "accounting", "the manifest"), "accounting")
        for key in ("dense_bits", "coded_bits"):
            _int(_has(accounting, key, "accounting"), f"accounting.{key}")
        self.tensors(_list(_has(m, "tensors", "the manifest"), "tensors"))

    def architecture(self, a: dict) -> None:
        kind = _str(_has(a, "kind", "architecture"), "architecture.kind", ("factory", "torchscript"))
        if kind == "factory":
            ref = _str(_has(a, "factory", "architecture"), "architecture.factory", maxlen=200)
            _need(FACTORY_REF.fullmatch(ref) is not None,
                  f"architecture.factory {ref[:80]!r} is not a factory reference 'package.module:callable'")
            _obj(a.get("kwargs", {}), "architecture.kwargs")
            if "sample" in a:
                _str(a["sample"], "architecture.sample", maxlen=200)
        else:
            self.stream(_has(a, "stream", "architecture"), "architecture.stream")

    # ------------------------------------------------------------------------------ edits
    def edits(self, e: dict) -> None:
        for section in ("resize", "replace"):
            items = _obj(e.get(section, {}), f"edits.{section}")
            _need(len(items) <= MAX_EDITS, f"edits.{section} has {len(items):,} entries (at most {MAX_EDITS:,})")
            for path, value in items.items():
                where = f"edits.{section} {path[:80]!r}"
                _need(MODULE_PATH.fullmatch(path) is not None and len(path) <= MAX_NAME,
                      f"{where}: not a module path (dot-separated names of printable characters, no '__' "
                      "names)")
                if section == "resize":
                    self.resize(_obj(value, where), where)
                else:
                    specs = [module_spec(_obj(spec, f"{where}[{i}]"), f"{where}[{i}]")
                             for i, spec in enumerate(_list(value, where, 1, MAX_CHAIN))]
                    self.chain(specs, where)
        replaced = sorted(e.get("replace", {}))
        for outer, inner in zip(replaced, replaced[1:]):
            _need(not inner.startswith(outer + "."), f"edits.replace: {inner!r} lies inside {outer!r}, which "
                                                      "is replaced too")

    def chain(self, specs: list, where: str) -> None:
        """A factor chain must compose (each factor's output width the next one's input width), and no
        factor's width may exceed what the file's decoded budget holds: a tensor-train core's width is not its
        weight's size (its prefix and suffix multiply it), so a small file could otherwise ask the load-time
        forward pass for gigabytes."""
        widths = [_widths(s) for s in specs]
        for i in range(len(widths) - 1):
            out, nxt = widths[i][1], widths[i + 1][0]
            if nxt is not None and out != nxt:
                raise FormatError(f"{where}[{i + 1}]: takes {nxt:,} inputs, but [{i}] gives {out:,}")
        for i, (cin, cout) in enumerate(widths):
            for w in (cin, cout):
                if w is not None and 4 * w > self.max_decoded:
                    raise FormatError(f"{where}[{i}]: a width of {w:,} is more than a file of {self.file_bytes:,} "
                                      f"bytes can run (limit {self.max_decoded // 4:,})")

    def resize(self, attrs: dict, where: str) -> None:
        _need(attrs, f"{where}: nothing to resize")
        for a, v in attrs.items():
            _need(a in RESIZE_ATTRS or a == "normalized_shape", f"{where}: attribute {a[:40]!r} may not be set")
            if a == "normalized_shape":
                for i, d in enumerate(_list(v, f"{where}.normalized_shape", 1, 8)):
                    _int(d, f"{where}.normalized_shape[{i}]", 1, MAX_WIDTH)
            else:
                _int(v, f"{where}.{a}", 1, MAX_WIDTH)

    # ------------------------------------------------------------------------------ tensors
    def tensors(self, tensors: list) -> None:
        names: dict = {}
        total = 0
        for i, e in enumerate(tensors):
            _obj(e, f"tensors[{i}]")
            name = _str(_has(e, "name", f"tensors[{i}]"), f"tensors[{i}].name")
            where = f"tensor {name[:80]!r}"
            _need(name not in names, f"{where} is listed twice")
            names[name] = e
            for j, d in enumerate(_list(_has(e, "shape", where), f"{where}: shape", 0, 8)):
                _int(d, f"{where}: shape[{j}]", 0, MAX_DIM)
            _str(_has(e, "dtype", where), f"{where}: dtype", DTYPE_NAMES)
            total += tensor_numel(e) * 8
        _need(total <= self.max_decoded, f"the tensors declare {total:,} bytes once decoded, more than a file of "
                                         f"{self.file_bytes:,} bytes can hold (limit {self.max_decoded:,})")
        for name, e in names.items():
            where = f"tensor {name[:80]!r}"
            if "alias" in e:
                _str(e["alias"], f"{where}: alias")
                _need("encoding" not in e, f"{where} is an alias and has an encoding")
            else:
                self._streams = []
                self.encoding(_obj(_has(e, "encoding", where), f"{where}: encoding"), e, where)
                self.used[name] = tuple(self._streams)
        for name, e in names.items():
            if "alias" in e:
                target = names.get(e["alias"])
                _need(target is not None and "alias" not in target,
                      f"tensor {name[:80]!r}: alias of {e['alias'][:80]!r}, which is not a stored tensor")
                _need(target["shape"] == e["shape"] and target["dtype"] == e["dtype"],
                      f"tensor {name[:80]!r}: alias of {e['alias'][:80]!r} with another shape or dtype")

    def encoding(self, enc: dict, e: dict, where: str) -> None:
        storage = _str(_has(enc, "storage", f"{where}: encoding"), f"{where}: encoding.storage",
                       ("raw",) + WEIGHT_STORAGES)
        if storage == "raw":
            _str(_has(enc, "stored_dtype", f"{where}: encoding"), f"{where}: encoding.stored_dtype", DTYPE_NAMES)
            self.stream(_has(enc, "stream", f"{where}: encoding"), f"{where}: encoding.stream")
            return
        _need(e["dtype"] in FLOAT_DTYPES, f"{where}: a compressed weight must be floating point, not {e['dtype']}")
        n = tensor_numel(e)
        w = f"{where}: encoding"
        # every entry, fillers included, advances the position by at least one: never more entries than weights
        entries = _int(_has(enc, "entries", w), f"{w}.entries", 0, n)
        if storage == "dense":
            _need(entries == n, f"{where}: dense storage with {entries} entries for {n} weights")
        elif storage == "bitmask":
            self.stream(_has(enc, "mask", w), f"{w}.mask")
        else:
            b = _int(_has(enc, "gap_bits", w), f"{w}.gap_bits", 1, 16)
            self.coded(_obj(_has(enc, "gaps", w), f"{w}.gaps"), f"{w}.gaps", b, 2 ** b)
        values = _str(_has(enc, "values", w), f"{w}.values", ("float", "codes"))
        if values == "float":
            self.stream(_has(enc, "floats", w), f"{w}.floats")
            return
        q = self.quant(_obj(_has(enc, "quant", w), f"{w}.quant"), f"{w}.quant", n)
        self.coded(_obj(_has(enc, "index", w), f"{w}.index"), f"{w}.index", q["bits"],
                   QUANTIZERS[q["method"]].alphabet(q["bits"]))

    def coded(self, s: dict, where: str, width: int, alphabet_size: int) -> None:
        coding = _str(_has(s, "coding", where), f"{where}.coding", ("raw", *CODERS))
        if coding == "raw":
            got = _int(_has(s, "width", where), f"{where}.width", 0, 32)
            _need(got == width, f"{where}: raw codes of {got} bits where {width} are stored")
        else:
            got = _int(_has(s, "alphabet", where), f"{where}.alphabet", 1, 65536)
            _need(got == alphabet_size, f"{where}: a {coding} alphabet of {got} symbols where there are {alphabet_size}")
        self.stream(_has(s, "stream", where), f"{where}.stream")

    def quant(self, q: dict, where: str, n: int) -> dict:
        method = _str(_has(q, "method", where), f"{where}.method", tuple(QUANTIZERS))
        quantizer = QUANTIZERS[method]
        fixed = quantizer.code_bits
        bits = _int(_has(q, "bits", where), f"{where}.bits", 1, fixed or 8)
        _need(fixed is None or bits == fixed, f"{where}: {method} codes have {fixed} bits, not {bits}")
        quantizer.check_table(q, _TableCheck(self, where), n)
        return q


class _TableCheck:
    """The validators a quantizer's ``check_table`` gets for its fields of ``q`` (messages name the place)."""

    def __init__(self, checker: _Check, where: str):
        self._checker, self._where = checker, where

    def int(self, q: dict, key: str, lo: int = 0, hi: int = 1 << 62) -> int:
        return _int(_has(q, key, self._where), f"{self._where}.{key}", lo, hi)

    def bool(self, q: dict, key: str) -> bool:
        return _bool(_has(q, key, self._where), f"{self._where}.{key}")

    def stream(self, q: dict, key: str) -> int:
        return self._checker.stream(_has(q, key, self._where), f"{self._where}.{key}")

    def need(self, cond, message: str) -> None:
        _need(cond, f"{self._where}: {message}")


def _widths(spec: dict) -> tuple:
    """(input width, output width) of a checked factor spec: features or channels; an Embedding takes indices
    (None)."""
    kind = spec["type"]
    if kind == "TTCore":
        return (spec["prefix"] * spec["n"] * spec["rank"] * spec["suffix"],
                spec["prefix"] * spec["rank_prev"] * spec["m"] * spec["suffix"])
    if kind in ("Linear", "BlockCirculant"):
        return spec["in_features"], spec["out_features"]
    if kind == "Embedding":
        return None, spec["embedding_dim"]
    return spec["in_channels"], spec["out_channels"]


def module_spec(spec: dict, where: str) -> dict:
    """Check one factor of a low-rank chain so completely that torch builds it without refusing."""
    kind = _str(_has(spec, "type", where), f"{where}.type", FACTOR_TYPES)

    def width(key):
        return _int(_has(spec, key, where), f"{where}.{key}", 1, MAX_WIDTH)

    if kind == "TTCore":
        prefix, n, rank, rank_prev, m, suffix = (width(k) for k in ("prefix", "n", "rank", "rank_prev", "m", "suffix"))
        for what, size in (("inputs", prefix * n * rank * suffix), ("outputs", prefix * rank_prev * m * suffix),
                           ("weights", rank_prev * m * n * rank)):
            _need(size <= MAX_DIM, f"{where}: {size:,} {what}, more than a tensor may hold")
        _bool(_has(spec, "bias", where), f"{where}.bias")
    elif kind == "BlockCirculant":
        cin, cout, block = width("in_features"), width("out_features"), width("block")
        _need(block <= max(cin, cout), f"{where}: block {block:,} is larger than the matrix ({cout:,} x {cin:,})")
        weights = -(-cin // block) * -(-cout // block) * block
        _need(weights <= MAX_DIM, f"{where}: {weights:,} weights, more than a tensor may hold")
        _bool(_has(spec, "bias", where), f"{where}.bias")
    elif kind == "Linear":
        width("in_features"), width("out_features")
        _bool(_has(spec, "bias", where), f"{where}.bias")
    elif kind == "Embedding":
        num = width("num_embeddings")
        width("embedding_dim")
        idx = _has(spec, "padding_idx", where)
        if idx is not None:
            _int(idx, f"{where}.padding_idx", -num, num - 1)
    else:
        dims = 1 if kind == "Conv1d" else 2
        cin, cout, groups = width("in_channels"), width("out_channels"), width("groups")
        _need(cin % groups == 0 and cout % groups == 0, f"{where}: {groups} groups do not divide the channels")
        for key, lo in (("kernel_size", 1), ("stride", 1), ("dilation", 1)):
            for i, d in enumerate(_list(_has(spec, key, where), f"{where}.{key}", dims, dims)):
                _int(d, f"{where}.{key}[{i}]", lo, MAX_WIDTH)
        padding = _has(spec, "padding", where)
        if isinstance(padding, str):
            _str(padding, f"{where}.padding", ("same", "valid"))
            _need(padding == "valid" or all(s == 1 for s in spec["stride"]),
                  f"{where}: padding 'same' needs stride 1")
        else:
            for i, d in enumerate(_list(padding, f"{where}.padding", dims, dims)):
                _int(d, f"{where}.padding[{i}]", 0, MAX_WIDTH)
        _bool(_has(spec, "bias", where), f"{where}.bias")
        _str(_has(spec, "padding_mode", where), f"{where}.padding_mode", PADDING_MODES)
    return spec


__all__ = ["FORMAT_NAME", "DTYPE_NAMES", "FLOAT_DTYPES", "HF_FACTORY", "RESIZE_ATTRS", "check", "module_spec", "tensor_numel"]
