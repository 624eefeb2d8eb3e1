"""The tar guard: a streaming filter that reads every tar header strictly (ustar, GNU, pax) and refuses members
that would escape the destination, before tar sees them.
"""


from __future__ import annotations

import os
import tarfile

from condastack.core.pathsafe import UnsafePath, member_name
from condastack.core.progress import Meter

LIMIT_ENV = {"members": "CONDASTACK_MAX_MEMBERS", "bytes": "CONDASTACK_MAX_BYTES"}

_CHUNK = 1 << 20


_OK_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
             tarfile.CONTTYPE}


_META_TYPES = {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
               tarfile.SOLARIS_XHDTYPE}


class _Refused(Exception):
    """The gate's verdict on one member; becomes an ArchiveRefused naming the archive."""

    def __init__(self, reason: str, member: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.member = reason, member


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
        try:
            return member_name(name, "archive", what)
        except UnsafePath as e:  # worded as before: "{what} {name!r} is an absolute path"
            raise _Refused(f"{what} {name!r} {e.why.removeprefix(what + ' ')}", member=name) from None

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

    def check(self, info: _Header, name: str, linkname: str) -> None:
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
                raise _Refused(f"hard link {name!r} -> {linkname!r} does not point to a file of the archive",
                               member=name)
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


def _check_member(info: _Header, fields: dict[str, str], long_name: str | None, long_link: str | None,
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

