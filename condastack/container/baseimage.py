"""A real base image for OCI archives made without --oci-base: a minimal Debian rootfs.

An environment alone cannot run: its programs need the C library and the
loader of a distribution. So `container --oci` without `--oci-base` puts the
environment on a minimal Debian made by `debootstrap --variant=minbase` for
the oldest suite whose glibc is at least the stack's `__glibc`. The rootfs is
made once per suite and architecture and cached (`$CONDASTACK_CACHE/rootfs/`,
a tar.zst), then turned into a one-layer OCI layout (`$CONDASTACK_CACHE/oci-base/`).
Where debootstrap cannot run (not root, not installed, no mirror), the error
says what to pass instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_path, file_lock, make_tempdir, remove_path, swap_dir
from condastack.core.layout import cache_root
from condastack.core.platforms import DEB_ARCH, OCI_ARCH

# Debian suites and their glibc, oldest first: the smallest fit is chosen.
DEBIAN_SUITES = (("bookworm", "2.36"), ("trixie", "2.41"))
MIRROR_ENV = "CONDASTACK_DEBIAN_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ADVICE = ("Pass --oci-base DIR[:TAG], a local OCI layout of a base image with a C library (e.g. "
          "`skopeo copy docker://debian:bookworm-slim oci:base:bookworm`, then --oci-base base:bookworm).")
# --sqsh and --sif have no other base: the rootfs must be made once (as root) or copied into the cache.
IMAGE_ADVICE = ("Run `condastack container LAYER --sqsh FILE` once as root where debootstrap reaches a Debian "
                f"mirror (${MIRROR_ENV}), or copy a `debootstrap --variant=minbase` rootfs tar.zst to that path.")


@dataclass(frozen=True)
class BaseImage:
    ref: str  # DIR:TAG of the local OCI layout
    description: str  # what it holds, for the summary


def _ver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3]) or (0,)


def debian_suite(glibc: str | None, advice: str = ADVICE) -> str:
    """The oldest Debian suite whose glibc is at least `glibc`."""
    for suite, have in DEBIAN_SUITES:
        if glibc is None or _ver(have) >= _ver(glibc):
            return suite
    raise CondastackError(f"the stack needs glibc {glibc}, newer than any Debian suite condastack can make a base "
                          f"image from ({', '.join(f'{s} {g}' for s, g in DEBIAN_SUITES)}). {advice}")


def rootfs_tarball(suite: str, platform: str, advice: str = ADVICE) -> Path:
    """The cached minimal rootfs of `suite` (tar.zst), made with debootstrap on first use; `advice` ends
    the message where it cannot be made (what the command could use instead)."""
    arch = DEB_ARCH.get(platform)
    if arch is None:
        raise CondastackError(f"no Debian architecture for platform {platform}. {advice}")
    folder = cache_root() / "rootfs"
    out = folder / f"debian-{suite}-{arch}-minbase.tar.zst"
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / f".{out.name}.lock"):
        if out.is_file():
            return out
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            raise CondastackError(f"no cached Debian {suite} rootfs at {out}, and debootstrap "
                                  f"{'is not installed' if os.geteuid() == 0 else 'needs root'} to make one. "
                                  + advice)
        work = make_tempdir(folder, out.name)
        try:
            mirror = os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
            p = subprocess.run(["debootstrap", "--variant=minbase", f"--arch={arch}", suite, str(work / "root"),
                                mirror], capture_output=True, text=True)
            if p.returncode != 0:
                tail = " | ".join((p.stdout + p.stderr).strip().splitlines()[-3:])
                raise CondastackError(f"debootstrap of Debian {suite} from {mirror} failed ({tail}). Set "
                                      f"${MIRROR_ENV} to a reachable mirror, or: {advice}")
            for deb in (work / "root" / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            with atomic_path(out) as tmp:
                subprocess.run(["tar", "--numeric-owner", "--sort=name", "-I", "zstd -T0 -3", "-C",
                                str(work / "root"), "-cf", str(tmp), "."], check=True, capture_output=True)
        finally:
            remove_path(work)
    return out


def _gzip_layer(tarball: Path, blob: Path) -> tuple[str, str, int]:
    """`zstd -dc | pigz` into `blob`; returns (digest, diff_id, size). The uncompressed stream is hashed
    on its way through (the diff_id)."""
    inner = hashlib.sha256()
    with open(blob, "wb") as sink:
        dec = subprocess.Popen(["zstd", "-dcq", str(tarball)], stdout=subprocess.PIPE)
        gz = subprocess.Popen(["pigz", "-n", "-6", "-c"], stdin=subprocess.PIPE, stdout=sink)
        assert dec.stdout is not None and gz.stdin is not None  # PIPEs asked for
        try:
            while block := dec.stdout.read(1 << 20):
                inner.update(block)
                gz.stdin.write(block)
        finally:
            gz.stdin.close()
            rc_d, rc_g = dec.wait(), gz.wait()
    if rc_d or rc_g:
        raise CondastackError(f"{tarball}: cannot be turned into an image layer (zstd {rc_d}, pigz {rc_g}); "
                              "delete it to make it again.")
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    return f"sha256:{digest}", f"sha256:{inner.hexdigest()}", blob.stat().st_size


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _write_layout(tarball: Path, out: Path, suite: str, platform: str) -> None:
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = out / "layer.tmp"
    digest, diff_id, size = _gzip_layer(tarball, tmp)
    os.replace(tmp, blobs / digest.split(":", 1)[1])
    config = {"architecture": OCI_ARCH[platform], "os": "linux",
              "config": {"Env": [f"PATH={PATH}"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]},
              "history": [{"created": "1970-01-01T00:00:00Z",
                           "created_by": f"debootstrap --variant=minbase {suite} (condastack)"}]}
    cfg_digest, cfg_size = _blob(out, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest,
                           "size": cfg_size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
                            "size": size}]}
    man_digest, man_size = _blob(out, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                "digest": man_digest, "size": man_size,
                                                "annotations": {"org.opencontainers.image.ref.name": suite}}]}
    (out / "index.json").write_text(json.dumps(index, indent=1))
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


_LOCK = threading.Lock()


def debian_base(glibc: str | None, platform: str) -> BaseImage:
    """The local OCI layout of the minimal Debian fitting `glibc` (made and cached on first use)."""
    suite = debian_suite(glibc)
    tarball = rootfs_tarball(suite, platform)
    folder = cache_root() / "oci-base"
    out = folder / tarball.name.replace(".tar.zst", "")
    desc = f"Debian {suite} minbase (debootstrap, {tarball.name})"
    with _LOCK, file_lock(folder.parent / "rootfs" / f".{out.name}.oci.lock"):
        stamp = out / "source.sha256"
        src = f"{tarball.stat().st_size} {tarball.stat().st_mtime_ns}"
        if stamp.is_file() and stamp.read_text() == src:
            return BaseImage(f"{out}:{suite}", desc)
        folder.mkdir(parents=True, exist_ok=True)
        work = make_tempdir(folder, out.name)
        try:
            _write_layout(tarball, work, suite, platform)
            (work / "source.sha256").write_text(src)
            swap_dir(work, out)
        finally:
            remove_path(work)
    return BaseImage(f"{out}:{suite}", desc)


__all__ = ["BaseImage", "debian_base", "debian_suite", "rootfs_tarball", "DEBIAN_SUITES"]
