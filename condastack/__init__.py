"""condastack: layered, locked conda environments for GPU clusters without Docker.

Data flows one way: stack -> lock -> env -> archive -> delivered env (install, modules, Slurm,
containers). This module is the public Python API; module paths under it are internal and may move.

    import condastack
    stack = condastack.load_stack("path/to/project")
    condastack.lock_stack(stack)
    condastack.build_layer(stack.root, "app")
    condastack.pack_layer(stack.root, "app", fmt="squashfs", dest_prefix="/shared/envs/app")

Names are loaded on first use (PEP 562), so `import condastack` loads neither py-rattler nor
conda-lock, conda-pack or pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from condastack.core.version import __version__

if TYPE_CHECKING:  # the names, for type checkers and readers
    from condastack.archive.pack import pack_layer, pack_prefix
    from condastack.archive.relocate import relocate
    from condastack.archive.unpack import unpack_archive
    from condastack.channel.wrap import wrap
    from condastack.core.errors import CondastackError
    from condastack.deliver.doctor import run_doctor
    from condastack.deliver.install import install_archive
    from condastack.env.build import build_layer, build_prefix
    from condastack.lock.layered import lock_stack
    from condastack.spec.stack import load_stack

_API = {
    "load_stack": "condastack.spec.stack",
    "lock_stack": "condastack.lock.layered",
    "build_layer": "condastack.env.build",
    "build_prefix": "condastack.env.build",
    "pack_layer": "condastack.archive.pack",
    "pack_prefix": "condastack.archive.pack",
    "unpack_archive": "condastack.archive.unpack",
    "relocate": "condastack.archive.relocate",
    "install_archive": "condastack.deliver.install",
    "run_doctor": "condastack.deliver.doctor",
    "wrap": "condastack.channel.wrap",
    "CondastackError": "condastack.core.errors",
}

__all__ = [  # in the order of the data flow
    "__version__", "load_stack", "lock_stack", "build_layer", "build_prefix", "pack_layer", "pack_prefix",
    "unpack_archive", "relocate", "install_archive", "run_doctor", "wrap", "CondastackError",
]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'condastack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
