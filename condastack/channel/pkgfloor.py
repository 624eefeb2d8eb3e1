"""The glibc floor of a built conda package, added to its dependencies when missing.

A recipe built by rattler-build gets `__glibc >=x.y` only when its compiler
package's run_exports say so. `wrap --recipe` checks what the package's ELF files
need (the highest GLIBC_x.y symbol version) and, when the package does not
declare a glibc floor, rewrites its info/index.json with one: the payload is
left byte for byte as built.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

from condastack.core.elf import tree_glibc_floor
from condastack.core.errors import CondastackError
from condastack.core.fs import make_tempdir, remove_path


def add_glibc_floor(pkg: Path) -> str | None:
    """Add `__glibc >=floor` to the `.conda` package `pkg` (in place) if its ELF files need one it lacks.

    Returns the dependency added, or None when none was needed or one is declared.
    """
    if pkg.suffix != ".conda":
        return None  # .tar.bz2 outputs are left as built
    import rattler.package_streaming  # lazy: native, ~0.2 s

    tmp = make_tempdir(pkg.parent, "floor")
    try:
        rattler.package_streaming.extract(pkg, tmp)
        index = json.loads((tmp / "info" / "index.json").read_text())
        if any(re.split(r"[\s<>=!]", d, maxsplit=1)[0] == "__glibc" for d in index.get("depends") or []):
            return None
        floor = tree_glibc_floor(tmp)
        if floor is None:
            return None
    finally:
        remove_path(tmp)
    dep = f"__glibc >={floor}"
    _rewrite_index(pkg, lambda idx: {**idx, "depends": [*(idx.get("depends") or []), dep]})
    return dep


def _rewrite_index(pkg: Path, edit) -> None:  # noqa: ANN001 - edit(dict) -> dict
    """Rewrite info/index.json inside the info-*.tar.zst of a .conda (a zip of two tar.zst and metadata)."""
    with zipfile.ZipFile(pkg) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    out = []
    for info, data in entries:
        if info.filename.startswith("info-") and info.filename.endswith(".tar.zst"):
            data = _zstd(["-dc"], data, pkg)
            data = _zstd(["-q", "-19", "-c"], _edit_tar(data, edit), pkg)
        out.append((info, data))
    tmp = pkg.with_name(f".{pkg.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        for info, data in out:
            z.writestr(info, data, compress_type=zipfile.ZIP_STORED)
    tmp.replace(pkg)


def _edit_tar(data: bytes, edit) -> bytes:  # noqa: ANN001
    src = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=src.format) as dst:
        for m in src.getmembers():
            f = src.extractfile(m) if m.isfile() else None
            body = f.read() if f is not None else None
            if m.name == "info/index.json" and body is not None:
                body = (json.dumps(edit(json.loads(body)), indent=2, sort_keys=True) + "\n").encode()
                m.size = len(body)
            dst.addfile(m, io.BytesIO(body) if body is not None else None)
    return buf.getvalue()


def _zstd(args: list[str], data: bytes, pkg: Path) -> bytes:
    p = subprocess.run(["zstd", *args], input=data, capture_output=True)
    if p.returncode != 0:
        raise CondastackError(f"wrap: cannot rewrite {pkg.name}: zstd {' '.join(args)} failed: "
                              f"{p.stderr.decode(errors='replace').strip()}")
    return p.stdout
