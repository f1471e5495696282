"""The window's messages, each kept under its cause so it goes when the cause does.

A cause is a tuple: ``("plan", key)`` a measurement of the plan whose :meth:`MeasuredPlans.key` is ``key``
failed (it holds while that plan is current); ``("edit",)`` a change was refused (until the next change of
the plan or the selection); ``("job", layer)`` a job about ``layer`` failed (until the plan changes or the
layer is no longer selected: the job runs again then, and says so again if it still fails); ``("data",)``
eval data could not be used (until other data or another model); ``("drag", layer)`` the status bar's hint
while a slider is dragged (until it is released, the plan or the selection changes); ``("other",)`` anything
else (until the next successful edit or model). The banner shows the latest message still standing; the
status bar its first line.
"""

from __future__ import annotations

from typing import Optional

from explorer.session import MeasuredPlans

JOB_WORDS = {"prepare": "measuring ahead", "layer": "histogram", "inits": "centroid comparison",
             "preview": "size preview", "accuracy": "accuracy"}  # what a channel's job is, in a message
STATUS_CHARS = 200


def job_line(channel: str, subject: str, message: str) -> str:
    """One line for a failed job: the layer (when there is one), the work, the cause."""
    what = JOB_WORDS.get(channel, channel)
    first = message.splitlines()[0] if message else "failed"
    return f"{subject}: {what} failed: {first}" if subject else f"{what} failed: {first}"


class Messages:
    """The banner's and the status bar's messages of ``window`` (its ``banner`` label, its session)."""

    def __init__(self, window):
        self.window = window
        self._banner: dict = {}  # cause -> text, oldest first
        self._status: dict = {}  # cause -> text
        s = window.session
        s.on("plan", self._plan_changed)
        s.on("selection", self._selection_changed)
        s.on("model", self.clear)
        s.on("data", lambda: self._drop(self._banner, lambda c: c[0] == "data"))

    # -- showing
    def plan_cause(self) -> tuple:
        """The cause of a failure of the current plan's measurement."""
        return "plan", MeasuredPlans.key(self.window.session.plan)

    def error(self, text: str, cause: tuple = ("other",)) -> None:
        self._banner.pop(cause, None)
        self._banner[cause] = text
        self._show()
        self.window.statusBar().showMessage(text.splitlines()[0][:STATUS_CHARS] if text else "")

    def status(self, text: str, cause: tuple) -> None:
        self._status[cause] = text
        self.window.statusBar().showMessage(text)

    @property
    def errors(self) -> list:
        return list(self._banner.values())

    # -- clearing
    def clear(self, kind: Optional[str] = None) -> None:
        """Every message (of causes of ``kind``, e.g. "drag")."""
        self._drop(self._banner, lambda c: kind is None or c[0] == kind)
        self._drop(self._status, lambda c: kind is None or c[0] == kind)

    def _plan_changed(self) -> None:
        current = self.plan_cause()
        self._drop(self._banner, lambda c: c[0] in ("edit", "job") or (c[0] == "plan" and c != current))
        self._drop(self._status, lambda c: c[0] == "drag")

    def _selection_changed(self) -> None:
        chosen = set(self.window.session.selection)
        self._drop(self._banner, lambda c: c[0] == "edit" or (c[0] == "job" and c[1] not in chosen))
        self._drop(self._status, lambda c: c[0] == "drag")

    def _drop(self, messages: dict, gone) -> None:
        stale = [c for c in messages if gone(c)]
        if not stale:
            return
        bar = self.window.statusBar()
        for cause in stale:
            text = messages.pop(cause)
            if bar.currentMessage() in (text, text.splitlines()[0][:STATUS_CHARS] if text else ""):
                bar.clearMessage()
        if messages is self._banner:
            self._show()

    def _show(self) -> None:
        banner = self.window.banner
        if self._banner:
            banner.setText(next(reversed(self._banner.values())))
            banner.setVisible(True)
        else:
            banner.setText("")
            banner.setVisible(False)
