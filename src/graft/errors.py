"""The errors that mean "the user's input is wrong": the CLI prints them as one line, no traceback."""

from __future__ import annotations

from .backbones import BackboneError
from .data.images import DataError

USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    BackboneError,
    FileNotFoundError,
    ValueError,
)
