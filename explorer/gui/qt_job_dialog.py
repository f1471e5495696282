"""What the window's dialogs for long engine work share (Compress → Fine-tune…, Plan → Auto…): a form, a
start button, a Cancel, a progress bar and a status line; the work itself runs on a worker, never here."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog


class JobDialog(QDialog):
    """A subclass makes ``form``, ``start_button``, ``cancel_button``, ``progress`` and ``status``, then calls
    :meth:`set_running` (False); :meth:`on_running` is its hook for what else a start resets."""

    def set_running(self, running: bool) -> None:
        self.form.setEnabled(not running)
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress.setValue(0)
            self.progress.setFormat("%p%")
        self.on_running(running)

    def on_running(self, running: bool) -> None:
        pass

    def say(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet("color: #a00" if error else "")
        self.status.setText(text)

    def fail(self, text: str) -> None:
        """The run ended in an error: the form usable again, the error in the status line."""
        self.set_running(False)
        self.say(text, error=True)

    def show_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(round(100 * fraction)))
        self.progress.setFormat(f"{message} — %p%" if message else "%p%")
