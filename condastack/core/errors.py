"""User-facing errors.

Anything the user can fix (bad input, missing files, unsatisfiable specs)
raises `CondastackError`; the CLI prints its message as one paragraph and
exits 1. Anything else is a bug in condastack.

The subclasses carry the facts as fields and build their message from them,
so callers (and tests) can ask what went wrong without parsing text.
"""

from __future__ import annotations

import contextlib
import errno as _errno
from pathlib import Path


class CondastackError(Exception):
    """An error caused by the user's input or environment (exit code 1)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n{hint}")


# What to do about an OSError on a path the user gave (an output folder, DEST, --prefix, a stack file).
_OS_HINTS = {
    "EROFS": "the file system is read-only; choose an output on a writable file system",
    "ENOSPC": "no space left on the device; free some space or choose another output",
    "EDQUOT": "the disk quota is exceeded; free some space or choose another output",
    "ENOTDIR": "a part of this path is a regular file, not a folder; choose another path",
    "EEXIST": "something already exists there; remove it or choose another path",
    "EACCES": "permission denied; check the folder's permissions or choose another path",
    "EPERM": "operation not permitted; check the folder's permissions or choose another path",
    "EISDIR": "this is a folder where a file is expected; choose another path",
    "ENOENT": "a folder of this path does not exist; create it or choose another path",
    "ENAMETOOLONG": "the path is too long; choose a shorter one",
    "ELOOP": "too many levels of symbolic links; give the real path",
    "EMLINK": "too many links; choose another path",
    "ETXTBSY": "the file is in use by a running program; stop it or choose another path",
}


def from_os_error(e: OSError) -> CondastackError | None:
    """The user error an OSError on a user's path stands for, or None if it is not one (then it is a bug).

    One mapping for every command, so no stage needs its own try/except for these.
    """

    name = _errno.errorcode.get(e.errno or 0, "")
    hint = _OS_HINTS.get(name)
    if hint is None:
        return None
    paths = [p for p in (e.filename, getattr(e, "filename2", None)) if p is not None]
    where = " -> ".join(str(p) for p in paths) if paths else "an output file"
    return CondastackError(f"{where}: {e.strerror or name} ({name}): {hint}.")


def naming(path: object):  # noqa: ANN201 - a context manager
    """Within the block, an OSError that names no file (a write() hitting ENOSPC) is said to be about `path`."""

    @contextlib.contextmanager
    def _cm():  # noqa: ANN202
        try:
            yield
        except OSError as e:
            if e.filename is None and from_os_error(e) is not None:
                e.filename = str(path)
            raise

    return _cm()

class StackInvalid(CondastackError):
    """A stack or layer file that cannot be used: `file`, the `line` if known, and the `problem`."""

    def __init__(self, file: Path | str, problem: str, line: int | None = None) -> None:
        self.file, self.line, self.problem = Path(file), line, problem
        where = f"{file}, line {line}" if line else str(file)
        super().__init__(f"{where}: {problem}")


class LockConflict(CondastackError):
    """A child `layer` resolved `package` to `version`, but its `parent` pins `pinned`."""

    def __init__(self, layer: str, parent: str | None, package: str, version: str, pinned: str) -> None:
        self.layer, self.parent, self.package, self.version, self.pinned = layer, parent, package, version, pinned
        super().__init__(f"layer {layer}: pip package {package} resolved to {version}, but layer "
                         f"{parent} pins {package} {pinned}.")


class ArchiveRefused(CondastackError):
    """The unpack gate refused `archive`: `reason`, naming the `member` when one is at fault."""

    def __init__(self, archive: Path | str, reason: str, member: str | None = None) -> None:
        self.archive, self.reason, self.member = Path(archive), reason, member
        super().__init__(f"{archive}: refused: {reason}. Nothing was written to the destination.")


class PrefixTooLong(CondastackError):
    """`prefix` does not fit the binary placeholder (`room` bytes) of `file`."""

    def __init__(self, file: str, prefix: str, room: int) -> None:
        self.file, self.prefix, self.room = file, prefix, room
        super().__init__(
            f"{file}: the prefix {prefix} is {len(prefix.encode())} bytes long, but this binary file holds a "
            f"placeholder of {room} bytes, so the environment can only be relocated to a path of at most "
            f"{room} characters. Choose a shorter path."
        )


class EnvDamaged(CondastackError):
    """A package record (`file`) of an environment cannot be read: `reason`."""

    def __init__(self, file: Path | str, reason: str) -> None:
        self.file, self.reason = Path(file), reason
        super().__init__(f"{file}: unreadable package record ({reason}); the environment is damaged. Rebuild it "
                         "with `condastack build --force`, or reinstall it.")


class LockStale(CondastackError):
    """`layer`'s inputs (`why`) changed since its `lockfile` was written."""

    def __init__(self, layer: str, lockfile: Path | str, why: str) -> None:
        self.layer, self.lockfile, self.why = layer, Path(lockfile), why
        super().__init__(f"layer {layer}: {why}, so {self.lockfile.name} no longer matches the stack. Run "
                         f"`condastack lock {layer}` to refresh it, or build the lock as it is with --frozen.")


class DeltaRefused(CondastackError):
    """A delta of `layer` over `parent` cannot be packed or installed: `reason` (and what to do)."""

    def __init__(self, layer: str | None, parent: str | None, reason: str) -> None:
        self.layer, self.parent, self.reason = layer, parent, reason
        super().__init__(f"layer '{layer}' over '{parent}': {reason}")


class LockfileInvalid(CondastackError):
    """A malformed field of a lockfile or records file (`file`, a `kind` of file): `package`, `field`, `problem`."""

    def __init__(self, file: Path | str, problem: str, *, package: str | None = None,
                 field: str | None = None, kind: str = "not a readable conda-lock file") -> None:
        self.file, self.package, self.field, self.problem = Path(file), package, field, problem
        where = ", ".join(([f"package {package}"] if package else []) + ([f"field '{field}'"] if field else []))
        super().__init__(f"{file}: {kind} ({where + ': ' if where else ''}{problem}). The file is "
                         "not as condastack writes it; re-create it with `condastack lock`.")
