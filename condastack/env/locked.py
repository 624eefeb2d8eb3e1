"""The build seam: a lockfile read for installing one platform (conda records and pip wheels).

The entries are read as plain YAML (py-rattler's reader rejects the pip dependency values conda-lock
writes); full records come from the records file beside the lock."""


from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from condastack.core.errors import CondastackError
from condastack.core.layout import records_sidecar_path
from condastack.env.vcswheel import is_vcs_url, locked_commit
from condastack.lock.conda_solve import records_from_json
from condastack.lock.entry import LockEntry, RecordsFile
from condastack.lock.lockfile import (
    lock_entries_as_json,
    read_lock_document,
    read_lock_entries,
)


@dataclass(frozen=True)
class LockedWheel:
    """One pip package of a lock: where to get it and its sha256 (a git package's: '' until built)."""

    name: str
    version: str
    url: str
    sha256: str

    @property
    def vcs(self) -> bool:
        return is_vcs_url(self.url)


@dataclass(frozen=True)
class LockedEnv:
    """What one platform of a lockfile installs: conda RepoDataRecords and pip wheels."""

    path: Path
    platform: str
    platforms: tuple[str, ...]  # every platform the lockfile covers
    conda: tuple  # rattler RepoDataRecords
    pip: tuple[LockedWheel, ...]
    entries: tuple[LockEntry, ...] = ()  # the conda entries, in the order of `conda`

    def lock_hash(self) -> str:
        """A content hash of the locked entries of this platform (what ends up installed)."""
        lines = sorted(
            [f"conda\t{r.name.normalized}\t{r.version}\t{r.build}\t{r.sha256.hex() if r.sha256 else ''}\t{r.url}"
             for r in self.conda]
            + [f"pip\t{w.name}\t{w.version}\t{w.sha256}\t{w.url}" for w in self.pip]
        )
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def read_locked_env(path: Path, platform: str) -> LockedEnv:
    """The conda records and pip wheels of one platform of a conda-lock v1 file.

    Read through the typed, checked entries (lock/entry.py); the full records kept beside
    the lock are used where they are the same package (name, version, build and sha256),
    else the entries.
    """
    path = Path(path)
    doc = read_lock_document(path)
    entries = read_lock_entries(path)
    plats = tuple(doc["metadata"].get("platforms") or sorted({p.platform for p in entries}))
    if platform not in plats:
        raise CondastackError(
            f"{path}: this lock covers {', '.join(plats) or 'no platform'}, not this machine's platform {platform}. "
            f"Add {platform} to 'platforms' in environments/stack.yml and run `condastack lock`, "
            f"or build on a {'/'.join(plats) or 'matching'} machine."
        )
    mine = [p for p in entries if p.platform == platform]
    conda_entries = [p for p in mine if p.manager == "conda"]
    for p in conda_entries:
        if not p.sha256:
            raise CondastackError(f"{path}: package {p.name} {p.version} has no sha256 in the lock; "
                                  "condastack installs only packages it can verify. Re-lock it.")
    full = RecordsFile.read(records_sidecar_path(path)).records_for(platform, conda_entries)
    items = [dict(full[p.sha256].to_dict(), url=p.url) if p.sha256 in full
             else lock_entries_as_json([p])[0] for p in conda_entries]
    conda = tuple(records_from_json(items))
    wheels = []
    for p in mine:
        if p.manager != "pip":
            continue
        sha = p.sha256 or ""
        if is_vcs_url(p.url):  # built from its commit by build, which records the sha256
            locked_commit(p.url, f"{path}: pip package {p.name} {p.version}")
            sha = ""
        elif not sha:
            raise CondastackError(f"{path}: pip package {p.name} {p.version} has no sha256 in the lock; "
                                  "`pip --require-hashes` needs one. Re-lock it.")
        wheels.append(LockedWheel(name=p.name, version=p.version, url=p.url, sha256=sha))
    return LockedEnv(path=path, platform=platform, platforms=plats, conda=conda, pip=tuple(wheels),
                     entries=tuple(conda_entries))
