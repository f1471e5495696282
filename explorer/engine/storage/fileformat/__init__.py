"""The compressed model file (``.cexp``): really smaller, loads back runnable, safe to read.

Layout (all integers little-endian)::

    offset 0   magic       8 bytes  89 43 45 58 0D 0A 1A 0A   ("\\x89CEX\\r\\n\\x1a\\n")
           8   major       u16      format version (this reader: 1)
          10   minor       u16
          12   streams     u32      number of streams, N
          16   table crc   u32      CRC-32 of the stream table
          20   manifest    u32      bytes of the manifest (zlib-compressed UTF-8 JSON), M
          24   crc         u32      CRC-32 of those M bytes
          28   table       N x (u64 length, u32 CRC-32)   the streams, in order
               manifest    M bytes
               data        the N streams back to back; the file ends with the last one

The manifest names the architecture, the edits that turn it into the compressed one (resized modules,
low-rank factor chains), and every tensor with its encoding and its streams. Each stream is listed with
its length and CRC-32 in the binary table (so the manifest's size does not depend on checksums); the streams
tile the data exactly.

A weight tensor is stored exactly as the size accounting (:mod:`explorer.engine.storage.size`) chose for the
"coded" stage: positions as a bitmask or as b-bit gaps with filler entries (or not at all when dense),
values as float32 or as quantization codes, and each gap or code stream either packed raw or Huffman
coded (one byte of code length per alphabet symbol, then the canonical-code payload). Quantization
tables (k-means codebooks, binary/ternary alpha, uniform scales and zero points) are streams too. Every
other tensor (biases, norms, buffers) is stored raw, float32 by default or float16 on request.

The package: :mod:`.layout` (this header, the reader's limits), :mod:`.manifest` (the manifest's schema,
checked once and completely), :mod:`.writer` (``encode``, ``save``, ``predicted_bytes``), :mod:`.reader`
(``read``, ``parse``, ``summary``: no torch), :mod:`.decode` (``decode_tensors``) and :mod:`.loader` (``load``, ``load_full``: the
runnable model rebuilt). This module is the format's public API; import it as a whole.

There is no pickle anywhere. The reader checks the header, the manifest checksum, every stream's
bounds and checksum and every declared size against the file before it allocates, and turns any
inconsistency into one :class:`FormatError`.
"""

from explorer.engine.lazy import lazy_exports

# imported on first use: ``read``, ``parse`` and ``summary`` (what ``info`` needs) without torch or numba
__getattr__, __dir__, __all__ = lazy_exports(globals(), {
    "explorer.engine.errors": ("FormatError",),
    "explorer.engine.storage.fileformat.layout": ("EXPANSION_ALLOWANCE", "HEADER", "MAGIC", "MAJOR", "MAX_EXPANSION",
                                                  "MAX_FILE", "MAX_MANIFEST", "MINOR", "TABLE_ENTRY"),
    "explorer.engine.storage.fileformat.dtypes": ("DTYPES",),
    "explorer.engine.storage.fileformat.reader": ("ModelFile", "is_model_file", "parse", "read", "summary"),
    "explorer.engine.storage.fileformat.decode": ("decode_tensors",),
    "explorer.engine.storage.fileformat.loader": ("RUNTIMES", "load", "load_full", "to_compressed_runtime"),
    "explorer.engine.storage.fileformat.writer": ("encode", "predicted_bytes", "save"),
})
