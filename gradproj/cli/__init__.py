"""The ``gradproj`` command line (a thin layer over the Python API)."""

from gradproj.cli.commands import main

__all__ = ["main"]
