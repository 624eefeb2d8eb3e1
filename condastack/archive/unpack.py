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
import errno
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

from condastack.core.errors import ArchiveRefused, CondastackError, naming
from condastack.core.fs import (
    TMP_MARK,
    _fsync_dir,
    atomic_path,
    clean_stale_temporaries,
    remove_path,
)
from condastack.core.progress import Meter
from condastack.env.prefix import PREFIXES_FILE, Env, check_dest_fits

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
        self.sparse_extra = 0  # bytes a pax sparse member expands to beyond its stored size

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
        extra, self.sparse_extra = self.sparse_extra, 0
        self.members += 1
        if self.max_members is not None and self.members > self.max_members:
            raise _Refused(f"more than {self.max_members} members (the --max-members / {LIMIT_ENV['members']} "
                           "limit)")
        if info.type not in _OK_TYPES:
            kind = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                    tarfile.FIFOTYPE: "a fifo"}.get(info.type, f"of unsupported type {info.type!r}")
            raise _Refused(f"member {name!r} is {kind}", member=name)
        if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            self.bytes += info.size + extra
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
            tparts = self.clean(linkname, "hard link target").split("/")
            if "/".join([*self.resolve(tparts[:-1], name), tparts[-1]]) in self.links:
                # link(2) on a symlink makes another symlink, which would resolve from the new place.
                raise _Refused(f"hard link {name!r} -> {linkname!r} points to a symlink", member=name)
            target = "/".join(self.resolve(tparts, name))
            if target not in self.files:
                raise _Refused(f"hard link {name!r} -> {linkname!r} does not point to a file of the archive", member=name)
            self.links.pop(full, None)
            self.files.add(full)
        else:
            self.links.pop(full, None)
            if info.type != tarfile.DIRTYPE:
                self.files.add(full)


def _pax(data: bytes) -> dict[str, str]:
    """Parse pax records ("LEN key=value\\n"); any malformed record is a refusal, never a loop or a crash."""
    out: dict[str, str] = {}
    pos, n = 0, len(data)
    while pos < n:
        if not data[pos:].strip(b"\0"):
            break  # NUL padding after the last record
        sp = data.find(b" ", pos, pos + 20)
        raw = data[pos:sp] if sp != -1 else data[pos:pos + 20]
        if sp == -1 or not raw.isdigit():
            raise _Refused(f"bad pax header (record length {raw[:20]!r} is not a number)")
        length = int(raw)
        if length <= sp - pos + 1 or pos + length > n:
            raise _Refused(f"bad pax header (record length {length} is out of range)")
        rec = data[sp + 1: pos + length]
        if not rec.endswith(b"\n") or b"=" not in rec:
            raise _Refused("bad pax header (a record is not 'key=value' ended by a newline)")
        key, _, val = rec[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = val.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _pax_size(fields: dict[str, str], key: str) -> int:
    raw = fields[key]
    if not raw.isascii() or not raw.isdigit():
        raise _Refused(f"bad pax header ({key}={raw[:40]!r} is not a size)")
    return int(raw)


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
    if size_f[0] not in (0o200, 0o377) and size_f.split(b"\0", 1)[0].strip().strip(b"01234567"):
        # int() would take '-', '+' or '_', which tar reads differently: refuse rather than disagree with it
        raise _Refused(f"bad tar header (size field {size_f!r} is not an octal number)")
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
    if info.size < 0:
        raise _Refused(f"bad tar header (member {info.name!r} has a negative size)")
    return _Header(info.name, info.linkname, info.type, info.size)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _check_member(info: tarfile.TarInfo, fields: dict[str, str], long_name: str | None, long_link: str | None,
                  guard: _Guard) -> int:
    """Check one member, with what its pax/GNU headers say of it; returns its padded data size."""
    name = fields.get("path", long_name if long_name is not None else info.name)
    name = fields.get("GNU.sparse.name", name)  # tar writes a pax sparse member under this name
    link = fields.get("linkpath", long_link if long_link is not None else info.linkname)
    if "size" in fields:
        info.size = _pax_size(fields, "size")
    for key in ("GNU.sparse.realsize", "GNU.sparse.size"):  # a sparse file expands to its real size
        if key in fields:
            guard.sparse_extra = max(0, _pax_size(fields, key) - info.size)
    guard.check(info, name, link)
    return 0 if info.type in (tarfile.SYMTYPE, tarfile.DIRTYPE) else (info.size + 511) // 512 * 512


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
            pos += 512 + _check_member(info, fields, long_name, long_link, guard)
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
        raise CondastackError(f"{archive}: " + ("not a regular file (a folder, fifo or device); give the archive "
                                                "file." if archive.exists() else "no such archive."))
    if dest.is_symlink():
        raise CondastackError(f"{dest}: is a symlink; give the real folder (or a new path) as the destination.")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CondastackError(f"{dest}: already exists and is not empty; choose a new folder or remove it first.")
    manifest = archive.with_name(archive.name + ".manifest.json")
    total = None
    if manifest.is_file():  # fail before extracting gigabytes when DEST cannot fit
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError, OSError):
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
    tmp = dest.parent / f"{TMP_MARK}{dest.name}.{os.getpid()}"
    remove_path(tmp)
    tmp.mkdir()
    with naming(dest):  # a write() hitting ENOSPC names no file: it is about DEST
        try:
            _extract(archive, tmp, guard)
            if meter is not None:
                meter("unpack", guard.bytes, total and max(total, guard.bytes), "bytes")
            changed = _relocate_extracted(archive, tmp, dest)
            _rename_into(tmp, dest)
        finally:
            remove_path(tmp)
    return UnpackResult(dest=dest, members=guard.members, bytes=guard.bytes, relocated_files=changed)


def _relocate_extracted(archive: Path, tmp: Path, dest: Path) -> int:
    """Relocate an extracted env from `tmp` to `dest`; the number of files rewritten."""
    try:
        if _read_state(tmp) is None:
            return 0  # an archive with no placeholder records (not an env) is only extracted
        return relocate(tmp, as_prefix=dest).files_changed
    except CondastackError as e:  # name the archive and the final path, not our temporary
        raise ArchiveRefused(archive, str(e).replace(str(tmp), str(dest)).rstrip(".")) from None


def _rename_into(tmp: Path, dest: Path) -> None:
    """Move the finished tree to `dest`.

    Not atomic_path: its swap would replace a DEST another process filled meanwhile. rename(2)
    replaces only an empty DEST, in one step, so DEST is never absent.
    """
    try:
        os.rename(tmp, dest)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        raise CondastackError(f"{dest}: another process filled it while this unpack ran; it was "
                              "left as that process made it. Choose a new folder.") from None
    _fsync_dir(dest.parent)


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
        try:
            state = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise CondastackError(f"{p}: the relocation records are not valid JSON ({e}).") from None
        return _checked_state(state, prefix, PREFIXES_FILE)
    script = prefix / "bin" / "conda-unpack"
    if script.is_file():  # a plain conda-pack archive: read its records
        text = script.read_text(errors="surrogateescape")
        m = re.search(r"^_prefix_records = \[\n(.*?)^\]", text, re.S | re.M)
        if m:
            try:
                records = ast.literal_eval("[" + m.group(1) + "]")
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                raise CondastackError(f"{script}: its _prefix_records are not a Python list of tuples.") from None
            return _checked_state({"current": None, "records": records}, prefix, "bin/conda-unpack")
    return None


def _checked_state(state: object, prefix: Path, source: str) -> dict:
    """The relocation state if well-typed and every record's file is a safe path inside `prefix`."""
    from condastack.core.pathsafe import check_under

    where = f"{prefix / source}"
    if not isinstance(state, dict) or not isinstance(state.get("records", []), list) \
            or not isinstance(state.get("current"), (str, type(None))):
        raise CondastackError(f"{where}: relocation records must be {{'current': str, 'records': [...]}}.")
    records = []
    for r in state.get("records", []):
        if not (isinstance(r, (list, tuple)) and len(r) == 3 and all(isinstance(x, str) for x in r)
                and r[1] and r[2] in ("text", "binary")):
            raise CondastackError(f"{where}: malformed relocation record {str(r)[:200]} "
                                  "(expected [file, placeholder, 'text' or 'binary']).")
        check_under(prefix, r[0], where)
        records.append(list(r))
    return {**state, "records": records}


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
