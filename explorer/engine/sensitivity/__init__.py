"""Choosing the settings: per-layer sensitivity scans (accuracy against each layer's sparsity, bits and rank,
the others untouched), the ground automatic allocation stands on.

No imports here: each module is imported by its own path.
"""
