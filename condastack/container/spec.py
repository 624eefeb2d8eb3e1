"""What a thin container is made of: the packed archive of one layer at the container prefix, the base image, and
the values every generator reads (ContainerSpec).
"""


from __future__ import annotations

import contextlib
import dataclasses
import json
import posixpath
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from condastack.archive.manifest import Manifest
from condastack.core import layout
from condastack.core.elf import read_elf_dynamic
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_path, atomic_write_text, sha256_file
from condastack.core.layout import sidecar, sidecars
from condastack.core.platforms import OCI_ARCH
from condastack.env.prefix import Env
from condastack.spec.stack import Stack, load_stack

DEFAULT_PREFIX = "/opt/env"


DEFAULT_USER = "1000:1000"


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
    layer: str | None = None  # the stack layer the manifest names
    # A delta archive (`pack LAYER --over PARENT`): the parent it goes on top of, and the parent's paths it lacks.
    parent_layer: str | None = None
    parent_archive: str | None = None
    parent_sha256: str | None = None
    removed: tuple[str, ...] = ()


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


def _binary_placeholder_len(manifest: Manifest | None) -> int | None:
    """The room, in bytes, of the shortest binary placeholder a pack manifest records (None if none)."""
    lengths = [len(r.placeholder.encode()) for r in (manifest.placeholders if manifest else ()) if r.mode == "binary"]
    return min(lengths) if lengths else None


def env_max_prefix_len(env: Path) -> int | None:
    """The shortest binary placeholder of a built env's packages (from its records), None if none."""
    return Env(env).min_binary_placeholder()


def _elf_dynamic(path: Path) -> tuple[list[str], bool] | None:
    """(DT_NEEDED names, has RPATH or RUNPATH) of a 64-bit little-endian ELF file, None if not one."""

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
    spath, mpath = sidecars(path)
    manifest = Manifest.read(mpath) if mpath.is_file() else None
    digest = spath.read_text().split()[0] if spath.is_file() and spath.read_text().split() else sha256_file(path)
    lock_hash = (manifest.lock_hash if manifest else None) or "unknown"
    dest = manifest.dest_prefix if manifest else None
    return PackedArchive(
        path=path,
        sha256=digest,
        fmt=fmt,
        dest_prefix=str(dest) if dest else None,
        lock_hash=str(lock_hash),
        platform=(manifest.platform if manifest else None) or None,
        max_prefix_len=_binary_placeholder_len(manifest),
        layer=manifest.layer if manifest else None,
        parent_layer=manifest.parent_layer if manifest else None,
        parent_archive=manifest.parent_archive if manifest else None,
        parent_sha256=manifest.parent_sha256 if manifest else None,
        removed=manifest.removed if manifest else (),
    )


def gzip_copy(src: PackedArchive) -> PackedArchive:
    """A gzip copy of a .tar.zst archive beside it (`zstd -dc | pigz`, streamed), with its sidecars;
    reused while it was made from the same archive. Docker's ADD and a base image's tar read gzip."""
    out = src.path.with_name(src.path.name[: -len(".tar.zst")] + ".tar.gz")
    spath, mpath = sidecars(out)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        made = json.loads(mpath.read_text())
        if made["converted_from"]["sha256"] == src.sha256 and out.is_file():
            return read_archive(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as sink:
        dec = subprocess.Popen(["zstd", "-dcq", str(src.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gz = subprocess.run(["pigz", "-n", "-6", "-c"], stdin=dec.stdout, stdout=sink, stderr=subprocess.PIPE)
        assert dec.stdout is not None and dec.stderr is not None  # PIPEs asked for
        dec.stdout.close()
        err = dec.stderr.read().decode(errors="replace").strip()
        if dec.wait() != 0 or gz.returncode != 0:
            raise CondastackError(f"{src.path}: converting it to gzip failed: {err or gz.stderr.decode().strip()}")
        sink.flush()
        digest = sha256_file(tmp)
        src_manifest = sidecar(src.path, "manifest")
        old = Manifest.read(src_manifest) if src_manifest.is_file() else Manifest("tar.zst", src.path.name, src.sha256)
        manifest = dataclasses.replace(old, format="tar.gz", archive=out.name, sha256=digest, size=tmp.stat().st_size,
                                       extra={**old.extra, "converted_from": {"archive": src.path.name,
                                                                              "sha256": src.sha256}})
        atomic_write_text(mpath, manifest.text())
        atomic_write_text(spath, f"{digest}  {out.name}\n")
    return read_archive(out)


def pack_command(layer: str, prefix: str) -> str:
    return f"condastack pack {layer} --format tar.gz --dest-prefix {prefix}"


def pack_candidates(pack_dir: Path, layer: str, platform: str) -> list[Path]:
    """pack/<layer>-<platform>* archives, gzip first (`layer` may be `app-over-base` for deltas)."""
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
        raise CondastackError(f"--prefix {prefix!r}: use a plain absolute path without '..', spaces or quotes "
                              "(e.g. /opt/env).")
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
    for path in pack_candidates(pack_dir, layer, platform):
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
        raise CondastackError(f"{stack.file}: platform {plat} is not one of the stack's "
                              f"({', '.join(stack.platforms)}).")
    if plat not in OCI_ARCH:
        raise CondastackError(f"platform {plat}: containers are built for Linux platforms only "
                              f"({', '.join(OCI_ARCH)}).")
    if (not re.fullmatch(r"\d+(:\d+)?|[a-z_][a-z0-9_-]*(:[a-z_][a-z0-9_-]*)?", user)
            or user.split(":")[0] in ("0", "root")):
        raise CondastackError(f"--user {user!r}: give a non-root user, e.g. {DEFAULT_USER}.")
    prefix = check_prefix(prefix)
    packed = find_archive(stack.root, name, plat, prefix, archive)
    base = base_image or default_base_image(stack.virtual_packages_for(plat))
    if ld_library_path is None:
        ld_library_path = env_needs_ld_library_path(layout.env_prefix(stack.root, name))
    return ContainerSpec(stack_name=stack.name, layer=name, platform=plat, prefix=prefix, base_image=base,
                         archive=packed, user=user, ld_library_path=ld_library_path, command=tuple(command),
                         env_vars=tuple(stack.variables_for(name).items()))


def shlex_command(text: str | None) -> tuple[str, ...]:
    return tuple(shlex.split(text)) if text else ()


