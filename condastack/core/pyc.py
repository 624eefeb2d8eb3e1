"""The one byte-compile step: `compileall` with checked-hash .pyc.

Checked-hash .pyc stay valid whatever the mtimes after a move, an unpack or a read-only mount
(timestamp .pyc go stale and every import then re-reads the source). `-B` keeps compileall's own
imports from leaving timestamp .pyc of the standard library behind; a fixed hash seed keeps set
constants in one order, so the bytes are reproducible.
"""

from __future__ import annotations

import os


def compileall_argv(python: str, *targets: str, strip: str | None = None, prepend: str | None = None,
                    from_stdin: bool = False, force: bool = False, jobs: int = 1, isolated: bool = False) -> list[str]:
    """The command line that compiles `targets` (or the file list on stdin) with `python`."""
    argv = [python, "-B", *(["-I"] if isolated else []), "-m", "compileall", "-q", "-j", str(jobs),
            "--invalidation-mode", "checked-hash"]
    if force:
        argv.append("-f")
    if strip is not None:
        argv += ["-s", strip]
    if prepend is not None:
        argv += ["-p", prepend]
    if from_stdin:
        argv += ["-i", "-"]
    return [*argv, *targets]


def compile_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a reproducible compile: no PYTHON* settings of the caller, a fixed hash seed."""
    env = {k: v for k, v in (base if base is not None else os.environ).items()
           if not k.startswith("PYTHON") and k != "SOURCE_DATE_EPOCH"}
    env["PYTHONHASHSEED"] = "0"
    return env
