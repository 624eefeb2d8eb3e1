"""Integrity of the extracted packages in the package cache.

Environments are hard links into the cache's extracted folders, so a file
edited in place in any environment is edited in the cache too, and every
later build would link the edited file again. Before a build links from an
extracted folder, that folder is checked against a stamp written when it was
known good: the size and mtime of each of its files (an in-place edit changes
the mtime; replacing a file breaks the link and leaves the cache alone). A
folder that differs, or has no stamp yet, is hashed against its own
`info/paths.json`; one that still differs is removed, so the installer
extracts it again from its sha256-verified archive. The check runs beside
the linking (a stat per file costs ~10% of a warm build otherwise); a build
that linked an edited folder links again once it is re-extracted.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from condastack.core.fs import atomic_path, remove_path, sha256_file
from condastack.core.layout import verified_stamp


def _stamp_path(folder: Path) -> Path:
    return verified_stamp(folder, ".tree")


def _tree_lines(folder: Path, paths: Iterable[str]) -> list[str] | None:
    """'size mtime_ns path' of each file, or None if one is missing."""
    out = []
    base = str(folder) + "/"
    for rel in paths:
        try:
            st = os.lstat(base + rel)
        except OSError:
            return None
        out.append(f"{st.st_size} {st.st_mtime_ns} {rel}")
    return out


def _listed_files(folder: Path) -> list[tuple[str, str | None]] | None:
    """(path, sha256) of the package's files from its info/paths.json; None if unreadable."""
    try:
        data = json.loads((folder / "info" / "paths.json").read_bytes())
        return [(p["_path"], p.get("sha256")) for p in data["paths"] if p.get("path_type", "hardlink") != "directory"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stamp(folder: Path) -> None:
    """Record the folder as good now (it was just extracted from a verified archive, or hashed)."""
    listed = _listed_files(folder)
    lines = _tree_lines(folder, [p for p, _ in listed]) if listed is not None else None
    if lines is None:
        return
    target = _stamp_path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, durable=False) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _stamp_holds(folder: Path) -> bool:
    try:
        lines = _stamp_path(folder).read_text().splitlines()
    except OSError:
        return False
    now = _tree_lines(folder, (line.split(" ", 2)[2] for line in lines if line.count(" ") >= 2))
    return now == lines


def _hashes_hold(folder: Path) -> bool:
    listed = _listed_files(folder)
    if listed is None:
        return False
    for rel, sha in listed:
        path = folder / rel
        if path.is_symlink() or not sha:
            continue
        try:
            if sha256_file(path) != sha:
                return False
        except OSError:
            return False
    return True


def intact(folder: Path) -> bool:
    """Whether the extracted `folder` still holds its package's files (stamp, else hashes)."""
    if _stamp_holds(folder):
        return True
    if _listed_files(folder) is None:  # an old-style package without paths.json: nothing to check against
        return True
    if _hashes_hold(folder):
        stamp(folder)
        return True
    return False


def discard(folder: Path) -> None:
    """Remove an edited extracted package (and rattler's `<folder>.lock`), so it is extracted again."""
    remove_path(folder)
    folder.with_name(folder.name + ".lock").unlink(missing_ok=True)
    _stamp_path(folder).unlink(missing_ok=True)


class Checker(threading.Thread):
    """Checks extracted folders on a thread, while the installer links from them: the ~1 lstat
    per file is then hidden behind the linking. `edited()` waits and lists the bad ones; a build
    that used one links again after `discard`."""

    def __init__(self, folders: list[Path]) -> None:
        super().__init__(daemon=True)
        self.folders: list[Path] = folders
        self.bad: list[Path] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.bad = [f for f in self.folders if not intact(f)]
        except BaseException as e:
            self.error = e

    def edited(self) -> list[Path]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.bad


__all__ = ["Checker", "discard", "intact", "stamp"]
