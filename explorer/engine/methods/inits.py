"""The registry of k-means initialisations, by name: what the plan's validation, the window's controls, the
CLI's help and ``inspect --inits`` read.

A module of names, without numba or torch (the plan is validated by commands that must answer at once:
``info``, ``--help``). The built-in names are declared here and their functions bound by
:mod:`explorer.engine.methods.kmeans` when it is imported (the only caller of an init). ``fn(data, k, rng) ->
centroids``: ``data`` is the sorted survivors (``data.xs``, their weights' prefix sums ``data.cw``,
``data.unique()``), ``rng`` a seeded numpy Generator; the centroids in any order, duplicates allowed, at most
``k``.
"""

from __future__ import annotations

BUILTIN = ("linear", "density", "forgy", "kmeans++")

INITS: dict = dict.fromkeys(BUILTIN)  # name -> fn (None until kmeans binds it)


def register_init(name: str, fn) -> None:
    """Add (or replace) a k-means initialisation everywhere at once: ``fn(data, k, rng) -> centroids``."""
    INITS[name] = fn


__all__ = ["BUILTIN", "INITS", "register_init"]
