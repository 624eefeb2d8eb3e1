"""Thin containers without Docker: Dockerfile.thin, an Apptainer definition, an OCI archive.

A thin container is a small base image plus one packed environment at a
fixed prefix. The environment comes from a `--dest-prefix` archive made by
`condastack pack`, so its placeholders already hold the container prefix and
nothing has to run inside the image but `tar`: no conda, no micromamba, no
compilers. The OCI archive is written here in plain Python (tar + sha256 +
JSON), with the environment as one gzip layer on top of an optional base
image given as a local OCI layout; no daemon, skopeo or umoci is needed to
make it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from condastack.core import layout
from condastack.core.errors import CondastackError
from condastack.core.fs import (
    atomic_path,
    atomic_write_text,
    make_tempdir,
    remove_path,
    sha256_file,
)
from condastack.env.prefix import Env
from condastack.spec.stack import Stack, load_stack

DEFAULT_PREFIX = "/opt/env"
DEFAULT_USER = "1000:1000"
DOCKERFILE = "Dockerfile.thin"
LABEL_NS = "org.condastack"
# Docker's PATH when an image sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The newest CUDA *base* image tag of each CUDA minor release. The stack's
# __cuda is the driver's CUDA version on the target nodes, so the image's CUDA
# must not be newer than it.
CUDA_BASE_TAGS = {
    "11.8": "11.8.0", "12.0": "12.0.1", "12.1": "12.1.1", "12.2": "12.2.2", "12.3": "12.3.2",
    "12.4": "12.4.1", "12.5": "12.5.1", "12.6": "12.6.3", "12.8": "12.8.1", "12.9": "12.9.1",
    "13.0": "13.0.0",
}
# Base distributions and their glibc: an image must bring a glibc at least as
# new as the stack's __glibc. Oldest first, so the smallest fit is chosen.
UBUNTU_GLIBC = (("ubuntu22.04", "2.35"), ("ubuntu24.04", "2.39"))
DEBIAN_GLIBC = (("debian:bookworm-slim", "2.36"), ("debian:trixie-slim", "2.41"))

_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_REF_NAME = "org.opencontainers.image.ref.name"
_ARCH = {"linux-64": "amd64", "linux-aarch64": "arm64", "linux-ppc64le": "ppc64le"}


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PackedArchive:
    """A `--dest-prefix` archive of one layer and what its manifest says."""

    path: Path
    sha256: str
    fmt: str  # "tar.gz" | "tar.zst" | "tar"
    dest_prefix: str | None
    lock_hash: str
    platform: str | None
    max_prefix_len: int | None  # shortest binary placeholder, None if unknown


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the generators need; built by `container_spec`."""

    stack_name: str
    layer: str
    platform: str
    prefix: str
    base_image: str
    archive: PackedArchive
    user: str = DEFAULT_USER
    ld_library_path: bool = False
    command: tuple[str, ...] = ()
    env_vars: tuple[tuple[str, str], ...] = ()  # the layer's environment.yml `variables:`

    @property
    def labels(self) -> dict[str, str]:
        return {
            f"{LABEL_NS}.stack": self.stack_name,
            f"{LABEL_NS}.layer": self.layer,
            f"{LABEL_NS}.platform": self.platform,
            f"{LABEL_NS}.prefix": self.prefix,
            f"{LABEL_NS}.lock-hash": self.archive.lock_hash,
            f"{LABEL_NS}.archive-sha256": self.archive.sha256,
        }

    def env(self, base_path: str = DEFAULT_PATH) -> dict[str, str]:
        """The variables the image sets (PATH first so the env's programs win)."""
        out = {"PATH": f"{self.prefix}/bin:{base_path}", "CONDA_PREFIX": self.prefix}
        if self.ld_library_path:
            out["LD_LIBRARY_PATH"] = f"{self.prefix}/lib"
        return {**dict(self.env_vars), **out}


def archive_format(path: Path) -> str:
    name = path.name
    for fmt in ("tar.gz", "tar.zst", "tar"):
        if name.endswith("." + fmt):
            return fmt
    if name.endswith(".tgz"):
        return "tar.gz"
    raise CondastackError(f"{path}: not a tar archive (.tar.gz, .tar.zst or .tar expected).")


def _binary_placeholder_len(manifest: dict[str, Any]) -> int | None:
    """The shortest binary placeholder recorded in a pack manifest (None if none)."""
    lengths: list[int] = []
    records = manifest.get("placeholders") or []
    for rec in records if isinstance(records, list) else []:
        if not isinstance(rec, dict):
            continue
        mode, ph = rec.get("mode"), rec.get("placeholder")
        if mode == "binary" and isinstance(ph, str):
            lengths.append(len(ph))
    return min(lengths) if lengths else None


def env_max_prefix_len(env: Path) -> int | None:
    """The shortest binary placeholder of a built env's packages (from its records), None if none."""
    return Env(env).min_binary_placeholder()


def _elf_dynamic(path: Path) -> tuple[list[str], bool] | None:
    """(DT_NEEDED names, has RPATH or RUNPATH) of a 64-bit little-endian ELF file, None if not one."""
    from condastack.core.elf import read_elf_dynamic

    d = read_elf_dynamic(path)
    return None if d is None else (list(d.needed), d.has_rpath)


def env_needs_ld_library_path(env: Path) -> bool:
    """True if a program in the env's bin/ needs a library from its lib/ but has no RPATH/RUNPATH.

    conda packages find their libraries through RPATH ($ORIGIN/../lib), so this is
    normally False and the image does not set LD_LIBRARY_PATH.
    """
    env = Path(env)
    libs = {p.name for p in (env / "lib").glob("*.so*")} if (env / "lib").is_dir() else set()
    for exe in sorted((env / "bin").iterdir()) if (env / "bin").is_dir() else []:
        if exe.is_symlink() or not exe.is_file():
            continue
        dyn = _elf_dynamic(exe)
        if dyn is not None and not dyn[1] and any(n in libs for n in dyn[0]):
            return True
    return False


def read_archive(path: Path) -> PackedArchive:
    """Read an archive's `.sha256` and `.manifest.json` sidecars (sha256 is computed if absent)."""
    path = Path(path)
    if not path.is_file():
        raise CondastackError(f"archive not found: {path}.")
    fmt = archive_format(path)
    manifest: dict[str, Any] = {}
    mpath = path.with_name(path.name + ".manifest.json")
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise CondastackError(f"{mpath}: unreadable archive manifest ({e}). Pack the layer again.") from None
    spath = path.with_name(path.name + ".sha256")
    digest = spath.read_text().split()[0] if spath.is_file() and spath.read_text().split() else sha256_file(path)
    lock_hash = manifest.get("lock_hash") or "unknown"
    dest = manifest.get("dest_prefix")
    return PackedArchive(
        path=path,
        sha256=digest,
        fmt=fmt,
        dest_prefix=str(dest) if dest else None,
        lock_hash=str(lock_hash),
        platform=manifest.get("platform") or None,
        max_prefix_len=_binary_placeholder_len(manifest),
    )


def gzip_copy(src: PackedArchive) -> PackedArchive:
    """A gzip copy of a .tar.zst archive beside it (`zstd -dc | pigz`, streamed), with its sidecars;
    reused while it was made from the same archive. Docker's ADD and a base image's tar read gzip."""
    out = src.path.with_name(src.path.name[: -len(".tar.zst")] + ".tar.gz")
    mpath, spath = (out.with_name(out.name + s) for s in (".manifest.json", ".sha256"))
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        made = json.loads(mpath.read_text())
        if made["converted_from"]["sha256"] == src.sha256 and out.is_file():
            return read_archive(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as sink:
        dec = subprocess.Popen(["zstd", "-dcq", str(src.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gz = subprocess.run(["pigz", "-n", "-6", "-c"], stdin=dec.stdout, stdout=sink, stderr=subprocess.PIPE)
        dec.stdout.close()
        err = dec.stderr.read().decode(errors="replace").strip()
        if dec.wait() != 0 or gz.returncode != 0:
            raise CondastackError(f"{src.path}: converting it to gzip failed: {err or gz.stderr.decode().strip()}")
        sink.flush()
        digest = sha256_file(tmp)
        manifest: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads(src.path.with_name(src.path.name + ".manifest.json").read_text())
        manifest.update(format="tar.gz", archive=out.name, sha256=digest, size=tmp.stat().st_size,
                        converted_from={"archive": src.path.name, "sha256": src.sha256})
        atomic_write_text(mpath, json.dumps(manifest, indent=1) + "\n")
        atomic_write_text(spath, f"{digest}  {out.name}\n")
    return read_archive(out)


def pack_command(layer: str, prefix: str) -> str:
    return f"condastack pack {layer} --format tar.gz --dest-prefix {prefix}"


def _candidates(pack_dir: Path, layer: str, platform: str) -> list[Path]:
    if not pack_dir.is_dir():
        return []
    stem = f"{layer}-{platform}"
    out = [p for p in sorted(pack_dir.iterdir())
           if p.is_file() and p.name.startswith(stem)
           and any(p.name.endswith(s) for s in (".tar.gz", ".tgz", ".tar.zst", ".tar"))]
    # gzip first: Docker's ADD and every base image can extract it.
    return sorted(out, key=lambda p: (archive_format(p) != "tar.gz", p.name))


def check_prefix(prefix: str, archive: PackedArchive | None = None) -> str:
    """Validate the container prefix (absolute, clean, short enough for the placeholders)."""
    if not prefix.startswith("/") or prefix == "/":
        raise CondastackError(f"--prefix {prefix!r}: the container prefix must be an absolute folder such as /opt/env.")
    norm = posixpath.normpath(prefix)
    if norm != prefix.rstrip("/") or any(c in prefix for c in " \t\n'\"$\\`"):
        raise CondastackError(f"--prefix {prefix!r}: use a plain absolute path without '..', spaces or quotes (e.g. /opt/env).")
    if archive is not None and archive.max_prefix_len is not None and len(norm) > archive.max_prefix_len:
        raise CondastackError(
            f"--prefix {norm} is {len(norm)} characters, but {archive.path.name} holds binary placeholders of "
            f"only {archive.max_prefix_len}: a longer prefix cannot be patched into its binaries. "
            f"Choose a prefix of at most {archive.max_prefix_len} characters (e.g. {DEFAULT_PREFIX})."
        )
    return norm


def find_archive(root: Path, layer: str, platform: str, prefix: str, archive: Path | None = None) -> PackedArchive:
    """The layer's archive packed for `prefix`, or a CondastackError naming the pack command."""
    if archive is not None:
        found = read_archive(Path(archive))
        if found.dest_prefix is not None and found.dest_prefix.rstrip("/") != prefix:
            raise CondastackError(
                f"{found.path}: packed for --dest-prefix {found.dest_prefix}, not {prefix}. "
                f"Run `{pack_command(layer, prefix)}`, or pass --prefix {found.dest_prefix}."
            )
        check_prefix(prefix, found)
        return found
    pack_dir = layout.pack_dir(root)
    others: list[PackedArchive] = []
    for path in _candidates(pack_dir, layer, platform):
        info = read_archive(path)
        if info.dest_prefix is not None and info.dest_prefix.rstrip("/") == prefix:
            check_prefix(prefix, info)
            return info
        others.append(info)
    for info in others:  # a too-long prefix is the real problem, not the missing archive
        check_prefix(prefix, info)
    env_limit = env_max_prefix_len(layout.env_prefix(root, layer))
    if env_limit is not None and len(prefix) > env_limit:
        raise CondastackError(
            f"--prefix {prefix} is {len(prefix)} characters, but the environment of layer '{layer}' holds binary "
            f"placeholders of only {env_limit}: a longer prefix cannot be patched into its binaries. "
            f"Choose a prefix of at most {env_limit} characters (e.g. {DEFAULT_PREFIX})."
        )
    seen = ", ".join(f"{o.path.name} (dest prefix {o.dest_prefix or 'none'})" for o in others)
    raise CondastackError(
        f"layer '{layer}': no archive for {platform} packed with --dest-prefix {prefix} in {pack_dir}"
        + (f" (found {seen})" if seen else "")
        + f". Run `{pack_command(layer, prefix)}` first, or pass --archive FILE."
    )


# --------------------------------------------------------------------------- base image


def _ver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3]) or (0,)


def default_base_image(virtual_packages: dict[str, str]) -> str:
    """A small base image that fits the stack's __cuda and __glibc."""
    glibc = virtual_packages.get("__glibc")
    cuda = virtual_packages.get("__cuda")
    if cuda:
        want = _ver(cuda)[:2]
        fits = [k for k in CUDA_BASE_TAGS if _ver(k) <= want and _ver(k)[0] == want[0]]
        if not fits:
            raise CondastackError(
                f"__cuda {cuda}: no known CUDA base image for it (known: {', '.join(CUDA_BASE_TAGS)}). "
                "Pass --base-image, e.g. nvidia/cuda:<version>-base-ubuntu22.04."
            )
        tag = CUDA_BASE_TAGS[max(fits, key=_ver)]
        distro = _fit_glibc(UBUNTU_GLIBC, glibc)
        return f"nvidia/cuda:{tag}-base-{distro}"
    return _fit_glibc(DEBIAN_GLIBC, glibc)


def _fit_glibc(table: tuple[tuple[str, str], ...], glibc: str | None) -> str:
    for name, have in table:
        if glibc is None or _ver(have) >= _ver(glibc):
            return name
    raise CondastackError(
        f"__glibc {glibc}: newer than every known base image ({', '.join(n for n, _ in table)}). Pass --base-image."
    )


def default_layer(stack: Stack) -> str:
    """The layer a bare `container` uses: the stack's first leaf (the main application layer)."""
    leaves = [n for n in stack.layers if not stack.children(n)]
    return leaves[0] if leaves else next(iter(stack.layers))


def container_spec(root: Path, layer: str | None = None, *, stack: Stack | None = None, prefix: str = DEFAULT_PREFIX,
                   base_image: str | None = None, platform: str | None = None, archive: Path | None = None,
                   ld_library_path: bool | None = None, command: tuple[str, ...] = (),
                   user: str = DEFAULT_USER) -> ContainerSpec:
    """Resolve the layer, its archive and the base image.

    `ld_library_path` None means: set it only if the built env (envs/LAYER) has a
    program that needs it (see `env_needs_ld_library_path`).
    """
    stack = stack or load_stack(root)
    name = layer or default_layer(stack)
    stack.layer(name)  # unknown layer -> CondastackError naming the known ones
    plat = platform or stack.default_platform
    if plat not in stack.platforms:
        raise CondastackError(f"{stack.file}: platform {plat} is not one of the stack's ({', '.join(stack.platforms)}).")
    if plat not in _ARCH:
        raise CondastackError(f"platform {plat}: containers are built for Linux platforms only ({', '.join(_ARCH)}).")
    if not re.fullmatch(r"\d+(:\d+)?|[a-z_][a-z0-9_-]*(:[a-z_][a-z0-9_-]*)?", user) or user.split(":")[0] in ("0", "root"):
        raise CondastackError(f"--user {user!r}: give a non-root user, e.g. {DEFAULT_USER}.")
    prefix = check_prefix(prefix)
    packed = find_archive(stack.root, name, plat, prefix, archive)
    base = base_image or default_base_image(stack.virtual_packages_for(plat))
    if ld_library_path is None:
        ld_library_path = env_needs_ld_library_path(layout.env_prefix(stack.root, name))
    return ContainerSpec(stack_name=stack.name, layer=name, platform=plat, prefix=prefix, base_image=base,
                         archive=packed, user=user, ld_library_path=ld_library_path, command=tuple(command),
                         env_vars=tuple(stack.variables_for(name).items()))


# --------------------------------------------------------------------------- Dockerfile


_PLAIN = re.compile(r"[\w/.:$+@%,-]*")  # an ENV value Docker reads as written, unquoted


def _q(value: str) -> str:
    return json.dumps(value)


def _need_gzip(spec: ContainerSpec) -> None:
    if spec.archive.fmt != "tar.gz":
        raise CondastackError(
            f"{spec.archive.path}: Dockerfile.thin and the Apptainer definition extract a gzip archive only "
            f"(Docker's ADD and the base image's tar cannot read {spec.archive.fmt}). "
            f"Run `{pack_command(spec.layer, spec.prefix)}` (--oci alone reads {spec.archive.fmt})."
        )


_RUN_LABELS = (f"{LABEL_NS}.lock-hash", f"{LABEL_NS}.archive-sha256")


def render_dockerfile(spec: ContainerSpec, context: Path, dockerfile: Path | None = None) -> str:
    """Dockerfile.thin: FROM base, ADD (extract) the archive at the prefix, env, labels, non-root USER.

    `context` is the docker build context (the project folder); the archive must lie inside it.
    """
    _need_gzip(spec)
    try:
        src = spec.archive.path.resolve().relative_to(Path(context).resolve()).as_posix()
    except ValueError:
        raise CondastackError(
            f"{spec.archive.path}: the archive must lie inside the build context {context} (put it under pack/)."
        ) from None
    env = spec.env("$PATH")
    cmd = list(spec.command) or ["/bin/sh"]
    df = os.path.relpath(Path(dockerfile).resolve(), Path(context).resolve()) if dockerfile else DOCKERFILE
    # Only what the stack decides: the lock hash and the archive's sha256 change with every channel
    # and re-pack, and a committed Dockerfile should not (they are in the image's ADDed files,
    # the archive's .sha256 sidecar, the Apptainer definition and the OCI config).
    labels = " \\\n      ".join(f"{k}={_q(v)}" for k, v in spec.labels.items() if k not in _RUN_LABELS)
    envs = " \\\n    ".join(f"{k}={v if _PLAIN.fullmatch(v) else _q(v)}" for k, v in env.items())
    return f"""\
# Thin container for layer '{spec.layer}' of stack '{spec.stack_name}' ({spec.platform}).
# Written by `condastack container`; regenerate it instead of editing it.
# The archive comes from `{pack_command(spec.layer, spec.prefix)}`.
# Build in the project folder (the context):  docker build -f {df} -t {spec.stack_name}-{spec.layer} .
FROM {spec.base_image}

LABEL {labels}

# ADD extracts the local gzip tar at the prefix; the archive itself stays out of the image,
# and nothing else (no conda, no compiler) is installed.
ADD {src} {spec.prefix}/

ENV {envs}

USER {spec.user}
WORKDIR /tmp
CMD {json.dumps(cmd)}
"""


# --------------------------------------------------------------------------- Apptainer


def render_apptainer(spec: ContainerSpec, def_dir: Path) -> str:
    """An Apptainer definition from the same base; %files paths are relative to `def_dir`."""
    _need_gzip(spec)
    src = os.path.relpath(spec.archive.path.resolve(), Path(def_dir).resolve())
    staged = f"/tmp/condastack-{spec.layer}.tar.gz"
    user_vars = dict(spec.env_vars)
    env = "\n".join(f"    export {k}={shlex.quote(v)}" if k in user_vars and user_vars[k] == v else f"    export {k}=\"{v}\""
                     for k, v in spec.env("$PATH").items())
    labels = "\n".join(f"    {k} {v}" for k, v in spec.labels.items())
    return f"""\
# Apptainer definition for layer '{spec.layer}' of stack '{spec.stack_name}' ({spec.platform}).
# Written by `condastack container`. Build it from the folder that holds this file:
#   apptainer build {spec.stack_name}-{spec.layer}.sif {spec.layer}.def
Bootstrap: docker
From: {spec.base_image}

%files
    {src} {staged}

%post
    echo "{spec.archive.sha256}  {staged}" | sha256sum -c -
    mkdir -p {spec.prefix}
    tar -xzf {staged} -C {spec.prefix} --no-same-owner
    rm -f {staged}
    chmod -R a+rX {spec.prefix}

%environment
{env}

%labels
{labels}

%runscript
    # `apptainer run IMAGE prog args` runs prog from the env; no arguments gives a shell.
    if [ "$#" -eq 0 ]; then exec /bin/sh; fi
    exec "$@"

%help
    Layer '{spec.layer}' of '{spec.stack_name}' at {spec.prefix} (lock {spec.archive.lock_hash}).
"""


# --------------------------------------------------------------------------- OCI archive


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
    norm = posixpath.normpath(name.lstrip("/")) if name not in ("", ".", "./") else "."
    if norm.startswith("../") or norm == "..":
        raise CondastackError(f"{archive}: member {name!r} points outside the environment; the archive is unsafe.")
    return norm


def _write_env_layer(src: PackedArchive, prefix: str, blob: Path, level: int) -> tuple[str, str, int]:
    """Re-root the archive's members under `prefix` into a gzip layer; returns (digest, diff_id, size)."""
    root = prefix.strip("/")
    with open(blob, "wb") as raw:
        outer = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=outer, compresslevel=level, mtime=0) as gz:  # type: ignore[arg-type]
            inner = _HashingWriter(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as out:  # type: ignore[arg-type]
                parts = root.split("/")
                for i in range(1, len(parts) + 1):  # parents of the prefix, world-readable
                    d = tarfile.TarInfo("/".join(parts[:i]))
                    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
                    out.addfile(d)
                with _open_tar_stream(src.path, src.fmt) as tf:
                    for m in tf:
                        name = _safe_member_name(m.name, src.path)
                        if name == ".":
                            continue  # the prefix folder itself is written above
                        m.name = f"{root}/{name}"
                        if m.islnk():  # hard links name another member: re-root them too
                            m.linkname = f"{root}/{_safe_member_name(m.linkname, src.path)}"
                        m.uid = m.gid = 0
                        m.uname = m.gname = "root"
                        out.addfile(m, tf.extractfile(m) if m.isreg() else None)
            inner_digest = inner.digest
    return outer.digest, inner_digest, outer.size


def _write_json_blob(layout: Path, obj: dict) -> tuple[str, int]:
    """Write `obj` as a canonical JSON blob; returns its digest and size."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob_path(layout, digest).write_bytes(data)
    return digest, len(data)


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
class OciResult:
    path: Path
    manifest_digest: str
    layer_digest: str
    diff_id: str
    layer_size: int
    tag: str
    base_layers: int = 0
    config: dict[str, Any] = field(default_factory=dict)


def _created() -> str:
    import datetime as _dt

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _default_command(spec: ContainerSpec, has_base: bool) -> list[str]:
    if spec.command:
        return list(spec.command)
    if has_base:
        return ["/bin/sh"]
    # A scratch image has no shell: run the env's python if there is one, else nothing useful.
    return [f"{spec.prefix}/bin/python"]


def _image_config(spec: ContainerSpec, config: dict[str, Any], base: str | None, diff_id: str) -> dict[str, Any]:
    """The image config: the base image's (if any) with the env's variables, labels, user and layer added."""
    arch = _ARCH[spec.platform]
    if config and config.get("architecture") not in (None, arch):
        raise CondastackError(f"--oci-base {base}: image is {config.get('architecture')}, "
                              f"but layer '{spec.layer}' is {spec.platform} ({arch}).")
    cfg = dict(config.get("config") or {})
    base_env = dict(e.split("=", 1) for e in cfg.get("Env") or [] if "=" in e)
    new_env = spec.env(base_env.get("PATH", DEFAULT_PATH))
    base_env.update(new_env)
    cfg["Env"] = [f"{k}={v}" for k, v in base_env.items()]
    cfg["Labels"] = {**(cfg.get("Labels") or {}), **spec.labels}
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
                   "diff_ids": [*((config.get("rootfs") or {}).get("diff_ids") or []), diff_id]},
        "history": [*(config.get("history") or []),
                    {"created": created, "created_by": f"condastack container {spec.layer} --prefix {spec.prefix}",
                     "comment": f"environment {spec.archive.path.name} ({spec.archive.sha256})"}],
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


def write_oci_archive(spec: ContainerSpec, output: Path, *, base: str | None = None, tag: str | None = None,
                      compresslevel: int = 6) -> OciResult:
    """Write an OCI image archive (`oci-archive:` for skopeo/apptainer) with the env as one layer.

    With `base` (a local OCI layout, DIR or DIR:TAG) its layers and config come first;
    otherwise the image is scratch and holds only the environment.
    """
    output = Path(output)
    tag = tag or spec.layer
    work = make_tempdir(output.parent, output.name)
    try:
        blobs = work / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        tmp_blob = work / "layer.tmp"
        digest, diff_id, size = _write_env_layer(spec.archive, spec.prefix, tmp_blob, compresslevel)
        os.replace(tmp_blob, _blob_path(work, digest))

        base_layers: list[dict[str, Any]] = []
        config: dict[str, Any] = {}
        base_dir: Path | None = None
        if base is not None:
            base_dir, bman, config = _read_base_layout(base)
            base_layers = list(bman.get("layers", []))
        arch = _ARCH[spec.platform]
        image_config = _image_config(spec, config, base, diff_id)
        if len(image_config["rootfs"]["diff_ids"]) != len(base_layers) + 1:
            raise CondastackError(f"--oci-base {base}: its config lists {len(image_config['rootfs']['diff_ids']) - 1} "
                                  f"layers but its manifest {len(base_layers)}; the layout is inconsistent.")
        cfg_digest, cfg_size = _write_json_blob(work, image_config)

        manifest = {
            "schemaVersion": 2,
            "mediaType": _OCI_MANIFEST,
            "config": {"mediaType": _OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": [*base_layers, {"mediaType": _OCI_LAYER_GZIP, "digest": digest, "size": size}],
            "annotations": {f"{LABEL_NS}.layer": spec.layer},
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
    return OciResult(path=output, manifest_digest=man_digest, layer_digest=digest, diff_id=diff_id,
                     layer_size=size, tag=tag, base_layers=len(base_layers), config=image_config)


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class ContainerResult:
    spec: ContainerSpec
    dockerfile: Path | None
    apptainer: Path | None
    oci: OciResult | None
    oci_contents: str | None = None  # what the OCI image holds, in words


def make_container(root: Path | str, layer: str | None = None, *, base_image: str | None = None,
                   prefix: str = DEFAULT_PREFIX, oci: Path | None = None, oci_base: str | None = None,
                   apptainer: Path | None = None, dockerfile: Path | None = None, archive: Path | None = None,
                   platform: str | None = None, ld_library_path: bool | None = None,
                   command: tuple[str, ...] = (), user: str = DEFAULT_USER) -> ContainerResult:
    """`condastack container`: write Dockerfile.thin, the Apptainer definition and, with `oci`, an OCI archive.

    The Dockerfile goes to ROOT/Dockerfile.thin for the default layer and to
    pack/<layer>.Dockerfile for others (or `dockerfile`); the definition to
    pack/<layer>.def (or `apptainer`), next to the archive.
    """
    root = Path(root).resolve()
    explicit_files = dockerfile is not None or apptainer is not None
    stack = load_stack(root)
    spec = container_spec(root, layer, stack=stack, prefix=prefix, base_image=base_image, platform=platform, archive=archive,
                          ld_library_path=ld_library_path, command=command, user=user)
    if dockerfile is None:
        is_default = spec.layer == default_layer(stack)
        dockerfile = root / DOCKERFILE if is_default else layout.pack_dir(root) / f"{spec.layer}.Dockerfile"
    if apptainer is None:
        apptainer = spec.archive.path.parent / f"{spec.layer}.def"
    # The Dockerfile and the definition extract with the base image's tar, which reads gzip only;
    # the OCI writer reads any of our formats. So a .tar.zst archive is fine for --oci alone
    # (then no Dockerfile or definition is written unless asked for, which is an error).
    texts: dict[Path, str] = {}
    if spec.archive.fmt == "tar.zst" and (oci is None or explicit_files):
        spec = dataclasses.replace(spec, archive=gzip_copy(spec.archive))
    if spec.archive.fmt == "tar.gz" or oci is None or explicit_files:
        texts[Path(dockerfile)] = render_dockerfile(spec, root, Path(dockerfile))
        texts[Path(apptainer)] = render_apptainer(spec, Path(apptainer).parent)
    oci_result, contents = None, None
    if oci is not None:
        oci_base, contents = _oci_base(stack, spec, oci_base)
        oci_result = write_oci_archive(spec, Path(oci), base=oci_base)
    for path, text in texts.items():
        atomic_write_text(path, text)
    return ContainerResult(spec=spec, dockerfile=Path(dockerfile) if texts else None,
                           apptainer=Path(apptainer) if texts else None, oci=oci_result, oci_contents=contents)


def _oci_base(stack: Stack, spec: ContainerSpec, oci_base: str | None) -> tuple[str | None, str]:
    """The base layout for --oci and a sentence on what the image holds. No --oci-base: a minimal
    Debian fitting the stack's __glibc (an env alone has no C library to run on); "scratch": none."""
    env = f"layer {spec.layer} at {spec.prefix}"
    if oci_base == "scratch":
        return None, f"{env} only (scratch: no C library, the image cannot run programs on its own)"
    if oci_base is not None:
        return oci_base, f"{env} on the local OCI image {oci_base}"
    from condastack.container.baseimage import debian_base

    base = debian_base(stack.virtual_packages_for(spec.platform).get("__glibc"), spec.platform)
    return base.ref, f"{env} on {base.description}"


def shlex_command(text: str | None) -> tuple[str, ...]:
    return tuple(shlex.split(text)) if text else ()
