"""Fuzz the compressed-file reader for as long as asked.

Runs the mutations of ``tests/engine/test_format_robust.py`` (raw byte edits; re-sealed stream, table and
header edits; re-sealed manifest edits) on the same real files, drawing from ``random.Random(seed + i)``
for case ``i``, and prints how each case ended. Anything but success or one clean FormatError/LoadError
is printed with the seed that reproduces it, as are the slowest case and the largest allocation::

    .venv/bin/python benchmarks/fuzz_format.py                    # 100000 cases
    .venv/bin/python benchmarks/fuzz_format.py 20000 --seconds 120 --seed 7
    .venv/bin/python benchmarks/fuzz_format.py --replay 123456    # one case again, with its traceback
    .venv/bin/python benchmarks/fuzz_format.py --replay 123456 --dump bad.cexp

Exit status 1 when something unexpected was found.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import importlib.util
import sys
import time
import traceback
import tracemalloc
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

OVER_ALLOCATION = 50 << 20  # the corpus files are 4-16 kB: reading one may not need more than this ...


def _declared(cases, raw: bytes) -> int:
    """... beyond what the file's tensors declare once decoded (8 bytes a value), which the reader caps at
    4,096 times the file + 64 MiB: a mutated shape that stays under the cap may be decoded (0 when the
    manifest cannot be taken apart)."""
    try:
        tensors = cases.split(raw).manifest["tensors"]
        total = sum(8 * __import__("math").prod(e["shape"]) for e in tensors
                    if all(isinstance(d, int) and d >= 0 for d in e["shape"]))
    except Exception:  # noqa: BLE001 - any mutation the harness cannot take apart declares nothing
        return 0
    from explorer.engine.storage import fileformat as ff

    return min(total, ff.MAX_EXPANSION * len(raw) + ff.EXPANSION_ALLOWANCE)
SLOW = 5.0  # seconds


def _cases_module():
    spec = importlib.util.spec_from_file_location("format_fuzz_cases", ROOT / "tests/engine/test_format_robust.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _where(exc: BaseException) -> str:
    """The innermost frame of the engine (else the innermost frame) an exception was raised in."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/explorer/" in f.filename] or frames
    f = ours[-1] if ours else None
    return f"{Path(f.filename).name}:{f.lineno} {f.name}" if f else "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", nargs="?", type=int, default=100_000, help="cases to run (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="case i draws from random.Random(seed + i)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long, whatever n says")
    p.add_argument("--kind", choices=["bytes", "streams", "manifest"], default=None,
                   help="only this mutation family (default: each case picks one)")
    p.add_argument("--full-every", type=int, default=4, help="load the model through a path in 1 of K cases")
    p.add_argument("--no-memory", action="store_true", help="do not trace allocations (faster)")
    p.add_argument("--replay", type=int, default=None, help="run the case of this seed, raising what it raises")
    p.add_argument("--dump", default=None, help="with --replay: write the mutated file here")
    args = p.parse_args(argv)

    warnings.simplefilter("ignore")
    faulthandler.enable()
    t0 = time.perf_counter()
    cases = _cases_module()
    for name in cases.NAMES:
        cases.reference(name)
    print(f"corpus: {', '.join(f'{n} ({len(cases.corpus(n)):,} B)' for n in cases.NAMES)} "
          f"built in {time.perf_counter() - t0:.1f} s", flush=True)

    if args.replay is not None:
        info: dict = {}
        try:
            outcome = cases.fuzz_case(cases.RandomDraws(args.replay), args.kind, full_every=args.full_every,
                                      info=info)
            print(f"seed {args.replay}: {info['kind']} mutation of {info['name']}: {outcome}")
        finally:
            if args.dump and "raw" in info:
                Path(args.dump).write_bytes(info["raw"])
                print(f"mutated file written to {args.dump} ({len(info['raw']):,} bytes)")
        return 0

    counts: dict = collections.defaultdict(collections.Counter)
    unexpected: dict = {}  # (type, where) -> [count, first seed, kind, corpus file, message]
    slowest = (0.0, None)
    largest = (0, None, 0)
    over: list = []
    if not args.no_memory:
        tracemalloc.start()
    start = last_report = time.perf_counter()
    done = 0
    for i in range(args.n):
        seed = args.seed + i
        info = {}
        if not args.no_memory:
            tracemalloc.reset_peak()
        t = time.perf_counter()
        try:
            outcome = cases.fuzz_case(cases.RandomDraws(seed), args.kind, full_every=args.full_every, info=info)
        except Exception as exc:  # noqa: BLE001 - this is what we are looking for
            # before the mutated bytes exist, the fault is the fuzzer's own, not the reader's
            outcome = "UNEXPECTED" if "raw" in info else "HARNESS"
            key = (type(exc).__name__ + ("" if "raw" in info else " (in the fuzzer)"), _where(exc))
            if key not in unexpected:
                unexpected[key] = [0, seed, info.get("kind"), info.get("name"), str(exc).splitlines()[0][:160]
                                   if str(exc) else ""]
                print(f"  unexpected {key[0]} at {key[1]} (seed {seed}, {info.get('kind')} of "
                      f"{info.get('name')}): {unexpected[key][4]}", flush=True)
            unexpected[key][0] += 1
        elapsed = time.perf_counter() - t
        counts[info.get("kind", "?")][outcome] += 1
        done += 1
        if elapsed > slowest[0]:
            slowest = (elapsed, seed)
        if not args.no_memory:
            peak = tracemalloc.get_traced_memory()[1]
            size = len(info.get("raw", b""))
            if peak > largest[0]:
                largest = (peak, seed, size)
            if peak > OVER_ALLOCATION + 1.25 * _declared(cases, info.get("raw", b"")):
                over.append((seed, peak, size))
        now = time.perf_counter()
        if now - last_report > 15:
            last_report = now
            print(f"  {done:,} cases, {done / (now - start):.0f}/s, {sum(v[0] for v in unexpected.values())} "
                  "unexpected", file=sys.stderr, flush=True)
        if args.seconds is not None and now - start > args.seconds:
            break
    total = time.perf_counter() - start

    outcomes = sorted({o for c in counts.values() for o in c})
    print(f"\n{done:,} cases (seeds {args.seed}..{args.seed + done - 1}) in {total:.0f} s, "
          f"{done / total:.0f} cases/s")
    print(f"{'mutation':<10}" + "".join(f"{o:>14}" for o in outcomes) + f"{'total':>10}")
    for kind in sorted(counts):
        print(f"{kind:<10}" + "".join(f"{counts[kind][o]:>14,}" for o in outcomes)
              + f"{sum(counts[kind].values()):>10,}")
    print(f"slowest case: {slowest[0] * 1000:.1f} ms (seed {slowest[1]})"
          + ("" if slowest[0] < SLOW else "  <- SLOW"))
    if not args.no_memory:
        print(f"largest allocation: {largest[0] / 1e6:.1f} MB for a file of {largest[2]:,} bytes (seed {largest[1]})")
        for seed, peak, size in over[:10]:
            print(f"  OVER-ALLOCATION seed {seed}: {peak / 1e6:.0f} MB for a file of {size:,} bytes")
    if unexpected:
        print(f"\n{len(unexpected)} kinds of unexpected exception (replay with --replay SEED):")
        for (name, where), (n, seed, kind, corpus_name, msg) in sorted(unexpected.items(), key=lambda kv: -kv[1][0]):
            print(f"  {n:>6,} x {name} at {where}; first seed {seed} ({kind} of {corpus_name}): {msg}")
    else:
        print("no unexpected exception")
    return 1 if unexpected or over or slowest[0] >= SLOW else 0


if __name__ == "__main__":
    raise SystemExit(main())
