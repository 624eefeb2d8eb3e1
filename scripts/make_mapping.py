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
    """The one conda name each PyPI name maps to, where it is not the name itself.

    A PyPI name that a conda package of the same name provides maps to itself
    (pip -> pip, not to ansible, which vendors it; typing-extensions, not gym).
    Among several providers prefer one that ships only it, then the shortest
    name (the base package, not a variant: pytorch over pytorch-cpu).
    """
    own = {canonical(c) for c, p in full.items() if p and canonical(c) in {canonical(x) for x in p}}
    best: dict[str, tuple[int, int, str]] = {}
    for conda, pypi in full.items():
        for p in {canonical(x) for x in pypi or []}:
            rank = (0 if len(pypi or []) == 1 else 1, len(conda), conda)
            if p not in own and (p not in best or rank < best[p]):
                best[p] = rank
    return {p: r[2] for p, r in sorted(best.items())}


def main(src: str) -> None:
    full = json.loads(Path(src).read_text())
    data = {"conda_to_pypi": compact(full), "pypi_to_conda": pypi_to_conda(full)}
    text = json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n"
    OUT.write_text(text)
    print(f"{OUT}: {len(data['conda_to_pypi'])}+{len(data['pypi_to_conda'])} names, {len(text)} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent.parent
                                                   / "shared" / "realworld" / "conda-forge-pypi-names.json"))
