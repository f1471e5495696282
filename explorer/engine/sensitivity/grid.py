"""The scan's grid: what a sensitivity scan varies and at which values, and how many samples it measures on
by default. Plain constants, without torch, so the command line's help and defaults read them at start-up."""

KINDS = ("sparsity", "bits", "rank")
SPARSITIES = tuple(p / 100 for p in (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95))
BITS = (1, 2, 3, 4, 5, 6, 7, 8)
RANKS = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)
DEFAULT_LIMIT = 500
