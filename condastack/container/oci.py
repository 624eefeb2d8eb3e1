"""The OCI image archive, written in plain Python (tar + sha256 + JSON): the env as gzip layers over an optional
base image given as a local OCI layout. No daemon, skopeo or umoci is needed to make it.

The env is one layer (LAYER's full archive), or one layer per stack layer (the root layer's archive, then
each child's delta with `.wh.NAME` whiteouts for the paths it removes; see layers.py). Each layer tar is
reproducible (the archive's order, mtimes and modes, owner root, gzip without name or mtime), so the
same archive gives the same layer digest in every image that holds it.
"""


from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from condastack.container.layers import whiteouts
from condastack.container.spec import DEFAULT_PATH, LABEL_NS, ContainerSpec, PackedArchive
from condastack.core import quoting
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_path, make_tempdir, remove_path
from condastack.core.layout import sidecar
from condastack.core.pathsafe import UnsafePath, member_name
from condastack.core.platforms import OCI_ARCH
from condastack.env.prefix import SBOM_FILE

_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


_OCI_INDEX = "application/vnd.oci.image.index.v1+json"


_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


_REF_NAME = "org.opencontainers.image.ref.name"


SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        self.sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


@contextlib.contextmanager
def _open_tar_stream(path: Path, fmt: str) -> Iterator[tarfile.TarFile]:
    """Read a tar archive sequentially (zstd through the `zstd` program, so nothing is held in memory)."""
    if fmt != "tar.zst":
        with tarfile.open(path, "r|gz" if fmt == "tar.gz" else "r|") as tf:
            yield tf
        return
    if shutil.which("zstd") is None:
        raise CondastackError(f"{path}: reading a .tar.zst needs the `zstd` program (apt-get install zstd).")
    proc = subprocess.Popen(["zstd", "-dcq", str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            yield tf
    finally:
        if proc.stdout:
            proc.stdout.close()
        if proc.wait() not in (0, None) and proc.returncode != -13:
            raise CondastackError(f"{path}: zstd could not decompress the archive (exit {proc.returncode}).")


def _safe_member_name(name: str, archive: Path) -> str:
    try:
        return member_name(name, str(archive)) or "."
    except UnsafePath as e:
        raise CondastackError(f"{archive}: member {name!r} {e.why}; the archive is unsafe.") from None


def _dir_member(name: str) -> tarfile.TarInfo:
    d = tarfile.TarInfo(name)
    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
    return d


def _copy_members(out: tarfile.TarFile, src: PackedArchive, root: str) -> None:
    """The archive's members re-rooted under `root`, owned by root, in the archive's order."""
    with _open_tar_stream(src.path, src.fmt) as tf:
        for m in tf:
            name = _safe_member_name(m.name, src.path)
            if name == ".":
                continue  # the prefix folder itself is written before
            m.name = f"{root}/{name}"
            if m.islnk():  # hard links name another member: re-root them too
                m.linkname = f"{root}/{_safe_member_name(m.linkname, src.path)}"
            m.uid = m.gid = 0
            m.uname = m.gname = "root"
            out.addfile(m, tf.extractfile(m) if m.isreg() else None)


def _write_env_layer(src: PackedArchive, prefix: str, blob: Path, level: int) -> tuple[str, str, int, int]:
    """Re-root the archive's members under `prefix` into a gzip layer, with a whiteout for each path a delta
    removes; returns (digest, diff_id, size, whiteouts)."""
    root = prefix.strip("/")
    hide = whiteouts(src.removed, src.path) if src.parent_layer is not None else []
    with open(blob, "wb") as raw:
        outer = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=outer, compresslevel=level, mtime=0) as gz:
            inner = _HashingWriter(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as out:  # type: ignore[call-overload]
                parts = root.split("/")
                for i in range(1, len(parts) + 1):  # parents of the prefix, world-readable
                    out.addfile(_dir_member("/".join(parts[:i])))
                _copy_members(out, src, root)
                for wh in hide:  # an empty file `.wh.NAME` hides NAME of the layers below (OCI image spec)
                    m = tarfile.TarInfo(f"{root}/{wh}")
                    m.mode, m.mtime, m.uname, m.gname = 0o644, 0, "root", "root"
                    out.addfile(m)
            inner_digest = inner.digest
    return outer.digest, inner_digest, outer.size, len(hide)


def _write_json_blob(layout: Path, obj: dict) -> tuple[str, int]:
    """Write `obj` as a canonical JSON blob; returns its digest and size."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob_path(layout, digest).write_bytes(data)
    return digest, len(data)


def _sbom_annotations(layout: Path, spec: ContainerSpec) -> dict[str, str]:
    """The archive's SBOM (ARCHIVE.cdx.json) as a blob of the layout, named by annotations of the image
    manifest; the env in the image holds it too (conda-meta/condastack.cdx). Not an OCI 1.1 referrer: a
    second manifest in index.json makes `skopeo`/`podman load` ask which image to take."""
    path = sidecar(spec.archive.path, "sbom")
    if not path.is_file():  # packed by an older condastack
        return {}
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob_path(layout, digest).write_bytes(data)
    return {f"{LABEL_NS}.sbom.digest": digest, f"{LABEL_NS}.sbom.mediatype": SBOM_MEDIA_TYPE,
            f"{LABEL_NS}.sbom.path": f"{spec.prefix.rstrip('/')}/{SBOM_FILE}"}


def _blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def _read_base_layout(ref: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(layout dir, manifest, config) of a local OCI layout given as DIR or DIR:TAG."""
    layout, tag = Path(ref), None
    if not layout.is_dir() and ":" in ref:
        d, _, tag = ref.rpartition(":")
        layout = Path(d)
    index_file = layout / "index.json"
    if not index_file.is_file():
        raise CondastackError(f"--oci-base {ref}: not an OCI image layout folder (no index.json). "
                              "Make one with `skopeo copy docker://IMAGE oci:DIR:TAG`.")
    try:
        index = json.loads(index_file.read_text())
        manifests = list(index.get("manifests", []))
        if tag is not None:
            manifests = [m for m in manifests if m.get("annotations", {}).get(_REF_NAME) == tag]
        if len(manifests) != 1:
            tags = [m.get("annotations", {}).get(_REF_NAME) for m in index.get("manifests", [])]
            raise CondastackError(f"--oci-base {ref}: expected one image, found {len(manifests)} "
                                  f"(tags: {', '.join(str(t) for t in tags) or 'none'}). Use DIR:TAG.")
        desc = manifests[0]
        manifest = json.loads(_blob_path(layout, desc["digest"]).read_text())
        if manifest.get("mediaType") == _OCI_INDEX or "manifests" in manifest:
            raise CondastackError(f"--oci-base {ref}: a multi-platform index; copy one platform "
                                  "(skopeo copy --override-arch ...) into the layout first.")
        config = json.loads(_blob_path(layout, manifest["config"]["digest"]).read_text())
        for lay in manifest.get("layers", []):
            if not _blob_path(layout, lay["digest"]).is_file():
                raise CondastackError(f"--oci-base {ref}: layer blob {lay['digest']} is missing.")
    except (OSError, ValueError, KeyError) as e:
        raise CondastackError(f"--oci-base {ref}: unreadable OCI layout ({e}).") from None
    return layout, manifest, config


@dataclass(frozen=True)
class EnvLayer:
    """One image layer made from one packed archive (a stack layer's env, or a child's delta)."""

    layer: str
    archive: Path
    archive_sha256: str
    digest: str
    diff_id: str
    size: int
    whiteouts: int = 0


@dataclass(frozen=True)
class OciResult:
    path: Path
    manifest_digest: str
    layer_digest: str  # the top env layer (LAYER's archive or delta)
    diff_id: str
    layer_size: int
    tag: str
    base_layers: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    env_layers: tuple[EnvLayer, ...] = ()


def _created() -> str:

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _default_command(spec: ContainerSpec, has_base: bool) -> list[str]:
    if spec.command:
        return list(spec.command)
    if has_base:
        return ["/bin/sh"]
    # A scratch image has no shell: run the env's python if there is one, else nothing useful.
    return [f"{spec.prefix}/bin/python"]


def _image_config(spec: ContainerSpec, config: dict[str, Any], base: str | None,
                  layers: tuple[EnvLayer, ...]) -> dict[str, Any]:
    """The image config: the base image's (if any) with the env's variables, labels, user and layers added."""
    arch = OCI_ARCH[spec.platform]
    if config and config.get("architecture") not in (None, arch):
        raise CondastackError(f"--oci-base {base}: image is {config.get('architecture')}, "
                              f"but layer '{spec.layer}' is {spec.platform} ({arch}).")
    cfg = dict(config.get("config") or {})
    base_env = dict(e.split("=", 1) for e in cfg.get("Env") or [] if "=" in e)
    new_env = spec.env(base_env.get("PATH", DEFAULT_PATH))
    base_env.update(new_env)
    # The base image's own variables pass as they are; ours go through the gate (names, NUL).
    cfg["Env"] = [quoting.oci_env(k, v) if k in new_env else f"{k}={v}" for k, v in base_env.items()]
    cfg["Labels"] = {**(cfg.get("Labels") or {}), **spec.labels}
    if len(layers) > 1:
        cfg["Labels"][f"{LABEL_NS}.env-layers"] = " ".join(lay.layer for lay in layers)
    cfg["User"] = spec.user
    cfg["Cmd"] = _default_command(spec, base is not None)
    cfg.setdefault("WorkingDir", "/")
    created = _created()
    return {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers",
                   "diff_ids": [*((config.get("rootfs") or {}).get("diff_ids") or []),
                                *(lay.diff_id for lay in layers)]},
        "history": [*(config.get("history") or []),
                    *({"created": created, "created_by": f"condastack container {spec.layer} --prefix {spec.prefix}",
                       "comment": f"environment of layer {lay.layer}: {lay.archive.name} ({lay.archive_sha256})"}
                      for lay in layers)],
    }


def _tar_layout(work: Path, output: Path, base_layers: list[dict[str, Any]], base_dir: Path | None) -> None:
    """The OCI layout at `work` (plus the base layout's blobs) as one tar at `output`."""
    blob_files = sorted(p for p in (work / "blobs" / "sha256").iterdir() if p.is_file())
    with atomic_path(output) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("oci-layout", "index.json"):
            tar.add(work / name, arcname=name)
        for d in ("blobs", "blobs/sha256"):
            tar.add(work / d, arcname=d, recursive=False)
        for lay in base_layers:  # base blobs are streamed from the base layout, not copied twice
            assert base_dir is not None
            tar.add(_blob_path(base_dir, lay["digest"]), arcname=f"blobs/{lay['digest'].replace(':', '/')}")
        for p in blob_files:
            tar.add(p, arcname=f"blobs/sha256/{p.name}")


def _write_env_layers(work: Path, archives: list[PackedArchive], prefix: str,
                      level: int) -> tuple[EnvLayer, ...]:
    out = []
    for a in archives:
        tmp_blob = work / "layer.tmp"
        digest, diff_id, size, hidden = _write_env_layer(a, prefix, tmp_blob, level)
        os.replace(tmp_blob, _blob_path(work, digest))
        out.append(EnvLayer(layer=a.layer or "?", archive=a.path, archive_sha256=a.sha256, digest=digest,
                            diff_id=diff_id, size=size, whiteouts=hidden))
    return tuple(out)


def write_oci_archive(spec: ContainerSpec, output: Path, *, base: str | None = None, tag: str | None = None,
                      compresslevel: int = 6, layers: list[PackedArchive] | None = None) -> OciResult:
    """Write an OCI image archive (`oci-archive:` for skopeo/apptainer).

    The env is one layer made from `spec.archive`, or with `layers` (root first: a full archive, then
    deltas, as `layers.layer_chain` gives) one layer per archive. With `base` (a local OCI layout, DIR
    or DIR:TAG) its layers and config come first; otherwise the image is scratch and holds only the env.
    """
    output = Path(output)
    tag = tag or spec.layer
    archives = layers or [dataclasses.replace(spec.archive, layer=spec.archive.layer or spec.layer)]
    work = make_tempdir(output.parent, output.name)
    try:
        (work / "blobs" / "sha256").mkdir(parents=True)
        env_layers = _write_env_layers(work, archives, spec.prefix, compresslevel)

        base_layers: list[dict[str, Any]] = []
        config: dict[str, Any] = {}
        base_dir: Path | None = None
        if base is not None:
            base_dir, bman, config = _read_base_layout(base)
            base_layers = list(bman.get("layers", []))
        arch = OCI_ARCH[spec.platform]
        image_config = _image_config(spec, config, base, env_layers)
        if len(image_config["rootfs"]["diff_ids"]) != len(base_layers) + len(env_layers):
            raise CondastackError(f"--oci-base {base}: its config lists "
                                  f"{len(image_config['rootfs']['diff_ids']) - len(env_layers)} "
                                  f"layers but its manifest {len(base_layers)}; the layout is inconsistent.")
        cfg_digest, cfg_size = _write_json_blob(work, image_config)
        sbom = _sbom_annotations(work, spec)

        manifest = {
            "schemaVersion": 2,
            "mediaType": _OCI_MANIFEST,
            "config": {"mediaType": _OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": [*base_layers, *({"mediaType": _OCI_LAYER_GZIP, "digest": lay.digest, "size": lay.size}
                                       for lay in env_layers)],
            "annotations": {f"{LABEL_NS}.layer": spec.layer, **sbom},
        }
        man_digest, man_size = _write_json_blob(work, manifest)
        index = {
            "schemaVersion": 2,
            "mediaType": _OCI_INDEX,
            "manifests": [{"mediaType": _OCI_MANIFEST, "digest": man_digest, "size": man_size,
                           "annotations": {_REF_NAME: tag},
                           "platform": {"architecture": arch, "os": "linux"}}],
        }
        (work / "index.json").write_text(json.dumps(index, indent=2))
        (work / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

        _tar_layout(work, output, base_layers, base_dir)
    finally:
        remove_path(work)
    top = env_layers[-1]
    return OciResult(path=output, manifest_digest=man_digest, layer_digest=top.digest, diff_id=top.diff_id,
                     layer_size=top.size, tag=tag, base_layers=len(base_layers), config=image_config,
                     env_layers=env_layers)
