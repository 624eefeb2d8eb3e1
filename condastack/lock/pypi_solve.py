"""The pip part of a layer's solve: conda-lock's PyPI solver (through core.condalock) against conda's python."""


from __future__ import annotations

import hashlib

from condastack.core.condalock import solve_pypi
from condastack.core.errors import CondastackError


def solve_pip(pip_specs: list[str], conda_entries: list[dict], platform: str, vpkgs: dict[str, str], *,
              indexes: list[str], previous: list[dict] | None = None, update: list[str] | None = None,
              pre: bool = False, installed: dict[str, str] | None = None) -> list[dict]:
    """Solve pip requirements with conda-lock's PyPI solver against conda's python.

    With `indexes`, only those PEP 503 indexes are asked (no request to pypi.org).
    A PyPI name that a conda package provides (the shipped mapping) is taken as
    installed at the conda version with no requirements of its own: it is never
    resolved again, and neither are its PyPI dependencies (torch's nvidia-* wheels).
    `installed` (name -> version) are taken the same way: git requirements resolved by lock.vcs.
    """
    if not any(e["name"] == "python" for e in conda_entries):
        raise CondastackError("pip dependencies need python in the conda part of the layer; add `python` to its "
                              "dependencies.")
    try:
        out = solve_pypi(pip_specs, conda_entries, platform, indexes=indexes, previous=previous, update=update,
                         pre=pre, installed=installed)
    except CondastackError:
        raise
    except Exception as e:  # poetry's resolver raises many types; all are user-facing here
        msg = str(e).strip().splitlines()
        raise CondastackError("pip requirements cannot be resolved: " + " ".join(m.strip() for m in msg[:8])) from None
    for d in out:
        if d["url"].startswith("git+file://None/"):  # conda-lock writes a file URL's empty host as "None"
            d["url"] = "git+file:///" + d["url"][len("git+file://None/"):]
        if not d["hash"].get("sha256") and d["url"].startswith(("http://", "https://")):
            d["hash"]["sha256"] = _url_sha256(d["url"], d["name"])  # `name @ URL`: pip --require-hashes needs it
    return out


def _url_sha256(url: str, name: str) -> str:
    import urllib.request  # lazy: with http.client and email, ~10 ms of every lock's start-up

    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url.split("#", 1)[0], timeout=60) as f:  # noqa: S310 - http(s) only, above
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise CondastackError(f"pip requirement {name} @ {url}: cannot download it to record its sha256: {e}") \
            from None
    return h.hexdigest()
