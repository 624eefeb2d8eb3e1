"""condastack: layered, locked conda environments for GPU clusters without Docker.

Data flows one way: stack -> lock -> env -> archive -> delivered env.
"""

__version__ = "0.1.0"
