"""How responsive the window is on a ResNet-18-sized model (11.7M parameters, random weights).

Opens the model in the explorer window (offscreen unless a display is set) through a factory, with eval
data of random images, and measures

- the event loop's longest stall: a 5 ms QTimer heartbeat records the longest gap between two ticks while
  the accuracy and the k-means comparison (centroid tab) run in the background (target <= 50 ms);
- the latency from a sparsity-slider release to the preview's updated size/MACs, i.e. the session's
  ``results`` event (target <= 16 ms);
- the latency from the release to the redrawn layer histogram (target <= 100 ms).

Each latency is split into queueing (release -> the engine job starts on a worker), engine work and
delivery, by timing the engine calls the window makes. Releases are made both with the window idle and
while the previous release's accuracy is being measured (what a user tuning a slider does): 20, 80 or
140 ms after its images started going through the model.

    .venv/bin/python benchmarks/gui_latency.py [--res 224] [--images 256] [--rounds 3] [--layer NAME] [--load N]

``--load N`` runs N busy processes beside the window for the whole run (at the window's priority), so a
loaded host is a condition of the run rather than of the moment: with N = 1 on this 2-core kind the
window and its workers share one core.

Prints a table with the measured numbers (not a test: nothing here asserts).
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the factory below is 'gui_latency:resnet18_bundle'

import torch  # noqa: E402
from torch import nn  # noqa: E402

TARGETS = {"stall": 50.0, "size": 16.0, "histogram": 100.0}


# ----------------------------------------------------------------------------- the model (factory)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016): 7x7 stem, four stages of two basic blocks (64, 128, 256, 512), 1000-way
    head; 11,689,512 parameters."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


VGG16_CONVS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16 (Simonyan & Zisserman 2015, configuration D, torchvision's layout without batch norm):
    thirteen 3x3 convolutions in five stages, each ended by a 2x2 max-pool, a 7x7 adaptive average pool
    and three fully connected layers 25088 -> 4096 -> 4096 -> 1000; 138,357,544 parameters (the first
    of them, classifier.0, holds 102,760,448 weights)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, cin = [], 3
        for v in VGG16_CONVS:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


MODELS = {"resnet18": ("ResNet-18", ResNet18), "vgg16": ("VGG-16", VGG16)}


def _bundle(model_cls):
    """``model_cls`` with seeded random weights, a 1x3xRxR example input and N random labelled images (R,
    N from the environment variables GUI_LATENCY_RES and GUI_LATENCY_IMAGES)."""
    from explorer.engine.model.data import EvalData

    res = int(os.environ.get("GUI_LATENCY_RES", "224"))
    n = int(os.environ.get("GUI_LATENCY_IMAGES", "256"))
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = model_cls().eval()
    images = torch.randn(n, 3, res, res, generator=g)
    labels = torch.randint(0, 1000, (n,), generator=g)
    return {"model": model, "example_input": images[:1].clone(),
            "eval_data": EvalData(images, labels, f"{n} random {res}x{res} images")}


def resnet18_bundle():
    """Factory: ResNet-18 with seeded random weights and random eval images (see :func:`_bundle`)."""
    return _bundle(ResNet18)


def vgg16_bundle():
    """Factory: VGG-16 with seeded random weights and random eval images (see :func:`_bundle`)."""
    return _bundle(VGG16)


# ------------------------------------------------------------------------------------ measurement


class Heartbeat:
    """A 5 ms timer on the GUI thread; the longest gap between two ticks is the longest stall."""

    def __init__(self, interval_ms: int = 5, why=None, threshold_s: float = 0.05):
        from PySide6.QtCore import Qt, QTimer

        self.why, self.threshold_s = why, threshold_s  # a file: every thread's stack when a stall passes 50 ms

        self.timer = QTimer()
        self.timer.setTimerType(Qt.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.gaps = []  # (gap seconds, phase)
        self.phase = ""

    def start(self) -> None:
        self.last = time.perf_counter()
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((now - self.last, self.phase))
        if self.why is not None and now - self.last > self.threshold_s:  # the dump above was taken in it
            self.why.write(f"Stall of {(now - self.last) * 1000:.0f} ms in phase '{self.phase}'\n")
            self.why.flush()  # before faulthandler writes to the same file again
        self.last = now
        if self.why is not None:
            # faulthandler's watchdog is a C thread: it dumps the stacks even while a worker holds the GIL
            faulthandler.dump_traceback_later(self.threshold_s, file=self.why)

    def resume(self) -> None:
        """Start the next gap now: after work the benchmark itself did on the GUI thread."""
        if self.why is not None and time.perf_counter() - self.last > self.threshold_s:
            self.why.write("Not a stall: the benchmark's own work on the GUI thread\n")
            self.why.flush()
        self.last = time.perf_counter()

    def stop(self) -> None:
        self.timer.stop()
        if self.why is not None:
            faulthandler.cancel_dump_traceback_later()

    def longest(self, phase=None):
        gaps = [g for g, p in self.gaps if phase is None or p == phase]
        return (max(gaps) * 1000.0, len(gaps)) if gaps else (float("nan"), 0)


def wait_until(cond, timeout_s: float = 900.0) -> None:
    """Run the event loop (sleeping in it, not spinning) until ``cond()`` holds."""
    from PySide6.QtCore import QEventLoop, QTimer

    if cond():
        return
    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(2)
    start = time.perf_counter()
    state = {"timed_out": False}

    def check():
        if cond():
            loop.quit()
        elif time.perf_counter() - start > timeout_s:
            state["timed_out"] = True
            loop.quit()

    poll.timeout.connect(check)
    poll.start()
    loop.exec()
    poll.stop()
    if state["timed_out"]:
        raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for the window")


def instrument(win, clock: dict) -> None:
    """Time the engine calls the window makes (start and end in the worker) and the GUI-side redraws."""
    import explorer.gui.qt_jobs as jobs
    from explorer.engine.measure.preview import Previewer

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            clock.setdefault(key + ".start", []).append(time.perf_counter())
            try:
                return fn(*args, **kwargs)
            finally:
                clock.setdefault(key + ".end", []).append(time.perf_counter())
        return wrapper

    Previewer.measure = timed("preview", Previewer.measure)
    Previewer.layer = timed("layer", Previewer.layer)
    Previewer.build = timed("build", Previewer.build)
    jobs.quality = timed("accuracy", jobs.quality)  # the window's jobs call them (gui/qt_jobs.py)
    jobs.init_comparison = timed("inits", jobs.init_comparison)
    jobs.init_accuracies = timed("init_accuracy", jobs.init_accuracies)  # the centroid tab's accuracy per init
    win.layer_view.show_preview = timed("draw_histogram", win.layer_view.show_preview)
    win.centroids.show_comparison = timed("draw_centroids", win.centroids.show_comparison)
    win.preview.show_results = timed("draw_preview", win.preview.show_results)


def host_reference(loaded, layer: str) -> dict:
    """How fast this host is right now: the engine's re-measurement of ``layer`` at new amounts, on this
    thread with nothing else running (a fresh Previewer; its sweep state built first, not timed)."""
    from explorer.engine.measure.preview import Previewer
    from explorer.engine.plan import Plan

    pv = Previewer(loaded)
    out = {}
    for kind, quant in (("prune", None), ("kmeans", {"method": "kmeans", "bits": 5})):
        def plan(amount):
            entry = {"prune": {"amount": amount}}
            if quant:
                entry["quantize"] = quant
            return Plan.from_dict({"version": 1, "layers": {layer: entry}})

        pv.measure(plan(0.5))  # builds the sweep state
        times = []
        for amount in (0.42, 0.44, 0.46, 0.48, 0.52):  # the same k-means bucket count as 0.5
            t0 = time.perf_counter()
            pv.measure(plan(amount))
            times.append((time.perf_counter() - t0) * 1000)
        out[kind] = statistics.median(times)
    return out


def _spin(parent: int) -> None:
    """A busy loop (another program's load on the host); ends when the benchmark's process is gone, however
    it ended (checked every ~0.1 s)."""
    while os.getppid() == parent:
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            pass


def start_load(n: int) -> list:
    import multiprocessing

    procs = [multiprocessing.get_context("spawn").Process(target=_spin, args=(os.getpid(),), daemon=True)
             for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def release(win, percent: int) -> float:
    """Move the sparsity slider to ``percent`` and release it; returns the release time."""
    win.controls.sparsity.setValue(percent)
    t0 = time.perf_counter()
    win.controls.sparsity._slider.sliderReleased.emit()
    return t0


def after(times, t0):
    return next((t for t in times if t >= t0), None)


def ms(x) -> str:
    return "–" if x is None else f"{x * 1000:.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="resnet18",
                    help="resnet18 (default; 11.7 M parameters) or vgg16 (138.4 M; use few --images)")
    ap.add_argument("--res", type=int, default=224, help="input resolution (default 224)")
    ap.add_argument("--images", type=int, default=256, help="random eval images (default 256)")
    ap.add_argument("--rounds", type=int, default=3, help="slider releases per condition (default 3)")
    ap.add_argument("--layer", help="the layer whose slider is moved (default: the largest, layer4.1.conv2 "
                    "with 2,359,296 weights)")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="run N busy processes beside the window (a loaded host; default 0)")
    ap.add_argument("--why", metavar="FILE", help="write every thread's stack whenever the event loop stalls "
                    "for more than 50 ms to FILE, and summarise where the stalls were (faulthandler reads the other "
                    "threads' frames while they run: a rare crash of the benchmark is possible with this option)")
    args = ap.parse_args(argv)
    os.environ["GUI_LATENCY_RES"] = str(args.res)
    os.environ["GUI_LATENCY_IMAGES"] = str(args.images)
    if "QT_QPA_PLATFORM" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    load = start_load(args.load)
    try:
        return run(args, load)
    finally:
        for p in load:
            p.terminate()


def run(args, load) -> int:
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from explorer.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])  # noqa: F841 (kept alive)
    win = MainWindow(settings=QSettings(str(Path(os.environ.get("TMPDIR", "/tmp")) / "gui-latency.ini"),
                                        QSettings.IniFormat))
    clock: dict = {}
    instrument(win, clock)
    win.show()
    why = open(args.why, "w") if args.why else None
    beat = Heartbeat(why=why)
    beat.phase = "load"
    beat.start()

    def settled():
        return win.idle() and not win.controls._timer.isActive()

    rss_before = _status_mb("VmRSS")
    t = time.perf_counter()
    win.open_model(f"gui_latency:{args.model}_bundle")
    wait_until(lambda: win.session.loaded is not None and win.session.results is not None and settled())
    load_s = time.perf_counter() - t
    if win.last_error:
        print("error:", win.last_error)
        return 1
    info = win.session.info
    if args.layer:
        if args.layer not in win.session.layer_names:
            print(f"no layer {args.layer!r}; layers: {', '.join(win.session.layer_names)}")
            return 1
        win.session.select([args.layer])
        wait_until(settled)
    layer = win.session.current
    beat.phase = "host reference"  # measured on this (the GUI) thread: not a stall of the window's
    host = host_reference(win.session.loaded, layer)
    print(f"model: {MODELS[args.model][0]}, {info.total_params:,} parameters, {len(info.layers)} layers; input 1x3x{args.res}x"
          f"{args.res}; eval data {args.images} random images; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; opened and measured in {load_s:.1f} s; selected layer {layer} "
          f"({info.layer(layer).weight_params:,} weights); {args.load} busy processes beside it")
    ref_weights = info.layer(layer).weight_params
    if args.model != "resnet18":  # the reference the quiet-host figures are for: a layer of ResNet-18's largest size
        from explorer.engine.model.loading import LoadedModel

        torch.manual_seed(0)
        own, host = host, host_reference(LoadedModel(nn.Sequential(nn.Conv2d(512, 512, 3, bias=False))), "0")
        ref_weights = 512 * 512 * 9
    beat.resume()  # ... so the next gap starts after them (they were counted as the next phase's first gap)
    if args.model != "resnet18":
        print(f"the selected layer alone (this thread): re-measured at a new amount in {own['prune']:.1f} ms pruned, "
              f"{own['kmeans']:.1f} ms + 5-bit k-means (median of 5; not prepared: a pass over its weights)")
    print(f"host reference (engine alone, this thread, nothing else of ours running): re-measuring a {ref_weights:,}-weight "
          f"layer at a new amount takes {host['prune']:.1f} ms pruned, {host['kmeans']:.1f} ms pruned + 5-bit k-means "
          "(median of 5); on a quiet host of this kind 4-6 and 7-10 ms — the window's numbers below scale with these")

    # 1. accuracy and k-means in the background: the centroid tab, then a release; the heartbeat runs.
    # The first time in a process pays one-time costs (numba loading its cached kernels holds the GIL);
    # the second round is the steady state.
    for phase, pct in (("first use", 40), ("background", 45)):
        beat.phase = phase
        win.tabs.setCurrentWidget(win.centroids)  # k-means of the three inits on the selected layer
        QTimer.singleShot(50, lambda p=pct: release(win, p))  # + size/MACs and accuracy of the new plan
        wait_until(lambda p=pct: win.controls.sparsity.value() == p and settled())
    win.tabs.setCurrentWidget(win.layer_view)
    wait_until(settled)

    # 2. latency of a release: with the window idle, then while the last release's accuracy still runs;
    # pruning only, then pruning + 5-bit k-means (Deep Compression's pipeline)
    rows = []
    offsets = (0.02, 0.08, 0.14)
    last_release = time.perf_counter()
    values = iter([50, 60, 70, 80, 90, 95, 30, 45, 65, 75, 85, 55, 35, 25, 15, 52, 62, 72, 82, 92, 97, 33, 47, 67])
    for condition in ("idle", "busy", "idle q", "busy q"):
        if condition == "idle q":
            wait_until(settled)
            win.controls.bits.setValue(5)
            win.controls.quant_on.setChecked(True)  # applies at once: 5-bit k-means, linear init
            wait_until(settled)
        beat.phase = condition
        for _ in range(args.rounds):
            if condition.startswith("idle"):
                wait_until(settled)
            else:  # the accuracy of the previous release must be running: its model built, the images going
                # through it; the release then comes 20, 80 or 140 ms into that (anywhere in a layer's work)
                prev = last_release
                wait_until(lambda: after(clock.get("accuracy.start", []), prev) is not None or settled())
                t_in = time.perf_counter()
                wait_until(lambda: time.perf_counter() - t_in >= offsets[len(rows) % 3])
                if settled():
                    print("note: the accuracy finished before the release; use more --images")
            before = (id(win.session.results), len(clock.get("draw_histogram.end", [])))
            mark = {}
            pct = next(values)
            t0 = last_release = release(win, pct)
            wait_until(lambda: id(win.session.results) != before[0]
                       and len(clock.get("draw_histogram.end", [])) > before[1])
            t_size = after(clock["draw_preview.end"], t0)
            t_hist = after(clock["draw_histogram.end"], t0)
            p0, p1 = after(clock["preview.start"], t0), after(clock["preview.end"], t0)
            l0, l1 = after(clock["layer.start"], t0), after(clock["layer.end"], t0)
            mark.update(pct=pct, condition=condition, size=t_size - t0, hist=t_hist - t0,
                        size_queue=p0 - t0, size_engine=p1 - p0, size_deliver=t_size - p1,
                        hist_queue=l0 - t0, hist_engine=l1 - l0, hist_deliver=t_hist - l1)
            rows.append(mark)
    beat.phase = "tail"
    wait_until(settled)
    beat.stop()

    # ------------------------------------------------------------------------------------ report
    def eng(key):
        starts, ends = clock.get(key + ".start", []), clock.get(key + ".end", [])
        spans = [e - s for s, e in zip(starts, ends)]
        return statistics.median(spans) if spans else None

    stall_open, n_open = beat.longest("load")
    stall_first, n_first = beat.longest("first use")
    stall_bg, n_bg = beat.longest("background")
    stall_rel = max(beat.longest(c)[0] for c in ("idle", "busy", "idle q", "busy q"))
    print()
    print("per release (ms):  condition  sparsity  release->size/MACs = queue + engine + deliver   "
          "release->histogram = queue + engine + deliver")
    for r in rows:
        print(f"  {r['condition']:>6} {r['pct']:>3}%   {ms(r['size']):>7} = {ms(r['size_queue'])} + "
              f"{ms(r['size_engine'])} + {ms(r['size_deliver'])}   {ms(r['hist']):>7} = {ms(r['hist_queue'])} + "
              f"{ms(r['hist_engine'])} + {ms(r['hist_deliver'])}")
    print()
    print("engine calls, median wall time on a worker (ms): "
          + ", ".join(f"{k} {ms(eng(k))}" for k in ("preview", "layer", "build", "accuracy", "inits",
                                                    "init_accuracy")))
    print("GUI-thread redraws, median (ms): "
          + ", ".join(f"{k} {eng(k) * 1000:.1f}" for k in ("draw_preview", "draw_histogram", "draw_centroids")
                      if eng(k) is not None))
    print()
    conds = ("idle", "busy", "idle q", "busy q")
    med = {c: (statistics.median(r["size"] for r in rows if r["condition"] == c),
               statistics.median(r["hist"] for r in rows if r["condition"] == c)) for c in conds}
    worst = {c: (max(r["size"] for r in rows if r["condition"] == c) * 1000,
                 max(r["hist"] for r in rows if r["condition"] == c) * 1000) for c in conds}
    label = {"idle": "pruning, idle", "busy": "pruning, accuracy running", "idle q": "pruning + 5-bit k-means, idle",
             "busy q": "pruning + 5-bit k-means, accuracy running"}
    table = [
        ("longest event-loop stall, accuracy + k-means running", f"{stall_bg:.0f} ms ({n_bg} beats)",
         TARGETS["stall"], stall_bg),
        ("longest event-loop stall, the same the first time", f"{stall_first:.0f} ms ({n_first} beats)",
         TARGETS["stall"], stall_first),
        ("longest event-loop stall, during the releases below", f"{stall_rel:.0f} ms", TARGETS["stall"],
         stall_rel),
        ("longest event-loop stall, opening the model", f"{stall_open:.0f} ms ({n_open} beats)",
         TARGETS["stall"], stall_open),
    ] + [(f"release -> size/MACs, {label[c]} (median / worst)",
          f"{med[c][0] * 1000:.0f} / {worst[c][0]:.0f} ms", TARGETS["size"], med[c][0] * 1000) for c in conds] + [
         (f"release -> histogram, {label[c]} (median / worst)",
          f"{med[c][1] * 1000:.0f} / {worst[c][1]:.0f} ms", TARGETS["histogram"], med[c][1] * 1000) for c in conds]
    width = max(len(t[0]) for t in table)
    print(f"| {'measure':<{width}} | measured | target | met |")
    print(f"| {'-' * width} | ---: | ---: | --- |")
    for name, shown, target, value in table:
        print(f"| {name:<{width}} | {shown} | <= {target:.0f} ms | {'yes' if value <= target else 'NO'} |")
    print()
    print(f"the window's process: peak resident {_status_mb('VmHWM'):.0f} MB, now {_status_mb('VmRSS'):.0f} MB "
          f"(before opening the model: {rss_before:.0f} MB; dense weights {info.total_params * 4 / 1e6:.0f} MB; the "
          "engine's own peak, step by step: benchmarks/large_model_memory.py)")
    if why is not None:
        why.close()
        summarise_stalls(args.why)
    win.close()
    return 0


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB; nan where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return float("nan")


def summarise_stalls(path) -> None:
    """The innermost frame of each thread in each stall dump, most frequent first."""
    text = Path(path).read_text()
    dumps = [d for d in text.split("Timeout (") if d.strip() and "Not a stall" not in d]
    seen = collections.Counter()
    for dump in dumps:
        tail = [ln for ln in dump.splitlines() if ln.startswith("Stall of ")]
        if tail:
            print(f"  {tail[-1]}: " + "; ".join(
                " ".join(ln.strip().split()[1:]).replace(str(ROOT) + "/", "")
                .replace(".venv/lib/python3.11/site-packages/", "")
                for block in dump.split("\nThread ")[1:]
                for ln in block.splitlines()[1:2] if ln.strip().startswith("File ")))
        for block in dump.split("\nThread ")[1:]:
            lines = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("File ")]
            if lines:
                where = " ".join(lines[0].split()[1:]).replace(str(ROOT) + "/", "")
                seen[where.replace(".venv/lib/python3.11/site-packages/", "")] += 1
    print(f"\n{len(dumps)} stalls over 50 ms (stacks in {path}); innermost frames seen in them:")
    for where, count in seen.most_common(8):
        print(f"  {count:>3}  {where}")


if __name__ == "__main__":
    raise SystemExit(main())
