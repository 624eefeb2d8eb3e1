"""User-facing errors.

Anything the user can fix (bad input, missing files, unsatisfiable specs)
raises `CondastackError`; the CLI prints its message as one paragraph and
exits 1. Anything else is a bug in condastack.

The subclasses carry the facts as fields and build their message from them,
so callers (and tests) can ask what went wrong without parsing text.
"""

from __future__ import annotations

from pathlib import Path


class CondastackError(Exception):
    """An error caused by the user's input or environment (exit code 1)."""


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
