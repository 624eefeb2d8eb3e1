"""`condastack wrap`: turn a built folder, a wheel or a recipe into a conda package
in a local *site channel*.

Components that exist only as git builds (apex, Transformer Engine, Megatron-LM,
DeepEP) cannot be hash-locked as `git+https` pip dependencies. Wrapped once into
the site channel (default `environments/channel`, beside the stack), they become
ordinary conda packages: hash-locked, cached, packed and relocated like the rest.

- a folder is a tree mirroring a prefix (`bin/`, `lib/`, `lib/pythonX.Y/...`),
  packaged as is with `rattler_build.assemble_package`;
- a wheel is installed with pip into a staging prefix
  (`lib/pythonX.Y/site-packages`), gets a `python X.Y.*` dependency and one
  relocatable `bin/` launcher per console/gui entry point;
- a recipe (`--recipe`) is built by rattler-build (`channel.build_recipe`).

Packages are built in a temporary folder and moved into the channel; the build
string is a hash of the inputs, and a package file is reproducible (fixed
timestamp), so wrapping the same input twice is a no-op and a *different*
package under the same file name is refused unless `force`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from condastack.channel.assemble import (
    _BUILD,
    Provenance,
    WheelOptions,
    WrappedPackage,
    _assemble,
    _build_id,
    _Built,
    _check_depends,
    _check_name,
    _check_version,
    _content_hash,
    _refuse_absolute_paths,
    _with_glibc_floor,
)
from condastack.channel.index import build_recipe, channel_url, index_channel
from condastack.channel.pkgfloor import add_glibc_floor
from condastack.channel.wheel import _build_from_wheel
from condastack.core.elf import tree_glibc_floor
from condastack.core.errors import CondastackError
from condastack.core.fs import file_lock, make_tempdir, remove_path, sha256_file
from condastack.core.layout import wrapped_meta
from condastack.core.names import conda_name_for_pypi
from condastack.spec.stack import find_stack_file, load_stack

SITE_CHANNEL = Path("environments") / "channel"
WRAP_PLATFORMS = ("linux-64", "linux-aarch64", "noarch")


def default_channel(root: Path) -> Path:
    """The site channel of a project: `environments/channel`, beside stack.yml."""
    return Path(root).resolve() / SITE_CHANNEL


# --------------------------------------------------------------------------- public API


def wrap(
    source: Path,
    *,
    channel: Path,
    name: str | None = None,
    version: str | None = None,
    depends: Sequence[str] = (),
    recipe: bool = False,
    platform: str = "linux-64",
    python: str | None = None,
    build_number: int = 0,
    build_string: str | None = None,
    build_channels: Sequence[str] = ("conda-forge",),
    force: bool = False,
    wheel: WheelOptions = WheelOptions(),
    provenance: Provenance | None = None,
) -> list[WrappedPackage]:
    """Make conda package(s) from SOURCE and put them into the site channel `channel`.

    SOURCE is a folder mirroring a prefix, a `.whl` file, or (recipe=True) a
    rattler-build recipe (folder or recipe.yaml). Returns the placed packages
    (with wheel.wheel_dir, also the wrapped wheels of its unsatisfied requirements).
    A folder or wheel package records its source in `share/condastack/wrapped/NAME.json` (the
    wheel's sha256, or the folder's content hash; `provenance`'s commit and URL), which the SBOM reads.
    """
    source = Path(source).expanduser()
    channel = Path(channel).expanduser().resolve()
    provenance = provenance or Provenance()
    if not source.exists():
        raise CondastackError(f"wrap: {source} does not exist. Give a built folder, a .whl file or (with --recipe) "
                              "a recipe.")
    _check_depends(depends)
    if build_string is not None and not _BUILD.match(build_string):
        raise CondastackError(f"wrap: build string '{build_string}' may only hold letters, digits, '_', '.' and '+'.")
    if platform not in WRAP_PLATFORMS:
        raise CondastackError(f"wrap: platform '{platform}' is not one of {', '.join(WRAP_PLATFORMS)}.")

    channel.mkdir(parents=True, exist_ok=True)
    work = make_tempdir(channel, "wrap")
    try:
        if recipe:
            pkgs = _build_from_recipe(source, work, channel, build_channels, name, version)
            added = [(p, add_glibc_floor(p)) for p in pkgs]
            built = _Built(pkgs, notes=tuple(f"{p.name}: added {d} (what its ELF files need)" for p, d in added if d))
        elif source.is_file() and source.suffix == ".whl":
            built = _build_from_wheel(source, work, name, version, depends, platform, python,
                                      build_number, build_string, wheel, channel, provenance)
        elif source.is_dir():
            if (source / "recipe.yaml").is_file() and not any((source / d).exists() for d in ("bin", "lib", "share")):
                raise CondastackError(f"wrap: {source} looks like a rattler-build recipe; pass --recipe to build it.")
            built = _build_from_folder(source, work, name, version, depends, platform, build_number, build_string,
                                       provenance)
        else:
            raise CondastackError(
                f"wrap: {source} is neither a folder nor a wheel (*.whl). Give a built folder that mirrors a "
                "prefix (bin/, lib/, ...), a wheel, or a recipe with --recipe."
            )
        with file_lock(channel / ".condastack-wrap.lock"):
            placed = [_place(pkg, channel, force, built) for pkg in built.pkgs]
            if any(p.status == "replaced" for p in placed):
                _reindex_all(channel)
            else:
                index_channel(channel)
    finally:
        remove_path(work)
    if built.unsatisfied and wheel.wheel_dir is not None:
        placed += _wrap_missing(placed[0], channel, platform, python, wheel, force)
    return placed


def stack_channels(root: Path) -> tuple[str, ...]:
    """Every channel of the stack at root (all layers), () when there is no stack."""

    if not find_stack_file(Path(root)).is_file():
        return ()
    st = load_stack(root)
    out: list[str] = []
    for layer in st.layers:
        out += [c for c in st.channels_for(layer) if c not in out]
    return tuple(out)


def still_unsatisfied(pkg: WrappedPackage, placed: Sequence[WrappedPackage]) -> list[str]:
    """The requirements of pkg that neither a channel nor another package of this wrap satisfies."""
    wrapped = {p.name for p in placed}  # conda names, as the requirement maps to one
    return [u for u in pkg.unsatisfied if conda_name_for_pypi(Requirement(u).name) not in wrapped]


# --------------------------------------------------------------------------- validation


# --------------------------------------------------------------------------- folders


def _build_from_folder(folder: Path, work: Path, name: str | None, version: str | None, depends: Sequence[str],
                       platform: str, build_number: int, build_string: str | None,
                       provenance: Provenance | None = None) -> _Built:
    name = _check_name(name, "--name")
    version = _check_version(version)
    provenance = provenance or Provenance()
    folder = folder.resolve()
    if not any(folder.iterdir()):
        raise CondastackError(f"wrap: folder {folder} is empty; it must mirror a prefix (bin/, lib/, share/ ...).")
    _refuse_absolute_paths(folder)
    deps = _with_glibc_floor(list(depends), tree_glibc_floor(folder))
    content = _content_hash(folder)
    stated = provenance.meta()
    build_id = _build_id(content, name, version, sorted(deps), platform, *([stated] if stated else []))
    build = build_string or f"h{build_id}_{build_number}"
    meta = work / "wrapped.json"
    meta.write_text(json.dumps({"wrapped_from": folder.name, "source_tree_sha256": content, **stated}, indent=2,
                               sort_keys=True) + "\n")
    return _Built([_assemble(name, version, platform, build, work, folder, deps, build_number,
                             extra=[(meta, wrapped_meta(name))], license=provenance.license)], depends=tuple(deps))


# --------------------------------------------------------------------------- wheels


def _wrap_missing(top: WrappedPackage, channel: Path, platform: str, python: str | None, opts: WheelOptions,
                  force: bool) -> list[WrappedPackage]:
    """Wrap, from opts.wheel_dir, the best wheel for each requirement no channel could satisfy."""

    assert opts.wheel_dir is not None
    # A pure dependency wheel gets the python of the package that needs it.
    python = python or next((d.split()[1].removesuffix(".*") for d in top.depends if d.startswith("python ")), None)
    out: list[WrappedPackage] = []
    for line in top.unsatisfied:
        req = Requirement(line)
        found = []
        for whl in sorted(Path(opts.wheel_dir).glob("*.whl")):
            try:
                wname, wver, _, _ = parse_wheel_filename(whl.name)
            except ValueError:
                continue
            if canonicalize_name(wname) == canonicalize_name(req.name) and req.specifier.contains(wver, True):
                found.append((wver, whl))
        if found:
            out += wrap(max(found)[1], channel=channel, platform=platform, python=python, force=force, wheel=opts)
    return out


# --------------------------------------------------------------------------- recipes


def _build_from_recipe(recipe: Path, work: Path, channel: Path, build_channels: Sequence[str],
                       name: str | None, version: str | None) -> list[Path]:
    recipe_file = recipe / "recipe.yaml" if recipe.is_dir() else recipe
    if not recipe_file.is_file() or recipe_file.suffix not in (".yaml", ".yml"):
        raise CondastackError(f"wrap --recipe: {recipe} is not a recipe.yaml or a folder holding one.")
    if name is not None:
        _check_name(name, "--name")
    if version is not None:
        _check_version(version)
    index_channel(channel)  # an empty site channel must still be a valid channel
    channels = [channel_url(channel), *[c for c in build_channels if c]]
    pkgs = build_recipe(recipe_file, work / "out", channels, level=3)
    if not pkgs:
        raise CondastackError(f"wrap --recipe: {recipe_file} produced no package (skipped for this platform?).")
    for p in pkgs:
        pname, pver, _ = _split_dist(p)
        if name is not None and pname != name:
            raise CondastackError(f"wrap --recipe: {recipe_file} builds '{pname}', not --name {name}.")
        if version is not None and pver != version:
            raise CondastackError(f"wrap --recipe: {recipe_file} builds {pname} {pver}, not --version {version}.")
    return pkgs


# --------------------------------------------------------------------------- the channel


def _reindex_all(channel: Path) -> None:
    """Re-read every package: the indexer otherwise keeps the entry of a file name it has seen."""

    import rattler.index  # lazy: native, ~0.2 s

    index_channel(channel)  # creates the subdirs
    asyncio.run(rattler.index.index_fs(channel, force=True))


def _split_dist(pkg: Path) -> tuple[str, str, str]:
    stem = pkg.name.removesuffix(".conda").removesuffix(".tar.bz2")
    name, version, build = stem.rsplit("-", 2)
    return name, version, build


def _place(pkg: Path, channel: Path, force: bool, built: _Built) -> WrappedPackage:
    subdir = pkg.parent.name
    if subdir not in WRAP_PLATFORMS:
        raise CondastackError(f"wrap: built package {pkg.name} is for subdir '{subdir}', which a site channel here "
                              f"does not carry ({', '.join(WRAP_PLATFORMS)}).")
    dest = channel / subdir / pkg.name
    name, version, build = _split_dist(pkg)
    extra = dict(entry_points=built.entry_points, depends=built.depends, unsatisfied=built.unsatisfied,
                 notes=built.notes)
    status = "added"
    if dest.exists():
        if sha256_file(dest) == sha256_file(pkg):
            return WrappedPackage(dest, name, version, build, subdir, "unchanged", **extra)
        if not force:
            raise CondastackError(
                f"wrap: {dest} already exists and differs from the package just built "
                f"({name} {version} build {build}). Locks that name it would no longer match its hash. "
                "Bump --version or --build-number, or pass --force to replace it."
            )
        status = "replaced"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    shutil.copyfile(pkg, tmp)
    os.replace(tmp, dest)
    return WrappedPackage(dest, name, version, build, subdir, status, **extra)

