"""The env a build has just linked with rattler, seen without reading its conda-meta back (for its SBOM).

rattler writes each package's `conda-meta/*.json` from the RepoDataRecord it was given (serialised
as `RepoDataRecord.to_json` does) plus the package's files: 10+ MB of JSON for a large package,
~0.2 s of CPU to read and check again for a 1.6 GB env, which the SBOM needs only for two questions.
Both are answered from the prefix itself, and from the records where the prefix cannot tell:

- does a package list `wrapped_meta(name)`? Not if the prefix has no such path (rattler makes every
  path it lists); otherwise that one record is read.
- does a conda package list `X.dist-info/METADATA` or `RECORD`? Yes if that file is a hard link in
  this new prefix: only rattler hard-links here, and only the paths it lists (pip unlinks a file
  before writing it). A copied or replaced file (a cache on another file system, a prefix
  placeholder, pip over a conda file) reads every record, as `Env` does.

So the SBOM made from this view equals the one made later from conda-meta (`condastack sbom`, pack).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condastack.core.errors import EnvDamaged
from condastack.core.pathsafe import check_meta_record
from condastack.env.prefix import Env


class LinkedEnv(Env):
    """The env at `prefix`, just linked by rattler from `records` (rattler RepoDataRecords)."""

    def __init__(self, prefix: Path, records: Sequence[Any]) -> None:
        super().__init__(prefix)
        self._disk = Env(prefix)  # the records as written, read only where the prefix cannot answer
        mine: dict[str, dict[str, Any]] = {}
        for r in records:
            data = check_meta_record(json.loads(r.to_json()), f"{prefix}: the locked record of {r.name.normalized}")
            mine[str(data["name"])] = data
        self.__dict__["records"] = mine

    def owns(self, record: dict[str, Any], rel: str) -> bool:
        if not os.path.lexists(self.prefix / rel):
            return False
        path = self.record_path(str(record["name"]), str(record["version"]), str(record["build"]))
        try:
            written = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            raise EnvDamaged(file=path, reason=str(e)) from None
        return self._disk.owns(check_meta_record(written, str(path)), rel)

    def conda_owns(self, *rels: str) -> bool:
        for rel in rels:
            try:
                st = os.lstat(self.prefix / rel)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                return True
        return self._disk.conda_owns(*rels)


__all__ = ["LinkedEnv"]
