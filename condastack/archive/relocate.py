"""Relocation of an unpacked env to the folder it now lives in: text and binary placeholders, checked against the
env's own relocation record (condastack.prefixes).
"""


from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_path
from condastack.core.pathsafe import check_under
from condastack.env.prefix import PREFIXES_FILE, Env, check_dest_fits


@dataclass
class RelocateResult:
    prefix: Path
    old_prefix: str | None
    files_changed: int


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
