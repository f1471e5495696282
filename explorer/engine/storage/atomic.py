"""Atomic file writes: the target path holds either its old content or the complete new one, never a part.

The new content goes to a temporary file beside the target (same directory, so the final rename cannot
cross file systems), named ``.tmp-<target name>.<pid>.<random>``; it is flushed, fsynced and renamed over
the target, and the directory is fsynced so the rename itself survives a power cut. A process killed
mid-write (``kill -9``) cannot remove its temporary file; the next save to the same target removes the
temporary files of that target whose writer is no longer running. The file gets the permissions any new
file gets (``0o666`` less the umask), or keeps the target's if it is being replaced.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from contextlib import contextmanager

from explorer.engine.errors import WriteError

_PREFIX = ".tmp-"
#: temporary files of the releases before the writer's pid was in the name: removed once this old
LEGACY_AGE = 3600.0


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (another user's, or one that cannot be asked, counts as
    running: whatever it left is not touched)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process, or no way to tell: leave its file alone
        return True
    return True


def remove_stale(path) -> list:
    """Remove the temporary files an interrupted write to ``path`` left beside it (their writer is gone);
    return the names removed. Only names of this module's own pattern for this very target are touched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = re.escape(os.path.basename(path))
    ours = re.compile(rf"{re.escape(_PREFIX)}{base}\.(\d+)\.[0-9a-f]{{16}}")
    legacy = re.compile(rf"{re.escape(_PREFIX)}{base}\.[a-z0-9_]{{8}}")  # tempfile.mkstemp's names
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        m = ours.fullmatch(name)
        full = os.path.join(directory, name)
        try:
            if m is not None:
                stale = not process_alive(int(m.group(1)))
            elif legacy.fullmatch(name):
                stale = now - os.lstat(full).st_mtime > LEGACY_AGE
            else:
                continue
            if stale and stat.S_ISREG(os.lstat(full).st_mode):
                os.unlink(full)
                removed.append(name)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path, mode: str = "wb", durable: bool = True):
    """Open a temporary file beside ``path``; on success it is flushed, fsynced and renamed over ``path``.
    ``durable=False`` skips the two fsyncs: the rename is still atomic (a killed or crashed process leaves
    the old file or the new one), but a power loss may lose the new one. The window's autosave, written on
    the GUI thread, uses it: an fsync there stalled the event loop for 60+ ms beside a busy disk.

    If the block raises, the temporary file is removed and ``path`` is left as it was. An ``OSError`` on the
    way (a full disk, a read-only directory, raised here or by the block's writes) becomes a
    :class:`~explorer.engine.errors.WriteError` naming ``path`` (never the temporary file) and the problem.
    """
    path = os.fspath(path)
    try:
        with _atomic_open(path, mode, durable) as fh:
            yield fh
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(path, exc) from exc


@contextmanager
def _atomic_open(path: str, mode: str, durable: bool = True):
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale(path)
    try:
        keep_mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        keep_mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f"{_PREFIX}{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask, as for any new file
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode) as fh:
            if keep_mode is not None:
                os.chmod(tmp, keep_mode)
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def check_writable(path) -> None:
    """Raise :class:`~explorer.engine.errors.WriteError` now if ``path`` could not be written later: its
    directory missing, not a directory, or refusing a new file (read-only). Tried as the write would be, with
    an empty temporary file of this module's pattern, removed at once. Work that ends in a write (a scan,
    a fine-tuning run) calls it first, so a typo in a folder costs no minutes; a full disk still shows only
    when the bytes are written."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise WriteError(path, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path))
    directory = os.path.dirname(os.path.abspath(path))
    probe = os.path.join(directory, f"{_PREFIX}{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(8)}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise WriteError(path, exc) from exc
    try:
        os.unlink(probe)
    except OSError:
        pass


def atomic_write_bytes(path, data: bytes, durable: bool = True) -> None:
    with atomic_open(path, "wb", durable) as fh:
        fh.write(data)
