"""JSON from files we did not write: bounded in size, nesting and numbers before it becomes Python objects.

Python's :mod:`json` reads whatever it is given: ``/dev/zero`` until memory runs out, ten thousand nested
lists into a ``RecursionError``, a 5,000-digit integer into a ``ValueError`` of the interpreter's digit
limit, ``NaN`` and ``Infinity`` as floats. Plans and the compressed file's manifest are read here instead:
a regular file under a size cap, nesting at most :data:`MAX_DEPTH` deep, integers of at most
:data:`MAX_INT_DIGITS` digits, no non-finite constants. Every refusal is a :class:`JSONLimit` (a
``ValueError``) with one line saying what was refused; callers turn it into their own error, naming the file.
"""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np

MAX_DEPTH = 64  # a plan is 4 deep, a manifest 8
MAX_INT_DIGITS = 24  # beyond 2**64 in decimal: every integer either format holds fits


class JSONLimit(ValueError):
    """The text is not JSON, or is JSON beyond what this reader accepts; the message says which."""


# a JSON string: its contents cannot open or close a container
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _depth(data: bytes) -> int:
    """How deep the containers of ``data`` nest (strings excluded), counted without recursion."""
    bare = _STRING.sub(b'""', data)
    if not bare:
        return 0
    codes = np.frombuffer(bare, np.uint8)
    step = np.zeros(256, np.int64)
    step[[ord("["), ord("{")]] = 1
    step[[ord("]"), ord("}")]] = -1
    return int(np.cumsum(step[codes]).max(initial=0))


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONLimit(f"an integer of {len(text.lstrip('-')):,} digits (at most {MAX_INT_DIGITS} are accepted)")
    return int(text)


def _constant(name: str):
    raise JSONLimit(f"{name} is not a JSON number")


def loads(data) -> object:
    """Parse ``data`` (bytes or str, UTF-8) under the limits above."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    depth = _depth(raw)
    if depth > MAX_DEPTH:
        raise JSONLimit(f"nested {depth:,} deep (at most {MAX_DEPTH} levels are accepted)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONLimit(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, parse_int=_int, parse_constant=_constant)
    except JSONLimit:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise JSONLimit(f"not valid JSON: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def read_bounded(path, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``; OSError-free: every problem is
    a :class:`JSONLimit` naming ``what`` (e.g. "plan"). A FIFO or a device (``/dev/zero``) is refused
    before it is opened for reading, and at most ``max_bytes + 1`` bytes are ever read."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise JSONLimit(f"no such {what} file") from None
    except OSError as exc:
        raise JSONLimit(f"cannot read {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise JSONLimit(f"is a directory, not a {what} file")
    if not stat.S_ISREG(st.st_mode):
        raise JSONLimit(f"not a regular file (a device, pipe or socket cannot be a {what})")
    if st.st_size > max_bytes:
        raise JSONLimit(f"{st.st_size:,} bytes is too large for a {what} (at most {max_bytes:,})")
    try:
        with open(path, "rb") as fh:
            data = fh.read(st.st_size + 1)  # (read(n) reserves n bytes at once: never the cap itself)
    except OSError as exc:
        raise JSONLimit(f"cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew since stat()
        raise JSONLimit(f"more than {max_bytes:,} bytes is too large for a {what}")
    return data


__all__ = ["JSONLimit", "loads", "read_bounded", "MAX_DEPTH", "MAX_INT_DIGITS"]
