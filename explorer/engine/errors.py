"""The engine's exceptions: each carries one message that names the thing at fault."""


class ExplorerError(Exception):
    """Base of every error the engine raises on purpose; its message is meant for the user."""


class LoadError(ExplorerError):
    """A model or data file could not be loaded (missing, wrong format, corrupt, mismatched keys)."""


class FormatError(LoadError):
    """The file is not a valid compressed model file; the message says what is wrong."""


class TrustRequired(LoadError):
    """The file is a full pickle: loading it would run code from it, so it needs explicit trust."""


class PlanError(ExplorerError):
    """A compression plan is invalid; the message names the layer and the field."""


class CompressionError(ExplorerError):
    """A plan could not be applied to a model (e.g. an unsupported layer for a method)."""


class Cancelled(ExplorerError):
    """Long engine work was cancelled through its progress callback."""


def first_line(exc: BaseException) -> str:
    """``"TypeName: the first line of its message"`` (at most 200 characters): a foreign exception, in one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
