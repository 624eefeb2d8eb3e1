"""Relocation of an unpacked env to the folder it now lives in: text and binary placeholders, checked against the
env's own relocation record (condastack.prefixes).
"""


from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from condastack.core.errors import CondastackError
from condastack.core.fs import HASH_THREADS, atomic_path
from condastack.core.pathsafe import check_under
from condastack.env.prefix import PREFIXES_FILE, Env, check_dest_fits


@dataclass
class RelocateResult:
    prefix: Path
    old_prefix: str | None
    files_changed: int


@dataclass(frozen=True)
class RelocationRecord:
    """The relocation record of an unpacked env (`conda-meta/condastack.prefixes`): where its
    placeholder files point now, and each file's placeholder and mode. Checked on the way in:
    every file is a safe path inside the env."""

    current: str | None
    records: tuple[tuple[str, str, Literal["text", "binary"]], ...]

    @classmethod
    def from_json(cls, state: object, prefix: Path, source: str) -> RelocationRecord:
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
            records.append((r[0], r[1], r[2]))
        return cls(current=state.get("current"), records=tuple(records))

    def text(self) -> str:
        return json.dumps({"current": self.current, "records": [list(r) for r in self.records]}, indent=1) + "\n"

    @classmethod
    def read(cls, prefix: Path) -> RelocationRecord | None:
        """The env's own record, else the records of a plain conda-pack archive's conda-unpack; None if neither."""
        p = prefix / PREFIXES_FILE
        if p.is_file():
            try:
                state = json.loads(p.read_bytes())
            except (ValueError, UnicodeDecodeError) as e:
                raise CondastackError(f"{p}: the relocation records are not valid JSON ({e}).") from None
            return cls.from_json(state, prefix, PREFIXES_FILE)
        script = prefix / "bin" / "conda-unpack"
        if script.is_file():  # a plain conda-pack archive: read its records
            text = script.read_text(errors="surrogateescape")
            body = _records_block(text)
            if body is not None:
                try:
                    records = ast.literal_eval("[" + body + "]")
                except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                    raise CondastackError(f"{script}: its _prefix_records are not a Python list of tuples.") from None
                return cls.from_json({"current": None, "records": records}, prefix, "bin/conda-unpack")
        return None


def _records_block(text: str) -> str | None:
    """The lines between `_prefix_records = [` and the next line `]`, found with two str.find calls.

    A regex (`^_prefix_records = \\[\\n(.*?)^\\]`) retried at each of many opening lines is quadratic.
    """
    head = "_prefix_records = [\n"
    start = 0 if text.startswith(head) else text.find("\n" + head)
    if start < 0:
        return None
    body = start + (len(head) if start == 0 else len(head) + 1)
    end = text.find("\n]", body - 1)
    return text[body:end + 1] if end >= 0 else None


def _binary_relocate(data: bytes, old: bytes, new: bytes, room: int, path: str) -> bytes:
    """Replace `old` by `new` in NUL-terminated strings, keeping each string's padded length.

    `room` is the original placeholder length: the first relocation padded
    every string to it with NULs, so a later, longer prefix still fits.
    """
    pad = b"\0" * (1 + max(room - len(old), 0))
    fill = b"\0" * (room - len(new) + 1)
    parts: list[bytes] = []
    pos, nul = 0, -1
    # One pass: each placeholder's string ends at the next NUL, which is found once for all the
    # placeholders before it (a regex rescans to the NUL from each one: quadratic on hostile files).
    while (i := data.find(old, pos)) >= 0:
        j = i + len(old)
        if nul < j:
            nul = data.find(b"\0", j)
            if nul < 0:
                break
        if data.startswith(pad, nul):
            parts += [data[pos:i], new, data[j:nul], fill]
            pos = nul + len(pad)
        else:  # not padded as packed: leave it, look further on
            parts.append(data[pos:i + 1])
            pos = i + 1
    parts.append(data[pos:])
    out = b"".join(parts)
    if len(out) != len(data):
        raise CondastackError(f"{path}: binary relocation changed the file length; the file is not as packed.")
    return out


def rewrite_prefix(data: bytes, olds: list[str], new: str, placeholder: str, mode: str, path: str) -> bytes:
    """`data` (a file of mode "text" or "binary" recorded with `placeholder`) with the first of `olds` it
    holds replaced by `new`; binary strings keep the placeholder's padded length."""
    for o in dict.fromkeys(olds):
        if mode == "binary":
            out = _binary_relocate(data, o.encode(), new.encode(), len(placeholder.encode()), path)
        else:
            out = data.replace(o.encode(), new.encode())
        if out != data:
            return out
    return data


def relocate(prefix: Path, *, as_prefix: Path | None = None) -> RelocateResult:
    """Point the placeholder files of the env at `prefix` to `as_prefix` (default: `prefix`).

    Repeatable: the prefix baked in is recorded, so a moved env can be relocated again.
    """
    prefix = Path(prefix).absolute()
    new = str(Path(as_prefix).absolute() if as_prefix else prefix)
    state = RelocationRecord.read(prefix)
    if state is None:
        Env(prefix).require_conda_env()
        raise CondastackError(f"{prefix}: has no relocation records ({PREFIXES_FILE}); it was not unpacked "
                              "from a condastack or conda-pack archive.")
    current = state.current
    records = list(state.records)
    check_dest_fits(records, new)  # every binary first, so nothing is half-done
    held: dict[str, tuple[str | None, int]] = {}
    if current != new:
        # Threads: reading, writing, renaming and hashing release the GIL (thousands of files in a real env).
        with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
            for f, got in zip((r[0] for r in records),
                              pool.map(lambda r: _relocate_file(prefix, r, current, new), records), strict=True):
                if got is not None:
                    held[f] = got
        Env(prefix).update_file_hashes(held)  # what `verify` compares the rewritten files against
        _replace_file(prefix / PREFIXES_FILE, RelocationRecord(new, state.records).text().encode())
    return RelocateResult(prefix=prefix, old_prefix=current, files_changed=len(held))


def _relocate_file(prefix: Path, record: tuple[str, str, str], current: str | None,
                   new: str) -> tuple[str | None, int] | None:
    """Rewrite one placeholder file for `new`; its new (sha256, size), or None when it is unchanged."""
    f, ph, mode = record
    path = os.path.join(prefix, f)
    try:  # a regular file only: never through a link, and a fifo must not block the open
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # missing, or a link (ELOOP): as before, left alone
        return None
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = fh.read()
    # conda-unpack leaves bin/python* alone, so those may still hold the placeholder.
    out = rewrite_prefix(data, [current or ph, ph], new, ph, mode, f)
    if out == data:
        return None
    _replace_file(Path(path), out)
    return hashlib.sha256(out).hexdigest(), len(out)


def _replace_file(path: Path, data: bytes) -> None:
    """Write a new copy and rename it over: running programs and hard links keep the old one."""
    with atomic_path(path, durable=False) as tmp:
        tmp.write_bytes(data)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, path.stat().st_mode & 0o7777)
