"""Where independent jobs run: in this process (the default: one machine, no setup) or on a Ray runtime.

A sweep is a :class:`Workload`: a payload every job needs (the model, the data), a ``setup`` that turns the
payload into a worker's state once (e.g. a previewer of the model), and a ``task(state, item)`` per item. An
executor's :meth:`map` yields ``(index, result)`` as results arrive, in any order; a caller that needs them in
order sorts by index. Progress is reported and cancellation honoured between results, as everywhere
(:mod:`explorer.engine.progress`): a result is handed out whole or not at all.

:class:`RayExecutor` puts the payload in Ray's object store once and runs the jobs as Ray tasks of one CPU
each, at most :data:`IN_FLIGHT` per CPU queued so none idles and none holds a backlog. A worker process
fetches the payload and runs ``setup`` once per workload (the model is shipped once per worker, not per
job) and keeps that state for its next jobs; workloads of one ``key`` share payload and state. ``ray`` is an
optional extra (``pip install 'compression-explorer[ray]'``), imported only here, when an executor is made.

``setup`` and ``task`` must be module-level functions (workers import them by name), the payload picklable.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from explorer.engine.errors import ExplorerError
from explorer.engine.progress import ProgressFn, report

PACKAGE = Path(__file__).resolve().parents[1]  # explorer/, shipped to a cluster's workers
IN_FLIGHT = 2  # jobs queued per Ray actor: one running, one waiting, so no worker idles between jobs


@dataclass
class Workload:
    setup: Callable[[Any], Any]  # payload -> a worker's state, once per worker
    task: Callable[[Any, Any], Any]  # (state, item) -> result
    payload: Any = None
    state: Any = None  # in-process only: a state already built (e.g. the caller's previewer), setup skipped
    key: Optional[str] = None  # names the payload: workloads of one key share it, and the workers' state
    label: Callable[[Any], str] = str  # what progress says of an item


class InProcess:
    """Jobs one after another in this process."""

    name = "in-process"

    @property
    def workers(self) -> int:
        return 1

    def map(self, work: Workload, items: list, progress: ProgressFn = None) -> Iterator[tuple]:
        state = work.state if work.state is not None else work.setup(work.payload)
        for i, item in enumerate(items):
            report(progress, i / max(len(items), 1), work.label(item))
            yield i, work.task(state, item)
        report(progress, 1.0, "done")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


WORKER: dict = {}  # on a Ray worker process: the key and state of the workload it ran last


def run_on_worker(setup, task, key: str, boxed: list, item):
    """One job on a Ray worker. The payload comes boxed (a list around its reference) so Ray does not fetch
    it for every job: it is fetched and set up once per worker process and workload, then reused."""
    if WORKER.get("key") != key:
        import ray  # deferred: an optional extra; this runs on a Ray worker, which has it

        WORKER.clear()
        torch.set_num_threads(1)  # one CPU per job, as Ray reserved it
        WORKER.update(key=key, state=setup(ray.get(boxed[0])))
    return task(WORKER["state"], item)


class RayExecutor:
    """Jobs on Ray actors: a local runtime started here (``address=None``), or an existing cluster.

    ``address``: ``"auto"`` or ``"HOST:PORT"`` of a running cluster (``ray start --head`` prints it), or
    ``"ray://HOST:10001"`` through Ray Client. The explorer package is shipped to the cluster's workers with
    the job (Ray's ``runtime_env`` ``py_modules``), so nodes need only Python, torch and ray.
    """

    name = "ray"

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None):
        try:
            import ray  # deferred: an optional extra, imported only when asked for
        except ImportError as exc:
            raise ExplorerError("--ray needs the optional extra: pip install 'compression-explorer[ray]'") from exc
        self._ray = ray
        self._payload = (None, None)  # (workload key, its payload's reference): the last one put
        self._started = not ray.is_initialized()
        if self._started:
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            if address is None:
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            else:
                kwargs["address"] = address
                kwargs["runtime_env"] = {"py_modules": [str(PACKAGE)]}
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                hint = ("" if address is None or os.environ.get("RAY_AUTH_MODE") else
                        " (a cluster with token authentication, Ray's default since 2.59 for one started by "
                        "'ray start', also needs RAY_AUTH_MODE=token here, and its token in ~/.ray/auth_token or "
                        "RAY_AUTH_TOKEN)")
                raise ExplorerError(f"cannot start or join Ray ({address or 'local'}): {exc}{hint}") from exc

    @property
    def workers(self) -> int:
        return max(int(self._ray.cluster_resources().get("CPU", 1)), 1)

    def map(self, work: Workload, items: list, progress: ProgressFn = None) -> Iterator[tuple]:
        ray = self._ray
        if not items:
            report(progress, 1.0, "done")
            return
        key = work.key or uuid.uuid4().hex
        if self._payload[0] != key:
            self._payload = (key, ray.put(work.payload))  # once: every worker reads the same object
        boxed = [self._payload[1]]
        job = ray.remote(num_cpus=1)(run_on_worker)
        todo = list(enumerate(items))[::-1]
        running = {}  # ObjectRef -> index
        slots = min(self.workers * IN_FLIGHT, len(items))
        try:
            while todo and len(running) < slots:
                i, item = todo.pop()
                running[job.remote(work.setup, work.task, key, boxed, item)] = i
            report(progress, 0.0, f"{len(items)} jobs on {self.workers} Ray workers")
            done = 0
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                i = running.pop(ready[0])
                result = ray.get(ready[0])
                if todo:
                    j, item = todo.pop()
                    running[job.remote(work.setup, work.task, key, boxed, item)] = j
                done += 1
                report(progress, done / len(items), work.label(items[i]))
                yield i, result
        finally:  # done, cancelled or failed: what is still queued goes
            for r in running:
                ray.cancel(r)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_executor(ray: Optional[str] = None):
    """The CLI's ``--ray [ADDRESS]``: ``None`` -> in-process; ``"local"`` -> a Ray runtime started here;
    anything else -> the address of a cluster to join."""
    if ray is None:
        return InProcess()
    return RayExecutor(None if ray == "local" else ray)
