"""The ``gradproj`` command line (a thin layer over the Python API)."""

from gradproj.cli.commands import main
from gradproj.cli.plan import plan

main.add_command(plan)

__all__ = ["main"]
