"""No benchmark script shadows an installed package: tests and benchmarks put benchmarks/ on sys.path, where a
`kernels.py` stood for the `kernels` package transformers imports and broke every Hugging Face load after it."""

import importlib.metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_no_benchmark_is_named_like_an_installed_distribution_or_its_top_level_module():
    taken = set()
    for dist in importlib.metadata.distributions():
        taken.add((dist.metadata["Name"] or "").lower().replace("-", "_"))
        top = dist.read_text("top_level.txt") or ""
        taken.update(line.strip().lower() for line in top.splitlines() if line.strip())
    clashes = sorted(p.stem for p in BENCH.glob("*.py") if p.stem.lower() in taken)
    assert not clashes, f"benchmarks shadowing installed packages: {clashes}"
