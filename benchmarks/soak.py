"""The window under long use: N scripted setting changes in the real explorer window, its jobs running.

Opens ``digits-cnn`` with its sample plan in the explorer window (offscreen unless a display is set) and makes
N random (seeded) changes the way a person does, through the widgets: the sparsity, bits and rank sliders
moved and released, quantize and factorise toggled, the granularity, the method and the k-means init
picked, another layer selected, Edit -> Undo and Redo, another tab shown (the histogram, the centroid
comparison, the Sensitivity tab, Compare plans). Between two changes the event loop runs for 0-``--pace``
ms, so the background jobs (preview, histogram, accuracy, k-means comparison, sensitivity scans) are
started, superseded, dropped and finished as they are in use; every ``--settle`` changes the window is let
go idle.

Every ``--every`` changes it samples the process's resident memory (VmRSS), its threads (/proc/self/task),
its open files (/proc/self/fd), the window's Qt objects (QObjects under the window, all widgets, the items
of every plot's scene) and the undo history. Warm-up ends at the first sample after ``--warmup`` changes
(default: a fifth) at which the bounded stores that fill with use are at their bounds (the undo history's
1,000 plans, the sensitivity scans' cache; the headless soak's rule), or at ``--warmup`` if they never are;
from there to the end the memory must stay within ``--tolerance`` (5 %) and the threads, open files and Qt
objects must not grow (the largest sample after warm-up no larger than the largest during it). Exits 1 if one does not hold.

    .venv/bin/python benchmarks/soak.py [N] [--seed S] [--every K] [--warmup W] [--pace MS] [--quick]

``--quick``: 500 changes (what tests/gui/test_soak.py runs, with its own bounds). ``--trim``: the heap's free
pages given back before each sample (the window keeps freed memory for reuse, so its resident memory is the
high-water mark of the heap, fragmentation included). Prints a table.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from soak_memory import rss_mb  # noqa: E402  (the headless soak's: VmRSS in MB)


def trim() -> None:
    """Give the heap's free pages back (glibc's malloc_trim): the window keeps up to 1 GiB of freed memory
    for reuse (``workers._tune_process``), so its resident memory is the heap's high-water mark; trimmed
    before a sample, it is what is in use."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def counts(win) -> dict:
    """What the process and the window hold now."""
    from PySide6.QtCore import QObject
    from PySide6.QtWidgets import QApplication, QGraphicsView

    widgets = QApplication.allWidgets()
    items = sum(len(w.scene().items()) for w in widgets if isinstance(w, QGraphicsView) and w.scene() is not None)
    from explorer.engine.sensitivity import auto, scan

    return {"rss_mb": rss_mb(), "threads": len(os.listdir("/proc/self/task")),
            # bounded stores that fill slowly in the window (the Sensitivity tab is shown now and then)
            "scan_cache_mb": scan.CACHE.nbytes / 2 ** 20, "cost_cache_mb": auto.COSTS.nbytes / 2 ** 20,
            "measured": len(win.session.measured),
            "files": len(os.listdir("/proc/self/fd")), "qobjects": len(win.findChildren(QObject)),
            "widgets": len(widgets), "plot_items": items, "undo": len(win.session.history()[0])}


def change(win, rng: random.Random) -> str:
    """One change, as a person makes it; returns what it was."""
    c, tabs = win.controls, win.tabs
    kind = rng.choices(["sparsity", "bits", "rank", "quant", "factorise", "granularity", "method", "init",
                        "select", "undo", "redo", "tab"], weights=[6, 3, 1, 1, 1, 1, 1, 1, 3, 2, 1, 1])[0]
    if kind in ("sparsity", "bits", "rank"):
        s = getattr(c, kind)
        s.setValue(rng.randint(s.minimum(), s.maximum()))
        s._slider.sliderReleased.emit()  # the release a mouse makes (the slider's own signal)
    elif kind == "quant":
        c.quant_on.setChecked(not c.quant_on.isChecked())
    elif kind == "factorise":
        c.rank_on.setChecked(not c.rank_on.isChecked())
    elif kind in ("granularity", "method", "init"):
        box = {"granularity": c.granularity, "method": c.method, "init": c.init}[kind]
        if box.isEnabled() and box.count() > 1:
            box.setCurrentIndex(rng.randrange(box.count()))
    elif kind == "select":
        win.table.selectRow(rng.randrange(len(win.session.layer_names)))
    elif kind == "undo":
        win.menus.undo_action.trigger()
    elif kind == "redo":
        win.menus.redo_action.trigger()
    else:
        tabs.setCurrentIndex(rng.randrange(tabs.count()))
    return kind


def run(n: int, seed: int = 0, every: int = 100, warmup=None, pace_ms: int = 30, settle: int = 50,
        quiet: bool = False, trimmed: bool = False, trace: int = 0) -> dict:
    """Make ``n`` changes; returns the samples and the verdicts (see the module's docstring)."""
    from PySide6.QtCore import QEventLoop, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from explorer.engine.samples import SAMPLES_DIR
    from explorer.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])

    def spin(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def idle(timeout_s: float = 120.0) -> None:
        t = time.perf_counter()
        while not win.idle() and time.perf_counter() - t < timeout_s:
            spin(5)

    win = MainWindow(QSettings())
    errors = []  # every message the banner showed, with the change that came before it
    shown = win.show_error
    win.show_error = lambda message, *args, **kwargs: (errors.append((len(kinds_log), message)),
                                                      shown(message, *args, **kwargs))[1]
    kinds_log: list = []
    win.show()
    win.open_model("digits-cnn")
    idle()
    win.load_plan(str(SAMPLES_DIR / "digits-cnn.plan.json"))
    idle()
    canonical = win.session.plan
    for t in range(win.tabs.count()):  # every tab once: what a tab starts on first sight belongs to warm-up
        win.tabs.setCurrentIndex(t)
        idle()
    win.tabs.setCurrentIndex(0)
    rng = random.Random(seed)
    warmup = warmup if warmup is not None else n // 5
    snapshots = []
    if trace:
        import tracemalloc

        tracemalloc.start(trace)
    samples, kinds, t0 = [], {}, time.perf_counter()
    for i in range(1, n + 1):
        k = change(win, rng)
        kinds[k] = kinds.get(k, 0) + 1
        kinds_log.append((k, win.session.current, win.session.settings(win.session.current).describe()
                          if win.session.current else ""))
        spin(rng.randint(0, pace_ms))
        if i % settle == 0:
            idle()
        if i % every == 0 or i == n:  # counted in one state: the sample plan, the first layer, the first tab
            # (plot items and widgets follow the state: 2**bits centroid lines, the tabs' contents)
            win.session.set_plan(canonical)
            win.table.selectRow(0)
            win.tabs.setCurrentIndex(0)
            idle()
            spin(50)
            gc.collect()
            if trimmed:
                trim()
            samples.append(dict(counts(win), i=i, t=time.perf_counter() - t0))
            if trace and (not snapshots and i >= warmup or i == n):
                snapshots.append(tracemalloc.take_snapshot())
            if not quiet:
                s = samples[-1]
                print(f"{i:>7} {s['t']:>7.0f} s  rss {s['rss_mb']:7.1f} MB  threads {s['threads']:3}  files "
                      f"{s['files']:3}  qobjects {s['qobjects']:5}  widgets {s['widgets']:4}  plot items "
                      f"{s['plot_items']:5}  undo {s['undo']:5}  scan cache {s['scan_cache_mb']:4.1f} MB  measured plans "
                      f"{s['measured']:3}", flush=True)
    win.close()
    app.processEvents()
    out = verdicts(samples, warmup, kinds, errors)
    out["log"] = kinds_log
    if len(snapshots) == 2:
        out["grown_sites"] = snapshots[1].compare_to(snapshots[0], "traceback")[:20]
    return out


def warm(samples: list, warmup: int) -> int:
    """Where warm-up ends: at the first sample from ``warmup`` changes on at which every bounded store that
    fills with use is at its bound (the undo history at its 1,000 plans, the sensitivity scans' cache at its
    byte budget), as the headless soak has it; ``warmup`` if none is."""
    from explorer.engine.sensitivity import scan
    from explorer.session import UNDO_LIMIT

    full = scan.CACHE.limit_bytes / 2 ** 20 * 0.95
    for s in samples:
        if s["i"] >= warmup and s["undo"] >= UNDO_LIMIT and s["scan_cache_mb"] >= full:
            return s["i"]
    return warmup


def verdicts(samples: list, warmup: int, kinds: dict, errors: list) -> dict:
    warmup = warm(samples, warmup)
    during = [s for s in samples if s["i"] <= warmup] or samples[:1]
    after = [s for s in samples if s["i"] > warmup] or samples[-1:]
    base, end = during[-1]["rss_mb"], after[-1]["rss_mb"]
    out = {"samples": samples, "warmup": warmup, "kinds": kinds, "errors": errors,
           "rss_start": samples[0]["rss_mb"], "rss_warm": base, "rss_end": end,
           "rss_growth": (max(s["rss_mb"] for s in after) - base) / base, "grew": {}}
    for key in ("threads", "files", "qobjects", "widgets", "plot_items"):
        top_during, top_after = max(s[key] for s in during), max(s[key] for s in after)
        if top_after > top_during:
            out["grew"][key] = (top_during, top_after)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--pace", type=int, default=30, help="the most ms the event loop runs between two changes")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true", help="500 changes")
    ap.add_argument("--trim", action="store_true", help="malloc_trim before each sample: memory in use, not the "
                    "heap's high-water mark")
    ap.add_argument("--trace", type=int, default=0, metavar="FRAMES", help="tracemalloc on with FRAMES frames "
                    "(slower): the allocation sites that grew most after warm-up are printed")
    args = ap.parse_args(argv)
    n = 500 if args.quick else args.n
    t = time.perf_counter()
    r = run(n, args.seed, min(args.every, max(n // 10, 1)), args.warmup, args.pace, trimmed=args.trim,
            trace=args.trace)
    ok_rss = abs(r["rss_growth"]) <= args.tolerance
    print(f"\n{n:,} changes in {time.perf_counter() - t:.0f} s ({', '.join(f'{k} {v}' for k, v in r['kinds'].items())})")
    print(f"resident memory: {r['rss_start']:.0f} MB after opening, {r['rss_warm']:.0f} MB at the end of warm-up "
          f"({r['warmup']:,} changes), {r['rss_end']:.0f} MB at the end; largest after warm-up "
          f"{100 * r['rss_growth']:+.1f}% ({'within' if ok_rss else 'OUTSIDE'} ±{100 * args.tolerance:.0f}%)")
    for key in ("threads", "files", "qobjects", "widgets", "plot_items"):
        grew = r["grew"].get(key)
        top = max(s[key] for s in r["samples"])
        print(f"{key:>11}: " + (f"GREW {grew[0]} -> {grew[1]}" if grew else f"no growth after warm-up (max {top})"))
    said = {}
    for _, message in r["errors"]:
        said[message] = said.get(message, 0) + 1
    print(f"messages in the banner: {len(r['errors'])}" + "".join(f"\n  {n} x {m}" for m, n in said.items()))
    for stat in r.get("grown_sites", []):
        print(f"\n{stat.size_diff / 2 ** 20:+8.2f} MB in {stat.count_diff:+7} blocks (now {stat.size / 2 ** 20:.2f} MB)")
        for line in stat.traceback.format()[-2 * 6:]:
            print("   ", line)
    return 0 if ok_rss and not r["grew"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
