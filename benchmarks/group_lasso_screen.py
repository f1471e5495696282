"""The README's picture of structured sparsity learning (issue 20) in the fine-tuning dialog, rendered offscreen:
digits-cnn with conv2 and fc1 heavily filter-pruned (benchmarks/plans/digits-cnn.group-lasso.plan.json, whose
recipe trains the uncompressed model with a group-lasso penalty first), trained by pressing Train in the dialog;
the dialog is grabbed when the run is done, its third plot the groups' norms as they shrank.

    .venv/bin/python benchmarks/group_lasso_screen.py [--out assets]

Prints where the picture went and the dialog's outcome line (not a test: nothing here asserts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from error_screens import offscreen_window, wait_until  # noqa: E402  (the same window and settle)

PLAN = ROOT / "benchmarks" / "plans" / "digits-cnn.group-lasso.plan.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "assets"), help="where the PNG goes (default assets/)")
    args = ap.parse_args(argv)
    app, win, out = offscreen_window(args.out, "group-lasso-screen-")  # Qt: after the platform is chosen
    try:
        win.open_model("digits-cnn")
        s = win.session
        wait_until(app, lambda: s.loaded is not None and s.results is not None and win.idle())
        win.load_plan(str(PLAN))
        wait_until(app, lambda: win.idle() and s.results is not None)
        win.finetuning.open_dialog()
        dialog = win.finetuning.dialog
        dialog.resize(1400, 760)
        dialog.train_button.click()
        wait_until(app, lambda: s.finetuned is not None and win.idle(), timeout=300)
        for _ in range(50):
            app.processEvents()
        path = out / "group-lasso.png"
        print(f"{'saved' if dialog.grab().save(str(path)) else 'FAILED to save'} {path}")
        print(dialog.status.text() if hasattr(dialog, "status") else "")
    finally:
        win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
