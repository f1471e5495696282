"""Memory under long use: N setting changes made the way the window makes them, headless.

Loads ``digits-cnn``, builds a :class:`~explorer.session.Session` and a
:class:`~explorer.engine.measure.preview.Previewer`, then makes N random (seeded) setting changes. Each is what a
release of one of the window's controls does: the controls' whole state for the selected layers (sparsity
0-95 % and granularity, quantize on/off with bits 1-8, kmeans/uniform and the k-means init, low-rank
on/off) as a patch through ``Session.update_layers``, or an undo/redo, or another layer selected. After
each plan change the benchmark runs what the window's jobs run, minus Qt:

- ``Previewer.measure(plan)`` (the "preview" job) and ``Session.set_results``;
- ``Previewer.layer(current)`` and, the first time a layer is looked at, ``Previewer.sorted_magnitudes``
  (the "layer" job), then ``Previewer.prepare(current)`` at the slider's 99 amounts ("prepare");
- every ``--accuracy-every`` plans, ``Previewer.build(plan, count=False)`` and ``quality`` on the eval data
  in batches of 4 ("accuracy": the window starts it once a plan has stood for 150 ms);
- every ``--inits-every`` plans, ``init_comparison`` of the current layer ("inits", the centroid tab).

The process's resident memory (VmRSS of /proc/self/status) is sampled every ``--every`` changes, with
the sizes of the engine's caches and of the undo history. Warm-up ends at the first sample at which
every bounded store is at its bound — the caches at their byte budgets (by ~750 changes) and the undo
history at its 1,000 plans (by ~1,500) — and not before ``--warmup`` changes; the growth is measured
from there to the end, and the run exits 1 if it exceeds ``--tolerance`` (5 %).

    .venv/bin/python benchmarks/soak_memory.py [N] [--seed S] [--quick] [--trace] [--window-malloc] [--trim]

``--quick``: 3,000 changes. ``--trace``: tracemalloc on (slower), and the allocation sites
that grew most between the warm-up and the end are printed. ``--window-malloc``: glibc tuned as the
window tunes it (``workers._tune_process``: freed blocks up to 1 GiB kept for reuse), so RSS follows
the heap's high-water mark.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.engine.errors import ExplorerError  # noqa: E402
from explorer.engine.inspect import inspect_model  # noqa: E402
from explorer.engine.measure.evaluate import quality  # noqa: E402
from explorer.engine.measure.layerview import init_comparison  # noqa: E402
from explorer.engine.measure.preview import Previewer, warm_up  # noqa: E402
from explorer.engine.model.loading import load_model  # noqa: E402
from explorer.session import UNDO_LIMIT, Session  # noqa: E402

ACCURACY_BATCH = 4  # as the window measures it (main_window.ACCURACY_BATCH; not imported: that is Qt)
INITS = ("linear", "density", "forgy", "kmeans++")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _held(cache) -> tuple:
    """(entries, bytes) of an engine cache, as it counts them."""
    return len(cache), cache.nbytes


def cache_stats(pv: Previewer, session: Session) -> dict:
    sweeps = [v[1] for v in list(pv._sweeps._items.values())]
    groups = [_held(s._groups) for s in sweeps]
    out = {
        "tensors": _held(pv.cache),
        "measured": _held(pv._measured),
        "summaries": _held(pv._summaries),
        "sweeps": _held(pv._sweeps),
        "groups": (sum(g[0] for g in groups), None if any(g[1] is None for g in groups) else sum(g[1] for g in groups)),
        "bins": _held(pv._bins),
        "undo": (len(session._undo), None),
        "redo": (len(session._redo), None),
    }
    return out


def _count_lookups(cache) -> list:
    """[hits, misses] of ``cache.get`` from now on (the cache's own get, wrapped on the instance)."""
    counts = [0, 0]
    get = cache.get

    def counted(key, *args):
        value = get(key, *args)
        counts[value is None] += 1
        return value

    cache.get = counted
    return counts


class Controls:
    """The window's controls for the selected layers: loaded from the first one's settings, one value
    changed, the whole state applied as a patch (qt_controls.Controls.patch)."""

    def __init__(self, settings):
        p, q, r = settings.prune, settings.quantize, settings.lowrank
        self.sparsity = int(round(100 * p.amount)) if p is not None and isinstance(p.amount, float) else 0
        self.granularity = p.granularity if p is not None else "element"
        self.quant_on = q is not None
        self.bits = q.bits if q is not None else 5
        self.method = q.method if q is not None and q.method in ("kmeans", "uniform") else "kmeans"
        self.init = q.init if q is not None else "linear"
        self.rank_on = r is not None
        self.rank = int(round(100 * r.rank)) if r is not None and isinstance(r.rank, float) else 50

    def patch(self) -> dict:
        amount = self.sparsity / 100.0
        out = {"prune": {"amount": amount, "granularity": self.granularity} if amount else None}
        if self.quant_on:
            bits = 2 if self.method == "uniform" and self.bits < 2 else self.bits
            out["quantize"] = {"bits": bits, "method": self.method, "init": self.init}
        else:
            out["quantize"] = None
        out["lowrank"] = {"rank": self.rank / 100.0, "method": "auto"} if self.rank_on else None
        return out


class Soak:
    def __init__(self, seed: int, accuracy_every: int, inits_every: int):
        self.rng = random.Random(seed)
        self.accuracy_every, self.inits_every = accuracy_every, inits_every
        self.loaded = load_model("digits-cnn")
        info = inspect_model(self.loaded.model, self.loaded.example_input)
        warm_up()
        self.session = Session()
        self.session.set_model(self.loaded, info)
        self.pv = self.session.previewer  # the window's, made with the model
        self.abs_sorted: dict = {}  # the window's own: layer -> sorted |w| (per model)
        self.accuracy_before = None
        self.plans = 0
        self.errors = 0
        self.counts: dict = {}
        self.revert = None  # (names, patch) that turns off what the last change tried
        self.lookups = {name: _count_lookups(cache) for name, cache in
                        (("tensors", self.pv.cache), ("measured", self.pv._measured), ("summaries", self.pv._summaries),
                         ("sweeps", self.pv._sweeps))}

    def layer_jobs(self) -> None:
        """The "layer" job, then "prepare" (what the window runs when a layer is shown)."""
        s, pv = self.session, self.pv
        name = s.current
        settings = s.settings(name)
        try:
            pv.layer(name, settings)
            if name not in self.abs_sorted:
                self.abs_sorted[name] = pv.sorted_magnitudes(name)
            pv.prepare(name, settings)
        except ExplorerError:
            self.errors += 1

    def plan_jobs(self) -> bool:
        """What the window runs after a plan change: the preview, then the layer view and its preparation,
        and now and then (the plan stood) the accuracy and the centroid comparison. False when the plan
        was refused (e.g. filter pruning of the output layer: the window shows why in its banner)."""
        s, pv = self.session, self.pv
        self.plans += 1
        plan = s.plan
        try:
            s.set_results(pv.measure(plan))
        except ExplorerError:
            self.errors += 1
            return False
        self.layer_jobs()
        if self.accuracy_every and self.plans % self.accuracy_every == 0:
            try:
                model = pv.build(plan, count=False).model
                q = quality(self.loaded, model, before=self.accuracy_before, batch_size=ACCURACY_BATCH)
                if q is not None and "before" in q:
                    self.accuracy_before = q["before"]
                s.set_accuracy(q)
            except ExplorerError:
                self.errors += 1
        if self.inits_every and self.plans % self.inits_every == 0:
            name = s.current
            init_comparison(name, pv.modules[name], s.settings(name))
        return True

    def change(self) -> None:
        rng, s = self.rng, self.session
        if self.revert is not None:  # low-rank or filter pruning was tried on the change before: taken back
            names, patch = self.revert
            self.revert = None
            self._count("taken back")
            self._apply(names, patch)
            return
        r = rng.random()
        if r < 0.05:  # another layer selected
            self._count("select")
            s.select([rng.choice([n for n in s.layer_names if n != s.current])])
            self.layer_jobs()
            return
        if r < 0.13:
            self._count("undo")
            if s.can_undo():
                s.undo()
                self.plan_jobs()
            return
        if r < 0.17:
            self._count("redo")
            if s.can_redo():
                s.redo()
                self.plan_jobs()
            return
        c = Controls(s.settings(s.current))
        before = c.patch()
        r = rng.random()
        if r < 0.55:
            what, c.sparsity = "sparsity", rng.randint(0, 95)
        elif r < 0.72:
            what, c.bits, c.quant_on = "bits", rng.randint(1, 8), True
        elif r < 0.80:
            what, c.method, c.quant_on = "method", rng.choice(("kmeans", "uniform")), True
        elif r < 0.88:
            what, c.init = "init", rng.choice(INITS)
        elif r < 0.94:
            what, c.quant_on = "quantize on/off", not c.quant_on
        elif r < 0.97:
            what, c.granularity = "filter pruning", "filter"
            c.sparsity = c.sparsity or 50
        else:
            what, c.rank_on = "low-rank", True
        self._count(what)
        names = s.layer_names if rng.random() < 0.03 else s.selection  # "Apply to all layers" now and then
        if self._apply(names, c.patch()) and what in ("filter pruning", "low-rank"):
            self.revert = (names, before)  # looked at, then turned off again: shape changes are slow to measure

    def _apply(self, names, patch) -> bool:
        s = self.session
        try:
            s.update_layers(names, patch)
        except ExplorerError:  # the window shows it in its banner; nothing changed
            self.errors += 1
            return False
        if not self.plan_jobs():  # refused: the user takes it back (Edit -> Undo), as after the banner
            s.undo()
            self.plan_jobs()
            return False
        return True

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


def _fmt(entry) -> str:
    n, nbytes = entry
    return f"{n}" if nbytes is None else f"{n}/{nbytes / 1e6:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=None, help="setting changes (default 10,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="3,000 changes")
    ap.add_argument("--every", type=int, default=250, help="changes between two samples")
    ap.add_argument("--warmup", type=int, default=None, help="changes before the growth is measured, at least (1,000; "
                    "and until the undo history is full)")
    ap.add_argument("--tolerance", type=float, default=5.0, help="growth allowed after warm-up, in %%")
    ap.add_argument("--accuracy-every", type=int, default=10, help="plans between two accuracy measurements")
    ap.add_argument("--inits-every", type=int, default=25, help="plans between two centroid comparisons")
    ap.add_argument("--trace", action="store_true", help="tracemalloc: print what grew after warm-up")
    ap.add_argument("--window-malloc", action="store_true", help="glibc tuned as the window tunes it")
    ap.add_argument("--trim", action="store_true",
                    help="glibc's malloc_trim(0) before each sample: RSS then counts the memory in use, not the "
                         "freed memory the allocator keeps")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else (3000 if args.quick else 10_000)
    warmup = args.warmup if args.warmup is not None else 1000
    if args.window_malloc and sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 29)  # as workers._tune_process: M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    if args.trace:
        import tracemalloc

        tracemalloc.start(8)
    soak = Soak(args.seed, args.accuracy_every, args.inits_every)
    print(f"digits-cnn, {n:,} changes, seed {args.seed}, sampled every {args.every}; "
          f"growth measured from change {warmup:,} or once the undo history is full" + (", tracemalloc on" if args.trace else "")
          + (", window's malloc tuning" if args.window_malloc else "")
          + (", malloc_trim before each sample" if args.trim else ""))
    cols = ("tensors", "measured", "summaries", "sweeps", "groups", "bins", "undo", "redo")
    header = f"{'changes':>8} {'RSS MB':>8} {'s':>6}  " + "  ".join(
        f"{c + (' n/MB' if c not in ('undo', 'redo', 'bins') else ''):>14}" for c in cols)
    print("cache columns: entries/MB held (tensors = TensorCache, measured = sizes-only results, summaries = "
          "measure()'s, sweeps = TensorSweeps incl. groups, groups = k-means bucket groups)")
    print(header)
    print("-" * len(header))
    samples = []
    snap_warm = None
    t0 = time.perf_counter()

    trim = None
    if args.trim and sys.platform.startswith("linux"):
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim

    def sample(i):
        gc.collect()
        if trim is not None:
            trim(0)
        rss = rss_mb()
        st = cache_stats(soak.pv, soak.session)
        samples.append((i, rss, st["undo"][0] >= UNDO_LIMIT))
        print(f"{i:>8,} {rss:>8.1f} {time.perf_counter() - t0:>6.0f}  " + "  ".join(f"{_fmt(st[c]):>14}" for c in cols),
              flush=True)

    sample(0)
    for i in range(1, n + 1):
        soak.change()
        if i % args.every == 0 or i == n:
            sample(i)
            if args.trace and snap_warm is None and i >= warmup and samples[-1][2]:
                snap_warm = tracemalloc.take_snapshot()
    warm = [s for s in samples if s[0] >= warmup and s[2]]
    if not warm:
        print(f"\nthe undo history never filled ({UNDO_LIMIT:,} plans) in {n:,} changes: no growth to measure")
        return 1
    at_warm = warm[0]
    start, end = samples[0][1], samples[-1][1]
    after = [s[1] for s in samples if s[0] >= at_warm[0]]
    growth = 100.0 * (end - at_warm[1]) / at_warm[1]
    spread = 100.0 * (max(after) - min(after)) / at_warm[1]
    print()
    print("changes made: " + ", ".join(f"{k} {v:,}" for k, v in sorted(soak.counts.items()))
          + f"; plans measured {soak.plans:,}, refused {soak.errors:,}")
    print("hit rates: " + ", ".join(f"{k} {h / max(h + m, 1):.1%} of {h + m:,}" for k, (h, m) in soak.lookups.items()))
    print(f"RSS: start {start:.1f} MB, at change {at_warm[0]:,} {at_warm[1]:.1f} MB, end {end:.1f} MB, "
          f"peak after warm-up {max(after):.1f} MB")
    print(f"growth after warm-up: {growth:+.1f}% (range of the samples since: {spread:.1f}%); "
          f"tolerance ±{args.tolerance:g}%; {time.perf_counter() - t0:.0f} s")
    if args.trace and snap_warm is not None:
        gc.collect()
        diff = tracemalloc.take_snapshot().compare_to(snap_warm, "traceback")
        print("\nlargest growth since the warm-up (tracemalloc):")
        for stat in diff[:12]:
            print(f"  {stat.size_diff / 1e6:+8.2f} MB  {stat.count_diff:+7d} blocks")
            for line in stat.traceback.format()[-6:]:
                print("      " + line)
    ok = abs(growth) <= args.tolerance
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
