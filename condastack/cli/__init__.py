"""The command line: click wrappers over the public API (`condastack.cli:main`)."""

from condastack.cli import commands, deliver, provenance  # noqa: F401 - importing them registers their commands
from condastack.cli.app import main

__all__ = ["main"]
