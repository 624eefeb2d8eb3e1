"""The one seam between conda-lock (formats) and py-rattler (solving, installing).

conda-lock is the authority on what one conda match spec or pip requirement
means (envfile.py reads the environment.yml around them through here) and on
the lockfile models; py-rattler does the solving. Everything that converts
between the two lives here and nowhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from condastack.core.errors import CondastackError
from condastack.core.layout import records_sidecar_path
from condastack.core.names import mapping_url

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


_SESSION: list[list] = []  # per running lock session: its gateway, once one is needed


@contextlib.contextmanager
def gateway_session():  # noqa: ANN201
    """One rattler Gateway for the solves of one lock run: the channels' repodata is read once,
    not once per layer and per error explanation. Outside a session each call reads afresh.
    Made on first use, so a lock run that solves nothing never imports rattler."""
    _SESSION.append([])
    try:
        yield
    finally:
        _SESSION.pop()


def _gateway():  # noqa: ANN202
    import rattler

    if not _SESSION:
        return rattler.Gateway()
    if not _SESSION[-1]:
        _SESSION[-1].append(rattler.Gateway())
    return _SESSION[-1][0]


def solve_conda(channels: list[str], specs: list[str], platform: str, vpkgs: dict[str, str], *,
                pinned: list | None = None, locked: list | None = None) -> list:
    """Solve conda specs for one platform with py-rattler; returns RepoDataRecords.

    `pinned` records are hard pins (a parent layer's lock); `locked` ones are
    preferences (the previous lock, so a re-solve moves as little as possible).
    """
    import asyncio

    import rattler

    return asyncio.run(rattler.solve(
        channels, specs, gateway=_gateway(), platforms=[platform, "noarch"],
        virtual_packages=virtual_packages(vpkgs), pinned_packages=pinned or None, locked_packages=locked or None,
    ))


def query_records(channels: list[str], platform: str, names: list[str]) -> list:
    """Every record of these package names in the channels (platform and noarch), not recursive."""
    import asyncio

    found = asyncio.run(_gateway().query(channels, [platform, "noarch"], names, recursive=False))
    return [r for recs in found for r in recs]


def split_depend(dep: str) -> tuple[str, str]:
    name, _, spec = dep.strip().partition(" ")
    return name, spec.strip() or "*"


def read_lock_document(path: Path, *, strings: bool = False) -> dict:
    """A conda-lock file as plain YAML (`package` list and `metadata` checked).

    py-rattler's LockFile reader rejects the pip dependency values conda-lock
    itself writes ('*' or a bare version), so it is never on a read path.
    With `strings`, every scalar stays the text it is (a hash of all digits
    is not a number): what installing from the file needs. One lock run reads
    a parent's lock several times, so a parse is reused while the file is unchanged.
    """
    path = Path(path)
    try:
        key = _lock_doc_key(path, strings)
    except FileNotFoundError:
        raise CondastackError(f"lockfile not found: {path}.") from None
    except OSError as e:
        raise CondastackError(f"{path}: cannot read the lockfile: {e.strerror}.") from None
    if key not in _LOCK_DOCS:
        if len(_LOCK_DOCS) >= 16:  # a run touches a few files; old versions are dropped
            _LOCK_DOCS.pop(next(iter(_LOCK_DOCS)))
        _LOCK_DOCS[key] = _load_lock_document(path, strings)
    return _LOCK_DOCS[key]


_LOCK_DOCS: dict[tuple, dict] = {}


def _lock_doc_key(path: Path, strings: bool) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, st.st_ino, strings)


def _remember_lock_document(path: Path, doc: dict) -> None:
    import copy

    _LOCK_DOCS[_lock_doc_key(path, False)] = copy.deepcopy(doc)


def _load_lock_document(path: Path, strings: bool) -> dict:
    loader = getattr(yaml, "CBaseLoader" if strings else "CSafeLoader", yaml.BaseLoader if strings else yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a safe (or base) loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CondastackError(f"{path}: not a readable conda-lock file ({type(e).__name__}). "
                              "Re-create it with `condastack lock`.") from None
    if not isinstance(data, dict) or not isinstance(data.get("package"), list) or \
            not isinstance(data.get("metadata"), dict) or not all(isinstance(p, dict) for p in data["package"]):
        raise CondastackError(f"{path}: not a conda-lock lockfile (no 'package' list or 'metadata').")
    _check_lock_fields(path, data)
    return data


_LOCK_SCALARS = ("name", "version", "manager", "platform", "url")
_LOCK_VERSION = re.compile(r"^[A-Za-z0-9_!*]+(?:[.+-][A-Za-z0-9_!*]+)*\Z")
_CONDA_ARCHIVE = (".conda", ".tar.bz2")


def _check_lock_fields(path: Path, data: dict) -> None:
    """The fields installing reads have the types and shapes conda-lock writes; a lockfile is hostile
    until checked, and a wrong one must be a message naming it, not a crash deeper in the installer."""
    def bad(why: str) -> CondastackError:
        return CondastackError(f"{path}: not a readable conda-lock file ({why}). Re-create it with "
                               "`condastack lock`.")

    if "version" in data and not str(data["version"]).isdigit():
        raise bad(f"its format 'version' {str(data['version'])[:40]!r} is not an integer")
    for i, p in enumerate(data["package"]):
        for key in _LOCK_SCALARS:
            if not isinstance(p.get(key), (str, int, float)) or isinstance(p.get(key), bool):
                raise bad(f"package #{i + 1}: '{key}' is {type(p.get(key)).__name__}, not a string")
        label = f"package {str(p['name'])[:80]}"
        if not _LOCK_VERSION.match(str(p["version"])):
            raise bad(f"{label}: malformed version {str(p['version'])[:80]!r}")
        if "://" not in str(p["url"]):
            raise bad(f"{label}: 'url' {str(p['url'])[:80]!r} is not a URL")
        if p["manager"] == "conda" and not str(p["url"]).endswith(_CONDA_ARCHIVE):
            raise bad(f"{label}: the URL {str(p['url'])[:200]} does not name a conda package (.conda or .tar.bz2)")
        if not isinstance(p.get("hash", {}), dict):
            raise bad(f"{label}: 'hash' is {type(p['hash']).__name__}, not a mapping")


def read_lock_entries(path: Path, *, strings: bool = False) -> list[dict]:
    """The `package` entries of a conda-lock file (see read_lock_document)."""
    return list(read_lock_document(path, strings=strings)["package"])


def records_to_json(records: list) -> list[dict]:
    """RepoDataRecords as repodata JSON (with fn, url, channel): everything a re-solve needs."""
    import json

    return [json.loads(r.to_json()) for r in records]


def records_from_json(items: list[dict]) -> list:
    """RepoDataRecords from repodata JSON entries (as written by records_to_json).

    rattler builds records from repodata, so the entries are grouped into one
    small repodata.json per (channel, subdir) folder and read back.
    """
    import json
    import tempfile

    import rattler

    groups: dict[str, dict[str, dict]] = {}
    for item in items:
        url = str(item.get("url") or "")
        base, _, fn = url.rpartition("/")
        if not fn or not item.get("name") or not item.get("version"):
            raise CondastackError(f"record {item.get('name')}: no url, name or version; re-lock the layer.")
        entry = {k: v for k, v in item.items() if k not in ("url", "channel", "fn")}
        entry.setdefault("build_number", _build_number(str(item.get("build", ""))))
        entry.setdefault("subdir", base.rsplit("/", 1)[-1])
        entry.setdefault("depends", [])
        groups.setdefault(base, {})[fn] = entry
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (base, pkgs) in enumerate(groups.items()):
            path = Path(tmp) / f"{i}.json"
            conda = {k: v for k, v in pkgs.items() if k.endswith(".conda")}
            tar = {k: v for k, v in pkgs.items() if not k.endswith(".conda")}
            path.write_text(json.dumps({"info": {"subdir": base.rsplit("/", 1)[-1]}, "packages": tar,
                                        "packages.conda": conda}))
            chan_url = base.rsplit("/", 1)[0] + "/"
            for r in rattler.RepoData.from_path(path).into_repo_data(rattler.Channel(chan_url)):
                out.append(rattler.RepoDataRecord(r, r.file_name, f"{base}/{r.file_name}", chan_url))
    return out


def _build_number(build: str) -> int:
    tail = build.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def lock_entries_as_json(entries: list[dict]) -> list[dict]:
    """Conda entries of a lockfile as repodata JSON (no constrains: the file does not carry them)."""
    out = []
    for p in entries:
        h = p.get("hash") or {}
        deps = p.get("dependencies") or {}
        out.append({"name": p["name"], "version": str(p["version"]), "build": str(p.get("build") or ""),
                    "depends": [f"{k} {v}".strip() if v and v != "*" else k for k, v in deps.items()],
                    "md5": h.get("md5"), "sha256": h.get("sha256"), "url": p.get("url")})
    return out


def fetch_records(channels: list[str], platform: str, entries: list[dict]) -> tuple[list, list[str]]:
    """The full channel records (depends and constrains) of a lock's conda entries.

    Returns (records, names not found). A record is matched by sha256, then by file name.
    """
    names = sorted({p["name"] for p in entries})
    by_sha: dict[str, object] = {}
    by_fn: dict[str, object] = {}
    for r in query_records(channels, platform, names):
        if r.sha256 is not None:
            by_sha[r.sha256.hex()] = r
        by_fn[f"{r.name.normalized}/{r.file_name}"] = r
    out, missing = [], []
    for p in entries:
        sha = (p.get("hash") or {}).get("sha256")
        rec = by_sha.get(sha) if sha else None
        rec = rec or by_fn.get(f"{p['name']}/{str(p.get('url', '')).rsplit('/', 1)[-1]}")
        if rec is None:
            missing.append(f"{p['name']} {p.get('version')} {p.get('build')}")
        else:
            out.append(rec)
    return out, missing


def explain_solver_error(err: Exception) -> str:
    """rattler's solver message, condensed to its informative lines."""
    text = str(err).strip()
    lines = [l.rstrip() for l in text.splitlines() if l.strip()]
    keep = [l for l in lines if not l.strip().startswith(("Cannot solve the request because of:",))]
    return "\n".join(keep[:12]) + ("\n  …" if len(keep) > 12 else "")


# --------------------------------------------------------------------------- pip part (conda-lock)


def solve_pip(pip_specs: list[str], conda_entries: list[dict], platform: str, vpkgs: dict[str, str], *,
              indexes: list[str], previous: list[dict] | None = None, update: list[str] | None = None,
              pre: bool = False) -> list[dict]:
    """Solve pip requirements with conda-lock's PyPI solver against conda's python.

    With `indexes`, only those PEP 503 indexes are asked (no request to pypi.org).
    A PyPI name that a conda package provides (the shipped mapping) is taken as
    installed at the conda version with no requirements of its own: it is never
    resolved again, and neither are its PyPI dependencies (torch's nvidia-* wheels).
    """
    from unittest import mock

    from conda_lock import pypi_solver
    from conda_lock.lookup import conda_name_to_pypi_name
    from conda_lock.models.pip_repository import PipRepository
    from conda_lock.src_parser.pyproject_toml import parse_python_requirement

    conda_locked = entries_to_models(conda_entries)
    by_name = {d.name: d for d in conda_locked}
    python = by_name.get("python")
    if python is None:
        raise CondastackError("pip dependencies need python in the conda part of the layer; add `python` to its "
                              "dependencies.")
    by_name = _with_provided_names(by_name)
    provided = {}
    for d in by_name.values():
        if not d.name.startswith("__") and "python" in d.dependencies:
            provided[str(conda_name_to_pypi_name(d.name, mapping_url=mapping_url())).lower()] = d.version
    specs = {}
    for req in pip_specs:
        dep = parse_python_requirement(req, manager="pip", category="main", mapping_url=mapping_url())
        if type(dep).__name__ == "PathDependency" and re.search(r"@\s*http://", req):
            dep = _http_url_dependency(dep, req)  # conda-lock reads only https:// as a URL
        specs[dep.name] = dep
    real_pool = pypi_solver._prepare_repositories_pool

    def pool(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return _conda_first_pool(real_pool(*args, **kwargs), provided, pre=pre)

    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), mock.patch.object(pypi_solver, "_prepare_repositories_pool", pool):
            solved = pypi_solver.solve_pypi(
                pip_specs=specs, use_latest=list(update or []),
                pip_locked={d.name: d for d in entries_to_models(previous or [])}, conda_locked=by_name,
                python_version=python.version, platform=platform,
                pip_repositories=[PipRepository.from_string(u) for u in indexes],
                allow_pypi_requests=not indexes, mapping_url=mapping_url(), strip_auth=True,
            )
    except Exception as e:  # poetry's resolver raises many types; all are user-facing here
        msg = str(e).strip().splitlines()
        raise CondastackError("pip requirements cannot be resolved: " + " ".join(m.strip() for m in msg[:8])) from None
    out = [model_entry(d) for d in solved.values() if d.manager == "pip"]
    for d in out:
        if d["url"].startswith("git+file://None/"):  # conda-lock writes a file URL's empty host as "None"
            d["url"] = "git+file:///" + d["url"][len("git+file://None/"):]
        if not d["hash"].get("sha256") and d["url"].startswith(("http://", "https://")):
            d["hash"]["sha256"] = _url_sha256(d["url"], d["name"])  # `name @ URL`: pip --require-hashes needs it
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


def entries_to_models(entries: list[dict]) -> list:
    """conda-lock v1 entries (plain data) as conda-lock's LockedDependency models."""
    from conda_lock.lockfile.v1.models import HashModel
    from conda_lock.lockfile.v2prelim.models import LockedDependency

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
    from conda_lock.lookup import conda_name_to_pypi_name

    from condastack.core.names import canonical, pypi_names_for_conda

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

    from conda_lock._vendor.poetry.core.packages.package import Package

    from condastack.core.names import canonical

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


# --------------------------------------------------------------------------- lockfile format (conda-lock)


def render_lockfile(path: Path, packages: list[dict], *, channels: list[str], platforms: list[str],
                    sources: list[str], content_hash: dict[str, str], custom: dict[str, str]) -> tuple[str, dict]:
    """conda-lock's unified lockfile (v1 on disk) for `path`, not yet written: (its text, the document
    reading it back gives). The plain writer where it covers the lock, else conda-lock's own writer."""
    if can_write_fast(packages, channels):
        return lockfile_document(Path(path).name, packages, channels=channels, platforms=platforms,
                                 sources=sources, content_hash=content_hash, custom=custom)
    # conda-lock writes the file's own name into its header: a temporary folder keeps that name.
    from condastack.core.fs import TMP_MARK, remove_path

    tmpdir = Path(path).parent / f"{TMP_MARK}{Path(path).name}.{os.getpid()}.new"
    tmpdir.mkdir(exist_ok=True)
    try:
        conda_lock_write(tmpdir / Path(path).name, packages, channels=channels, platforms=platforms,
                         sources=sources, content_hash=content_hash, custom=custom)
        return (tmpdir / Path(path).name).read_text(), _load_lock_document(tmpdir / Path(path).name, False)
    finally:
        remove_path(tmpdir)


def remember_lockfile(path: Path, doc: dict) -> None:
    """`doc` is what reading the lockfile just written at `path` gives: no re-parse in this run."""
    _remember_lock_document(Path(path), doc)


def conda_lock_write(path: Path, packages: list[dict], *, channels: list[str], platforms: list[str],
                     sources: list[str], content_hash: dict[str, str], custom: dict[str, str]) -> None:
    """conda-lock's own writer (the format authority the plain writer is tested against)."""
    from conda_lock.lockfile import write_conda_lock_file
    from conda_lock.lockfile.v1.models import LockMeta
    from conda_lock.lockfile.v2prelim.models import Lockfile
    from conda_lock.models.channel import Channel

    lf = Lockfile(package=entries_to_models(packages), metadata=LockMeta(
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
# Reading a lockfile for installing: the entries are read as plain YAML (py-rattler's
# reader rejects the pip dependency values conda-lock writes), full records come
# from the records file beside the lock.


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
    """The conda records and pip wheels of one platform of a conda-lock v1 file.

    Read as plain YAML (conda-lock's own form, pip entries included); the full
    records kept beside the lock are used where they match, else the entries.
    """
    import yaml

    path = Path(path)
    entries = read_lock_entries(path, strings=True)
    try:
        meta = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)).get("metadata") or {}
    except Exception:  # read_lock_entries has already proven it is YAML
        meta = {}
    plats = tuple(meta.get("platforms") or sorted({str(p.get("platform")) for p in entries}))
    if platform not in plats:
        raise CondastackError(
            f"{path}: this lock covers {', '.join(plats) or 'no platform'}, not this machine's platform {platform}. "
            f"Add {platform} to 'platforms' in environments/stack.yml and run `condastack lock`, "
            f"or build on a {'/'.join(plats) or 'matching'} machine."
        )
    mine = [p for p in entries if p.get("platform") == platform]
    conda_entries = [p for p in mine if p.get("manager") == "conda"]
    for p in conda_entries:
        if not (p.get("hash") or {}).get("sha256"):
            raise CondastackError(f"{path}: package {p.get('name')} {p.get('version')} has no sha256 in the lock; "
                                  "condastack installs only packages it can verify. Re-lock it.")
    full = {str(j.get("sha256")): j for j in read_records_sidecar(records_sidecar_path(path), platform)}
    items = [dict(full[p["hash"]["sha256"]], url=p["url"]) if p["hash"]["sha256"] in full
             else lock_entries_as_json([p])[0] for p in conda_entries]
    conda = tuple(records_from_json(items))
    wheels = []
    for p in mine:
        if p.get("manager") != "pip":
            continue
        _refuse_vcs(path, p)
        sha = (p.get("hash") or {}).get("sha256")
        if not sha:
            raise CondastackError(f"{path}: pip package {p.get('name')} {p.get('version')} has no sha256 in the lock; "
                                  "`pip --require-hashes` needs one. Re-lock it.")
        wheels.append(LockedWheel(name=str(p["name"]), version=str(p["version"]), url=str(p["url"]), sha256=sha))
    return LockedEnv(path=path, platform=platform, platforms=plats, conda=conda, pip=tuple(wheels))


def _refuse_vcs(path: Path, p: dict) -> None:
    """A pip package locked from version control (conda-lock records its commit, not a wheel's sha256)."""
    url = str(p.get("url", ""))
    if url.startswith(("git+", "hg+", "svn+", "bzr+")):
        raise CondastackError(
            f"{path}: pip package {p.get('name')} {p.get('version')} is locked from version control ({url}); "
            "condastack builds from sha256-checked wheels only. Build a wheel of that commit and serve it from "
            "an index or list it as `name @ https://…/name.whl`, or wrap it with `condastack wrap`, then re-lock.")


def read_records_sidecar(path: Path, platform: str) -> list[dict]:
    """One platform's repodata JSON entries from a records file ([] when absent or unreadable)."""
    import json

    try:
        data = json.loads(Path(path).read_text())
        items = data["platforms"][platform]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def with_url(record: object, url: str) -> object:
    """A copy of a RepoDataRecord that is fetched from `url` (our verified archive)."""
    import rattler

    r = record
    channel = r.channel or url.rsplit("/", 1)[0] + "/"  # type: ignore[attr-defined]
    return rattler.RepoDataRecord(r, r.file_name, url, channel)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- lockfile format, without the import
# Importing conda-lock and building its pydantic models costs more than the solve itself on a
# real stack. The common path (conda packages, main category) therefore writes the same bytes
# conda-lock's writer and explicit renderer write; tests/test_lock.py compares the two on
# every change, so conda-lock stays the authority on the format.

_PLAIN_CHANNEL = re.compile(r"^[A-Za-z0-9_.:/+%~-]+$")


def record_entry(r, platform: str) -> dict:  # noqa: ANN001 - a rattler RepoDataRecord
    """One RepoDataRecord as a conda-lock v1 `package` entry (plain data, written order)."""
    if r.sha256 is None or r.md5 is None:
        raise CondastackError(f"{r.url}: the channel gives no sha256/md5 for {r.name.normalized}; "
                              "condastack only locks packages it can verify.")
    return {"name": r.name.normalized, "version": str(r.version), "manager": "conda", "platform": platform,
            "dependencies": dict(split_depend(d) for d in r.depends), "url": r.url,
            "hash": {"md5": r.md5.hex(), "sha256": r.sha256.hex()}, "build": str(r.build),
            "category": "main", "optional": False}


def _v1_entry(p: dict) -> dict:
    """An entry in conda-lock's written key order, unset fields left out, dependencies sorted."""
    out = {k: p[k] for k in ("name", "version", "manager", "platform") if k in p}
    out["version"] = str(out.get("version"))
    out["dependencies"] = dict(sorted((p.get("dependencies") or {}).items()))
    out["url"] = p["url"]
    out["hash"] = {k: v for k, v in (p.get("hash") or {}).items() if v is not None}
    for k in ("source", "build"):
        if p.get(k) is not None:
            out[k] = p[k]
    out["category"] = p.get("category", "main")
    out["optional"] = bool(p.get("optional", False))
    return out


def can_write_fast(packages: list[dict], channels: list[str]) -> bool:
    """Whether the plain writer covers this lock (else conda-lock's own writer runs)."""
    return all(_PLAIN_CHANNEL.match(c) for c in channels) and all(
        p.get("category", "main") == "main" and not p.get("optional") and not p.get("source") for p in packages)


def lockfile_text(name: str, packages: list[dict], *, channels: list[str], platforms: list[str], sources: list[str],
                  content_hash: dict[str, str], custom: dict[str, str]) -> str:
    """The text conda-lock's write_conda_lock_file writes for a main-category lock named `name`."""
    return lockfile_document(name, packages, channels=channels, platforms=platforms, sources=sources,
                             content_hash=content_hash, custom=custom)[0]


def lockfile_document(name: str, packages: list[dict], *, channels: list[str], platforms: list[str],
                      sources: list[str], content_hash: dict[str, str], custom: dict[str, str]) -> tuple[str, dict]:
    """The lockfile's text and the document it holds."""
    header = [
        'This lock file was generated by conda-lock (https://github.com/conda/conda-lock). DO NOT EDIT!', '',
        'A "lock file" contains a concrete list of package versions (with checksums) to be installed. Unlike',
        'e.g. `conda env create`, the resulting environment will not change as new package versions become',
        'available, unless you explicitly update the lock file.', '',
        'Install this environment as "YOURENV" with:', f'    conda-lock install -n YOURENV {name}',
        'To update a single package to the latest version compatible with the version constraints in the source:',
        f'    conda-lock lock  --lockfile {name} --update PACKAGE',
        'To re-solve the entire environment, e.g. after changing a version constraint in the source file:',
        f'    conda-lock {" ".join("-f " + s for s in sources)} --lockfile {name}',
    ]
    pkgs = sorted((p for p in packages if not (p["manager"] == "conda" and p["name"].startswith("__"))),
                  key=lambda p: (p["manager"], p["name"], p["platform"]))
    meta: dict = {"content_hash": content_hash,
                  "channels": [{"url": c, "used_env_vars": []} for c in channels],
                  "platforms": platforms, "sources": sources}
    if custom:
        meta["custom_metadata"] = custom
    out = {"version": 1, "metadata": meta, "package": [_v1_entry(p) for p in pkgs]}
    dumper = getattr(yaml, "CDumper", yaml.Dumper)
    text = "".join(("# " + line).rstrip() + "\n" for line in header) + yaml.dump(out, Dumper=dumper, sort_keys=False)
    return text, out


def _toposort(deps: dict[str, set[str]]) -> list[str]:
    """conda's toposort (as conda-lock orders @EXPLICIT files): sorted layers; cycles broken by fewest deps."""
    data = {k: set(v) - {k} for k, v in deps.items()}
    if "python" in data:
        data["python"].discard("pip")
    for extra in set().union(*data.values()) - set(data) if data else ():
        data[extra] = set()
    out: list[str] = []
    while data:
        ready = sorted(k for k, v in data.items() if not v)
        if not ready:
            key = sorted(data.items(), key=lambda item: (len(item[1]), item[0]))[0][0]
            ready = [key]
        for k in ready:
            out.append(k)
            data.pop(k, None)
        for v in data.values():
            v -= set(ready)
    return out


def explicit_text(packages: list[dict], platform: str, input_hash: str | None) -> str:
    """conda-lock's @EXPLICIT rendering of one platform (pip packages as '# pip' lines)."""
    lines = ["# Generated by conda-lock.", f"# platform: {platform}", f"# input_hash: {input_hash}", "@EXPLICIT"]
    for manager in ("conda", "pip"):
        mine = {p["name"]: p for p in packages if p["platform"] == platform and p["manager"] == manager
                and not (manager == "conda" and p["name"].startswith("__"))}
        order = [n for n in _toposort({n: set(p.get("dependencies") or {}) for n, p in mine.items()}) if n in mine]
        for n in order:
            p = mine[n]
            if manager == "conda":
                lines.append(os.path.expandvars(f"{p['url']}#{(p.get('hash') or {}).get('md5')}"))
            else:
                sha = (p.get("hash") or {}).get("sha256")
                lines.append(f"# pip {n} @ {p['url']}" + (f"#sha256={sha}" if sha else ""))
    return "\n".join(lines) + "\n"
