"""Readers of evaluation data: IDX (plain/gzip), npz/npy, dispatch and the digits split."""

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.engine.data import (
    EvalData,
    digits_split,
    load_eval_data,
    load_idx_pair,
    load_npy,
    load_npz,
    read_idx,
)
from explorer.engine.errors import LoadError

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
    with pytest.raises(LoadError, match=r"obj\.npz: contains Python objects"):
        load_npz(tmp_path / "obj.npz")
    with pytest.raises(LoadError, match=r"obj\.npz: contains Python objects"):
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
    from explorer.engine.data import load_eval_data
    from explorer.engine.loading import is_factory_ref

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
    from explorer.engine.data import load_eval_data

    with pytest.raises(LoadError, match=message) as err:
        load_eval_data(ref)
    assert str(err.value).startswith(f"eval data {ref!r}: ")  # names the factory once


def test_an_existing_path_that_looks_like_a_factory_is_read_as_a_file(tmp_path, monkeypatch):
    from explorer.engine.data import load_eval_data

    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "zoo:digits_eval_tuple", x=np.zeros((3, 4), np.float32))
    (tmp_path / "zoo:digits_eval_tuple.npz").rename(tmp_path / "zoo:digits_eval_tuple")
    assert len(load_eval_data("zoo:digits_eval_tuple")) == 3  # the file, not the factory's 100
