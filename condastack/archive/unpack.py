"""Unpack an archive made by `condastack pack` (or conda-pack) safely, and relocate it.

Extraction is one pass: `zstd -dc` (or `gzip -dc`) feeds Python, which reads
every tar header, checks it, and forwards the bytes to GNU tar, which writes
the files. A member is refused before tar sees it when its name is absolute
or has `..`, when it is a device, fifo or unknown type, or when it (or the
target of a symlink or hard link) would resolve outside DEST through the
links seen so far. The archive is extracted into a temporary sibling of DEST
and renamed into place only when complete and relocated, so on any refusal
or failure DEST is as it was and nothing is left behind.

Relocation rewrites the placeholder records kept in
`conda-meta/condastack.prefixes` (or, for a plain conda-pack archive, those in
`bin/conda-unpack`). Text files get the new prefix in place of the old one;
binary files get it padded with NULs to the length of the original
placeholder, which is therefore the longest prefix allowed. The file records
which prefix is now baked in, so relocation can be repeated after a move
(`condastack relocate PATH`), unlike conda-pack's one-shot `conda-unpack`.
Only condastack itself runs on the host: no conda, no python in the env.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from condastack.archive.manifest import Manifest
from condastack.archive.relocate import RelocationRecord, relocate
from condastack.archive.targuard import _CHUNK, LIMIT_ENV, _filter_stream, _Guard, _Refused
from condastack.core.errors import ArchiveRefused, CondastackError, naming
from condastack.core.fs import TMP_MARK, _fsync_dir, clean_stale_temporaries, remove_path
from condastack.core.layout import sidecar
from condastack.core.progress import Meter
from condastack.env.prefix import check_dest_fits


@dataclass
class UnpackResult:
    dest: Path
    members: int
    bytes: int
    relocated_files: int


# --------------------------------------------------------------------------- the member checker


# --------------------------------------------------------------------------- unpack


def _decompressor(archive: Path) -> list[str]:
    with open(archive, "rb") as f:
        magic = f.read(4)
    if magic == b"\x28\xb5\x2f\xfd":
        return ["zstd", "-dcq", str(archive)]
    if magic[:2] == b"\x1f\x8b":
        return ["pigz", "-dc", str(archive)] if _which("pigz") else ["gzip", "-dc", str(archive)]
    if magic == b"hsqs":
        raise CondastackError(
            f"{archive}: is a SquashFS image; it is not unpacked but mounted read-only at the prefix it was "
            "packed for (`squashfuse IMAGE DIR` or `mount -o loop,ro IMAGE DIR`).")
    return ["cat", str(archive)]  # plain tar


def _which(name: str) -> bool:

    return shutil.which(name) is not None


def _limit(given: int | None, kind: str) -> int | None:
    """An explicit limit, else the one set in the environment (e.g. by a site admin), else none."""
    if given is not None:
        return given
    raw = os.environ.get(LIMIT_ENV[kind], "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise CondastackError(f"{LIMIT_ENV[kind]}={raw!r}: must be a whole number of {kind} (0 or more).")
    return value


def unpack_archive(archive: Path, dest: Path, *, max_members: int | None = None,
                   max_bytes: int | None = None, meter: Meter | None = None) -> UnpackResult:
    """Extract `archive` safely into `dest` (which must not exist or be empty) and relocate it there.

    Member count and expanded size are limited by `max_members` / `max_bytes`, which
    default to $CONDASTACK_MAX_MEMBERS / $CONDASTACK_MAX_BYTES (no limit when unset).
    """
    archive, dest = Path(archive), Path(dest).absolute()
    max_members, max_bytes = _limit(max_members, "members"), _limit(max_bytes, "bytes")
    if not archive.is_file():
        raise CondastackError(f"{archive}: " + ("not a regular file (a folder, fifo or device); give the archive "
                                                "file." if archive.exists() else "no such archive."))
    if dest.is_symlink():
        raise CondastackError(f"{dest}: is a symlink; give the real folder (or a new path) as the destination.")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CondastackError(f"{dest}: already exists and is not empty; choose a new folder or remove it first.")
    manifest_file = sidecar(archive, "manifest")
    total = None
    if manifest_file.is_file():  # fail before extracting gigabytes when DEST cannot fit
        manifest = None
        with contextlib.suppress(CondastackError):  # unpack checks the members, not the sidecar
            manifest = Manifest.read(manifest_file)
        if manifest is not None:
            total = manifest.bytes_unpacked
            check_dest_fits([(r.file, r.placeholder, r.mode) for r in manifest.placeholders], str(dest))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CondastackError(f"{dest}: cannot create its parent folder: {e.strerror}.") from None
    clean_stale_temporaries(dest.parent, dest.name)  # left by a killed unpack
    guard = _Guard(max_members, max_bytes, meter, total)
    tmp = dest.parent / f"{TMP_MARK}{dest.name}.{os.getpid()}"
    remove_path(tmp)
    tmp.mkdir()
    with naming(dest):  # a write() hitting ENOSPC names no file: it is about DEST
        try:
            _extract(archive, tmp, guard)
            if meter is not None:
                meter("unpack", guard.bytes, total and max(total, guard.bytes), "bytes")
            changed = _relocate_extracted(archive, tmp, dest)
            _rename_into(tmp, dest)
        finally:
            remove_path(tmp)
    return UnpackResult(dest=dest, members=guard.members, bytes=guard.bytes, relocated_files=changed)


def _relocate_extracted(archive: Path, tmp: Path, dest: Path) -> int:
    """Relocate an extracted env from `tmp` to `dest`; the number of files rewritten."""
    try:
        if RelocationRecord.read(tmp) is None:
            return 0  # an archive with no placeholder records (not an env) is only extracted
        return relocate(tmp, as_prefix=dest).files_changed
    except CondastackError as e:  # name the archive and the final path, not our temporary
        raise ArchiveRefused(archive, str(e).replace(str(tmp), str(dest)).rstrip(".")) from None


def _rename_into(tmp: Path, dest: Path) -> None:
    """Move the finished tree to `dest`.

    Not atomic_path: its swap would replace a DEST another process filled meanwhile. rename(2)
    replaces only an empty DEST, in one step, so DEST is never absent.
    """
    try:
        os.rename(tmp, dest)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        raise CondastackError(f"{dest}: another process filled it while this unpack ran; it was "
                              "left as that process made it. Choose a new folder.") from None
    _fsync_dir(dest.parent)


def extract_into(archive: Path, into: Path, *, max_members: int | None = None, max_bytes: int | None = None) -> int:
    """Extract `archive` into the existing folder `into` through the member checks, without relocating it
    (a `--dest-prefix` archive already holds the prefix it is extracted for, as in a container image).
    Returns the number of members."""
    guard = _Guard(_limit(max_members, "members"), _limit(max_bytes, "bytes"), None, None)
    with naming(into):
        _extract(Path(archive), Path(into), guard)
    return guard.members


def _extract(archive: Path, into: Path, guard: _Guard) -> None:
    dec = subprocess.Popen(_decompressor(archive), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    tar = subprocess.Popen(["tar", "-xf", "-", "-C", str(into), "--no-same-owner", "--delay-directory-restore"],
                           stdin=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert dec.stdout is not None and tar.stdin is not None  # PIPEs asked for above
    for pipe in (dec.stdout, tar.stdin):  # fewer, larger reads and writes
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), 1031, _CHUNK)  # F_SETPIPE_SZ
    errs: dict[str, bytes] = {}
    threads = [threading.Thread(target=lambda p=p, k=k: errs.__setitem__(k, p.stderr.read()))
               for k, p in (("dec", dec), ("tar", tar))]
    for t in threads:
        t.start()
    refused: _Refused | None = None
    broken = False
    try:
        _filter_stream(dec.stdout.fileno(), tar.stdin.fileno(), guard)
    except _Refused as e:
        refused = e
    except BrokenPipeError:
        broken = True
    finally:
        if refused:
            tar.kill()
        with contextlib.suppress(BrokenPipeError):
            tar.stdin.close()
        dec.stdout.close()
        rc_t, rc_d = tar.wait(), dec.wait()
        for t in threads:
            t.join()
    if refused:
        if rc_d not in (0, None) and "truncated" in refused.reason:
            raise CondastackError(f"{archive}: cannot be decompressed: "
                                  f"{errs.get('dec', b'').decode(errors='replace').strip()}")
        raise ArchiveRefused(archive, refused.reason, member=refused.member)
    if rc_d != 0:
        detail = errs.get("dec", b"").decode(errors="replace").strip()
        raise CondastackError(f"{archive}: cannot be decompressed: {detail}")
    if rc_t != 0 or broken:
        raise CondastackError(f"{archive}: tar failed: {errs.get('tar', b'').decode(errors='replace').strip()}")


# --------------------------------------------------------------------------- relocation


__all__ = ["UnpackResult", "unpack_archive", "extract_into"]
