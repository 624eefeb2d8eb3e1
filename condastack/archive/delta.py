"""Delta archives: `condastack pack LAYER --over PARENT` packs only what LAYER's env adds to PARENT's.

A child layer is locked with every package of its parent pinned, so its env holds the parent's
files byte for byte, plus its own. Both envs are planned as full archives for the same
--dest-prefix (the planner in plan.py decides each member's bytes: the prefix, the package cache
or the staging folder); a child member goes into the delta when the parent has no member of that
name, or one of another kind, mode or content. `conda-meta` always goes in whole (the child's
records, relocation state and marker describe the whole env), and the parent's members the child
lacks are listed in the manifest (`removed`; a SquashFS delta also holds a `.wh.NAME` whiteout for
each, which an overlay mount reads).

The manifest names the parent by layer, lock hash and its archive's sha256: a delta goes only on
top of that very archive (installed, or mounted). It is refused, naming both layers, when PARENT is
not an ancestor of LAYER in the stack, or when the parent's lock changed since its archive was
packed (the archive, the parent's env and `lock/<parent>` must agree, and the child's env must hold
every package of that archive).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

from condastack.archive.manifest import Manifest
from condastack.archive.pack import (
    FORMATS,
    SUFFIX,
    PackResult,
    _Job,
    _Written,
    publish,
    read_env_meta,
    start_job,
)
from condastack.archive.plan import _scan_managed
from condastack.archive.writers import Plan, SquashfsWriter, TarWriter, compressor
from condastack.core.errors import CondastackError, DeltaRefused
from condastack.core.fs import remove_path, sha256_file
from condastack.core.layout import delta_output, env_prefix, lockfile_path, pack_output, sidecar, whiteout
from condastack.core.progress import Meter
from condastack.env.locked import read_locked_env
from condastack.env.prefix import META_DIR, EnvMarker
from condastack.spec.stack import load_stack

_CMP_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class ParentArchive:
    """The parent's archive a delta goes on top of, checked against the parent's env and lock."""

    path: Path
    sha256: str
    manifest: Manifest


def pack_delta(root: Path, layer: str, parent: str, *, output: Path | None = None,
               parent_archive: Path | None = None, fmt: str = "tar.zst", dest_prefix: str | None = None,
               level: int | None = None, threads: int | None = None, meter: Meter | None = None,
               sign: Path | None = None) -> PackResult:
    """Pack what `envs/<layer>` adds to `envs/<parent>` (default: pack/<layer>-over-<parent>-<platform>.<ext>)."""
    root = Path(root)
    _check_ancestor(root, layer, parent)
    if fmt not in FORMATS:
        raise CondastackError(f"unknown archive format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    child_prefix, parent_prefix = env_prefix(root, layer), env_prefix(root, parent)
    for name, p in ((layer, child_prefix), (parent, parent_prefix)):
        if not p.exists():
            raise DeltaRefused(layer, parent, f"no environment at {p}. Run `condastack build {name}` first.")
    child_meta, parent_meta = read_env_meta(child_prefix), read_env_meta(parent_prefix)
    platform = child_meta.platform or "unknown"
    if parent_meta.platform != child_meta.platform:
        raise DeltaRefused(layer, parent, f"{parent_prefix} is built for {parent_meta.platform}, "
                                          f"{child_prefix} for {platform}. Build both for one platform.")
    given = parent_archive or pack_output(root, parent, platform, SUFFIX[fmt])
    norm_dest = os.path.normpath(dest_prefix) if dest_prefix else None
    parch = check_parent_archive(root, layer, parent, Path(given), fmt, norm_dest, parent_meta)
    out = output or delta_output(root, layer, parent, platform, SUFFIX[fmt])
    job, meta = start_job(child_prefix, out, fmt=fmt, dest_prefix=dest_prefix, level=level, threads=threads,
                          meter=meter)
    removed: list[str] = []

    def write(job: _Job, tmp: Path) -> _Written:
        written, gone = _write_delta(job, parent_prefix, parch, tmp, layer, parent)
        removed.extend(gone)
        return written

    def amend(m: Manifest) -> Manifest:
        return dataclasses.replace(m, parent_layer=parent, parent_lock_hash=parch.manifest.lock_hash,
                                   parent_sha256=parch.sha256, parent_archive=parch.path.name,
                                   removed=tuple(removed))

    return publish(job, meta, write, amend, sign=sign)


def _check_ancestor(root: Path, layer: str, parent: str) -> None:
    stack = load_stack(root, parse_specs=False)
    chain = [lay.name for lay in stack.chain(layer)]
    stack.layer(parent)  # an unknown name is refused as such
    if parent not in chain[:-1]:
        raise DeltaRefused(layer, parent, f"'{parent}' is not an ancestor of '{layer}' in {stack.file} (its chain: "
                                          f"{' -> '.join(chain)}). A delta goes on top of a layer the child extends.")


def check_parent_archive(root: Path, layer: str, parent: str, path: Path, fmt: str, dest: str | None,
                         parent_meta: EnvMarker) -> ParentArchive:
    """The parent's archive, if it is the parent's, of this format and prefix, and of its current lock."""
    man_path = sidecar(path, "manifest")
    if not path.is_file() or not man_path.is_file():
        how = f"condastack pack {parent} --format {fmt}" + (f" --dest-prefix {dest}" if dest else "")
        raise DeltaRefused(layer, parent, f"the parent's archive {path} (or its manifest) is missing; a delta names "
                                          f"the archive it goes on top of. Pack the parent first: `{how}`.")
    m = Manifest.read(man_path)
    digest = sha256_file(path)
    if digest != m.sha256:
        raise DeltaRefused(layer, parent, f"{path} does not match its manifest's sha256; re-pack '{parent}'.")
    if m.layer != parent:
        raise DeltaRefused(layer, parent, f"{path} holds layer '{m.layer}', not '{parent}'.")
    if m.format != fmt or (m.dest_prefix or None) != dest:
        raise DeltaRefused(layer, parent, f"{path} is a {m.format} archive for dest prefix {m.dest_prefix}, but "
                                          f"this delta is {fmt} for {dest}: the delta must be packed like its "
                                          "parent (same --format and --dest-prefix).")
    current = _current_lock(root, parent, parent_meta.platform)
    locks = {"archive": m.lock_hash, "env": parent_meta.lock_hash, "lock": current or m.lock_hash}
    if len(set(locks.values())) != 1:
        raise DeltaRefused(layer, parent, f"the lock of '{parent}' changed since {path.name} was packed (archive: "
                                          f"lock {_short(m.lock_hash)}; envs/{parent}: {_short(locks['env'])}; "
                                          f"{lockfile_path(root, parent).name}: {_short(current)}). Rebuild and "
                                          f"re-pack '{parent}', rebuild '{layer}', then pack the delta again.")
    return ParentArchive(path=path.absolute(), sha256=digest, manifest=m)


def _short(h: object) -> str:
    return str(h)[:12] if h else "unknown"


def _current_lock(root: Path, layer: str, platform: str | None) -> str | None:
    lockfile = lockfile_path(root, layer)
    if not platform or not lockfile.is_file():
        return None
    return read_locked_env(lockfile, platform).lock_hash()


# --------------------------------------------------------------------------- planning the delta


def _full_plan(job: _Job) -> Plan:
    modified = _scan_managed(job.prefix, None, job.records)[0]
    job.refuse_modified(modified)
    return job.plan(modified)


def _sources(job: _Job, plan: Plan) -> dict[str, str]:
    """Each member of a full plan -> the path its bytes come from."""
    out = {t: os.path.join(job.prefix, t) for t in plan.from_prefix}
    for base, names in plan.from_cache.items():
        out.update((t, os.path.join(base, t)) for t in names)
    out.update((t, os.path.join(job.staging, t)) for t in plan.staged)
    return out


def same_member(a: str, b: str) -> bool:
    """Whether two archive members would unpack to the same thing: kind, mode and bytes (or link target)."""
    sa, sb = os.lstat(a), os.lstat(b)
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISDIR(sa.st_mode):
        return True
    if (sa.st_mode & 0o7777) != (sb.st_mode & 0o7777) or sa.st_size != sb.st_size:
        return False
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):  # both hard links of one package cache file
        return True
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(_CMP_CHUNK), fb.read(_CMP_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def _parent_sources(parent_prefix: Path, like: _Job, layer: str, parent: str) -> tuple[_Job, dict[str, str]]:
    """The parent's env planned like the child's (same format and dest prefix), in a staging folder of its own."""
    from condastack.core.fs import make_tempdir

    pjob = _Job(parent_prefix.absolute(), like.output, like.fmt, like.dest, like.level, like.threads, False,
                make_tempdir(like.staging.parent, "pack"), like.t0)
    try:
        return pjob, _sources(pjob, _full_plan(pjob))
    except CondastackError as e:
        remove_path(pjob.staging)
        raise DeltaRefused(layer, parent, f"the parent's env cannot be planned: {e}") from None
    except BaseException:
        remove_path(pjob.staging)
        raise


def delta_plan(job: _Job, plan: Plan, parent: dict[str, str]) -> tuple[Plan, list[str]]:
    """The members of `plan` that the parent's members (`parent`: name -> source) do not hold as they are,
    with all of conda-meta; and the parent's names the child lacks (sorted)."""
    mine = _sources(job, plan)
    keep = {t for t, src in mine.items()
            if t.startswith(META_DIR + "/") or t not in parent or not same_member(src, parent[t])}
    out = Plan(records=plan.records, packages=plan.packages)
    out.from_prefix = [t for t in plan.from_prefix if t in keep]
    for base, names in plan.from_cache.items():
        if kept := [t for t in names if t in keep]:
            out.from_cache[base] = kept
    out.staged = [t for t in plan.staged if t in keep]
    for t in plan.staged:  # the staging folder is the SquashFS tree: only what the delta holds stays in it
        if t not in keep:
            os.unlink(os.path.join(job.staging, t))
    for t in keep:
        st = os.lstat(mine[t])
        if stat.S_ISREG(st.st_mode):
            out.bytes_unpacked += st.st_size
    removed = sorted(t for t in parent if t not in mine)
    return out, removed


def _write_delta(job: _Job, parent_prefix: Path, parch: ParentArchive, tmp: Path, layer: str,
                 parent: str) -> tuple[_Written, list[str]]:
    full = _full_plan(job)
    _check_holds_parent(full, parch, layer, parent)
    pjob, psrc = _parent_sources(parent_prefix, job, layer, parent)
    try:
        if parch.manifest.file_count is not None and len(psrc) != parch.manifest.file_count:
            raise DeltaRefused(layer, parent, f"envs/{parent} has {len(psrc)} members but {parch.path.name} holds "
                                              f"{parch.manifest.file_count}: the env changed since it was packed. "
                                              f"Re-pack '{parent}' (or rebuild it), then pack the delta again.")
        plan, removed = delta_plan(job, full, psrc)
    finally:
        remove_path(pjob.staging)
    job.mark("delta")
    if job.fmt == "squashfs":
        for rel in removed:  # an overlay mount hides the parent's path behind it
            wh = job.staging / whiteout(rel)
            wh.parent.mkdir(parents=True, exist_ok=True)
            wh.touch()
            plan.staged.append(whiteout(rel))
        writer: SquashfsWriter | TarWriter = SquashfsWriter(tmp, job.staging, job.level, job.threads, job.mtime)
    else:
        writer = TarWriter(tmp, compressor(job.fmt, job.level, job.threads), job.mtime, job.meter)
    try:
        writer.add_plan(job.prefix, plan, job.staging)
    except BaseException:
        writer.abort()
        raise
    return _Written(plan, writer.finish()), removed


def _check_holds_parent(full: Plan, parch: ParentArchive, layer: str, parent: str) -> None:
    """The child's env holds every package of the parent's archive (the child was locked on that parent)."""
    have = {p.get("name"): (p.get("version"), p.get("build")) for p in full.packages}
    missing = sorted(f"{p.name}-{p.version}-{p.build}" for p in parch.manifest.packages
                     if have.get(p.name) != (p.version, p.build))
    if missing:
        raise DeltaRefused(layer, parent, f"envs/{layer} does not hold these packages of {parch.path.name}: "
                                          f"{', '.join(missing[:10])}. It was not built on the parent's current "
                                          f"lock: run `condastack lock {layer}` and `condastack build {layer}`.")


__all__ = ["ParentArchive", "check_parent_archive", "delta_plan", "pack_delta", "same_member"]
