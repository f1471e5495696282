"""Qt-free formatting shared by the command line and the window: byte and count figures, text tables."""

from __future__ import annotations

from typing import Optional


def human_bytes(n: Optional[float]) -> str:
    """``459040`` -> ``'459.0 KB'`` (powers of 1000, as the README's tables give them); ``None`` -> ``'-'``."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)


def human_count(n: Optional[float]) -> str:
    """``260520`` -> ``'260.52K'``; ``None`` -> ``'-'``."""
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def table(rows: list, headers: list, align: str) -> str:
    """Rows of cells as aligned text columns under ``headers`` and a rule; ``align`` has one ``l`` or ``r``
    per column."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, r in enumerate(cells):
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = ["human_bytes", "human_count", "table"]
