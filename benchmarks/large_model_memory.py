"""The engine's peak memory on VGG-16 (138.4 M parameters, random weights): what the window's engine work and a
save through the CLI's path hold at most, against the dense weights (target: under 3x).

Headless, in the order the window and the CLI do it: load the model through the factory the
window opens (``gui_latency:vgg16_bundle``), count its MACs, measure a plan (5-bit k-means on classifier.0, the
25088x4096 layer of 102.8 M weights, pruned 90 %), draw the layer's histogram and sorted magnitudes, measure it
ahead at the slider's 99 amounts, measure releases, build the compressed model and measure its accuracy on
the eval images, export the file as the window's Export does; then, in a process of its own as the CLI runs, compress and save the plan as
``explorer compress`` does (``compress(share=True)`` + ``fileformat.predicted_bytes`` + ``fileformat.save``),
checking the file's bytes equal the prediction.

Resident memory is read from /proc/self/status: the peak (VmHWM) is reset before each step (writing 5 to
/proc/self/clear_refs), so each step's own peak is seen; everything is reported above the baseline taken
before the model was built (the interpreter, torch, numba's kernels). torch's CPU allocations are in that
resident memory (tracemalloc does not see them).

    .venv/bin/python benchmarks/large_model_memory.py [--images 8] [--res 224]

Prints a table (not a test: nothing here asserts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the factory is 'gui_latency:vgg16_bundle'

LAYER = "classifier.0"


def status(field: str) -> int:
    """A /proc/self/status memory field, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(part: str, images: int, res: int) -> list:
    """Run one process's steps (``part``: "window" or "cli"); rows of (step, seconds, peak, resident after)
    above the baseline, and the dense bytes and file bytes."""
    os.environ["GUI_LATENCY_RES"] = str(res)
    os.environ["GUI_LATENCY_IMAGES"] = str(images)

    from explorer.engine.compress import compress
    from explorer.engine.measure.evaluate import quality
    from explorer.engine.measure.preview import Previewer, warm_up
    from explorer.engine.model.loading import load_model
    from explorer.engine.plan import Plan
    from explorer.engine.storage import fileformat

    warm_up()  # the kernels, as the window loads them before a model
    can_reset = reset_peak()
    base = status("VmRSS")
    rows = []  # (step, seconds, peak above baseline, resident after)

    def step(name, fn):
        reset_peak()
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        peak = status("VmHWM") if can_reset else None
        rows.append((name, dt, None if peak is None else peak - base, status("VmRSS") - base))
        print(f"  {part}: {name}: {dt:.1f} s", file=sys.stderr, flush=True)
        return out

    def plan(amount):
        return Plan.from_dict({"version": 1, "layers": {LAYER: {"prune": {"amount": amount},
                                                                "quantize": {"method": "kmeans", "bits": 5}}}})

    loaded = step("load the model (factory)", lambda: load_model("gui_latency:vgg16_bundle"))
    info = {"dense": sum(p.numel() * p.element_size() for p in loaded.model.parameters()),
            "params": sum(p.numel() for p in loaded.model.parameters()), "base": base,
            "overall": None if can_reset else status("VmHWM") - base}
    if part == "window":
        pv = Previewer(loaded)
        settings = plan(0.9).resolve(pv.names)[LAYER]
        step("count MACs (FlopCounterMode)", pv.macs_before)
        step("measure the plan (sizes, MACs)", lambda: pv.measure(plan(0.9)))
        step("layer view: histogram + sorted magnitudes", lambda: (pv.layer(LAYER, settings),
                                                                   pv.sorted_magnitudes(LAYER)))
        step("measure ahead: 99 slider amounts", lambda: pv.prepare(LAYER, settings))
        step("releases: 5 amounts measured", lambda: [pv.measure(plan(a)) for a in (0.5, 0.7, 0.8, 0.95, 0.9)])
        step("build + accuracy", lambda: quality(loaded, pv.build(plan(0.9), count=False).model, batch_size=4))
        with tempfile.TemporaryDirectory() as tmp:  # as the window's Export does it
            info["window_file"] = step("export the file (build + save)", lambda: fileformat.save(
                pv.build(plan(0.9)), Path(tmp) / "vgg16.cexp", loaded))
    else:  # as `explorer compress` does it: compress (sharing what the plan leaves), predict, save
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "vgg16.cexp"
            result = step("compress (the plan's weights, the rest shared)",
                          lambda: compress(loaded.model, plan(0.9), loaded.example_input, share=True))
            info["predicted"] = step("predict the file's bytes", lambda: fileformat.predicted_bytes(result, loaded))
            info["written"] = step("save the file", lambda: fileformat.save(result, out, loaded))
    return rows, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8, help="random eval images (default 8)")
    ap.add_argument("--res", type=int, default=224, help="input resolution (default 224)")
    ap.add_argument("--part", choices=("window", "cli"), help=argparse.SUPPRESS)  # one process's steps, as JSON
    args = ap.parse_args(argv)
    if args.part:
        rows, info = measure(args.part, args.images, args.res)
        print(json.dumps({"rows": rows, "info": info}))
        return 0
    parts = {}
    for part in ("window", "cli"):  # each in a process of its own, as the window and `explorer compress` run
        cmd = [sys.executable, __file__, "--part", part, "--images", str(args.images), "--res", str(args.res)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        parts[part] = json.loads(done.stdout.strip().splitlines()[-1])
    info = parts["cli"]["info"]
    dense = info["dense"]
    import torch

    mb = 1e6
    print()
    print(f"VGG-16: {info['params']:,} parameters, dense weights {dense / mb:.0f} MB; {args.images} eval images "
          f"{args.res}x{args.res}; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; baseline "
          f"resident {parts['window']['info']['base'] / mb:.0f} / {info['base'] / mb:.0f} MB (window / CLI "
          f"process, before the model)")
    same = info["written"] == info["predicted"] == parts["window"]["info"]["window_file"]
    print(f"saved file {info['written']:,} bytes, predicted {info['predicted']:,}, the window's export "
          f"{parts['window']['info']['window_file']:,} ({'equal' if same else 'DIFFERENT'})")
    print()
    print("| process | step | seconds | peak above baseline | x dense | resident after |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    overall = 0
    for part, label in (("window", "window's engine"), ("cli", "`explorer compress`")):
        rows = parts[part]["rows"]
        for name, dt, peak, after in rows:
            shown = "–" if peak is None else f"{peak / mb:.0f} MB | {peak / dense:.2f}"
            print(f"| {label} | {name} | {dt:.1f} | {shown} | {after / mb:.0f} MB |")
        top = parts[part]["info"]["overall"]
        top = max(r[2] for r in rows) if top is None else top
        overall = max(overall, top)
        print(f"| {label} | **its peak** | {sum(r[1] for r in rows):.1f} | {top / mb:.0f} MB | {top / dense:.2f} | |")
    print()
    print(f"engine's peak memory: {overall / dense:.2f}x the dense weights (target < 3x): "
          f"{'met' if overall < 3 * dense else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
