"""Measuring: MACs and accuracy, whole-plan evaluation, the window's incremental preview and views.

No imports here: each module is imported by its own path."""
