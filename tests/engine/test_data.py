"""Readers of evaluation data: IDX (plain/gzip), npz/npy, dispatch and the digits split."""

import gzip
import math
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.engine.errors import LoadError
from explorer.engine.model.data import (EvalData, digits_split, load_eval_data, load_idx_pair, load_npy, load_npz,
                                        read_idx)

MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist-t10k"

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr):
    arr = np.asarray(arr)
    code = _CODES[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data, gz=False):
    path = Path(path)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def mnist_like(n=7, h=5, w=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_images_and_labels(tmp_path, gz):
    images, labels = mnist_like()
    suffix = ".gz" if gz else ""
    ip = write(tmp_path / f"x-images-idx3-ubyte{suffix}", idx_bytes(images), gz)
    lp = write(tmp_path / f"x-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz)
    raw = gzip.decompress(ip.read_bytes()) if gz else ip.read_bytes()
    assert raw[:4] == struct.pack(">I", 2051)  # MNIST's magic is the generic header for 3-D uint8
    got = read_idx(ip)
    assert got.dtype == np.uint8 and got.shape == (7, 5, 4)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(read_idx(lp), labels)
    got[0, 0, 0] = 1  # a writable array, not a view of a bytes buffer


@given(
    dtype=st.sampled_from(list(_CODES)),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    gz=st.booleans(),
)
@settings(max_examples=30, deadline=None)
def test_read_idx_generic_roundtrip(tmp_path_factory, dtype, shape, gz):
    rng = np.random.default_rng(len(shape))
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write(tmp_path_factory.mktemp("idx") / "a.idx", idx_bytes(arr), gz)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative and got.shape == tuple(shape)
    np.testing.assert_array_equal(got, arr)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(LoadError, match="nope-idx3-ubyte: no such file"):
        read_idx(tmp_path / "nope-idx3-ubyte")


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_wrong_magic(tmp_path, gz):
    images, _ = mnist_like()
    data = bytearray(idx_bytes(images))
    data[0:4] = struct.pack(">I", 0x89504E47)  # a PNG, say
    with pytest.raises(LoadError, match=r"bad\.idx.*not an IDX file"):
        read_idx(write(tmp_path / "bad.idx", bytes(data), gz))
    data[0:4] = bytes([0, 0, 0x07, 3])  # unknown element type
    with pytest.raises(LoadError, match="unknown IDX element type 0x07"):
        read_idx(write(tmp_path / "bad.idx", bytes(data), gz))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_and_overlong(tmp_path, gz):
    images, _ = mnist_like()
    data = idx_bytes(images)
    with pytest.raises(LoadError, match=r"short\.idx.*7 x 5 x 4 uint8 \(140 bytes of data\) but the file holds 139"):
        read_idx(write(tmp_path / "short.idx", data[:-1], gz))
    with pytest.raises(LoadError, match=r"long\.idx.*140 bytes of data"):
        read_idx(write(tmp_path / "long.idx", data + b"\x00", gz))
    with pytest.raises(LoadError, match="header truncated"):
        read_idx(write(tmp_path / "head.idx", data[:9], gz))
    with pytest.raises(LoadError, match="too short"):
        read_idx(write(tmp_path / "tiny.idx", b"\x00\x00", gz))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_huge_dims_fail_without_allocating(tmp_path, gz):
    # 10^6 x 10^3 x 10^3 uint8 = 10^12 bytes claimed, 1 kB present
    head = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 10**6, 10**3, 10**3)
    path = write(tmp_path / "huge.idx", head + bytes(1000), gz)
    tracemalloc.start()
    try:
        with pytest.raises(LoadError, match=r"huge\.idx.*1000000000000 bytes of data"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


def test_read_idx_corrupt_gzip(tmp_path):
    images, _ = mnist_like()
    good = gzip.compress(idx_bytes(images))
    path = write(tmp_path / "broken.gz", good[:12] + b"\xff" * 20)
    with pytest.raises(LoadError, match=r"broken\.gz: "):
        read_idx(path)


# ----------------------------------------------------------------------------------------- load_idx_pair


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_pair_infers_labels(tmp_path, gz):
    images, labels = mnist_like()
    suffix = ".gz" if gz else ""
    ip = write(tmp_path / f"train-images-idx3-ubyte{suffix}", idx_bytes(images), gz)
    write(tmp_path / f"train-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz)
    data = load_idx_pair(ip)
    assert data.inputs.shape == (7, 1, 5, 4) and data.inputs.dtype == torch.float32
    torch.testing.assert_close(data.inputs[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
    assert len(data) == 7 and ip.name in data.name


def test_load_idx_pair_without_labels_and_explicit_labels(tmp_path):
    images, labels = mnist_like()
    ip = write(tmp_path / "mine.idx3", idx_bytes(images))
    assert load_idx_pair(ip).labels is None
    lp = write(tmp_path / "answers.idx1", idx_bytes(labels))
    assert load_idx_pair(ip, lp).labels.tolist() == labels.tolist()
    with pytest.raises(LoadError, match="missing.idx1: no such file"):
        load_idx_pair(ip, tmp_path / "missing.idx1")


def test_load_idx_pair_count_mismatch(tmp_path):
    images, labels = mnist_like(n=7)
    ip = write(tmp_path / "a-images-idx3-ubyte", idx_bytes(images))
    write(tmp_path / "a-labels-idx1-ubyte", idx_bytes(labels[:6]))
    with pytest.raises(LoadError, match=r"a-labels-idx1-ubyte: 6 labels, but a-images-idx3-ubyte has 7 images"):
        load_idx_pair(ip)


def test_load_idx_pair_rejects_bad_shapes(tmp_path):
    images, labels = mnist_like()
    ip = write(tmp_path / "b-images-idx3-ubyte", idx_bytes(images))
    write(tmp_path / "b-labels-idx1-ubyte", idx_bytes(labels.reshape(7, 1)))
    with pytest.raises(LoadError, match="labels must be 1-D"):
        load_idx_pair(ip)
    flat = write(tmp_path / "c.idx", idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(LoadError, match="images must have 3 dimensions"):
        load_idx_pair(flat)


# ----------------------------------------------------------------------------------------------- npz/npy


def test_load_npz_with_and_without_labels(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 3, 4, 4))
    y = np.arange(6) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_npz(tmp_path / "d.npz")
    assert data.inputs.dtype == torch.float32 and data.inputs.shape == (6, 3, 4, 4)
    torch.testing.assert_close(data.inputs, torch.from_numpy(x).float())
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == y.tolist()

    np.savez(tmp_path / "e.npz", inputs=x)
    assert load_npz(tmp_path / "e.npz").labels is None

    tokens = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.savez(tmp_path / "t.npz", inputs=tokens, labels=np.array([0, 1, 0]))
    t = load_npz(tmp_path / "t.npz")
    assert t.inputs.dtype == torch.int64 and t.inputs.tolist() == tokens.tolist()


def test_load_npz_refuses_object_arrays(tmp_path):
    x = np.empty(2, dtype=object)
    x[0], x[1] = {"a": 1}, [1, 2]
    np.savez(tmp_path / "obj.npz", x=x, y=np.array([0, 1]))
    with pytest.raises(LoadError, match=r"obj\.npz \['x'\]: contains Python objects"):
        load_npz(tmp_path / "obj.npz")
    with pytest.raises(LoadError, match=r"obj\.npz \['x'\]: contains Python objects"):
        load_eval_data(tmp_path / "obj.npz")


def test_load_npz_errors(tmp_path):
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 2)))
    with pytest.raises(LoadError, match=r"k\.npz: no inputs array.*'images'"):
        load_npz(tmp_path / "k.npz")
    np.savez(tmp_path / "m.npz", x=np.zeros((3, 2)), y=np.array([0, 1]))
    with pytest.raises(LoadError, match=r"m\.npz: 3 inputs .* 2 labels"):
        load_npz(tmp_path / "m.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 2)), y=np.array([0.5, 1.0]))
    with pytest.raises(LoadError, match="labels must be integers"):
        load_npz(tmp_path / "f.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LoadError, match=r"junk\.npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(LoadError, match="no such file"):
        load_npz(tmp_path / "absent.npz")


def test_load_npy(tmp_path):
    np.save(tmp_path / "u.npy", np.full((4, 8, 8), 255, np.uint8))
    data = load_npy(tmp_path / "u.npy")
    assert data.labels is None and data.inputs.dtype == torch.float32 and float(data.inputs.max()) == 1.0
    np.save(tmp_path / "o.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(LoadError, match="refusing to unpickle"):
        load_npy(tmp_path / "o.npy")


# ---------------------------------------------------------------------------------------------- dispatch


def test_load_eval_data_dispatch(tmp_path):
    images, labels = mnist_like()
    write(tmp_path / "s-images-idx3-ubyte.gz", idx_bytes(images), gz=True)
    write(tmp_path / "s-labels-idx1-ubyte.gz", idx_bytes(labels), gz=True)
    idx = load_eval_data(tmp_path / "s-images-idx3-ubyte.gz")
    assert idx.inputs.shape == (7, 1, 5, 4) and idx.labels is not None
    write(tmp_path / "plain.bin", idx_bytes(images))
    assert load_eval_data(tmp_path / "plain.bin").inputs.shape == (7, 1, 5, 4)
    np.savez(tmp_path / "z.npz", x=np.zeros((2, 3)), y=np.array([1, 2]))
    assert load_eval_data(tmp_path / "z.npz").labels.tolist() == [1, 2]
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
    assert load_eval_data(tmp_path / "a.npy").inputs.shape == (2, 3)

    with pytest.raises(LoadError, match=r"s-labels-idx1-ubyte\.gz: this is an IDX labels file"):
        load_eval_data(tmp_path / "s-labels-idx1-ubyte.gz")
    with pytest.raises(LoadError, match=r"gone\.npz: no such file"):
        load_eval_data(tmp_path / "gone.npz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LoadError, match=r"notes\.txt: unknown data format"):
        load_eval_data(tmp_path / "notes.txt")
    with pytest.raises(LoadError, match="is a folder"):
        load_eval_data(tmp_path)
    with pytest.raises(LoadError, match="dev/zero: not a regular file"):
        load_eval_data("/dev/zero")
    if hasattr(os, "mkfifo"):  # refused, not waited on
        os.mkfifo(tmp_path / "pipe.npy")
        with pytest.raises(LoadError, match="not a regular file"):
            load_eval_data(tmp_path / "pipe.npy")


# ---------------------------------------------------------------------------------------------- EvalData


def test_evaldata_batches_and_checks():
    data = EvalData(torch.arange(10.0).reshape(5, 2), torch.arange(5), "five")
    got = list(data.batches(2))
    assert [x.shape[0] for x, _ in got] == [2, 2, 1]
    assert torch.cat([y for _, y in got]).tolist() == [0, 1, 2, 3, 4]
    nolabels = EvalData(torch.zeros(3, 2), None, "three")
    assert all(y is None for _, y in nolabels.batches(10))
    assert len(data.subset(3)) == 3 and data.subset(slice(1, 3)).labels.tolist() == [1, 2]
    with pytest.raises(ValueError):
        next(data.batches(0))
    with pytest.raises(LoadError, match="five: 5 inputs but 4 labels"):
        EvalData(data.inputs, torch.arange(4), "five")


# ------------------------------------------------------------------------------------------------ digits


def test_digits_split_is_deterministic_and_disjoint():
    train, test = digits_split()
    assert (len(train), len(test)) == (1437, 360)
    assert test.name == "digits test split (360)" and train.name == "digits train split (1437)"
    assert train.inputs.shape == (1437, 1, 8, 8) and train.inputs.dtype == torch.float32
    assert float(train.inputs.min()) == 0.0 and float(train.inputs.max()) == 1.0
    assert test.labels.dtype == torch.int64 and set(test.labels.tolist()) == set(range(10))
    train2, test2 = digits_split()
    assert torch.equal(test.inputs, test2.inputs) and torch.equal(train.labels, train2.labels)
    test2.inputs.zero_()  # callers get their own copies
    assert torch.equal(digits_split()[1].inputs, test.inputs)
    # disjoint and complete: every image is in exactly one part (compare rows as bytes)
    rows = lambda d: sorted(r.numpy().tobytes() for r in d.inputs.reshape(len(d), -1))  # noqa: E731
    from sklearn.datasets import load_digits

    all_rows = sorted((r / 16.0).astype(np.float32).tobytes() for r in load_digits().data)
    assert sorted(rows(train) + rows(test)) == all_rows
    other = digits_split(seed=1)[1]
    assert not torch.equal(other.inputs, test.inputs)
    assert len(digits_split(test_fraction=0.5)[1]) == 899
    with pytest.raises(ValueError):
        digits_split(test_fraction=1.0)


# ------------------------------------------------------------------------------------------ real MNIST


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST t10k files not present")
def test_real_mnist_t10k():
    data = load_eval_data(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert data.inputs.shape == (10000, 1, 28, 28) and data.inputs.dtype == torch.float32
    assert 0.0 <= float(data.inputs.min()) and float(data.inputs.max()) == 1.0
    assert data.labels.shape == (10000,)
    assert sorted(set(data.labels.tolist())) == list(range(10))
    assert data.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz").dtype == np.uint8


# ------------------------------------------------------------------------------- eval data from a factory


def test_eval_data_from_a_factory_in_every_form():
    from explorer.engine.model.data import load_eval_data
    from explorer.engine.model.factories import is_factory_ref

    tup = load_eval_data("zoo:digits_eval_tuple")
    assert len(tup) == 100 and tup.labels is not None and tup.inputs.dtype == torch.float32
    assert tup.name == "zoo:digits_eval_tuple (100)"
    d = load_eval_data("zoo:digits_eval_dict")
    assert len(d) == 50 and torch.equal(d.labels, tup.labels[:50]) and torch.equal(d.inputs, tup.inputs[:50])
    ev = load_eval_data("zoo:digits_eval_data")
    assert ev.name == "twenty digits" and len(ev) == 20
    bf16 = load_eval_data("zoo:eval_bfloat16")  # numpy has no bfloat16: converted to float32
    assert bf16.inputs.dtype == torch.float32 and torch.allclose(bf16.inputs, tup.inputs[:10], atol=1e-2)
    unlabelled = load_eval_data("zoo:eval_inputs_only")
    assert unlabelled.labels is None and len(unlabelled) == 7
    assert is_factory_ref("pkg.mod:fn") and is_factory_ref("m:Cls.build")
    assert not is_factory_ref("data/x.npz") and not is_factory_ref("C:\\data\\x.npz") and not is_factory_ref("a:b:c")


@pytest.mark.parametrize("ref, message", [
    ("zoo:eval_wrong_type", "returned str; expected EvalData"),
    ("zoo:eval_mismatched", "5 inputs .* but 4 labels"),
    ("zoo:eval_no_inputs", "without inputs; expected a key 'x' or 'inputs', found \\['z'\\]"),
    ("zoo:eval_not_arrays", "inputs must be an array or a tensor, got list"),
    ("zoo:eval_float_labels", "labels must be integers"),
    ("zoo:eval_raises", "failed: RuntimeError: no data here"),
    ("zoo:no_such_function", "has no attribute"),
    ("no_such_module_xyz:fn", "cannot import module"),
])
def test_eval_data_factory_errors_name_the_problem(ref, message):
    from explorer.engine.model.data import load_eval_data

    with pytest.raises(LoadError, match=message) as err:
        load_eval_data(ref)
    assert str(err.value).startswith(f"eval data {ref!r}: ")  # names the factory once


def test_an_existing_path_that_looks_like_a_factory_is_read_as_a_file(tmp_path, monkeypatch):
    from explorer.engine.model.data import load_eval_data

    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "zoo:digits_eval_tuple", x=np.zeros((3, 4), np.float32))
    (tmp_path / "zoo:digits_eval_tuple.npz").rename(tmp_path / "zoo:digits_eval_tuple")
    assert len(load_eval_data("zoo:digits_eval_tuple")) == 3  # the file, not the factory's 100


# ------------------------------------------------------------- limits, bombs and lying headers (issue 12.5)

import io  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402

import explorer.engine.model.data as data_mod  # noqa: E402

_MB = 2**20


def peak_of(fn, *args, **kwargs):
    """(result or the LoadError raised, tracemalloc peak in bytes) of calling fn; numpy allocations are traced."""
    tracemalloc.start()
    try:
        try:
            out = fn(*args, **kwargs)
        except LoadError as exc:
            out = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def deflate_zeros(prefix: bytes, total: int):
    """Raw deflate of ``prefix`` then zeros, ``total`` bytes inflated, and its CRC-32. Built in milliseconds:
    after a full flush, every further MiB of zeros compresses to the same ~1 kB block."""
    ch = _MB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = prefix + bytes(min(total, ch) - len(prefix))
    parts, crc = [c.compress(first) + c.flush(zlib.Z_FULL_FLUSH)], zlib.crc32(first)
    full, rem = divmod(total - len(first), ch)
    if full:
        parts.append((c.compress(bytes(ch)) + c.flush(zlib.Z_FULL_FLUSH)) * full)
        zeros = bytes(ch)
        for _ in range(full):
            crc = zlib.crc32(zeros, crc)
    parts.append(c.compress(bytes(rem)) + c.flush())
    return b"".join(parts), zlib.crc32(bytes(rem), crc)


def gzip_zeros(prefix: bytes, total: int) -> bytes:
    raw, crc = deflate_zeros(prefix, total)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + raw + struct.pack("<II", crc, total & 0xFFFFFFFF)


def zip_bytes(members) -> bytes:
    """A zip archive from ``(name, method, compressed bytes, crc, declared uncompressed size)``, written by hand
    so that sizes and methods can lie."""
    body, central = bytearray(), bytearray()
    for name, method, blob, crc, size in members:
        nm, off = name.encode(), len(body)
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(blob), size, len(nm), 0)
        body += nm + blob
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(blob), size,
                               len(nm), 0, 0, 0, 0, 0, off) + nm
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(body), 0)
    return bytes(body + central + eocd)


def npy_head(shape, descr="|u1", fortran=False, version=(1, 0)) -> bytes:
    buf = io.BytesIO()
    d = {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}
    (np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0)(buf, d)
    return buf.getvalue()


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def deflated_member(name, payload: bytes):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return name, zipfile.ZIP_DEFLATED, c.compress(payload) + c.flush(), zlib.crc32(payload), len(payload)


IDX_BOMB = (342392, 28, 28)  # 256 MiB of uint8 zeros behind a ~260 kB gzip file, as in the issue


@pytest.fixture(scope="module")
def gz_idx_bomb(tmp_path_factory):
    head = bytes([0, 0, 0x08, 3]) + struct.pack(">III", *IDX_BOMB)
    return write(tmp_path_factory.mktemp("bomb") / "bomb-images-idx3-ubyte.gz",
                 gzip_zeros(head, len(head) + math.prod(IDX_BOMB)))


NPZ_BOMB_N = 357000  # x: 357000 x 28 x 28 uint8 zeros (280 MB), y: as many int64 zeros; ~280 kB of zip


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory):
    xh, yh = npy_head((NPZ_BOMB_N, 28, 28)), npy_head((NPZ_BOMB_N,), "<i8")
    xraw, xcrc = deflate_zeros(xh, len(xh) + NPZ_BOMB_N * 784)
    yraw, ycrc = deflate_zeros(yh, len(yh) + NPZ_BOMB_N * 8)
    return write(tmp_path_factory.mktemp("bomb") / "bomb.npz", zip_bytes([
        ("x.npy", zipfile.ZIP_DEFLATED, xraw, xcrc, len(xh) + NPZ_BOMB_N * 784),
        ("y.npy", zipfile.ZIP_DEFLATED, yraw, ycrc, len(yh) + NPZ_BOMB_N * 8),
    ]))


def test_gz_idx_bomb_with_a_limit_inflates_only_what_it_needs(gz_idx_bomb):
    assert gz_idx_bomb.stat().st_size < 300_000
    data, peak = peak_of(load_eval_data, gz_idx_bomb, limit=10)
    assert not isinstance(data, LoadError), data
    assert data.inputs.shape == (10, 1, 28, 28) and data.inputs.dtype == torch.float32 and data.labels is None
    assert float(data.inputs.abs().max()) == 0.0 and data.name == f"{gz_idx_bomb.name} (10 of {IDX_BOMB[0]})"
    assert peak < 4 * _MB, peak  # was ~1.3 GB traced (1.6 GB RSS): all 256 MB inflated, then copied
    arr, peak = peak_of(read_idx, gz_idx_bomb, limit=3)
    assert arr.shape == (3, 28, 28) and arr.dtype == np.uint8 and peak < 4 * _MB


def test_gz_idx_bomb_under_a_small_header_is_stopped_one_byte_past_it(tmp_path):
    # header: 20 images; the stream goes on for 256 MiB. The reader stops one byte past what the header
    # declares (inflating it all would cost time, even if not memory).
    head = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 20, 28, 28)
    path = write(tmp_path / "more.gz", gzip_zeros(head, 256 * _MB))
    err, peak = peak_of(read_idx, path)
    assert isinstance(err, LoadError) and "more.gz: gzipped IDX header declares 20 x 28 x 28 uint8 (15680 bytes " \
        "of data) but the file holds more than 15680" in str(err)
    assert peak < 4 * _MB
    assert read_idx(path, limit=10).shape == (10, 28, 28)  # a limit does not verify the rest


def test_gz_idx_header_declaring_more_than_deflate_can_give_is_refused_before_allocating(tmp_path):
    images, _ = mnist_like(n=20, h=28, w=28)
    data = bytearray(idx_bytes(images))
    data[4:8] = struct.pack(">I", 10**6)  # claims a million images: 784 MB from a ~16 kB file
    path = write(tmp_path / "liar-images-idx3-ubyte.gz", bytes(data), gz=True)
    for limit in (None, 1):  # implausible whatever is asked of it
        err, peak = peak_of(load_eval_data, path, limit=limit)
        assert isinstance(err, LoadError) and f"{path.stat().st_size}-byte gzip file can inflate to" in str(err)
        assert "1000000 x 28 x 28 uint8 (784000000 bytes of data)" in str(err)
        assert peak < 1 * _MB


def test_gz_idx_header_declaring_more_than_the_stream_holds(tmp_path):
    images, _ = mnist_like(n=50, h=28, w=28)
    data = bytearray(idx_bytes(images))
    data[4:8] = struct.pack(">I", 100)  # plausible for deflate, but only 50 images follow
    path = write(tmp_path / "half.gz", bytes(data), gz=True)
    with pytest.raises(LoadError, match=r"half\.gz: gzipped IDX header declares 100 x 28 x 28 uint8 \(78400 bytes "
                                         r"of data\) but the file holds 39200$"):
        read_idx(path)
    with pytest.raises(LoadError, match=r"half\.gz: .* ends after 39200 bytes of data \(47040 needed for the "
                                         r"first 60 samples\)"):
        read_idx(path, limit=60)
    np.testing.assert_array_equal(read_idx(path, limit=50), images)  # what is there can be read


def test_plain_idx_size_is_checked_exactly_even_with_a_limit(tmp_path):
    images, _ = mnist_like()
    data = idx_bytes(images)
    for cut, held in ((data[:-1], 139), (data + b"\x00", 141)):
        path = write(tmp_path / "p.idx", cut)
        with pytest.raises(LoadError, match=rf"p\.idx: IDX header declares 7 x 5 x 4 uint8 \(140 bytes of data\) "
                                            rf"but the file holds {held}$"):
            read_idx(path, limit=1)


def test_npz_bomb_with_a_limit_inflates_only_what_it_needs(npz_bomb):
    assert npz_bomb.stat().st_size < 300_000
    data, peak = peak_of(load_eval_data, npz_bomb, limit=10)
    assert not isinstance(data, LoadError), data
    assert data.inputs.shape == (10, 28, 28) and data.inputs.dtype == torch.float32
    assert data.labels.tolist() == [0] * 10 and data.name == f"bomb.npz (10 of {NPZ_BOMB_N})"
    assert peak < 4 * _MB, peak  # was ~1.3 GB traced (1.65 GB RSS)


def test_npz_member_declaring_more_than_its_zip_entry_holds(tmp_path):
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as zf:  # header says 1000 images, 10 follow
        zf.writestr("x.npy", npy_head((1000, 28, 28)) + bytes(7840))
    err, peak = peak_of(load_npz, path, limit=5)
    assert isinstance(err, LoadError) and peak < 1 * _MB
    assert str(err) == (f"{path} ['x']: .npy header declares 1000 x 28 x 28 uint8 (784000 bytes of data) but the "
                        "zip entry holds 7840")


def test_npz_entry_declaring_more_than_compression_can_give(tmp_path):
    name, method, blob, crc, size = deflated_member("x.npy", npy_bytes(np.zeros((100, 10), np.float32)))
    path = write(tmp_path / "ratio.npz", zip_bytes([(name, method, blob, crc, 10**9)]))  # 1 GB from ~100 bytes
    err, peak = peak_of(load_npz, path, limit=1)
    assert isinstance(err, LoadError) and peak < 1 * _MB
    assert f"ratio.npz ['x']: the zip entry claims 1000000000 bytes from {len(blob)} compressed (deflate)" in str(err)
    payload = npy_bytes(np.zeros((4, 3), np.float32))
    path = write(tmp_path / "stored.npz", zip_bytes([("x.npy", zipfile.ZIP_STORED, payload, zlib.crc32(payload),
                                                      len(payload) * 1000)]))
    with pytest.raises(LoadError, match=r"stored\.npz \['x'\]: stored zip entry of 176 bytes claims 176000"):
        load_npz(path)
    raw = bytearray(zip_bytes([("x.npy", zipfile.ZIP_STORED, payload, zlib.crc32(payload), len(payload))]))
    cdir = raw.index(b"PK\x01\x02")
    raw[cdir + 20: cdir + 28] = struct.pack("<LL", 10**6, 10**6)  # central directory: sizes past the archive
    with pytest.raises(LoadError, match=r"past\.npz \['x'\]: the zip entry claims 1000000 compressed bytes"):
        load_npz(write(tmp_path / "past.npz", bytes(raw)))


def test_npz_refuses_non_numeric_arrays_and_unsupported_compression(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.array(["a", "b"]))
    with pytest.raises(LoadError, match=r"s\.npz \['x'\]: inputs must be numbers, got <U1"):
        load_npz(tmp_path / "s.npz", limit=1)
    x = np.empty(2, dtype=object)
    np.savez(tmp_path / "o.npz", x=np.zeros((2, 2)), y=x)
    with pytest.raises(LoadError, match=r"o\.npz \['y'\]: contains Python objects"):
        load_npz(tmp_path / "o.npz", limit=1)
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 2), np.complex64))
    with pytest.raises(LoadError, match="inputs must be numbers, got complex64"):
        load_npz(tmp_path / "c.npz")
    payload = npy_bytes(np.zeros((2, 2), np.float32))
    path = write(tmp_path / "d64.npz", zip_bytes([("x.npy", 9, payload, zlib.crc32(payload), len(payload))]))
    with pytest.raises(LoadError, match=r"d64\.npz \['x'\]: compressed with zip method 9, which is not supported"):
        load_npz(path)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_npz_every_zip_method_reads_the_same_with_and_without_limit(tmp_path, method):
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (30, 1, 6, 6), dtype=np.uint8), rng.integers(0, 10, 30)
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("x_test.npy", npy_bytes(x))
        zf.writestr("y_test.npy", npy_bytes(y))
    full, part = load_npz(path), load_npz(path, limit=7)
    assert len(full) == 30 and len(part) == 7 and part.name == "m.npz (7 of 30)"
    assert torch.equal(full.inputs[:7], part.inputs) and torch.equal(full.labels[:7], part.labels)
    torch.testing.assert_close(full.inputs, torch.from_numpy(x.astype(np.float32) / np.float32(255)), rtol=0, atol=0)


def test_npz_truncated_or_corrupt_member_and_archive(tmp_path):
    x = np.random.default_rng(0).standard_normal((100, 500)).astype(np.float32)  # 200 kB, incompressible
    name, method, blob, crc, size = deflated_member("x.npy", npy_bytes(x))
    path = write(tmp_path / "cut.npz", zip_bytes([(name, method, blob[: len(blob) // 2], crc, size)]))
    err = peak_of(load_npz, path)[0]
    assert isinstance(err, LoadError) and str(err).startswith(f"{path} ['x']: ") and "\n" not in str(err)
    assert torch.equal(load_npz(path, limit=2).inputs, torch.from_numpy(x[:2]))  # the first samples are there
    tiny = deflated_member("x.npy", npy_bytes(np.arange(6, dtype=np.float32)))
    path = write(tmp_path / "tiny.npz", zip_bytes([tiny[:2] + (tiny[2][:-3],) + tiny[3:]]))
    with pytest.raises(LoadError, match=r"tiny\.npz \['x'\]: cannot read \.npy data"):  # cut in its header
        load_npz(path, limit=1)
    path = write(tmp_path / "crc.npz", zip_bytes([(name, method, blob, crc ^ 1, size)]))
    with pytest.raises(LoadError, match=r"crc\.npz \['x'\]: cannot read \.npy data \(Bad CRC-32"):
        load_npz(path)
    good = zip_bytes([(name, method, blob, crc, size)])
    with pytest.raises(LoadError, match=r"end\.npz: cannot read the \.npz archive"):
        load_npz(write(tmp_path / "end.npz", good[: len(good) - 30]))
    np.savez(tmp_path / "m.npz", x=np.zeros((3, 2)), y=np.array([0, 1]))
    with pytest.raises(LoadError, match=r"m\.npz: 3 inputs \('x'\) but 2 labels \('y'\)"):
        load_npz(tmp_path / "m.npz", limit=1)  # the counts are checked on the headers, limit or not


def test_npy_lying_header_is_refused_before_allocating(tmp_path):
    path = write(tmp_path / "liar.npy", npy_head((10**9, 64), "<f4"))  # 238 GiB claimed, 128 bytes held
    for limit in (None, 10):
        err, peak = peak_of(load_eval_data, path, limit=limit)
        assert isinstance(err, LoadError) and peak < 1 * _MB
        assert str(err) == (f"{path}: .npy header declares 1000000000 x 64 float32 (256000000000 bytes of data) "
                            "but the file holds 0")
    v2 = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{"  # a 2 GB header length
    with pytest.raises(LoadError, match=r"big\.npy: \.npy header of 2147483648 bytes, more than the 10000"):
        load_npy(write(tmp_path / "big.npy", v2))
    bad = npy_head((3, 2), "<f4").replace(b"(3, 2)", b"(-3,2)")
    with pytest.raises(LoadError, match=r"neg\.npy: bad \.npy header"):
        load_npy(write(tmp_path / "neg.npy", bad + bytes(24)))
    with pytest.raises(LoadError, match=r"junk\.npy: not a \.npy array"):
        load_npy(write(tmp_path / "junk.npy", b"\x93NUMPX\x01\x00"))


def test_npy_truncated_and_overlong(tmp_path):
    full = npy_bytes(np.ones((5, 4), np.float64))
    with pytest.raises(LoadError, match=r"t\.npy: \.npy header declares 5 x 4 float64 \(160 bytes of data\) but "
                                         r"the file holds 159$"):
        load_npy(write(tmp_path / "t.npy", full[:-1]), limit=1)
    with pytest.raises(LoadError, match=r"the file holds 161$"):
        load_npy(write(tmp_path / "t.npy", full + b"\x00"))
    with pytest.raises(LoadError, match=r"h\.npy: \.npy header truncated"):
        load_npy(write(tmp_path / "h.npy", full[:20]))


@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.int16, np.bool_])
def test_npy_fortran_order_is_read_whole_then_sliced(tmp_path, dtype):
    x = (np.arange(6 * 5 * 4).reshape(6, 5, 4) % 7).astype(dtype)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    assert np.load(tmp_path / "f.npy").flags.f_contiguous  # really written in Fortran order
    c, f = load_npy(tmp_path / "f.npy"), load_npy(tmp_path / "f.npy", limit=2)
    np.save(tmp_path / "c.npy", x)
    expect = load_npy(tmp_path / "c.npy")
    assert torch.equal(c.inputs, expect.inputs) and torch.equal(f.inputs, expect.inputs[:2])
    assert c.inputs.is_contiguous() and f.inputs.is_contiguous() and f.inputs.shape == (2, 5, 4)


def _write_all_formats(tmp_path, x, y):
    """The same (x, y) as plain IDX, gzipped IDX, stored and deflated npz, and npy: {name: (reader, path)}."""
    paths = {}
    for gz in (False, True):
        sfx = ".gz" if gz else ""
        ip = write(tmp_path / f"f-images-idx3-ubyte{sfx}", idx_bytes(x), gz)
        write(tmp_path / f"f-labels-idx1-ubyte{sfx}", idx_bytes(y), gz)
        paths["idx.gz" if gz else "idx"] = ip
    np.savez(tmp_path / "s.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "z.npz", x=x, y=y)
    np.save(tmp_path / "a.npy", x)
    paths.update({"npz": tmp_path / "s.npz", "npz-deflated": tmp_path / "z.npz", "npy": tmp_path / "a.npy"})
    return paths


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.int16])
def test_limit_gives_exactly_the_first_samples_in_every_format(tmp_path, dtype):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, 6, 5)) * 60 + 100).clip(0, 255).astype(dtype)
    y = rng.integers(0, 10, 40, dtype=np.uint8)
    for fmt, path in _write_all_formats(tmp_path, x, y).items():
        full = load_eval_data(path)
        assert len(full) == 40 and full.name == f"{path.name} (40)", fmt
        for n in (1, 13, 40, 41, 10**9):
            part = load_eval_data(path, limit=n)
            k = min(n, 40)
            assert len(part) == k and torch.equal(part.inputs, full.inputs[:k]), (fmt, n)
            assert (part.labels is None) == (fmt == "npy"), fmt
            if part.labels is not None:
                assert torch.equal(part.labels, full.labels[:k]), (fmt, n)
            assert part.name == (f"{path.name} ({k} of 40)" if k < 40 else f"{path.name} (40)")
    if dtype is np.uint8:  # the one conversion gives what the old astype-then-divide gave
        ref = torch.from_numpy(x.astype(np.float32) / np.float32(255.0))
        assert torch.equal(load_eval_data(tmp_path / "a.npy", limit=9).inputs, ref[:9])
    if dtype is np.int16:  # IDX images become float32, npy integers int64 (token ids), both exact
        assert torch.equal(load_eval_data(tmp_path / "a.npy", limit=3).inputs, torch.from_numpy(x[:3].astype(np.int64)))
    np.testing.assert_array_equal(read_idx(tmp_path / "f-images-idx3-ubyte.gz", limit=4), x[:4])


@pytest.mark.parametrize("limit", [0, -1, 2.5, "10", True])
def test_limit_must_be_a_positive_whole_number(tmp_path, limit):
    x, y = mnist_like()
    paths = _write_all_formats(tmp_path, x, y)
    calls = [lambda: read_idx(paths["idx"], limit=limit), lambda: load_idx_pair(paths["idx.gz"], limit=limit),
             lambda: load_npz(paths["npz"], limit=limit), lambda: load_npy(paths["npy"], limit=limit)]
    calls += [lambda p=p: load_eval_data(p, limit=limit) for p in paths.values()]
    for call in calls:
        with pytest.raises(LoadError, match="limit must be (at least 1 sample|a whole number of samples)"):
            call()
    with pytest.raises(LoadError, match=r"^eval data 'zoo:digits_eval_tuple': limit must be"):
        load_eval_data("zoo:digits_eval_tuple", limit=limit)
    assert len(load_eval_data(paths["npy"], limit=np.int64(3))) == 3  # numpy integers are whole numbers


def test_limit_on_factories():
    tup = load_eval_data("zoo:digits_eval_tuple", limit=10)
    assert len(tup) == 10 and tup.name == "zoo:digits_eval_tuple (10 of 100)"
    full = load_eval_data("zoo:digits_eval_tuple")
    assert torch.equal(tup.inputs, full.inputs[:10]) and torch.equal(tup.labels, full.labels[:10])
    ev = load_eval_data("zoo:digits_eval_data", limit=5)
    assert len(ev) == 5 and ev.name == "twenty digits [5 of 20]"
    assert len(load_eval_data("zoo:digits_eval_data", limit=500)) == 20
    with pytest.raises(LoadError, match="5 inputs .* but 4 labels"):  # counts are checked before slicing
        load_eval_data("zoo:eval_mismatched", limit=2)


def test_eval_data_larger_than_the_cap_is_refused_with_a_hint(tmp_path, monkeypatch):
    x, y = mnist_like(n=100, h=10, w=10)
    paths = _write_all_formats(tmp_path, x, y)
    monkeypatch.setattr(data_mod, "MAX_EVAL_BYTES", 50 * 100 * 4)  # 50 float32 images of 10 x 10
    for fmt, path in paths.items():
        err, peak = peak_of(load_eval_data, path)
        assert isinstance(err, LoadError), fmt
        assert str(err).startswith(str(path)) and "100 samples of 10 x 10 as float32" in str(err), str(err)
        assert "more than the 1.86265e-05 GiB allowed for eval data (MAX_EVAL_BYTES)" in str(err)
        assert str(err).endswith("evaluate on fewer samples with --limit N")
        assert len(load_eval_data(path, limit=50)) == 50
    assert data_mod.MAX_EVAL_BYTES == 50 * 100 * 4
    monkeypatch.undo()
    assert data_mod.MAX_EVAL_BYTES == 8 * 2**30


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST t10k files not present")
def test_real_mnist_t10k_with_a_limit_is_the_start_of_the_full_read():
    path = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    full = load_eval_data(path)
    part, peak = peak_of(load_eval_data, path, limit=100)
    assert part.inputs.shape == (100, 1, 28, 28) and part.labels.shape == (100,)
    assert torch.equal(part.inputs, full.inputs[:100]) and torch.equal(part.labels, full.labels[:100])
    assert part.name == "t10k-images-idx3-ubyte.gz (100 of 10000)"
    assert peak < 2 * _MB  # 100 images, not 10000
    np.testing.assert_array_equal(read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", limit=5), [7, 2, 1, 0, 4])
