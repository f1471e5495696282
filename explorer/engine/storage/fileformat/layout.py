"""The header of a ``.cexp`` file and the reader's limits (see :mod:`explorer.engine.storage.fileformat`)."""

from __future__ import annotations

import struct

MAGIC = b"\x89CEX\r\n\x1a\n"
MAJOR, MINOR = 1, 0
HEADER = struct.Struct("<8sHHIIII")
TABLE_ENTRY = struct.Struct("<QI")
MAX_MANIFEST = 64 << 20
#: a manifest inflates at most this many times, plus 1 MB (the samples' inflate 3x, 4,200 near-identical
#: tensor entries 26x): a zlib bomb of ``{},{},...`` would otherwise build millions of Python objects
#: (gigabytes) from a file of a few kilobytes
MANIFEST_EXPANSION = 64
#: a file may not declare more decoded bytes than this many times its own size (plus a fixed allowance):
#: no real model compresses that far, and a lying header cannot make the reader allocate without bound.
MAX_EXPANSION = 4096
EXPANSION_ALLOWANCE = 64 << 20
#: the largest file the reader takes in: it is read whole, and decoded it may take many times more
MAX_FILE = 4 << 30

