"""The package version (one owner: the root package and the markers read it from here)."""

__version__ = "0.1.0"
