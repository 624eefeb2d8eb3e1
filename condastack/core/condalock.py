"""The one adapter to conda-lock, the format authority (environment.yml specs, the PyPI solver, lockfile models).

Every import of conda_lock in condastack is in this module. conda-lock imports pydantic and poetry
(about half a second), so each function imports what it needs: `import condastack`, doctor and a
lock run that solves nothing never load it. Where conda-lock's private API is unavoidable (poetry's
pool and Package), it is used here only; tests/test_condalock_adapter.py fails loudly when the pinned
conda-lock changes it.
"""


from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path
from urllib.parse import urldefrag

from condastack.core.errors import CondastackError
from condastack.core.names import canonical, mapping_url, pypi_names_for_conda


def conda_lock_version() -> str:
    """conda-lock's installed version (spec cache keys), without importing conda-lock or importlib.metadata.

    importlib.metadata's import (its email parser) costs ~30 CPU ms on every `lock`, a no-op one too; the
    version is in the name of the dist-info folder beside the package (`conda_lock-4.0.3.dist-info`,
    PEP 376/427). importlib.metadata answers where there is no single such folder (another kind of install).
    """
    spec = importlib.util.find_spec("conda_lock")
    if spec is not None and spec.origin:
        site = Path(spec.origin).parent.parent
        found = [p.name for p in site.glob("conda_lock-*.dist-info")] if site.is_dir() else []
        if len(found) == 1:
            return found[0][len("conda_lock-"):-len(".dist-info")]
    from importlib.metadata import version  # lazy: ~30 CPU ms, only for an unusual install

    return version("conda-lock")


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


def _http_url_dependency(dep: object, req: str) -> object:

    from conda_lock.models.lock_spec import URLDependency  # lazy: ~1 s (pydantic)

    url, frag = urldefrag(req.split("@", 1)[1].split(";", 1)[0].strip())
    return URLDependency(name=dep.name, manager="pip", category="main", extras=[],  # type: ignore[attr-defined]
                         markers=dep.markers, url=url, hashes=[frag.replace("=", ":")])  # type: ignore[attr-defined]


def entries_to_models(entries: list[dict]) -> list:
    """conda-lock v1 entries (plain data) as conda-lock's LockedDependency models."""
    from conda_lock.lockfile.v1.models import HashModel  # lazy: ~1 s (pydantic)
    from conda_lock.lockfile.v2prelim.models import LockedDependency  # lazy: ~1 s (pydantic)

    return [LockedDependency(name=p["name"], version=str(p["version"]), manager=p["manager"], platform=p["platform"],
                             dependencies={k: str(v) for k, v in (p.get("dependencies") or {}).items()},
                             url=p["url"], hash=HashModel(**(p.get("hash") or {})),
                             categories={p.get("category", "main")}, build=p.get("build"))
            for p in entries]


def model_entry(d) -> dict:  # noqa: ANN001 - a conda-lock LockedDependency
    """A conda-lock LockedDependency as a v1 entry (plain data)."""
    out = {"name": d.name, "version": str(d.version), "manager": d.manager, "platform": d.platform,
           "dependencies": dict(d.dependencies), "url": d.url,
           "hash": {k: v for k, v in (("md5", d.hash.md5), ("sha256", d.hash.sha256)) if v}}
    if d.build is not None:
        out["build"] = d.build
    out["category"], out["optional"] = "main", False
    return out


def _with_provided_names(by_name: dict) -> dict:
    """conda-lock maps each conda name to one PyPI name; add stand-ins for the others a package provides."""
    from conda_lock.lookup import conda_name_to_pypi_name  # lazy: ~1 s (pydantic)


    out = dict(by_name)
    for d in by_name.values():
        if d.name.startswith("__") or d.manager != "conda":
            continue
        main = str(conda_name_to_pypi_name(d.name, mapping_url=mapping_url()))
        for p in pypi_names_for_conda(d.name):
            if p != main and p not in out and canonical(p) != canonical(d.name):
                out[p] = d.model_copy(update={"name": p, "dependencies": {"python": "*", **d.dependencies}})
    return out


def _conda_first_pool(pool, provided: dict[str, str], *, pre: bool = False):  # noqa: ANN001, ANN202
    """A poetry pool in which conda-provided names exist only at the conda version, without requirements.
    With `pre` (pip's --pre), pre-releases count like releases for every requirement, direct or not."""

    from conda_lock._vendor.poetry.core.packages.package import Package  # lazy: ~1 s (pydantic)


    stand_ins = {}
    for name, version in provided.items():
        try:
            stand_ins[canonical(name)] = Package(name, version)
        except Exception:  # a conda version PEP 440 cannot read: leave that name to the index
            continue
    base = type(pool)

    class CondaFirstPool(base):  # type: ignore[misc, valid-type]
        def find_packages(self, dependency):  # noqa: ANN001, ANN202
            p = stand_ins.get(canonical(dependency.name))
            if p is None:
                if pre:  # in place: poetry's provider also ranks the candidates by this flag
                    dependency._allows_prereleases = True
                return super().find_packages(dependency)
            return [p] if dependency.constraint.allows(p.version) else []

        def package(self, name, version, extras=None, repository_name=None):  # noqa: ANN001, ANN202
            p = stand_ins.get(canonical(name))
            if p is None:
                return super().package(name, version, extras=extras, repository_name=repository_name)
            return p

    pool.__class__ = CondaFirstPool
    return pool


def conda_lock_write(path: Path, packages: list[dict], *, channels: list[str], platforms: list[str],
                     sources: list[str], content_hash: dict[str, str], custom: dict[str, str]) -> None:
    """conda-lock's own writer (the format authority the plain writer is tested against)."""
    from conda_lock.lockfile import write_conda_lock_file  # lazy: ~1 s (pydantic)
    from conda_lock.lockfile.v1.models import LockMeta  # lazy: ~1 s (pydantic)
    from conda_lock.lockfile.v2prelim.models import Lockfile  # lazy: ~1 s (pydantic)
    from conda_lock.models.channel import Channel  # lazy: ~1 s (pydantic)

    lf = Lockfile(package=entries_to_models(packages), metadata=LockMeta(
        content_hash=content_hash, channels=[Channel.from_string(c) for c in channels], platforms=platforms,
        sources=sources, custom_metadata=custom,
    ))
    write_conda_lock_file(lf, Path(path), metadata_choices=set())


def parse_lockfile(path: Path):  # noqa: ANN201 - conda_lock Lockfile
    from conda_lock.lockfile import parse_conda_lock_file  # lazy: ~1 s (pydantic)

    try:
        return parse_conda_lock_file(Path(path))
    except FileNotFoundError:
        raise CondastackError(f"lockfile not found: {path}.") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CondastackError(f"{path}: not a valid conda-lock lockfile: {first}") from None


def render_explicit(lockfile, platform: str) -> str:  # noqa: ANN001
    """conda-lock's own @EXPLICIT rendering for one platform (pip lines become comments)."""
    from conda_lock.conda_lock import render_lockfile_for_platform  # lazy: ~1 s (pydantic)

    lines = render_lockfile_for_platform(lockfile=lockfile, include_dev_dependencies=False, extras=set(),
                                         kind="explicit", platform=platform,
                                         suppress_warning_for_pip_and_explicit=True)
    return "\n".join(lines) + "\n"


def parse_pip_requirement(line: str):  # noqa: ANN201 - a conda-lock Dependency
    """conda-lock's reading of one pip requirement (raises ValueError and packaging errors)."""
    from conda_lock.src_parser.pyproject_toml import parse_python_requirement  # lazy: ~1 s (pydantic)

    return parse_python_requirement(line, manager="pip", category="main", mapping_url=mapping_url())


def marker_holds(markers: str | None, platform: str) -> bool:
    """Whether a pip requirement's environment markers hold on a conda platform (conda-lock's reading)."""
    from conda_lock.src_parser.markers import evaluate_marker  # lazy: ~1 s (pydantic)

    return bool(evaluate_marker(markers, platform))


def conda_match_spec(spec: str) -> str:
    """conda-lock's reading of one conda dependency, as a MatchSpec string (raises ValueError)."""
    from conda_lock.src_parser.conda_common import conda_spec_to_versioned_dep  # lazy: ~1 s (pydantic)

    return to_match_spec(conda_spec_to_versioned_dep(spec, "main"))


@contextlib.contextmanager
def _pool_wrapped(pypi_solver, wrap):  # noqa: ANN001, ANN202
    """conda-lock builds poetry's repository pool in a private function; wrap what it returns
    for one solve, then put it back. (No public hook exists: the adapter test pins this name.)"""
    real = pypi_solver._prepare_repositories_pool

    def pool(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return wrap(real(*args, **kwargs))

    pypi_solver._prepare_repositories_pool = pool
    try:
        yield
    finally:
        pypi_solver._prepare_repositories_pool = real


def solve_pypi(pip_specs: list[str], conda_entries: list[dict], platform: str, *, indexes: list[str],
               previous: list[dict] | None, update: list[str] | None, pre: bool,
               installed: dict[str, str] | None = None) -> list[dict]:
    """conda-lock's PyPI solve of `pip_specs` against the conda part; returns the pip entries.

    With `indexes`, only those PEP 503 indexes are asked (no request to pypi.org). A PyPI name
    that a conda package provides is taken as installed at the conda version, without
    requirements of its own (the conda-first pool). So is each of `installed` (PyPI name ->
    version: git requirements, whose own requirements the caller adds to `pip_specs`)."""

    import conda_lock.pypi_solver as pypi_solver  # lazy: ~1 s (pydantic)
    from conda_lock.lookup import conda_name_to_pypi_name  # lazy: ~1 s (pydantic)
    from conda_lock.models.pip_repository import PipRepository  # lazy: ~1 s (pydantic)

    pip_installed = [{"name": n, "version": v, "manager": "pip", "platform": platform, "dependencies": {},
                      "url": "file:///git-requirement", "hash": {}} for n, v in (installed or {}).items()]
    by_name = _with_provided_names({d.name: d for d in entries_to_models(conda_entries + pip_installed)})
    provided = {n.lower(): v for n, v in (installed or {}).items()}
    for d in by_name.values():
        if not d.name.startswith("__") and "python" in d.dependencies:
            provided[str(conda_name_to_pypi_name(d.name, mapping_url=mapping_url())).lower()] = d.version
    specs = {}
    for req in pip_specs:
        dep = parse_pip_requirement(req)
        if type(dep).__name__ == "PathDependency" and re.search(r"@\s*http://", req):
            dep = _http_url_dependency(dep, req)  # conda-lock reads only https:// as a URL
        specs[dep.name] = dep
    with contextlib.redirect_stdout(io.StringIO()), \
            _pool_wrapped(pypi_solver, lambda pool: _conda_first_pool(pool, provided, pre=pre)):
        solved = pypi_solver.solve_pypi(
            pip_specs=specs, use_latest=list(update or []),
            pip_locked={d.name: d for d in entries_to_models(previous or [])}, conda_locked=by_name,
            python_version=by_name["python"].version, platform=platform,
            pip_repositories=[PipRepository.from_string(u) for u in indexes],
            allow_pypi_requests=not indexes, mapping_url=mapping_url(), strip_auth=True,
        )
    return [model_entry(d) for d in solved.values() if d.manager == "pip"]
