"""Print the README's results table: every sample with every example plan beside it, measured now.

For each pair it compresses the model, writes the .cexp file, loads the file back and measures the
accuracy of the model that came out of the file (not of the in-memory one). A plan with a ``"finetune"``
section (``*.finetuned.plan.json``) is fine-tuned on the samples' training split first, as
``compression-explorer finetune NAME --plan PLAN --train digits`` does; its row says so.

    .venv/bin/python benchmarks/sample_plans.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.engine import Plan, compress, load_model  # noqa: E402
from explorer.engine.finetune.data import load_train_data  # noqa: E402
from explorer.engine.finetune.trainer import finetune  # noqa: E402
from explorer.engine.measure.metrics import accuracy, model_macs  # noqa: E402
from explorer.engine.samples import SAMPLES_DIR, sample_names  # noqa: E402
from explorer.engine.storage import fileformat  # noqa: E402


def main() -> int:
    print("| model | plan | dense bytes | coded (accounting) | file bytes | ratio | accuracy before → after "
          "(from the file) | MACs before → after |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in sample_names():
            loaded = load_model(name)
            before = accuracy(loaded.model, loaded.eval_data)
            macs = model_macs(loaded.model, loaded.example_input)
            for plan_path in sorted(SAMPLES_DIR.glob(f"{name}*.plan.json")):
                t = time.perf_counter()
                plan = Plan.load(plan_path)
                label = f"`{plan_path.name}`"
                if plan.finetune is not None:  # as the CLI's finetune verb runs it (the plan's recipe)
                    res = finetune(loaded, plan, load_train_data("digits")).compressed
                    label += " (fine-tuned: `finetune --train digits`)"
                else:
                    res = compress(loaded.model, plan, loaded.example_input)
                path = os.path.join(tmp, "m.cexp")
                written = fileformat.save(res, path, loaded)
                back = fileformat.load(path)
                after = accuracy(back, loaded.eval_data)
                b = res.bytes
                print(f"| {name} | {label} | {b['dense']:,} | {b['coded']:,} | {written:,} | "
                      f"{b['dense'] / written:.1f}x | {before:.2%} → {after:.2%} | "
                      f"{macs:,} → {model_macs(back, loaded.example_input):,} |", flush=True)
                print(f"  ({time.perf_counter() - t:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
