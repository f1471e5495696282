"""Fuzz the readers of everything a user hands over besides ``.cexp`` files: safetensors weights, IDX data
(plain and gzipped), ``.npz`` archives and plan JSON (issue 16).

**Corpus**, built in a scratch directory: a safetensors state_dict of each bundled sample (read back through
``load_model(path, factory=...)``), an MNIST-style IDX pair of 64 8x8 images and its gzipped twin, an ``.npz``
of inputs and labels (and one of inputs only), and the bundled plans.

**Mutations.** Case ``i`` draws from ``random.Random(seed + i)`` a format, a seed file and one to three edits,
by family: ``bytes`` (flips, sets, inserts, deletes, truncations, appends), ``header`` (the format's own
header made to lie: the safetensors header length and its JSON — dtypes, shapes, offsets, enormous values;
IDX magic, dtype code, rank and dimensions up to 2**32-1; an ``.npz`` member's ``.npy`` header — shape,
dtype ``|O`` (pickled objects), fortran order — re-zipped so the archive itself is valid) and, for plans,
``text`` (deep nesting, long integers, NaN/Infinity, huge arrays, wrong types at every key, invalid UTF-8).

**Oracle.** The reader returns, or raises one :class:`~explorer.engine.errors.ExplorerError` (LoadError,
PlanError, FormatError) with a one-line message. Anything else is an unexpected exception, reported with
its seed. A case over 5 s is a hang; a case that lifts the process's peak resident memory by more than
1 GiB is an over-allocation. ``.npz`` never unpickles (a member of dtype ``|O`` must be refused).

    .venv/bin/python benchmarks/fuzz_loaders.py                     # 100000 cases (~10 min on this machine)
    .venv/bin/python benchmarks/fuzz_loaders.py 2000 --seed 7
    .venv/bin/python benchmarks/fuzz_loaders.py --replay 123        # one case again, with its traceback

Exit status 1 when something unexpected was found. tests/engine/test_fuzz_loaders.py runs a few hundred.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import json
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from explorer.engine.errors import ExplorerError  # noqa: E402

HANG_S = 5.0
OVER_BYTES = 1 << 30
FORMATS = ("safetensors", "idx", "idx.gz", "npz", "plan")


# ------------------------------------------------------------------------------------------- corpus


def build_corpus(scratch: Path) -> dict:
    """format -> list of (name, bytes, how to read it)."""
    from safetensors.torch import save as st_save

    from explorer.engine.model.loading import load_model
    from explorer.engine.samples import SAMPLES_DIR, sample_names

    corpus = collections.defaultdict(list)
    for name in sample_names():
        loaded = load_model(name)
        state = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
        corpus["safetensors"].append((name, st_save(state), loaded.factory))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 64, dtype=np.uint8)
    idx3 = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 64, 8, 8) + images.tobytes()
    idx1 = struct.pack(">BBBB", 0, 0, 0x08, 1) + struct.pack(">I", 64) + labels.tobytes()
    corpus["idx"].append(("images", idx3, idx1))
    corpus["idx.gz"].append(("images.gz", gzip.compress(idx3), gzip.compress(idx1)))
    for keys in (("x", "y"), ("x",)):
        buf = io.BytesIO()
        arrays = {"x": rng.random((32, 1, 8, 8), dtype=np.float32), "y": rng.integers(0, 10, 32)}
        np.savez(buf, **{k: arrays[k] for k in keys})
        corpus["npz"].append(("+".join(keys), buf.getvalue(), None))
    for plan in sorted(SAMPLES_DIR.glob("*.plan.json")):
        corpus["plan"].append((plan.name, plan.read_bytes(), None))
    return corpus


# ---------------------------------------------------------------------------------------- mutations


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["flip", "set", "insert", "delete", "truncate", "append"])
        at = rng.randrange(max(len(b), 1))
        if op == "flip" and b:
            b[at] ^= 1 << rng.randrange(8)
        elif op == "set" and b:
            b[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif op == "insert":
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == "delete" and b:
            del b[at:at + rng.randint(1, 64)]
        elif op == "truncate":
            del b[at:]
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
    return bytes(b)


def huge(rng: random.Random):
    return rng.choice([0, -1, 1, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 64, 10 ** 30, 1e300,
                       float("nan"), "12", None, [], {}, True, rng.randrange(1, 10 ** 6)])


def mutate_safetensors(rng: random.Random, data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    for _ in range(rng.randint(1, 3)):
        names = [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]
        if not names:
            break
        k = rng.choice(names)
        op = rng.choice(["dtype", "shape", "offsets", "drop", "junk", "length"])
        if op == "dtype":
            header[k]["dtype"] = rng.choice(["F64", "I64", "BOOL", "U8", "F8_E4M3", "XX", 7, None])
        elif op == "shape":
            header[k]["shape"] = rng.choice([[huge(rng)], [huge(rng), huge(rng)], [], [-1, 3], "1,2",
                                             [2 ** 20, 2 ** 20, 2 ** 20]])
        elif op == "offsets":
            header[k]["data_offsets"] = rng.choice([[0, huge(rng)], [huge(rng), 0], [5, 3], [0], "0-1",
                                                    [0, len(body) + rng.randint(1, 10 ** 9)]])
        elif op == "drop":
            header.pop(k, None)
        elif op == "junk":
            header[k] = rng.choice([None, 1, "x", [], {"dtype": "F32"}])
        else:
            text = json.dumps(header).encode()
            return struct.pack("<Q", rng.choice([0, 1, len(text) + 1, 2 ** 63, len(data)])) + text + body
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def mutate_idx(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.choice(["magic", "dtype", "rank", "dim", "dims", "short"])
    if op == "magic":
        b[0:2] = bytes(rng.randrange(256) for _ in range(2))
    elif op == "dtype":
        b[2] = rng.choice([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF])
    elif op == "rank":
        b[3] = rng.choice([0, 1, 2, 4, 9, 255])
    elif op == "dim":
        at = 4 + 4 * rng.randrange(max(b[3], 1))
        b[at:at + 4] = struct.pack(">I", rng.choice([0, 1, 2 ** 31, 2 ** 32 - 1, rng.randrange(2 ** 20)]))
    elif op == "dims":
        for i in range(b[3]):
            b[4 + 4 * i:8 + 4 * i] = struct.pack(">I", rng.choice([65536, 2 ** 24, 2 ** 32 - 1]))
    else:
        del b[rng.randrange(4, len(b)):]
    return bytes(b)


def mutate_npz(rng: random.Random, data: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    members = {n: src.read(n) for n in src.namelist()}
    name = rng.choice(list(members))
    npy = members[name]
    hlen = struct.unpack("<H", npy[8:10])[0]
    header, payload = npy[10:10 + hlen].decode("latin1"), npy[10 + hlen:]
    op = rng.choice(["shape", "dtype", "order", "payload", "pickle", "name", "header"])
    if op == "shape":
        header = header.replace(header[header.index("'shape'"):header.index(")", header.index("'shape'")) + 1],
                                f"'shape': ({huge(rng) if rng.random() < 0.5 else 2 ** 40}, 1, 8, 8)")
    elif op == "dtype":
        header = header.replace(header[header.index("'descr'"):header.index(",", header.index("'descr'"))],
                                f"'descr': '{rng.choice(['|O', '<U3', '<c16', '|V8', 'bogus', '<f2', '>i8'])}'")
    elif op == "order":
        header = header.replace("False", "True")
    elif op == "payload":
        payload = payload[:rng.randrange(len(payload) + 1)]
    elif op == "pickle":  # a member that only unpickling could read
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        members[name] = buf.getvalue()
    elif op == "name":
        members[rng.choice(["x.npy", "../x.npy", "y.npy", "z.npy"])] = members.pop(name)
    else:
        header = rng.choice(["{", "{'descr': '<f4'}", "x" * 100, header[:-5]])
    if op not in ("pickle", "name"):
        text = header.encode("latin1")
        members[name] = npy[:8] + struct.pack("<H", len(text)) + text + payload
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, v in members.items():
            z.writestr(n, v)
    return out.getvalue()


def mutate_plan(rng: random.Random, data: bytes) -> bytes:
    op = rng.choice(["deep", "int", "nan", "array", "types", "utf8", "keys"])
    if op == "deep":
        n = rng.choice([70, 1000, 100_000])
        return b'{"layers": ' + b"[" * n + b"]" * n + b"}"
    if op == "int":
        return data.replace(b"0.", b"9" * rng.choice([30, 5000]) + b".", 1)
    if op == "nan":
        return data.replace(b"0.", rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"]) + b"*", 1).replace(
            b"*", b"", 1)
    if op == "array":
        return b'{"layers": {' + b",".join(b'"l%d": {}' % i for i in range(rng.choice([10_001, 50_000]))) + b"}}"
    if op == "utf8":
        return data[:rng.randrange(len(data))] + b"\xff\xfe\x80" + data[rng.randrange(len(data)):]
    plan = json.loads(data)
    target = plan.get("default") or plan

    def walk(d, depth=0):
        for k in list(d):
            if isinstance(d[k], dict) and depth < 3 and rng.random() < 0.6:
                walk(d[k], depth + 1)
            elif rng.random() < 0.4:
                d[k] = huge(rng) if op == "types" else rng.choice(["", "x" * 300, {"__class__": 1}, [1, [2]]])
    walk(target)
    if op == "keys":
        plan[rng.choice(["layers", "format", "version", "finetune", "description"])] = huge(rng)
    return json.dumps(plan, allow_nan=True).encode()


# -------------------------------------------------------------------------------------------- oracle


def read(fmt: str, path: Path, extra, scratch: Path):
    from explorer.engine.model.data import load_eval_data
    from explorer.engine.model.loading import load_model
    from explorer.engine.plan import Plan

    if fmt == "safetensors":
        return load_model(str(path), factory=extra)
    if fmt == "plan":
        return Plan.load(path)
    return load_eval_data(str(path))


def case(i: int, seed: int, corpus: dict, scratch: Path):
    """One case: (format, family, outcome, message)."""
    rng = random.Random(seed + i)
    fmt = rng.choice(FORMATS)
    name, data, extra = rng.choice(corpus[fmt])
    family = "bytes" if rng.random() < 0.35 else ("text" if fmt == "plan" else "header")
    if family == "bytes":
        mutated = mutate_bytes(rng, data)
    else:
        mutated = {"safetensors": mutate_safetensors, "idx": mutate_idx, "npz": mutate_npz,
                   "plan": mutate_plan}.get(fmt, None)
        if fmt == "idx.gz":
            mutated = gzip.compress(mutate_idx(rng, gzip.decompress(data)))
        else:
            mutated = mutated(rng, data)
    suffix = {"safetensors": ".safetensors", "idx": "-images-idx3-ubyte", "idx.gz": "-images-idx3-ubyte.gz",
              "npz": ".npz", "plan": ".plan.json"}[fmt]
    path = scratch / f"case{suffix}"
    path.write_bytes(mutated)
    if fmt.startswith("idx"):  # the labels beside, the MNIST way (intact: the images are what is mutated)
        labels = scratch / ("case-labels-idx1-ubyte" + (".gz" if fmt == "idx.gz" else ""))
        labels.write_bytes(extra)
    try:
        read(fmt, path, extra if fmt == "safetensors" else None, scratch)
        return fmt, family, "ok", ""
    except ExplorerError as exc:
        text = str(exc)
        return fmt, family, ("clean" if text and "\n" not in text.strip() else "multiline"), text
    except Exception as exc:  # noqa: BLE001 - the finding
        return fmt, family, "unexpected", f"{type(exc).__name__}: {exc}"[:300]


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(n: int, seed: int = 0, quiet: bool = False) -> dict:
    warnings.simplefilter("ignore")
    scratch = Path(tempfile.mkdtemp(prefix="fuzz-loaders-"))
    corpus = build_corpus(scratch)
    counts = collections.Counter()
    findings, slowest = [], (0.0, None)
    base = peak_rss()
    t_all = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        before = peak_rss()
        fmt, family, outcome, message = case(i, seed, corpus, scratch)
        dt = time.perf_counter() - t
        grew = peak_rss() - before
        counts[(fmt, outcome)] += 1
        if dt > slowest[0]:
            slowest = (dt, i)
        if outcome in ("unexpected", "multiline") or dt > HANG_S or grew > OVER_BYTES:
            findings.append((i, fmt, family, outcome, round(dt, 2), grew >> 20, message))
            if not quiet:
                print(f"finding: case {i} ({fmt}/{family}) {outcome} {dt:.1f} s +{grew >> 20} MB: {message}")
        if not quiet and (i + 1) % 10_000 == 0:
            print(f"{i + 1:>7} cases, {time.perf_counter() - t_all:.0f} s, {len(findings)} findings", flush=True)
    return {"n": n, "counts": counts, "findings": findings, "slowest": slowest, "seconds": time.perf_counter() - t_all,
            "peak_rss_mb": peak_rss() >> 20, "base_rss_mb": base >> 20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replay", type=int, help="run case N again and print its traceback")
    args = ap.parse_args(argv)
    if args.replay is not None:
        scratch = Path(tempfile.mkdtemp(prefix="fuzz-loaders-"))
        corpus = build_corpus(scratch)
        rng = random.Random(args.seed + args.replay)
        print(case(args.replay, args.seed, corpus, scratch))
        fmt = rng.choice(FORMATS)
        try:
            read(fmt, next(scratch.glob("case*")), None, scratch)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        return 0
    r = run(args.n, args.seed)
    print(f"\n{r['n']:,} cases in {r['seconds']:.0f} s; process peak RSS {r['peak_rss_mb']} MB "
          f"(after building the corpus {r['base_rss_mb']} MB); slowest case {r['slowest'][0]:.2f} s "
          f"(case {r['slowest'][1]})")
    print(f"{'format':<12} {'ok':>7} {'clean error':>12} {'other':>7}")
    for fmt in FORMATS:
        c = r["counts"]
        print(f"{fmt:<12} {c[(fmt, 'ok')]:>7} {c[(fmt, 'clean')]:>12} "
              f"{c[(fmt, 'unexpected')] + c[(fmt, 'multiline')]:>7}")
    print(f"findings: {len(r['findings'])}")
    return 1 if r["findings"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
