"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class GradprojError(Exception):
    """Bad input or a refused operation; ``str(err)`` is the whole one-line message."""


class InputError(GradprojError):
    """Bad input data, located in a file (and a line or row, and a field when known).

    ``str(err)`` reads ``FILE:LINE: field 'chosen' is empty``.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"field '{field}' {message}" if field is not None else message
        super().__init__(where + what)
