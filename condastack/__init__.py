"""condastack: layered, locked conda environments for GPU clusters without Docker.

Data flows one way: stack -> lock -> env -> archive -> delivered env.
"""

from condastack.core.version import __version__

__all__ = ["__version__"]
