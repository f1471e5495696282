"""The compression methods: pruning (weights and channels), quantization and k-means, low-rank.

No imports here: each module is imported by its own path."""
