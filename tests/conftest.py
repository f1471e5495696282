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

    from explorer.engine.methods import kmeans, quantize

    q = quantize.register(quantize.Quantizer(
        "sign", "test only: {-a, 0, +a} with a = mean |w|", _sign_quantize, ("seed",),
        quantize._alpha_write, quantize._alpha_check, quantize._signs_read(True), alphabet=lambda bits: 3,
        code_bits=2))
    kmeans.register_init("median", lambda data, k, rng: np.full(k, np.median(data.xs)))
    yield q
    del quantize.QUANTIZERS["sign"]
    del kmeans.INITS["median"]
