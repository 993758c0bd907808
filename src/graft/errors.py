"""graft's errors. A `GraftError` means "the user's input or setup is wrong": the CLI prints its
one-line message and no traceback. Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class GraftError(Exception):
    """Base of the errors a user can fix; the message is one line that says what to do."""


class ConfigError(GraftError, ValueError):
    """An option, or a combination of options, that cannot work."""


class DataError(GraftError, ValueError):
    """Bad user data; the message names the file/folder/row and what to do."""


class UnreadableImage(DataError):
    """An image file that cannot be opened or fully decoded."""


class BackboneError(GraftError, RuntimeError):
    """A backbone cannot be built (unknown name, missing weights, offline)."""


class BundleError(GraftError, ValueError):
    """A run folder that cannot be loaded (missing files, newer format, damaged checkpoint)."""


class DistributedError(GraftError, RuntimeError):
    """One of several training processes failed, died or timed out; the others were stopped."""


USER_ERRORS: tuple[type[BaseException], ...] = (GraftError, FileNotFoundError)
