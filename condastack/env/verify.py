"""Check an environment against its lock: `condastack verify LAYER | --prefix PATH`.

Three checks, each reported as a list of problems (drift):
- conda packages: every locked package present at its exact version and
  build (conda-meta/*.json), no extra ones;
- conda-managed files: each file's sha256 against the package's paths.json
  (`sha256_in_prefix` where relocation rewrote it). A file that a pip
  distribution's RECORD also lists is reported as clobbered, naming both
  owners: that is what later breaks conda-pack;
- pip distributions: name and version of every *.dist-info that no conda
  package owns, against the lock's pip part; for a git package, also the
  commit its direct_url.json names.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from condastack.core.errors import CondastackError
from condastack.core.fs import HASH_THREADS, sha256_file
from condastack.core.layout import env_prefix, lockfile_path, pkgs_dir
from condastack.core.names import canonical
from condastack.core.pathsafe import check_package
from condastack.core.platforms import host_platform
from condastack.env.locked import read_locked_env
from condastack.env.prefix import MARKER, Env, dist_name_version
from condastack.env.vcswheel import installed_commit, locked_commit


@dataclass
class Problem:
    kind: str  # missing-package, wrong-build, extra-package, missing-file, modified-file, clobbered-file,
    #            missing-pip, wrong-pip-version, wrong-pip-commit (a git package), extra-pip,
    #            not-the-locked-package
    package: str
    detail: str
    path: str | None = None
    owners: list[str] | None = None  # for clobbered files: [conda owner, pip owner]


@dataclass
class VerifyReport:
    prefix: Path
    lockfile: Path
    platform: str
    conda_packages: int = 0
    files_checked: int = 0
    pip_packages: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"prefix": str(self.prefix), "lockfile": str(self.lockfile), "platform": self.platform,
                "ok": self.ok, "conda_packages": self.conda_packages, "files_checked": self.files_checked,
                "pip_packages": self.pip_packages,
                "problems": [{k: v for k, v in asdict(p).items() if v is not None} for p in self.problems]}


def verify_layer(root: Path | None = None, layer: str | None = None, *, prefix: Path | None = None,
                 lockfile: Path | None = None) -> VerifyReport:
    """Verify `envs/<layer>` (or `prefix`) against `lock/<layer>.conda-lock.yml` (or the env's own marker)."""
    if prefix is None:
        if layer is None or root is None:
            raise CondastackError("verify needs a LAYER or --prefix PATH.")
        prefix = env_prefix(root, layer)
    prefix = Path(prefix).absolute()
    Env(prefix).require_conda_env(f" Run `condastack build {layer}` first." if layer else "")
    if lockfile is None:
        if layer is not None and root is not None:
            lockfile = lockfile_path(Path(root), layer)
        else:
            marker = Env(prefix).marker
            if marker is None or not marker.lockfile:
                raise CondastackError(f"{prefix}: no {MARKER} naming its lock; pass the LAYER to verify against "
                                      "lock/<layer>.conda-lock.yml.")
            lockfile = Path(marker.lockfile)
    if not Path(lockfile).is_file():
        raise CondastackError(f"{lockfile}: lockfile not found. Run `condastack lock {layer or '<layer>'}`.")
    return verify_prefix(prefix, Path(lockfile))


def verify_prefix(prefix: Path, lockfile: Path) -> VerifyReport:

    env = read_locked_env(lockfile, host_platform())
    rep = VerifyReport(prefix=prefix, lockfile=lockfile, platform=env.platform)
    on_disk = Env(prefix)
    records = on_disk.records
    rep.conda_packages = len(records)

    locked = {r.name.normalized: r for r in env.conda}
    for name, r in sorted(locked.items()):
        meta = records.get(name)
        want = f"{r.version} {r.build}"
        if meta is None:
            rep.problems.append(Problem("missing-package", name, f"locked {want}, not installed"))
        elif (str(meta.get("version")), str(meta.get("build"))) != (str(r.version), str(r.build)):
            rep.problems.append(Problem("wrong-build", name,
                                        f"installed {meta.get('version')} {meta.get('build')}, locked {want}"))
        else:
            _check_own_metadata(r, meta, rep)
    for name in sorted(set(records) - set(locked)):
        m = records[name]
        rep.problems.append(Problem("extra-package", name, f"{m.get('version')} {m.get('build')} is not in the lock"))

    # pip distributions are the dist-infos that no conda package installed
    dists = on_disk.pip_dists()
    _check_files(prefix, records, _pip_owners(prefix, dists), rep)

    rep.pip_packages = len(dists)
    lock_pip = {canonical(w.name): w for w in env.pip}
    for name, w in sorted(lock_pip.items()):
        have = dists.get(name)
        if have is None:
            rep.problems.append(Problem("missing-pip", w.name, f"locked {w.version}, not installed"))
        elif have[0] != w.version:
            rep.problems.append(Problem("wrong-pip-version", w.name, f"installed {have[0]}, locked {w.version}",
                                        path=have[1]))
        elif w.vcs and installed_commit(prefix / have[1]) != locked_commit(w.url, w.name)[1]:
            rep.problems.append(Problem(
                "wrong-pip-commit", w.name, f"installed from commit {installed_commit(prefix / have[1]) or 'unknown'}"
                f", locked {locked_commit(w.url, w.name)[1]} ({w.url})", path=have[1]))
    for name in sorted(set(dists) - set(lock_pip)):
        rep.problems.append(Problem("extra-pip", name, f"{dists[name][0]} is installed by pip but not in the lock",
                                    path=dists[name][1]))
    return rep


def _own_metadata(r: Any, meta: dict[str, Any]) -> tuple[str, tuple[str, str, str]] | None:
    """What the installed package says it is: its archive's info/index.json when the cache holds the
    archive (read through the path gate), else the name-version-build of the file it was installed from."""
    archive = pkgs_dir() / str(r.file_name)
    if "/" not in str(r.file_name) and archive.is_file():
        try:
            index = check_package(archive, f"package {r.name.normalized}")
            return f"{archive.name} (its info/index.json)", (str(index["name"]), str(index["version"]),
                                                              str(index["build"]))
        except CondastackError:
            pass
    fn = str(meta.get("fn") or str(meta.get("url") or "").rsplit("/", 1)[-1])
    stem = fn.removesuffix(".conda").removesuffix(".tar.bz2")
    parts = stem.rsplit("-", 2)
    if stem == fn or len(parts) != 3:
        return None
    return f"{fn} (its file name)", (parts[0], parts[1], parts[2])


def _check_own_metadata(r: Any, meta: dict[str, Any], rep: VerifyReport) -> None:
    """The installed package is what the lock and conda-meta call it: a lock entry renamed with its URL and
    hash kept installs another package under the entry's name, and conda-meta then agrees with the lock."""
    own = _own_metadata(r, meta)
    said = (r.name.normalized, str(r.version), str(r.build))
    if own is not None and (own[1][0].lower(), own[1][1], own[1][2]) != said:
        rep.problems.append(Problem("not-the-locked-package", r.name.normalized,
                                    f"the lock and conda-meta say {' '.join(said)}, but the package installed "
                                    f"from {own[0]} is {' '.join(own[1])}"))


def _check_files(prefix: Path, records: dict[str, dict[str, Any]], pip_owner: dict[str, str],
                 rep: VerifyReport) -> None:
    """Hash every conda-managed file against paths.json."""
    jobs: list[tuple[str, str, str]] = []  # (package, relative path, expected sha256)
    for name, data in records.items():
        paths = (data.get("paths_data") or {}).get("paths") or []
        for entry in paths:
            rel = entry.get("_path") or entry.get("path")
            if not rel:
                continue
            ptype = entry.get("path_type", "hardlink")
            full = prefix / rel
            if not (full.exists() or full.is_symlink()):
                if ptype != "directory":
                    rep.problems.append(Problem("missing-file", name, f"{rel} is gone", path=rel,
                                                owners=[name, pip_owner[rel]] if rel in pip_owner else None))
                continue
            expected = entry.get("sha256_in_prefix") or entry.get("sha256")
            if ptype in ("hardlink", "pyc_file") and expected and not full.is_symlink():
                jobs.append((name, rel, expected))

    def digest(job: tuple[str, str, str]) -> tuple[tuple[str, str, str], str | None]:
        try:
            return job, sha256_file(prefix / job[1])
        except OSError:
            return job, None

    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        results = list(pool.map(digest, jobs))
    rep.files_checked = len(jobs)
    for (name, rel, expected), actual in results:
        if actual == expected:
            continue
        if rel in pip_owner:
            rep.problems.append(Problem(
                "clobbered-file", name,
                f"{rel} belongs to conda package {name} but was overwritten by pip distribution {pip_owner[rel]}",
                path=rel, owners=[name, pip_owner[rel]]))
        else:
            rep.problems.append(Problem("modified-file", name, f"{rel} does not match its sha256 in paths.json",
                                        path=rel))


def _record_entries(dist_info: Path) -> list[str]:
    try:
        lines = (dist_info / "RECORD").read_text().splitlines()
    except OSError:
        return []
    return [line.split(",", 1)[0] for line in lines if line.strip()]


def _pip_owners(prefix: Path, dists: dict[str, tuple[str, str]]) -> dict[str, str]:
    """prefix-relative path -> 'name version' of the pip distribution whose RECORD lists it."""
    out: dict[str, str] = {}
    for version, rel_dist in dists.values():
        d = prefix / rel_dist
        name, _ = dist_name_version(d)
        for rel in _record_entries(d):
            full = os.path.normpath(d.parent / rel)
            out[os.path.relpath(full, prefix)] = f"{name} {version}"
    return out


def format_report(rep: VerifyReport) -> str:
    head = (f"{rep.prefix}: {rep.conda_packages} conda packages, {rep.files_checked} files, "
            f"{rep.pip_packages} pip distributions checked against {rep.lockfile.name}")
    if rep.ok:
        return head + "\nok: the environment matches its lock"
    lines = [head, f"DRIFT: {len(rep.problems)} problem(s)"]
    for p in rep.problems[:50]:
        lines.append(f"  {p.kind}: {p.package}: {p.detail}")
    if len(rep.problems) > 50:
        lines.append(f"  … and {len(rep.problems) - 50} more (see --json)")
    return "\n".join(lines)
