"""The archive manifest (`ARCHIVE.manifest.json`): one type that validates on the way in.

A manifest arrives with its archive and is hostile until checked. `Manifest.from_json` checks every
field before any is used (a wrong type would otherwise be a crash, exit 70, instead of a refusal
naming the field); `to_json` writes it back. Keys this version does not know are kept as they are
(`extra`), so a newer manifest read by an older condastack loses nothing it does not understand.

Fields (format_version 1): format, archive, sha256, size, dest_prefix, layer, stack, platform,
lock_hash, lockfile, source_prefix, packages [{name, version, build, channel, subdir, fn, sha256,
md5}], file_count, bytes_unpacked, placeholders [{file, placeholder, mode}] (only without
dest_prefix), level, threads, built_from (what the archive was built from: equal inputs give a
byte-identical archive), created_by, created.

A delta archive (`pack LAYER --over PARENT`) also has parent_layer, parent_lock_hash and
parent_sha256 (the parent's archive, which the delta goes on top of), parent_archive (its file
name, for messages) and removed (paths of the parent's env that the child's lacks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from condastack.core.errors import CondastackError
from condastack.core.names import is_digest
from condastack.core.pathsafe import UnsafePath, clean_relative

FORMAT_VERSION = 1
_PKG_KEYS = ("name", "version", "build", "channel", "subdir", "fn", "sha256", "md5")


class ManifestInvalid(CondastackError):
    """A manifest field with the wrong type or value (the message names the file and the field)."""

    def __init__(self, path: Path, field_name: str, want: str, got: object) -> None:
        self.path, self.field, self.want = path, field_name, want
        super().__init__(f"{path}: field '{field_name}' must be {want}, not {str(got)[:80]!r}. The manifest is "
                         "damaged or was tampered with; nothing was installed. Re-copy it from where the archive "
                         "was packed.")


@dataclass(frozen=True)
class PackageRef:
    """One conda package an archive holds, as the manifest lists it."""

    name: str | None = None
    version: str | None = None
    build: str | None = None
    channel: str | None = None
    subdir: str | None = None
    fn: str | None = None
    sha256: str | None = None
    md5: str | None = None

    @property
    def key(self) -> tuple[str | None, str | None, str | None]:
        return (self.name, self.version, self.build)


@dataclass(frozen=True)
class Placeholder:
    """One file that holds the build prefix, to be rewritten at unpack (an archive without dest_prefix)."""

    file: str
    placeholder: str
    mode: Literal["text", "binary"]


@dataclass(frozen=True)
class Manifest:
    format: str
    archive: str
    sha256: str
    size: int | None = None
    dest_prefix: str | None = None
    layer: str | None = None
    stack: str | None = None
    platform: str | None = None
    lock_hash: str | None = None
    lockfile: str | None = None
    source_prefix: str | None = None
    packages: tuple[PackageRef, ...] = ()
    file_count: int | None = None
    bytes_unpacked: int | None = None
    placeholders: tuple[Placeholder, ...] = ()
    level: int | None = None
    threads: int | None = None
    built_from: dict[str, Any] = field(default_factory=dict)
    created_by: str | None = None
    created: str | None = None
    parent_layer: str | None = None
    parent_lock_hash: str | None = None
    parent_sha256: str | None = None
    parent_archive: str | None = None
    removed: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_delta(self) -> bool:
        """Whether this archive holds only what its layer adds to a parent's archive."""
        return self.parent_sha256 is not None

    # ------------------------------------------------------------------ in
    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest file at `path`, checked; CondastackError naming the file otherwise."""
        try:
            data = json.loads(Path(path).read_bytes())
        except (OSError, ValueError) as e:
            raise CondastackError(f"{path}: unreadable manifest ({e}). Re-copy it from where the archive was "
                                  "packed.") from None
        return cls.from_json(data, Path(path))

    @classmethod
    def from_json(cls, data: object, path: Path) -> Manifest:
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise CondastackError(f"{path}: not a condastack manifest (format_version {FORMAT_VERSION}). Re-pack "
                                  "the env with this condastack version.")
        known = {f.name for f in fields(cls)} - {"extra", "packages", "placeholders", "built_from", "removed"}
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in known and f.name in data:
                kw[f.name] = _typed(path, f.name, data[f.name], f.type)
        for name in ("format", "archive", "sha256"):
            if not isinstance(kw.get(name), str):
                raise ManifestInvalid(path, name, "a string", data.get(name))
        for name in ("sha256", "parent_sha256"):
            if kw.get(name) is not None and not is_digest("sha256", kw[name]):
                raise ManifestInvalid(path, name, "64 hex digits", kw[name])
        if (kw.get("parent_sha256") is None) != (kw.get("parent_layer") is None):
            raise ManifestInvalid(path, "parent_layer", "given together with parent_sha256",
                                  kw.get("parent_layer"))
        built = data.get("built_from", {})
        if not isinstance(built, dict):
            raise ManifestInvalid(path, "built_from", "a mapping", built)
        return cls(**kw, packages=_packages(path, data.get("packages", [])),
                   placeholders=_placeholders(path, data.get("placeholders", [])), built_from=built,
                   removed=_removed(path, data.get("removed", [])),
                   extra={k: v for k, v in data.items() if k not in known | {"format_version", "packages",
                                                                             "placeholders", "built_from",
                                                                             "removed"}})

    # ------------------------------------------------------------------ out
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format_version": FORMAT_VERSION}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "extra":
                continue
            if f.name == "packages":
                v = [{k: getattr(p, k) for k in _PKG_KEYS} for p in v]
            elif f.name == "placeholders":
                v = [{"file": p.file, "placeholder": p.placeholder, "mode": p.mode} for p in v]
            elif f.name == "removed":
                v = list(v)
            out[f.name] = v
        return {**out, **self.extra}

    def text(self) -> str:
        return json.dumps(self.to_json(), indent=1) + "\n"


def _typed(path: Path, name: str, value: object, annotation: object) -> object:
    if value is None:
        return None
    if "int" in str(annotation):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ManifestInvalid(path, name, "a whole number (0 or more)", value)
        return value
    if not isinstance(value, str):
        raise ManifestInvalid(path, name, "a string", value)
    return value


def _packages(path: Path, items: object) -> tuple[PackageRef, ...]:
    want = "a list of {name, version, build, ...} strings"
    if not isinstance(items, list):
        raise ManifestInvalid(path, "packages", want, items)
    out = []
    for p in items:
        if not isinstance(p, dict) or not all(p.get(k) is None or isinstance(p[k], str) for k in _PKG_KEYS):
            raise ManifestInvalid(path, "packages", want, p)
        out.append(PackageRef(**{k: p.get(k) for k in _PKG_KEYS}))
    return tuple(out)


def _placeholders(path: Path, items: object) -> tuple[Placeholder, ...]:
    want = "a list of {file, placeholder, mode: text|binary}"
    if not isinstance(items, list):
        raise ManifestInvalid(path, "placeholders", want, items)
    out = []
    for r in items:
        if not (isinstance(r, dict) and isinstance(r.get("file"), str) and isinstance(r.get("placeholder"), str)
                and r.get("mode") in ("text", "binary")):
            raise ManifestInvalid(path, "placeholders", want, r)
        try:
            clean_relative(r["file"], f"{path}: placeholders")
        except UnsafePath as e:
            raise CondastackError(f"{e.message} Nothing was installed.") from None
        out.append(Placeholder(file=r["file"], placeholder=r["placeholder"], mode=r["mode"]))
    return tuple(out)


def _removed(path: Path, items: object) -> tuple[str, ...]:
    """The removed paths of a delta: each a clean relative path (they are deleted at install)."""
    if not isinstance(items, list):
        raise ManifestInvalid(path, "removed", "a list of relative paths", items)
    try:
        return tuple(clean_relative(r, f"{path}: removed") for r in items)
    except UnsafePath as e:
        raise CondastackError(f"{e.message} Nothing was installed.") from None


__all__ = ["FORMAT_VERSION", "Manifest", "ManifestInvalid", "PackageRef", "Placeholder"]
