"""Git requirements at lock time, as uv and pixi lock them: the ref becomes its commit, and the name,
version and requirements come from the source's own metadata at that commit.

The metadata is read with PEP 517's `prepare_metadata_for_build_wheel` (or, for a backend without it,
from the built wheel's METADATA) in an isolated build environment (the `build` package), whose build
requirements pip installs from the layer's own indexes. It is cached per locked URL, so a second
platform, a child layer or a re-solve reads it once. The commit each requirement (as written, without
credentials) got is kept in the lock's metadata (VCS_KEY), so a re-solve keeps it unless `--update NAME`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condastack.core.credentials import redact
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_write_text, file_lock
from condastack.core.git import commit_time, fetch_commit, resolve_ref
from condastack.core.layout import lockfile_path, vcs_metadata_path, vcs_mutex, vcs_source_dir
from condastack.core.names import canonical
from condastack.lock.lockfile import read_lock_document
from condastack.spec.stack import Stack
from condastack.spec.vcsreq import VCS_PREFIXES, VcsRequirement, credential_urls, parse_vcs

VCS_KEY = "condastack.vcs"  # lock metadata: {requirement as written, without credentials: {name, commit}}
_TAIL = 12  # lines of a failed build shown


@dataclass(frozen=True)
class VcsLocked:
    """A git requirement resolved: its commit and what the source's metadata says at that commit."""

    req: VcsRequirement
    commit: str
    name: str
    version: str
    requires: tuple[str, ...]  # the Requires-Dist that apply (requested extras resolved)

    @property
    def url(self) -> str:
        return self.req.locked_url(self.commit)

    def entry(self, platform: str) -> dict[str, Any]:
        """The lock entry: the URL with the full commit; no sha256 (the wheel is built, and hashed, by build)."""
        from packaging.requirements import Requirement  # lazy: ~12 ms a lock; pip specs only

        deps = {}
        for r in self.requires:
            q = Requirement(r)
            deps[q.name] = str(q.specifier) or "*"
        return {"name": self.name, "version": self.version, "manager": "pip", "platform": platform,
                "dependencies": deps, "url": self.url, "hash": {}, "category": "main", "optional": False}


def source_env(indexes: list[str], find_links: tuple[str, ...] | list[str] = (), pre: bool = False) -> dict[str, str]:
    """pip's settings for installing build requirements: the layer's indexes and find-links (credentials
    travel in the environment of the pip process only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONNOUSERSITE="1")
    if indexes:
        env["PIP_INDEX_URL"] = indexes[0]
        if indexes[1:]:
            env["PIP_EXTRA_INDEX_URL"] = " ".join(indexes[1:])
    if find_links:
        env["PIP_FIND_LINKS"] = " ".join(find_links)
    if pre:
        env["PIP_PRE"] = "1"
    return env


@dataclass
class VcsResolver:
    """Resolves a layer's git requirements during one lock run (each ref asked once, whatever the platform)."""

    pinned: dict[str, dict[str, str]]  # VCS_KEY of the previous lock (moved by --update NAME)
    fixed: dict[str, dict[str, str]]  # VCS_KEY of the parent's lock: a child takes the parent's commit
    update: set[str]  # canonical names given to --update
    credentials: list[str]  # URLs with credentials (the requirements' own, the stack's indexes and channels)
    pip_env: dict[str, str]  # for build requirements
    _memo: dict[str, VcsLocked] = field(default_factory=dict)

    def resolve(self, req: VcsRequirement) -> VcsLocked:
        if req.key not in self._memo:
            self._memo[req.key] = self._resolve(req)
        return self._memo[req.key]

    def recorded(self) -> dict[str, dict[str, str]]:
        """What the lock remembers: each requirement (as written, no credentials) -> name and commit."""
        return {k: {"name": v.name, "commit": v.commit} for k, v in sorted(self._memo.items())}

    def _resolve(self, req: VcsRequirement) -> VcsLocked:
        what = f"pip requirement '{req.shown}'"
        creds = [req.url, *self.credentials]
        old = self.fixed.get(req.key) or self.pinned.get(req.key) or {}
        if old.get("commit") and (req.key in self.fixed or canonical(old.get("name", "")) not in self.update):
            commit = old["commit"]
        else:
            commit = resolve_ref(req.bare_url, req.ref, what, creds)
        meta = read_metadata(req, commit, what, creds, self.pip_env)
        if req.name and canonical(req.name) != canonical(meta["name"]):
            raise CondastackError(f"{what}: it names the package {req.name}, but the source at {commit} is "
                                  f"{meta['name']} {meta['version']}. Fix the name (`{meta['name']} @ …`).")
        return VcsLocked(req=req, commit=commit, name=meta["name"], version=meta["version"],
                         requires=tuple(applying_requirements(meta["requires"], req.extras)))


def read_metadata(req: VcsRequirement, commit: str, what: str, credentials: list[str],
                  pip_env: dict[str, str]) -> dict[str, Any]:
    """Name, version and Requires-Dist of the source at `commit`, read once per locked URL."""
    url = req.locked_url(commit)
    cached = vcs_metadata_path(url)
    with file_lock(vcs_mutex(url)):
        try:
            data = json.loads(cached.read_text())
            if isinstance(data.get("name"), str) and isinstance(data.get("version"), str) \
                    and isinstance(data.get("requires"), list):
                return data
        except (OSError, ValueError, AttributeError):
            pass
        src = source_tree(req, commit, what, credentials)
        data = _prepare_metadata(src, what, pip_env)
        atomic_write_text(cached, json.dumps(data, sort_keys=True) + "\n")
    return data


def source_tree(req: VcsRequirement, commit: str, what: str, credentials: list[str]) -> Path:
    """The project folder at `commit` (the checkout, or its #subdirectory=), fetched once into the cache."""
    from condastack.core.pathsafe import check_under  # lazy: with tarfile and zipfile, ~3 ms of every lock

    src = fetch_commit(req.bare_url, commit, vcs_source_dir(req.locked_url(commit)), what, credentials)
    if req.subdirectory:
        src = check_under(src, req.subdirectory, f"{what}: #subdirectory=")
        if src.is_symlink():
            raise CondastackError(f"{what}: #subdirectory={req.subdirectory} is a symlink; name the real folder.")
    if not (src / "pyproject.toml").is_file() and not (src / "setup.py").is_file():
        raise CondastackError(f"{what}: the source at {commit} has no pyproject.toml or setup.py"
                              f"{' in ' + req.subdirectory if req.subdirectory else ''}; it is not a Python "
                              "project pip can build (name its folder with #subdirectory=…).")
    return src


def _prepare_metadata(src: Path, what: str, pip_env: dict[str, str]) -> dict[str, Any]:
    """PEP 517 prepare_metadata_for_build_wheel (or a wheel build) in an isolated build environment."""
    # lazy: `build` (and its isolated environments) load only when a git requirement is resolved
    from build import ProjectBuilder
    from build.env import DefaultIsolatedEnv

    log: list[str] = []
    env = dict(pip_env, SOURCE_DATE_EPOCH=commit_time(src))

    def runner(cmd: Sequence[str], cwd: str | None = None, extra_environ: Mapping[str, str] | None = None) -> None:
        p = subprocess.run(cmd, cwd=cwd, env={**env, **(extra_environ or {})}, capture_output=True, text=True)
        log.append(p.stdout + p.stderr)
        if p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, cmd, p.stdout, p.stderr)

    try:
        with tempfile.TemporaryDirectory(prefix="condastack-vcs-") as out, DefaultIsolatedEnv() as iso:
            builder = ProjectBuilder.from_isolated_env(iso, src, runner=runner)
            _install(iso.python_executable, builder.build_system_requires, env, log)
            _install(iso.python_executable, builder.get_requires_for_build("wheel"), env, log)
            dist_info = Path(builder.metadata_path(out))
            text = (dist_info / "METADATA").read_text(encoding="utf-8")
    except CondastackError:
        raise
    except Exception as e:  # the backend's and build's errors are of many types; all are the project's
        raise build_failure(what, "reading its metadata", log, e) from None
    import email.parser  # lazy: ~5 ms of every lock's start-up, for git requirements only

    msg = email.parser.Parser().parsestr(text)
    if not msg.get("Name") or not msg.get("Version"):
        raise CondastackError(f"{what}: the source's metadata has no Name or Version.")
    return {"name": str(msg["Name"]), "version": str(msg["Version"]),
            "requires": [str(r) for r in msg.get_all("Requires-Dist") or []]}


def _install(python: str, reqs: set[str] | Any, env: dict[str, str], log: list[str]) -> None:
    """pip install of build requirements into the isolated environment (the layer's indexes)."""
    if not reqs:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="condastack-build-req-") as f:
        f.write("\n".join(sorted(reqs)) + "\n")
        f.flush()
        p = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-warn-script-location",
                            "--no-compile", "-r", f.name], env=env, capture_output=True, text=True)
    log.append(p.stdout + p.stderr)
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, "pip install", p.stdout, p.stderr)


def build_failure(what: str, doing: str, log: list[str], e: BaseException) -> CondastackError:
    """The build's last lines (credentials masked), as a user error."""
    text = "\n".join(log) + "\n" + str(e)
    lines = [line.rstrip() for line in redact(text).splitlines() if line.strip()]
    tail = "\n  ".join(lines[-_TAIL:])
    return CondastackError(f"{what}: the source does not build ({doing} failed). Its last lines:\n  {tail}")


def applying_requirements(requires: list[str], extras: tuple[str, ...]) -> list[str]:
    """The Requires-Dist that join the solve: those without `extra` markers, and those of the requested
    extras (their marker's extra part evaluated here, so the line joins without a marker)."""
    from packaging.requirements import InvalidRequirement, Requirement  # lazy: ~12 ms a lock; pip specs only

    out = []
    for line in requires:
        try:
            r = Requirement(line)
        except InvalidRequirement:
            continue
        if r.marker is None or "extra" not in str(r.marker):
            out.append(str(r))
            continue
        if any(r.marker.evaluate({"extra": e}) for e in extras):
            r.marker = None
            out.append(str(r))
    return out


def recorded_commits(custom: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """VCS_KEY of a lock's custom metadata ({} when absent or not as condastack writes it)."""
    try:
        data = json.loads((custom or {}).get(VCS_KEY) or "{}")
    except (TypeError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, dict)
            and isinstance(v.get("commit"), str) and isinstance(v.get("name"), str)}


def split_vcs(specs: list[str]) -> tuple[list[str], list[VcsRequirement]]:
    """(requirements for the index solve, git requirements)."""
    plain, vcs = [], []
    for s in specs:
        v = parse_vcs(s)
        if v is None:
            plain.append(s)
        else:
            vcs.append(v)
    return plain, vcs


def is_vcs_entry(entry: dict) -> bool:
    return str(entry.get("url", "")).startswith(VCS_PREFIXES)


def add_requirements(specs: list[str], extra: list[str]) -> list[str]:
    """`specs` with a git package's requirements added; one of a name already there narrows it
    (conda-lock keeps one requirement per name, so two would replace each other)."""
    from packaging.requirements import InvalidRequirement, Requirement  # lazy: ~12 ms a lock; pip specs only

    out = list(specs)
    for line in extra:
        new = Requirement(line)
        for i, old_line in enumerate(out):
            try:
                old = Requirement(old_line)
            except InvalidRequirement:
                continue
            if canonical(old.name) != canonical(new.name):
                continue
            if not old.url and not old.marker and not new.marker:
                old.specifier &= new.specifier
                old.extras |= new.extras
                out[i] = str(old)
            break
        else:
            out.append(line)
    return out


def resolve_all(reqs: list[VcsRequirement], resolver: VcsResolver) -> list[VcsLocked]:
    """Each git requirement resolved; two that give one name are a conflict."""
    out: dict[str, VcsLocked] = {}
    for req in reqs:
        v = resolver.resolve(req)
        other = out.get(canonical(v.name))
        if other is not None and other.url != v.url:
            raise CondastackError(f"pip requirements '{other.req.shown}' and '{req.shown}' are both {v.name} "
                                  f"({other.url} and {v.url}). Keep one.")
        out[canonical(v.name)] = v
    return list(out.values())


def resolver_for(stack: Stack, name: str, update: list[str]) -> VcsResolver:
    """The resolver of one layer's lock run: the commits its previous lock and its parent's lock recorded,
    the layer's indexes (for build requirements) and every credentialed URL the stack gives."""
    def recorded(layer: str | None) -> dict[str, dict[str, str]]:
        path = lockfile_path(stack.root, layer) if layer else None
        if path is None or not path.is_file():
            return {}
        return recorded_commits(read_lock_document(path)["metadata"].get("custom_metadata"))

    opts, indexes = stack.pip_options_for(name), stack.pip_indexes_for(name)
    specs = [s for plat in stack.platforms for s in stack.specs_for(name, plat)[1]]
    return VcsResolver(pinned=recorded(name), fixed=recorded(stack.layer(name).extends),
                       update={canonical(u) for u in update},
                       credentials=credential_urls(specs) + stack.channels_for(name) + indexes,
                       pip_env=source_env(indexes, opts.find_links, opts.pre))


def recorded_for(stack: Stack, name: str, resolver: VcsResolver) -> dict[str, dict[str, str]]:
    """What the new lock remembers: the commits resolved in this run, and those of platforms kept as
    they were, for the requirements the layer still has."""
    keys = set()
    for plat in stack.platforms:
        keys |= {v.key for v in split_vcs(stack.specs_for(name, plat)[1])[1]}
    return {k: v for k, v in {**resolver.pinned, **resolver.recorded()}.items() if k in keys}
