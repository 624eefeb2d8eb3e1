"""Build condastack/core/data/conda-pypi-names.json from the full conda-forge -> PyPI mapping.

    python scripts/make_mapping.py ../shared/realworld/conda-forge-pypi-names.json

The source (prefix-dev/parselmouth's compressed mapping, as pixi uses) maps
33,909 conda-forge names to the PyPI names they provide. Most map to
themselves, spelled alike, which is what conda-lock and condastack assume for
any name not listed, so only the names that differ are kept, in either
direction: {conda name: [PyPI names]} and {PyPI name: conda name}.

"Differ" is by spelling, not by PEP 503 form: conda-forge spells 1,241 packages
otherwise than the normal form of the PyPI name they provide (`huggingface_hub`,
`typing_extensions`, `ruamel.yaml`), and a conda dependency on the normal form
(`huggingface-hub`) names a package that does not exist.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "condastack" / "core" / "data" / "conda-pypi-names.json"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def compact(full: dict[str, list[str] | None]) -> dict[str, list[str]]:
    """{conda name: its PyPI names} for every conda name that is not spelled as the one PyPI name it provides."""
    out: dict[str, list[str]] = {}
    for conda, pypi in sorted(full.items()):
        if not pypi:
            continue  # provides no PyPI distribution
        names = sorted({canonical(p) for p in pypi})
        if names != [conda]:
            out[conda] = names
    return out


def pypi_to_conda(full: dict[str, list[str] | None]) -> dict[str, str]:
    """The one conda name each PyPI name maps to, where it is not the name itself, spelled alike.

    A PyPI name that a conda package of exactly that name provides maps to itself
    (pip -> pip, not to ansible, which vendors it; importlib-metadata, not
    importlib_metadata). Among several providers prefer the package spelled like
    the PyPI name up to PEP 503 (huggingface-hub -> huggingface_hub;
    typing-extensions -> typing_extensions, not gym, which vendors it), then one
    that ships only it (ruamel.yaml over ruamel_yaml), then the shortest name
    (the base package, not a variant: pytorch over pytorch-cpu).
    """
    provides = {c: {canonical(x) for x in p} for c, p in full.items() if p}
    own = {c for c, names in provides.items() if c in names}
    best: dict[str, tuple[int, int, int, str]] = {}
    for conda, names in provides.items():
        for p in names:
            rank = (0 if canonical(conda) == p else 1, 0 if len(names) == 1 else 1, len(conda), conda)
            if p not in own and (p not in best or rank < best[p]):
                best[p] = rank
    return {p: r[-1] for p, r in sorted(best.items())}


def main(src: str) -> None:
    full = json.loads(Path(src).read_text())
    data = {"conda_to_pypi": compact(full), "pypi_to_conda": pypi_to_conda(full)}
    text = json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n"
    OUT.write_text(text)
    respelled = sum(1 for p, c in data["pypi_to_conda"].items() if canonical(c) == p)
    print(f"{OUT}: {len(data['conda_to_pypi'])}+{len(data['pypi_to_conda'])} names "
          f"({respelled} spelled otherwise than their PEP 503 form), {len(text)} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent.parent
                                                   / "shared" / "realworld" / "conda-forge-pypi-names.json"))
