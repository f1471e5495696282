"""Atomic writes (issue 12, item 7): a killed writer's temporary file is removed by the next save, and a
written file has the permissions any new file gets (the umask), or keeps the target's."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from explorer.engine.storage import atomic
from explorer.engine.storage.atomic import atomic_open, atomic_write_bytes, remove_stale

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX processes and permissions")


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_users_umask(tmp_path, mask):
    """``mkstemp`` made every written file 0600 whatever the umask; now it is 0666 less the umask."""
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "new.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o666 & ~mask


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "plan.json"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # gone (pid reuse within the test is as unlikely as it gets)


def test_the_next_save_removes_what_a_dead_writer_left(tmp_path):
    target = tmp_path / "model.cexp"
    dead = tmp_path / f".tmp-model.cexp.{_dead_pid()}.{'0' * 16}"
    alive = tmp_path / f".tmp-model.cexp.{os.getppid()}.{'1' * 16}"  # a running writer's: left alone
    other = tmp_path / f".tmp-other.cexp.{_dead_pid()}.{'2' * 16}"  # another target's: left for its next save
    legacy_old = tmp_path / ".tmp-model.cexp.abcd1234"  # mkstemp's name, before pids were in it
    legacy_new = tmp_path / ".tmp-model.cexp.efgh5678"
    unrelated = tmp_path / ".tmp-model.cexp.notours"
    for p in (dead, alive, other, legacy_old, legacy_new, unrelated):
        p.write_bytes(b"partial")
    hour_ago = time.time() - atomic.LEGACY_AGE - 60
    os.utime(legacy_old, (hour_ago, hour_ago))
    atomic_write_bytes(target, b"complete")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["model.cexp", alive.name, other.name, legacy_new.name, unrelated.name])
    assert remove_stale(tmp_path / "other.cexp") == [other.name]


def test_kill_9_during_a_save_leaves_the_old_file_and_the_next_save_cleans_up(tmp_path):
    """A writer killed mid-write (the probe: about a third of ``kill -9`` during ``compress`` left a
    complete ``.tmp-*.cexp``) cannot clean up; the target is untouched and the next save removes the rest."""
    target = tmp_path / "model.cexp"
    target.write_bytes(b"previous")
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import time
        from explorer.engine.storage.atomic import atomic_open
        with atomic_open({str(target)!r}) as fh:
            fh.write(b"x" * 100000)
            fh.flush()
            open({str(ready)!r}, "w").close()
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    litter = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(litter) == 1 and f".{proc.pid}." in litter[0]
    assert target.read_bytes() == b"previous"
    with atomic_open(target) as fh:
        fh.write(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.cexp", "ready"]
    assert target.read_bytes() == b"new"


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_need_not_survive_a_power_loss_skips_the_fsyncs(tmp_path, monkeypatch):
    """durable=False (the window's autosave, on the GUI thread): renamed into place, never fsynced."""
    synced = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd))
    target = tmp_path / "a.json"
    atomic.atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one" and len(synced) >= 1
    synced.clear()
    atomic.atomic_write_bytes(target, b"two", durable=False)
    assert target.read_bytes() == b"two" and synced == []
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left
    assert os.path.getsize(target) == 3
