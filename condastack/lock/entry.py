"""Typed on-disk formats of a lock, checked on the way in and serialised on the way out.

- `LockEntry`: one `package:` entry of a conda-lock v1 lockfile;
- `check_lock_document`: the lockfile around its entries (format version, metadata);
- `RecordEntry` / `RecordsFile`: `lock/<layer>.records.json`, the full repodata records beside a lock.

A lockfile is hostile until read through here (pypa/installer's `RecordEntry` is the model): every field is
checked for type, length, encoding and allowed values, and a bad one is a `LockfileInvalid` naming the file,
the package and the field (exit 1), never a crash deeper in the installer. Writing goes through `to_dict`,
which strips credentials from every URL.
"""

from __future__ import annotations

import functools
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condastack.core.credentials import strip_credentials
from condastack.core.errors import LockfileInvalid
from condastack.core.names import DIGEST_HEX_DIGITS, canonical, is_digest
from condastack.core.platforms import KNOWN_PLATFORMS

MANAGERS = ("conda", "pip")
ENTRY_KEYS = ("name", "version", "manager", "platform", "dependencies", "url", "hash", "source", "build",
              "category", "optional")
_MAX = 1000  # longest scalar a real lock holds (a URL may be longer: _MAX_URL)
_MAX_URL = 4096
_MAX_DEPS = 10000
_CONDA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\Z")  # rattler's PackageName alphabet
_PIP_NAME = re.compile(r"(?i)([A-Z0-9]|[A-Z0-9][A-Z0-9._-]{0,198}[A-Z0-9])\Z")  # PEP 508 names
_CONDA_VERSION = re.compile(r"[A-Za-z0-9_!*]+(?:[.+-][A-Za-z0-9_!*]+){0,60}\Z")
_BUILD = re.compile(r"[A-Za-z0-9_.+]{1,200}\Z")
_CATEGORY = re.compile(r"[A-Za-z0-9_.-]{1,100}\Z")
_SPEC = re.compile(r"[^\x00-\x1f\x7f]{0,1000}\Z")  # a dependency's version spec: any printable text
_CONDA_ARCHIVES = (".conda", ".tar.bz2")
_PIP_ARCHIVES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz")
_VCS = ("git+", "hg+", "svn+", "bzr+")
_TRUE, _FALSE = ("true", "True", "TRUE", True), ("false", "False", "FALSE", False)
# C-level scans per string instead of a Python loop per character (that loop was ~0.25 CPU s of a cold lock
# of a real stack). No regex over the surrogate range: compiling one costs ~0.7 ms of every start-up.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SPACE = re.compile(r"\s")  # exactly str.isspace


class _Where:
    """What an error names: the file, and the package once its name is known."""

    def __init__(self, path: Path | str, package: str | None = None,
                 kind: str = "not a readable conda-lock file") -> None:
        self.path, self.package, self.kind = path, package, kind

    def bad(self, key: str, problem: str) -> LockfileInvalid:
        return LockfileInvalid(self.path, problem, package=self.package, field=key, kind=self.kind)


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _text(where: _Where, key: str, value: object, limit: int = _MAX) -> str:
    """A string field: a string (YAML may give a number for an unquoted one), printable, bounded."""
    if type(value) is str:  # the common case first: ~9000 fields in a cold lock of a real stack
        text = value
    elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise where.bad(key, f"is a {type(value).__name__}, not a string")
    else:
        text = str(value)
    if len(text) > limit:
        raise where.bad(key, f"is {len(text)} characters long (at most {limit})")
    if not text.isascii() and ("\ufffd" in text or not _encodable(text)):  # U+FFFD: a 'replace' decode
        raise where.bad(key, f"is not valid UTF-8 text: {_show(text)}")
    if _CONTROL.search(text):
        raise where.bad(key, f"holds a control character: {_show(text)}")
    return text


def _encodable(text: str) -> bool:
    """No lone surrogate (what surrogateescape or a JSON escape such as \\ud800 leaves)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _match(where: _Where, key: str, value: object, pattern: re.Pattern, what: str, limit: int = _MAX) -> str:
    text = _text(where, key, value, limit)
    if not pattern.match(text):
        raise where.bad(key, f"{_show(text)} is not {what}")
    return text


def _flag(where: _Where, key: str, value: object) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise where.bad(key, f"{_show(value)} is not true or false")


def _mapping(where: _Where, key: str, value: object, limit: int = _MAX_DEPS) -> dict:
    if value is None or value == "":  # `key:` with nothing after it (the base loader gives '')
        return {}
    if not isinstance(value, dict):
        raise where.bad(key, f"is a {type(value).__name__}, not a mapping")
    if len(value) > limit:
        raise where.bad(key, f"has {len(value)} entries (at most {limit})")
    return value


def check_hash(where: _Where, key: str, value: object, kind: str) -> str:
    text = _text(where, key, value)
    if not is_digest(kind, text):
        raise where.bad(key, f"{_show(text)} is not a {kind} ({DIGEST_HEX_DIGITS[kind]} hex digits)")
    return text.lower()


def check_url(where: _Where, key: str, value: object, manager: str) -> str:
    """A package archive URL: http(s) or file (pip: also version control), no traversal, an archive name."""
    url = _text(where, key, value, _MAX_URL)
    problem = _url_problem(url, manager)
    if problem is not None:
        raise where.bad(key, f"{_show(url, 400)} {problem}")
    return url


@functools.lru_cache(maxsize=4096)  # a URL is checked in the lock and in its records, a parent's again in a child
def _url_problem(url: str, manager: str) -> str | None:
    """What is wrong with `url` as a package archive URL (after the shown URL), or None."""
    if not url.isascii() or _SPACE.search(url):
        return "is not a URL (spaces or non-ASCII characters)"
    vcs = manager == "pip" and url.startswith(_VCS)
    try:
        parsed = urllib.parse.urlsplit(url[url.index("+") + 1:] if vcs else url)
    except ValueError:  # an unclosed '[' of an IPv6 host, a bad port
        return "is not an http(s) or file URL of a package"
    if parsed.scheme not in ("http", "https", "file") or (parsed.scheme != "file" and not parsed.netloc):
        return "is not an http(s) or file URL of a package"
    path = parsed.path
    for _ in range(4):  # a doubly encoded '..' ('%252e%252e') is still one
        decoded = urllib.parse.unquote(path)
        if decoded == path:
            break
        path = decoded
    if "\\" in path or "\0" in path or any(part in ("..", ".") for part in path.split("/")):
        return f"does not name a {manager} package: it has a '..' or '.' path part (maybe percent-encoded)"
    if vcs:
        return None
    name = path.rsplit("/", 1)[-1]
    archives = _CONDA_ARCHIVES if manager == "conda" else _PIP_ARCHIVES
    if not name.endswith(archives) or name in archives:
        return f"does not name a {manager} package ({', '.join(archives)})"
    return None


@dataclass(frozen=True)
class LockEntry:
    """One `package:` entry of a conda-lock v1 lockfile."""

    name: str
    version: str
    manager: str
    platform: str
    url: str
    md5: str | None = None
    sha256: str | None = None
    build: str | None = None
    dependencies: dict[str, str] = field(default_factory=dict)
    category: str = "main"
    optional: bool = False
    source: dict[str, str] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What may appear once per lockfile: (manager, platform, name)."""
        return self.manager, self.platform, self.name.lower() if self.manager == "conda" else canonical(self.name)

    @property
    def file_name(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])

    @classmethod
    def from_dict(cls, data: object, path: Path | str, index: int = 0) -> LockEntry:
        where = _Where(path, f"#{index + 1}")
        if not isinstance(data, dict):
            raise where.bad("package", f"entry #{index + 1} is a {type(data).__name__}, not a mapping")
        if "name" not in data:
            raise where.bad("name", "is missing")
        manager = data.get("manager")
        if manager not in MANAGERS:
            raise _Where(path, f"#{index + 1}").bad("manager", f"{_show(manager)} is not conda or pip")
        name = _match(where, "name", data["name"], _CONDA_NAME if manager == "conda" else _PIP_NAME,
                      f"a {manager} package name", 200)
        where = _Where(path, name)
        for key in data:
            if key not in ENTRY_KEYS:
                raise where.bad(str(key)[:80], "is not a field of a conda-lock v1 package entry")
        for key in ("version", "platform", "url", "hash"):
            if key not in data:
                raise where.bad(key, "is missing")
        version = _text(where, "version", data["version"], 200)
        if not (_CONDA_VERSION.match(version) if manager == "conda" else _pip_version(version)):
            raise where.bad("version", f"malformed version {_show(version)} (not a {manager} version)")
        where.package = f"{name} {version}"
        platform = _text(where, "platform", data["platform"], 40)
        if platform not in KNOWN_PLATFORMS:
            raise where.bad("platform", f"{_show(platform)} is not a known platform ({', '.join(KNOWN_PLATFORMS)})")
        where.package = f"{name} {version} ({platform})"
        md5, sha = _entry_hashes(where, data["hash"], manager)
        build = None
        if manager == "conda" or data.get("build") not in (None, ""):
            if "build" not in data:
                raise where.bad("build", "is missing")
            build = _match(where, "build", data["build"], _BUILD, "a build string", 200)
        deps = _entry_dependencies(where, data.get("dependencies"))
        source = None
        if data.get("source") not in (None, ""):
            source = {str(k): _text(where, f"source.{k}", v, _MAX_URL)
                      for k, v in _mapping(where, "source", data["source"], 8).items()}
        return cls(name=name, version=version, manager=manager, platform=platform,
                   url=check_url(where, "url", data["url"], manager), md5=md5, sha256=sha, build=build,
                   dependencies=deps,
                   category=_match(where, "category", data.get("category", "main"), _CATEGORY, "a category"),
                   optional=_flag(where, "optional", data.get("optional", False)), source=source)

    def to_dict(self) -> dict[str, Any]:
        """The entry in conda-lock's written key order, unset fields left out, dependencies sorted,
        the URL without credentials."""
        out: dict[str, Any] = {"name": self.name, "version": self.version, "manager": self.manager,
                               "platform": self.platform, "dependencies": dict(sorted(self.dependencies.items())),
                               "url": strip_credentials(self.url),
                               "hash": {k: v for k, v in (("md5", self.md5), ("sha256", self.sha256)) if v}}
        if self.source is not None:
            out["source"] = dict(self.source)
        if self.build is not None:
            out["build"] = self.build
        out["category"] = self.category
        out["optional"] = self.optional
        return out


def _entry_hashes(where: _Where, value: object, manager: str) -> tuple[str | None, str | None]:
    hashes = _mapping(where, "hash", value, 2)
    for key in hashes:
        if key not in DIGEST_HEX_DIGITS:
            raise where.bad(f"hash.{str(key)[:40]}", "is not md5 or sha256")
    md5 = check_hash(where, "hash.md5", hashes["md5"], "md5") if "md5" in hashes else None
    sha = check_hash(where, "hash.sha256", hashes["sha256"], "sha256") if "sha256" in hashes else None
    if manager == "conda" and sha is None and md5 is None:
        raise where.bad("hash", "holds neither md5 nor sha256")
    return md5, sha


def _entry_dependencies(where: _Where, value: object) -> dict[str, str]:
    deps = {}
    for dep, spec in _mapping(where, "dependencies", value).items():
        name = _text(where, "dependencies", dep, 200)
        deps[name] = _match(where, f"dependencies.{name}", "" if spec is None else spec, _SPEC, "a version spec")
    return deps


def _pip_version(text: str) -> bool:
    if not text or any(c.isspace() for c in text):  # packaging would strip the spaces
        return False
    from packaging.version import InvalidVersion, Version  # lazy: pip entries only (with packaging, ~3 ms)

    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def entries_from_dicts(items: list, path: Path | str) -> list[LockEntry]:
    """Every entry checked, and no (manager, platform, name) twice: one package, one version."""
    return _once_each([LockEntry.from_dict(p, path, i) for i, p in enumerate(items)], path)


def _once_each(out: list[LockEntry], path: Path | str) -> list[LockEntry]:
    seen: dict[tuple[str, str, str], LockEntry] = {}
    for e in out:
        other = seen.setdefault(e.key, e)
        if other is not e:
            raise LockfileInvalid(path, f"is listed twice for {e.platform} ({other.version} and {e.version}); "
                                        "an environment holds one version of a package",
                                  package=e.name, field="name")
    return out


def check_lock_document(path: Path | str, data: dict, *,
                        checked: tuple[LockEntry, ...] | None = None) -> list[LockEntry]:
    """The lockfile around its entries: format version 1, metadata of the right shapes; its entries, typed.
    `checked`: the entries of `data`, each already read through LockEntry (a lock just rendered), so only
    what concerns them together is checked again."""
    where = _Where(path)
    if str(data.get("version")) != "1":
        what = "1" if str(data.get("version")).isdigit() else "an integer"
        raise where.bad("version", f"the format version {_show(data.get('version'))} is not {what} "
                                   "(conda-lock's v1 format)")
    meta = _mapping(where, "metadata", data["metadata"], 64)
    plats = meta.get("platforms", [])
    if not isinstance(plats, list) or not all(p in KNOWN_PLATFORMS for p in plats):
        raise where.bad("metadata.platforms", f"{_show(plats)} is not a list of known platforms")
    for plat, h in _mapping(where, "metadata.content_hash", meta.get("content_hash"), 16).items():
        if plat not in KNOWN_PLATFORMS:
            raise where.bad("metadata.content_hash", f"names the unknown platform {_show(plat)}")
        check_hash(where, f"metadata.content_hash.{plat}", h, "sha256")
    chans = meta.get("channels", [])
    if not isinstance(chans, list) or not all(isinstance(c, dict) and isinstance(c.get("url"), str) for c in chans):
        raise where.bad("metadata.channels", "is not a list of {url: ...} mappings")
    for c in chans:
        _text(where, "metadata.channels.url", c["url"], _MAX_URL)
    sources = meta.get("sources", [])
    if not isinstance(sources, list):
        raise where.bad("metadata.sources", "is not a list")
    for k, v in _mapping(where, "metadata.custom_metadata", meta.get("custom_metadata"), 256).items():
        _text(where, f"metadata.custom_metadata.{str(k)[:60]}", v, 1 << 20)
    entries = entries_from_dicts(data["package"], path) if checked is None else _once_each(list(checked), path)
    if plats:
        for e in entries:
            if e.platform not in plats:
                raise LockfileInvalid(path, f"is for {e.platform}, which metadata.platforms does not list",
                                      package=e.name, field="platform")
    return entries


# --------------------------------------------------------------------------- records file


_RECORD_TEXT = ("subdir", "channel", "fn")  # name, version, build and url: by their own, stricter checks
_RECORD_INT = ("build_number", "size", "timestamp", "indexed_timestamp")
_RECORD_LISTS = ("depends", "constrains", "track_features")


@dataclass(frozen=True)
class RecordEntry:
    """One full repodata record of a locked conda package (depends and constrains: what a child's solve needs)."""

    name: str
    version: str
    build: str
    url: str
    sha256: str
    md5: str | None
    depends: tuple[str, ...]
    extra: dict[str, Any]  # the rest of the repodata record (subdir, size, noarch, license ...), as read

    @classmethod
    def from_dict(cls, data: object, path: Path | str, platform: str, index: int) -> RecordEntry:
        where = _Where(path, f"#{index + 1} of {platform}", "not a readable records file")
        if not isinstance(data, dict):
            raise where.bad("platforms", f"record #{index + 1} is a {type(data).__name__}, not a mapping")
        for key in ("name", "version", "build", "url", "sha256"):
            if key not in data:
                raise where.bad(key, "is missing")
        name = _match(where, "name", data["name"], _CONDA_NAME, "a conda package name", 200)
        where.package = f"{name} ({platform})"
        for key in _RECORD_TEXT:
            if key in data and data[key] is not None:
                _text(where, key, data[key], _MAX_URL)
        for key in _RECORD_INT:
            if key in data and data[key] is not None and (isinstance(data[key], bool)
                                                          or not isinstance(data[key], int)):
                raise where.bad(key, f"{_show(data[key])} is not an integer")
        for key in _RECORD_LISTS:
            v = data.get(key)
            if v is not None and key != "track_features" and (
                    not isinstance(v, list) or len(v) > _MAX_DEPS or not all(isinstance(d, str) for d in v)):
                raise where.bad(key, "is not a list of strings")
        version = _match(where, "version", data["version"], _CONDA_VERSION, "a conda version", 200)
        return cls(name=name, version=version, build=_match(where, "build", data["build"], _BUILD, "a build string"),
                   url=check_url(where, "url", data["url"], "conda"),
                   sha256=check_hash(where, "sha256", data["sha256"], "sha256"),
                   md5=check_hash(where, "md5", data["md5"], "md5") if data.get("md5") is not None else None,
                   depends=tuple(data.get("depends") or ()),
                   extra={k: v for k, v in data.items()
                          if k not in ("name", "version", "build", "url", "sha256", "md5", "depends")})

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra, name=self.name, version=self.version, build=self.build,
                   url=strip_credentials(self.url), sha256=self.sha256, depends=list(self.depends))
        if self.md5 is not None:
            out["md5"] = self.md5
        if isinstance(out.get("channel"), str):
            out["channel"] = strip_credentials(out["channel"])
        return dict(sorted(out.items()))

    def matches(self, entry: LockEntry) -> bool:
        """Whether this record is the one a lock entry names (same package, not only the same bytes)."""
        return (self.sha256, self.name, self.version, self.build) == (entry.sha256, entry.name, entry.version,
                                                                      entry.build)


@dataclass(frozen=True)
class RecordsFile:
    """`lock/<layer>.records.json`: the lock's summary (keyed by the lockfile's sha256) and full records."""

    summary: dict[str, Any]
    platforms: dict[str, tuple[RecordEntry, ...]]

    @classmethod
    def read(cls, path: Path) -> RecordsFile:
        """The records file at `path` (empty when there is none); LockfileInvalid when malformed.

        One lock run reads a parent's records file several times (its summary for each child's input hash,
        its records for the child's solve): a file checked once is reused while it is unchanged (the key
        is the status of the file as it was read). Callers read the result and never change it.
        """
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size, st.st_ino)
                if key in _RECORDS_READ:
                    return _RECORDS_READ[key]
                raw = f.read()
        except FileNotFoundError:
            return cls({}, {})
        except OSError as e:
            raise LockfileInvalid(path, f"cannot be read: {e.strerror}", kind="not a readable records file") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise LockfileInvalid(path, f"not JSON: {type(e).__name__}", kind="not a readable records file") from None
        out = cls.from_dict(data, path)
        if len(_RECORDS_READ) >= 16:  # a run touches a few files; old versions are dropped
            _RECORDS_READ.pop(next(iter(_RECORDS_READ)))
        _RECORDS_READ[key] = out
        return out

    @classmethod
    def from_dict(cls, data: object, path: Path | str) -> RecordsFile:
        where = _Where(path, kind="not a readable records file")
        if not isinstance(data, dict):
            raise where.bad("records", f"is a JSON {type(data).__name__}, not an object")
        summary = _mapping(where, "lock", data.get("lock"), 16)
        if "sha256" in summary:
            check_hash(where, "lock.sha256", summary["sha256"], "sha256")
        for key in ("content_hash", "counts", "pins"):
            _mapping(where, f"lock.{key}", summary.get(key), 16)
        plats = {}
        for plat, items in _mapping(where, "platforms", data.get("platforms"), 16).items():
            if plat not in KNOWN_PLATFORMS:
                raise where.bad("platforms", f"names the unknown platform {_show(plat)}")
            if not isinstance(items, list):
                raise where.bad(f"platforms.{plat}", "is not a list of records")
            plats[plat] = tuple(RecordEntry.from_dict(r, path, plat, i) for i, r in enumerate(items))
        return cls(summary, plats)

    def to_dict(self) -> dict[str, Any]:
        return {"lock": self.summary, "platforms": {p: [r.to_dict() for r in rs] for p, rs in self.platforms.items()}}

    def to_text(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True) + "\n"

    def records_for(self, platform: str, entries: list[LockEntry]) -> dict[str, RecordEntry]:
        """sha256 -> the record of each conda entry that this file holds as that same package."""
        by_sha = {r.sha256: r for r in self.platforms.get(platform, ())}
        return {e.sha256: by_sha[e.sha256] for e in entries
                if e.sha256 is not None and e.sha256 in by_sha and by_sha[e.sha256].matches(e)}


_RECORDS_READ: dict[tuple, RecordsFile] = {}


__all__ = ["LockEntry", "RecordEntry", "RecordsFile", "check_lock_document", "entries_from_dicts", "check_url",
           "check_hash", "MANAGERS"]
