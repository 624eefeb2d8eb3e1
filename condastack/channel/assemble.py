"""Assembling one conda package from a folder of files: names, versions and depends checked, the glibc floor added,
the build id from the content.
"""


from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from condastack.core.errors import CondastackError
from condastack.core.fs import sha256_file

# A fixed timestamp makes the package bytes depend only on the inputs.
_EPOCH = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)


_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]*\Z")


_VERSION = re.compile(r"^[A-Za-z0-9_.+!]+\Z")


_BUILD = re.compile(r"^[A-Za-z0-9_.+]+\Z")


_PY = re.compile(r"^3\.\d+\Z")


@dataclass(frozen=True)
class WrappedPackage:
    """One package placed in the site channel."""

    path: Path  # channel/<subdir>/<name>-<version>-<build>.conda
    name: str
    version: str
    build: str
    subdir: str
    status: str  # "added", "unchanged" or "replaced"
    entry_points: tuple[str, ...] = field(default=())
    depends: tuple[str, ...] = field(default=())
    unsatisfied: tuple[str, ...] = field(default=())  # wheel requirements no channel satisfies
    notes: tuple[str, ...] = field(default=())

    @property
    def dist(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"


def _check_name(name: str | None, what: str) -> str:
    if name is None:
        raise CondastackError(f"wrap: {what} is required when wrapping a folder (e.g. --name apex --version 0.1).")
    if not name or not _NAME.match(name):
        raise CondastackError(
            f"wrap: {what} '{name}' is not a valid conda package name (lower-case letters, digits, '-', '_', '.'; "
            "e.g. transformer-engine)."
        )
    return name


def _check_version(version: str | None) -> str:
    if version is None:
        raise CondastackError("wrap: --version is required when wrapping a folder (e.g. --version 0.12.2).")
    if not version or not _VERSION.match(version):
        raise CondastackError(
            f"wrap: version '{version}' is not a valid conda version (letters, digits, '.', '_', '+', '!'; no '-' "
            "or spaces, e.g. 2.3.0 or 0.12.2)."
        )
    return version


def _check_depends(depends: Sequence[str]) -> None:
    import rattler  # lazy: native, ~0.2 s

    for d in depends:
        try:
            rattler.MatchSpec(d)
        except Exception as e:  # rattler raises its own parse errors
            raise CondastackError(f"wrap: --depends '{d}' is not a conda match spec: {e}") from None


def _build_id(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _content_hash(folder: Path) -> str:
    """Names, modes, bytes and link targets of every entry under folder."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            h.update(f"L {rel} -> {os.readlink(p)}\n".encode())
        elif p.is_file():
            h.update(f"F {rel} {p.stat().st_mode & 0o111:o} {sha256_file(p)}\n".encode())
        elif p.is_dir():
            h.update(f"D {rel}\n".encode())
    return h.hexdigest()


def _with_glibc_floor(depends: list[str], floor: str | None) -> list[str]:
    """Add `__glibc >=floor` unless the caller already said which glibc the package needs."""
    if floor is None or any(_dep_name(d) == "__glibc" for d in depends):
        return depends
    return [*depends, f"__glibc >={floor}"]


def _dep_name(spec: str) -> str:
    return re.split(r"[\s<>=!~*\[]", spec.strip(), maxsplit=1)[0]


def _refuse_absolute_paths(folder: Path) -> None:
    """A folder payload is not rewritten at install time, so it must not name where it was built."""
    needle = str(folder).encode()
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                if needle in f.read():
                    raise CondastackError(
                        f"wrap: {p} contains the absolute path {folder}; a wrapped folder is installed unchanged, "
                        "so it would point at the build folder. Make it relocatable ($ORIGIN RPATHs, paths relative "
                        "to the file) or build it from a recipe with --recipe."
                    )


def _assemble(name: str, version: str, platform: str, build: str, work: Path, files: Path,
              depends: Sequence[str], build_number: int, *, extra: Sequence[tuple[Path, str]] = (),
              license: str | None = None) -> Path:  # noqa: A002 - rattler-build's keyword
    """`extra`: (file, path in the package) added beside the folder's files (the folder is the user's: left as is)."""
    from rattler_build import FileEntry, assemble_package  # lazy: only to build

    out = work / "out" / platform  # the channel subdir, as rattler-build lays out its outputs
    out.mkdir(parents=True, exist_ok=True)
    try:
        res = assemble_package(
            name, version, platform, build, out,
            files_dir=files,
            files=[FileEntry.from_paths(str(src), dest) for src, dest in extra] or None,
            license=license,
            depends=list(depends),
            build_number=build_number,
            noarch="generic" if platform == "noarch" else None,
            summary=f"{name} {version}, wrapped by condastack",
            timestamp=_EPOCH,
            compression_level=3,
            detect_prefix=False,
        )
    except Exception as e:  # RattlerBuildError and friends
        raise CondastackError(f"wrap: packaging {name} {version} failed: {e}") from None
    return Path(res.path)


_ENTRY_GROUPS = ("console_scripts", "gui_scripts")


@dataclass(frozen=True)
class Provenance:
    """Where a wrapped component came from, as the user states it (recorded in the package, read by the SBOM)."""

    source_commit: str | None = None  # the git commit it was built from
    source_url: str | None = None  # the repository (or source archive) URL
    license: str | None = None  # an SPDX expression, e.g. BSD-3-Clause

    def meta(self) -> dict[str, str]:
        return {k: v for k, v in (("source_commit", self.source_commit), ("source_url", self.source_url)) if v}


@dataclass(frozen=True)
class WheelOptions:
    """How a wheel becomes a package: extras, local versions, the channels its dependencies come from."""

    extras: tuple[str, ...] = ()
    keep_local_version: bool = False  # keep "2.13.0+cpu" as the version instead of moving "cpu" to the build
    check_channels: tuple[str, ...] | None = None  # None: do not check; the site channel is always added
    wheel_dir: Path | None = None  # wrap unsatisfied requirements from the wheels found here


@dataclass
class _Built:
    pkgs: list[Path]
    entry_points: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()
    unsatisfied: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
