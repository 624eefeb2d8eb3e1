"""The path-safety gate: every path that comes from a package, lockfile or archive passes here first.

A path is accepted when it is relative, normalized (no '', '.', '..' parts, no
NUL, no backslash tricks are needed on POSIX), and does not go through a
symlink: neither one of the package's own symlink members nor one on disk
under the prefix. The installer's linker writes wherever `info/paths.json`
says (and aborts the process on an absolute member), so conda packages are
checked here, from the archive bytes, before the installer extracts or
links anything: every tar member and link target, and every path named by
`info/paths.json`, `info/files` and `info/has_prefix`. A package that passed
gets a stamp beside it in the cache (keyed by its content and inode data),
so it is read once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zstandard

from condastack.core.errors import CondastackError
from condastack.core.fs import TMP_MARK
from condastack.core.names import DIGEST_HEX_DIGITS, is_digest

STAMP_DIR = ".condastack-pathsafe"
_MAX_META = 256 << 20  # an info/ file larger than this is not a real one
_BAD_TYPES = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
              tarfile.FIFOTYPE: "a fifo", tarfile.GNUTYPE_SPARSE: "a sparse file"}


class UnsafePath(CondastackError):
    """A path from hostile input that would land outside its root (or through a symlink)."""

    def __init__(self, source: str, path: str, why: str) -> None:
        self.source, self.path, self.why = source, path, why
        super().__init__(f"{source}: unsafe path {path!r}: {why}.")


def clean_relative(path: object, source: str) -> str:
    """`path` if it is a relative, normalized POSIX path; UnsafePath otherwise."""
    if not isinstance(path, str):
        raise UnsafePath(source, repr(path)[:200], "not a string")
    # The common, clean case in one pass of C string searches (a record lists tens of thousands).
    if (path and "\0" not in path and "//" not in path and "/./" not in path and "/../" not in path
            and not path.startswith(("/", "./", "../")) and not path.endswith(("/", "/.", "/.."))
            and path not in (".", "..")):
        return path
    if not path:
        raise UnsafePath(source, path, "empty")
    if "\0" in path:
        raise UnsafePath(source, path[:200], "has a NUL byte")
    if path.startswith("/"):
        raise UnsafePath(source, path[:200], "is absolute")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(source, path[:200], "is not normalized (has '..', '.' or an empty part)")
    return path


def member_name(name: str, source: str, what: str = "member") -> str:
    """The one gate for a member name of an archive (tar/zip members may be written `./a//b`): no NUL,
    not absolute, no '..'; returns it normalized (`a/b`; '' for the archive root)."""
    if "\0" in name:
        raise UnsafePath(source, name[:200], f"{what} has a NUL byte in its name")
    if name.startswith("/"):
        raise UnsafePath(source, name[:200], f"{what} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(source, name[:200], f"{what} contains '..'")
    return "/".join(parts)


def check_under(root: Path, rel: object, source: str) -> Path:
    """root/rel after checking that rel is clean and no existing part of it below root is a symlink.

    The last part may be a symlink (callers skip or replace those); the parts above it may not.
    """
    rel = clean_relative(rel, source)
    cur = Path(root)
    parts = rel.split("/")
    for part in parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise UnsafePath(source, rel, f"goes through the symlink {cur}")
    return Path(root) / rel


# --------------------------------------------------------------------------- conda-meta records


def _all_clean(paths: list) -> bool:
    """Whether every one of `paths` passes `clean_relative`, in a few C-level string scans (a record
    lists ~100k paths: one Python call each cost seconds). Joined with '/', the parts of the whole are
    the parts of each path, so one bad part (empty, '.', '..'; an absolute path adds an empty one)
    shows as '//', '/./' or '/../' in it. False: check them one by one for the error."""
    if not paths:
        return True
    try:
        joined = "/" + "/".join(paths) + "/"
    except TypeError:  # one is not a string
        return False
    return not ("//" in joined or "/./" in joined or "/../" in joined or "\0" in joined)


def check_meta_record(info: object, source: str, *, need_link: bool = False) -> dict:
    """A conda-meta/*.json record, if well-typed and every path in it is safe; CondastackError otherwise.

    `need_link`: conda-pack reads `link.source` of every record (pack needs it; verify does not).
    """
    def bad(why: str) -> CondastackError:
        return CondastackError(f"{source}: malformed package record ({why}); the environment is damaged. "
                               "Rebuild it with `condastack build --force`.")

    if not isinstance(info, dict):
        raise bad(f"a JSON {type(info).__name__}, not an object")
    for key in ("name", "version", "build"):
        if key in info and not isinstance(info[key], str):
            raise bad(f"'{key}' is not a string")
    for kind in ("sha256", "md5"):  # they name the package in the SBOM and in verify's comparisons
        if info.get(kind) and not is_digest(kind, info[kind]):
            raise bad(f"'{kind}' is {ascii(info[kind])[:80]}, not {DIGEST_HEX_DIGITS[kind]} hex digits")
    files = info.get("files", [])
    if not isinstance(files, list):
        raise bad("'files' is not a list")
    paths = info.get("paths_data", {}) or {}
    entries = paths.get("paths", []) if isinstance(paths, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise bad("'paths_data.paths' is not a list of objects")
    try:
        if not _all_clean(files):
            for f in files:
                clean_relative(f, "files")
        if not _all_clean([e.get("_path") for e in entries]):
            for e in entries:
                clean_relative(e.get("_path"), "paths_data")
    except UnsafePath as e:
        raise bad(f"{e.message.rstrip('.')}") from None
    if need_link and not (isinstance(info.get("link"), dict) and isinstance(info["link"].get("source"), str)):
        raise bad("no 'link.source', which names the package it was linked from")
    return info


# --------------------------------------------------------------------------- conda packages


@dataclass
class _Tree:
    """The tree a package's members build, to refuse paths that go through its own symlinks."""

    source: str
    links: dict[str, str]
    files: set[str]

    def add(self, info: tarfile.TarInfo) -> None:
        name = info.name[2:] if info.name.startswith("./") else info.name
        name = name.rstrip("/") if info.isdir() else name
        if not name:
            return
        rel = clean_relative(name, self.source)
        if info.type in _BAD_TYPES:
            raise UnsafePath(self.source, rel, f"is {_BAD_TYPES[info.type]}")
        self._no_link_above(rel)
        if info.issym():
            self._check_symlink(rel, info.linkname)
            self.links[rel] = info.linkname
        elif info.islnk():
            target = clean_relative(info.linkname, self.source)
            self._no_link_above(target)
            if target in self.links:
                raise UnsafePath(self.source, rel, f"is a hard link to the symlink {target!r}")
            self.files.add(rel)
        elif not info.isdir():
            self.files.add(rel)

    def _no_link_above(self, rel: str) -> None:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            above = "/".join(parts[:i])
            if above in self.links:
                raise UnsafePath(self.source, rel, f"goes through the symlink {above!r}")

    def _check_symlink(self, rel: str, target: str) -> None:
        if not target or "\0" in target:
            raise UnsafePath(self.source, rel, "is a symlink with an empty or NUL target")
        if target.startswith("/"):
            raise UnsafePath(self.source, rel, f"is a symlink to the absolute path {target!r}")
        depth = len(rel.split("/")) - 1
        for part in target.split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    raise UnsafePath(self.source, rel, f"is a symlink to {target!r}, outside the prefix")
            elif part not in ("", "."):
                depth += 1

    def check_named(self, path: object, source: str) -> None:
        rel = clean_relative(path, source)
        parts = rel.split("/")
        for i in range(1, len(parts)):
            above = "/".join(parts[:i])
            if above in self.links:
                raise UnsafePath(source, rel, f"goes through the symlink {above!r} of the package")


def _tar_members(fileobj: Any, mode: Literal["r|", "r|*", "r|bz2"], tree: _Tree, meta: dict[str, bytes]) -> None:
    with tarfile.open(fileobj=fileobj, mode=mode) as tf:  # a stream: members in order, no seeking
        for info in tf:
            tree.add(info)
            name = info.name[2:] if info.name.startswith("./") else info.name
            if name in ("info/paths.json", "info/files", "info/has_prefix", "info/index.json") and info.isfile():
                if info.size > _MAX_META:
                    raise UnsafePath(tree.source, name, f"is {info.size} bytes, too large for package metadata")
                f = tf.extractfile(info)
                meta[name] = f.read() if f is not None else b""


def _read_conda(archive: Path, tree: _Tree, meta: dict[str, bytes]) -> None:

    with zipfile.ZipFile(archive) as zf:
        for zi in zf.infolist():
            if not zi.filename.endswith(".tar.zst"):
                continue
            with zf.open(zi) as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
                _tar_members(stream, "r|", tree, meta)


def _metadata_paths(meta: dict[str, bytes], tree: _Tree) -> None:
    src = tree.source
    if "info/paths.json" in meta:
        what = f"{src}: info/paths.json"
        try:
            doc = json.loads(meta["info/paths.json"])
            entries = doc["paths"]
            if not isinstance(entries, list):
                raise TypeError
            for e in entries:
                tree.check_named(e["_path"], what)
        except (ValueError, KeyError, TypeError):
            raise CondastackError(f"{what}: malformed (not JSON with a 'paths' list of {{'_path': ...}}). "
                                  "The package was refused; nothing was installed.") from None
    if "info/files" in meta:
        for line in meta["info/files"].decode("utf-8", "surrogateescape").splitlines():
            if line.strip():
                tree.check_named(line, f"{src}: info/files")
    if "info/has_prefix" in meta:
        for line in meta["info/has_prefix"].decode("utf-8", "surrogateescape").splitlines():
            if not line.strip():
                continue
            try:
                fields = shlex.split(line) if ('"' in line or "'" in line) else line.split()
            except ValueError:
                fields = [line]
            tree.check_named(fields[-1] if fields else line, f"{src}: info/has_prefix")


def _stamp(archive: Path) -> tuple[Path, str]:
    st = archive.stat()
    return archive.parent / STAMP_DIR / archive.name, f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}\n"


def check_package(archive: Path, label: str) -> dict[str, object]:
    """Refuse a conda package (.conda or .tar.bz2) any of whose paths is unsafe; stamp it when it passes.

    Returns the package's own `info/index.json` (what it says it is: name, version, build, subdir),
    read from the same pass and kept in the stamp, so that a caller can hold it against the lock.
    """
    archive = Path(archive)
    stamp, line = _stamp(archive)
    with contextlib.suppress(OSError, ValueError):
        head, _, stamped = stamp.read_text().partition("\n")
        if head + "\n" == line:
            return _index(stamped.encode(), "")
    tree = _Tree(f"{label} ({archive.name})", {}, set())
    meta: dict[str, bytes] = {}
    try:
        if archive.name.endswith(".conda"):
            _read_conda(archive, tree, meta)
        else:
            with open(archive, "rb") as f:
                _tar_members(f, "r|bz2", tree, meta)
    except UnsafePath as e:
        raise CondastackError(f"{e.message} The package was refused; nothing was installed.") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise CondastackError(f"{tree.source}: not a readable conda package ({e}); nothing was installed.") from None
    try:
        _metadata_paths(meta, tree)
    except UnsafePath as e:
        raise CondastackError(f"{e.message} The package was refused; nothing was installed.") from None
    index = _index(meta.get("info/index.json"), tree.source)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(f"{TMP_MARK}{stamp.name}.{os.getpid()}")
    tmp.write_text(line + json.dumps(index, sort_keys=True))
    os.replace(tmp, stamp)
    return index


_INDEX_TEXT = ("name", "version", "build", "subdir")


def _index(data: bytes | None, source: str) -> dict[str, object]:
    """info/index.json, with the fields a lock names as strings; ValueError (from a stamp) or a refusal."""
    try:
        index = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        index = None
    if not isinstance(index, dict) or not all(isinstance(index.get(k), str) for k in _INDEX_TEXT):
        if not source:
            raise ValueError("stale stamp")
        raise CondastackError(f"{source}: info/index.json is missing or malformed (it must name the package's "
                              f"{', '.join(_INDEX_TEXT)}). The package was refused; nothing was installed.")
    return index


__all__ = ["UnsafePath", "clean_relative", "check_under", "check_package", "check_meta_record", "STAMP_DIR"]
