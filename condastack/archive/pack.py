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

Beside ARCHIVE go `ARCHIVE.sha256` (sha256sum format), `ARCHIVE.manifest.json`,
`ARCHIVE.cdx.json` (the CycloneDX SBOM of the env, see `condastack.env.sbom`, with the archive's
name, format and sha256 as metadata properties) and, with `sign=KEY`, the SSH signatures
`ARCHIVE.sig` and `ARCHIVE.manifest.json.sig` (see `archive.signing`). The archive holds the same
SBOM, minus the archive's own facts, at `conda-meta/condastack.cdx`. Manifest fields (format_version 1):

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
                    member mtime: later ones are clamped to it), mtime_from ("SOURCE_DATE_EPOCH" or
                    "packages": the newest build time of the locked packages), dest_prefix, format, level,
                    tools (versions)}
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

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condastack.archive.access import WARMUP_DEFAULT, first_access, sort_file_text
from condastack.archive.manifest import Manifest, PackageRef, Placeholder
from condastack.archive.plan import (
    _add_scripts,
    _confirm_early,
    _plan,
    _scan_managed,
    archive_mtime,
    load_env,
)
from condastack.archive.signing import sign_file
from condastack.archive.writers import Plan, SquashfsWriter, TarWriter, compressor
from condastack.core.errors import CondastackError, naming
from condastack.core.fs import (
    clean_stale_temporaries,
    dir_lock,
    make_tempdir,
    remove_path,
    replace_together,
    temp_siblings,
)
from condastack.core.layout import env_prefix, lockfile_path, pack_output, sidecar
from condastack.core.progress import Meter
from condastack.env.prefix import (
    CREATED_BY,
    MARKER,
    PREFIXES_FILE,
    SBOM_FILE,
    Env,
    EnvMarker,
    RawRecords,
    check_dest_fits,
)
from condastack.env.sbom import add_properties, bom_text, env_bom

FORMATS = ("tar.zst", "tar.gz", "squashfs")
SUFFIX = {"tar.zst": ".tar.zst", "tar.gz": ".tar.gz", "squashfs": ".squashfs"}
DEFAULT_LEVEL = {"tar.zst": 3, "tar.gz": 4, "squashfs": 3}


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
    sbom: Path | None = None  # ARCHIVE.cdx.json
    signatures: tuple[Path, ...] = ()  # ARCHIVE.sig, ARCHIVE.manifest.json.sig (with sign=KEY)


# --------------------------------------------------------------------------- the environment


def read_env_meta(prefix: Path, *, allow_foreign: bool = False) -> EnvMarker:
    """Check `prefix` is a conda env built by condastack; return its condastack.info."""
    prefix = Path(prefix)
    if not prefix.is_dir():
        raise CondastackError(f"{prefix}: no such environment. Build it with `condastack build LAYER` first.")
    env = Env(prefix)
    env.require_conda_env(" Nothing to pack.")
    marker = env.marker
    if marker is None:
        if allow_foreign:
            return EnvMarker()
        raise CondastackError(
            f"{prefix}: this environment was not built by condastack (no {MARKER}), so its lock "
            "is unknown. Build it with `condastack build LAYER`, or pass --allow-foreign to pack it anyway."
        )
    return marker


# --------------------------------------------------------------------------- planning


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
    bom: Any = None  # the env's SBOM (a cyclonedx Bom), made once the records are read (see plan)
    records: RawRecords = field(default_factory=dict)  # conda-meta records, read by the scan
    timings: dict[str, float] = field(default_factory=dict)
    warmup: str | None = None  # squashfs: python code whose first reads order the image (archive.access)
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
        """The members not streamed yet, with conda-pack's scripts, our relocation state and the SBOM."""
        plan = _plan(self.prefix, self.conda_pack_env(), self.staging, self.dest, set(modified), skip=skip,
                     records=self.records)
        _add_scripts(plan, self.staging, self.dest)
        # Made here, not at the start: the records are read by now, and the stream is already running.
        self.bom = env_bom(self.prefix, timestamp=self.mtime, records=self.records)
        _add_sbom(plan, self.prefix, self.staging, bom_text(self.bom))
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


def _add_sbom(plan: Plan, prefix: Path, staging: Path, text: str) -> None:
    """The SBOM made now goes into the archive, in place of any the env holds (it may be older)."""
    if SBOM_FILE in plan.from_prefix:
        plan.from_prefix.remove(SBOM_FILE)
        plan.bytes_unpacked -= os.lstat(prefix / SBOM_FILE).st_size
    out = staging / SBOM_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.chmod(0o644)
    if SBOM_FILE not in plan.staged:
        plan.staged.append(SBOM_FILE)
    plan.bytes_unpacked += len(text.encode())


def _write_squashfs(job: _Job, tmp: Path) -> _Written:
    modified = _scan_managed(job.prefix, None, job.records)[0]
    job.refuse_modified(modified)
    plan = job.plan(modified)
    sort = sort_file_text(first_access(job.prefix, job.warmup)) if job.warmup is not None else ""
    writer = SquashfsWriter(tmp, job.staging, job.level, job.threads, job.mtime, sort)
    writer.add_plan(job.prefix, plan, job.staging)
    return _Written(plan, writer.finish())


def _stream_early(job: _Job, writer: TarWriter) -> _Written:
    """Stream the unchanged conda-managed files straight from the prefix while they are checked,
    then the rest once conda-pack's model (file list, package cache, placeholders) is read: GNU
    tar reads its name list well ahead, so that work overlaps the compression. (One thread: a
    second Python thread would fight this one for the GIL on every system call.)"""
    prefix = job.prefix
    modified, early, early_bytes = _scan_managed(prefix, lambda names: writer.add_names(prefix, names), job.records)
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


def _manifest(job: _Job, meta: EnvMarker, w: _Written, size: int) -> Manifest:
    return Manifest(
        format=job.fmt, archive=job.output.name, sha256=w.digest, size=size, dest_prefix=job.dest,
        layer=meta.layer, stack=meta.stack, platform=meta.platform,
        lock_hash=meta.lock_hash, lockfile=meta.lockfile, source_prefix=str(job.prefix),
        packages=tuple(sorted((PackageRef(**{k: p.get(k) for k in ("name", "version", "build", "channel", "subdir",
                                                                     "fn", "sha256", "md5")})
                               for p in w.plan.packages), key=lambda p: p.name or "")),
        file_count=w.plan.count + len(w.early), bytes_unpacked=w.plan.bytes_unpacked + w.early_bytes,
        placeholders=tuple(Placeholder(f, ph, m) for f, ph, m in w.plan.records  # type: ignore[arg-type]
                           ) if job.dest is None else (),
        level=job.level, threads=job.threads,
        # what the archive was built from: equal inputs give a byte-identical archive
        built_from={"lock_hash": meta.lock_hash, "lockfile": meta.lockfile,
                    "mtime": job.mtime, "mtime_from": job.mtime_from, "dest_prefix": job.dest,
                    "format": job.fmt, "level": job.level, "tools": _tool_versions(job.fmt)},
        created_by=CREATED_BY, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


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
                allow_foreign: bool = False, meter: Meter | None = None, sign: Path | None = None,
                warmup: str | None = WARMUP_DEFAULT) -> PackResult:
    """Pack the env at `prefix` into `output` (+ .sha256, .manifest.json and .cdx.json beside it; with
    `sign`, an SSH key, also the .sig of the archive and of the manifest). A squashfs image holds first
    the files that the env's python reads running `warmup` (None: mksquashfs's order)."""
    job, meta = start_job(prefix, output, fmt=fmt, dest_prefix=dest_prefix, level=level, threads=threads,
                          allow_modified=allow_modified, allow_foreign=allow_foreign, meter=meter)
    job.warmup = warmup
    return publish(job, meta, _write_squashfs if fmt == "squashfs" else _write_tar, sign=sign)


def start_job(prefix: Path, output: Path, *, fmt: str, dest_prefix: str | None, level: int | None,
              threads: int | None, allow_modified: bool = False, allow_foreign: bool = False,
              meter: Meter | None = None) -> tuple[_Job, EnvMarker]:
    """A pack run of the env at `prefix` (its staging folder made), and the env's condastack.info."""
    t0 = time.perf_counter()
    dest_prefix = _check_request(fmt, dest_prefix)
    prefix, output = Path(prefix).absolute(), Path(output).absolute()
    meta = read_env_meta(prefix, allow_foreign=allow_foreign)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Temporaries of killed runs: the archive being written and the staging folders.
    clean_stale_temporaries(output.parent, output.name)
    near = prefix.parent if fmt == "squashfs" else output.parent  # a link tree must be on the env's disk
    clean_stale_temporaries(near, "pack.")
    # Everything that reads (and may refuse) the env comes before the staging folder is made,
    # so a refusal leaves nothing behind.
    mtime, mtime_from = archive_mtime(prefix)
    job = _Job(prefix, output, fmt, dest_prefix, DEFAULT_LEVEL[fmt] if level is None else level,
               _threads(threads), allow_modified, make_tempdir(near, "pack"), t0)
    job.mtime, job.mtime_from, job.meter = mtime, mtime_from, meter
    return job, meta


def publish(job: _Job, meta: EnvMarker, write: Callable[[_Job, Path], _Written],
            amend: Callable[[Manifest], Manifest] | None = None, sign: Path | None = None) -> PackResult:
    """Write the archive with `write` and publish it with its sidecars (the manifest `amend`ed), as one set;
    the job's staging folder is removed."""
    output = job.output
    try:
        # Two packs to one folder take turns, so an archive and its sidecars stay one set
        # (the lock is on the folder itself: nothing is left beside the outputs).
        finals = [output, *(sidecar(output, k) for k in ("manifest", "sha256", "sbom", "sig", "manifest_sig"))]
        with naming(output), dir_lock(output.parent), temp_siblings(*finals) as tmps:
            tmp, mtmp, stmp, btmp, sig_tmp, msig_tmp = tmps
            written = write(job, tmp)
            size = tmp.stat().st_size
            manifest = _manifest(job, meta, written, size)
            if amend is not None:
                manifest = amend(manifest)
            mtmp.write_text(manifest.text())
            stmp.write_text(f"{written.digest}  {output.name}\n")
            add_properties(job.bom, {"archive": output.name, "archive_sha256": written.digest,
                                     "archive_format": job.fmt, "dest_prefix": job.dest or ""})
            btmp.write_text(bom_text(job.bom))
            n = 4
            if sign is not None:
                sig_tmp.write_bytes(sign_file(sign, tmp))
                msig_tmp.write_bytes(sign_file(sign, mtmp))
                n = 6
            # The set is replaced as one: the old archive stays until the new one is complete.
            replace_together(list(zip(tmps[:n], finals[:n], strict=True)))
            for old in finals[n:]:  # an unsigned pack leaves no signature of an older archive behind
                old.unlink(missing_ok=True)
    finally:
        remove_path(job.staging)
    job.mark("total")
    return PackResult(output=output, sha256=written.digest, manifest=finals[1], file_count=manifest.file_count or 0,
                      bytes_unpacked=manifest.bytes_unpacked or 0, bytes_archive=size, timings=job.timings,
                      sbom=finals[3], signatures=tuple(finals[4:n]))


def default_output(root: Path, layer: str, platform: str, fmt: str) -> Path:
    return pack_output(root, layer, platform, SUFFIX[fmt])


def pack_layer(root: Path, layer: str, *, output: Path | None = None, **kw) -> PackResult:  # noqa: ANN003
    """Pack the built env of `layer` (`<root>/envs/<layer>`), by default to pack/<layer>-<platform>.<ext>."""
    prefix = env_prefix(root, layer)
    if not prefix.exists():
        raise CondastackError(f"layer '{layer}': no environment at {prefix}. Run `condastack build {layer}` first.")
    meta = read_env_meta(prefix, allow_foreign=kw.get("allow_foreign", False))
    if meta.layer not in (None, layer):
        raise CondastackError(f"{prefix}: holds layer '{meta.layer}', not '{layer}'. Rebuild it.")
    fmt = kw.get("fmt", "tar.zst")
    if fmt not in FORMATS:
        raise CondastackError(f"unknown archive format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    out = output or default_output(root, layer, meta.platform or "unknown", fmt)
    res = pack_prefix(prefix, out, **kw)
    note = _lock_moved_on(root, layer, meta)
    if note:
        res.warnings.append(note)
    return res


def _lock_moved_on(root: Path, layer: str, meta: EnvMarker) -> str | None:
    """A warning when the env was built from another lock than the current `lock/<layer>` one."""
    from condastack.env.locked import read_locked_env  # lazy: ~10 ms (the lockfile model) that `pack --prefix` skips

    lockfile = lockfile_path(root, layer)
    if not meta.lock_hash or not meta.platform or not lockfile.is_file():
        return None
    try:
        current = read_locked_env(lockfile, meta.platform).lock_hash()
    except CondastackError as e:
        return f"layer {layer}: the current lock cannot be compared with the env ({e})"
    if current == meta.lock_hash:
        return None
    return (f"layer {layer}: the env was built from lock {meta.lock_hash[:12]}, but {lockfile.name} is now "
            f"{current[:12]}; the archive holds the older packages. Run `condastack build {layer}` and pack again "
            "to ship the current lock.")


def _tool_versions(fmt: str) -> dict[str, str]:

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
