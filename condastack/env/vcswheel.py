"""Git requirements at build time: the wheel is built from the locked commit once, with the env's own
python and pip, into the cache keyed by the locked URL (`git+URL@<commit>`); its sha256 is recorded
beside it when built and checked on every later use (a second env, `build --offline`), then pip installs
it with --require-hashes like any locked wheel. The installed distribution's direct_url.json says where
it came from (PEP 610: the URL and commit), which `verify` checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import Version

from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_path, atomic_write_text, file_lock, sha256_file
from condastack.core.git import commit_time
from condastack.core.layout import vcs_mutex, vcs_wheels_dir
from condastack.core.names import canonical
from condastack.env.prefix import site_packages_dirs
from condastack.lock.vcs import build_failure, source_tree
from condastack.spec.vcsreq import COMMIT, parse_vcs

_SHA = ".sha256"
_PURE = ("-none-any.whl",)


def is_vcs_url(url: str) -> bool:
    return url.startswith("git+")


def locked_commit(url: str, what: str) -> tuple[Any, str]:
    """(the requirement, the commit) of a locked `git+URL@<commit>`; anything else was not written by lock."""
    try:
        req = parse_vcs(url)
    except ValueError:
        req = None
    if req is None or not req.ref or not COMMIT.match(req.ref) or req.locked_url(req.ref) != url:
        raise CondastackError(f"{what}: the lock's URL {url} does not name a full commit (git+URL@<40 hex>). "
                              "Re-create the lock with `condastack lock`.")
    return req, req.ref


def vcs_wheels(wheels: list, python: Path, *, offline: bool, fetched: list[str] | None,
               credentials: list[str], pip_env: dict[str, str]) -> tuple[list, list[Path]]:
    """Each locked git package as a wheel in the cache (built once), sha256-checked: (wheels with the
    file's URL and sha256, their paths), for `install_wheels`."""
    out, paths = [], []
    tags = _tags(python) if wheels else []
    for w in wheels:
        what = f"pip package {w.name} {w.version} ({w.url})"
        req, commit = locked_commit(w.url, what)
        with file_lock(vcs_mutex(w.url)):
            path = _cached(w.url, tags)
            if path is None:
                if offline:
                    raise CondastackError(f"--offline: {what} has no wheel built in {vcs_wheels_dir(w.url)}. "
                                          "Build once with network access first.")
                src = source_tree(req, commit, what, credentials)
                path = _build(src, w, python, what, pip_env)
                if fetched is not None:
                    fetched.append(path.name)
            sha = _checked(path, what)
        out.append(replace(w, url=path.as_uri(), sha256=sha))
        paths.append(path)
    return out, paths


def _tags(python: Path) -> list[str]:
    """The wheel tags the env's python accepts, best first (asked of its own pip)."""
    p = subprocess.run([str(python), "-c", "from pip._vendor.packaging.tags import sys_tags\n"
                        "print('\\n'.join(str(t) for t in sys_tags()))"], capture_output=True, text=True)
    return p.stdout.split() if p.returncode == 0 else []


def _cached(url: str, tags: list[str]) -> Path | None:
    """A wheel built earlier from this locked URL that the env's python can install."""
    folder = vcs_wheels_dir(url)
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.glob("*.whl") if (folder / (p.name + _SHA)).is_file())
    for p in found:
        if p.name.endswith(_PURE):
            return p
        parts = p.name[:-4].split("-")
        if len(parts) >= 5 and any(f"{py}-{abi}-{plat}" in tags for py in parts[-3].split(".")
                                   for abi in parts[-2].split(".") for plat in parts[-1].split(".")):
            return p
    return None


def _checked(path: Path, what: str) -> str:
    """The wheel's sha256, which must be the one recorded when it was built."""
    recorded = (path.parent / (path.name + _SHA)).read_text().strip()
    actual = sha256_file(path)
    if actual != recorded:
        raise CondastackError(f"{what}: the cached wheel {path} has sha256 {actual}, but {recorded} was recorded "
                              "when it was built: it was changed since. Delete it and build again to rebuild it.")
    return actual


def _build(src: Path, w: Any, python: Path, what: str, pip_env: dict[str, str]) -> Path:
    """`pip wheel` of the source with the env's python (its ABI and platform), reproducible where the
    backend honours SOURCE_DATE_EPOCH; the wheel must be the locked name and version."""
    folder = vcs_wheels_dir(w.url)
    with tempfile.TemporaryDirectory(prefix="condastack-wheel-") as out:
        env = dict(pip_env, SOURCE_DATE_EPOCH=commit_time(src), PYTHONDONTWRITEBYTECODE="1")
        p = subprocess.run([str(python), "-m", "pip", "wheel", "--no-deps", "--no-input",
                            "--disable-pip-version-check", "--no-cache-dir", "-w", out, str(src)],
                           capture_output=True, text=True, env=env)
        built = sorted(Path(out).glob("*.whl"))
        if p.returncode != 0 or len(built) != 1:
            raise build_failure(what, "pip wheel", [p.stdout + p.stderr], RuntimeError(f"exit {p.returncode}"))
        try:
            name, version, _, _ = parse_wheel_filename(built[0].name)
        except InvalidWheelFilename as e:
            raise CondastackError(f"{what}: the build made {built[0].name}, which is not a wheel name: {e}") \
                from None
        if canonical(name) != canonical(w.name) or version != Version(w.version):
            raise CondastackError(f"{what}: the locked commit builds {name} {version}, not {w.name} {w.version} "
                                  "as the lock says. Re-lock with `condastack lock --update "
                                  f"{w.name}`.")
        dest = folder / built[0].name
        with atomic_path(dest, durable=False) as tmp:
            tmp.write_bytes(built[0].read_bytes())
        atomic_write_text(folder / (dest.name + _SHA), sha256_file(dest) + "\n")
    return dest


def record_origin(prefix: Path, locked_urls: dict[str, str]) -> None:
    """direct_url.json of each installed git package names its repository and commit (PEP 610), not the
    cache file pip installed it from; RECORD follows (its hash of that file)."""
    for sp in site_packages_dirs(prefix):
        for d in sp.glob("*.dist-info"):
            name = canonical(d.name[: -len(".dist-info")].rpartition("-")[0])
            url = locked_urls.get(name)
            if url is None:
                continue
            req, commit = locked_commit(url, f"pip package {name}")
            info: dict[str, Any] = {"url": req.bare_url, "vcs_info": {"vcs": "git", "commit_id": commit}}
            if req.subdirectory:
                info["subdirectory"] = req.subdirectory
            data = json.dumps(info, sort_keys=True).encode()
            (d / "direct_url.json").write_bytes(data)
            _rehash_record(d, "direct_url.json", data)


def _rehash_record(dist_info: Path, member: str, data: bytes) -> None:
    rel = f"{dist_info.name}/{member}"
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record = dist_info / "RECORD"
    lines = [line for line in record.read_text().splitlines() if line.split(",", 1)[0] != rel]
    lines.append(f"{rel},sha256={digest},{len(data)}")
    record.write_text("\n".join(lines) + "\n")


def installed_commit(dist_info: Path) -> str | None:
    """The commit a distribution's direct_url.json names (None when it names none)."""
    try:
        info = json.loads((dist_info / "direct_url.json").read_text())
        commit = info["vcs_info"]["commit_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return commit if isinstance(commit, str) else None


