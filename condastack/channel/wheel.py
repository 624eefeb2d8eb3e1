"""Wrapping a wheel as a conda package: its tags give the python and glibc floor, Requires-Dist maps to conda
names, entry points become launchers, bytecode is checked-hash.
"""


from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from condastack.channel.assemble import (
    _ENTRY_GROUPS,
    _PY,
    Provenance,
    WheelOptions,
    _assemble,
    _build_id,
    _Built,
    _check_name,
    _check_version,
    _dep_name,
    _with_glibc_floor,
)
from condastack.channel.index import channel_url, index_channel
from condastack.channel.wheeldeps import WheelDep, unsatisfied, wheel_requirements
from condastack.core.elf import max_glibc, tree_glibc_floor
from condastack.core.errors import CondastackError
from condastack.core.fs import sha256_file
from condastack.core.layout import wrapped_meta
from condastack.core.names import conda_name_for_pypi
from condastack.core.pyc import compile_environ, compileall_argv


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
                      opts: WheelOptions, channel: Path, provenance: Provenance | None = None) -> _Built:
    info = _read_wheel(wheel)
    provenance = provenance or Provenance()
    # named as conda-forge names the distribution, as the dependencies of other wrapped wheels name it
    name = _check_name(name or conda_name_for_pypi(info.name), "--name")
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
            "entry_points": {k: f"{m}:{a}" for k, (m, a) in eps.items()}, **provenance.meta()}
    meta_file = prefix / wrapped_meta(name)
    meta_file.parent.mkdir(parents=True)
    meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    notes = _compile_bytecode(prefix, site, py)

    reqs = wheel_requirements(info.metadata, py, platform, opts.extras, where=wheel.name)
    deps = _merge_depends([f"python {py}.*", *[r.spec for r in reqs]], depends)
    deps = _with_glibc_floor(deps, max_glibc(tag_floor, tree_glibc_floor(prefix)))
    missing, check_note = _check_satisfiable(reqs, depends, opts, channel, platform)
    build = build_string or (
        f"{_local_label(local)}py{py.replace('.', '')}h"
        f"{_build_id(meta['sha256'], name, version, sorted(deps), platform, *_stated(provenance))}_{build_number}"
    )
    pkg = _assemble(name, version, platform, build, work, prefix, deps, build_number, license=provenance.license)
    return _Built([pkg], tuple(sorted(eps)), tuple(deps), tuple(r.requirement for r in missing),
                  tuple(notes + check_note))


def _stated(provenance: Provenance) -> list[dict[str, str]]:
    """What the user stated about the source joins the build id (none: the id is as before)."""
    return [provenance.meta()] if provenance.meta() else []


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
        raise CondastackError("wrap: a wrapped wheel is installed under lib/pythonX.Y; give a platform such as "
                              "linux-64.")
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
    p = subprocess.run(compileall_argv(interp, str(site), strip=f"{prefix}/"), capture_output=True, text=True,
                       env=compile_environ())
    if p.returncode != 0:  # a file that is not python 3 (a template, a py2 test); python skips it too
        bad = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("***")][:3]
        return [f"some files were not byte-compiled: {'; '.join(bad) or p.stderr.strip()[-200:]}"]
    return []


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
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    if run.returncode != 0:
        tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-8:])
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
