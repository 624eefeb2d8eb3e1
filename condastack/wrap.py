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

import configparser
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .channel import build_recipe, channel_url, index_channel
from .errors import CondastackError
from .fsutil import file_lock, make_tempdir, remove_path, sha256_file

SITE_CHANNEL = Path("environments") / "channel"
WRAP_PLATFORMS = ("linux-64", "linux-aarch64", "noarch")
# A fixed timestamp makes the package bytes depend only on the inputs.
_EPOCH = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]*\Z")
_VERSION = re.compile(r"^[A-Za-z0-9_.+!]+\Z")
_BUILD = re.compile(r"^[A-Za-z0-9_.+]+\Z")
_PY = re.compile(r"^3\.\d+\Z")
_ENTRY_GROUPS = ("console_scripts", "gui_scripts")


@dataclass(frozen=True)
class WrappedPackage:
    """One package placed in the site channel."""

    path: Path  # channel/<subdir>/<name>-<version>-<build>.conda
    name: str
    version: str
    build: str
    subdir: str
    status: str  # "added", "unchanged" or "replaced"
    entry_points: tuple[str, ...] = field(default=())

    @property
    def dist(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"


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
) -> list[WrappedPackage]:
    """Make conda package(s) from SOURCE and put them into the site channel `channel`.

    SOURCE is a folder mirroring a prefix, a `.whl` file, or (recipe=True) a
    rattler-build recipe (folder or recipe.yaml). Returns the placed packages.
    """
    source = Path(source).expanduser()
    channel = Path(channel).expanduser().resolve()
    if not source.exists():
        raise CondastackError(f"wrap: {source} does not exist. Give a built folder, a .whl file or (with --recipe) a recipe.")
    _check_depends(depends)
    if build_string is not None and not _BUILD.match(build_string):
        raise CondastackError(f"wrap: build string '{build_string}' may only hold letters, digits, '_', '.' and '+'.")
    if platform not in WRAP_PLATFORMS:
        raise CondastackError(f"wrap: platform '{platform}' is not one of {', '.join(WRAP_PLATFORMS)}.")

    channel.mkdir(parents=True, exist_ok=True)
    work = make_tempdir(channel, "wrap")
    try:
        if recipe:
            built = _build_from_recipe(source, work, channel, build_channels, name, version)
            eps: tuple[str, ...] = ()
        elif source.is_file() and source.suffix == ".whl":
            built, eps = _build_from_wheel(source, work, name, version, depends, platform, python,
                                           build_number, build_string)
        elif source.is_dir():
            if (source / "recipe.yaml").is_file() and not any((source / d).exists() for d in ("bin", "lib", "share")):
                raise CondastackError(f"wrap: {source} looks like a rattler-build recipe; pass --recipe to build it.")
            built = [_build_from_folder(source, work, name, version, depends, platform, build_number, build_string)]
            eps = ()
        else:
            raise CondastackError(
                f"wrap: {source} is neither a folder nor a wheel (*.whl). Give a built folder that mirrors a "
                "prefix (bin/, lib/, ...), a wheel, or a recipe with --recipe."
            )
        with file_lock(channel / ".condastack-wrap.lock"):
            placed = [_place(pkg, channel, force, eps) for pkg in built]
            if any(p.status == "replaced" for p in placed):
                _reindex_all(channel)
            else:
                index_channel(channel)
        return placed
    finally:
        remove_path(work)


# --------------------------------------------------------------------------- validation


def _check_name(name: str | None, what: str) -> str:
    if name is None:
        raise CondastackError(f"wrap: {what} is required when wrapping a folder (e.g. --name apex --version 0.1).")
    if not name or not _NAME.match(name):
        raise CondastackError(
            f"wrap: {what} '{name}' is not a valid conda package name (lower-case letters, digits, '-', '_', '.'; "
            "e.g. transformer-engine)."
        )
    return name


def _check_version(version: str | None) -> str:
    if version is None:
        raise CondastackError("wrap: --version is required when wrapping a folder (e.g. --version 0.12.2).")
    if not version or not _VERSION.match(version):
        raise CondastackError(
            f"wrap: version '{version}' is not a valid conda version (letters, digits, '.', '_', '+', '!'; no '-' "
            "or spaces, e.g. 2.3.0 or 0.12.2)."
        )
    return version


def _check_depends(depends: Sequence[str]) -> None:
    import rattler

    for d in depends:
        try:
            rattler.MatchSpec(d)
        except Exception as e:  # rattler raises its own parse errors
            raise CondastackError(f"wrap: --depends '{d}' is not a conda match spec: {e}") from None


def _build_id(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _content_hash(folder: Path) -> str:
    """Names, modes, bytes and link targets of every entry under folder."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            h.update(f"L {rel} -> {os.readlink(p)}\n".encode())
        elif p.is_file():
            h.update(f"F {rel} {p.stat().st_mode & 0o111:o} {sha256_file(p)}\n".encode())
        elif p.is_dir():
            h.update(f"D {rel}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- folders


def _build_from_folder(folder: Path, work: Path, name: str | None, version: str | None, depends: Sequence[str],
                       platform: str, build_number: int, build_string: str | None) -> Path:
    name = _check_name(name, "--name")
    version = _check_version(version)
    folder = folder.resolve()
    if not any(folder.iterdir()):
        raise CondastackError(f"wrap: folder {folder} is empty; it must mirror a prefix (bin/, lib/, share/ ...).")
    _refuse_absolute_paths(folder)
    build = build_string or f"h{_build_id(_content_hash(folder), name, version, sorted(depends), platform)}_{build_number}"
    return _assemble(name, version, platform, build, work, folder, depends, build_number)


def _refuse_absolute_paths(folder: Path) -> None:
    """A folder payload is not rewritten at install time, so it must not name where it was built."""
    needle = str(folder).encode()
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                if needle in f.read():
                    raise CondastackError(
                        f"wrap: {p} contains the absolute path {folder}; a wrapped folder is installed unchanged, "
                        "so it would point at the build folder. Make it relocatable ($ORIGIN RPATHs, paths relative "
                        "to the file) or build it from a recipe with --recipe."
                    )


def _assemble(name: str, version: str, platform: str, build: str, work: Path, files: Path,
              depends: Sequence[str], build_number: int) -> Path:
    from rattler_build import assemble_package

    out = work / "out" / platform  # the channel subdir, as rattler-build lays out its outputs
    out.mkdir(parents=True, exist_ok=True)
    try:
        res = assemble_package(
            name, version, platform, build, out,
            files_dir=files,
            depends=list(depends),
            build_number=build_number,
            noarch="generic" if platform == "noarch" else None,
            summary=f"{name} {version}, wrapped by condastack",
            timestamp=_EPOCH,
            compression_level=3,
            detect_prefix=False,
        )
    except Exception as e:  # RattlerBuildError and friends
        raise CondastackError(f"wrap: packaging {name} {version} failed: {e}") from None
    return Path(res.path)


# --------------------------------------------------------------------------- wheels


@dataclass(frozen=True)
class _Wheel:
    name: str
    version: str
    python: str | None  # "3.10" from a cpXY tag, else None
    platforms: tuple[str, ...]
    abis: tuple[str, ...]


def _read_wheel(path: Path) -> _Wheel:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        wname, wver, _, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as e:
        raise CondastackError(f"wrap: {path.name} is not a wheel file name ({e}).") from None
    try:
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith(".dist-info/WHEEL") for n in z.namelist()):
                raise CondastackError(f"wrap: {path} has no *.dist-info/WHEEL; it is not a wheel.")
    except zipfile.BadZipFile:
        raise CondastackError(f"wrap: {path} is not a zip archive, so not a wheel.") from None
    pys = {t.interpreter[2:] for t in tags if re.fullmatch(r"cp3\d+", t.interpreter)}
    py = None
    if len(pys) == 1:
        d = pys.pop()
        py = f"{d[0]}.{d[1:]}"
    return _Wheel(
        name=str(wname).replace("_", "-").lower(),
        version=str(wver),
        python=py,
        platforms=tuple(sorted({t.platform for t in tags if t.platform != "any"})),
        abis=tuple(sorted({t.abi for t in tags if t.abi not in ("none", "abi3")})),
    )


def _build_from_wheel(wheel: Path, work: Path, name: str | None, version: str | None, depends: Sequence[str],
                      platform: str, python: str | None, build_number: int,
                      build_string: str | None) -> tuple[list[Path], tuple[str, ...]]:
    info = _read_wheel(wheel)
    name = _check_name(name or info.name, "--name")
    version = _check_version(version or _conda_version(info.version))
    if python is not None and not _PY.match(python):
        raise CondastackError(f"wrap: --python '{python}' must be a major.minor version such as 3.10.")
    py = python or info.python
    if py is None:
        raise CondastackError(
            f"wrap: {wheel.name} does not name one CPython version; pass --python X.Y (the python of the layer "
            "that will use it, e.g. 3.10)."
        )
    if info.python is not None and python is not None and python != info.python:
        raise CondastackError(f"wrap: {wheel.name} is built for python {info.python}, not --python {python}.")
    if platform == "noarch":
        raise CondastackError("wrap: a wrapped wheel is installed under lib/pythonX.Y; give a platform such as linux-64.")

    prefix = work / "prefix"
    site = prefix / "lib" / f"python{py}" / "site-packages"
    _pip_install(wheel, site, py, info)
    shutil.rmtree(site / "bin", ignore_errors=True)  # pip's scripts name the staging python; ours follow
    eps = _entry_points(site)
    for dist_info in site.glob("*.dist-info"):
        (dist_info / "direct_url.json").unlink(missing_ok=True)  # it names the temporary wheel path
        (dist_info / "INSTALLER").write_text("condastack\n")
        _drop_record_lines(dist_info, ("bin/", "../bin/"))
    for ep_name, target in eps.items():
        _write_launcher(prefix / "bin" / ep_name, py, target)
    meta = {"wrapped_from": wheel.name, "sha256": sha256_file(wheel), "python": py,
            "entry_points": {k: f"{m}:{a}" for k, (m, a) in eps.items()}}
    meta_file = prefix / "share" / "condastack" / "wrapped" / f"{name}.json"
    meta_file.parent.mkdir(parents=True)
    meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    deps = [f"python {py}.*", *[d for d in depends if d.split()[0] != "python"]]
    build = build_string or (
        f"py{py.replace('.', '')}h{_build_id(meta['sha256'], name, version, sorted(deps), platform)}_{build_number}"
    )
    pkg = _assemble(name, version, platform, build, work, prefix, deps, build_number)
    return [pkg], tuple(sorted(eps))


def _conda_version(v: str) -> str:
    # A PEP 440 local version ("2.3.0+cu126") keeps its '+'; '-' is not allowed in conda versions.
    return v.replace("-", "_")


def _pip_install(wheel: Path, site: Path, py: str, info: _Wheel) -> None:
    site.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--no-index",
           "--disable-pip-version-check", "--no-warn-script-location", "--target", str(site),
           "--python-version", py, "--implementation", "cp"]
    for p in info.platforms:
        cmd += ["--platform", p]
    for a in info.abis:
        cmd += ["--abi", a]
    cmd.append(str(wheel.resolve()))
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-8:])
        raise CondastackError(f"wrap: pip could not install {wheel.name} into a staging prefix:\n{tail}")


def _entry_points(site: Path) -> dict[str, tuple[str, str]]:
    """console_scripts and gui_scripts of every installed dist: name -> (module, attr)."""
    out: dict[str, tuple[str, str]] = {}
    for ep_file in sorted(site.glob("*.dist-info/entry_points.txt")):
        cp = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]  # entry point names are case-sensitive
        cp.read_string(ep_file.read_text())
        for group in _ENTRY_GROUPS:
            if not cp.has_section(group):
                continue
            for ep_name, ref in cp.items(group):
                ref = ref.split("[")[0].strip()  # drop extras
                module, _, attr = ref.partition(":")
                if not re.fullmatch(r"[\w.]+", module) or (attr and not re.fullmatch(r"[\w.]+", attr)):
                    raise CondastackError(f"wrap: {ep_file}: entry point '{ep_name} = {ref}' is malformed.")
                if not re.fullmatch(r"[\w.+-]+", ep_name):
                    raise CondastackError(f"wrap: {ep_file}: entry point name '{ep_name}' cannot be a file name.")
                out[ep_name] = (module, attr)
    return out


def _write_launcher(path: Path, py: str, target: tuple[str, str]) -> None:
    """A launcher that runs the python beside it, wherever the environment is unpacked.

    The first lines are both shell and python: sh re-executes the file with
    `bin/pythonX.Y` of the same environment; python reads them as a string.
    No absolute path is written, so no prefix rewriting is needed.
    """
    module, attr = target
    call = f"{attr}()" if attr else "None"
    import_line = f"from {module} import {attr.split('.')[0]}" if attr else f"import {module}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        f"'''exec' \"$(dirname -- \"$0\")/python{py}\" \"$0\" \"$@\"\n"
        "' '''\n"
        "# condastack wrap: entry point launcher\n"
        "import sys\n"
        f"{import_line}\n"
        "if __name__ == '__main__':\n"
        f"    sys.exit({call})\n"
    )
    path.chmod(0o755)


def _drop_record_lines(dist_info: Path, prefixes: tuple[str, ...]) -> None:
    record = dist_info / "RECORD"
    if not record.is_file():
        return
    keep = [ln for ln in record.read_text().splitlines()
            if not ln.startswith(prefixes) and not ln.split(",")[0].endswith(("direct_url.json",))]
    record.write_text("\n".join(keep) + "\n")


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
    import asyncio

    import rattler.index

    index_channel(channel)  # creates the subdirs
    asyncio.run(rattler.index.index_fs(channel, force=True))


def _split_dist(pkg: Path) -> tuple[str, str, str]:
    stem = pkg.name.removesuffix(".conda").removesuffix(".tar.bz2")
    name, version, build = stem.rsplit("-", 2)
    return name, version, build


def _place(pkg: Path, channel: Path, force: bool, eps: tuple[str, ...]) -> WrappedPackage:
    subdir = pkg.parent.name
    if subdir not in WRAP_PLATFORMS:
        raise CondastackError(f"wrap: built package {pkg.name} is for subdir '{subdir}', which a site channel here "
                              f"does not carry ({', '.join(WRAP_PLATFORMS)}).")
    dest = channel / subdir / pkg.name
    name, version, build = _split_dist(pkg)
    status = "added"
    if dest.exists():
        if sha256_file(dest) == sha256_file(pkg):
            return WrappedPackage(dest, name, version, build, subdir, "unchanged", eps)
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
    return WrappedPackage(dest, name, version, build, subdir, status, eps)

