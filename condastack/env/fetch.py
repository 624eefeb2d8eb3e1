"""Fetching package archives and wheels into the cache, each checked against its locked sha256 (a stamp remembers a
check) and through the path gate before anything is extracted.
"""


from __future__ import annotations

import errno
import hashlib
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from condastack.core.credentials import with_credentials
from condastack.core.errors import CondastackError, LockfileInvalid
from condastack.core.fs import HASH_THREADS, atomic_path, clean_stale_temporaries, remove_path, sha256_file
from condastack.core.layout import VERIFIED_DIR, pkgs_dir, verified_stamp, wheels_dir
from condastack.core.names import is_digest
from condastack.core.pathsafe import STAMP_DIR, check_package, check_under, clean_relative
from condastack.core.progress import Meter, report


@dataclass(frozen=True)
class _Stamp:
    sha256: str
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, path: Path, sha256: str) -> _Stamp:
        st = path.stat()
        return cls(sha256, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def line(self) -> str:
        return f"{self.sha256} {self.size} {self.mtime_ns} {self.ctime_ns} {self.ino}\n"


def _stamp_path(archive: Path) -> Path:
    return verified_stamp(archive)


def _verified(archive: Path, sha256: str) -> bool:
    """True if `archive` was hashed to `sha256` and has not been touched since (any write changes ctime)."""
    try:
        return _stamp_path(archive).read_text() == _Stamp.of(archive, sha256).line()
    except OSError:
        return False


def _remember(archive: Path, sha256: str) -> None:
    with atomic_path(_stamp_path(archive), durable=False) as tmp:
        tmp.write_text(_Stamp.of(archive, sha256).line())


def _cached_is(archive: Path, sha256: str) -> bool:
    """Whether the cached `archive` holds what the lock says (remembered once hashed)."""
    if _verified(archive, sha256):
        return True
    if sha256_file(archive) != sha256:
        return False
    _remember(archive, sha256)
    return True


def _check_cached(archive: Path, sha256: str, what: str) -> None:
    """Refuse a cached file whose content is not what the lock says."""
    if _verified(archive, sha256):
        return
    actual = sha256_file(archive)
    if actual != sha256:
        raise CondastackError(
            f"{what}: the cached file {archive} does not match the lock (sha256 {actual}, lock says {sha256}); "
            "it is corrupted or was tampered with. Delete it and build again to fetch it anew."
        )
    _remember(archive, sha256)


def _fetch(url: str, dest: Path, sha256: str, what: str, credentials: list[str] | tuple = ()) -> None:
    """Copy or download `url` to `dest`, hashing on the way; a mismatch is refused."""

    h = hashlib.sha256()
    # The temporary's name ends in our pid: clean_stale_temporaries spares a running build's download.
    with atomic_path(dest, durable=False) as tmp:
        with _open_url(url, what, credentials) as src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
        if h.hexdigest() != sha256:
            raise CondastackError(
                f"{what}: {url} has sha256 {h.hexdigest()}, but the lock says {sha256}. The channel changed the "
                "file after it was locked, or it was tampered with; nothing was installed. Re-lock if the change "
                "is expected."
            )
    _remember(dest, sha256)


def _open_url(url: str, what: str, credentials: list[str] | tuple = ()):  # noqa: ANN202 - a binary file object
    parsed = urllib.parse.urlparse(url)
    try:
        if parsed.scheme == "file":
            return open(urllib.request.url2pathname(parsed.path), "rb")
        if parsed.scheme in ("http", "https"):
            # Errors below name `url`, the bare one: the credentials stay out of messages.
            full, headers = with_credentials(url, credentials)
            request = urllib.request.Request(full, headers=headers)  # noqa: S310 - http(s) only, checked above
            return _OPENER.open(request, timeout=60)
    except OSError as e:
        if isinstance(e, FileNotFoundError) or getattr(e, "errno", None) != errno.ENOSPC:
            raise CondastackError(f"{what}: cannot fetch {url}: {e}. Check the channel, or build with --offline "
                                  "from a filled cache.") from None
        raise
    raise CondastackError(f"{what}: unsupported URL scheme in the lock: {url}.")


class _SameHostCredentials(urllib.request.HTTPRedirectHandler):
    """Redirects as urllib follows them, but the credentials go only to the host they belong to: a
    redirect to another host (a CDN, or a hostile mirror) gets no Authorization header, as pip and
    conda do. urllib itself would send it along."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            for name in [k for k in new.headers if k.lower() in ("authorization", "cookie")]:
                new.remove_header(name)
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    """Where credentials belong: the host and its port (http -> https on the same host keeps them)."""
    p = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}
    port = p.port if p.port is not None else default.get(p.scheme)
    return (p.hostname or "", "", 443 if (p.scheme, port) in (("http", 80), ("https", 443)) else port)


_OPENER = urllib.request.build_opener(_SameHostCredentials())


def _pkg_label(r: Any) -> str:
    return f"package {r.name.normalized} {r.version} {r.build}"


def fetch_archives(records: tuple | list, *, offline: bool = False, fetched: list[str] | None = None,
                   credentials: list[str] | tuple = (), meter: Meter | None = None,
                   source: Path | str = "the lock") -> list[Path]:
    """Every conda archive of `records` in the cache, sha256-checked against the lock (`source`), and each
    the package its entry names."""
    cache = pkgs_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for folder in (cache, cache / VERIFIED_DIR, cache / STAMP_DIR):  # downloads and stamps of killed builds
        clean_stale_temporaries(folder)
    paths = [cache / _cache_name(r) for r in records]
    missing = [(r, p) for r, p in zip(records, paths, strict=False) if not p.exists()]
    if offline and missing:
        listing = "; ".join(f"{r.name.normalized} {r.version} {r.build} ({r.file_name})" for r, _ in missing)
        raise CondastackError(
            f"--offline: {len(missing)} package(s) are not in the cache {cache}: {listing}. "
            "Build once with network access (or fill $CONDASTACK_PKGS) first."
        )
    want = {id(r) for r, _ in missing}
    refetched: list[str] = []
    done = [0]
    lock = threading.Lock()

    def one(item: tuple[Any, Path]) -> None:
        r, p = item
        sha = r.sha256.hex()
        if id(r) in want:
            _fetch(r.url, p, sha, _pkg_label(r), credentials)
        elif offline or _cached_is(p, sha):
            _check_cached(p, sha, _pkg_label(r))
        else:
            # The cache is keyed by file name, and two channels can hold one name with other bytes (a site's
            # python built twice from one recipe): fetch the locked file again, as conda and micromamba do
            # on a hash mismatch. _fetch checks it against the lock; the folder extracted from the old one
            # is extracted again (its .lock file names the old sha256).
            _fetch(r.url, p, sha, _pkg_label(r), credentials)
            refetched.append(p.name)
        check_against_lock(r, _gate(p, _pkg_label(r)), source)
        with lock:
            done[0] += 1
            report(meter, "download", done[0], len(records), "packages")

    _parallel(one, list(zip(records, paths, strict=False)))
    if fetched is not None:
        fetched += [p.name for _, p in missing] + refetched
    return paths


def _cache_name(r: Any) -> str:
    """The file name a locked package gets in the cache: one plain name, never a path."""

    name = clean_relative(r.file_name, f"{_pkg_label(r)}: the lock's URL {r.url}")
    if "/" in name:
        raise CondastackError(f"{_pkg_label(r)}: the lock's URL {r.url} gives the file name {name!r}, which is a "
                              "path. The lockfile is not as condastack wrote it; re-create it with `condastack lock`.")
    return name


def _gate(archive: Path, label: str) -> dict[str, object]:
    """The path-safety gate, before the installer sees the package; a refused one leaves the cache.
    Returns the package's own info/index.json."""

    try:
        return check_package(archive, label)
    except CondastackError:
        remove_path(archive)
        remove_path(_stamp_path(archive))
        raise


def check_against_lock(r: Any, index: dict[str, object], source: Path | str) -> None:
    """The package at a lock entry's URL must be the package the entry names: an entry renamed in the
    lock (URL and hash kept) would install one package under another's name, and a reviewer reading
    the lock's diff would see something else than what is installed."""
    said = {"name": r.name.normalized, "version": str(r.version), "build": str(r.build), "subdir": r.subdir}
    for key, want in said.items():
        have = str(index.get(key))
        if (have.lower() if key == "name" else have) != want:
            raise LockfileInvalid(source, f"says {want!r}, but the package at its URL ({r.file_name}) is "
                                          f"{index.get('name')} {index.get('version')} {index.get('build')} "
                                          f"for {index.get('subdir')} (its own info/index.json); nothing was "
                                          "installed", package=f"{said['name']} {said['version']}", field=key,
                                  kind="a lock entry that is not the package at its URL")


def _parallel(fn: Callable[[Any], None], items: list) -> None:
    """Run fn over items on a few threads (hashing releases the GIL); the first error wins."""
    if len(items) <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        for f in [pool.submit(fn, it) for it in items]:
            f.result()


def _wheel_path(w: Any) -> Path:
    """The cache path of a locked wheel, through the path gate: its file name is one plain name, even
    once percent-decoded (`..%2f..%2fx.whl` would write outside the cache)."""
    fname = urllib.parse.unquote(urllib.parse.urlparse(w.url).path.rsplit("/", 1)[-1])
    what = f"pip package {w.name} {w.version}: the lock's URL {w.url}"
    if "/" in fname or not (is_digest("sha256", w.sha256) and w.sha256.islower()):
        raise CondastackError(f"{what} gives the file name {fname!r}, which is a path (or its sha256 is not "
                              "one). The lockfile is not as condastack wrote it; re-create it with `condastack lock`.")
    return check_under(wheels_dir(), f"{w.sha256[:16]}/{clean_relative(fname, what)}", what)


def fetch_wheels(wheels: tuple | list, *, offline: bool = False, fetched: list[str] | None = None,
                 credentials: list[str] | tuple = ()) -> list[Path]:
    """Every locked wheel in `$CONDASTACK_PKGS/wheels`, sha256-checked."""
    paths = [_wheel_path(w) for w in wheels]
    missing = [(w, p) for w, p in zip(wheels, paths, strict=False) if not p.exists()]
    if offline and missing:
        listing = "; ".join(f"{w.name} {w.version} ({w.url})" for w, _ in missing)
        raise CondastackError(f"--offline: {len(missing)} pip package(s) are not in the wheel cache {wheels_dir()}: "
                              f"{listing}. Build once with network access first.")
    for w, p in zip(wheels, paths, strict=False):
        what = f"pip package {w.name} {w.version}"
        if (w, p) in missing:
            _fetch(w.url, p, w.sha256, what, credentials)
        else:
            _check_cached(p, w.sha256, what)
    if fetched is not None:
        fetched += [p.name for _, p in missing]
    return paths
