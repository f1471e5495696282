"""Fast kernels against simple references: 1-D k-means (sorted and bucket paths), the magnitude mask
without a sort, the size accounting's one-pass histograms, and the rANS entropy coder."""

import numpy as np
import pytest
import torch

from explorer.engine.errors import CompressionError
from explorer.engine.methods.kmeans import kmeans_1d, lloyd_reference
from explorer.engine.methods.prune import keep_count, magnitude_mask, threshold_for
from explorer.engine.storage import entropy
from explorer.engine.storage.coding import (entropy_bits, gap_histogram, gap_histograms_of_keys, gap_histograms_of_mask,
                                            huffman_code_lengths)


def _stable_sort_mask(w: torch.Tensor, amount) -> np.ndarray:
    """The definition: the keep_count first entries of a stable sort by descending |w|."""
    flat = w.detach().reshape(-1).abs().to(torch.float64).numpy()
    k = keep_count(flat.size, amount)
    mask = np.zeros(flat.size, bool)
    mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask


# ------------------------------------------------------------------------------------------ k-means


@pytest.mark.parametrize("method", ["sorted", "buckets"])
@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_paths_match_plain_lloyd(method, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.laplace(0, 0.05, 1500), rng.normal(0.3, 0.1, 500)])
    for init in ("linear", "density", "forgy"):
        res = kmeans_1d(x, 8, init=init, max_iter=300, seed=seed, method=method)
        ref_c, ref_labels = lloyd_reference(x, res.initial, max_iter=300)
        np.testing.assert_allclose(res.centroids, ref_c, rtol=0, atol=1e-12)
        assert np.array_equal(res.labels, ref_labels)
        assert res.inertia == pytest.approx(float(((x - res.centroids[res.labels]) ** 2).sum()), rel=1e-12)


def test_bucket_path_equals_sorted_path_on_large_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, 60_000) * 0.01
    for k in (16, 255):
        a = kmeans_1d(x, k, method="sorted")
        b = kmeans_1d(x, k, method="buckets")
        # (to rounding of the sums: centroids near zero are differences of large prefix sums)
        np.testing.assert_allclose(b.centroids, a.centroids, rtol=1e-12, atol=1e-14)
        assert np.array_equal(a.labels, b.labels)
        assert b.inertia == pytest.approx(a.inertia, rel=1e-9)


def test_bucket_path_weighted_matches_repeated_values():
    rng = np.random.default_rng(4)
    vals = rng.normal(size=40_000)
    reps = rng.integers(1, 4, vals.size)
    a = kmeans_1d(vals, 12, weights=reps.astype(float), method="buckets")
    b = kmeans_1d(np.repeat(vals, reps), 12, method="sorted")
    np.testing.assert_allclose(a.centroids, b.centroids, rtol=1e-10)
    assert a.inertia == pytest.approx(b.inertia, rel=1e-9)


@pytest.mark.parametrize("method", ["sorted", "buckets"])
def test_kmeans_adversarial_inputs(method):
    # all equal
    r = kmeans_1d(np.full(70_000, -0.5), 32, method=method)
    assert r.centroids.tolist() == [-0.5] and r.inertia == 0.0 and not r.labels.any()
    # k larger than the distinct values (many copies, so the bucket path is asked)
    x = np.repeat([3.0, -1.0, 2.0, 2.5], 20_000)
    r = kmeans_1d(x, 256, method=method)
    assert r.centroids.tolist() == [-1.0, 2.0, 2.5, 3.0] and r.inertia == 0.0
    assert np.array_equal(r.centroids[r.labels], x)
    # everything pruned: nothing to cluster
    r = kmeans_1d(np.zeros(0), 16, method=method)
    assert r.centroids.size == 0 and r.labels.size == 0 and r.inertia == 0.0
    # one huge outlier: the buckets cannot spread the data, the answer is still exact Lloyd
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 0.01, 50_000), [1e6]])
    r = kmeans_1d(x, 8, method=method, max_iter=100)
    ref = kmeans_1d(x, 8, method="sorted", max_iter=100)
    np.testing.assert_allclose(r.centroids, ref.centroids)
    # NaN / inf rejected with a clear error
    for bad, word in ((np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")):
        x = np.append(np.linspace(0, 1, 100_000), bad)
        with pytest.raises(CompressionError, match=word):
            kmeans_1d(x, 4, method=method)


def test_kmeans_rejects_bad_arguments():
    with pytest.raises(CompressionError, match="method"):
        kmeans_1d(np.ones(3), 2, method="magic")
    with pytest.raises(CompressionError, match="weights"):
        kmeans_1d(np.ones(3), 2, weights=[1.0, -1.0, 1.0])
    with pytest.raises(CompressionError, match="k >= 1"):
        kmeans_1d(np.ones(3), 0)


def test_density_init_same_on_both_paths():
    x = np.random.default_rng(6).normal(size=50_001)
    a = kmeans_1d(x, 16, init="density", max_iter=0, method="sorted")
    b = kmeans_1d(x, 16, init="density", max_iter=0, method="buckets")
    assert np.array_equal(a.initial, b.initial)


# ------------------------------------------------------------------------------------------ pruning


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_magnitude_mask_is_the_stable_sort_mask(dtype):
    rng = np.random.default_rng(7)
    for trial in range(30):
        n = int(rng.integers(1, 400))
        vals = rng.integers(-4, 5, n) / 2 if trial % 2 else rng.normal(size=n)  # many ties when even
        w = torch.tensor(vals, dtype=torch.float32).to(dtype)
        for amount in (0.0, 0.5, 0.9, 0.99, int(rng.integers(0, n + 1))):
            assert np.array_equal(magnitude_mask(w, amount), _stable_sort_mask(w, amount))
            flat = w.abs().to(torch.float64).numpy()
            k = keep_count(n, amount)
            expect = 0.0 if k >= n else float(np.sort(flat)[n - k])
            assert threshold_for(w, amount) == expect


def test_magnitude_mask_nan_counts_as_smallest():
    w = torch.tensor([0.5, float("nan"), -2.0, 0.5, float("inf"), 0.0])
    for amount in range(7):
        assert np.array_equal(magnitude_mask(w, amount), _stable_sort_mask(w, amount))


# ------------------------------------------------------------------------------------------ size helpers


def test_one_pass_gap_histograms_equal_gap_histogram():
    rng = np.random.default_rng(8)
    for dens in (0.0, 0.001, 0.05, 0.5, 1.0):
        keep = rng.random(5000) < dens
        got = gap_histograms_of_mask(keep, (1, 3, 8))
        for b in (1, 3, 8):
            counts, fillers = gap_histogram(np.flatnonzero(keep), b)
            assert np.array_equal(got[b][0], counts) and got[b][1] == fillers



@pytest.mark.parametrize("n", [1, 63, 64, 65, 127, 128, 129, 4095, 9000])
def test_gap_histograms_at_block_edges_and_from_keys(n):
    """The pass reads 64 entries at a time: runs that cross blocks, blocks with nothing kept, gaps of
    4096 and more (listed, not counted), a last block shorter than 64, and the keys form (magnitude bit
    patterns, sign ignored) must all give gap_histogram's numbers."""
    rng = np.random.default_rng(n)
    masks = [np.zeros(n, bool), np.ones(n, bool), rng.random(n) < 0.5, rng.random(n) < 0.97,
             rng.random(n) < 0.002, (np.arange(n) % 64) >= 60, (np.arange(n) % 64) < 3]
    spikes = np.zeros(n, bool)
    spikes[[0, n - 1]] = True
    masks.append(spikes)
    for keep in masks:
        values = rng.uniform(-0.99, 0.99, n)
        values = np.where(keep, np.sign(values) + values, values).astype(np.float32)  # kept: |v| >= 1
        tmin = int(np.float32(1.0).view(np.uint32))
        by_keys = gap_histograms_of_keys(values.view(np.uint32), tmin, (1, 3, 12))
        by_mask = gap_histograms_of_mask(keep, (1, 3, 12))
        for b in (1, 3, 12):
            counts, fillers = gap_histogram(np.flatnonzero(keep), b)
            for got in (by_keys, by_mask):
                assert np.array_equal(got[b][0], counts) and got[b][1] == fillers, (n, b)

# ------------------------------------------------------------------------------------------ rANS


@pytest.mark.parametrize("p0", [0.3, 0.9, 0.999])
def test_rans_round_trip_and_exact_size(p0):
    rng = np.random.default_rng(9)
    n = 50_000
    s = np.where(rng.random(n) < p0, 0, rng.integers(1, 32, n))
    data = entropy.rans_encode(s, 32)
    c = np.bincount(s, minlength=32)
    assert len(data) == entropy.coded_bytes(c) == entropy.table_bytes(32) + entropy.payload_bytes(c)
    assert np.array_equal(entropy.rans_decode(data, 32, n), s)
    # within 2.3e-5 bit/symbol + 96 bits of the ideal code for the quantized frequencies
    f = entropy.quantize_frequencies(c)
    ideal = float((c[c > 0] * np.log2(entropy.M / f[c > 0])).sum())
    assert 8 * entropy.payload_bytes(c) <= ideal + 2.3e-5 * n + 96
    assert 8 * entropy.payload_bytes(c) <= entropy_bits(c) * 1.01 + 200  # near the entropy


def test_rans_beats_huffman_where_one_symbol_dominates():
    rng = np.random.default_rng(10)
    s = np.where(rng.random(100_000) < 0.95, 0, rng.integers(1, 16, 100_000))
    c = np.bincount(s, minlength=16)
    huffman_bytes = ((c * huffman_code_lengths(c)).sum() + 7) // 8 + 16
    assert entropy.coded_bytes(c) < 0.6 * huffman_bytes


def test_rans_edge_streams():
    assert entropy.rans_encode([], 4) == b"" and entropy.coded_bytes([0, 0, 0, 0]) == 0
    assert entropy.rans_decode(b"", 4, 0).size == 0
    for s in (np.zeros(1000, np.int64), np.array([3]), np.array([0, 1]), np.arange(256)):
        A = max(int(s.max()) + 1, 4)
        data = entropy.rans_encode(s, A)
        assert len(data) == entropy.coded_bytes(np.bincount(s, minlength=A), A)
        assert np.array_equal(entropy.rans_decode(data, A, s.size), s)
    # a single symbol costs nothing per symbol: the table and the 8-byte state only
    assert len(entropy.rans_encode(np.zeros(10**5, np.int64), 2)) == 4 + 8


def test_quantized_frequencies_sum_and_presence():
    rng = np.random.default_rng(11)
    for _ in range(50):
        c = rng.integers(0, 5, 300) * (rng.random(300) < 0.5)
        c[rng.integers(0, 300)] += int(rng.integers(1, 10**6))
        f = entropy.quantize_frequencies(c)
        assert f.sum() == entropy.M and np.array_equal(f > 0, c > 0)


def test_rans_refuses_corrupt_input():
    rng = np.random.default_rng(12)
    s = rng.integers(0, 8, 5000)
    data = entropy.rans_encode(s, 8)
    bad = []
    bad.append(data[:-4])  # truncated
    bad.append(data + b"\0\0\0\0")  # too long
    bad.append(data[:-1])  # not whole words
    flipped = bytearray(data)
    flipped[40] ^= 0x10  # payload bit flip
    bad.append(bytes(flipped))
    table = bytearray(data)
    table[0] ^= 1  # table no longer sums to M
    bad.append(bytes(table))
    for d in bad:
        with pytest.raises(ValueError):
            entropy.rans_decode(d, 8, s.size)
    with pytest.raises(entropy.EntropyError):
        entropy.rans_decode(data, 8, s.size + 1)
    with pytest.raises(entropy.EntropyError):
        entropy.rans_decode(b"\0" * 3, 8, 1)
    with pytest.raises(entropy.EntropyError):
        entropy.rans_decode(b"x", 8, 0)
    with pytest.raises(ValueError, match="symbols"):
        entropy.rans_encode([0, 9], 8)
