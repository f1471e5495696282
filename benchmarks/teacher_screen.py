"""The README's picture of the Concepts tab's Teacher view (issue 18) after a real fine-tuning, rendered
offscreen at 1400×900: digits-cnn with its Deep Compression plan (90% pruned, 5 to 8 bits: 11% accuracy
without retraining), fine-tuned on the digits training split as the fine-tuning dialog does it, then the
teacher (the original model), the compressed model before fine-tuning and the fine-tuned one on the same
inputs.

    .venv/bin/python benchmarks/teacher_screen.py [--out assets] [--epochs 12]

Prints where the picture went and the view's explanation (not a test: nothing here asserts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from error_screens import grab, offscreen_window, wait_until  # noqa: E402  (the same window, settle and grab)

from explorer.engine.finetune.data import load_train_data  # noqa: E402
from explorer.engine.finetune.recipe import check_recipe  # noqa: E402
from explorer.engine.finetune.trainer import finetune  # noqa: E402
from explorer.engine.measure.evaluate import quality, summarize  # noqa: E402
from explorer.engine.samples import SAMPLES_DIR  # noqa: E402
from explorer.session import Finetuned  # noqa: E402

MODEL, LAYER = "digits-cnn", "fc1"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "assets"), help="where the PNG goes (default assets/)")
    ap.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs at lr 0.003 (default 12)")
    args = ap.parse_args(argv)
    app, win, out = offscreen_window(args.out, "teacher-screen-")  # Qt: after the platform is chosen
    try:
        win.open_model(MODEL)
        s = win.session
        wait_until(app, lambda: s.loaded is not None and s.results is not None and win.idle())
        win.load_plan(str(SAMPLES_DIR / f"{MODEL}.deep-compression.plan.json"))
        wait_until(app, lambda: win.idle() and s.results is not None)
        win.table.select_names([LAYER])
        result = finetune(s.loaded, s.plan, load_train_data("digits"),
                          recipe=check_recipe({"epochs": args.epochs, "lr": 0.003}))
        s.set_finetuned(Finetuned(result, s.plan, summarize(result.compressed, s.loaded),
                                  quality(s.loaded, result.compressed.model)))
        wait_until(app, win.idle)
        win.concepts.view.select("outputs")
        win.tabs.setCurrentWidget(win.concepts.view)
        wait_until(app, lambda: win.concepts.shown_for == win.concepts.wanted() and win.idle())
        print(win.concepts.view.pages["outputs"].explanation.text())
        grab(app, win, out / "concept-teacher.png")
    finally:
        win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
