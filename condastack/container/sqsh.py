"""An enroot/pyxis image (`container --sqsh`): one SquashFS of a minimal Debian root with the env at the prefix.

enroot runs a SquashFS of a root filesystem as it is (`enroot create`, or pyxis's
`srun --container-image=app.sqsh`), and Apptainer runs the same file as a SIF's partition. The tree
is made in a temporary folder beside the output: the cached debootstrap rootfs (baseimage.py) without
/dev, the `--dest-prefix` archive extracted through the archive member checks at the prefix (its
placeholders already hold it: nothing is relocated), and the files the runtimes read (imagefiles.py).

Reproducible bytes: mksquashfs (4.4+) is deterministic for one tree; every owner is root (`-all-root`,
as `enroot import` and an unprivileged `apptainer build` make them), there are no xattrs, the image's
creation time is $SOURCE_DATE_EPOCH (default 0), and so are the mtimes of the files written here and of
every folder. Files from the base and the archive keep the mtimes those carry, so the
env's timestamp .pyc files stay valid on the read-only image (python would otherwise compile every
module again at each start and could not save the result).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from condastack.archive.unpack import extract_into
from condastack.container.baseimage import DEFAULT_MIRROR, IMAGE_ADVICE, MIRROR_ENV, debian_suite, rootfs_tarball
from condastack.container.imagefiles import IMAGE_DIRS, image_files
from condastack.container.render import render_apptainer
from condastack.container.spec import ContainerSpec
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_path, make_tempdir, remove_path, sha256_file
from condastack.core.layout import sidecar

DEFAULT_LEVEL = 8  # zstd: 15 packs 6% smaller but takes 20 times as long (a 66 MB image: 110 s against 6 s)


@dataclass(frozen=True)
class SqshResult:
    path: Path
    sha256: str
    size: int
    base: str  # what the image holds besides the env, in words
    suite: str


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH (reproducible-builds.org), 0 when unset: the time written into images."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise CondastackError(f"SOURCE_DATE_EPOCH={raw!r}: must be a whole number of seconds since 1970.")
    return int(raw)


def _run(argv: list[str], what: str) -> None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise CondastackError(f"{what}: `{argv[0]}` is not installed "
                              "(apt-get install squashfs-tools zstd tar).") from None
    if p.returncode != 0:
        raise CondastackError(f"{what} failed: {(p.stderr or p.stdout).strip()[-800:]}")


def _extract_base(tarball: Path, tree: Path) -> None:
    """The Debian rootfs without device nodes (the runtimes mount /dev), owners left to -all-root."""
    _run(["tar", "-I", "zstd -dq", "-x", "-p", "--no-same-owner", "--numeric-owner", "-f", str(tarball),
          "-C", str(tree), "--exclude=./dev/*"], f"extracting the base image {tarball}")


def _mkdirs(tree: Path, rel: str, touched: set[Path]) -> Path:
    """Make tree/rel and its parents (0755); every folder made or changed is recorded in `touched`."""
    path = tree
    for part in Path(rel).parts:
        touched.add(path)
        path = path / part
        if path.is_symlink():  # it may point out of the tree (Debian's /var/run -> /run): never through one
            raise CondastackError(f"the base image has a symlink at /{path.relative_to(tree)}, where the image needs "
                                  "a folder; choose a --prefix that does not pass through it.")
        if not path.is_dir():
            if path.exists():
                raise CondastackError(f"the base image has a file at /{path.relative_to(tree)}, where the image "
                                      "needs a folder; choose another --prefix.")
            path.mkdir(mode=0o755)
            os.chmod(path, 0o755)  # not the umask's
    touched.add(path)
    return path


def _write_files(spec: ContainerSpec, definition: str, tree: Path, touched: set[Path]) -> None:
    for rel in IMAGE_DIRS:
        _mkdirs(tree, rel, touched)
    for f in image_files(spec, definition):
        parent = _mkdirs(tree, str(Path(f.path).parent), touched) if "/" in f.path else tree
        touched.add(parent)
        target = tree / f.path
        if target.is_symlink() or target.exists():
            target.unlink()  # the base's /etc/environment (empty in Debian) is replaced
        if f.link is not None:
            os.symlink(f.link, target)
        else:
            target.write_bytes(f.data)
            os.chmod(target, f.mode)
        touched.add(target)


def build_tree(spec: ContainerSpec, definition: str, tree: Path, base_tarball: Path) -> set[Path]:
    """Fill `tree`: base, env at the prefix, runtime files. Returns the paths whose mtime must be fixed."""
    touched: set[Path] = set()
    _extract_base(base_tarball, tree)
    prefix_dir = _mkdirs(tree, spec.prefix.lstrip("/"), touched)
    if any(prefix_dir.iterdir()):
        raise CondastackError(f"the base image already has files at {spec.prefix}; choose another --prefix.")
    extract_into(spec.archive.path, prefix_dir)
    _write_files(spec, definition, tree, touched)
    return touched


def _fix_mtimes(tree: Path, touched: set[Path], mtime: int) -> None:
    """Every folder (an archive records few of them, so tar leaves the time of extraction) and every file
    written here get `mtime`; files from the base and the archive keep theirs."""
    for path in touched:
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    for folder, _dirs, _files in os.walk(tree):
        os.utime(folder, (mtime, mtime), follow_symlinks=False)


def mksquashfs(tree: Path, out: Path, *, level: int, threads: int, mtime: int) -> None:
    _run(["mksquashfs", str(tree), str(out), "-noappend", "-no-progress", "-quiet", "-comp", "zstd",
          "-Xcompression-level", str(level), "-processors", str(threads), "-all-root", "-no-xattrs",
          "-mkfs-time", str(mtime)], f"mksquashfs {out}")


def image_definition(spec: ContainerSpec, suite: str, def_dir: Path) -> str:
    """The Apptainer definition that builds this image from its parts (kept inside it and in a SIF): the
    same debootstrap minbase, then the archive extracted at the prefix."""
    mirror = os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    zstd = spec.archive.fmt == "tar.zst"
    bootstrap = f"Bootstrap: debootstrap\nOSVersion: {suite}\nMirrorURL: {mirror}" + ("\nInclude: zstd" if zstd else "")
    return render_apptainer(spec, def_dir, bootstrap=bootstrap,
                            extract="tar -xzf" if spec.archive.fmt == "tar.gz" else "tar -xf")


def write_sqsh(spec: ContainerSpec, output: Path, definition: str | None, glibc: str | None, *,
               level: int = DEFAULT_LEVEL, threads: int | None = None) -> SqshResult:
    """Write the image to `output` (atomically) and its `.sha256` sidecar. `definition` None: the
    image's own (image_definition, %files relative to the archive's folder)."""
    output = Path(output).absolute()
    suite = debian_suite(glibc, IMAGE_ADVICE)
    if definition is None:
        definition = image_definition(spec, suite, spec.archive.path.parent)
    base = rootfs_tarball(suite, spec.platform, IMAGE_ADVICE)
    mtime = source_date_epoch()
    work = make_tempdir(output.parent, output.name)
    try:
        tree = work / "rootfs"
        tree.mkdir(mode=0o755)
        os.chmod(tree, 0o755)
        touched = build_tree(spec, definition, tree, base)
        _fix_mtimes(tree, touched, mtime)
        with atomic_path(output) as tmp:
            mksquashfs(tree, tmp, level=level, threads=threads or os.cpu_count() or 1, mtime=mtime)
            digest = sha256_file(tmp)
        with atomic_path(sidecar(output, "sha256")) as tmp:
            tmp.write_text(f"{digest}  {output.name}\n")
    finally:
        remove_path(work)
    return SqshResult(path=output, sha256=digest, size=output.stat().st_size, suite=suite,
                      base=f"Debian {suite} minbase (debootstrap, {base.name})")
