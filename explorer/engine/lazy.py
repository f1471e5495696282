"""A package's public names imported on first use (PEP 562): what lets a command that needs one light
name (an error class, a file's manifest) answer without torch's import."""

from __future__ import annotations

import importlib


def lazy_exports(namespace: dict, exports: dict):
    """``exports``: module path -> the names it gives the package whose globals are ``namespace``. Returns the
    package's ``__getattr__`` and ``__dir__`` and its ``__all__``; a name is imported from its module the first
    time it is asked for, then kept in ``namespace``."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__, sorted(where)


__all__ = ["lazy_exports"]
