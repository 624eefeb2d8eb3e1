"""Type checks of an archive's manifest.json, which arrives with the archive and is hostile until checked.

`verify_archive` checks the sha256 of the archive against the manifest, but every other field
is read later (sizes, counts, packages, placeholder records); a wrong type there would be a
crash (exit 70) instead of a refusal. One check, before any field is used, names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from condastack.core.errors import CondastackError
from condastack.core.pathsafe import UnsafePath, clean_relative

_COUNTS = ("size", "file_count", "bytes_unpacked", "level", "threads")
_TEXTS = ("format", "archive", "sha256", "dest_prefix", "layer", "stack", "platform", "lock_hash", "lockfile",
          "source_prefix", "created_by", "created")
_PKG_TEXTS = ("name", "version", "build", "channel", "subdir", "fn", "sha256", "md5")


def check_manifest(m: dict[str, Any], path: Path) -> dict[str, Any]:
    """`m` if every known field has its type (and placeholder files are safe paths); CondastackError otherwise."""
    def bad(field: str, want: str) -> CondastackError:
        return CondastackError(f"{path}: field '{field}' must be {want}, not {str(m.get(field))[:80]!r}. The "
                               "manifest is damaged or was tampered with; nothing was installed. Re-copy it from "
                               "where the archive was packed.")

    for key in _COUNTS:
        v = m.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise bad(key, "a whole number (0 or more)")
    for key in _TEXTS:
        if m.get(key) is not None and not isinstance(m[key], str):
            raise bad(key, "a string")
    pkgs = m.get("packages", [])
    if not isinstance(pkgs, list) or not all(
            isinstance(p, dict) and all(p.get(k) is None or isinstance(p[k], str) for k in _PKG_TEXTS) for p in pkgs):
        raise bad("packages", "a list of {name, version, build, ...} strings")
    recs = m.get("placeholders", [])
    if not isinstance(recs, list) or not all(
            isinstance(r, dict) and isinstance(r.get("file"), str) and isinstance(r.get("placeholder"), str)
            and r.get("mode") in ("text", "binary") for r in recs):
        raise bad("placeholders", "a list of {file, placeholder, mode: text|binary}")
    try:
        for r in recs:
            clean_relative(r["file"], f"{path}: placeholders")
    except UnsafePath as e:
        raise CondastackError(f"{e.message} Nothing was installed.") from None
    return m


__all__ = ["check_manifest"]
