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
import math
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


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.DOTALL)
_SHOWN_PARTS = 6  # of a field's path, in a message: a 10,000-deep one is cut after these


def _field(parts: list) -> str:
    """``["layers", "fc1", 0]`` -> ``"layers.fc1[0]"`` (cut after :data:`_SHOWN_PARTS` parts); ``"(top)"`` if empty."""
    out = ""
    parts = [p for p in parts if p is not None]  # (an object whose first key is not read yet)
    for p in parts[:_SHOWN_PARTS]:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return (out or "(top)") + ("…" if len(parts) > _SHOWN_PARTS else "")


def _deep_field(data: bytes) -> str:
    """The path of the first container of ``data`` nested deeper than :data:`MAX_DEPTH`, found by a scan of its
    brackets, strings, commas and colons (no recursion, no parse)."""
    stack: list = []  # per open container: [is_object, key or index, expecting a key]
    for m in _TOKEN.finditer(data):
        tok = m.group()
        if tok in (b"{", b"["):
            if len(stack) >= MAX_DEPTH:
                return _field([f[1] for f in stack])
            stack.append([tok == b"{", None if tok == b"{" else 0, tok == b"{"])
        elif tok in (b"}", b"]"):
            if stack:
                stack.pop()
        elif tok == b"," and stack:
            if stack[-1][0]:
                stack[-1][2] = True
            else:
                stack[-1][1] += 1
        elif tok == b":" and stack:
            stack[-1][2] = False
        elif tok.startswith(b'"') and stack and stack[-1][0] and stack[-1][2]:
            stack[-1][1] = tok[1:-1].decode("utf-8", "replace")
    return _field([f[1] for f in stack])


class _Refused:
    """A number the parser met but does not accept, kept in place so that its field can be named."""

    def __init__(self, why: str):
        self.why = why


def _int(text: str):
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _Refused(f"an integer of {len(text.lstrip('-')):,} digits (at most {MAX_INT_DIGITS} are accepted)")
    return int(text)


def _float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"{text} is beyond the largest float (read as {value})")


def _constant(name: str):
    return _Refused(f"{name} is not a JSON number")


def _first_refused(obj):
    """``(path parts, _Refused)`` of the first refused number in ``obj``, in document order; None if none."""
    todo = [((), obj)]
    while todo:
        parts, value = todo.pop()
        if isinstance(value, _Refused):
            return list(parts), value
        if isinstance(value, dict):
            todo.extend(reversed([(parts + (k,), v) for k, v in value.items()]))
        elif isinstance(value, list):
            todo.extend(reversed([(parts + (i,), v) for i, v in enumerate(value)]))
    return None


def loads(data) -> object:
    """Parse ``data`` (bytes or str, UTF-8) under the limits above. A refusal inside the document names the
    field, e.g. ``field layers.fc1.prune.amount: NaN is not a JSON number``."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    depth = _depth(raw)
    if depth > MAX_DEPTH:
        raise JSONLimit(f"field {_deep_field(raw)}: nested {depth:,} deep (at most {MAX_DEPTH} levels are accepted)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONLimit(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    refused = []
    try:
        out = json.loads(text, parse_int=_counted(_int, refused), parse_float=_counted(_float, refused),
                         parse_constant=_counted(_constant, refused))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise JSONLimit(f"not valid JSON: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if refused:  # (a refused dict key cannot be: keys are strings)
        parts, bad = _first_refused(out) or ([], refused[0])
        raise JSONLimit(f"field {_field(parts)}: {bad.why}")
    return out


def _counted(parse, refused: list):
    def fn(text):
        value = parse(text)
        if isinstance(value, _Refused):
            refused.append(value)
        return value

    return fn


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
