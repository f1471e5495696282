"""The loaders' fuzzer, a quick run (issue 16): safetensors, IDX (plain and gzipped), .npz and plan JSON,
mutated — every case a result or one clean error (benchmarks/fuzz_loaders.py runs 100,000)."""

from __future__ import annotations

import importlib.util
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from explorer.engine.errors import LoadError
from explorer.engine.model.data import load_eval_data

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_loaders.py"


def test_a_quick_fuzz_of_the_loaders_finds_nothing():
    spec = importlib.util.spec_from_file_location("fuzz_loaders", BENCH)
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    r = fuzz.run(400, seed=11, quiet=True)
    assert r["findings"] == []
    assert {f for f, _ in r["counts"]} == set(fuzz.FORMATS)  # every reader was reached


def test_an_npy_header_numpy_cannot_tokenize_is_one_clean_error(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 3), np.float32))
    npy = buf.getvalue()
    text = b"{"  # an unclosed dict literal: numpy's header parser raised tokenize.TokenError
    bad = npy[:8] + struct.pack("<H", len(text)) + text + npy[10 + struct.unpack("<H", npy[8:10])[0]:]
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", bad)
    with pytest.raises(LoadError, match="bad .npy header"):
        load_eval_data(str(path))
