"""The build seam: a lockfile read for installing one platform (conda records and pip wheels).

The entries are read as plain YAML (py-rattler's reader rejects the pip dependency values conda-lock
writes); full records come from the records file beside the lock."""


from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from condastack.core.errors import CondastackError
from condastack.core.layout import records_sidecar_path
from condastack.env.vcswheel import is_vcs_url, locked_commit
from condastack.lock.conda_solve import records_from_json
from condastack.lock.lockfile import lock_entries_as_json, read_lock_entries, read_records_sidecar


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

    Read as plain YAML (conda-lock's own form, pip entries included); the full
    records kept beside the lock are used where they match, else the entries.
    """

    path = Path(path)
    entries = read_lock_entries(path, strings=True)
    try:
        safe = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        meta = yaml.load(path.read_text(), Loader=safe).get("metadata") or {}  # noqa: S506 - a safe loader
    except Exception:  # read_lock_entries has already proven it is YAML
        meta = {}
    plats = tuple(meta.get("platforms") or sorted({str(p.get("platform")) for p in entries}))
    if platform not in plats:
        raise CondastackError(
            f"{path}: this lock covers {', '.join(plats) or 'no platform'}, not this machine's platform {platform}. "
            f"Add {platform} to 'platforms' in environments/stack.yml and run `condastack lock`, "
            f"or build on a {'/'.join(plats) or 'matching'} machine."
        )
    mine = [p for p in entries if p.get("platform") == platform]
    conda_entries = [p for p in mine if p.get("manager") == "conda"]
    for p in conda_entries:
        if not (p.get("hash") or {}).get("sha256"):
            raise CondastackError(f"{path}: package {p.get('name')} {p.get('version')} has no sha256 in the lock; "
                                  "condastack installs only packages it can verify. Re-lock it.")
    full = {str(j.get("sha256")): j for j in read_records_sidecar(records_sidecar_path(path), platform)}
    items = [dict(full[p["hash"]["sha256"]], url=p["url"]) if p["hash"]["sha256"] in full
             else lock_entries_as_json([p])[0] for p in conda_entries]
    conda = tuple(records_from_json(items))
    wheels = []
    for p in mine:
        if p.get("manager") != "pip":
            continue
        sha = (p.get("hash") or {}).get("sha256")
        if is_vcs_url(str(p.get("url", ""))):  # built from its commit by build, which records the sha256
            locked_commit(str(p["url"]), f"{path}: pip package {p.get('name')} {p.get('version')}")
            sha = ""
        elif not sha:
            raise CondastackError(f"{path}: pip package {p.get('name')} {p.get('version')} has no sha256 in the lock; "
                                  "`pip --require-hashes` needs one. Re-lock it.")
        wheels.append(LockedWheel(name=str(p["name"]), version=str(p["version"]), url=str(p["url"]), sha256=sha))
    return LockedEnv(path=path, platform=platform, platforms=plats, conda=conda, pip=tuple(wheels))
