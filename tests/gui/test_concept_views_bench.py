"""benchmarks/concept_views.py --quick (the Concepts tab's GUI-thread stall, issue 18) runs and times every
view: a smoke test of the script whose full run the README quotes (no time is asserted here)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ["granularity (element)", "granularity (filter)", "granularity (channel)", "storage", "quantization",
         "entropy", "lowrank", "pipeline", "graph (ratio)", "graph (sensitivity)", "outputs", "outputs (3 models)"]


def test_the_quick_benchmark_times_every_view(qapp, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import concept_views

    assert concept_views.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| digits-mlp")}
    assert set(VIEWS) <= rows
    assert "max GUI-thread stall:" in out and "(budget 50 ms" in out
