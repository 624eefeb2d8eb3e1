"""Linked installs: `condastack install DELTA --prefix P --base B` builds a child's full env at P
from its parent's install at B and a delta archive (`pack LAYER --over PARENT`).

B must be the install of the very archive the delta names (its `conda-meta/condastack.install`
records that archive's sha256, and its `condastack.info` the parent's layer and lock hash). Then,
in a temporary sibling of P (the same atomic swap as `install`):
1. the delta is verified, unpacked and relocated for P;
2. every file of B that holds no prefix is hard-linked (no new inode, no bytes written); the files
   B's relocation records list (they hold B's path) are copied and relocated for P; B's conda-meta,
   activation scripts and the paths the delta replaces or removes are left out;
3. the delta goes on top (its conda-meta is the child's, whole), the package records learn what the
   relocated copies hold (so `verify` passes), activate.sh is written and the tree is swapped in.

The result is, file by file, what installing the child's full archive at P gives. A hard link is the
same file as B's: `install` replaces B by swapping in a new tree, so P keeps the old inodes (and
their disk space) until P is replaced too; nothing may edit B's files in place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from condastack.archive.relocate import RelocationRecord, relocate, rewrite_prefix
from condastack.archive.signing import check_signatures
from condastack.archive.unpack import unpack_archive
from condastack.core.access import SHARED, Access, apply_file, make_folders
from condastack.core.errors import CondastackError, DeltaRefused
from condastack.core.fs import TMP_MARK, clean_stale_temporaries, file_lock, remove_path, require_free_space
from condastack.core.progress import Meter
from condastack.deliver.install import (
    InstallResult,
    Verified,
    _write_install_record,
    check_against_manifest,
    check_install_prefix,
    publish_stage,
    verify_archive,
)
from condastack.deliver.module import ACTIVATION_FILES
from condastack.env.prefix import INSTALL_RECORD, META_DIR, Env, EnvMarker, read_marker


@dataclass
class LinkCounts:
    """What building P from B cost: files hard-linked, copied (they hold a prefix, or B is on another
    file system) and bytes written for those copies."""

    linked: int = 0
    copied: int = 0
    bytes_copied: int = 0
    inodes: set[int] = field(default_factory=set)  # of the hard-linked files (B's)


@dataclass
class LinkedResult(InstallResult):
    base: Path | None = None
    counts: LinkCounts | None = None


def check_base(verified: Verified, base: Path) -> None:
    """B is an install of the archive the delta names: its layer, its lock hash and that archive's sha256."""
    m = verified.manifest
    marker = read_marker(base) or EnvMarker()
    try:
        record = json.loads((base / INSTALL_RECORD).read_text())
    except (OSError, ValueError):
        record = {}
    have = (marker.layer, marker.lock_hash, record.get("sha256") if isinstance(record, dict) else None)
    want = (m.parent_layer, m.parent_lock_hash, m.parent_sha256)
    if have != want:
        raise DeltaRefused(m.layer, m.parent_layer, f"--base {base} is not the install this delta goes on: it holds "
                           f"layer '{have[0]}' (lock {str(have[1])[:12]}, installed from archive sha256 "
                           f"{str(have[2])[:16]}), but {verified.archive.name} needs layer '{want[0]}' (lock "
                           f"{str(want[1])[:12]}) installed from {m.parent_archive} (sha256 {str(want[2])[:16]}). "
                           f"Install that archive with `condastack install` and pass its prefix as --base.")
    state = RelocationRecord.read(base)
    current = state.current if state is not None else None
    if current is not None and os.path.normpath(current) != str(base):
        raise DeltaRefused(m.layer, m.parent_layer, f"--base {base}: its files point at {current} (it was moved); "
                           f"run `condastack relocate {base}` first.")


def install_linked(archive: Path, prefix: Path, base: Path, *, max_members: int | None = None,
                   max_bytes: int | None = None, meter: Meter | None = None, access: Access = SHARED,
                   allowed_signers: Path | None = None) -> LinkedResult:
    """Install the delta ARCHIVE at PREFIX on top of the parent's install at BASE (see the module docstring).

    `access` sets the modes of what this install writes; the hard links keep B's (they are B's files)."""
    prefix, base = Path(os.path.abspath(prefix)), Path(os.path.abspath(base))
    check_signatures(Path(archive).absolute(), allowed_signers, [prefix])  # before anything is read or written
    verified = verify_archive(archive)
    m = verified.manifest
    if not m.is_delta:
        raise CondastackError(f"{verified.archive}: is a full archive of layer '{m.layer}', not a delta; install it "
                              "without --base.")
    if m.format not in ("tar.zst", "tar.gz"):
        raise CondastackError(f"{verified.archive}: a {m.format} delta is mounted over its parent's image "
                              "(`condastack slurm-preamble DELTA --base PARENT_IMAGE`), not installed with --base.")
    if not Env(base).is_conda_env():
        raise DeltaRefused(m.layer, m.parent_layer, f"--base {base}: not an installed env (no {META_DIR}/). Install "
                                                    f"{m.parent_archive} there first.")
    if prefix == base or base in prefix.parents or prefix in base.parents:
        raise CondastackError(f"--prefix {prefix} and --base {base} must be separate folders.")
    check_base(verified, base)
    check_install_prefix(prefix)
    parent = prefix.parent
    make_folders(parent, access)
    require_free_space(parent, m.bytes_unpacked or 0, f"installing {verified.archive.name}")
    with file_lock(parent / f".{prefix.name}.condastack-install.lock"):
        clean_stale_temporaries(parent, f"{prefix.name}.new")
        clean_stale_temporaries(parent, f"{prefix.name}.delta")
        stage = parent / f"{TMP_MARK}{prefix.name}.new.{os.getpid()}"
        delta = parent / f"{TMP_MARK}{prefix.name}.delta.{os.getpid()}"
        remove_path(stage)
        remove_path(delta)
        try:
            unpack_archive(verified.archive, delta, max_members=max_members, max_bytes=max_bytes, meter=meter)
            relocate(delta, as_prefix=prefix)  # the files must name the final path, not the temporary one
            check_against_manifest(delta, m)  # the delta's members and the child's whole package list
            counts, held = _link_base(base, stage, prefix, _delta_names(delta) | set(m.removed))
            _merge(delta, stage)
            Env(stage).update_file_hashes(held)  # what `verify` compares the relocated copies against
            _write_install_record(stage, verified, base=str(base), parent_sha256=m.parent_sha256)
            act, replaced = publish_stage(stage, prefix, lambda tree: _apply_access(tree, access, counts.inodes))
        finally:
            remove_path(stage)
            remove_path(delta)
    return LinkedResult(prefix=prefix, format=m.format, sha256=verified.sha256, lock_hash=m.lock_hash,
                        replaced=replaced, file_count=_count(prefix), activate=prefix / act.name, base=base,
                        counts=counts)


def _delta_names(delta: Path) -> set[str]:
    """Every path the unpacked delta holds that is not a real folder (files and links)."""
    out: set[str] = set()
    for root, dirs, files in os.walk(delta):
        rel = os.path.relpath(root, delta)
        names = [*files, *(d for d in dirs if os.path.islink(os.path.join(root, d)))]
        out.update(n if rel == "." else f"{rel}/{n}" for n in names)
    return out


def _count(prefix: Path) -> int:
    return sum(len(files) + sum(1 for d in dirs if os.path.islink(os.path.join(r, d)))
               for r, dirs, files in os.walk(prefix))


def _link_base(base: Path, stage: Path, prefix: Path, skip: set[str]) -> tuple[LinkCounts, dict]:
    """Fill `stage` from B: folders made, links copied, prefix-holding files copied and relocated for
    `prefix`, every other file hard-linked. Returns the counts and {path: (sha256, size)} of the copies."""
    state = RelocationRecord.read(base)
    holds_prefix = {f: (ph, mode) for f, ph, mode in (state.records if state is not None else ())}
    old = (state.current if state is not None else None) or str(base)
    counts, held = LinkCounts(), {}
    skip = skip | {INSTALL_RECORD, *ACTIVATION_FILES}
    stage.mkdir()
    for root, dirs, files in os.walk(base):
        rel_root = os.path.relpath(root, base)
        rel = (lambda n: n) if rel_root == "." else (lambda n, r=rel_root: f"{r}/{n}")
        dirs[:] = [d for d in dirs if rel(d) != META_DIR and rel(d) not in skip]
        for d in list(dirs):
            src, dst = os.path.join(root, d), stage / rel(d)
            if os.path.islink(src):  # a symlink to a folder: copied as a link, not walked
                dirs.remove(d)
                os.symlink(os.readlink(src), dst)
            else:
                dst.mkdir()
                shutil.copymode(src, dst)
        for n in files:
            r = rel(n)
            if r in skip or r.startswith(META_DIR + "/"):
                continue
            src, dst = os.path.join(root, n), stage / r
            st = os.lstat(src)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            elif r in holds_prefix:
                ph, mode = holds_prefix[r]
                with open(src, "rb") as f:
                    data = rewrite_prefix(f.read(), [old, ph], str(prefix), ph, mode, r)
                dst.write_bytes(data)
                os.chmod(dst, st.st_mode & 0o7777)
                held[r] = (hashlib.sha256(data).hexdigest(), len(data))
                counts.copied += 1
                counts.bytes_copied += len(data)
            else:
                _link_or_copy(src, dst, counts, st)
    return counts, held


def _link_or_copy(src: str, dst: Path, counts: LinkCounts, st: os.stat_result) -> None:
    try:
        os.link(src, dst)
        counts.linked += 1
        counts.inodes.add(st.st_ino)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
            raise
        shutil.copy2(src, dst)  # B on another file system (or at the link limit): a copy is still right
        counts.copied += 1
        counts.bytes_copied += st.st_size


def _apply_access(stage: Path, access: Access, linked: set[int]) -> None:
    """`access` on every folder and on every file this install wrote; a hard link into B (`linked` inodes) is
    left as B has it (a chmod would change B's file too)."""
    for root, _dirs, files in os.walk(stage):  # symlinked folders are not walked, nor chmod-ed
        os.chmod(root, access.folder)
        for n in files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_ino not in linked:
                apply_file(Path(p), access)


def _merge(delta: Path, stage: Path) -> None:
    """Move the unpacked delta's entries into `stage`; where B left something of another kind at a
    path (a folder where the delta has a file, or the reverse), the delta's wins."""
    for root, dirs, files in os.walk(delta, topdown=True):
        rel_root = os.path.relpath(root, delta)
        target_root = stage if rel_root == "." else stage / rel_root
        for d in list(dirs):
            src, dst = os.path.join(root, d), target_root / d
            if os.path.islink(src) or not dst.is_dir() or dst.is_symlink():
                dirs.remove(d)  # moved whole: a link, or a folder B lacks
                if os.path.lexists(dst):
                    remove_path(dst)
                os.rename(src, dst)
        for n in files:
            dst = target_root / n
            if dst.is_dir() and not dst.is_symlink():
                remove_path(dst)
            os.rename(os.path.join(root, n), dst)


__all__ = ["LinkCounts", "LinkedResult", "check_base", "install_linked"]
