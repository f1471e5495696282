"""The sensitivity scan's picture (issue 15): the CLI draws one plot per kind, one curve per layer, into a PNG."""

from explorer.cli import main as cli_main
from explorer.engine.sensitivity import scan


def test_the_cli_draws_the_scan(tmp_path, qapp):
    scan.CACHE.clear()
    png = tmp_path / "s.png"
    assert cli_main(["sensitivity", "digits-cnn", "--layers", "fc*", "--what", "sparsity,bits", "--limit", "50",
                     "--png", str(png)]) == 0
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(raw[16:20], "big")
    assert width >= 2 * 400  # two plots side by side
