"""Packages added, removed and changed between two lockfiles (or a lockfile and a git revision)."""


from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from condastack.core import layout
from condastack.core.errors import CondastackError
from condastack.lock.entry import LockEntry
from condastack.lock.lockfile import read_lock_entries


@dataclass
class Change:
    name: str
    old: str | None  # "version build" or None when added
    new: str | None  # None when removed


def diff_locks(old: Path, new: Path) -> dict[str, list[Change]]:
    """Per platform: packages added, removed and changed (version, build) between two lockfiles."""
    return _diff(read_lock_entries(old), read_lock_entries(new))


def diff_against_git(path: Path, rev: str) -> dict[str, list[Change]]:
    path = Path(path).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True,
                             text=True, check=True).stdout.strip()
        rel = path.relative_to(top)
        text = subprocess.run(["git", "show", f"{rev}:{rel.as_posix()}"], cwd=top, capture_output=True,
                              text=True, check=True).stdout
    except (subprocess.CalledProcessError, ValueError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise CondastackError(f"{path}: cannot read it at git revision {rev}: {detail.strip()}") from None

    with tempfile.NamedTemporaryFile("w", suffix=layout.LOCKFILE_SUFFIX, delete=False) as f:
        f.write(text)
    try:
        return _diff(read_lock_entries(Path(f.name)), read_lock_entries(path))
    finally:
        Path(f.name).unlink()


def _diff(a: list[LockEntry], b: list[LockEntry]) -> dict[str, list[Change]]:
    def index(entries: list[LockEntry]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for p in entries:
            label = f"{p.version} {p.build}" if p.manager == "conda" else f"{p.version} (pip)"
            out.setdefault(p.platform, {})[f"{p.name}" if p.manager == "conda" else f"pip:{p.name}"] = label
        return out

    ia, ib = index(a), index(b)
    result: dict[str, list[Change]] = {}
    for plat in sorted(set(ia) | set(ib)):
        pa, pb = ia.get(plat, {}), ib.get(plat, {})
        changes = [Change(n, pa.get(n), pb.get(n)) for n in sorted(set(pa) | set(pb)) if pa.get(n) != pb.get(n)]
        result[plat] = changes
    return result
