"""Progress and cancellation for long engine work.

Long functions take ``progress``: a callable ``progress(fraction, message)`` with ``fraction`` in [0, 1].
If it returns ``False`` the work stops at that point by raising :class:`Cancelled`. ``None`` means no
reporting. A GUI worker passes a callable that emits a signal and checks its abort flag; the CLI passes
a text progress bar.
"""

from __future__ import annotations

from typing import Callable, Optional

from explorer.engine.errors import Cancelled

ProgressFn = Optional[Callable[[float, str], object]]


def report(progress: ProgressFn, fraction: float, message: str = "") -> None:
    """Report ``fraction`` done; raise :class:`Cancelled` if the callback asks to stop."""
    if progress is None:
        return
    if progress(min(max(float(fraction), 0.0), 1.0), message) is False:
        raise Cancelled(f"cancelled during: {message}" if message else "cancelled")


def scaled(progress: ProgressFn, start: float, stop: float, phase: str = "") -> ProgressFn:
    """A callback that maps [0, 1] of a sub-task onto [start, stop] of ``progress``.

    ``phase`` names the sub-task in its messages (``"compress (1/2): compressing fc1.weight"``). A sub-task's
    closing ``"done"`` is its own, not the whole's: short of the end it is said as ``"<phase> done"`` (or
    dropped, unnamed), so a bar never reads "done" at 36% and goes on.
    """
    if progress is None:
        return None

    def sub(fraction: float, message: str = "") -> object:
        if message == "done" and stop < 1.0:
            message = f"{phase} done" if phase else ""
        elif phase:
            message = f"{phase}: {message}" if message else phase
        return progress(start + (stop - start) * fraction, message)

    return sub
