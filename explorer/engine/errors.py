"""The engine's exceptions: each carries one message that names the thing at fault."""

import errno
import os


class ExplorerError(Exception):
    """Base of every error the engine raises on purpose; its message is meant for the user. ``kind`` names
    the class of failure in a word a script can test (the CLI's ``--json`` error object carries it)."""

    kind = "error"


class LoadError(ExplorerError):
    """A model or data file could not be loaded (missing, wrong format, corrupt, mismatched keys)."""

    kind = "load_error"


class NotFound(LoadError):
    """The file named does not exist (nor, for a model, a bundled sample of that name)."""

    kind = "not_found"


class FormatError(LoadError):
    """The file is not a valid compressed model file; the message says what is wrong."""

    kind = "bad_file"


class TrustRequired(LoadError):
    """The file is a full pickle: loading it would run code from it, so it needs explicit trust."""

    kind = "trust_required"


class PlanError(ExplorerError):
    """A compression plan is invalid; the message names the layer and the field."""

    kind = "bad_plan"


class CompressionError(ExplorerError):
    """A plan could not be applied to a model (e.g. an unsupported layer for a method)."""

    kind = "compression_error"


class WriteError(ExplorerError, OSError):
    """A file could not be written (a full disk, a read-only directory, ...) and was left as it was; the
    message names the file and the problem. An ``OSError`` too (``errno``, ``strerror`` and ``filename``
    are the system's), so code catching those still does; ``cause`` is the system's error itself."""

    kind = "write_error"

    def __init__(self, path, cause: OSError):
        path = str(path)
        why = cause.strerror or str(cause) or type(cause).__name__
        if cause.errno == errno.ENOENT:
            why = f"the directory {os.path.dirname(os.path.abspath(path))} does not exist"
        elif cause.errno in (errno.EACCES, errno.EPERM):
            why = f"{why} (is {os.path.dirname(os.path.abspath(path))} read-only?)"
        self.message = f"cannot write {path}: {why}"
        super().__init__(self.message)
        self.errno, self.strerror, self.filename, self.cause = cause.errno, cause.strerror, path, cause

    def __str__(self) -> str:  # not OSError's "[Errno 28] ...: 'path'"
        return self.message


class Cancelled(ExplorerError):
    """Long engine work was cancelled through its progress callback."""

    kind = "cancelled"


def first_line(exc: BaseException) -> str:
    """``"TypeName: the first line of its message"`` (at most 200 characters): a foreign exception, in one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
