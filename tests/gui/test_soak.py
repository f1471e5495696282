"""The window under use (issue 16): 500 scripted changes through its widgets, its jobs running — no growth
of threads, open files or Qt objects after warm-up, and no unexpected exception in the banner (a refusal of
a setting is a message of ours; an exception's type name at the start is a bug: the first run of this soak
found torch.fx proxies handed to the preview while a structured plan's compression traced the model)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_500_changes_leave_nothing_behind(qapp):
    spec = importlib.util.spec_from_file_location("soak", BENCH)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    r = soak.run(500, seed=1, every=100, warmup=200, pace_ms=15, settle=100, quiet=True)
    assert r["grew"] == {}, r["grew"]
    unexpected = [m for _, m in r["errors"] if re.match(r"^\w+(Error|Exception)\b", m) or "Traceback" in m]
    assert unexpected == []
    assert sum(r["kinds"].values()) == 500 and len(r["samples"]) == 5
    assert abs(r["rss_growth"]) < 0.15  # memory: the benchmark's 10,000 changes hold it to 5%
