"""Recovering the accuracy a compressed model lost: masked fine-tuning (pruned weights stay zero), trained
quantization (shared centroids move by their weights' summed gradients; uniform grids by a straight-through
estimator), knowledge distillation from the uncompressed model, and gradual pruning schedules.

No imports here: each module is imported by its own path.
"""
