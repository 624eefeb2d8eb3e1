"""The one seam between conda-lock (formats) and py-rattler (solving, installing).

conda-lock is the authority on what an environment.yml means (selectors,
channels, `pip:`) and on the lockfile models; py-rattler does the solving.
Everything that converts between the two lives here and nowhere else.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import yaml

from .errors import CondastackError

MAPPING_FILE = Path(__file__).parent / "data" / "pypi-mapping.yml"


def mapping_url() -> str:
    """conda-lock's conda<->PyPI name mapping, read from a file we ship (no network)."""
    return str(MAPPING_FILE)


# --------------------------------------------------------------------------- environment.yml


def cache_root() -> Path:
    """condastack's user cache folder ($CONDASTACK_CACHE, else ~/.cache/condastack)."""
    base = os.environ.get("CONDASTACK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "condastack")
    return Path(base)


def parse_layer_specs(path: Path, platform: str, *, layer: str) -> tuple[list[str], list[str]]:
    """Conda match specs and pip requirement strings of one environment.yml for one platform.

    Selectors and pip markers are applied by conda-lock's own parser. Importing
    conda-lock costs ~0.6 s, so results are cached by file content: a no-op
    `lock` then never imports it.
    """
    import hashlib
    import json
    from importlib.metadata import version

    from . import __version__
    from .fsutil import atomic_write_text

    data = Path(path).read_bytes()
    key = hashlib.sha256(b"|".join([data, platform.encode(), version("conda-lock").encode(),
                                    __version__.encode(), MAPPING_FILE.read_bytes()])).hexdigest()
    cached = cache_root() / "specs" / f"{key}.json"
    try:
        hit = json.loads(cached.read_text())
        return list(hit["conda"]), list(hit["pip"])
    except (OSError, ValueError, KeyError):
        pass
    conda, pip = _parse_layer_specs(path, platform, layer=layer)
    try:
        atomic_write_text(cached, json.dumps({"conda": conda, "pip": pip}))
    except OSError:
        pass  # a read-only cache only costs speed
    return conda, pip


def _parse_layer_specs(path: Path, platform: str, *, layer: str) -> tuple[list[str], list[str]]:
    from conda_lock.models.lock_spec import VersionedDependency
    from conda_lock.src_parser.environment_yaml import parse_environment_file
    from conda_lock.src_parser.markers import evaluate_marker
    from conda_lock.src_parser.pyproject_toml import parse_python_requirement
    from conda_lock.src_parser.selectors import filter_platform_selectors

    sink = io.StringIO()
    try:
        # conda-lock prints a line for each selector it drops; keep our output clean.
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            spec = parse_environment_file(Path(path), [platform], mapping_url=mapping_url())
    except Exception as e:  # conda-lock raises plain ValueErrors for bad specs
        raise CondastackError(f"{path}: layer '{layer}': cannot parse the environment file: {e}") from None

    conda: list[str] = []
    for dep in spec.dependencies[platform]:
        if dep.manager != "conda" or not isinstance(dep, VersionedDependency):
            continue
        ms = to_match_spec(dep)
        if ms not in conda and not (dep.name == "pip" and any(c.split()[0] == "pip" for c in conda)):
            conda.append(ms)

    # pip requirement strings are kept verbatim (conda-lock mangles URLs when it parses them),
    # but only those whose markers hold on this platform.
    text = "\n".join(filter_platform_selectors(Path(path).read_text(), platform=platform))
    raw = yaml.safe_load(text) or {}
    pip: list[str] = []
    for entry in raw.get("dependencies") or []:
        if isinstance(entry, dict):
            for req in entry.get("pip") or []:
                req = str(req).strip()
                if req.startswith("-e ") or req.startswith("--editable"):
                    raise CondastackError(
                        f"{path}: layer '{layer}': editable pip dependency '{req}' cannot be locked or "
                        "packed; build it as a wheel or wrap it with `condastack wrap`."
                    )
                try:
                    dep = parse_python_requirement(req, manager="pip", category="main", mapping_url=mapping_url())
                except Exception as e:
                    raise CondastackError(f"{path}: layer '{layer}': bad pip requirement '{req}': {e}") from None
                if evaluate_marker(dep.markers, platform) and req not in pip:
                    pip.append(req)
    return conda, pip


def to_match_spec(dep: object) -> str:
    """A conda-lock VersionedDependency as a conda MatchSpec string."""
    name = dep.name  # type: ignore[attr-defined]
    version = (dep.version or "").strip()  # type: ignore[attr-defined]
    build = dep.build  # type: ignore[attr-defined]
    channel = dep.conda_channel  # type: ignore[attr-defined]
    out = f"{channel}::{name}" if channel else name
    if version and not any(c in version for c in "=<>!~*,|"):
        version = f"=={version}"  # conda-lock normalises `==1.0` and `=1.0=build` to a bare, exact `1.0`
    if version and version != "*":
        out += f" {version}"
        if build:
            out += f" {build}"
    elif build:
        out += f" * {build}"
    return out


_SPEC_NAME = re.compile(r"^(?:[^:\s]+::)?([A-Za-z0-9_.-]+)")


def spec_name(spec: str) -> str:
    """The package name of a conda match spec string."""
    m = _SPEC_NAME.match(spec.strip())
    return m.group(1).lower() if m else spec.strip().lower()


# --------------------------------------------------------------------------- conda part (py-rattler)


def virtual_packages(spec: dict[str, str]) -> list:
    """The stack's declared virtual packages as rattler objects (never the host's)."""
    import rattler

    out = []
    for name, version in sorted(spec.items()):
        ver, _, build = str(version).partition("=")
        out.append(rattler.GenericVirtualPackage(rattler.PackageName(name), rattler.Version(ver),
                                                 rattler.BuildString(build or "0")))
    return out


def solve_conda(channels: list[str], specs: list[str], platform: str, vpkgs: dict[str, str], *,
                pinned: list | None = None, locked: list | None = None) -> list:
    """Solve conda specs for one platform with py-rattler; returns RepoDataRecords.

    `pinned` records are hard pins (a parent layer's lock); `locked` ones are
    preferences (the previous lock, so a re-solve moves as little as possible).
    """
    import asyncio

    import rattler

    return asyncio.run(rattler.solve(
        channels, specs, platforms=[platform, "noarch"], virtual_packages=virtual_packages(vpkgs),
        pinned_packages=pinned or None, locked_packages=locked or None,
    ))


def split_depend(dep: str) -> tuple[str, str]:
    name, _, spec = dep.strip().partition(" ")
    return name, spec.strip() or "*"


def records_to_locked(records: list, platform: str, *, category: str = "main") -> list:
    """RepoDataRecords -> conda-lock LockedDependency (md5 + sha256, build as str)."""
    from conda_lock.lockfile.v1.models import HashModel
    from conda_lock.lockfile.v2prelim.models import LockedDependency

    out = []
    for r in records:
        if r.sha256 is None or r.md5 is None:
            raise CondastackError(f"{r.url}: the channel gives no sha256/md5 for {r.name.normalized}; "
                                  "condastack only locks packages it can verify.")
        out.append(LockedDependency(
            name=r.name.normalized, version=str(r.version), manager="conda", platform=platform,
            dependencies=dict(split_depend(d) for d in r.depends), url=r.url,
            hash=HashModel(md5=r.md5.hex(), sha256=r.sha256.hex()), categories={category},
            build=str(r.build),
        ))
    return out


def read_lock_records(path: Path, platform: str) -> list:
    """The conda RepoDataRecords of one platform of a conda-lock file, read by py-rattler."""
    import rattler

    try:
        env = rattler.LockFile.from_path(str(path)).default_environment()
    except Exception as e:
        raise CondastackError(f"{path}: not a readable conda-lock file: {e}") from None
    if env is None:
        return []
    for lp in env.platforms():
        if lp.name == platform:
            return list(env.conda_repodata_records_for_platform(lp) or [])
    return []


def explain_solver_error(err: Exception) -> str:
    """rattler's solver message, condensed to its informative lines."""
    text = str(err).strip()
    lines = [l.rstrip() for l in text.splitlines() if l.strip()]
    keep = [l for l in lines if not l.strip().startswith(("Cannot solve the request because of:",))]
    return "\n".join(keep[:12]) + ("\n  …" if len(keep) > 12 else "")


# --------------------------------------------------------------------------- pip part (conda-lock)


def solve_pip(pip_specs: list[str], conda_locked: list, platform: str, vpkgs: dict[str, str], *,
              indexes: list[str], previous: list | None = None, update: list[str] | None = None) -> list:
    """Solve pip requirements with conda-lock's PyPI solver against conda's python.

    With `indexes`, only those PEP 503 indexes are asked (no request to pypi.org).
    """
    from conda_lock.models.pip_repository import PipRepository
    from conda_lock.pypi_solver import solve_pypi
    from conda_lock.src_parser.pyproject_toml import parse_python_requirement

    by_name = {d.name: d for d in conda_locked}
    python = by_name.get("python")
    if python is None:
        raise CondastackError("pip dependencies need python in the conda part of the layer; add `python` to its "
                              "dependencies.")
    specs = {}
    for req in pip_specs:
        dep = parse_python_requirement(req, manager="pip", category="main", mapping_url=mapping_url())
        specs[dep.name] = dep
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            solved = solve_pypi(
                pip_specs=specs, use_latest=list(update or []),
                pip_locked={d.name: d for d in (previous or [])}, conda_locked=by_name,
                python_version=python.version, platform=platform,
                pip_repositories=[PipRepository.from_string(u) for u in indexes],
                allow_pypi_requests=not indexes, mapping_url=mapping_url(), strip_auth=True,
            )
    except Exception as e:  # poetry's resolver raises many types; all are user-facing here
        msg = str(e).strip().splitlines()
        raise CondastackError("pip requirements cannot be resolved: " + " ".join(m.strip() for m in msg[:8])) from None
    pip = [d for d in solved.values() if d.manager == "pip"]
    for d in pip:
        d.dependencies = {k: pep440_constraint(v) for k, v in d.dependencies.items()}
    return pip


def pep440_constraint(constraint: str) -> str:
    """A pip dependency's constraint as PEP 440, which rattler needs to read the lockfile back.

    conda-lock writes poetry's constraint strings: `9.5.1.17` for `==9.5.1.17` (every
    nvidia-* pin of a CUDA torch wheel), `*` for any, `<1 || >1` for unions. PEP 440
    has no union; the constraint is informational (pip installs the locked wheels with
    --no-deps), so an inexpressible one becomes "" (any).
    """
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    text = constraint.strip()
    if text in ("", "*") or "||" in text:
        return ""
    if text[0].isdigit():
        text = "==" + text
    try:
        return str(SpecifierSet(text))
    except InvalidSpecifier:
        return ""


# --------------------------------------------------------------------------- lockfile format (conda-lock)


def write_lockfile(path: Path, packages: list, *, channels: list[str], platforms: list[str], sources: list[str],
                   content_hash: dict[str, str], custom: dict[str, str]) -> None:
    """Write conda-lock's unified lockfile (v1 on disk) with conda-lock's own writer."""
    from conda_lock.lockfile import write_conda_lock_file
    from conda_lock.lockfile.v1.models import LockMeta
    from conda_lock.lockfile.v2prelim.models import Lockfile
    from conda_lock.models.channel import Channel

    lf = Lockfile(package=packages, metadata=LockMeta(
        content_hash=content_hash, channels=[Channel.from_string(c) for c in channels], platforms=platforms,
        sources=sources, custom_metadata=custom,
    ))
    write_conda_lock_file(lf, Path(path), metadata_choices=set())


def parse_lockfile(path: Path):  # noqa: ANN201 - conda_lock Lockfile
    from conda_lock.lockfile import parse_conda_lock_file

    try:
        return parse_conda_lock_file(Path(path))
    except FileNotFoundError:
        raise CondastackError(f"lockfile not found: {path}.") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CondastackError(f"{path}: not a valid conda-lock lockfile: {first}") from None


def render_explicit(lockfile, platform: str) -> str:  # noqa: ANN001
    """conda-lock's own @EXPLICIT rendering for one platform (pip lines become comments)."""
    from conda_lock.conda_lock import render_lockfile_for_platform

    lines = render_lockfile_for_platform(lockfile=lockfile, include_dev_dependencies=False, extras=set(),
                                         kind="explicit", platform=platform,
                                         suppress_warning_for_pip_and_explicit=True)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- build seam (issue 4: build/verify)
# Reading a conda-lock file for installing: py-rattler parses conda-lock v1 files
# itself (tests/test_build.py checks it agrees with conda-lock's parser) and is
# ~10x quicker to import, which keeps a no-op `condastack build` under a second.

import hashlib  # noqa: E402 - this block is appended to the seam
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class LockedWheel:
    """One pip package of a lock: where to get it and its sha256."""

    name: str
    version: str
    url: str
    sha256: str


@dataclass(frozen=True)
class LockedEnv:
    """What one platform of a lockfile installs: conda RepoDataRecords and pip wheels."""

    path: Path
    platform: str
    platforms: tuple[str, ...]  # every platform the lockfile covers
    conda: tuple  # rattler RepoDataRecords
    pip: tuple[LockedWheel, ...]

    def lock_hash(self) -> str:
        """A content hash of the locked entries of this platform (what ends up installed)."""
        lines = sorted(
            [f"conda\t{r.name.normalized}\t{r.version}\t{r.build}\t{r.sha256.hex() if r.sha256 else ''}\t{r.url}"
             for r in self.conda]
            + [f"pip\t{w.name}\t{w.version}\t{w.sha256}\t{w.url}" for w in self.pip]
        )
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def read_locked_env(path: Path, platform: str) -> LockedEnv:
    """The conda records and pip wheels of one platform of a conda-lock v1 file."""
    import rattler

    path = Path(path)
    try:
        env = rattler.LockFile.from_path(str(path)).default_environment()
    except Exception as e:  # rattler reports format problems as one exception type per cause
        raise CondastackError(f"{path}: not a readable conda-lock file: {e}. Re-create it with `condastack lock`.") \
            from None
    plats = tuple(p.name for p in env.platforms()) if env is not None else ()
    if env is None or platform not in plats:
        raise CondastackError(
            f"{path}: this lock covers {', '.join(plats) or 'no platform'}, not this machine's platform {platform}. "
            f"Add {platform} to 'platforms' in environments/stack.yml and run `condastack lock`, "
            f"or build on a {'/'.join(plats) or 'matching'} machine."
        )
    lp = next(p for p in env.platforms() if p.name == platform)
    conda = tuple(env.conda_repodata_records_for_platform(lp) or [])
    for r in conda:
        if r.sha256 is None:
            raise CondastackError(f"{path}: package {r.name.normalized} {r.version} has no sha256 in the lock; "
                                  "condastack installs only packages it can verify. Re-lock it.")
    wheels = []
    for p in env.pypi_packages_for_platform(lp) or []:
        sha = p.hashes.sha256.hex() if p.hashes is not None and p.hashes.sha256 is not None else None
        if not sha:
            raise CondastackError(f"{path}: pip package {p.name} {p.version} has no sha256 in the lock; "
                                  "`pip --require-hashes` needs one. Re-lock it.")
        wheels.append(LockedWheel(name=p.name, version=str(p.version), url=str(p.location), sha256=sha))
    return LockedEnv(path=path, platform=platform, platforms=plats, conda=conda, pip=tuple(wheels))


def with_url(record: object, url: str) -> object:
    """A copy of a RepoDataRecord that is fetched from `url` (our verified archive)."""
    import rattler

    r = record
    channel = r.channel or url.rsplit("/", 1)[0] + "/"  # type: ignore[attr-defined]
    return rattler.RepoDataRecord(r, r.file_name, url, channel)  # type: ignore[attr-defined]
