"""The window's exports: the compressed file and the standard formats, each written in the background
through a non-modal progress dialog that ends with the bytes written (or is cancelled). One at a time."""

from __future__ import annotations

import os
from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QProgressDialog

from explorer.engine.model.export import export
from explorer.engine.progress import report, scaled
from explorer.engine.storage import fileformat
from explorer.units import human_bytes

STANDARD = (("Dense state_dict (.safetensors)…", ".safetensors"), ("TorchScript (.pt)…", ".pt"),
            ("ONNX (.onnx)…", ".onnx"))


def _wrote(path: str, nbytes: int) -> str:
    return f"Wrote {path}\n{nbytes:,} bytes ({human_bytes(nbytes)})"


class Exports:
    """Exports of ``window``'s session (its fine-tuned model where one stands for the plan, else its plan
    built by the session's previewer) on the "export" channel of its workers; :attr:`dialog` is the last
    export's progress dialog."""

    def __init__(self, window):
        self.window = window
        self.dialog: Optional[QProgressDialog] = None
        self.last: Optional[tuple] = None  # (path, bytes) of the last compressed file written

    # ------------------------------------------------------------------------------ entry points
    def export_dialog(self) -> None:
        if self.window.session.loaded is None:
            return self.window.show_error("Open a model first")
        path, _ = QFileDialog.getSaveFileName(self.window, "Export compressed model", "model.cexp",
                                              "Compressed model (*.cexp)")
        if path:
            self.export(path)

    def export(self, path: str, on_done=None) -> None:
        """Write the .cexp file of the current model: the fine-tuned one, or the current plan compressed."""
        session = self.window.session
        loaded, plan, previewer, finetuned = session.loaded, session.plan, session.previewer, session.finetuned
        dense = (session.results or {}).get("size", {}).get("dense")

        def job(progress):
            res = finetuned.compressed if finetuned else previewer.build(plan, scaled(progress, 0.0, 0.7))
            return fileformat.save(res, path, loaded, progress=scaled(progress, 0.7, 1.0))

        def said(written):
            smaller = f", {dense / written:.1f}× smaller than the dense model" if dense and written else ""
            return _wrote(path, written) + smaller

        def done(written):
            self.last = (path, written)
            if on_done:
                on_done(written)

        self._run("Export compressed file", path, job, said, done)

    def standard_dialog(self, ext: str) -> None:
        if self.window.session.loaded is None:
            return self.window.show_error("Open a model first")
        path, _ = QFileDialog.getSaveFileName(self.window, "Export", "model" + ext)
        if path:
            self.export_standard(path, fmt="torchscript" if ext == ".pt" else None)

    def export_standard(self, path: str, fmt: Optional[str] = None, on_done=None) -> None:
        """Write the compressed model in a standard format: ``fmt`` as :func:`explorer.engine.model.export.export`
        takes it (None: by the file's extension, a dense state_dict as .safetensors, ONNX as .onnx)."""
        session = self.window.session
        loaded, plan, previewer, finetuned = session.loaded, session.plan, session.previewer, session.finetuned

        def job(progress):
            if finetuned is not None:
                model = finetuned.compressed.model
            else:
                model = previewer.build(plan, scaled(progress, 0, 0.6), count=False).model
            report(progress, 0.6, "writing")  # the last point where a cancel writes nothing
            return export(model, loaded.example_input, path, fmt=fmt)

        self._run("Export", path, job, lambda out: _wrote(out["path"], out["bytes"]), on_done)

    def progress(self, fraction: float) -> None:
        if self.dialog is not None:
            self.dialog.setValue(int(round(100 * fraction)))

    # ------------------------------------------------------------------------------ the dialog
    def _run(self, title: str, path: str, job, said, on_done=None) -> None:
        """Run an export ``job(progress)`` with a non-modal progress dialog (the window keeps working). Its
        Cancel stops the job at its next report (Workers.stop); a job that has passed its last report (the
        file is being renamed into place) finishes, and the dialog then says what was written after all. At
        the end the dialog and the status bar say ``said(result)``, and the button closes the dialog."""
        win, workers = self.window, self.window.workers
        if workers.busy("export"):
            return win.show_error("An export is running: wait for it, or cancel it in its dialog")
        if self.dialog is not None:
            old, self.dialog = self.dialog, None
            old.close()
            old.deleteLater()
        dialog = QProgressDialog(f"Writing {os.path.basename(path)}…", "Cancel", 0, 100, win)
        dialog.setWindowTitle(title)
        dialog.setWindowModality(Qt.NonModal)
        dialog.setAutoClose(False)
        dialog.setAutoReset(False)
        state = {"finished": False}

        def cancelled():
            if not state["finished"]:
                workers.stop("export")
                win.statusBar().showMessage(f"cancelling the export of {path}…")

        def done(result):
            state["finished"] = True
            if result is None:
                dialog.close()
                win.statusBar().showMessage(f"export of {path} cancelled; nothing was written")
                return
            text = said(result)
            dialog.setLabelText(text)
            dialog.setValue(100)
            dialog.setCancelButtonText("Close")
            dialog.show()  # again, if Cancel came too late to stop it
            win.statusBar().showMessage(text.replace("\n", ": ", 1))
            if on_done:
                on_done(result)

        def failed(message):
            state["finished"] = True
            dialog.close()
            win.show_error(f"Export failed: {message}", True)

        dialog.canceled.connect(cancelled)
        self.dialog = dialog
        dialog.show()
        workers.submit("export", job, done, failed)
