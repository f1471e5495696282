"""Factories: ``package.module:callable`` references to user code that builds a model or eval data.

The one place where such a reference is told from a path, resolved (imported) and called. A reference is
resolved only when the user names it (``--factory``, ``--data``, a model argument) or when it is one of the
bundled samples' own factories: nothing a file says is imported on its word.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Optional

from torch import nn

from explorer.engine.errors import LoadError


def resolve_factory(ref: str):
    """Import ``package.module:callable`` (the callable may be dotted: ``mod:Class.build``)."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise LoadError(f"factory {ref!r}: expected 'package.module:callable'")
    mod_name, attr = ref.split(":")
    if not mod_name or not attr:
        raise LoadError(f"factory {ref!r}: expected 'package.module:callable'")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as exc:  # ImportError and anything the module raises on import
        raise LoadError(f"factory {ref!r}: cannot import module '{mod_name}': {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not part.isidentifier() or part.startswith("_"):
            raise LoadError(f"factory {ref!r}: '{part}' is not a public name")
        if not hasattr(obj, part):
            raise LoadError(f"factory {ref!r}: module '{mod_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
        if inspect.ismodule(obj):  # 'pkg.mod:other_module.fn' would reach code the reference does not name
            raise LoadError(f"factory {ref!r}: '{part}' is a module; name the module before the ':'")
    if not callable(obj):
        raise LoadError(f"factory {ref!r}: '{attr}' is not callable")
    return obj


def call_factory(ref: str, kwargs: Optional[dict] = None):
    """Call a factory and normalise what it returns to (model, example_input, eval_data)."""
    fn = resolve_factory(ref)
    try:
        out = fn(**(kwargs or {}))
    except Exception as exc:
        raise LoadError(f"factory {ref!r} failed: {type(exc).__name__}: {exc}") from None
    example, data = None, None
    if isinstance(out, dict):
        model, example, data = out.get("model"), out.get("example_input"), out.get("eval_data")
    elif isinstance(out, (tuple, list)):
        if not 1 <= len(out) <= 3:
            raise LoadError(f"factory {ref!r} returned a tuple of {len(out)}; expected (model[, example_input"
                            "[, eval_data]])")
        model = out[0]
        example = out[1] if len(out) > 1 else None
        data = out[2] if len(out) > 2 else None
    else:
        model = out
    if not isinstance(model, nn.Module):
        raise LoadError(f"factory {ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model, example, data


def is_factory_ref(s) -> bool:
    """Whether ``s`` names a factory (``package.module:callable``) rather than a file: one colon, no path
    separator, not an existing path, and on Windows not a drive letter (``C:model.pt``)."""
    if not isinstance(s, str) or s.count(":") != 1 or "/" in s or "\\" in s or os.path.exists(s):
        return False
    return not (os.name == "nt" and len(s.split(":")[0]) == 1)


__all__ = ["resolve_factory", "call_factory", "is_factory_ref"]
