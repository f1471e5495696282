import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.engine.storage.bitstream import (BitstreamError, huffman_decode, huffman_encode, pack_fixed, packed_bytes,
                                               unpack_fixed)
from explorer.engine.storage.coding import canonical_codes, huffman_code_lengths


def test_pack_known_bits():
    # 3-bit values 5 (101), 1 (001), 7 (111) -> 101001 11|1 padded: 0b10100111, 0b10000000
    assert pack_fixed([5, 1, 7], 3) == bytes([0b10100111, 0b10000000])
    assert unpack_fixed(bytes([0b10100111, 0b10000000]), 3, 3).tolist() == [5, 1, 7]
    assert packed_bytes(3, 3) == 2


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 8, 9, 16, 31, 32])
def test_pack_round_trip(width):
    rng = np.random.default_rng(width)
    v = rng.integers(0, 2 ** width, 1013)
    assert np.array_equal(unpack_fixed(pack_fixed(v, width), width, v.size), v)


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError):
        pack_fixed([8], 3)
    with pytest.raises(BitstreamError):
        unpack_fixed(b"\x00", 3, 5)


def test_huffman_known_code():
    lengths = np.array([1, 2, 3, 3])  # canonical: 0, 10, 110, 111
    assert canonical_codes(lengths).tolist() == [0b0, 0b10, 0b110, 0b111]
    data = huffman_encode([0, 1, 2, 3, 0], lengths)  # 0 10 110 111 0 -> 01011011 10(000000)
    assert data == bytes([0b01011011, 0b10000000])
    assert huffman_decode(data, lengths, 5).tolist() == [0, 1, 2, 3, 0]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=400), st.integers(1, 60))
def test_huffman_round_trip_any_distribution(symbols, extra):
    s = np.array(symbols)
    counts = np.bincount(s, minlength=41 + extra)
    lengths = huffman_code_lengths(counts)
    data = huffman_encode(s, lengths)
    assert len(data) == (int((counts * lengths).sum()) + 7) // 8
    assert np.array_equal(huffman_decode(data, lengths, s.size), s)


def test_long_codes_and_single_symbol():
    counts = np.array([2 ** i for i in range(36)], np.int64)
    lengths = huffman_code_lengths(counts)
    assert lengths.max() > 32
    s = np.repeat(np.arange(36), np.minimum(counts, 300))
    np.random.default_rng(0).shuffle(s)
    assert np.array_equal(huffman_decode(huffman_encode(s, lengths), lengths, s.size), s)
    one = huffman_code_lengths(np.array([0, 9, 0]))
    assert huffman_decode(huffman_encode([1] * 9, one), one, 9).tolist() == [1] * 9


def test_decoder_refuses_bad_streams():
    lengths = np.array([1, 2, 0, 0])  # codes 0, 10; "11" is undefined
    with pytest.raises(BitstreamError, match="does not define"):
        huffman_decode(bytes([0b11000000]), lengths, 1)
    with pytest.raises(BitstreamError, match="ends before"):
        huffman_decode(bytes([0b10101010]), lengths, 9)
    with pytest.raises(BitstreamError, match="after its last symbol"):
        huffman_decode(bytes([0, 0]), lengths, 2)
    with pytest.raises(BitstreamError, match="no symbol"):
        huffman_decode(b"\x00", np.zeros(4), 1)
