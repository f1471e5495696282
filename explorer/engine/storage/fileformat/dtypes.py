"""The torch dtype of each dtype name a ``.cexp`` file may use (:data:`~.manifest.DTYPE_NAMES`, torch's own
names, checked by the manifest's schema without torch): what the writer and the decoder convert with."""

from __future__ import annotations

import torch

from explorer.engine.errors import ExplorerError
from explorer.engine.storage.fileformat.manifest import DTYPE_NAMES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def dtype_name(dtype: torch.dtype) -> str:
    """The file's name of a torch dtype; :class:`~explorer.engine.errors.ExplorerError` if it cannot be stored."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ExplorerError(f"tensors of dtype {dtype} cannot be stored")


__all__ = ["DTYPES", "dtype_name"]
