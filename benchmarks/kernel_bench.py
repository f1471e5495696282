"""Benchmark the compression kernels against their peers, all measured in the same run.

    .venv/bin/python benchmarks/kernel_bench.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/kernel_bench.py --quick    # n <= 1e6, smaller streams (for a smoke test)

Prints markdown tables and the machine they were measured on:

1. 1-D k-means (``explorer.engine.methods.kmeans.kmeans_1d``) against scikit-learn ``KMeans`` with the same
   initial centroids, ``n_init=1``, ``algorithm="lloyd"`` and ``tol=0``; both move an empty cluster to the
   value farthest from its centre. Quality: the inertia of ours run to convergence (its default) against
   scikit-learn's at its default ``max_iter`` (300), from the linear, density and Forgy inits, on 1e6
   Laplace values (scale 0.02, seed 0) at k = 32 and 256, on digits-cnn's fc1 as its sample plan
   quantizes it (the 5% that survive pruning, 5 bits: 31 centroids beside the reserved zero) and on all of
   fc1 at k = 32; also both at 50 iterations, where they should be the same iterations. Speed: the
   density init (quantiles) on Laplace-distributed values (trained weights are closer to Laplace than to
   Gaussian) with the same ``max_iter`` (50) for both. Time is the best of 3 runs for ours, one run for
   scikit-learn.
2. Entropy coding of real index and gap streams (a sample model with Deep Compression's plan, and a
   VGG-16 fc6-sized random layer pruned 90% with 5-bit linear k-means): our canonical Huffman and
   rANS (``explorer.engine.storage.entropy``) against the Shannon entropy, ``dahuffman`` (pure Python, timed
   on a subsample), zlib and lzma (on one byte per symbol).
3. Compressing a VGG-16-shaped model (random weights, 138 M weights) with 90% pruning and 5-bit
   linear k-means through ``explorer.engine.compress``, then encoding every stream to bytes.
"""

from __future__ import annotations

import argparse
import lzma
import os
import platform
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from explorer.engine.methods.kmeans import kmeans_1d  # noqa: E402
from explorer.engine.storage import bitstream, entropy  # noqa: E402
from explorer.engine.storage.coding import entropy_bits, gap_stream, huffman_code_lengths  # noqa: E402

MAX_ITER = 50
SKLEARN_LIMIT_S = 60.0


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba
    import sklearn
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores{mem}; {platform.system()} {platform.machine()}; "
            f"Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
            f"scikit-learn {sklearn.__version__}, torch {torch.__version__}")


def best_of(fn, reps=3):
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


# ------------------------------------------------------------------------------------------ k-means


def fc1_weights() -> tuple[np.ndarray, np.ndarray]:
    """digits-cnn's fc1 weights: all of them, and those its sample plan keeps (95% pruned) in position
    order, as ``quantize_kmeans`` clusters them."""
    from explorer.engine.methods.prune import magnitude_mask
    from explorer.engine.model.loading import load_model

    w = load_model("digits-cnn").model.fc1.weight.detach()
    keep = magnitude_mask(w, 0.95).reshape(-1)
    flat = w.reshape(-1).to(torch.float64).numpy()
    return flat, flat[keep]


def bench_kmeans_quality(n: int) -> None:
    from sklearn.cluster import KMeans

    sk_iter = 300  # scikit-learn's default max_iter
    x = np.random.default_rng(0).laplace(scale=0.02, size=n)
    fc1, survivors = fc1_weights()
    cases = [(f"Laplace {n:.0e}, k = 32", x, 32), (f"Laplace {n:.0e}, k = 256", x, 256),
             (f"digits-cnn fc1 pruned 95%, 5 bits ({survivors.size:,} survivors, k = 31)", survivors, 31),
             (f"digits-cnn fc1 unpruned ({fc1.size:,} weights), k = 32", fc1, 32)]
    print(f"\n### 1-D k-means quality: ours to convergence vs scikit-learn KMeans (same init, n_init=1, "
          f"max_iter={sk_iter}, tol=0)\n")
    print("| data | init | ours: iterations | ours (ms) | ours inertia | sklearn: iterations | sklearn (s) | "
          "sklearn inertia | ours / sklearn − 1 | both at 50 iterations: ours / sklearn − 1 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    kmeans_1d(x[:100_000], 8)  # compile the kernels outside the timings
    for name, data, k in cases:
        for init in ("linear", "density", "forgy"):
            t_ours, ours = best_of(lambda: kmeans_1d(data, k, init=init))
            init_c = ours.initial[:, None]
            t = time.perf_counter()
            km = KMeans(init_c.shape[0], init=init_c, n_init=1, max_iter=sk_iter, tol=0.0,
                        algorithm="lloyd").fit(data[:, None])
            t_sk = time.perf_counter() - t
            ours50 = kmeans_1d(data, k, init=init, max_iter=MAX_ITER)
            km50 = KMeans(init_c.shape[0], init=init_c, n_init=1, max_iter=MAX_ITER, tol=0.0,
                          algorithm="lloyd").fit(data[:, None])
            converged = "" if km.n_iter_ < sk_iter else " (cap)"
            print(f"| {name} | {init} | {ours.n_iter:,} | {t_ours * 1e3:.1f} | {ours.inertia:.6g} | "
                  f"{km.n_iter_}{converged} | {t_sk:.1f} | {km.inertia_:.6g} | "
                  f"{(ours.inertia / km.inertia_ - 1) * 100:+.4f}% | "
                  f"{(ours50.inertia / km50.inertia_ - 1) * 100:+.4f}% |", flush=True)


def bench_kmeans(sizes, ks) -> None:
    from sklearn.cluster import KMeans

    print("\n### 1-D k-means speed: ours vs scikit-learn KMeans (same density (quantile) init, n_init=1, max_iter=50, tol=0), Laplace data\n")
    print("| n | k | ours (ms) | iters | sklearn (ms) | iters | speed-up | inertia ours / sklearn − 1 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    kmeans_1d(rng.laplace(size=100_000), 8)  # compile the kernels outside the timings
    for n in sizes:
        x = rng.laplace(scale=0.02, size=n)
        per_k_sklearn = None  # seconds per (k * iteration), to predict the next run
        for k in ks:
            init = kmeans_1d(x, k, init="density", max_iter=0).initial
            t_ours, ours = best_of(lambda: kmeans_1d(x, k, init="density", max_iter=MAX_ITER))
            assert np.allclose(ours.initial, init)
            predicted = per_k_sklearn * k * MAX_ITER if per_k_sklearn else 0.0
            if predicted > SKLEARN_LIMIT_S:
                print(f"| {n:.0e} | {k} | {t_ours * 1e3:.1f} | {ours.n_iter} | skipped (predicted "
                      f"{predicted:.0f} s > {SKLEARN_LIMIT_S:.0f} s) | | | |", flush=True)
                continue
            t = time.perf_counter()
            km = KMeans(k, init=init[:, None], n_init=1, max_iter=MAX_ITER, tol=0.0, algorithm="lloyd").fit(x[:, None])
            t_sk = time.perf_counter() - t
            per_k_sklearn = t_sk / (k * max(km.n_iter_, 1))
            rel = ours.inertia / km.inertia_ - 1.0
            print(f"| {n:.0e} | {k} | {t_ours * 1e3:.1f} | {ours.n_iter} | {t_sk * 1e3:.0f} | {km.n_iter_} | "
                  f"{t_sk / t_ours:.0f}x | {rel * 100:+.4f}% |", flush=True)


# ------------------------------------------------------------------------------------------ streams


def _streams_of(tensor_result):
    """The index and gap streams (symbols, alphabet) of one compressed tensor as its coded stage stores
    them (fillers included)."""
    st = tensor_result.sizes.stages["coded"]
    q = tensor_result.quant
    keep = np.ones(tensor_result.numel, bool) if tensor_result.mask is None else tensor_result.mask
    out = {}
    if st["format"] == "gaps":
        b = st["gap_bits"]
        gaps, fill = gap_stream(np.flatnonzero(keep), b)
        pos = np.cumsum(gaps) - 1
        out["gaps"] = (gaps, 2 ** b, f"{b}-bit gaps")
        codes = q.codes[pos].copy()
        codes[fill] = q.zero_code
        out["index"] = (codes, q.alphabet_size, f"{q.bits}-bit indices, gap storage")
    elif st["format"] == "bitmask":
        out["index"] = (q.codes[keep], q.alphabet_size, f"{q.bits}-bit indices, bitmask storage")
    else:
        out["index"] = (q.codes.copy(), q.alphabet_size, f"{q.bits}-bit indices, dense storage")
    return out


def _gap_streams(keep, q):
    """Deep Compression's sparse storage of the same tensor, whatever the accounting chose: b-bit relative
    indices (b minimising the raw bits, fillers included) and the survivors' codes."""
    pos0 = np.flatnonzero(keep)
    b = min(range(1, 9), key=lambda bb: gap_stream(pos0, bb)[0].size * bb)
    gaps, fill = gap_stream(pos0, b)
    pos = np.cumsum(gaps) - 1
    codes = q.codes[pos].copy()
    codes[fill] = q.zero_code
    return {"gaps": (gaps, 2 ** b, f"{b}-bit gaps (sparse storage)"),
            "index": (codes, q.alphabet_size, f"{q.bits}-bit indices of the gap-stored entries")}


def collect_streams(quick: bool) -> list:
    from explorer.engine import Plan, compress, load_model
    from explorer.engine.methods.prune import magnitude_mask
    from explorer.engine.methods.quantize import quantize_kmeans
    from explorer.engine.samples import SAMPLES_DIR

    streams = []
    loaded = load_model("digits-mlp")
    res = compress(loaded.model, Plan.load(SAMPLES_DIR / "digits-mlp.deep-compression.plan.json"),
                   loaded.example_input)
    largest = max((t for layer in res.layers.values() for t in layer.tensors), key=lambda t: t.numel)
    for kind, (s, A, what) in _streams_of(largest).items():
        streams.append((f"digits-mlp {largest.name} (90% pruned, 5-bit k-means): {what}", s, A))
    for kind, (s, A, what) in _gap_streams(largest.mask, largest.quant).items():
        streams.append((f"digits-mlp {largest.name}: {what}", s, A))

    torch.manual_seed(0)
    shape = (1024, 6272) if quick else (4096, 25088)
    w = torch.randn(shape) * 0.01
    mask = magnitude_mask(w, 0.9)
    q = quantize_kmeans(w, mask, bits=5, init="linear")
    from explorer.engine.compress import TensorResult
    from explorer.engine.storage.size import tensor_sizes
    tr = TensorResult("fc6.weight", shape, mask, q, tensor_sizes(w.numel(), mask, q.tensor_code()), 0)
    name = "VGG-16 fc6" if not quick else "fc (1024x6272)"
    for kind, (s, A, what) in _streams_of(tr).items():
        streams.append((f"{name}, random, 90% pruned + 5-bit linear k-means: {what}", s, A))
    if tr.sizes.stages["coded"]["format"] != "dense":
        # the same layer's codes stored dense: the zero code has p = 0.9 (where Huffman wastes most)
        streams.append((f"{name}, same codes stored dense (zero code p = 0.9)", q.codes, q.alphabet_size))
    for kind, (s, A, what) in _gap_streams(mask, q).items():
        streams.append((f"{name}: {what}", s, A))
    return streams


def _rate(n, seconds):
    return f"{n / seconds / 1e6:.0f}" if seconds > 0 else "-"


def bench_streams(quick: bool) -> None:
    print("\n### Entropy coding of real streams (bytes; table included; ± vs the Shannon entropy H)\n")
    print("Throughput in M symbols/s (best of 3). dahuffman is pure Python: its rates and size are measured on "
          "the first 200,000 symbols and its size (payload only: it stores no table) scaled up; zlib (level 9) and lzma (preset 6) compress "
          "one byte per symbol.\n")
    print("| stream | symbols | p(max) | H | Huffman (ours) | rANS (ours) | dahuffman | zlib-9 | lzma | "
          "Huffman enc / dec | rANS enc / dec | dahuffman enc / dec |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    import dahuffman

    huffman_encode = bitstream.huffman_encode
    huffman_decode = bitstream.huffman_decode
    small = np.arange(8) % 3
    huffman_decode(huffman_encode(small, huffman_code_lengths(np.bincount(small))),
                   huffman_code_lengths(np.bincount(small)), small.size)
    entropy.rans_decode(entropy.rans_encode(small, 3), 3, small.size)
    for name, s, A in collect_streams(quick):
        s = np.ascontiguousarray(s, np.int64)
        n = s.size
        c = np.bincount(s, minlength=A)
        H = entropy_bits(c) / 8
        L = huffman_code_lengths(c)
        t_he, coded = best_of(lambda: huffman_encode(s, L))
        t_hd, back = best_of(lambda: huffman_decode(coded, L, n))
        assert np.array_equal(back, s)
        huff = len(coded) + A  # one byte of code length per alphabet symbol
        t_re, rc = best_of(lambda: entropy.rans_encode(s, A))
        t_rd, rback = best_of(lambda: entropy.rans_decode(rc, A, n))
        assert np.array_equal(rback, s) and len(rc) == entropy.coded_bytes(c, A)
        sub = s[:200_000].tolist()
        codec = dahuffman.HuffmanCodec.from_data(sub)
        t = time.perf_counter()
        dcoded = codec.encode(sub)
        t_de = time.perf_counter() - t
        t = time.perf_counter()
        codec.decode(dcoded)
        t_dd = time.perf_counter() - t
        dsize = len(dcoded) * n / len(sub)
        raw8 = s.astype(np.uint8).tobytes()
        z = len(zlib.compress(raw8, 9))
        xz = len(lzma.compress(raw8))

        def vs(size):
            return f"{size:,.0f} ({(size / H - 1) * 100:+.2f}%)" if H > 0 else f"{size:,.0f}"
        print(f"| {name} | {n:,} | {c.max() / n:.2f} | {H:,.0f} | {vs(huff)} | {vs(len(rc))} | {vs(dsize)} | "
              f"{vs(z)} | {vs(xz)} | {_rate(n, t_he)} / {_rate(n, t_hd)} | {_rate(n, t_re)} / {_rate(n, t_rd)} | "
              f"{_rate(len(sub), t_de)} / {_rate(len(sub), t_dd)} |", flush=True)


# ------------------------------------------------------------------------------------------ VGG-16


def vgg16() -> nn.Module:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    layers += [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
               nn.Linear(4096, 1000)]
    return nn.Sequential(*layers)


def bench_vgg(quick: bool) -> None:
    from explorer.engine import compress
    from explorer.engine.plan import uniform_plan
    from explorer.engine.storage import fileformat

    torch.manual_seed(0)
    model = vgg16()
    if quick:  # keep the convolutions, shrink the classifier
        model[-5] = nn.Linear(512 * 7 * 7, 256)
        model[-3] = nn.Linear(256, 4096)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    plan = uniform_plan(prune={"amount": 0.9, "granularity": "element"},
                        quantize={"method": "kmeans", "bits": 5, "init": "linear", "max_iter": MAX_ITER})
    small = nn.Sequential(nn.Linear(300, 300))
    fileformat.encode(compress(small, plan), None)  # compile the kernels outside the timing
    t_compress, res = best_of(lambda: compress(model, plan), 2)
    t = time.perf_counter()
    coded = 0
    for layer in res.layers.values():  # the index and gap streams of every tensor, Huffman-coded
        for tr in layer.tensors:
            for s, A, _ in _streams_of(tr).values():
                L = huffman_code_lengths(np.bincount(s, minlength=A))
                coded += len(bitstream.huffman_encode(s, L))
    t_code = time.perf_counter() - t
    t = time.perf_counter()
    data = fileformat.encode(res, None)
    t_encode = time.perf_counter() - t
    b = res.bytes
    print(f"\n### VGG-16-shaped model ({weights / 1e6:.1f} M weights, random), 90% pruned + 5-bit linear k-means\n")
    print("| step | seconds (compress: best of 2) |")
    print("| --- | ---: |")
    print(f"| `compress()`: prune (magnitude), k-means, codes, size accounting of every layer | {t_compress:.2f} |")
    print(f"| streams built (gaps, fillers, indices) and Huffman-coded, every layer | {t_code:.2f} |")
    print(f"| **quantize + code (the two rows above)** | **{t_compress + t_code:.2f}** |")
    print(f"| (for reference) whole `fileformat.encode()` without a LoadedModel: also saves the architecture "
          f"as a TorchScript archive and zlib-compresses it | {t_encode:.2f} |")
    print(f"\nSizes: dense {b['dense']:,} B → coded {b['coded']:,} B (accounting); file {len(data):,} B "
          f"({b['dense'] / len(data):.1f}x).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--only", choices=["kmeans", "streams", "vgg"], action="append")
    args = ap.parse_args(argv)
    only = set(args.only or ["kmeans", "streams", "vgg"])
    print(f"Machine: {machine()}; torch threads {torch.get_num_threads()}")
    if "kmeans" in only:
        bench_kmeans_quality(10**5 if args.quick else 10**6)
        bench_kmeans([10**5, 10**6] if args.quick else [10**5, 10**6, 10**7], [16, 32, 256])
    if "streams" in only:
        bench_streams(args.quick)
    if "vgg" in only:
        bench_vgg(args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
