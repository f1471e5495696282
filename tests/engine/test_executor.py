"""Where a sweep's jobs run (issue 15): in this process, or on a local Ray runtime of 2 CPUs — the same points
either way, the model shipped once per worker, cancellation between whole results."""

from __future__ import annotations

import json
import os
import sys
import uuid

import pytest

from explorer.cli import main as cli_main
from explorer.engine.errors import Cancelled, ExplorerError
from explorer.engine.executor import InProcess, RayExecutor, Workload, make_executor
from explorer.engine.model.loading import load_model
from explorer.engine.sensitivity import auto, scan

ray = pytest.importorskip("ray")  # an extra, but .[dev] installs it: CI runs these
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        with RayExecutor() as ex:  # joins the runtime started above, and leaves it running on close
            yield ex
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits-cnn")


def tag_setup(payload):  # a worker's state: who made it
    return {"id": uuid.uuid4().hex, "payload": payload}


def tag_task(state, item):
    return state["id"], os.getpid(), state["payload"] * item


def test_in_process_runs_in_order_and_stops_between_jobs():
    work = Workload(setup=tag_setup, task=tag_task, payload=3)
    got = list(InProcess().map(work, [1, 2, 3]))
    assert [i for i, _ in got] == [0, 1, 2] and [r[2] for _, r in got] == [3, 6, 9]
    assert len({r[0] for _, r in got}) == 1  # one setup
    seen = []
    with pytest.raises(Cancelled):
        for i, r in InProcess().map(work, [1, 2, 3], progress=lambda f, m: f < 0.5):
            seen.append(i)
    assert seen == [0, 1]


def test_ray_ships_the_payload_once_per_worker(local_ray):
    work = Workload(setup=tag_setup, task=tag_task, payload=5)
    got = dict(local_ray.map(work, list(range(12))))
    assert sorted(got) == list(range(12)) and all(got[i][2] == 5 * i for i in got)
    assert local_ray.workers == 2
    setups = {r[1]: set() for r in got.values()}  # worker process -> the setups it ran
    for r in got.values():
        setups[r[1]].add(r[0])
    assert os.getpid() not in setups and all(len(s) == 1 for s in setups.values())  # once per worker
    assert len(setups) <= 4  # twelve jobs, a few workers (two CPUs; Ray may start a spare)


def test_a_sensitivity_scan_on_ray_equals_the_in_process_one(cnn, local_ray):
    kw = dict(kinds=("sparsity", "bits"), limit=120, sparsities=(0.0, 0.5, 0.9), bits=(2, 4, 8))
    scan.CACHE.clear()
    here = scan.sensitivity(cnn, **kw)
    scan.CACHE.clear()
    there = scan.sensitivity(cnn, executor=local_ray, **kw)
    assert len(here) == 4 * 6 and all(p.metric is not None for p in here)
    assert [p.to_dict() for p in there] == [p.to_dict() for p in here]
    pv = auto.Previewer(cnn)
    scan.CACHE.clear(), auto.COSTS.clear()
    on_ray = auto.candidates(pv, there, executor=local_ray, limit=120)  # sizes and joint losses measured there
    scan.CACHE.clear(), auto.COSTS.clear()
    assert on_ray == auto.candidates(pv, here, limit=120)


def test_a_cancelled_ray_scan_keeps_only_whole_points(cnn, local_ray):
    scan.CACHE.clear()
    with pytest.raises(Cancelled):
        scan.sensitivity(cnn, kinds=("sparsity",), limit=60, executor=local_ray,
                         progress=lambda f, m: f < 0.3)
    kept = len(scan.CACHE)
    assert 0 < kept < 4 * len(scan.SPARSITIES)
    points = scan.sensitivity(cnn, kinds=("sparsity",), limit=60)  # the rest measured here, the kept reused
    assert len(scan.CACHE) == len(points) == 4 * len(scan.SPARSITIES)


def test_the_cli_with_ray_writes_what_it_writes_without(tmp_path, local_ray):
    a, b = tmp_path / "here.json", tmp_path / "ray.json"
    args = ["sensitivity", "digits-mlp", "--what", "sparsity", "--limit", "80"]
    scan.CACHE.clear()
    assert cli_main(args + ["-o", str(a)]) == 0
    scan.CACHE.clear()
    assert cli_main(args + ["--ray", "-o", str(b)]) == 0
    assert json.loads(a.read_text())["points"] == json.loads(b.read_text())["points"]


def test_without_the_extra_one_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert isinstance(make_executor(None), InProcess)
    with pytest.raises(ExplorerError, match=r"pip install 'compression-explorer\[ray\]'"):
        make_executor("local")
