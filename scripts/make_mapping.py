"""Build condastack/data/conda-pypi-names.json from the full conda-forge -> PyPI mapping.

    python scripts/make_mapping.py ../shared/realworld/conda-forge-pypi-names.json

The source (prefix-dev/parselmouth's compressed mapping, as pixi uses) maps
33,909 conda-forge names to the PyPI names they provide. Most map to
themselves, which is what conda-lock and condastack assume for any name not
listed, so only the names that differ are kept: {conda name: [PyPI names]}.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "condastack" / "data" / "conda-pypi-names.json"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def compact(full: dict[str, list[str] | None]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for conda, pypi in sorted(full.items()):
        if not pypi:
            continue  # provides no PyPI distribution
        names = sorted({canonical(p) for p in pypi})
        if names != [canonical(conda)]:
            out[conda] = names
    return out


def pypi_to_conda(full: dict[str, list[str] | None]) -> dict[str, str]:
    """The one conda name conda-lock should map each PyPI name to, where it is not the name itself.

    A PyPI name that a conda package of the same name provides maps to itself
    (pip -> pip, not to ansible, which vendors it).
    """
    own = {canonical(c) for c, p in full.items() if p and canonical(c) in {canonical(x) for x in p}}
    out: dict[str, str] = {}
    for conda, pypi in sorted(full.items()):
        for p in pypi or []:
            p = canonical(p)
            if p not in own and p not in out:
                out[p] = conda
    return out


def main(src: str) -> None:
    full = json.loads(Path(src).read_text())
    data = {"conda_to_pypi": compact(full), "pypi_to_conda": pypi_to_conda(full)}
    text = json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n"
    OUT.write_text(text)
    print(f"{OUT}: {len(data['conda_to_pypi'])}+{len(data['pypi_to_conda'])} names, {len(text)} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent.parent
                                                   / "shared" / "realworld" / "conda-forge-pypi-names.json"))
