"""Huffman lengths, canonical codes, entropy, gap streams and stream costs, checked by hand and by property."""

import heapq
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.engine.storage.coders import stream_bits
from explorer.engine.storage.coding import (canonical_codes, entropy_bits, gap_entries, gap_histogram, gap_stream,
                                            huffman_code_lengths)
from explorer.engine.storage.entropy import coded_bytes

SETTINGS = settings(max_examples=60, deadline=None)
count_lists = st.lists(st.integers(0, 1000), min_size=1, max_size=40)


def reference_huffman_cost(counts):
    """Independent Huffman cost: the sum of the weights of all merged nodes (heapq)."""
    heap = [c for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]  # one symbol: one bit each
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def naive_gap_stream(positions, b):
    """Entry by entry, the way a writer would walk the survivors."""
    M = 2 ** b - 1
    gaps, filler, prev = [], [], -1
    for p in positions:
        d = p - prev
        while d > M:
            gaps.append(M)
            filler.append(True)
            d -= M
        gaps.append(d)
        filler.append(False)
        prev = p
    return gaps, filler


# ---------------------------------------------------------------- Huffman lengths

@pytest.mark.parametrize("counts, lengths", [
    ([5, 2, 1, 1], [1, 2, 3, 3]),              # 1+1 -> 2, 2+2 -> 4, 4+5 -> 9
    ([0, 5, 0, 2, 1, 1], [0, 1, 0, 2, 3, 3]),  # absent symbols get 0
    ([3, 3, 3, 3], [2, 2, 2, 2]),              # uniform over 4: 2 bits each
    ([1, 1, 2, 3, 5, 8], [5, 5, 4, 3, 2, 1]),  # Fibonacci: the deepest tree for its total
    ([0, 7, 0], [0, 1, 0]),                    # single present symbol: 1 bit
    ([0, 0, 0], [0, 0, 0]),                    # nothing present
    ([4, 9], [1, 1]),
    ([], []),
])
def test_huffman_lengths_by_hand(counts, lengths):
    assert huffman_code_lengths(np.array(counts, dtype=np.int64)).tolist() == lengths


def test_huffman_rejects_bad_counts():
    with pytest.raises(ValueError):
        huffman_code_lengths([3, -1])
    with pytest.raises(ValueError):
        huffman_code_lengths([[1, 2]])
    with pytest.raises(ValueError):
        huffman_code_lengths([1.5, 2])


@SETTINGS
@given(count_lists)
def test_huffman_is_optimal_and_complete(counts):
    c = np.array(counts)
    L = huffman_code_lengths(c)
    assert np.all((L > 0) == (c > 0))
    present = c > 0
    if present.sum() == 0:
        return
    assert int((c * L).sum()) == reference_huffman_cost(counts)
    if present.sum() >= 2:
        # Kraft equality, exactly, with integers
        top = int(L.max())
        assert sum(1 << (top - int(l)) for l in L[present]) == 1 << top
        H = entropy_bits(c)
        n = int(c.sum())
        assert H - 1e-9 <= (c * L).sum() < H + n


def test_huffman_large_alphabet():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 50, 65536)
    L = huffman_code_lengths(c)
    assert int((c * L).sum()) == reference_huffman_cost(c.tolist())


# ---------------------------------------------------------------- canonical codes

def test_canonical_codes_by_hand():
    # lengths [1,2,3,3] -> 0, 10, 110, 111 ; absent symbols get 0
    assert canonical_codes([1, 2, 3, 3]).tolist() == [0b0, 0b10, 0b110, 0b111]
    # DEFLATE's example (RFC 1951): lengths (3,3,3,3,3,2,4,4) -> 010 011 100 101 110 00 1110 1111
    assert canonical_codes([3, 3, 3, 3, 3, 2, 4, 4]).tolist() == [2, 3, 4, 5, 6, 0, 14, 15]
    assert canonical_codes([0, 1, 0]).tolist() == [0, 0, 0]
    assert canonical_codes([]).tolist() == []
    with pytest.raises(ValueError):
        canonical_codes([1, 1, 1])  # Kraft sum 3/2 > 1


@SETTINGS
@given(count_lists, st.integers(0, 2 ** 32))
def test_canonical_codes_prefix_free_and_decodable(counts, seed):
    c = np.array(counts)
    L = huffman_code_lengths(c)
    codes = canonical_codes(L)
    words = {s: format(int(codes[s]), f"0{int(L[s])}b") for s in np.flatnonzero(L)}
    for s, w in words.items():
        assert len(w) == L[s]
        for t, u in words.items():
            if s != t:
                assert not u.startswith(w)
    # encode a short random stream of present symbols and decode it greedily
    if words:
        rng = np.random.default_rng(seed)
        stream = rng.choice(list(words), size=30)
        bits = "".join(words[s] for s in stream)
        inverse = {w: s for s, w in words.items()}
        out, cur = [], ""
        for bit in bits:
            cur += bit
            if cur in inverse:
                out.append(inverse[cur])
                cur = ""
        assert cur == "" and out == list(stream)


# ---------------------------------------------------------------- entropy

def test_entropy_by_hand():
    assert entropy_bits([4, 4]) == pytest.approx(8.0)        # 8 fair bits
    assert entropy_bits([2, 1, 1]) == pytest.approx(6.0)     # 2*1 + 1*2 + 1*2
    assert entropy_bits([0, 9, 0]) == 0.0
    assert entropy_bits([]) == 0.0


# ---------------------------------------------------------------- gaps

def test_gap_stream_by_hand():
    # survivors [0, 3, 12, 19]: gaps 1, 3, 9, 7. b=3 -> M=7: 9 = filler(7) + 2.
    gaps, filler = gap_stream(np.array([0, 3, 12, 19]), 3)
    assert gaps.tolist() == [1, 3, 7, 2, 7]
    assert filler.tolist() == [False, False, True, False, False]
    assert (np.cumsum(gaps) - 1).tolist() == [0, 3, 10, 12, 19]  # the filler sits at 10
    assert gap_entries([0, 3, 12, 19], 3) == 5
    assert gap_entries([0, 3, 12, 19], 4) == 4  # M=15: no filler
    # exact multiples: gap 14 = 7 + 7 (one filler), gap 15 = 7 + 7 + 1 (two fillers)
    assert gap_stream([13], 3)[0].tolist() == [7, 7]
    assert gap_stream([14], 3)[0].tolist() == [7, 7, 1]
    # one survivor at 999 with b=8 (M=255): floor(999/255) = 3 fillers
    assert gap_entries([999], 8) == 4
    # b=1 (M=1): every position up to the last one becomes an entry
    assert gap_entries([5, 9], 1) == 10


def test_gaps_empty_and_invalid():
    assert gap_entries(np.array([], np.int64), 3) == 0
    g, f = gap_stream(np.array([], np.int64), 3)
    assert g.size == 0 and f.size == 0
    h, nf = gap_histogram(np.array([], np.int64), 3)
    assert h.tolist() == [0] * 8 and nf == 0
    with pytest.raises(ValueError):
        gap_entries([3, 3], 3)  # not strictly increasing
    with pytest.raises(ValueError):
        gap_entries([-1, 2], 3)
    with pytest.raises(ValueError):
        gap_entries([1, 2], 0)


@SETTINGS
@given(st.sets(st.integers(0, 400), max_size=40), st.integers(1, 8))
def test_gap_stream_matches_naive_walk(pos, b):
    positions = np.array(sorted(pos), dtype=np.int64)
    gaps, filler = gap_stream(positions, b)
    ng, nf = naive_gap_stream(positions.tolist(), b)
    assert gaps.tolist() == ng and filler.tolist() == nf
    assert gap_entries(positions, b) == len(ng)
    # survivors are recovered from the stream, fillers fall in between
    assert (np.cumsum(gaps) - 1)[~filler].tolist() == positions.tolist()
    h, n_fill = gap_histogram(positions, b)
    assert h.tolist() == np.bincount(gaps, minlength=2 ** b).tolist()
    assert n_fill == int(filler.sum())


@pytest.mark.parametrize("b", [3, 4, 5])
def test_expected_fillers_formula(b):
    # uniform random positions at density d: fillers per survivor ~ q^M / (1 - q^M)
    rng = np.random.default_rng(1234 + b)
    n, d = 400_000, 0.05
    positions = np.flatnonzero(rng.random(n) < d)
    M, q = 2 ** b - 1, 1 - d
    expected = q ** M / (1 - q ** M) * positions.size
    fillers = gap_entries(positions, b) - positions.size
    assert fillers == pytest.approx(expected, rel=0.05)


# ---------------------------------------------------------------- stream costs

def test_stream_bits_by_hand():
    # counts [5,2,1,1] -> lengths [1,2,3,3]: payload 5+4+3+3 = 15; table 8*4 = 32; raw 9*2 = 18 -> raw
    s = stream_bits([0] * 5 + [1] * 2 + [2, 3], 4, 2)
    # rANS: table 2*4 = 16 bytes alone is 128 bits, so raw stays cheapest
    assert (s.raw, s.huffman, s.table, s.coded, s.bits, s.coder) == (18, 15, 32, False, 18, "raw")
    assert s.rans == 8 * coded_bytes([5, 2, 1, 1], 4) >= 128
    assert stream_bits([5, 2, 1, 1], 4, 2, counts=True) == s
    # 100 copies of one symbol, 2-bit raw: huffman 100 + 32 = 132 < 200
    s = stream_bits(np.full(100, 3), 4, 2)
    # rANS: 8-byte table + an 8-byte state (one symbol costs no payload) = 128 bits < 132: rANS wins
    assert (s.raw, s.huffman, s.table, s.coded, s.bits, s.coder) == (200, 100, 32, True, 128, "rans")
    assert s.rans == 8 * coded_bytes([0, 0, 0, 100], 4) == 128
    # a tie (huffman + table == raw) is stored raw: 16 symbols of one kind, table 8*2=16, raw 16*2=32
    s = stream_bits(np.zeros(16, int), 2, 2)
    assert (s.huffman + s.table, s.raw, s.coded, s.bits) == (32, 32, False, 32)
    # histogram shorter than the alphabet: missing symbols count 0
    assert stream_bits([100], 4, 2, counts=True).bits == 128
    assert stream_bits([100], 4, 2, counts=True, coders=("huffman",)).bits == 132


def test_stream_bits_empty():
    s = stream_bits(np.array([], np.int64), 256, 8)
    assert (s.raw, s.huffman, s.table, s.coded, s.bits, s.rans) == (0, 0, 2048, False, 0, 0)
    assert stream_bits(np.zeros(16, int), 16, 4, counts=True).bits == 0


def test_stream_bits_rejects_out_of_alphabet():
    with pytest.raises(ValueError):
        stream_bits([0, 4], 4, 2)
    with pytest.raises(ValueError):
        stream_bits([1, 1, 1, 1, 1], 4, 2, counts=True)


@SETTINGS
@given(count_lists, st.integers(1, 12))
def test_stream_bits_never_exceeds_raw(counts, raw_bits):
    A = len(counts)
    s = stream_bits(counts, A, raw_bits, counts=True)
    n = sum(counts)
    assert s.raw == n * raw_bits
    assert s.table == 8 * A
    rans = 8 * coded_bytes(counts, A) if n else 0
    assert s.rans == rans
    assert s.bits == min(s.raw, s.huffman + s.table, rans if n else s.raw) <= s.raw
    assert s.coded == (s.bits < s.raw)
    assert s.huffman >= math.floor(entropy_bits(counts))


def test_gap_histograms_of_keys_with_a_split_threshold_equal_the_masks():
    """Below the split the keys are kept at >= tfirst, from it on at >= tmin (ties kept up to a position):
    the same histograms as the mask, at splits inside a block, on block edges and at the ends."""
    from explorer.engine.storage.coding import gap_histograms_of_keys, gap_histograms_of_mask

    rng = np.random.default_rng(4)
    keys = rng.integers(0, 12, 1000).astype(np.uint32) | (rng.integers(0, 2, 1000).astype(np.uint32) << 31)
    mag = keys & np.uint32(0x7FFFFFFF)
    for split in (0, 1, 63, 64, 65, 500, 999, 1000):
        for tfirst, tmin in ((6, 7), (3, 9), (9, 3)):
            mask = np.where(np.arange(keys.size) < split, mag >= tfirst, mag >= tmin)
            got = gap_histograms_of_keys(keys, tmin, (3, 5, 8), before=(split, tfirst))
            want = gap_histograms_of_mask(mask, (3, 5, 8))
            for b in (3, 5, 8):
                np.testing.assert_array_equal(got[b][0], want[b][0])
                assert got[b][1] == want[b][1], (split, tfirst, b)
