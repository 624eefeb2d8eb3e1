"""The command line: click wrappers over the public API (`condastack.cli:main`)."""

from condastack.cli.commands import main

__all__ = ["main"]
