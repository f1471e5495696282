"""Print the README's results table: every sample with every example plan beside it, measured now.

    .venv/bin/python benchmarks/sample_plans.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.engine import Plan, load_model  # noqa: E402
from explorer.engine.evaluate import evaluate_plan  # noqa: E402
from explorer.engine.samples import SAMPLES_DIR, sample_names  # noqa: E402


def main() -> int:
    print("| model | plan | dense | pruned | quantized | coded | ratio | accuracy | MACs after |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for name in sample_names():
        loaded = load_model(name)
        for plan_path in sorted(SAMPLES_DIR.glob(f"{name}*.plan.json")):
            t = time.perf_counter()
            r = evaluate_plan(loaded, Plan.load(plan_path))
            s, a = r["size"], r["accuracy"]
            print(f"| {name} | `{plan_path.name}` | " + " | ".join(f"{s[k]:,}" for k in
                                                                 ("dense", "pruned", "quantized", "coded"))
                  + f" | {s['dense'] / s['coded']:.1f}x | {a['before']:.2%} → {a['after']:.2%} | "
                  f"{r['macs']['after']:,} |", flush=True)
            print(f"  ({time.perf_counter() - t:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
