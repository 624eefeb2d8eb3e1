"""Everything one layer's solve on one platform depends on, gathered once from the stack.

`SolveInputs.of(stack, layer, platform)` asks the stack once; the solve, the dry run and the
staleness check then read this one value, and its hash is the content hash written into the lock
(so a lock is stale exactly when one of these inputs changed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from condastack.core.credentials import strip_credentials
from condastack.core.layout import lockfile_path
from condastack.lock.lockfile import lock_summary
from condastack.spec.pipreqs import PipOptions
from condastack.spec.stack import Stack

LOCK_FORMAT = "condastack-lock-1"


@dataclass(frozen=True)
class SolveInputs:
    layer: str
    platform: str
    file: Path  # the layer's environment.yml (for messages)
    extends: str | None
    conda: tuple[str, ...]
    pip: tuple[str, ...]
    channels: tuple[str, ...]
    virtual_packages: dict[str, str]
    pip_indexes: tuple[str, ...]
    pip_options: PipOptions
    variables: dict[str, str] = field(default_factory=dict)
    includes: tuple[tuple[str, str], ...] = ()
    parent_pins: tuple[str, ...] = ()  # the parent lock's pins on this platform, as the lock summary lists them

    @classmethod
    def of(cls, stack: Stack, layer: str, platform: str) -> SolveInputs:
        conda, pip = stack.specs_for(layer, platform)
        spec = stack.layer(layer)
        return cls(layer=layer, platform=platform, file=spec.file, extends=spec.extends, conda=tuple(conda),
                   pip=tuple(pip), channels=tuple(stack.channels_for(layer)),
                   virtual_packages=stack.effective_virtual_packages_for(platform),
                   pip_indexes=tuple(stack.pip_indexes_for(layer)), pip_options=stack.pip_options_for(layer),
                   variables=stack.variables_for(layer), includes=tuple(stack.includes_for(layer)),
                   parent_pins=tuple(_parent_pins(stack, spec.extends, platform)))

    def content_hash(self) -> str:
        """The hash of every input (credentials stripped: a rotated token is no change)."""
        data: dict[str, object] = {
            "format": LOCK_FORMAT, "conda": list(self.conda), "pip": [strip_credentials(r) for r in self.pip],
            "channels": list(self.channels), "virtual-packages": self.virtual_packages,
            "pip-index": [strip_credentials(u) for u in self.pip_indexes], "parent": list(self.parent_pins),
        }
        # variables, pip option lines and -r/-c file contents only when present, so locks of files
        # without them keep their hash.
        extra = {"variables": self.variables, "pip-options": self.pip_options.to_json(strip_credentials),
                 "includes": [list(i) for i in self.includes]}
        data.update({k: v for k, v in extra.items() if v and v != PipOptions().to_json()})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _parent_pins(stack: Stack, parent: str | None, platform: str) -> list[str]:
    if parent is None:
        return []
    path = lockfile_path(stack.root, parent)
    if not path.is_file():
        return []
    return list(lock_summary(path)["pins"].get(platform, []))
