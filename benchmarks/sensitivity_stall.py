"""How responsive the window stays while its Sensitivity tab scans (issue 15).

Opens a sample (digits-cnn by default) with its plan in the explorer window (offscreen unless a display is
set), then shows the Sensitivity tab with the engine's point cache emptied, so the whole scan (every layer
against sparsity, bits and parameters kept) runs on its worker, and measures with a 5 ms QTimer heartbeat
(as ``gui_latency.py`` does) the event loop's longest stall during the scan (target <= 50 ms). Then the
same scan again, its points cached (it should be instant), and ``--rounds`` more cold scans. The first row
is the same heartbeat for 2 s with nothing of the window's running: the host's own floor (on a shared host,
other processes' load shows there too).

    .venv/bin/python benchmarks/sensitivity_stall.py [--model digits-cnn] [--limit 500] [--rounds 3] [--load N]
                                                     [--why FILE]

Prints a table with the measured numbers (not a test: nothing here asserts).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gui_latency import TARGETS, Heartbeat, start_load, summarise_stalls, wait_until  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits-cnn", help="a bundled sample (default digits-cnn)")
    ap.add_argument("--plan", help="the plan (default: the sample's own, sample_models/MODEL.plan.json)")
    ap.add_argument("--limit", type=int, help="samples the scan measures (default: the tab's, 500)")
    ap.add_argument("--rounds", type=int, default=3, help="cold scans (default 3)")
    ap.add_argument("--load", type=int, default=0, metavar="N", help="N busy processes beside the window")
    ap.add_argument("--why", metavar="FILE", help="every thread's stack at each stall over 50 ms, to FILE")
    args = ap.parse_args(argv)
    if "QT_QPA_PLATFORM" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    load = start_load(args.load)
    try:
        return run(args)
    finally:
        for p in load:
            p.terminate()


def run(args) -> int:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from explorer.engine.sensitivity import scan
    from explorer.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])  # noqa: F841 (kept alive)
    win = MainWindow(settings=QSettings(str(Path(os.environ.get("TMPDIR", "/tmp")) / "sensitivity-stall.ini"),
                                        QSettings.IniFormat))
    win.show()
    tab = win.sensitivity
    if args.limit:
        tab.view.limit.setValue(args.limit)

    def settled():
        return win.idle() and not win.controls._timer.isActive()

    win.open_model(args.model)
    wait_until(lambda: win.session.loaded is not None and settled())
    win.load_plan(args.plan or str(ROOT / "sample_models" / f"{args.model}.plan.json"))
    wait_until(lambda: win.session.results is not None and settled())
    if win.last_error:
        print("error:", win.last_error)
        return 1
    why = open(args.why, "w") if args.why else None
    beat = Heartbeat(why=why)
    rows = []

    def one(phase: str, cold: bool) -> None:
        wait_until(settled)
        if cold:
            scan.CACHE.clear()
        beat.phase = phase
        beat.resume()
        t0 = time.perf_counter()
        tab.compute()
        wait_until(lambda: settled() and not tab.view._redraw.isActive())
        seconds = time.perf_counter() - t0
        beat.phase = "between"
        stall, beats = beat.longest(phase)
        gaps = sorted((g * 1000 for g, p in beat.gaps if p == phase), reverse=True)
        rows.append((phase, len(tab.view.points), seconds, stall, beats, gaps[:5]))

    beat.start()
    # the host's floor: the same heartbeat with nothing of ours running (others' processes still do)
    beat.phase = "idle, 2 s"
    t0 = time.perf_counter()
    wait_until(lambda: time.perf_counter() - t0 > 2.0)
    gaps = sorted((g * 1000 for g, p in beat.gaps if p == beat.phase), reverse=True)
    rows.append((beat.phase, 0, 2.0, gaps[0], len(gaps), gaps[:5]))
    # the first scan in the process (as a user's first look at the tab): one-time costs included (the first
    # low-rank factorization and k-means of each size load their kernels)
    beat.phase = "first, tab shown"
    beat.resume()
    t0 = time.perf_counter()
    win.tabs.setCurrentWidget(tab.view)
    wait_until(lambda: settled() and not tab.view._redraw.isActive())
    gaps = sorted((g * 1000 for g, p in beat.gaps if p == beat.phase), reverse=True)
    rows.append((beat.phase, len(tab.view.points), time.perf_counter() - t0, gaps[0], len(gaps), gaps[:5]))
    for i in range(args.rounds):
        one(f"cold {i + 1}", cold=True)
        if i == 0:
            one("cached", cold=False)
    beat.stop()
    print(f"{args.model}, plan {args.plan or 'the sample plan'}; scan of {tab.view.limit.value()} samples; "
          f"{os.cpu_count()} CPUs; {args.load} busy processes beside it")
    print("| scan | points | seconds | longest stall | beats | five longest gaps (ms) | met (<= 50 ms) |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
    for phase, n, seconds, stall, beats, gaps in rows:
        print(f"| {phase} | {n} | {seconds:.2f} | {stall:.0f} ms | {beats} | {', '.join(f'{g:.0f}' for g in gaps)} "
              f"| {'yes' if stall <= TARGETS['stall'] else 'NO'} |")
    if why is not None:
        why.close()
        summarise_stalls(args.why)
    win.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
