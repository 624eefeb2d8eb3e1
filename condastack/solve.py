"""The one seam between conda-lock (formats) and py-rattler (solving, installing).

conda-lock is the authority on what one conda match spec or pip requirement
means (envfile.py reads the environment.yml around them through here) and on
the lockfile models; py-rattler does the solving. Everything that converts
between the two lives here and nowhere else.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import yaml

from .errors import CondastackError

MAPPING_FILE = Path(__file__).parent / "data" / "pypi-mapping.yml"


def mapping_url() -> str:
    """conda-lock's conda<->PyPI name mapping, read from a file we ship (no network)."""
    return str(MAPPING_FILE)


# --------------------------------------------------------------------------- conda-lock's dependency model


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
            return [with_channel(r) for r in env.conda_repodata_records_for_platform(lp) or []]
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
        if type(dep).__name__ == "PathDependency" and re.search(r"@\s*http://", req):
            dep = _http_url_dependency(dep, req)  # conda-lock reads only https:// as a URL
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
    out = [d for d in solved.values() if d.manager == "pip"]
    for d in out:
        if d.url.startswith("git+file://None/"):  # conda-lock writes a file URL's empty host as "None"
            d.url = "git+file:///" + d.url[len("git+file://None/"):]
            if d.source is not None:
                d.source.url = d.url
        if d.hash.sha256 is None and d.url.startswith(("http://", "https://")):
            d.hash.sha256 = _url_sha256(d.url, d.name)  # `name @ URL` requirements: pip --require-hashes needs it
    return out


def _url_sha256(url: str, name: str) -> str:
    import urllib.request

    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url.split("#", 1)[0], timeout=60) as f:  # noqa: S310 - http(s) only, above
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise CondastackError(f"pip requirement {name} @ {url}: cannot download it to record its sha256: {e}") \
            from None
    return h.hexdigest()


def _http_url_dependency(dep: object, req: str) -> object:
    from urllib.parse import urldefrag

    from conda_lock.models.lock_spec import URLDependency

    url, frag = urldefrag(req.split("@", 1)[1].split(";", 1)[0].strip())
    return URLDependency(name=dep.name, manager="pip", category="main", extras=[],  # type: ignore[attr-defined]
                         markers=dep.markers, url=url, hashes=[frag.replace("=", ":")])  # type: ignore[attr-defined]


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


# --------------------------------------------------------------------------- build seam: build and verify
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
        _refuse_vcs(path)
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
    conda = tuple(with_channel(r) for r in env.conda_repodata_records_for_platform(lp) or [])
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


def _refuse_vcs(path: Path) -> None:
    """A pip package locked from version control (conda-lock records its commit where py-rattler wants a sha256)."""
    try:
        pkgs = yaml.safe_load(Path(path).read_text()).get("package") or []
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return
    for p in pkgs:
        url = str(p.get("url", "")) if isinstance(p, dict) else ""
        if p.get("manager") == "pip" and url.startswith(("git+", "hg+", "svn+", "bzr+")):
            raise CondastackError(
                f"{path}: pip package {p.get('name')} {p.get('version')} is locked from version control ({url}); "
                "condastack builds from sha256-checked wheels only. Build a wheel of that commit and serve it from "
                "an index or list it as `name @ https://…/name.whl`, or wrap it with `condastack wrap`, then re-lock.")


def with_channel(record: object) -> object:
    """The record, naming its channel: rattler leaves it unset for local (file://) channels,
    and conda-meta and pack manifests should say where every package came from."""
    import rattler

    r = record
    if r.channel or "/" not in r.url:  # type: ignore[attr-defined]
        return r
    channel = r.url.rsplit("/", 2)[0] + "/"  # <channel>/<subdir>/<file>  # type: ignore[attr-defined]
    return rattler.RepoDataRecord(r, r.file_name, r.url, channel)  # type: ignore[attr-defined]


def with_url(record: object, url: str) -> object:
    """A copy of a RepoDataRecord that is fetched from `url` (our verified archive)."""
    import rattler

    r = record
    channel = r.channel or url.rsplit("/", 1)[0] + "/"  # type: ignore[attr-defined]
    return rattler.RepoDataRecord(r, r.file_name, url, channel)  # type: ignore[attr-defined]
