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

from condastack.channel.index import build_recipe, channel_url, index_channel
from condastack.channel.pkgfloor import add_glibc_floor
from condastack.channel.wheeldeps import WheelDep, unsatisfied, wheel_requirements
from condastack.core.elf import max_glibc, tree_glibc_floor
from condastack.core.errors import CondastackError
from condastack.core.fs import file_lock, make_tempdir, remove_path, sha256_file

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
    depends: tuple[str, ...] = field(default=())
    unsatisfied: tuple[str, ...] = field(default=())  # wheel requirements no channel satisfies
    notes: tuple[str, ...] = field(default=())

    @property
    def dist(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"


def default_channel(root: Path) -> Path:
    """The site channel of a project: `environments/channel`, beside stack.yml."""
    return Path(root).resolve() / SITE_CHANNEL


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class WheelOptions:
    """How a wheel becomes a package: extras, local versions, the channels its dependencies come from."""

    extras: tuple[str, ...] = ()
    keep_local_version: bool = False  # keep "2.13.0+cpu" as the version instead of moving "cpu" to the build
    check_channels: tuple[str, ...] | None = None  # None: do not check; the site channel is always added
    wheel_dir: Path | None = None  # wrap unsatisfied requirements from the wheels found here


@dataclass
class _Built:
    pkgs: list[Path]
    entry_points: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()
    unsatisfied: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


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
) -> list[WrappedPackage]:
    """Make conda package(s) from SOURCE and put them into the site channel `channel`.

    SOURCE is a folder mirroring a prefix, a `.whl` file, or (recipe=True) a
    rattler-build recipe (folder or recipe.yaml). Returns the placed packages
    (with wheel.wheel_dir, also the wrapped wheels of its unsatisfied requirements).
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
            pkgs = _build_from_recipe(source, work, channel, build_channels, name, version)
            added = [(p, add_glibc_floor(p)) for p in pkgs]
            built = _Built(pkgs, notes=tuple(f"{p.name}: added {d} (what its ELF files need)" for p, d in added if d))
        elif source.is_file() and source.suffix == ".whl":
            built = _build_from_wheel(source, work, name, version, depends, platform, python,
                                      build_number, build_string, wheel, channel)
        elif source.is_dir():
            if (source / "recipe.yaml").is_file() and not any((source / d).exists() for d in ("bin", "lib", "share")):
                raise CondastackError(f"wrap: {source} looks like a rattler-build recipe; pass --recipe to build it.")
            built = _build_from_folder(source, work, name, version, depends, platform, build_number, build_string)
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
    from condastack.spec.stack import find_stack_file, load_stack

    if not find_stack_file(Path(root)).is_file():
        return ()
    st = load_stack(root)
    out: list[str] = []
    for layer in st.layers:
        out += [c for c in st.channels_for(layer) if c not in out]
    return tuple(out)


def still_unsatisfied(pkg: WrappedPackage, placed: Sequence[WrappedPackage]) -> list[str]:
    """The requirements of pkg that neither a channel nor another package of this wrap satisfies."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wrapped = {canonicalize_name(p.name) for p in placed}
    return [u for u in pkg.unsatisfied if canonicalize_name(Requirement(u).name) not in wrapped]


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
                       platform: str, build_number: int, build_string: str | None) -> _Built:
    name = _check_name(name, "--name")
    version = _check_version(version)
    folder = folder.resolve()
    if not any(folder.iterdir()):
        raise CondastackError(f"wrap: folder {folder} is empty; it must mirror a prefix (bin/, lib/, share/ ...).")
    _refuse_absolute_paths(folder)
    deps = _with_glibc_floor(list(depends), tree_glibc_floor(folder))
    build = build_string or f"h{_build_id(_content_hash(folder), name, version, sorted(deps), platform)}_{build_number}"
    return _Built([_assemble(name, version, platform, build, work, folder, deps, build_number)], depends=tuple(deps))


def _with_glibc_floor(depends: list[str], floor: str | None) -> list[str]:
    """Add `__glibc >=floor` unless the caller already said which glibc the package needs."""
    if floor is None or any(_dep_name(d) == "__glibc" for d in depends):
        return depends
    return [*depends, f"__glibc >={floor}"]


def _dep_name(spec: str) -> str:
    return re.split(r"[\s<>=!~*\[]", spec.strip(), maxsplit=1)[0]


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
    metadata: str  # the METADATA text


_LEGACY_MANYLINUX = {"manylinux1": "2.5", "manylinux2010": "2.12", "manylinux2014": "2.17"}
_TAG = re.compile(r"(manylinux1|manylinux2010|manylinux2014|manylinux_(\d+)_(\d+)|musllinux_\d+_\d+|linux)_(\w+)")
_MACHINE = {"linux-64": "x86_64", "linux-aarch64": "aarch64"}


def _read_wheel(path: Path) -> _Wheel:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        wname, wver, _, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as e:
        raise CondastackError(f"wrap: {path.name} is not a wheel file name ({e}).") from None
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if not any(n.endswith(".dist-info/WHEEL") for n in names):
                raise CondastackError(f"wrap: {path} has no *.dist-info/WHEEL; it is not a wheel.")
            meta = next((n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            metadata = z.read(meta).decode("utf-8", errors="replace") if meta else ""
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
        metadata=metadata,
    )


def _tag_glibc_floor(wheel: str, platforms: tuple[str, ...], platform: str) -> str | None:
    """The lowest glibc any of the wheel's platform tags runs on (the wheel installs if one tag fits)."""
    if not platforms:
        return None  # a pure wheel
    arch = _MACHINE[platform]
    floors: list[str | None] = []
    for tag in platforms:
        m = _TAG.fullmatch(tag)
        if m is None or m.group(4) != arch:
            continue
        if m.group(1).startswith("musllinux"):
            raise CondastackError(f"wrap: {wheel} is a musllinux wheel: it links musl libc, which conda environments "
                                  "on glibc Linux do not have. Use the manylinux wheel of the same release.")
        if m.group(2):
            floors.append(f"{m.group(2)}.{m.group(3)}")
        else:  # a legacy manylinux tag, or a plain linux_ tag that promises nothing (its ELF files decide)
            floors.append(_LEGACY_MANYLINUX.get(m.group(1)))
    if not floors:
        raise CondastackError(f"wrap: {wheel} is built for {', '.join(platforms)}, none of which runs on {platform} "
                              f"({arch} Linux). Wrap the {arch} Linux wheel, or pass the matching --platform.")
    if None in floors:
        return None
    return min((f for f in floors if f), key=lambda v: tuple(map(int, v.split("."))))


def _build_from_wheel(wheel: Path, work: Path, name: str | None, version: str | None, depends: Sequence[str],
                      platform: str, python: str | None, build_number: int, build_string: str | None,
                      opts: WheelOptions, channel: Path) -> _Built:
    info = _read_wheel(wheel)
    name = _check_name(name or info.name, "--name")
    raw_version, local = _conda_version(info.version, opts.keep_local_version)
    version = _check_version(version or raw_version)
    py = _wheel_python(wheel, info, python, platform)
    tag_floor = _tag_glibc_floor(wheel.name, info.platforms, platform)

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
    notes = _compile_bytecode(prefix, site, py)

    reqs = wheel_requirements(info.metadata, py, platform, opts.extras, where=wheel.name)
    deps = _merge_depends([f"python {py}.*", *[r.spec for r in reqs]], depends)
    deps = _with_glibc_floor(deps, max_glibc(tag_floor, tree_glibc_floor(prefix)))
    missing, check_note = _check_satisfiable(reqs, depends, opts, channel, platform)
    build = build_string or (
        f"{_local_label(local)}py{py.replace('.', '')}h"
        f"{_build_id(meta['sha256'], name, version, sorted(deps), platform)}_{build_number}"
    )
    pkg = _assemble(name, version, platform, build, work, prefix, deps, build_number)
    return _Built([pkg], tuple(sorted(eps)), tuple(deps), tuple(r.requirement for r in missing),
                  tuple(notes + check_note))


def _wheel_python(wheel: Path, info: _Wheel, python: str | None, platform: str) -> str:
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
    return py


def _conda_version(v: str, keep_local: bool = False) -> tuple[str, str]:
    """(conda version, local label): "2.13.0+cpu" -> ("2.13.0", "cpu"), so `torch >=2.13` matches it.

    The label goes into the build string instead, as conda-forge does with its variants.
    '-' is not allowed in conda versions.
    """
    v = v.replace("-", "_")
    if keep_local or "+" not in v:
        return v, ""
    public, _, local = v.partition("+")
    return public, local


def _local_label(local: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', local)}_" if local else ""


def _merge_depends(from_wheel: list[str], given: Sequence[str]) -> list[str]:
    """--depends adds to the wheel's dependencies and replaces those of the same name."""
    names = {_dep_name(d) for d in given}
    return [*[d for d in from_wheel if _dep_name(d) not in names], *given]


def _check_satisfiable(reqs: list[WheelDep], depends: Sequence[str], opts: WheelOptions, channel: Path,
                       platform: str) -> tuple[list[WheelDep], list[str]]:
    """The wheel's requirements that no channel of the stack (or the site channel) can satisfy."""
    given = {_dep_name(d) for d in depends}
    reqs = [r for r in reqs if r.conda_name not in given]
    if opts.check_channels is None or not reqs:
        return [], []
    index_channel(channel)  # the site channel may not have been indexed yet
    channels = [channel_url(channel), *[c for c in opts.check_channels if c != channel_url(channel)]]
    try:
        return unsatisfied(reqs, channels, platform), []
    except Exception as e:  # an unreachable channel (offline): say so, the lock will tell
        return [], [f"dependencies not checked: cannot read the channels ({str(e).splitlines()[0][:200]})"]


def _compile_bytecode(prefix: Path, site: Path, py: str) -> list[str]:
    """Byte-compile the staged wheel as conda-forge packages ship it, for the package's python.

    Checked-hash .pyc files stay valid when the env is moved, unpacked with other
    mtimes or mounted read-only (python checks the source hash, not its mtime);
    paths are recorded relative to the prefix, and python fixes them on load.
    """
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    interp = sys.executable if py == here else shutil.which(f"python{py}")
    if interp is None:
        return [f"no bytecode: no python{py} on PATH to compile with"]
    # A fixed hash seed keeps set constants in one order, so the .pyc bytes are reproducible.
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("SOURCE_DATE_EPOCH", None)
    p = subprocess.run([interp, "-m", "compileall", "-q", "-j", "1", "-s", f"{prefix}/",
                        "--invalidation-mode", "checked-hash", str(site)], capture_output=True, text=True, env=env)
    if p.returncode != 0:  # a file that is not python 3 (a template, a py2 test); python skips it too
        bad = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("***")][:3]
        return [f"some files were not byte-compiled: {'; '.join(bad) or p.stderr.strip()[-200:]}"]
    return []


def _wrap_missing(top: WrappedPackage, channel: Path, platform: str, python: str | None, opts: WheelOptions,
                  force: bool) -> list[WrappedPackage]:
    """Wrap, from opts.wheel_dir, the best wheel for each requirement no channel could satisfy."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

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

