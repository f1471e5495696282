import errno
import os
import sys

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, os.path.dirname(__file__))  # lets tests import zoo


# ------------------------------------------------------------------------- a made-up method, registered


def _sign_quantize(weight, mask, settings):
    """A made-up method: sign times the mean |w| of the survivors, pruned weights exactly 0 (3 codes)."""
    import numpy as np
    import torch

    from explorer.engine.methods import quantize

    w = weight.detach().to(torch.float64).reshape(-1).numpy()
    keep = np.ones(w.size, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    a = np.float32(np.abs(w[keep]).mean() if keep.any() else 0.0)
    codes = np.where(keep, np.where(w >= 0, 2, 0), 1).astype(np.int64)
    book = np.array([-a, 0.0, a], np.float32)
    decoded = torch.from_numpy(book.astype(np.float64)[codes].reshape(tuple(weight.shape))).to(weight.dtype)
    return quantize.QuantResult("sign", 2, codes, decoded, 1, 3, codebook=book, side_bits=32,
                                info={"seed": settings.seed})


@pytest.fixture
def registered_methods():
    """A quantization method "sign" (its table stored as the ternary alpha is) and a k-means initialisation
    "median", registered for one test and removed after it: nothing else is told about them."""
    import numpy as np

    from explorer.engine.methods import kmeans, quantizers

    q = quantizers.register(quantizers.Quantizer(
        "sign", "test only: {-a, 0, +a} with a = mean |w|", _sign_quantize, ("seed",),
        quantizers._alpha_write, quantizers._alpha_check, quantizers._signs_read(True), alphabet=lambda bits: 3,
        code_bits=2))
    kmeans.register_init("median", lambda data, k, rng: np.full(k, np.median(data.xs)))
    yield q
    del quantizers.QUANTIZERS["sign"]
    del kmeans.INITS["median"]


@pytest.fixture(autouse=True)
def restore_sys_path():
    """Every test leaves sys.path as it found it: a benchmark imported in-process puts benchmarks/ on it, and
    under pytest-xdist the next test in that worker is any test (a benchmark named like a package an optional
    dependency probes for, as kernels.py was for transformers, then broke its import)."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(autouse=True)
def state_dirs(tmp_path_factory, monkeypatch):
    """Autosaves and log files of the windows under test go to a temporary directory, never the user's;
    the restore prompt is not answered from the environment unless a test says so."""
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("COMPRESSION_EXPLORER_STATE_DIR", str(base / "state"))
    monkeypatch.setenv("COMPRESSION_EXPLORER_LOG_DIR", str(base / "log"))
    monkeypatch.delenv("COMPRESSION_EXPLORER_RESTORE", raising=False)
    return base


class FullDisk:
    """Writes to the atomic writer's temporary files (``.tmp-*``) fail as on a full disk (ENOSPC) while
    :meth:`fill`-ed; :meth:`read_only` makes creating them fail as in a read-only directory (EACCES, what
    chmod 555 gives a user who is not root). Other files are untouched."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.mode = monkeypatch, None
        real_fdopen, real_open = os.fdopen, os.open

        class Full:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(self.fh, name)

        def fdopen(fd, *args, **kwargs):
            fh = real_fdopen(fd, *args, **kwargs)
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            return Full(fh) if self.mode == "full" and name.startswith(".tmp-") else fh

        def open_(path, *args, **kwargs):
            if self.mode == "read-only" and os.path.basename(os.fspath(path)).startswith(".tmp-"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "fdopen", fdopen)
        monkeypatch.setattr(os, "open", open_)

    def fill(self):
        self.mode = "full"

    def read_only(self):
        self.mode = "read-only"

    def free(self):
        self.mode = None


@pytest.fixture
def full_disk(monkeypatch):
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell the writer's temporary files")
    return FullDisk(monkeypatch)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory made read-only (chmod 555), writable again at teardown; the test is skipped where
    permissions are not enforced (root writes anyway)."""
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o555)
    if os.access(path, os.W_OK):
        path.chmod(0o755)
        pytest.skip("permissions are not enforced for this user (root)")
    yield path
    path.chmod(0o755)
