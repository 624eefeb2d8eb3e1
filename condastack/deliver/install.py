"""`condastack install`: put an archive's env on a shared file system for a cluster.

Order matters, so that a bad archive never touches the prefix and running
jobs never see a half-updated env:

1. verify the archive's sha256 against ARCHIVE.sha256 and ARCHIVE.manifest.json
   (before anything is written);
2. unpack into a new temporary sibling of the prefix (`unpack.unpack_archive`),
   relocate it for the final prefix, and check it against the manifest
   (file count, packages);
3. write activate.sh / deactivate.sh into it;
4. swap it into place (`fsutil.swap_dir`: renameat2 RENAME_EXCHANGE), so the
   path flips from the old tree to the new one in one step. Processes already
   running keep the files they have open or mapped.

A SquashFS image is not unpacked: it is copied (atomically) next to its mount
point, and the squashfuse and Apptainer lines that mount it are returned.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from condastack.archive.manifest import Manifest
from condastack.archive.relocate import relocate
from condastack.archive.signing import check_signatures
from condastack.archive.unpack import unpack_archive
from condastack.core.access import SHARED, Access, apply_file, apply_tree, make_folders
from condastack.core.errors import CondastackError
from condastack.core.fs import (
    TMP_MARK,
    atomic_path,
    atomic_write_text,
    clean_stale_temporaries,
    file_lock,
    remove_path,
    require_free_space,
    sha256_file,
    swap_dir,
)
from condastack.core.layout import SIDECAR_SUFFIXES, sidecar, sidecars
from condastack.core.progress import Meter
from condastack.core.version import __version__
from condastack.deliver.module import write_activation_scripts
from condastack.env.prefix import INSTALL_RECORD, Env


@dataclass
class Verified:
    """An archive whose bytes match both of its sidecars."""

    archive: Path
    sha256: str
    manifest: Manifest


@dataclass
class InstallResult:
    prefix: Path
    format: str
    sha256: str
    lock_hash: str | None
    replaced: bool  # an older install was swapped out
    file_count: int = 0
    image: Path | None = None  # squashfs: where the image now lives
    mount_lines: list[str] = field(default_factory=list)
    activate: Path | None = None


# --------------------------------------------------------------------------- verification


def verify_archive(archive: Path) -> Verified:
    """Check ARCHIVE against ARCHIVE.sha256 and ARCHIVE.manifest.json; read-only."""
    archive = Path(archive).absolute()
    if not archive.is_file():
        raise CondastackError(f"{archive}: " + ("not a regular file (a folder, fifo or device); give the archive "
                                                "file." if archive.exists() else "no such archive."))
    sha_file, man_file = sidecars(archive)
    for f in (sha_file, man_file):
        if not f.is_file():
            raise CondastackError(
                f"{archive}: {f.name} is missing beside it, so the archive cannot be verified. Copy the archive "
                "together with its .sha256 and .manifest.json files (as `condastack pack` writes them)."
            )
    words = sha_file.read_text().split()
    if not words or len(words[0]) != 64:
        raise CondastackError(f"{sha_file}: not a sha256sum line ('<64 hex digits>  {archive.name}').")
    expected = words[0].lower()
    manifest = Manifest.read(man_file)
    if manifest.sha256.lower() != expected:
        raise CondastackError(
            f"{archive}: {sha_file.name} ({expected[:16]}…) and {man_file.name} "
            f"({manifest.sha256[:16]}…) disagree: they belong to different archives. Re-copy all "
            "three files from the same `condastack pack` run."
        )
    size = archive.stat().st_size
    if manifest.size is not None and manifest.size != size:
        raise CondastackError(
            f"{archive}: is {size} bytes but its manifest says {manifest.size}: the copy is truncated or "
            "tampered with. Nothing was installed; copy the archive again."
        )
    actual = sha256_file(archive)
    if actual != expected:
        raise CondastackError(
            f"{archive}: sha256 mismatch: the file hashes to {actual}, but {sha_file.name} says {expected}. "
            "The archive is corrupt or was tampered with; nothing was installed. Copy it again from where it "
            "was packed."
        )
    return Verified(archive=archive, sha256=actual, manifest=manifest)


def check_against_manifest(prefix: Path, manifest: Manifest) -> int:
    """Compare an unpacked tree with its manifest: file count and installed packages."""
    count = 0
    for _root, dirs, files in os.walk(prefix):
        count += len(files) + sum(1 for d in dirs if os.path.islink(os.path.join(_root, d)))
    want = manifest.file_count
    if want is not None and count != int(want):
        raise CondastackError(
            f"{manifest.archive}: unpacked {count} files but the manifest lists {want}; the archive does "
            "not match its manifest. Nothing was installed; re-pack and copy again."
        )
    have = {(data.get("name"), data.get("version"), data.get("build")) for data in Env(prefix).records.values()}
    want_pk = {p.key for p in manifest.packages}
    if want_pk and have != want_pk:
        missing = sorted(f"{n}-{v}-{b}" for n, v, b in want_pk - have)
        extra = sorted(f"{n}-{v}-{b}" for n, v, b in have - want_pk)
        raise CondastackError(
            f"{manifest.archive}: the unpacked packages differ from the manifest (missing: "
            f"{', '.join(missing) or '-'}; unexpected: {', '.join(extra) or '-'}). Nothing was installed."
        )
    return count


# --------------------------------------------------------------------------- install


def install_archive(archive: Path, prefix: Path, *, image: Path | None = None, max_members: int | None = None,
                    max_bytes: int | None = None, meter: Meter | None = None,
                    access: Access = SHARED, allowed_signers: Path | None = None) -> InstallResult:
    """Install ARCHIVE at PREFIX (see the module docstring); a squashfs image is copied, not unpacked.

    `access` sets the modes of everything written (default: readable by all, whatever the umask).
    The archive's signatures are checked first when `allowed_signers` is given or a site config above
    PREFIX (or the image) asks for them (`archive.signing`).
    """
    prefix = Path(os.path.abspath(prefix))
    targets = [prefix] + ([Path(os.path.abspath(image))] if image is not None else [])
    check_signatures(Path(archive).absolute(), allowed_signers, targets)  # before anything is read or written
    verified = verify_archive(archive)
    fmt = verified.manifest.format
    if fmt == "squashfs":
        return _install_squashfs(verified, prefix, image, access)
    if fmt not in ("tar.zst", "tar.gz"):
        raise CondastackError(f"{verified.archive}: unknown archive format {fmt!r} in its manifest.")
    if image is not None:
        raise CondastackError("--image is only for squashfs archives.")
    if verified.manifest.is_delta:
        m = verified.manifest
        raise CondastackError(f"{verified.archive}: is a delta of layer '{m.layer}' over '{m.parent_layer}' (it holds "
                              f"only what '{m.layer}' adds); install it on top of an install of "
                              f"{m.parent_archive}: `condastack install {verified.archive.name} --prefix {prefix} "
                              "--base PARENT_PREFIX`.")
    check_install_prefix(prefix)

    parent = prefix.parent
    make_folders(parent, access)
    need = verified.manifest.bytes_unpacked or 0
    require_free_space(parent, need, f"installing {verified.archive.name}")
    with file_lock(parent / f".{prefix.name}.condastack-install.lock"):
        clean_stale_temporaries(parent, f"{prefix.name}.new")
        stage = parent / f"{TMP_MARK}{prefix.name}.new.{os.getpid()}"
        remove_path(stage)
        try:
            unpack_archive(verified.archive, stage, max_members=max_members, max_bytes=max_bytes, meter=meter)
            relocate(stage, as_prefix=prefix)  # the files must name the final path, not the stage
            count = check_against_manifest(stage, verified.manifest)
            _write_install_record(stage, verified)

            act, replaced = publish_stage(stage, prefix, lambda tree: apply_tree(tree, access))
        finally:
            remove_path(stage)
    return InstallResult(prefix=prefix, format=fmt, sha256=verified.sha256,
                         lock_hash=verified.manifest.lock_hash, replaced=replaced, file_count=count,
                         activate=prefix / act.name)


def check_install_prefix(prefix: Path) -> None:
    """PREFIX can take an install: new, empty, or an earlier install (a conda env) to replace."""
    if prefix.is_symlink():
        raise CondastackError(f"{prefix}: --prefix is a symlink; give the real folder (or a new path).")
    if prefix.exists() and not prefix.is_dir():
        raise CondastackError(f"{prefix}: exists and is not a folder; choose another --prefix.")
    if prefix.is_dir() and any(prefix.iterdir()) and not Env(prefix).is_conda_env():
        raise CondastackError(
            f"{prefix}: exists, is not empty and is not a conda env; refusing to replace it. Choose an empty or "
            "new --prefix, or remove it first."
        )


def publish_stage(stage: Path, prefix: Path, set_access: Callable[[Path], None]) -> tuple[Path, bool]:
    """Finish a staged env and swap it in at `prefix`: activation scripts, access modes (before the
    swap: nobody sees it private first), then the atomic swap. Returns (activate.sh, replaced)."""
    act, _ = write_activation_scripts(stage, final_prefix=prefix)
    set_access(stage)
    replaced = Env(prefix).is_conda_env()
    if prefix.is_dir() and not replaced:
        prefix.rmdir()  # an empty folder made ready by an admin
    swap_dir(stage, prefix)
    return act, replaced


def _write_install_record(env: Path, verified: Verified, **more: object) -> None:
    m = verified.manifest
    record = {"archive": verified.archive.name, "sha256": verified.sha256, "format": m.format,
              "layer": m.layer, "stack": m.stack, "platform": m.platform, "lock_hash": m.lock_hash,
              **more, "installed_by": f"condastack {__version__}",
              "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(env / INSTALL_RECORD, json.dumps(record, indent=1) + "\n")


def _install_squashfs(verified: Verified, prefix: Path, image: Path | None, access: Access) -> InstallResult:
    dest = verified.manifest.dest_prefix
    if dest and os.path.normpath(dest) != str(prefix):
        raise CondastackError(
            f"{verified.archive}: this squashfs image was packed for {dest} and is read-only, so it can only be "
            f"mounted there, not at {prefix}. Pass --prefix {dest}, or re-pack with --dest-prefix {prefix}."
        )
    target = Path(os.path.abspath(image)) if image else prefix.with_name(prefix.name + ".squashfs")
    require_free_space(target.parent if target.parent.exists() else Path("/"), verified.archive.stat().st_size,
                       f"copying {verified.archive.name}")
    replaced = target.exists()
    # A mounted older image keeps its inode: the rename only changes what the next mount sees.
    with atomic_path(target) as tmp:
        shutil.copyfile(verified.archive, tmp)
        if sha256_file(tmp) != verified.sha256:
            raise CondastackError(f"{target}: the copy does not match the archive's sha256; the file system "
                                  "corrupted it. Nothing was replaced.")
        os.chmod(tmp, access.file & 0o444)
    signed = sidecar(verified.archive, "manifest_sig").is_file()
    for kind in SIDECAR_SUFFIXES:
        src = sidecar(verified.archive, kind)
        if kind in ("sha256", "manifest") or src.is_file():
            text = src.read_text()
            # A signed manifest is copied as it is: renaming the archive inside it would break its signature.
            if kind == "sha256" or (kind == "manifest" and not signed):
                text = text.replace(verified.archive.name, target.name)
            atomic_write_text(sidecar(target, kind), text)
            apply_file(sidecar(target, kind), access)
        else:
            sidecar(target, kind).unlink(missing_ok=True)  # nothing of an older image's is left beside it
    lines = mount_lines(target, prefix)
    return InstallResult(prefix=prefix, format="squashfs", sha256=verified.sha256,
                         lock_hash=verified.manifest.lock_hash, replaced=replaced, image=target,
                         mount_lines=lines)


def mount_lines(image: Path, prefix: Path) -> list[str]:
    """Commands that make the image's env appear at its prefix."""
    return [
        f"mkdir -p {prefix} && squashfuse {image} {prefix}    # unmount: fusermount -u {prefix}",
        f"apptainer exec --bind {image}:{prefix}:image-src=/ CONTAINER.sif {prefix}/bin/python ...",
    ]
