"""Unpack an archive made by `condastack pack` (or conda-pack) safely, and relocate it.

Extraction is one pass: `zstd -dc` (or `gzip -dc`) feeds Python, which reads
every tar header, checks it, and forwards the bytes to GNU tar, which writes
the files. A member is refused before tar sees it when its name is absolute
or has `..`, when it is a device, fifo or unknown type, or when it (or the
target of a symlink or hard link) would resolve outside DEST through the
links seen so far. The archive is extracted into a temporary sibling of DEST
and renamed into place only when complete and relocated, so on any refusal
or failure DEST is as it was and nothing is left behind.

Relocation rewrites the placeholder records kept in
`conda-meta/condastack.prefixes` (or, for a plain conda-pack archive, those in
`bin/conda-unpack`). Text files get the new prefix in place of the old one;
binary files get it padded with NULs to the length of the original
placeholder, which is therefore the longest prefix allowed. The file records
which prefix is now baked in, so relocation can be repeated after a move
(`condastack relocate PATH`), unlike conda-pack's one-shot `conda-unpack`.
Only condastack itself runs on the host: no conda, no python in the env.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .env import PREFIXES_FILE, Env, check_dest_fits
from .errors import ArchiveRefused, CondastackError
from .fsutil import atomic_path, clean_stale_temporaries
from .progress import Meter
LIMIT_ENV = {"members": "CONDASTACK_MAX_MEMBERS", "bytes": "CONDASTACK_MAX_BYTES"}
_CHUNK = 1 << 20
_OK_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
             tarfile.CONTTYPE}
_META_TYPES = {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
               tarfile.SOLARIS_XHDTYPE}


@dataclass
class UnpackResult:
    dest: Path
    members: int
    bytes: int
    relocated_files: int


@dataclass
class RelocateResult:
    prefix: Path
    old_prefix: str | None
    files_changed: int


class _Refused(Exception):
    """The gate's verdict on one member; becomes an ArchiveRefused naming the archive."""

    def __init__(self, reason: str, member: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.member = reason, member


# --------------------------------------------------------------------------- the member checker


class _Guard:
    """Follows the tree an archive builds (names and symlinks) without touching disk."""

    def __init__(self, max_members: int | None, max_bytes: int | None, meter: Meter | None = None,
                 total: int | None = None) -> None:
        self.meter, self.total, self.shown = meter, total, 0
        self.links: dict[str, str] = {}
        self.files: set[str] = set()
        self.members = 0
        self.bytes = 0
        self.max_members = max_members
        self.max_bytes = max_bytes

    @staticmethod
    def clean(name: str, what: str = "member") -> str:
        if "\0" in name:
            raise _Refused(f"{what} {name!r} has a NUL byte in its name", member=name)
        if name.startswith("/"):
            raise _Refused(f"{what} {name!r} is an absolute path", member=name)
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise _Refused(f"{what} {name!r} contains '..'", member=name)
        return "/".join(parts)

    def resolve(self, parts: list[str], name: str) -> list[str]:
        """Resolve a path inside the archive root through the symlinks seen; refuse an escape."""
        out: list[str] = []
        todo = list(parts)
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not out:
                    raise _Refused(f"member {name!r} resolves outside the destination", member=name)
                out.pop()
                continue
            cur = "/".join([*out, part])
            if cur in self.links:
                hops += 1
                if hops > 40:
                    raise _Refused(f"member {name!r}: too many levels of symbolic links", member=name)
                target = self.links[cur]
                if target.startswith("/"):
                    raise _Refused(f"member {name!r} goes through an absolute symlink", member=name)
                todo = target.split("/") + todo
                continue
            out.append(part)
        return out

    def check(self, info: tarfile.TarInfo, name: str, linkname: str) -> None:
        self.members += 1
        if self.max_members is not None and self.members > self.max_members:
            raise _Refused(f"more than {self.max_members} members (the --max-members / {LIMIT_ENV['members']} "
                           "limit)")
        if info.type not in _OK_TYPES:
            kind = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                    tarfile.FIFOTYPE: "a fifo"}.get(info.type, f"of unsupported type {info.type!r}")
            raise _Refused(f"member {name!r} is {kind}", member=name)
        if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            self.bytes += info.size
            if self.max_bytes is not None and self.bytes > self.max_bytes:
                raise _Refused(f"more than {self.max_bytes} bytes once expanded (the --max-bytes / "
                               f"{LIMIT_ENV['bytes']} limit)")
            if self.meter is not None and self.bytes - self.shown >= 1 << 20:  # checked bytes reach tar next
                self.shown = self.bytes
                self.meter("unpack", self.bytes, self.total, "bytes")
        rel = self.clean(name)
        if not rel:
            if info.type == tarfile.DIRTYPE:
                return
            raise _Refused(f"member {name!r} has an empty name", member=name)
        parts = rel.split("/")
        parent = self.resolve(parts[:-1], name)
        full = "/".join([*parent, parts[-1]])
        if info.type == tarfile.SYMTYPE:
            if not linkname or linkname.startswith("/"):
                raise _Refused(f"symlink {name!r} -> {linkname!r} points outside the destination", member=name)
            self.resolve(parent + linkname.split("/"), name)  # raises on escape
            self.links[full] = linkname
            self.files.discard(full)
        elif info.type == tarfile.LNKTYPE:
            target = "/".join(self.resolve(self.clean(linkname, "hard link target").split("/"), name))
            if target not in self.files:
                raise _Refused(f"hard link {name!r} -> {linkname!r} does not point to a file of the archive", member=name)
            self.links.pop(full, None)
            self.files.add(full)
        else:
            self.links.pop(full, None)
            if info.type != tarfile.DIRTYPE:
                self.files.add(full)


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        key, _, val = data[sp + 1: pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = val.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _Header:
    """The fields of a tar header the guard needs (tarfile.TarInfo is 4x slower to build)."""

    __slots__ = ("name", "linkname", "type", "size")

    def __init__(self, name: str, linkname: str, type: bytes, size: int) -> None:  # noqa: A002
        self.name, self.linkname, self.type, self.size = name, linkname, type, size


_ZERO = b"\0" * 512
_MAGICS = (b"ustar  \0", b"ustar\x0000")
_MAX_META = 1 << 20  # a long name or pax header larger than this is not a real one
_SPLICE_MIN = 1 << 16  # file data longer than this goes from pipe to pipe without a copy


def _nts(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _header(hdr: bytes) -> _Header:
    """Parse one 512-byte header exactly as tarfile.TarInfo.frombuf does (which is the fallback)."""
    size_f = hdr[124:136]
    try:
        fast = (hdr[257:265] in _MAGICS and size_f[0] not in (0o200, 0o377)
                and sum(hdr) - sum(hdr[148:156]) + 256 == int(hdr[148:156].split(b"\0", 1)[0] or b"0", 8))
        size = int(size_f.split(b"\0", 1)[0].strip() or b"0", 8) if fast else 0
    except ValueError:
        fast = False
    if fast:
        kind = hdr[156:157]
        name = _nts(hdr[0:100])
        if kind == tarfile.AREGTYPE and name.endswith("/"):
            kind = tarfile.DIRTYPE
        if kind == tarfile.DIRTYPE:
            name = name.rstrip("/")
        if hdr[345] and kind not in tarfile.GNU_TYPES:
            name = _nts(hdr[345:500]) + "/" + name
        return _Header(name, _nts(hdr[157:257]), kind, size)
    try:
        info = tarfile.TarInfo.frombuf(hdr, "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError) as e:
        raise _Refused(f"bad tar header ({e})") from None
    return _Header(info.name, info.linkname, info.type, info.size)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _filter_stream(src: int, dst: int, guard: _Guard) -> None:  # noqa: C901
    """Copy a tar stream from fd `src` to fd `dst`, checking each member before tar sees its header.

    Reads and forwards large blocks; headers are parsed in place, file data is skipped by
    offset, and long file data moves from pipe to pipe with splice(2), never copied into Python.
    """
    long_name = long_link = None
    pax: dict[str, str] = {}
    glob_pax: dict[str, str] = {}
    buf = b""  # bytes read but not yet forwarded
    splice = hasattr(os, "splice")
    pos = 0  # offset in buf of the next header (beyond its end while inside file data)
    group = None  # offset in buf of the first meta header of the member being assembled
    while True:
        chunk = os.read(src, _CHUNK)
        if not chunk:
            if pos == len(buf) and group is None:
                raise _Refused("the archive is truncated (no end-of-archive marker)")
            raise _Refused("the archive is truncated")
        buf = buf + chunk if buf else chunk
        while pos + 512 <= len(buf):
            hdr = buf[pos:pos + 512]
            if hdr == _ZERO:  # end of archive: tar stops here; forward it and the rest as is
                _write_all(dst, buf)
                while rest := os.read(src, _CHUNK):
                    _write_all(dst, rest)
                return
            info = _header(hdr)
            padded = (info.size + 511) // 512 * 512
            if info.type in _META_TYPES:
                if info.size > _MAX_META:
                    raise _Refused(f"bad tar header (a {info.size}-byte extended header)")
                if pos + 512 + padded > len(buf):
                    break  # read more first
                body = buf[pos + 512: pos + 512 + info.size]
                if group is None:
                    group = pos
                pos += 512 + padded
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = body.rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = body.rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif info.type == tarfile.XGLTYPE:
                    glob_pax.update(_pax(body))
                else:
                    pax.update(_pax(body))
                continue
            fields = {**glob_pax, **pax} if (pax or glob_pax) else pax
            name = fields.get("path", long_name if long_name is not None else info.name)
            link = fields.get("linkpath", long_link if long_link is not None else info.linkname)
            if "size" in fields:
                info.size = int(fields["size"])
                padded = (info.size + 511) // 512 * 512
            if info.type in (tarfile.SYMTYPE, tarfile.DIRTYPE):
                padded = 0
            guard.check(info, name, link)
            pos += 512 + padded
            group = None
            long_name = long_link = None
            pax = {}
        limit = group if group is not None else min(pos, len(buf))
        if limit:
            _write_all(dst, buf[:limit] if limit < len(buf) else buf)
            buf = buf[limit:]
            pos -= limit
            if group is not None:
                group -= limit
        if pos - len(buf) >= _SPLICE_MIN and splice:  # deep inside checked file data: move it pipe to pipe
            try:
                left = pos
                while left:
                    moved = os.splice(src, dst, left)
                    if not moved:
                        raise _Refused("the archive is truncated")
                    left -= moved
                pos = 0
            except OSError:  # not two pipes (or an old kernel): copy through Python
                splice = False
                pos = left


# --------------------------------------------------------------------------- unpack


def _decompressor(archive: Path) -> list[str]:
    with open(archive, "rb") as f:
        magic = f.read(4)
    if magic == b"\x28\xb5\x2f\xfd":
        return ["zstd", "-dcq", str(archive)]
    if magic[:2] == b"\x1f\x8b":
        return ["pigz", "-dc", str(archive)] if _which("pigz") else ["gzip", "-dc", str(archive)]
    if magic == b"hsqs":
        raise CondastackError(
            f"{archive}: is a SquashFS image; it is not unpacked but mounted read-only at the prefix it was "
            "packed for (`squashfuse IMAGE DIR` or `mount -o loop,ro IMAGE DIR`).")
    return ["cat", str(archive)]  # plain tar


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def _limit(given: int | None, kind: str) -> int | None:
    """An explicit limit, else the one set in the environment (e.g. by a site admin), else none."""
    if given is not None:
        return given
    raw = os.environ.get(LIMIT_ENV[kind], "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise CondastackError(f"{LIMIT_ENV[kind]}={raw!r}: must be a whole number of {kind} (0 or more).")
    return value


def unpack_archive(archive: Path, dest: Path, *, max_members: int | None = None,
                   max_bytes: int | None = None, meter: Meter | None = None) -> UnpackResult:
    """Extract `archive` safely into `dest` (which must not exist or be empty) and relocate it there.

    Member count and expanded size are limited by `max_members` / `max_bytes`, which
    default to $CONDASTACK_MAX_MEMBERS / $CONDASTACK_MAX_BYTES (no limit when unset).
    """
    archive, dest = Path(archive), Path(dest).absolute()
    max_members, max_bytes = _limit(max_members, "members"), _limit(max_bytes, "bytes")
    if not archive.is_file():
        raise CondastackError(f"{archive}: no such archive.")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CondastackError(f"{dest}: already exists and is not empty; choose a new folder or remove it first.")
    manifest = archive.with_name(archive.name + ".manifest.json")
    total = None
    if manifest.is_file():  # fail before extracting gigabytes when DEST cannot fit
        with contextlib.suppress(ValueError, KeyError, TypeError):
            data = json.loads(manifest.read_text())
            total = int(data["bytes_unpacked"]) if isinstance(data.get("bytes_unpacked"), int) else None
            records = [(r["file"], r["placeholder"], r["mode"]) for r in data["placeholders"]]
            check_dest_fits(records, str(dest))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CondastackError(f"{dest}: cannot create its parent folder: {e.strerror}.") from None
    clean_stale_temporaries(dest.parent, dest.name)  # left by a killed unpack
    guard = _Guard(max_members, max_bytes, meter, total)
    # An empty DEST is swapped for the full tree in one step, so it is never absent.
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        _extract(archive, tmp, guard)
        if meter is not None:
            meter("unpack", guard.bytes, total and max(total, guard.bytes), "bytes")
        # An archive with no placeholder records (not an env) is only extracted.
        changed = relocate(tmp, as_prefix=dest).files_changed if _read_state(tmp) is not None else 0
    return UnpackResult(dest=dest, members=guard.members, bytes=guard.bytes, relocated_files=changed)


def _extract(archive: Path, into: Path, guard: _Guard) -> None:
    dec = subprocess.Popen(_decompressor(archive), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    tar = subprocess.Popen(["tar", "-xf", "-", "-C", str(into), "--no-same-owner", "--delay-directory-restore"],
                           stdin=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    for pipe in (dec.stdout, tar.stdin):  # fewer, larger reads and writes
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), 1031, _CHUNK)  # F_SETPIPE_SZ
    errs: dict[str, bytes] = {}
    threads = [threading.Thread(target=lambda p=p, k=k: errs.__setitem__(k, p.stderr.read()))
               for k, p in (("dec", dec), ("tar", tar))]
    for t in threads:
        t.start()
    refused: _Refused | None = None
    broken = False
    try:
        _filter_stream(dec.stdout.fileno(), tar.stdin.fileno(), guard)
    except _Refused as e:
        refused = e
    except BrokenPipeError:
        broken = True
    finally:
        if refused:
            tar.kill()
        with contextlib.suppress(BrokenPipeError):
            tar.stdin.close()
        dec.stdout.close()
        rc_t, rc_d = tar.wait(), dec.wait()
        for t in threads:
            t.join()
    if refused:
        if rc_d not in (0, None) and "truncated" in refused.reason:
            raise CondastackError(f"{archive}: cannot be decompressed: "
                                  f"{errs.get('dec', b'').decode(errors='replace').strip()}")
        raise ArchiveRefused(archive, refused.reason, member=refused.member)
    if rc_d != 0:
        raise CondastackError(f"{archive}: cannot be decompressed: {errs.get('dec', b'').decode(errors='replace').strip()}")
    if rc_t != 0 or broken:
        raise CondastackError(f"{archive}: tar failed: {errs.get('tar', b'').decode(errors='replace').strip()}")


# --------------------------------------------------------------------------- relocation


def _read_state(prefix: Path) -> dict | None:
    p = prefix / PREFIXES_FILE
    if p.is_file():
        return json.loads(p.read_text())
    script = prefix / "bin" / "conda-unpack"
    if script.is_file():  # a plain conda-pack archive: read its records
        m = re.search(r"^_prefix_records = \[\n(.*?)^\]", script.read_text(), re.S | re.M)
        if m:
            return {"current": None, "records": [list(r) for r in ast.literal_eval("[" + m.group(1) + "]")]}
    return None


def _binary_relocate(data: bytes, old: bytes, new: bytes, room: int, path: str) -> bytes:
    """Replace `old` by `new` in NUL-terminated strings, keeping each string's padded length.

    `room` is the original placeholder length: the first relocation padded
    every string to it with NULs, so a later, longer prefix still fits.
    """
    pad_now = room - len(old)
    pat = re.compile(re.escape(old) + rb"([^\0]*?)\0" + (b"\0" * max(pad_now, 0)))

    def sub(m: re.Match) -> bytes:
        return new + m.group(1) + b"\0" * (room - len(new) + 1)

    out = pat.sub(sub, data)
    if len(out) != len(data):
        raise CondastackError(f"{path}: binary relocation changed the file length; the file is not as packed.")
    return out


def relocate(prefix: Path, *, as_prefix: Path | None = None) -> RelocateResult:
    """Point the placeholder files of the env at `prefix` to `as_prefix` (default: `prefix`).

    Repeatable: the prefix baked in is recorded, so a moved env can be relocated again.
    """
    prefix = Path(prefix).absolute()
    new = str(Path(as_prefix).absolute() if as_prefix else prefix)
    state = _read_state(prefix)
    if state is None:
        Env(prefix).require_conda_env()
        raise CondastackError(f"{prefix}: has no relocation records ({PREFIXES_FILE}); it was not unpacked "
                              "from a condastack or conda-pack archive.")
    current = state.get("current")
    records = [tuple(r) for r in state.get("records", [])]
    check_dest_fits(records, new)  # every binary first, so nothing is half-done
    changed = 0
    held: dict[str, tuple[str | None, int]] = {}
    if current != new:
        for f, ph, mode in records:
            old = current or ph
            path = prefix / f
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            out = data
            # conda-unpack leaves bin/python* alone, so those may still hold the placeholder.
            for o in dict.fromkeys([old, ph]):
                if mode == "binary":
                    out = _binary_relocate(data, o.encode(), new.encode(), len(ph.encode()), f)
                else:
                    out = data.replace(o.encode(), new.encode())
                if out != data:
                    break
            if out != data:
                _replace_file(path, out)
                held[f] = (hashlib.sha256(out).hexdigest(), len(out))
                changed += 1
        Env(prefix).update_file_hashes(held)  # what `verify` compares the rewritten files against
        state["current"] = new
        _replace_file(prefix / PREFIXES_FILE, (json.dumps(state, indent=1) + "\n").encode())
    return RelocateResult(prefix=prefix, old_prefix=current, files_changed=changed)


def _replace_file(path: Path, data: bytes) -> None:
    """Write a new copy and rename it over: running programs and hard links keep the old one."""
    with atomic_path(path, durable=False) as tmp:
        tmp.write_bytes(data)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, path.stat().st_mode & 0o7777)


__all__ = ["UnpackResult", "RelocateResult", "unpack_archive", "relocate"]
