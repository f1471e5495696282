import numpy as np
import pytest
import torch

from explorer.engine.errors import CompressionError
from explorer.engine.methods.kmeans import init_centroids, kmeans_1d, lloyd_reference
from explorer.engine.methods.prune import keep_count, magnitude_mask, threshold_for
from explorer.engine.methods.quantize import (compare_inits, quantize_binary, quantize_kmeans, quantize_tensor,
                                              quantize_ternary, quantize_uniform)
from explorer.engine.plan import QuantSettings


@pytest.mark.parametrize("init", ["forgy", "density", "linear", "kmeans++"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_plain_lloyd(init, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 0.05, 700), rng.normal(0.3, 0.1, 300)])
    res = kmeans_1d(x, 8, init=init, max_iter=500, seed=seed)
    ref_c, ref_labels = lloyd_reference(x, res.initial, max_iter=500)
    np.testing.assert_allclose(res.centroids, ref_c, atol=1e-12)
    assert np.array_equal(res.labels, ref_labels)
    assert res.inertia == pytest.approx(float(((x - res.centroids[res.labels]) ** 2).sum()), rel=1e-9)


def test_inits_follow_deep_compression():
    x = np.array([-1.0, 0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 2.0])
    np.testing.assert_allclose(init_centroids(x, 4, "linear"), [-1.0, 0.0, 1.0, 2.0])
    # density: the CDF inverted at 1/8, 3/8, 5/8, 7/8 -> sorted values number 1, 3, 5, 7 (0-based 0, 2, 4, 6)
    np.testing.assert_allclose(init_centroids(x, 4, "density"), [-1.0, 0.01, 0.03, 0.05])
    forgy = init_centroids(x, 4, "forgy", seed=3)
    assert len(set(forgy)) == 4 and set(forgy) <= set(x)
    assert np.array_equal(forgy, init_centroids(x, 4, "forgy", seed=3))  # seeded


def test_kmeans_edge_cases():
    assert kmeans_1d(np.full(50, 0.25), 16).centroids.tolist() == [0.25]
    few = kmeans_1d(np.array([1.0, 2.0, 2.0, 3.0]), 16)  # k larger than the distinct values
    assert few.centroids.tolist() == [1.0, 2.0, 3.0] and few.inertia == 0.0
    assert kmeans_1d(np.array([]), 4).centroids.size == 0
    with pytest.raises(CompressionError, match="NaN"):
        kmeans_1d(np.array([1.0, np.nan]), 2)
    with pytest.raises(CompressionError, match="infinite"):
        kmeans_1d(np.array([1.0, np.inf]), 2)


def test_keep_count_and_mask():
    assert keep_count(100, 0.9) == 10
    assert keep_count(10, 0.25) == 8  # ceil(7.5)
    assert keep_count(10, 3) == 7 and keep_count(10, 30) == 0
    w = torch.tensor([[0.1, -0.5, 0.2], [0.05, 0.9, -0.3]])
    mask = magnitude_mask(w, 0.5)
    assert mask.tolist() == [False, True, False, False, True, True]
    assert threshold_for(w, 0.5) == pytest.approx(0.3)
    assert magnitude_mask(w, 0).all()


def test_kmeans_quantization_keeps_pruned_weights_zero():
    torch.manual_seed(0)
    w = torch.randn(40, 30)
    mask = magnitude_mask(w, 0.8)
    q = quantize_kmeans(w, mask, bits=3, init="linear")
    dec = q.decoded.reshape(-1).numpy()
    assert np.all(dec[~mask] == 0)
    assert q.zero_code == 0 and q.codebook[0] == 0
    assert len(np.unique(dec[mask])) <= 2 ** 3 - 1  # one code is reserved for zero
    assert np.array_equal(q.codebook[q.codes], dec.astype(np.float32))  # codes decode exactly
    assert q.side_bits == 32 * (q.codebook.size - 1) and q.codebook.size <= 8


def test_init_comparison_reports_errors():
    torch.manual_seed(0)
    w = torch.randn(2000) * 0.05
    w[:10] = 1.0  # a few large weights
    res = compare_inits(w, None, bits=3)
    assert set(res) == {"forgy", "density", "linear"}
    for r in res.values():
        assert r["mse_final"] <= r["mse_initial"] + 1e-15
    # linear keeps a centroid near the large weights; density puts none there
    assert max(res["linear"]["final"]) > 0.9
    assert max(res["density"]["initial"]) < 0.5


def test_uniform_symmetric_and_asymmetric():
    w = torch.tensor([[-0.9, 0.0, 0.5], [0.25, 2.0, -0.1]])
    q = quantize_uniform(w, bits=3, symmetric=True)  # levels -3..3, scale 2/3
    np.testing.assert_allclose(q.decoded.numpy(), np.round(w.numpy() / (2 / 3)) * (2 / 3), atol=1e-6)
    assert q.zero_code == 3 and q.codes.max() <= 6
    pc = quantize_uniform(w, bits=3, symmetric=True, per_channel=True)
    assert pc.scales.shape == (2,) and pc.mse < q.mse
    a = quantize_uniform(w, bits=4, symmetric=False)
    assert a.codes.min() >= 0 and a.codes.max() <= 15
    assert float(a.decoded[0, 1]) == 0.0  # zero is exactly representable
    assert np.abs(a.decoded.numpy() - w.numpy()).max() <= (2.9 / 15) / 2 + 1e-6


def test_binary_and_ternary():
    w = torch.tensor([0.9, -0.8, 0.05, -0.02, 0.6])
    b = quantize_binary(w)
    alpha = float(w.abs().mean())
    np.testing.assert_allclose(b.decoded.numpy(), np.sign(w.numpy()) * alpha, rtol=1e-6)
    t = quantize_ternary(w)
    dec = t.decoded.numpy()
    assert dec[2] == 0 and dec[3] == 0 and dec[0] == -dec[1] > 0
    with pytest.raises(CompressionError, match="ternary"):
        quantize_binary(w, mask=np.array([True, True, False, True, True]))


def test_quantize_tensor_dispatch_and_bad_values():
    w = torch.randn(10, 10)
    assert quantize_tensor(w, QuantSettings(bits=4, method="uniform")).method == "uniform"
    w[0, 0] = float("nan")
    with pytest.raises(CompressionError, match="NaN"):
        quantize_tensor(w, QuantSettings(bits=4, method="kmeans"))


def test_unused_centroids_are_not_stored():
    w = torch.tensor([0.0, 0.1, 0.1, 0.1, 5.0, 5.0, 0.12])  # linear init on [0, 5] leaves most clusters empty
    q = quantize_kmeans(w, None, bits=4, init="linear", max_iter=0)
    assert q.codebook.size == len(np.unique(q.codes)) < 16
    assert q.side_bits == 32 * q.codebook.size
    assert np.array_equal(q.codebook[q.codes], q.decoded.numpy())


# every k the plan's bit-widths give: 2**b centroids, or 2**b - 1 beside the reserved zero of a pruned layer
ALL_K = sorted({2 ** b for b in range(1, 9)} | {2 ** b - 1 for b in range(1, 9)})


def test_kmeans_every_small_size_and_every_k():
    """Issue 12, item 6: the bucket path's bucket count took a negative shift for n <= 64 ("negative shift
    count"), which failed the window's preparation of digits-cnn's conv1 on every load. Every n from 1 to 300
    and every k, both paths, against the sorted path and plain Lloyd."""
    rng = np.random.default_rng(12)
    for n in range(1, 301):
        x = rng.laplace(0, 0.05, n)
        for k in ALL_K:
            buckets = kmeans_1d(x, k, method="buckets", max_iter=20)
            exact = kmeans_1d(x, k, method="sorted", max_iter=20)
            np.testing.assert_allclose(buckets.centroids, exact.centroids, rtol=0, atol=1e-12, err_msg=f"{n=} {k=}")
            assert np.array_equal(buckets.labels, exact.labels), (n, k)
            assert buckets.centroids.size == min(k, n)
            ref, labels = lloyd_reference(x, exact.initial, max_iter=20)
            np.testing.assert_allclose(exact.centroids, ref, atol=1e-12)


def test_sweep_prepares_and_measures_small_layers():
    """The window's background preparation (TensorSweep.prepare over the slider's amounts) and a release
    (measure) on layers of 1..300 weights: sizes equal compress_weight's."""
    from explorer.engine.compress import compress_weight
    from explorer.engine.measure.sweep import TensorSweep
    from explorer.engine.plan import validate_settings

    g = torch.Generator().manual_seed(5)
    for n in range(1, 301):
        w = torch.randn(n, generator=g) * 0.1
        sweep = TensorSweep(w)
        for bits in (1, 2, 3, 5, 8):  # (every k is in the test above; the sweep's own paths depend on n)
            quantize = {"bits": bits, "method": "kmeans", "max_iter": 10}
            sweep.prepare(validate_settings("t", {"prune": {"amount": 0.5}, "quantize": quantize}))
            for amount in (0.3, 0.9):
                s = validate_settings("t", {"prune": {"amount": amount}, "quantize": quantize})
                fast = sweep.measure(s)
                if fast is not None:
                    full = compress_weight("t", w, s)[0]
                    assert fast.sizes.to_dict() == full.sizes.to_dict(), (n, bits, amount)


# ------------------------------------------------------------------- k-means that wastes no code (issue 14)


def _pruned_survivors(n=6000, amount=0.9, seed=0):
    """The survivors of a magnitude-pruned Laplace layer: a gap around zero where a linear init puts
    centroids no survivor is near (the old code kept those clusters empty)."""
    x = np.random.default_rng(seed).laplace(0, 0.02, n)
    return x[np.abs(x) >= np.quantile(np.abs(x), amount)]


def _lloyd_keeping_empty_clusters(x, c, max_iter=50):
    """Lloyd as the code before issue 14 ran it: an empty cluster keeps its centroid."""
    for _ in range(max_iter):
        labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        c = np.array([x[labels == j].mean() if np.any(labels == j) else c[j] for j in range(c.size)])
    return np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)


def test_kmeans_leaves_no_cluster_empty():
    survivors = _pruned_survivors()
    dense = np.random.default_rng(1).laplace(0, 0.02, 50_000)
    for x, k in ((survivors, 31), (survivors, 255), (dense, 256)):
        for init in ("linear", "density", "forgy", "kmeans++"):
            for method in ("sorted", "buckets"):
                res = kmeans_1d(x, k, init=init, method=method)
                assert res.centroids.size == k and np.unique(res.labels).size == k, (x.size, k, init, method)
    # the case of the issue: a linear init over the pruned gap, whose clusters the old code kept empty
    old = _lloyd_keeping_empty_clusters(survivors, np.linspace(survivors.min(), survivors.max(), 31))
    assert np.unique(old).size < 31
    # many copies of few values, but at least k of them: every centroid gets one
    x = np.repeat(np.arange(40.0), np.arange(1, 41))
    assert np.unique(kmeans_1d(x, 32, init="linear").labels).size == 32


@pytest.mark.parametrize("init", ["linear", "density", "forgy"])
def test_kmeans_runs_to_convergence(init):
    for x, k in ((_pruned_survivors(), 31), (np.random.default_rng(2).laplace(0, 0.02, 4000), 32)):
        res = kmeans_1d(x, k, init=init)
        c, labels = lloyd_reference(x, res.centroids, max_iter=1)  # one more step moves nothing
        np.testing.assert_allclose(c, res.centroids, rtol=0, atol=1e-15)
        assert np.array_equal(labels, res.labels)
    assert res.n_iter > 50  # (Laplace, k = 32: 59 to 203 iterations; the old default stopped at 50)
    assert kmeans_1d(x, k, init=init, max_iter=7).n_iter == 7  # callers may still ask for fewer


@pytest.mark.parametrize("case", ["laplace", "pruned"])
def test_kmeans_inertia_matches_scikit_learn(case):
    from sklearn.cluster import KMeans

    x = np.random.default_rng(2).laplace(0, 0.02, 4000) if case == "laplace" else _pruned_survivors()
    k = 32 if case == "laplace" else 31
    for init in ("linear", "density", "forgy"):
        ours = kmeans_1d(x, k, init=init)
        km = KMeans(ours.initial.size, init=ours.initial[:, None], n_init=1, max_iter=3000, tol=0.0,
                    algorithm="lloyd").fit(x[:, None])
        assert km.n_iter_ < 3000  # scikit-learn converged too
        assert ours.inertia <= km.inertia_ * 1.001, (case, init, ours.inertia / km.inertia_ - 1)
        # the same iterations step by step, empty clusters moved the same way
        short = kmeans_1d(x, k, init=init, max_iter=20)
        km20 = KMeans(k, init=short.initial[:, None], n_init=1, max_iter=20, tol=0.0, algorithm="lloyd").fit(x[:, None])
        assert short.inertia == pytest.approx(km20.inertia_, rel=1e-9)


def test_kmeans_is_deterministic():
    x = np.random.default_rng(3).laplace(0, 0.02, 100_000)
    x = x[np.abs(x) > 0.01]
    for init in ("linear", "density", "forgy"):
        for method in ("sorted", "buckets"):
            a = kmeans_1d(x, 63, init=init, seed=5, method=method, snap=np.float32)
            b = kmeans_1d(x.copy(), 63, init=init, seed=5, method=method, snap=np.float32)
            assert a.centroids.tobytes() == b.centroids.tobytes() and np.array_equal(a.labels, b.labels)
    w = torch.from_numpy(np.random.default_rng(4).laplace(0, 0.02, (300, 200)).astype(np.float32))
    mask = magnitude_mask(w, 0.9)
    q1, q2 = quantize_kmeans(w, mask, bits=5), quantize_kmeans(w.clone(), mask, bits=5)
    assert q1.codebook.tobytes() == q2.codebook.tobytes() and np.array_equal(q1.codes, q2.codes)
    assert q1.codebook[0] == 0 and np.all(q1.decoded.reshape(-1).numpy()[~mask] == 0)  # the reserved zero


def test_kmeans_bucket_and_sorted_paths_agree_to_convergence():
    x = _pruned_survivors(n=400_000)  # 40,000 survivors: the bucket path is taken
    for init, k in (("linear", 31), ("density", 255), ("forgy", 63)):
        a = kmeans_1d(x, k, init=init, method="sorted")
        b = kmeans_1d(x, k, init=init, method="buckets")
        assert a.n_iter == b.n_iter
        np.testing.assert_allclose(b.centroids, a.centroids, rtol=1e-12, atol=1e-14)
        assert np.array_equal(a.labels, b.labels)
        assert b.inertia == pytest.approx(a.inertia, rel=1e-9)
