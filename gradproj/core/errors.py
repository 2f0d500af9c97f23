"""Typed errors. The first three kinds are the user's to fix: the CLI prints them as one line
(``gradproj: error: ...``) and exits with code 2. Anything else is a bug in gradproj: the CLI
says so, shows the traceback and exits with code 1.

- :class:`BadInput` — a setting or an input file is wrong (:class:`InputError` locates it);
- :class:`IncompatibleStore` — a store, adapter or run folder was made with other settings
  (another model, objective, projector, schema version) than the request;
- :class:`CorruptStore` — a store's files do not match its manifest (checksums, sizes, rows).
"""

from __future__ import annotations


class GradprojError(Exception):
    """Base of the errors a user can cause; ``str(err)`` is the whole one-line message."""


class BadInput(GradprojError):
    """A bad setting, option value or input."""


class InputError(BadInput):
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


class IncompatibleStore(GradprojError):
    """A store, adapter or run folder made for other settings than the request."""


class CorruptStore(GradprojError):
    """A store whose files disagree with its manifest."""
