"""What the teaching views show, computed by the engine (no Qt): one function per concept of the
literature, each returning a dataclass with the numbers a view draws and an ``explain()`` line quoting them.

- :mod:`.layer`: the concepts seen on one layer (pruning granularity, sparse storage, quantization error
  against bits, entropy coding, the low-rank spectrum);
- :mod:`.model`: the concepts seen on the whole model (the Deep Compression pipeline, the model graph,
  teacher and student outputs);
- :mod:`.help`: what each view shows, why it matters, its formula and its reference.

The window (:mod:`explorer.gui.qt_concepts`) and the handout (``compression-explorer report``) draw the same
dataclasses with the same plotting code.
"""
