"""The order in which an env's python first reads its files, for a SquashFS image laid out in that order.

A cold start from an image reads the blocks that hold the files python opens; when those files sit
together at the start of the image, in the order they are read, the reads are few and sequential
(`bench/squashfs_levers.py`: after a cache drop, 0.65x the unpacked tree's time with the kernel's
squashfs, against 1.17x unsorted). The warm-up runs once under an audit hook that lists the files
python opens, in order; what it reads before the hook (the interpreter, its libraries, `site`) or
outside python's `open` (shared libraries) is found from atimes: every file's atime is set to 0
first (its mtime is kept: timestamp .pyc files depend on it), and relatime gives each file read an
atime again. Those come first, by name, then the hook's order: the same env and warm-up give the
same image (no clock in the order). Where atimes are not kept (noatime), only the hook's files are
ordered; the rest keep mksquashfs's own order.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

WARMUP_DEFAULT = "pass"  # the interpreter's own start-up (site, encodings, ...)
_TIMEOUT = 600


def _regular_files(prefix: Path) -> list[str]:
    out = []
    for root, _dirs, files in os.walk(prefix):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                out.append(path)
    return out


# Runs the warm-up (argv[1]) with an audit hook that writes each path python opens to argv[2], one a line.
_HOOKED = """\
import os, sys
_out = open(sys.argv[2], "w")
def _hook(event, args):
    if event == "open" and isinstance(args[0], str):
        _out.write(os.path.abspath(args[0]) + "\\n")
sys.addaudithook(_hook)
code, sys.argv = sys.argv[1], ["-c"]
exec(compile(code, "<warmup>", "exec"), {"__name__": "__main__"})
_out.flush()
"""


def first_access(prefix: Path, code: str) -> list[str]:
    """Prefix-relative paths of the files `prefix/bin/python -c code` reads, first read first ([] if
    the env has no python or the warm-up fails)."""
    python = prefix / "bin" / "python"
    if not python.is_file():
        return []
    files = _regular_files(prefix)
    for path in files:
        try:
            os.utime(path, ns=(0, os.lstat(path).st_mtime_ns))
        except OSError:
            continue
    env = {"PATH": f"{prefix / 'bin'}:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "HOME": "/nonexistent"}
    with tempfile.TemporaryDirectory(prefix="condastack-warmup-") as tmp:
        listing = Path(tmp) / "opened"
        try:
            done = subprocess.run([str(python), "-c", _HOOKED, code, str(listing)], env=env, cwd="/",
                                  capture_output=True, timeout=_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return []
        if done.returncode != 0:
            return []
        hooked = listing.read_text(errors="surrogateescape").splitlines() if listing.is_file() else []
    known = set(files)
    ordered = list(dict.fromkeys(p for p in hooked if p in known))
    seen = set(ordered)
    early = sorted(p for p in files if p not in seen and _was_read(p))
    cut = len(str(prefix)) + 1
    return [p[cut:] for p in early + ordered]


def _was_read(path: str) -> bool:
    try:
        return os.lstat(path).st_atime_ns > 0
    except OSError:
        return False


def sort_file_text(first: list[str]) -> str:
    """A `mksquashfs -sort` file: the highest priority first; names it cannot spell are left out
    (they keep the default priority 0, after these)."""
    names = [n for n in first if not any(c.isspace() or c == "\\" for c in n)][:32767]
    return "".join(f"{name} {32767 - i}\n" for i, name in enumerate(names))


__all__ = ["WARMUP_DEFAULT", "first_access", "sort_file_text"]
