"""Background work for the window: the only module that starts threads.

Each job has a *channel* ("preview", "accuracy", "layer", "inits", "export", ...). Starting a job on a
channel supersedes the one running there: its generation is bumped, the old job is asked to stop (its
progress callback returns False, so the engine raises ``Cancelled`` at its next report), and whatever it
still returns is dropped because its generation is old. Results and errors are delivered on the GUI
thread, through queued signals, only while current.

Every failure is logged (an unexpected exception with its traceback). A current job that failed and has no
``on_error`` handler of its own is announced by :attr:`Workers.unhandled` (channel, the layer it was about
or "", the one line): the window shows that in its banner, so no job's failure is seen only on a terminal.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import logging
import time
from typing import Callable, Optional

import torch
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from explorer.engine.errors import Cancelled, ExplorerError
from explorer.gui.qt_errors import log_file


class _Signals(QObject):
    done = Signal(str, int, object)  # channel, generation, result
    failed = Signal(str, int, str)  # channel, generation, message
    progress = Signal(str, int, float, str)  # channel, generation, fraction, message


INTERACTIVE = frozenset({"preview", "layer"})  # answer a slider release: a thread at the GUI's priority
SIDE = frozenset({"inits", "init_accuracy", "prepare", "concepts"})  # per-layer extras (centroid comparison and its accuracy
# per init, sweep state): their own thread
TRAINING = frozenset({"finetune", "auto"})  # minutes of work: a thread of their own (one at a time), so loading,
# accuracy and exports go on
SCANS = frozenset({"sensitivity"})  # a sensitivity scan: minutes on a large model, so a thread of its own too
GUI_SWITCH_INTERVAL = 0.0001  # seconds (see _tune_process)
# Background engine threads yield the CPU to the GUI thread (2 cores, 3+ busy threads), but only a little:
# a thread preempted while it holds the GIL keeps every other thread out of Python until the scheduler runs
# it again, and at nice 10 on a loaded host that took 50-90 ms (the window frozen: a priority inversion the
# GIL cannot resolve); at nice 4 the longest stall with another process loading a core was 20-34 ms.
WORKER_NICE = 4
PROGRESS_INTERVAL = 0.05  # seconds between two progress reports of a job
YIELD_LIMIT = 1.0  # seconds a background job waits for interactive ones at most, per report
_reniced = threading.local()
log = logging.getLogger("explorer.workers")


def _lower_priority() -> None:
    """Renice the current worker thread once (Linux: per thread; threads it starts, e.g. torch's OpenMP
    pool, inherit it), so redraws are not starved while accuracy and k-means run."""
    if getattr(_reniced, "done", False) or not sys.platform.startswith("linux"):
        return
    _reniced.done = True
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), WORKER_NICE))
    except OSError:
        pass


def _tune_process() -> None:
    """Process-wide settings for a window whose workers run engine jobs back to back.

    - Every Python callback Qt makes on the GUI thread (a paint, a model's data(), a timer) must take the
      GIL back from a worker running Python code; the interpreter makes a waiting thread wait up to the
      switch interval (5 ms by default) each time, and a redraw makes dozens of such callbacks.
    - glibc returns freed blocks above its mmap threshold (tens of MB: a large layer's codes, mask and
      k-means buffers) to the system, so the next job page-faults them in again (a quarter of a
      re-measurement's time). Keeping up to 1 GiB of freed memory for reuse avoids that.
    - See :func:`freeze_heap`.
    - torch runs its operations on every core by default; a long accuracy measurement would then leave
      no core for the GUI thread and the job that answers a slider.
    """
    if sys.getswitchinterval() > GUI_SWITCH_INTERVAL:
        sys.setswitchinterval(GUI_SWITCH_INTERVAL)
    freeze_heap()
    try:  # torch's own threads (accuracy) leave one core to the GUI thread and the interactive jobs
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    except RuntimeError:  # already running parallel work: keep its setting
        pass
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 1 << 29)  # M_MMAP_THRESHOLD: blocks up to 512 MiB come from the heap
            libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed memory
        except (OSError, AttributeError):  # not glibc: nothing to tune
            pass


def freeze_heap() -> None:
    """Exclude every object alive now (Qt, torch, numba, a loaded model: millions of them) from the
    garbage collector's full collections. A full collection walks them all while holding the GIL, which
    froze the window for 100-300 ms whenever one ran, on any thread. Objects created later are collected
    as usual. Called at start, after a model is loaded and after each accuracy measurement (the end of a
    round of work, when the kernels and caches it needed are loaded). Cyclic garbage alive at that moment
    is kept; anything freed by reference counting is still freed."""
    gc.freeze()


class _Gate:
    """Counts the interactive jobs submitted and not yet finished; background jobs wait at their progress
    reports while there is one (see :meth:`_Job.progress`)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._open = 0

    def enter(self) -> None:
        with self._cond:
            self._open += 1

    def leave(self) -> None:
        with self._cond:
            self._open -= 1
            if self._open <= 0:
                self._open = 0
                self._cond.notify_all()

    def wait(self, abort: threading.Event, limit: float) -> None:
        """Wait while an interactive job is pending, at most ``limit`` seconds, or until ``abort``."""
        with self._cond:
            end = time.monotonic() + limit
            while self._open and not abort.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.05))


class _Job(QRunnable):
    def __init__(self, signals: _Signals, channel: str, generation: int, fn: Callable, abort: threading.Event,
                 gate: _Gate, delay: float = 0.0, stop: Optional[threading.Event] = None):
        super().__init__()
        self.setAutoDelete(True)
        self.signals, self.channel, self.generation, self.fn, self.abort = signals, channel, generation, fn, abort
        self.gate, self.delay = gate, delay
        self.stop = stop or threading.Event()  # Workers.stop: end at the next report, and say so (deliver None)
        self.interactive = channel in INTERACTIVE
        self.last_report = time.monotonic()

    def progress(self, fraction: float, message: str = "") -> bool:
        """The engine's progress callback: False once superseded (the engine then stops). Reported to the
        GUI at most every :data:`PROGRESS_INTERVAL` and not in a job's first one: each report is a Python
        slot on the GUI thread, which takes the GIL from this job (a 10 ms re-measurement reported 21
        times, once per layer, took three times as long in the window)."""
        if not self.interactive:
            # a slider was released: the preview and the histogram it asked for get the CPU (two cores:
            # the GUI thread and the interactive job), this job goes on once they are done; accuracy
            # reports before every layer, so it stops within one layer's work
            self.gate.wait(self.abort, YIELD_LIMIT)
        if self.abort.is_set() or self.stop.is_set():
            return False
        now = time.monotonic()
        if now - self.last_report >= PROGRESS_INTERVAL:
            self.last_report = now
            self.signals.progress.emit(self.channel, self.generation, float(fraction), message)
        return True

    @Slot()
    def run(self) -> None:
        try:
            self._run()
        finally:
            if self.interactive:
                self.gate.leave()

    def _run(self) -> None:
        if not self.interactive:
            _lower_priority()  # the interactive thread keeps the GUI's priority: its jobs take tens of
            # milliseconds and answer a slider, before an accuracy batch or a k-means comparison goes on
        if self.delay > 0 and self.abort.wait(self.delay):
            return  # superseded while it waited: it has cost no work
        self.last_report = time.monotonic()
        try:
            result = self.fn(self.progress)
        except Cancelled:
            if self.stop.is_set() and not self.abort.is_set():
                self.signals.done.emit(self.channel, self.generation, None)  # stopped: still current
            return
        except ExplorerError as exc:
            log.warning("a %s job failed: %s", self.channel, exc)
            self.signals.failed.emit(self.channel, self.generation, str(exc))
            return
        except Exception as exc:  # an engine bug must not take the window down: logged, and said in one line
            log.error("unexpected error in a %s job", self.channel, exc_info=True)
            where = log_file()
            told = f" (the traceback is in {where})" if where is not None else ""
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.signals.failed.emit(self.channel, self.generation, f"{type(exc).__name__}: {first}{told}")
            return
        if not self.abort.is_set():
            self.signals.done.emit(self.channel, self.generation, result)


class Workers(QObject):
    """Runs ``fn(progress)`` callables on a thread pool, one current job per channel."""

    progress = Signal(str, float, str)  # channel, fraction, message (current jobs only)
    unhandled = Signal(str, str, str)  # channel, subject (a layer, or ""), message: a current job failed
    # and had no on_error handler

    def __init__(self, parent: Optional[QObject] = None, threads: int = 2):
        super().__init__(parent)
        _tune_process()
        self.pool = QThreadPool(self)  # long jobs: loading, accuracy, export
        self.pool.setMaxThreadCount(max(1, threads - 1))
        # interactive jobs (the preview after a slider release, the layer's histogram) get a thread of their
        # own at the GUI's priority, so they never queue behind a long accuracy batch that is still winding
        # down, nor behind the centroid comparison or the sweep preparation, which have a (lower) thread
        self.interactive = QThreadPool(self)
        self.interactive.setMaxThreadCount(1)
        self.side = QThreadPool(self)
        self.side.setMaxThreadCount(1)
        self.training = QThreadPool(self)
        self.training.setMaxThreadCount(1)
        self.scans = QThreadPool(self)
        self.scans.setMaxThreadCount(1)
        self._gate = _Gate()
        self._signals = _Signals()
        self._signals.done.connect(self._on_done)
        self._signals.failed.connect(self._on_failed)
        self._signals.progress.connect(self._on_progress)
        self._generation: dict = {}
        self._abort: dict = {}
        self._handlers: dict = {}
        self._subjects: dict = {}  # channel -> what its current job is about (a layer name, or "")
        self._stops: dict = {}  # channel -> its latest job's stop event
        self.dropped = 0  # results that arrived after being superseded (for tests and the status bar)

    def submit(self, channel: str, fn: Callable, on_done: Callable, on_error: Optional[Callable] = None,
               delay: float = 0.0, subject: str = "") -> int:
        """Start ``fn(progress)`` on ``channel``, superseding the job there. Returns its generation.
        ``on_error(message)``: what a failure does; without it the failure is announced by :attr:`unhandled`
        with ``subject`` (the layer the job is about, if any).
        ``delay``: seconds the job waits before it starts (on a worker, woken at once when superseded), so a
        request that is replaced quickly costs no work. Not for interactive channels: their pending jobs
        hold background jobs back (see :class:`_Gate`) for as long as they wait."""
        if delay and channel in INTERACTIVE:
            raise ValueError(f"channel {channel!r} answers a release at once: it takes no delay")
        self.cancel(channel)
        gen = self._generation.get(channel, 0) + 1
        self._generation[channel] = gen
        abort = threading.Event()
        self._abort[channel] = abort
        self._handlers[channel] = (on_done, on_error)
        self._subjects[channel] = subject
        pool = (self.interactive if channel in INTERACTIVE else self.side if channel in SIDE
                else self.training if channel in TRAINING else self.scans if channel in SCANS else self.pool)
        if channel in INTERACTIVE:
            self._gate.enter()  # left when the job has run (also when it was superseded meanwhile)
        stop = self._stops[channel] = threading.Event()
        pool.start(_Job(self._signals, channel, gen, fn, abort, self._gate, delay, stop))
        return gen

    def stop(self, channel: str) -> None:
        """Ask the job on ``channel`` to end at its next progress report, as a user's Stop or Cancel does.
        Unlike :meth:`cancel` the job stays current: its ``on_done`` gets None when it stopped, or its result
        when it had passed its last report (e.g. a file already being renamed into place)."""
        if channel in self._abort:
            self._stops[channel].set()

    def cancel(self, channel: str) -> None:
        abort = self._abort.pop(channel, None)
        if abort is not None:
            abort.set()
            self._generation[channel] = self._generation.get(channel, 0) + 1

    def current(self, channel: str, generation: int) -> bool:
        return self._generation.get(channel) == generation and channel in self._abort

    def busy(self, channel: str) -> bool:
        return channel in self._abort

    def _finish(self, channel: str) -> None:
        self._abort.pop(channel, None)

    @Slot(str, int, object)
    def _on_done(self, channel: str, generation: int, result) -> None:
        self._deliver(channel, generation, 0, result)

    @Slot(str, int, str)
    def _on_failed(self, channel: str, generation: int, message: str) -> None:
        self._deliver(channel, generation, 1, message)

    def _deliver(self, channel: str, generation: int, which: int, value) -> None:
        """Hand a job's result (which=0) or error message (which=1) to its handler, if still current."""
        if not self.current(channel, generation):
            self.dropped += 1
            return
        self._finish(channel)
        handler = self._handlers.get(channel, (None, None))[which]
        if handler is not None:
            handler(value)
        elif which == 1:
            self.unhandled.emit(channel, self._subjects.get(channel, ""), value)

    @Slot(str, int, float, str)
    def _on_progress(self, channel: str, generation: int, fraction: float, message: str) -> None:
        if self.current(channel, generation):
            self.progress.emit(channel, fraction, message)

    def shutdown(self, timeout_ms: int = 5000) -> None:
        for channel in list(self._abort):
            self.cancel(channel)
        for pool in (self.pool, self.interactive, self.side, self.training, self.scans):
            pool.waitForDone(timeout_ms)
