"""A full sparsity sweep of a ResNet-18-shaped model, in this process and on a local Ray runtime.

ResNet-18 (11.7M parameters, seeded random weights; the architecture of ``benchmarks/gui_latency.py``) and 64
random RxR images without labels (so each point's metric is the agreement with the uncompressed model): every
one of its 21 layers at each of the scan's 11 sparsities, the others untouched — 231 points, each a prune of
one layer, the preview's exact size and the 64 images through the pruned model. Three runs, the cache cleared
before each:

- in-process, torch's threads (one per core): what ``compression-explorer sensitivity`` does by default;
- in-process, one torch thread: one worker's rate, the unit the scaling is said in;
- ``--ray``: a local Ray runtime of this machine's cores, one CPU (one torch thread) per job; its start-up
  (runtime and the workers' first setup: imports, the model fetched from the object store, the previewer
  built) timed apart from the sweep.

Prints the wall times, points per second and per second per worker, and checks that every run measured the
same points. On a cluster the sweep's rate grows with the workers: points/s/worker x workers, until the
driver's share (scheduling, ~1 ms a job) or the object store's one copy of the model per node is what costs.

    .venv/bin/python benchmarks/sensitivity.py [--res 64] [--images 64] [--ray-address ADDRESS]

Not a test: nothing here asserts but the equality of the results.
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

import torch  # noqa: E402

import gui_latency  # noqa: E402  (its ResNet-18)
from explorer.engine.executor import RayExecutor  # noqa: E402
from explorer.engine.model.data import EvalData  # noqa: E402
from explorer.engine.model.loading import load_model  # noqa: E402
from explorer.engine.sensitivity import scan  # noqa: E402


def resnet18_unlabelled():
    """Factory: ResNet-18 with seeded random weights and N random RxR images without labels (R, N from the
    environment variables SENS_RES and SENS_IMAGES)."""
    res, n = int(os.environ.get("SENS_RES", "64")), int(os.environ.get("SENS_IMAGES", "64"))
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    images = torch.randn(n, 3, res, res, generator=g)
    return {"model": gui_latency.ResNet18().eval(), "example_input": images[:1].clone(),
            "eval_data": EvalData(images, None, f"{n} random {res}x{res} images")}


def sweep(loaded, executor=None):
    scan.CACHE.clear()
    t = time.perf_counter()
    points = scan.sensitivity(loaded, kinds=("sparsity",), limit=None, executor=executor)
    return points, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--ray-address", help="join this cluster instead of starting a local runtime")
    args = ap.parse_args()
    os.environ["SENS_RES"], os.environ["SENS_IMAGES"] = str(args.res), str(args.images)
    loaded = load_model("sensitivity:resnet18_unlabelled")
    n_layers = len(scan.Previewer(loaded).names)
    print(f"ResNet-18 (random weights), {args.images} random {args.res}x{args.res} images, {n_layers} layers x "
          f"{len(scan.SPARSITIES)} sparsities; {os.cpu_count()} cores, torch {torch.__version__}\n")
    rows = []
    base, t_all = sweep(loaded)
    rows.append(("in-process, torch threads", torch.get_num_threads(), None, t_all))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one, t_one = sweep(loaded)
    torch.set_num_threads(threads)
    rows.append(("in-process, 1 thread", 1, None, t_one))

    import ray  # the optional extra: this benchmark needs it

    ray.cloudpickle.register_pickle_by_value(gui_latency)  # the workers cannot import the benchmarks' modules
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    t = time.perf_counter()
    with RayExecutor(args.ray_address) as ex:
        workers = ex.workers
        # one point per worker first: each sets up (the key is the sweep's, so the sweep reuses that state)
        warm = scan.sensitivity(loaded, kinds=("sparsity",), layers="fc", limit=None,
                                sparsities=tuple(0.5 + 0.01 * i for i in range(workers)), executor=ex)
        t_start = time.perf_counter() - t
        on_ray, t_ray = sweep(loaded, ex)
    rows.append((f"Ray ({args.ray_address or 'local'})", workers, t_start, t_ray))
    same = [p.to_dict() for p in one] == [p.to_dict() for p in base] == [p.to_dict() for p in on_ray]
    n = len(base)
    print(f"{'run':<28} {'workers':>7} {'start s':>8} {'sweep s':>8} {'points/s':>9} {'pts/s/worker':>13} "
          f"{'vs in-process':>14}")
    for name, w, start, secs in rows:
        print(f"{name:<28} {w:>7} {'' if start is None else f'{start:.1f}':>8} {secs:>8.1f} {n / secs:>9.2f} "
              f"{n / secs / w:>13.2f} {t_all / secs:>13.2f}x")
    print(f"\n{n} points; the same in every run: {same}; warm-up point {warm[0].metric:.3f}")
    print(f"a cluster of W workers: about {n / t_ray / workers:.2f} x W points/s (this run's rate per worker)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
