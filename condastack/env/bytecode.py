"""Bytecode for `noarch: python` packages, as conda writes it at install time.

Such packages ship only sources (their python is chosen at install). conda
byte-compiles them when linking and lists the .pyc files in the package's
conda-meta record; py-rattler does not, so a read-only install (a SquashFS
image, a shared prefix) would compile them in memory on every import. The
.pyc files are checked-hash (valid whatever the mtimes after a move or an
unpack) and record the final path; listing them in the record makes them
managed files, which conda-pack packs (it drops unlisted .pyc files of
managed sources).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condastack.core.pyc import compile_environ, compileall_argv
from condastack.env.prefix import Env


def compile_noarch_python(tmp: Path, final: Path, linked: Sequence[Any] | None = None) -> int:
    """Byte-compile the `noarch: python` packages of the env at `tmp` (to live at `final`); returns .pyc count.
    `linked`: the RepoDataRecords just linked there, so that only the noarch ones' records are read."""
    python = tmp / "bin" / "python"
    if not python.exists():
        return 0
    env = Env(tmp)
    records = []
    for rec in _noarch_candidates(env, linked):
        if rec.get("noarch") == "python" and all(rec.get(k) for k in ("name", "version", "build")):
            sources = [f for f in rec.get("files") or [] if f.endswith(".py") and "/site-packages/" in f]
            if sources:
                records.append((rec, sources))
    if not records:
        return 0
    tag = _cache_tag(python)
    if tag is None:
        return 0
    todo = [str(tmp / f) for _, srcs in records for f in srcs]
    subprocess.run(compileall_argv(str(python), strip=str(tmp), prepend=str(final), from_stdin=True),
                   input="\n".join(todo) + "\n", capture_output=True, text=True, env=compile_environ())
    count = 0
    for rec, sources in records:
        pycs = [p for p in (_pyc_of(f, tag) for f in sources) if (tmp / p).is_file()]
        known = set(rec.get("files") or [])
        new = [p for p in pycs if p not in known]
        if not new:
            continue
        rec["files"] = [*rec.get("files", []), *new]
        paths = rec.setdefault("paths_data", {"paths": [], "paths_version": 1}).setdefault("paths", [])
        paths += [{"_path": p, "path_type": "pyc_file", "size_in_bytes": (tmp / p).stat().st_size} for p in new]
        env.write_record(rec)
        count += len(new)
    return count


def _noarch_candidates(env: Env, linked: Sequence[Any] | None) -> list[dict[str, Any]]:
    """The records that may be `noarch: python`: all of them, or only those `linked` says are (a large env's
    records are 10+ MB of JSON, nearly all of packages with no python sources)."""
    if linked is None:
        return env.readable_records()
    found = (env.readable_record(env.record_path(r.name.normalized, str(r.version), r.build))
             for r in linked if r.noarch.python)
    return [rec for rec in found if rec is not None]


def _pyc_of(source: str, tag: str) -> str:
    d, _, name = source.rpartition("/")
    return f"{d}/__pycache__/{name[:-3]}.{tag}.pyc"


def _cache_tag(python: Path) -> str | None:
    p = subprocess.run([str(python), "-I", "-B", "-c", "import sys; print(sys.implementation.cache_tag)"],
                       capture_output=True, text=True)
    tag = p.stdout.strip()
    return tag if p.returncode == 0 and tag and tag != "None" else None
