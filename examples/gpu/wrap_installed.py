"""Wrap this machine's installed torch, and what it needs to import, into conda packages.

A GPU node's python already holds torch and the nvidia CUDA wheels, and has no
network. Each installed distribution in torch's dependency closure (markers
evaluated for this interpreter, extras left out) is staged from its RECORD,
files under site-packages only, into `lib/pythonX.Y/site-packages` and made a
conda package with `condastack wrap` (condastack.wrap.wrap). Wrapping is
reproducible: the same installed files give the same package bytes.

    python3 wrap_installed.py CHANNEL [ROOT_DIST]   # prints one JSON line per package
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from packaging.requirements import Requirement

from condastack.channel.wrap import wrap

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def conda_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _needs(dist: md.Distribution, extras: set[str]) -> list[Requirement]:
    """What `dist` requires when installed with `extras` (markers evaluated for this interpreter)."""
    out = []
    for req in dist.requires or []:
        r = Requirement(req)
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras | {""}):
            out.append(r)
    return out


def closure(root: str) -> tuple[list[md.Distribution], dict[str, set[str]]]:
    """`root` and every installed distribution it requires, with the extras asked of each.

    Extras count: torch 2.11 (cu130) needs `cuda-toolkit[cublas,cudart,...]`, a metapackage whose
    extras pull the nvidia-* wheels that hold libcudart and the other CUDA libraries.
    """
    seen: dict[str, md.Distribution] = {}
    extras: dict[str, set[str]] = {}
    todo: list[tuple[str, set[str]]] = [(root, set())]
    while todo:
        raw, want = todo.pop()
        name = conda_name(raw)
        if name in seen and want <= extras[name]:
            continue
        try:
            dist = seen.get(name) or md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional or platform-specific need that is not installed
        seen[name] = dist
        extras[name] = extras.get(name, set()) | want
        todo.extend((r.name, set(r.extras)) for r in _needs(dist, extras[name]))
    return list(seen.values()), extras


def requires(dist: md.Distribution, extras: set[str], wrapped: set[str]) -> list[str]:
    return sorted({conda_name(r.name) for r in _needs(dist, extras) if conda_name(r.name) in wrapped})


def stage(dist: md.Distribution, into: Path) -> int:
    """Hard-link (or copy) the distribution's site-packages files into `into`; returns bytes."""
    site = Path(dist.locate_file(""))
    dest_site = into / "lib" / f"python{PY}" / "site-packages"
    total = 0
    for f in dist.files or []:
        rel = Path(str(f))
        if rel.parts[0] == ".." or "__pycache__" in rel.parts:
            continue  # launchers in the venv's bin/ name the venv's python; pyc are rebuilt
        src = site / rel
        if not src.is_file():
            continue
        dst = dest_site / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        total += src.stat().st_size
    return total


def main() -> None:
    channel = Path(sys.argv[1])
    root = sys.argv[2] if len(sys.argv) > 2 else "torch"
    dists, extras = closure(root)
    names = {conda_name(d.metadata["Name"]) for d in dists}
    with tempfile.TemporaryDirectory(dir=os.environ.get("WRAP_TMP")) as tmp:
        for dist in dists:
            name = conda_name(dist.metadata["Name"])
            folder = Path(tmp) / name
            t = time.perf_counter()
            size = stage(dist, folder)
            deps = [f"python {PY}.*", *requires(dist, extras[name], names)]
            pkgs = wrap(folder, channel=channel, name=name, version=dist.version, depends=deps, platform="linux-64")
            shutil.rmtree(folder)
            for p in pkgs:
                print(json.dumps({"name": p.name, "version": p.version, "build": p.build, "status": p.status,
                                  "bytes_installed": size, "bytes_package": p.path.stat().st_size,
                                  "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
