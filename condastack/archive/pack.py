"""Export a built environment as a relocatable archive: tar.zst, tar.gz or SquashFS.

The file list and placeholder records come from conda-pack's environment model
(`conda_pack.core.CondaEnv`): conda-managed files are taken from the package
cache, so they still carry their original placeholders, and the archive holds
conda-pack's activate scripts and `bin/conda-unpack`. A user with only `tar`
can therefore extract it and run `./bin/conda-unpack` with the env's python.

This module is the planner; the writers are in `pack_writers.py`.
What differs from conda-pack is the writer. conda-pack streams every byte
through Python's tarfile; we hand GNU tar lists of paths (files unchanged
since the build come straight from the prefix, placeholder files from the
cache, the few rewritten files from a small staging folder) and pipe it into
multithreaded `zstd -T<threads>` (or `pigz`). Nothing is buffered, so memory
stays flat whatever the size of the environment. SquashFS images are made
with `mksquashfs -processors N -comp zstd` from a tree of hard links.

Beside ARCHIVE go `ARCHIVE.sha256` (sha256sum format) and
`ARCHIVE.manifest.json`. Manifest fields (format_version 1):

    format_version  1
    format          "tar.zst" | "tar.gz" | "squashfs"
    archive         file name of the archive
    sha256, size    of the archive file
    dest_prefix     the path the archive is relocated for (--dest-prefix), or null
                    when the files carry placeholders and need `unpack`/`conda-unpack`
    layer, stack, platform, lock_hash, lockfile
                    copied from the env's conda-meta/condastack.info (lock_hash is
                    the lock's content hash)
    source_prefix   where the env was built
    packages        [{name, version, build, channel, subdir, fn, sha256, md5}]
    file_count      number of archive members that are files or links
    bytes_unpacked  total size of those files once extracted
    placeholders    [{file, placeholder, mode}] files that still hold a placeholder
                    (mode "text" or "binary"); empty when dest_prefix is set
    level, threads  compression settings used
    built_from      what the archive was made from: {lock_hash, lockfile, mtime (the newest
                    member mtime: later ones are clamped to it), mtime_from ("SOURCE_DATE_EPOCH" or "packages": the newest build
                    time of the locked packages), dest_prefix, format, level, tools (versions)}
    created_by, created

Archives are reproducible: the same env (or two envs of one lock packed for the same
--dest-prefix) gives byte-identical archives. Members come in an order fixed by the env's
content, all owned by 0:0, and the compressors' output does not depend on the thread count.
Mtimes are clamped, not forced: what the build or the pack wrote (records, links, staged
files) gets `built_from.mtime`; files from packages keep the mtimes their package archives
gave them, the same for every env of one lock, so the timestamp .pyc files they come with
stay valid after an unpack (one mtime for all would make python recompile at every start).
Package records name the content the archive holds for each placeholder file
(`sha256_in_prefix`), not the build prefix's.

The env inside also carries `conda-meta/condastack.prefixes` (JSON: "current",
the prefix now baked into the files, or null for placeholders, and "records",
[file, placeholder, mode] lists), which makes relocation repeatable
(see `condastack.unpack.relocate`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condastack.archive.writers import Plan, SquashfsWriter, TarWriter, compressor
from condastack.core.errors import CondastackError, naming
from condastack.core.fs import (
    clean_stale_temporaries,
    dir_lock,
    make_tempdir,
    remove_path,
    replace_together,
    sha256_file,
    temp_siblings,
)
from condastack.core.layout import env_prefix, pack_output
from condastack.core.progress import Meter
from condastack.env.prefix import (
    CREATED_BY,
    MARKER,
    PREFIXES_FILE,
    Env,
    RawRecords,
    check_dest_fits,
    is_record_member,
    with_file_hashes,
)

FORMATS = ("tar.zst", "tar.gz", "squashfs")
SUFFIX = {"tar.zst": ".tar.zst", "tar.gz": ".tar.gz", "squashfs": ".squashfs"}
DEFAULT_LEVEL = {"tar.zst": 3, "tar.gz": 4, "squashfs": 3}
_SCAN_CHUNK = 1 << 20


@dataclass
class PackResult:
    output: Path
    sha256: str
    manifest: Path
    file_count: int
    bytes_unpacked: int
    bytes_archive: int
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # shown by the CLI; the pack went ahead


# --------------------------------------------------------------------------- the environment


def read_env_meta(prefix: Path, *, allow_foreign: bool = False) -> dict:
    """Check `prefix` is a conda env built by condastack; return its condastack.info."""
    prefix = Path(prefix)
    if not prefix.is_dir():
        raise CondastackError(f"{prefix}: no such environment. Build it with `condastack build LAYER` first.")
    env = Env(prefix)
    env.require_conda_env(" Nothing to pack.")
    meta_path = env.path(MARKER)
    if not meta_path.is_file():
        if allow_foreign:
            return {}
        raise CondastackError(
            f"{prefix}: this environment was not built by condastack (no {MARKER}), so its lock "
            "is unknown. Build it with `condastack build LAYER`, or pass --allow-foreign to pack it anyway."
        )
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise CondastackError(f"{meta_path}: unreadable ({e}). Rebuild the layer with `condastack build`.") from None


class _ParsedJson:
    """Stands in for the `json` module inside `conda_pack.core` while it loads an env, so that
    the conda-meta records we already parsed are not parsed again (the biggest is ~14 MB).

    conda-pack only reads these records; every other file goes to the real `json`.
    """

    def __init__(self, parsed: RawRecords) -> None:
        self.parsed = parsed

    def load(self, fil, **kw):  # noqa: ANN001, ANN003, ANN201
        got = self.parsed.get(getattr(fil, "name", None))
        return got[1] if got is not None and not kw else json.load(fil, **kw)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(json, name)


_CONDA_PACK_JSON = threading.Lock()


def load_env(prefix: Path, records: RawRecords | None = None):  # noqa: ANN201 - CondaEnv
    """conda-pack's view of the env: its file list with sources and placeholders.

    `records` ({path: (bytes, parsed)} from `Env.raw_records`) are handed to conda-pack
    instead of being parsed again; its model is otherwise unchanged.
    """
    import conda_pack.core as cpc
    from conda_pack.core import CondaEnv, CondaPackException

    try:
        if not records:
            return CondaEnv.from_prefix(str(prefix), on_missing_cache="raise")
        with _CONDA_PACK_JSON:
            cpc.json = _ParsedJson(records)
            try:
                return CondaEnv.from_prefix(str(prefix), on_missing_cache="raise")
            finally:
                cpc.json = json
    except CondaPackException as e:
        text = " ".join(str(e).split())
        if "editable" in text:
            raise CondastackError(
                f"{prefix}: {text}. Editable installs point outside the environment and cannot be packed; "
                "install the package as a wheel (or `condastack wrap` it) and rebuild."
            ) from None
        if "without entries in the package cache" in text:
            raise CondastackError(
                f"{prefix}: {text}. The package cache ($CONDASTACK_PKGS) no longer holds these packages; "
                "rebuild the layer with `condastack build` to refill it."
            ) from None
        raise CondastackError(f"{prefix}: conda-pack cannot read this environment: {text}") from None


def _record_unchanged(path: str, rec: dict, st: os.stat_result) -> bool:
    """Whether a conda-managed regular file still matches its conda-meta record.

    Cheap first: a file that still shares its inode with the package cache
    (st_nlink > 1) and has the recorded size is unchanged; pip and editors
    replace files (new inode, one link). Only otherwise is it hashed.
    Placeholder files are copies, so they are always hashed (they are few and small).
    """
    if stat.S_ISLNK(st.st_mode):
        return False
    if rec.get("prefix_placeholder"):
        want = rec.get("sha256_in_prefix")
        return not want or sha256_file(path) == want
    size = rec.get("size_in_bytes")
    if size is not None and st.st_size != size:
        return False
    if st.st_nlink > 1:
        return True
    return not rec.get("sha256") or sha256_file(path) == rec["sha256"]


def _managed_records(prefix: Path, out: RawRecords) -> Iterator[tuple[str, dict]]:
    """(path in prefix, paths_data record) of every conda-managed file, package by package; the
    records are read lazily (the scan streams the first package's files before the others are
    parsed) and collected in `out` for conda-pack's model and the archive's rewritten copies."""
    for info in Env(prefix).raw_records(out, strict=True):
        for rec in (info.get("paths_data") or {}).get("paths", []):
            yield rec["_path"], rec


def _scan_managed(prefix: Path, emit,  # noqa: ANN001
                  records: RawRecords | None = None) -> tuple[list[str], dict[str, bool], int]:
    """Check every conda-managed file; hand the unchanged plain ones (and symlinks) to `emit` at once.

    Returns (modified, emitted {target: is_symlink}, bytes emitted). `emit(target)` lets the
    archive stream start before conda-pack's model of the env is ready; that model later
    confirms each early choice (see `_confirm_early`). `records` collects the conda-meta
    records read on the way (see `Env.raw_records`).
    """
    modified: list[str] = []
    emitted: dict[str, bool] = {}
    nbytes = 0
    base = str(prefix) + "/"
    for rel, rec in _managed_records(prefix, {} if records is None else records):
        path = base + rel
        try:
            st = os.lstat(path)
        except OSError:
            continue  # missing files are reported by conda-pack
        if rec.get("path_type") not in (None, "hardlink"):
            if stat.S_ISLNK(st.st_mode) and emit is not None and rel not in emitted:
                emitted[rel] = True
                emit(rel)
            continue
        if not _record_unchanged(path, rec, st):
            modified.append(rel)
        elif emit is not None and stat.S_ISREG(st.st_mode) and not rec.get("prefix_placeholder") \
                and rel not in emitted and not modified:
            emitted[rel] = False
            nbytes += st.st_size
            emit(rel)
    return modified, emitted, nbytes


def _contains(path: str, needle: bytes) -> bool:
    """Whether a file contains `needle`, read in chunks (files may be huge)."""
    keep = len(needle) - 1
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(_SCAN_CHUNK):
            if needle in tail + chunk:
                return True
            tail = chunk[-keep:] if keep else b""
    return False


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------- planning


_MACHINE_PATHS = (("", "extracted_package_dir"), ("", "package_tarball_full_path"), ("link", "source"))
_KEY_COLON = re.compile(rb'[ \t\r\n]*:[ \t\r\n]*')


def _blank_bytes(raw: bytes, info: dict) -> bytes | None:
    """`raw` with the machine-path fields set to "", edited as bytes (no parse, no dump: ~0.1 s
    on a 14 MB record), or None when the record is not plain enough to be sure of the edit.

    Sure because a token `"key"` followed by `:` can only be an object key (quotes inside JSON
    strings are escaped); each key must occur once in the whole text, and the string after it
    must be the very value the parsed record holds there.
    """
    if b"\\u" in raw:  # escaped keys could hide a second occurrence
        return None
    spans: list[tuple[int, int]] = []
    for parent, key in _MACHINE_PATHS:
        holder = info.get(parent) if parent else info
        if not isinstance(holder, dict) or key not in holder:
            continue
        if not isinstance(holder[key], str):
            return None
        token = b'"' + key.encode() + b'"'
        at = raw.find(token)
        if at < 0 or raw.find(token, at + 1) >= 0:
            return None
        colon = _KEY_COLON.match(raw, at + len(token))
        if colon is None:  # the token is a value, not a key
            return None
        start = colon.end()
        value = json.dumps(holder[key], ensure_ascii=False).encode()
        if raw[start:start + len(value)] != value:
            return None
        spans.append((start, start + len(value)))
    out, pos = [], 0
    for start, end in sorted(spans):
        out += [raw[pos:start], b'""']
        pos = end
    out.append(raw[pos:])
    return b"".join(out)


def _rewrite_conda_meta(source: str, parsed: tuple[bytes, dict] | None = None) -> tuple[bytes, dict]:
    """A package record without the build machine's paths, as conda-pack's `rewrite_conda_meta`;
    returns (its bytes, the record as parsed before the edit).

    `parsed` is (bytes, record) as read by `Env.raw_records`; it is not modified. Its bytes are
    edited in place (the record keeps its own layout). Otherwise it is written compact: json's
    C encoder does not indent, and its pure-Python indenting one spends ~0.5 s on a 14 MB record.
    """
    if parsed is not None and (edited := _blank_bytes(*parsed)) is not None:
        return edited, parsed[1]
    if parsed is None:
        with open(source, "rb") as f:
            data = json.loads(f.read())
    else:  # a shallow copy is enough: only top-level keys and `link` change
        data = dict(parsed[1])
        if isinstance(data.get("link"), dict):
            data["link"] = dict(data["link"])
    for key in ("extracted_package_dir", "package_tarball_full_path"):
        if key in data:
            data[key] = ""
    if isinstance(data.get("link"), dict) and "source" in data["link"]:
        data["link"]["source"] = ""
    return json.dumps(data, sort_keys=True).encode(), data


def _plan(prefix: Path, env, staging: Path, dest: str | None, modified: set[str],  # noqa: ANN001, C901
          skip: dict[str, bool] | None = None, records: RawRecords | None = None) -> Plan:
    from conda_pack.core import BIN_DIR

    plan = Plan()
    prefix_s = str(prefix)
    prefix_b = prefix_s.encode()

    held: dict[str, tuple[str | None, int]] = {}  # see _restage_records
    staged_records: dict[str, dict] = {}

    def stage(target: str, data: bytes, like: str) -> None:
        out = staging / target
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        shutil.copymode(like, out)
        plan.staged.append(target)
        plan.bytes_unpacked += len(data)

    def from_cache(source: str, target: str) -> None:
        src = Path(source)
        base = str(src)[: -len(target)].rstrip("/") if str(src).endswith("/" + target) else ""
        if base:
            plan.from_cache.setdefault(base, []).append(target)
        else:  # e.g. noarch python: the cache path differs from the target path
            out = staging / target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out)
            plan.staged.append(target)
        size = src.stat().st_size
        plan.bytes_unpacked += size
        held[target] = (None, size)

    skip = skip or {}
    for f in env.files:
        target = f.target
        if target in skip:  # already streamed from the prefix
            continue
        in_prefix = os.path.join(prefix_s, target)
        if target in modified:  # --allow-modified: keep the prefix's version, as an unmanaged file
            f.source, f.is_conda, f.file_mode, f.prefix_placeholder = in_prefix, False, "unknown", None
        if os.path.islink(in_prefix) or os.path.isdir(in_prefix):
            plan.from_prefix.append(target)
            continue
        if f.file_mode is None:
            if is_record_member(target):
                data, info = _rewrite_conda_meta(f.source, (records or {}).get(f.source))
                plan.packages.append(info)
                staged_records[target] = info
                stage(target, data, f.source)
            else:
                plan.from_prefix.append(target)
                plan.bytes_unpacked += os.lstat(in_prefix).st_size
            continue
        mode, placeholder = f.file_mode, f.prefix_placeholder
        if mode == "unknown":
            data = _unmanaged_text(f.source, prefix_b)
            if data is None:
                plan.from_prefix.append(target)
                plan.bytes_unpacked += os.lstat(in_prefix).st_size
                continue
            mode, placeholder = "text", prefix_s
        elif dest is None and not (mode == "text" and target.startswith(BIN_DIR + "/")):
            from_cache(f.source, target)
            plan.records.append((target, placeholder, mode))
            continue
        else:
            data = Path(f.source).read_bytes()
        data, keeps_placeholder = _rewritten(data, target, mode, placeholder, dest)
        if keeps_placeholder:
            plan.records.append((target, placeholder, mode))
        held[target] = (hashlib.sha256(data).hexdigest(), len(data))
        stage(target, data, f.source)
    _restage_records(staging, staged_records, held)
    return plan


def _unmanaged_text(source: str, prefix_b: bytes) -> bytes | None:
    """An unmanaged file's bytes if it is text holding the prefix; like conda-pack, unmanaged
    binaries are left alone on Unix."""
    if not _contains(source, prefix_b):
        return None
    data = Path(source).read_bytes()
    return data if _is_text(data) else None


def _rewritten(data: bytes, target: str, mode: str, placeholder: str, dest: str | None) -> tuple[bytes, bool]:
    """What a placeholder file holds in the archive, and whether that still has the placeholder."""
    from conda_pack.core import BIN_DIR, rewrite_shebang
    from conda_pack.prefixes import replace_prefix

    if dest is not None:
        check_dest_fits([(target, placeholder, mode)], dest)
        return replace_prefix(data, mode, placeholder, dest), False
    if mode == "text" and target.startswith(BIN_DIR + "/"):
        data, fixed = rewrite_shebang(data, target, placeholder)
        return data, not fixed
    return data, True


def _restage_records(staging: Path, staged: dict[str, dict], held: dict[str, tuple[str | None, int]]) -> None:
    """Rewrite the staged records of packages with placeholder files to name what the archive holds
    (`held`: {target: (sha256, or None for the package's own, size)}). The records then describe
    the archive whatever the build prefix was, and `verify` after unpack compares against them."""
    for target, info in staged.items():
        new = with_file_hashes(info, held)
        if new is None:
            continue
        for key in ("extracted_package_dir", "package_tarball_full_path"):
            if key in new:
                new[key] = ""
        if isinstance(new.get("link"), dict) and "source" in new["link"]:
            new["link"] = dict(new["link"], source="")
        (staging / target).write_bytes(json.dumps(new, sort_keys=True).encode())


def _confirm_early(env, early: dict[str, bool]) -> bool:  # noqa: ANN001
    """conda-pack's model agrees with every early choice: each streamed file is one it would
    also take unchanged from the prefix (a plain conda file or a symlink), and none is missing."""
    seen: set[str] = set()
    for f in env.files:
        link = early.get(f.target)
        if link is None:
            continue
        if not link and (f.file_mode is not None or is_record_member(f.target)):
            return False
        seen.add(f.target)
    return len(seen) == len(early)


def _add_scripts(plan: Plan, staging: Path, dest: str | None) -> None:
    """conda-pack's activate scripts and, without a dest prefix, its bin/conda-unpack."""
    import conda_pack
    import conda_pack.core as cpc

    here = Path(cpc.__file__).parent
    has_conda = any(p.get("name") == "conda" for p in plan.packages)

    def write(target: str, text: str, executable: bool) -> None:
        out = staging / target
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.chmod(0o755 if executable else 0o644)
        if target not in plan.staged:
            plan.staged.append(target)
        plan.bytes_unpacked += out.stat().st_size

    if not (dest is not None and has_conda):
        for source, target in cpc._scripts:
            write(target, Path(source).read_text(), True)
    if dest is None:
        write("bin/conda_unpack_progress.py", (here / "_progress.py").read_text(), False)
        python = re.compile("bin/python")
        records = ",\n".join(repr(r) for r in plan.records if not python.match(r[0]))
        script = cpc._conda_unpack_template.format(
            shebang="#!/usr/bin/env python", prefix_records=records,
            prefixes_py=(here / "prefixes.py").read_text(), version=conda_pack.__version__)
        write("bin/conda-unpack", script + _UNPACK_NOTE, True)
    state = {"current": dest, "records": [list(r) for r in plan.records]}
    write(PREFIXES_FILE, json.dumps(state, indent=1) + "\n", False)


# Appended to conda-pack's conda-unpack: record where the files now point, so
# that `condastack relocate` can move the env again later.
_UNPACK_NOTE = """
    if not args.version:
        import json as _json
        _state_path = os.path.join(new_prefix, %r)
        if os.path.exists(_state_path):
            with open(_state_path) as _f:
                _state = _json.load(_f)
            _state['current'] = new_prefix
            with open(_state_path + '.tmp', 'w') as _f:
                _json.dump(_state, _f, indent=1)
            os.replace(_state_path + '.tmp', _state_path)
""" % PREFIXES_FILE


# --------------------------------------------------------------------------- public API


@dataclass
class _Job:
    """One pack run: its inputs, and what it has read of the env so far (each part read once)."""

    prefix: Path
    output: Path
    fmt: str
    dest: str | None
    level: int
    threads: int
    allow_modified: bool
    staging: Path
    t0: float
    mtime: int = 0  # the newest member mtime: later ones are clamped to it (see archive_mtime)
    meter: Meter | None = None
    mtime_from: str = ""
    records: RawRecords = field(default_factory=dict)  # conda-meta records, read by the scan
    timings: dict[str, float] = field(default_factory=dict)
    _env: Any = None

    def conda_pack_env(self) -> Any:
        """conda-pack's model of the env, built on first use from the records already read."""
        if self._env is None:
            self._env = load_env(self.prefix, self.records)
        return self._env

    def mark(self, step: str) -> None:
        self.timings[step] = time.perf_counter() - self.t0

    def refuse_modified(self, modified: list[str]) -> None:
        if modified and not self.allow_modified:
            shown = "\n".join(f"  - {m}" for m in modified[:20]) + (
                f"\n  + {len(modified) - 20} more" if len(modified) > 20 else "")
            raise CondastackError(
                f"{self.prefix}: {len(modified)} conda-managed file(s) changed since the build (pip may have "
                f"clobbered them):\n{shown}\nRebuild the layer, or pass --allow-modified to pack the changed "
                "files as they are.")

    def plan(self, modified: list[str], skip: dict[str, bool] | None = None) -> Plan:
        """The members not streamed yet, with conda-pack's scripts and our relocation state."""
        plan = _plan(self.prefix, self.conda_pack_env(), self.staging, self.dest, set(modified), skip=skip,
                     records=self.records)
        _add_scripts(plan, self.staging, self.dest)
        plan.from_prefix.sort()  # a member order that depends only on the env's content
        plan.staged.sort()
        self.mark("plan")
        return plan


@dataclass
class _Written:
    plan: Plan
    digest: str
    early: dict[str, bool] = field(default_factory=dict)  # members streamed before the plan
    early_bytes: int = 0


class _Restart(Exception):
    """The early stream disagreed with conda-pack's model: write the archive again, planned first."""

    def __init__(self, modified: list[str]) -> None:
        super().__init__()
        self.modified = modified


def _write_squashfs(job: _Job, tmp: Path) -> _Written:
    modified = _scan_managed(job.prefix, None, job.records)[0]
    job.refuse_modified(modified)
    plan = job.plan(modified)
    writer = SquashfsWriter(tmp, job.staging, job.level, job.threads, job.mtime)
    writer.add_plan(job.prefix, plan, job.staging)
    return _Written(plan, writer.finish())


def _stream_early(job: _Job, writer: TarWriter) -> _Written:
    """Stream the unchanged conda-managed files straight from the prefix while they are checked,
    then the rest once conda-pack's model (file list, package cache, placeholders) is read: GNU
    tar reads its name list well ahead, so that work overlaps the compression. (One thread: a
    second Python thread would fight this one for the GIL on every system call.)"""
    prefix = job.prefix
    modified, early, early_bytes = _scan_managed(prefix, lambda rel: writer.add(prefix, rel), job.records)
    job.refuse_modified(modified)
    job.mark("scan")
    if not _confirm_early(job.conda_pack_env(), early):
        raise _Restart(modified)
    plan = job.plan(modified, skip=early)
    writer.total = _tar_bytes(plan.bytes_unpacked + early_bytes, plan.count + len(early))
    writer.add_plan(prefix, plan, job.staging)
    return _Written(plan, "", early, early_bytes)


def _tar_bytes(content: int, members: int) -> int:
    """About how long the tar stream of `members` files holding `content` bytes is (for progress):
    a 512-byte header and on average 256 bytes of padding per member."""
    return content + 768 * members


def _write_tar(job: _Job, tmp: Path) -> _Written:
    comp = compressor(job.fmt, job.level, job.threads)
    writer = TarWriter(tmp, comp, job.mtime, job.meter)
    try:
        written = _stream_early(job, writer)
    except _Restart as e:  # never seen with rattler-installed envs; kept correct, not fast
        writer.abort()
        job.timings["restarted"] = 1.0
        remove_path(job.staging)
        job.staging.mkdir()
        plan = job.plan(e.modified)
        writer = TarWriter(tmp, comp, job.mtime, job.meter)
        writer.total = _tar_bytes(plan.bytes_unpacked, plan.count)
        try:
            writer.add_plan(job.prefix, plan, job.staging)
        except BaseException:
            writer.abort()
            raise
        return _Written(plan, writer.finish())
    except BaseException:
        writer.abort()
        raise
    written.digest = writer.finish()
    return written


def _manifest(job: _Job, meta: dict, w: _Written, size: int) -> dict:
    return {
        "format_version": 1, "format": job.fmt, "archive": job.output.name, "sha256": w.digest, "size": size,
        "dest_prefix": job.dest,
        **{k: meta.get(k) for k in ("layer", "stack", "platform", "lock_hash", "lockfile")},
        "source_prefix": str(job.prefix),
        "packages": sorted(({k: p.get(k) for k in ("name", "version", "build", "channel", "subdir", "fn",
                                                   "sha256", "md5")} for p in w.plan.packages),
                           key=lambda p: p["name"] or ""),
        "file_count": w.plan.count + len(w.early), "bytes_unpacked": w.plan.bytes_unpacked + w.early_bytes,
        "placeholders": [{"file": f, "placeholder": ph, "mode": m} for f, ph, m in w.plan.records]
        if job.dest is None else [],
        "level": job.level, "threads": job.threads,
        # what the archive was built from: equal inputs give a byte-identical archive
        "built_from": {"lock_hash": meta.get("lock_hash"), "lockfile": meta.get("lockfile"),
                       "mtime": job.mtime, "mtime_from": job.mtime_from, "dest_prefix": job.dest,
                       "format": job.fmt, "level": job.level, "tools": _tool_versions(job.fmt)},
        "created_by": CREATED_BY, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _sidecars(output: Path) -> tuple[Path, Path]:
    """(the .sha256, the .manifest.json) of an archive."""
    return output.with_name(output.name + ".sha256"), output.with_name(output.name + ".manifest.json")


def _check_request(fmt: str, dest_prefix: str | None) -> str | None:
    """The format is known and the dest prefix usable; returns the normalised dest prefix."""
    if fmt not in FORMATS:
        raise CondastackError(f"unknown archive format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    if dest_prefix is not None:
        if not os.path.isabs(dest_prefix):
            raise CondastackError(f"--dest-prefix {dest_prefix}: must be an absolute path.")
        dest_prefix = os.path.normpath(dest_prefix)
    if fmt == "squashfs" and dest_prefix is None:
        raise CondastackError("a squashfs image is mounted read-only where it runs, so it needs --dest-prefix "
                              "PATH (the mount point).")
    return dest_prefix


def pack_prefix(prefix: Path, output: Path, *, fmt: str = "tar.zst", dest_prefix: str | None = None,
                level: int | None = None, threads: int | None = None, allow_modified: bool = False,
                allow_foreign: bool = False, meter: Meter | None = None) -> PackResult:
    """Pack the env at `prefix` into `output` (+ .sha256 and .manifest.json beside it)."""
    t0 = time.perf_counter()
    dest_prefix = _check_request(fmt, dest_prefix)
    prefix, output = Path(prefix).absolute(), Path(output).absolute()
    meta = read_env_meta(prefix, allow_foreign=allow_foreign)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Temporaries of killed runs: the archive being written and the staging folders.
    clean_stale_temporaries(output.parent, output.name)
    near = prefix.parent if fmt == "squashfs" else output.parent  # a link tree must be on the env's disk
    clean_stale_temporaries(near, "pack.")
    job = _Job(prefix, output, fmt, dest_prefix, DEFAULT_LEVEL[fmt] if level is None else level,
               _threads(threads), allow_modified, make_tempdir(near, "pack"), t0)
    job.mtime, job.mtime_from = archive_mtime(prefix)
    job.meter = meter
    try:
        # Two packs to one folder take turns, so an archive, its .sha256 and its manifest stay one set
        # (the lock is on the folder itself: nothing is left beside the outputs).
        sha_path, mpath = _sidecars(output)
        with naming(output), dir_lock(output.parent), temp_siblings(output, mpath, sha_path) as (tmp, mtmp, stmp):
            written = (_write_squashfs if fmt == "squashfs" else _write_tar)(job, tmp)
            size = tmp.stat().st_size
            manifest = _manifest(job, meta, written, size)
            mtmp.write_text(json.dumps(manifest, indent=1) + "\n")
            stmp.write_text(f"{written.digest}  {output.name}\n")
            # The set is replaced as one: the old archive stays until the new one is complete.
            replace_together([(tmp, output), (mtmp, mpath), (stmp, sha_path)])
    finally:
        remove_path(job.staging)
    job.mark("total")
    return PackResult(output=output, sha256=written.digest, manifest=mpath, file_count=manifest["file_count"],
                      bytes_unpacked=manifest["bytes_unpacked"], bytes_archive=size, timings=job.timings)


def default_output(root: Path, layer: str, platform: str, fmt: str) -> Path:
    return pack_output(root, layer, platform, SUFFIX[fmt])


def pack_layer(root: Path, layer: str, *, output: Path | None = None, **kw) -> PackResult:  # noqa: ANN003
    """Pack the built env of `layer` (`<root>/envs/<layer>`), by default to pack/<layer>-<platform>.<ext>."""
    prefix = env_prefix(root, layer)
    if not prefix.exists():
        raise CondastackError(f"layer '{layer}': no environment at {prefix}. Run `condastack build {layer}` first.")
    meta = read_env_meta(prefix, allow_foreign=kw.get("allow_foreign", False))
    if meta.get("layer") not in (None, layer):
        raise CondastackError(f"{prefix}: holds layer '{meta.get('layer')}', not '{layer}'. Rebuild it.")
    fmt = kw.get("fmt", "tar.zst")
    if fmt not in FORMATS:
        raise CondastackError(f"unknown archive format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    out = output or default_output(root, layer, meta.get("platform") or "unknown", fmt)
    res = pack_prefix(prefix, out, **kw)
    note = _lock_moved_on(root, layer, meta)
    if note:
        res.warnings.append(note)
    return res


def _lock_moved_on(root: Path, layer: str, meta: dict) -> str | None:
    """A warning when the env was built from another lock than the current `lock/<layer>` one."""
    from condastack.core.layout import lockfile_path
    from condastack.env.locked import read_locked_env

    lockfile = lockfile_path(root, layer)
    if not meta.get("lock_hash") or not meta.get("platform") or not lockfile.is_file():
        return None
    try:
        current = read_locked_env(lockfile, meta["platform"]).lock_hash()
    except CondastackError as e:
        return f"layer {layer}: the current lock cannot be compared with the env ({e})"
    if current == meta["lock_hash"]:
        return None
    return (f"layer {layer}: the env was built from lock {meta['lock_hash'][:12]}, but {lockfile.name} is now "
            f"{current[:12]}; the archive holds the older packages. Run `condastack build {layer}` and pack again "
            "to ship the current lock.")


_TIMESTAMP = re.compile(rb'"timestamp"\s*:\s*(\d+)')


def archive_mtime(prefix: Path) -> tuple[int, str]:
    """The time members' mtimes are clamped to, and where it came from: `$SOURCE_DATE_EPOCH`, else
    the newest build time of the locked packages (the same for every env built from one lock).

    Only the head of each record is read (rattler writes `timestamp` before `paths_data`);
    a record without one there is read whole.
    """
    sde = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if sde.isdigit():
        return int(sde), "SOURCE_DATE_EPOCH"
    newest = 0
    env = Env(prefix)
    for name in env.record_names():
        try:
            with open(env.meta_dir / name, "rb") as f:
                m = _TIMESTAMP.search(f.read(1 << 16)) or _TIMESTAMP.search(f.read())
        except OSError:
            continue
        if m:
            t = int(m.group(1))
            newest = max(newest, t // 1000 if t > 10**11 else t)  # conda stores ms since 2019
    return newest, "packages"


def _tool_versions(fmt: str) -> dict[str, str]:
    import subprocess

    tools = {"tar.zst": ["tar", "zstd"], "tar.gz": ["tar", "pigz"], "squashfs": ["mksquashfs"]}[fmt]
    out = {}
    for tool in tools:
        try:
            p = subprocess.run([tool, "-version" if tool == "mksquashfs" else "--version"], capture_output=True,
                               text=True, timeout=10)
            out[tool] = ((p.stdout or p.stderr).strip().splitlines() or [""])[0]
        except (OSError, subprocess.SubprocessError):
            out[tool] = "unknown"
    return out


def _threads(threads: int | None) -> int:
    return threads if threads and threads > 0 else (os.cpu_count() or 1)


__all__ = ["PackResult", "pack_prefix", "pack_layer", "load_env", "read_env_meta",
           "check_dest_fits", "default_output", "FORMATS", "PREFIXES_FILE"]
