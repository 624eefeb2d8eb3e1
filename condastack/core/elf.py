"""The dynamic section of ELF files: needed libraries, RPATH, and symbol versions.

One small reader for what condastack asks of a binary: whether a program needs
LD_LIBRARY_PATH (DT_NEEDED, RPATH/RUNPATH; container images) and which glibc it
needs at least (the highest GLIBC_x.y of its version needs; wrapped packages get
a `__glibc >=x.y` dependency from it). 64-bit little-endian only: the platforms
condastack targets (linux-64, linux-aarch64).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 1, 5, 15, 29
_DT_VERNEED, _DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF
_GLIBC = re.compile(r"^GLIBC_(\d+(?:\.\d+)+)$")


@dataclass(frozen=True)
class ElfDynamic:
    needed: tuple[str, ...]  # DT_NEEDED sonames
    has_rpath: bool  # RPATH or RUNPATH present
    version_needs: tuple[tuple[str, str], ...]  # (soname, version name), e.g. ("libc.so.6", "GLIBC_2.28")


def read_elf_dynamic(path: Path) -> ElfDynamic | None:
    """The dynamic section of a 64-bit little-endian ELF file; None if not one (or unreadable)."""
    try:
        with open(path, "rb") as f:
            return read_elf_stream(f)
    except OSError:
        return None


def read_elf_stream(f: BinaryIO) -> ElfDynamic | None:
    """read_elf_dynamic of a seekable binary stream (a file, or a package member in memory)."""
    try:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        return _read_dynamic(f, head)
    except (OSError, struct.error, UnicodeDecodeError):
        return None


def _read_dynamic(f, head: bytes) -> ElfDynamic:  # noqa: ANN001 - a binary file object
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    f.seek(phoff)
    phdrs = f.read(phentsize * phnum)
    loads, dyn = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", phdrs, i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dyn = (p_offset, p_filesz)
    if dyn is None:
        return ElfDynamic((), False, ())
    f.seek(dyn[0])
    raw = f.read(dyn[1])
    entries = [struct.unpack_from("<qQ", raw, o) for o in range(0, len(raw) - 15, 16)]
    has_path = any(t in (_DT_RPATH, _DT_RUNPATH) for t, _ in entries)

    def file_offset(vaddr: int | None) -> int | None:
        if vaddr is None:
            return None
        return next((o + vaddr - va for va, o, sz in loads if va <= vaddr < va + sz), None)

    strtab = file_offset(next((v for t, v in entries if t == _DT_STRTAB), None))
    if strtab is None:
        return ElfDynamic((), has_path, ())

    def string(at: int) -> str:
        f.seek(strtab + at)
        return f.read(256).split(b"\0", 1)[0].decode(errors="replace")

    needed = tuple(string(v) for t, v in entries if t == _DT_NEEDED)
    verneed = file_offset(next((v for t, v in entries if t == _DT_VERNEED), None))
    count = next((v for t, v in entries if t == _DT_VERNEEDNUM), 0)
    return ElfDynamic(needed, has_path, _version_needs(f, verneed, count, string) if verneed is not None else ())


def _version_needs(f, at: int, count: int, string) -> tuple[tuple[str, str], ...]:  # noqa: ANN001
    """Elf64_Verneed entries (16 bytes) each followed by a chain of Elf64_Vernaux (16 bytes)."""
    out: list[tuple[str, str]] = []
    for _ in range(min(count, 1024)):  # a hostile count cannot loop for long
        f.seek(at)
        _, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack("<HHIII", f.read(16))
        soname = string(vn_file)
        aux = at + vn_aux
        for _ in range(min(vn_cnt, 1024)):
            f.seek(aux)
            _, _, _, vna_name, vna_next = struct.unpack("<IHHII", f.read(16))
            out.append((soname, string(vna_name)))
            if not vna_next:
                break
            aux += vna_next
        if not vn_next:
            break
        at += vn_next
    return tuple(out)


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def glibc_floor(files: Iterable[Path]) -> str | None:
    """The highest GLIBC_x.y symbol version any of these ELF files needs ("2.28"), None if none."""
    return glibc_floor_of(read_elf_dynamic(p) for p in files)


def glibc_floor_of(dynamics: Iterable[ElfDynamic | None]) -> str | None:
    """The highest GLIBC_x.y version needed by any of these dynamic sections."""
    best: str | None = None
    for d in dynamics:
        for _, ver in d.version_needs if d is not None else ():
            m = _GLIBC.match(ver)
            if m and (best is None or _version_key(m.group(1)) > _version_key(best)):
                best = m.group(1)
    return best


def tree_glibc_floor(folder: Path) -> str | None:
    """glibc_floor of every regular file under folder (symbolic links are not followed)."""
    files = []
    for dirpath, _, names in os.walk(folder):
        for n in names:
            p = Path(dirpath) / n
            if not p.is_symlink() and p.is_file():
                files.append(p)
    return glibc_floor(files)


def max_glibc(*floors: str | None) -> str | None:
    """The highest of some glibc versions ("2.17", "2.28" -> "2.28"), ignoring None."""
    given = [f for f in floors if f]
    return max(given, key=_version_key) if given else None
