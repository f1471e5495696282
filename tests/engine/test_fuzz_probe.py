"""The quick variant of the extended probe (``benchmarks/fuzz_probe.py``; the 20,000-case run and the hostile
inputs are a benchmark): 19 seed files covering every encoding and plan kind, 500 mutated cases across every
family (raw bytes, streams, schema, edits, shapes, stream indices, code tables, architectures, manifest text),
each parsed, summarised, decoded and (1 in 3) loaded and run; nothing but success or a clean error, no class
of the process changed, every coverage item present."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_extended_probe_finds_nothing_quickly():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "fuzz_probe.py"), "500", "--seed", "20000",
                          "--no-hostile", "--trace-every", "25"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "coverage: 32/32" in out.stdout
    assert "other exceptions (must be 0): 0" in out.stdout and "class patches (must be 0): 0" in out.stdout
