"""Per-tensor storage sizes: hand-computed cases for every storage choice, and stage monotonicity."""

import json

import numpy as np

HUFFMAN = ("huffman",)  # the hand-computed cases below count Huffman only; rANS is tested on its own
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import explorer.engine.storage.size as size_mod
from explorer.engine.storage.coders import stream_bits
from explorer.engine.storage.coding import gap_entries, gap_stream
from explorer.engine.storage.size import GAP_BITS, TensorCode, other_param_bits, tensor_sizes

SETTINGS = settings(max_examples=60, deadline=None)


def mask_at(numel, positions):
    m = np.zeros(numel, bool)
    m[list(positions)] = True
    return m


# ---------------------------------------------------------------- pruned stage (float32 values)

def test_pruned_picks_gaps_example_from_the_brief():
    # numel 20, survivors [0, 3, 12, 19]: gaps 1, 3, 9, 7.
    # b=3 (M=7): 9 -> filler + 2, entries 5, 5*(3+32) = 175
    # b=4 (M=15): no filler, entries 4, 4*(4+32) = 144   <- cheapest
    # b=5: 4*37 = 148; bitmask 20 + 4*32 = 148; dense 20*32 = 640
    s = tensor_sizes(20, mask_at(20, [0, 3, 12, 19]), None, coders=HUFFMAN)
    p = s.stages["pruned"]
    assert s.dense == 640
    assert (p["format"], p["gap_bits"], p["entries"], p["fillers"], p["bits"]) == ("gaps", 4, 4, 0, 144)
    assert p["parts"] == {"mask": 0, "values": 128, "gaps": 16, "side": 0}
    assert s.bits == {"pruned": 144, "quantized": 144, "coded": 144}
    # restricted to b=3 the bitmask wins: min(640, 148, 175) = 148
    s3 = tensor_sizes(20, mask_at(20, [0, 3, 12, 19]), None, gap_bits=(3,), coders=HUFFMAN)
    assert s3.stages["pruned"]["format"] == "bitmask" and s3.bits["pruned"] == 148


def test_pruned_picks_bitmask():
    # numel 16, every other position kept (0, 2, ..., 14): nnz 8, gaps 1, 2, 2, ...
    # dense 512; bitmask 16 + 8*32 = 272; gaps b=3: 8*35 = 280 (no filler), b=4: 288 -> bitmask 272
    s = tensor_sizes(16, mask_at(16, range(0, 16, 2)), None, coders=HUFFMAN)
    assert s.stages["pruned"]["format"] == "bitmask"
    assert s.stages["pruned"]["parts"]["mask"] == 16
    assert s.bits["pruned"] == 272


def test_pruned_picks_dense_on_tie():
    # numel 32, one weight pruned: dense 1024, bitmask 32 + 31*32 = 1024 (tie -> dense), gaps 31*35 = 1085
    s = tensor_sizes(32, ~mask_at(32, [5]), None, coders=HUFFMAN)
    assert s.stages["pruned"]["format"] == "dense" and s.bits["pruned"] == 1024
    # nothing pruned (mask None): dense only
    s = tensor_sizes(32, None, None, coders=HUFFMAN)
    assert s.stages["pruned"]["format"] == "dense" and s.bits == dict.fromkeys(s.bits, 1024)


def test_pruned_filler_heavy():
    # numel 1000, one survivor at 999: gap 1000.
    # b=3 (M=7): floor(999/7) = 142 fillers, 143*35 = 5005; b=6 (63): 15 fillers, 16*38 = 608
    # b=7 (127): 7 fillers, 8*39 = 312; b=8 (255): 3 fillers, 4*40 = 160 <- cheapest
    # bitmask 1000 + 32 = 1032; dense 32000
    s = tensor_sizes(1000, mask_at(1000, [999]), None, coders=HUFFMAN)
    p = s.stages["pruned"]
    assert (p["format"], p["gap_bits"], p["entries"], p["fillers"], p["bits"]) == ("gaps", 8, 4, 3, 160)
    # coded stage (no quantization): the gap stream [255, 255, 255, 234] costs 32 raw bits, the
    # Huffman table alone 8*256 -> stays raw, 160
    assert s.bits["coded"] == 160


def test_all_pruned_and_empty():
    # no survivor: zero gap entries ("trailing zeros need no entry") -> 0 bits
    s = tensor_sizes(50, np.zeros(50, bool), None, coders=HUFFMAN)
    assert s.bits == {"pruned": 0, "quantized": 0, "coded": 0} and s.nnz == 0
    s = tensor_sizes(0, None, None, coders=HUFFMAN)
    assert s.dense == 0 and s.bits == {"pruned": 0, "quantized": 0, "coded": 0}


# ---------------------------------------------------------------- quantized stage

def test_quantized_gaps_with_codes():
    # survivors [0, 3, 12, 19] of 20, 2-bit codes [1, 2, 3, 1], zero_code 0, side 32 (one scale)
    # dense 20*2 + 32 = 72; bitmask 20 + 4*2 + 32 = 60; gaps b=3: 5*(3+2) + 32 = 57;
    # b=4: 4*(4+2) + 32 = 56 <- cheapest; float fallback (pruned stage) 144
    codes = np.zeros(20, int)
    codes[[0, 3, 12, 19]] = [1, 2, 3, 1]
    s = tensor_sizes(20, mask_at(20, [0, 3, 12, 19]), TensorCode(codes, 2, zero_code=0, side_bits=32), coders=HUFFMAN)
    q = s.stages["quantized"]
    assert (q["format"], q["values"], q["gap_bits"], q["bits"]) == ("gaps", "codes", 4, 56)
    assert q["parts"] == {"mask": 0, "values": 8, "gaps": 16, "side": 32}
    # coded: every table costs at least 8*4 = 32 bits more than these tiny streams save -> 56
    assert s.bits == {"pruned": 144, "quantized": 56, "coded": 56}
    c = s.stages["coded"]
    assert c["index_stream"].coded is False and c["gap_stream"].coded is False


def test_quantized_falls_back_to_float_when_side_bits_do_not_pay():
    # same tensor with a 4-entry codebook of float32 (side 128): best code storage 24 + 128 = 152
    # > 144 of float32 gaps b=4 -> the quantized tensor's values are stored as float32
    codes = np.zeros(20, int)
    codes[[0, 3, 12, 19]] = [1, 2, 3, 1]
    s = tensor_sizes(20, mask_at(20, [0, 3, 12, 19]), TensorCode(codes, 2, zero_code=0, side_bits=128), coders=HUFFMAN)
    assert s.stages["quantized"]["values"] == "float"
    assert s.bits == {"pruned": 144, "quantized": 144, "coded": 144}


def test_quantized_without_zero_code_uses_bitmask():
    # numel 8, position 5 pruned, binary codes (1 bit, no zero), side 32:
    # code dense and code gaps need a zero code -> not allowed; code bitmask 8 + 7*1 + 32 = 47
    # float: dense 256, bitmask 8 + 7*32 = 232, gaps b=3 7*35 = 245
    mask = ~mask_at(8, [5])
    codes = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    s = tensor_sizes(8, mask, TensorCode(codes, 1, zero_code=None, side_bits=32), coders=HUFFMAN)
    assert s.stages["quantized"]["format"] == "bitmask" and s.bits["quantized"] == 47
    # with a zero code, dense codes become possible: 8*1 + 32 = 40
    s = tensor_sizes(8, mask, TensorCode(codes, 1, zero_code=0, side_bits=32), coders=HUFFMAN)
    assert s.stages["quantized"]["format"] == "dense" and s.bits["quantized"] == 40


def test_ternary_alphabet_and_codes_unknown():
    # ternary: 2-bit codes, alphabet 3. Nothing pruned, 10 weights: dense 10*2 + 32 = 52
    t = TensorCode(np.array([0, 1, 2, 1, 1, 1, 0, 2, 1, 1]), 2, alphabet_size=3, zero_code=1, side_bits=32)
    s = tensor_sizes(10, None, t, coders=HUFFMAN)
    assert s.bits["quantized"] == 52
    assert s.stages["coded"]["index_stream"].table == 8 * 3
    # codes=None: sizes of the quantization without its codes; the index stream stays raw
    s = tensor_sizes(10, None, TensorCode(None, 2, alphabet_size=3, zero_code=1, side_bits=32), coders=HUFFMAN)
    assert s.bits == {"pruned": 320, "quantized": 52, "coded": 52}
    assert s.stages["coded"]["index_stream"] is None


# ---------------------------------------------------------------- coded stage

def test_coded_index_stream_pays():
    # 1000 weights, nothing pruned, 2-bit codes: 900 x code 0, 50 x 1, 25 x 2, 25 x 3
    # Huffman lengths [1, 2, 3, 3]: 900 + 100 + 75 + 75 = 1150, + table 8*4 = 1182 < raw 2000
    codes = np.repeat([0, 1, 2, 3], [900, 50, 25, 25])
    s = tensor_sizes(1000, None, TensorCode(codes, 2, zero_code=0), coders=HUFFMAN)
    assert s.bits == {"pruned": 32000, "quantized": 2000, "coded": 1182}
    ix = s.stages["coded"]["index_stream"]
    assert (ix.raw, ix.huffman, ix.table, ix.coded, ix.bits) == (2000, 1150, 32, True, 1182)


def test_coded_gap_stream_pays():
    # 4000 weights, every 4th kept (3, 7, ..., 3999): 1000 survivors, every gap 4; all codes 1 (2 bits)
    # pruned: dense 128000, bitmask 4000 + 32000, gaps b=3 1000*35 = 35000 -> 35000
    # quantized: dense 8000, bitmask 6000, gaps b=3 1000*5 = 5000 -> 5000
    # coded, gaps b=3: gap stream one symbol -> 1000 + table 8*8 = 1064 (< 3000);
    #   index stream one symbol -> 1000 + 32 = 1032 (< 2000); total 2096
    #   (b=4: 1000 + 128 + 1032 = 2160; dense codes: counts [3000, 1000] -> 4000 + 32 = 4032;
    #   bitmask 4000 + 1032 = 5032)
    mask = mask_at(4000, range(3, 4000, 4))
    codes = np.where(mask, 1, 0)
    s = tensor_sizes(4000, mask, TensorCode(codes, 2, zero_code=0), coders=HUFFMAN)
    assert s.bits == {"pruned": 35000, "quantized": 5000, "coded": 2096}
    c = s.stages["coded"]
    assert (c["format"], c["gap_bits"]) == ("gaps", 3)
    assert c["parts"] == {"mask": 0, "values": 1032, "gaps": 1064, "side": 0}


def test_coded_without_quantization_codes_gaps_only():
    # 2000 weights, survivors every 10th (9, 19, ...): 200 survivors, gaps all 10.
    # pruned: bitmask 2000 + 6400 = 8400; gaps b=3: 9 splits 7+3 -> 400 entries * 35 = 14000;
    # b=4: 200*36 = 7200 <- cheapest.
    # coded: b=4 gap stream one symbol: 200 + 8*16 = 328 < 800 -> 6400 + 328 = 6728;
    # b=3: gaps {7: 200, 3: 200} -> 400 + 64 = 464 -> 400*32 + 464 = 13264; b=5: 6400 + 200 + 256 = 6856
    s = tensor_sizes(2000, mask_at(2000, range(9, 2000, 10)), None, coders=HUFFMAN)
    assert s.bits == {"pruned": 7200, "quantized": 7200, "coded": 6728}
    assert s.stages["coded"]["values"] == "float" and s.stages["coded"]["index_stream"] is None


def test_fillers_hold_zero_code_in_index_stream():
    # one survivor at 999 with code 3, zero_code 0, b=8: 3 fillers -> index stream counts {0: 3, 3: 1}
    codes = np.zeros(1000, int)
    codes[999] = 3
    s = tensor_sizes(1000, mask_at(1000, [999]), TensorCode(codes, 2, zero_code=0), gap_bits=(8,), coders=HUFFMAN)
    ix = s.stages["coded"]["index_stream"]
    assert ix.raw == 4 * 2 and ix.huffman == 3 * 1 + 1 * 1


# ---------------------------------------------------------------- misc

def test_other_params_and_json():
    assert other_param_bits(10) == 320
    codes = np.zeros(20, int)
    s = tensor_sizes(20, mask_at(20, [0, 3, 12, 19]), TensorCode(codes, 2, zero_code=0, side_bits=32), coders=HUFFMAN)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["bits"] == s.bits and d["dense"] == 640 and d["nnz"] == 4
    assert set(d["stages"]["coded"]["gap_stream"]) == {"raw", "huffman", "table", "coded", "bits", "rans", "coder",
                                                           "costs"}


def test_invalid_inputs():
    with pytest.raises(ValueError):
        tensor_sizes(10, np.ones(9, bool), None, coders=HUFFMAN)
    with pytest.raises(ValueError):
        tensor_sizes(4, None, TensorCode(np.array([0, 1, 2, 4]), 2))  # code 4 outside 0..3
    with pytest.raises(ValueError):
        TensorCode(None, 2, alphabet_size=5)
    with pytest.raises(ValueError):
        TensorCode(None, 2, zero_code=4)
    # pruned positions may hold anything, even out-of-range codes
    tensor_sizes(4, np.array([True, False, True, True]), TensorCode(np.array([0, 99, 2, 3]), 2, zero_code=0), coders=HUFFMAN)


# ---------------------------------------------------------------- properties

def naive_pruned_bits(numel, mask, v=32):
    if mask is None:
        return numel * v
    pos = np.flatnonzero(mask).tolist()
    best = min(numel * v, numel + len(pos) * v)
    for b in GAP_BITS:
        M, prev, entries = 2 ** b - 1, -1, 0
        for p in pos:
            entries += 1 + (p - prev - 1) // M
            prev = p
        best = min(best, entries * (b + v))
    return best


@st.composite
def tensors(draw):
    numel = draw(st.integers(0, 300))
    mask = None if draw(st.booleans()) else np.array(draw(st.lists(st.booleans(), min_size=numel,
                                                                   max_size=numel)), bool)
    if mask is not None and numel and draw(st.booleans()):
        # sparse masks make fillers likely
        mask = mask & (np.arange(numel) % draw(st.integers(1, 40)) == 0)
    code = None
    if draw(st.booleans()):
        bits = draw(st.integers(1, 4))
        A = draw(st.integers(1, 2 ** bits))
        skew = draw(st.integers(0, 3))  # repeat symbol 0 to make Huffman pay sometimes
        codes = np.array(draw(st.lists(st.integers(0, A - 1), min_size=numel, max_size=numel)), np.int64)
        codes[np.arange(numel) % 4 < skew] = 0
        zero = draw(st.one_of(st.none(), st.integers(0, A - 1)))
        known = draw(st.booleans())
        code = TensorCode(codes if known else None, bits, alphabet_size=A, zero_code=zero,
                          side_bits=draw(st.integers(0, 300)))
    return numel, mask, code


@SETTINGS
@given(tensors())
def test_stages_never_grow_and_parts_add_up(t):
    numel, mask, code = t
    s = tensor_sizes(numel, mask, code, coders=HUFFMAN)
    b = s.bits
    assert b["coded"] <= b["quantized"] <= b["pruned"] <= s.dense == 32 * numel
    assert b["pruned"] == naive_pruned_bits(numel, mask)
    if code is None:
        assert b["quantized"] == b["pruned"]
    positions = np.flatnonzero(mask) if mask is not None else np.arange(numel)
    for stage, d in s.stages.items():
        assert d["bits"] == sum(d["parts"].values())
        assert d["side_bits"] == d["parts"]["side"]
        if d["format"] == "gaps":
            e = gap_entries(positions, d["gap_bits"])
            assert d["entries"] == e and d["fillers"] == e - positions.size
            if d["gap_stream"] is not None:
                # the histogram shortcut agrees with the explicit stream
                gaps, _ = gap_stream(positions, d["gap_bits"])
                assert d["gap_stream"] == stream_bits(gaps, 2 ** d["gap_bits"], d["gap_bits"], coders=HUFFMAN)
            else:
                assert d["parts"]["gaps"] == e * d["gap_bits"]
        if d["values"] == "codes":
            assert code is not None
            if d["format"] != "bitmask" and positions.size < numel:
                assert code.zero_code is not None
        if d["format"] == "bitmask":
            assert d["parts"]["mask"] == numel


def test_rans_is_chosen_where_one_symbol_dominates():
    # 100,000 weights, 90% pruned, stored as dense 5-bit codes with the zero code dominating (p = 0.9):
    # Huffman spends >= 1 bit per symbol (>= 100,000 bits); rANS gets near the entropy (~0.47 + ... bits)
    rng = np.random.default_rng(0)
    keep = rng.random(100_000) < 0.1
    codes = np.where(keep, rng.integers(1, 32, 100_000), 0)
    both = tensor_sizes(100_000, None, TensorCode(codes, 5, zero_code=0))
    huff = tensor_sizes(100_000, None, TensorCode(codes, 5, zero_code=0), coders=HUFFMAN)
    ix = both.stages["coded"]["index_stream"]
    assert ix.coder == "rans" and ix.bits == ix.rans < ix.huffman + ix.table
    assert both.bits["coded"] < 0.8 * huff.bits["coded"]
    from explorer.engine.storage.coding import entropy_bits

    assert ix.rans < 1.01 * entropy_bits(np.bincount(codes)) + 8 * 2 * 32 + 64


@SETTINGS
@given(tensors(), st.sampled_from([("huffman", "rans"), ("huffman",), ("rans",), ()]))
def test_bounded_search_chooses_what_building_every_candidate_chooses(t, coders):
    # the coded stage codes only the candidates whose entropy bound can still win: the same choice
    numel, mask, code = t
    fast = tensor_sizes(numel, mask, code, coders=coders).to_dict()
    size_mod._EXHAUSTIVE = True
    try:
        full = tensor_sizes(numel, mask, code, coders=coders).to_dict()
    finally:
        size_mod._EXHAUSTIVE = False
    assert fast == full


def test_bounded_search_on_large_streams(monkeypatch):
    # many close candidates (gap widths 3..8 differ by a few hundred bits on 10^6 entries)
    rng = np.random.default_rng(0)
    for density in (0.7, 0.3, 0.05):
        mask = rng.random(1_000_000) < density
        codes = np.minimum(rng.geometric(0.3, mask.size), 31).astype(np.int64)
        code = TensorCode(codes, 5, zero_code=0, side_bits=32 * 31)
        fast = tensor_sizes(mask.size, mask, code).to_dict()
        monkeypatch.setattr(size_mod, "_EXHAUSTIVE", True)
        assert tensor_sizes(mask.size, mask, code).to_dict() == fast
        monkeypatch.setattr(size_mod, "_EXHAUSTIVE", False)
