"""The conda part of a layer's solve, with py-rattler: virtual packages, one gateway per lock run, solves, queries
and records.
"""


from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from condastack.core.errors import CondastackError

_SPEC_NAME = re.compile(r"^(?:[^:\s]+::)?([A-Za-z0-9_.-]+)")


def spec_name(spec: str) -> str:
    """The package name of a conda match spec string."""
    m = _SPEC_NAME.match(spec.strip())
    return m.group(1).lower() if m else spec.strip().lower()


def virtual_packages(spec: dict[str, str]) -> list:
    """The stack's declared virtual packages as rattler objects (never the host's)."""
    import rattler  # lazy: native, ~0.2 s

    out = []
    for name, version in sorted(spec.items()):
        ver, _, build = str(version).partition("=")
        out.append(rattler.GenericVirtualPackage(rattler.PackageName(name), rattler.Version(ver),
                                                 rattler.BuildString(build or "0")))
    return out


_SESSION: list[list] = []  # per running lock session: its gateway, once one is needed
_LAST: list = []  # the last session's gateway, kept until the next session ends (see gateway_session)


@contextlib.contextmanager
def gateway_session():  # noqa: ANN201
    """One rattler Gateway for the solves of one lock run: the channels' repodata is read once,
    not once per layer and per error explanation. Outside a session each call reads afresh.
    Made on first use, so a lock run that solves nothing never imports rattler."""
    _SESSION.append([])
    try:
        yield
    finally:
        # Dropping a gateway frees its parsed repodata: ~12 CPU ms on a real stack, which a CLI run that
        # exits next need not spend. So the last one lives on until the next session ends (one at most).
        _LAST[:] = _SESSION.pop()


def _gateway():  # noqa: ANN202
    import rattler  # lazy: native, ~0.2 s

    if not _SESSION:
        return rattler.Gateway()
    if not _SESSION[-1]:
        _SESSION[-1].append(rattler.Gateway())
    return _SESSION[-1][0]


_UNVALIDATED_304 = "304 Not Modified"


def _refetching(call: Callable[[Any], Any]) -> Any:
    """`call(gateway)`, again with a gateway that refetches when the server answered a revalidation
    with a 304 that carries no ETag or Last-Modified (`python -m http.server` does): py-rattler then
    fails the fetch (rattler issue 2719), but the channel is fine. The retry's gateway serves the rest
    of the lock run."""
    import rattler  # lazy: native, ~0.2 s

    try:
        return call(_gateway())
    except Exception as e:  # rattler raises one exception type per cause; only this one is retried
        if _UNVALIDATED_304 not in str(e):
            raise
    fresh = rattler.Gateway(default_config=rattler.SourceConfig(cache_action="no-cache"))
    if _SESSION:
        _SESSION[-1][:] = [fresh]
    return call(fresh)


def solve_conda(channels: list[str], specs: list[str], platform: str, vpkgs: dict[str, str], *,
                pinned: list | None = None, locked: list | None = None) -> list:
    """Solve conda specs for one platform with py-rattler; returns RepoDataRecords.

    `pinned` records are hard pins (a parent layer's lock); `locked` ones are
    preferences (the previous lock, so a re-solve moves as little as possible).
    """

    import asyncio  # lazy, with rattler: a lock that solves nothing needs neither (~12 ms)

    import rattler  # lazy: native, ~0.2 s

    return _refetching(lambda gateway: asyncio.run(rattler.solve(
        channels, specs, gateway=gateway, platforms=[rattler.Platform(platform), rattler.Platform("noarch")],
        virtual_packages=virtual_packages(vpkgs), pinned_packages=pinned or None, locked_packages=locked or None,
    )))


def query_records(channels: list[str], platform: str, names: list[str]) -> list:
    """Every record of these package names in the channels (platform and noarch), not recursive."""
    import asyncio  # lazy, with rattler: a lock that solves nothing needs neither (~12 ms)

    found = _refetching(lambda gateway: asyncio.run(gateway.query(channels, [platform, "noarch"], names,
                                                                  recursive=False)))
    return [r for recs in found for r in recs]


def split_depend(dep: str) -> tuple[str, str]:
    name, _, spec = dep.strip().partition(" ")
    return name, spec.strip() or "*"


def records_to_json(records: list) -> list[dict]:
    """RepoDataRecords as repodata JSON (with fn, url, channel): everything a re-solve needs."""

    return [json.loads(r.to_json()) for r in records]


def records_from_json(items: list[dict]) -> list:
    """RepoDataRecords from repodata JSON entries (as written by records_to_json).

    rattler builds records from repodata, so the entries are grouped into one
    small repodata.json per (channel, subdir) folder and read back.
    """

    import rattler  # lazy: native, ~0.2 s

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


def with_url(record: Any, url: str) -> Any:
    """A copy of a RepoDataRecord that is fetched from `url` (our verified archive)."""
    import rattler  # lazy: native, ~0.2 s

    r = record
    channel = r.channel or url.rsplit("/", 1)[0] + "/"
    return rattler.RepoDataRecord(r, r.file_name, url, channel)


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
