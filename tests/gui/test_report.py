"""``compression-explorer report``: the handout holds every concept's help and pictures, its explanations are
the engine's numbers for the model and plan, the pictures are real PNGs, and bad input writes nothing."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from explorer.cli import main
from explorer.engine.measure.preview import Previewer
from explorer.engine.model.loading import load_model
from explorer.engine.plan import Plan
from explorer.engine.teach.help import HELP
from explorer.engine.teach.model import pipeline_view

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def test_the_report_holds_every_view_with_the_engines_numbers(tmp_path, capsys, qapp):
    out = tmp_path / "report.html"
    plan = SAMPLES / "digits-mlp.plan.json"
    assert main(["report", "digits-mlp", "--plan", str(plan), "-o", str(out), "--layer", "fc2"]) == 0
    said = capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    figures = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert f"wrote {out}: {len(figures)} figures (fc2)" in said
    # granularity (the plan's element pruning and filters beside it), four more layer views, three model views
    assert len(figures) == 2 + 4 + 3
    for data in figures:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for h in HELP.values():
        assert html.escape(h.title) in page and html.escape(h.formula) in page
    loaded = load_model("digits-mlp")
    summary = Previewer(loaded).measure(Plan.load(str(plan)))
    assert html.escape(pipeline_view(summary).explain()) in page
    assert "fc2 keeps 20.0% of its 30,000 weights" in page  # the plan prunes fc2 by 80%


def test_bad_input_gets_one_message_and_no_file(tmp_path, capsys, qapp):
    out = tmp_path / "report.html"
    assert main(["report", "digits-mlp", "--layer", "nope", "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert "no layer 'nope'" in err and "fc1, fc2, fc3" in err
    assert main(["report", "digits-mlp", "--plan", str(tmp_path / "missing.json"), "-o", str(out)]) != 0
    assert "missing.json" in capsys.readouterr().err
    assert main(["report", "digits-mlp", "-o", str(tmp_path / "no-such-dir" / "r.html")]) != 0
    assert "no-such-dir" in capsys.readouterr().err
    assert not out.exists()


def test_a_view_with_nothing_to_draw_is_its_text_alone(tmp_path, capsys, qapp):
    out = tmp_path / "report.html"
    assert main(["report", "digits-mlp", "-o", str(out), "--layer", "fc3"]) == 0  # no plan: nothing pruned
    page = out.read_text(encoding="utf-8")
    text = "fc3 keeps 100.0% of its 1,000 weights: nothing element-pruned, so every weight is stored in place"
    at = page.index(text)
    figure = page[page.rindex("<figure>", 0, at):page.index("</figure>", at)]
    assert "<img" not in figure
