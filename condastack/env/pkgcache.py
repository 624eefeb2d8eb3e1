"""Integrity of the extracted packages in the package cache.

Environments are hard links into the cache's extracted folders, so a file
edited in place in any environment is edited in the cache too, and every
later build would link the edited file again. Before a build links from an
extracted folder, that folder is checked against a stamp written when it was
known good: a listing of its entries with each file's size and mtime (an
in-place edit changes the mtime; replacing a file breaks the link and leaves
the cache alone). A folder that differs, or has no stamp yet, is hashed
against its own `info/paths.json`; one that still differs is removed, so the
installer extracts it again from its sha256-verified archive.

The listing of all the folders of a build comes from ONE `find -printf`
process (C, outside the GIL: ~75k files cost ~0.2 s of CPU, against ~0.6 s
for a Python lstat per file), run beside the linking, writing into an
in-memory file; the whole output is compared with the stamps in place. A
build that linked an edited folder links again once it is re-extracted.

Why a stat per file: an in-place edit changes only the file's own mtime and
ctime (not its folder's), and every build's hard links move the ctime of
every cache file (link(2) updates it), so neither a folder's stat nor
"ctime older than the stamp" can tell an edited package from a linked one. Where `find` has no
`-printf` (busybox), os.scandir writes the same listing. A stamp of an older
format never equals a listing, so that folder is hashed once and stamped anew.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

from condastack.core.fs import atomic_path, remove_path, sha256_file
from condastack.core.layout import verified_stamp

# One entry per file, symlink or folder, each ended by NUL (a name cannot hold one): "d REL" for a
# folder (the folder itself is "d ", with an empty REL), else "SIZE MTIME REL" with find's %T@
# (seconds, 10 fractional digits). `find` lists pre-order, so each folder's listing starts with "d ".
_FIND_EXPR = ["-type", "d", "-printf", "d %P\\0", "-o", "-printf", "%s %T@ %P\\0"]
_ROOT = b"d \0"
_FIND_BROKEN = False  # set once find has no -printf here: later checks go straight to os.scandir


def _stamp_path(folder: Path) -> Path:
    return verified_stamp(folder, ".tree")


def _scan(folder: str, rel: str, out: list[bytes]) -> None:
    """The listing of `folder` (pre-order, like find) appended to `out`, entry by entry."""
    with os.scandir(folder) as it:
        for e in it:
            name = rel + e.name
            if e.is_dir(follow_symlinks=False):
                out.append(b"d " + os.fsencode(name) + b"\0")
                _scan(e.path, name + "/", out)
            else:
                st = e.stat(follow_symlinks=False)
                ns = st.st_mtime_ns
                out.append(b"%d %d.%09d0 %s\0" % (st.st_size, ns // 10**9, ns % 10**9, os.fsencode(name)))


def _scan_listing(folder: Path) -> bytes | None:
    out = [_ROOT]
    try:
        _scan(str(folder), "", out)
    except OSError:
        return None
    return b"".join(out)


def _run_find(folders: list[Path]) -> bytes | None:
    """What one `find` lists for `folders` (their listings, one after the other); None if find failed
    (a folder gone, no -printf). It writes into an in-memory file, not a pipe: reading megabytes
    from a pipe costs this process ~0.03 s of CPU in wake-ups, next to find's ~0.2 s."""
    global _FIND_BROKEN
    if _FIND_BROKEN or not folders:
        return None
    argv = ["find", *(str(f) for f in folders), *_FIND_EXPR]
    try:
        fd = os.memfd_create("condastack-listing", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or an old kernel: a pipe
        fd = -1
    try:
        p = subprocess.run(argv, stdout=fd if fd >= 0 else subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        out = p.stdout if fd < 0 else os.pread(fd, os.fstat(fd).st_size, 0)
    except OSError:
        _FIND_BROKEN = True
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    if p.returncode != 0:
        if b"printf" in p.stderr:  # busybox: "unrecognized: -printf"
            _FIND_BROKEN = True
        return None
    return out


def _split(out: bytes, count: int) -> list[bytes] | None:
    """`find`'s output for `count` folders cut into their listings; None if it does not hold `count`."""
    parts = (b"\0" + out).split(b"\0" + _ROOT)  # a root is the only entry that is exactly "d "
    if len(parts) != count + 1 or parts[0]:
        return None
    return [_ROOT + part + (b"\0" if i < count - 1 else b"") for i, part in enumerate(parts[1:])]


def _find_listings(folders: list[Path]) -> list[bytes] | None:
    """The listings of `folders` from one `find`; None if find failed."""
    out = _run_find(folders)
    return None if out is None else _split(out, len(folders))


def listings(folders: list[Path]) -> list[bytes | None]:
    """Each folder's listing (None for one that cannot be read), in one `find` where it can."""
    found = _find_listings(folders)
    if found is not None:
        return list(found)
    return [_scan_listing(f) for f in folders]


def _same(stamp_bytes: bytes, now: bytes) -> bool:
    """Equal listings; the order may differ (find and os.scandir may walk a folder differently)."""
    return stamp_bytes == now or sorted(stamp_bytes.split(b"\0")) == sorted(now.split(b"\0"))


def _write_stamp(folder: Path, listing: bytes) -> None:
    target = _stamp_path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, durable=False) as tmp:
        tmp.write_bytes(listing)


def stamp(*folders: Path) -> None:
    """Record the folders as good now (just extracted from a verified archive, or hashed)."""
    for folder, listing in zip(folders, listings(list(folders)), strict=True):
        if listing is not None:
            _write_stamp(folder, listing)


def _listed_files(folder: Path) -> list[tuple[str, str | None]] | None:
    """(path, sha256) of the package's files from its info/paths.json; None if unreadable."""
    try:
        data = json.loads((folder / "info" / "paths.json").read_bytes())
        return [(p["_path"], p.get("sha256")) for p in data["paths"] if p.get("path_type", "hardlink") != "directory"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hashes_hold(listed: list[tuple[str, str | None]], folder: Path) -> bool:
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


def _stamp_holds(folder: Path, now: bytes | None) -> bool:
    if now is None:
        return False
    try:
        return _same(_stamp_path(folder).read_bytes(), now)
    except OSError:
        return False


def _hashed_intact(folder: Path) -> bool:
    """The slow path, for a folder whose stamp is missing, old or differs: hash it, stamp it if good."""
    listed = _listed_files(folder)
    if listed is None:  # an old-style package without paths.json: nothing to check against
        return True
    if _hashes_hold(listed, folder):
        stamp(folder)
        return True
    return False


def _all_hold(folders: list[Path], out: bytes) -> bool:
    """Whether `find`'s whole output is the folders' stamps one after the other (the usual case: compared
    in place, not cut up). Exact: find's output holds one root entry ("d ") per folder and no other, and
    each stamp, ended by NUL, starts with a root, so each stamp is compared with its own folder's listing."""
    pos = 0
    for folder in folders:
        try:
            stamp_bytes = _stamp_path(folder).read_bytes()
        except OSError:
            return False
        if not (stamp_bytes.startswith(_ROOT) and stamp_bytes.endswith(b"\0") and out.startswith(stamp_bytes, pos)):
            return False
        pos += len(stamp_bytes)
    return pos == len(out)


def edited_folders(folders: list[Path]) -> list[Path]:
    """The extracted folders that no longer hold their package's files (stamp, else hashes)."""
    out = _run_find(folders)
    if out is not None and _all_hold(folders, out):
        return []
    found = None if out is None else _split(out, len(folders))
    now = found if found is not None else [_scan_listing(f) for f in folders]
    return [f for f, n in zip(folders, now, strict=True) if not _stamp_holds(f, n) and not _hashed_intact(f)]


def intact(folder: Path) -> bool:
    """Whether the extracted `folder` still holds its package's files (stamp, else hashes)."""
    return not edited_folders([folder])


def discard(folder: Path) -> None:
    """Remove an edited extracted package (and rattler's `<folder>.lock`), so it is extracted again."""
    remove_path(folder)
    folder.with_name(folder.name + ".lock").unlink(missing_ok=True)
    _stamp_path(folder).unlink(missing_ok=True)


class Checker(threading.Thread):
    """Checks extracted folders on a thread, while the installer links from them (the thread mostly
    waits on `find`, outside the GIL). `edited()` waits and lists the bad ones; a build that used one
    links again after `discard`."""

    def __init__(self, folders: list[Path]) -> None:
        super().__init__(daemon=True)
        self.folders: list[Path] = folders
        self.bad: list[Path] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.bad = edited_folders(self.folders)
        except BaseException as e:
            self.error = e

    def edited(self) -> list[Path]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.bad


__all__ = ["Checker", "discard", "edited_folders", "intact", "listings", "stamp"]
