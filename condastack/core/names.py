"""conda-forge <-> PyPI names, from the compact mapping shipped in data/ (no network).

`data/conda-pypi-names.json` lists only the conda-forge names whose PyPI names
differ (built by scripts/make_mapping.py); any other name provides itself. Differ
means spelled differently, not only in PEP 503 form: conda-forge's `huggingface_hub`
provides PyPI's `huggingface-hub`, and no conda-forge package is spelled that way.
Conda names are compared as spelled (lowercase); PyPI names in PEP 503 form.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_write_text
from condastack.core.layout import cache_root

NAMES_FILE = Path(__file__).parent / "data" / "conda-pypi-names.json"  # not importlib.resources: ~3 ms


def canonical(name: str) -> str:
    """A PyPI name in its PEP 503 normal form (also used to compare conda names)."""
    return str(canonicalize_name(name))


def mapping_url() -> str:
    """conda-lock's conda<->PyPI name mapping, made from the one we ship (no network)."""
    try:
        return str(conda_lock_mapping(cache_root() / "mapping"))
    except OSError:  # a read-only cache: write it beside a temporary folder instead
        return str(conda_lock_mapping(Path(tempfile.gettempdir()) / "condastack-mapping"))


@functools.cache
def _table() -> dict[str, list[str]]:
    # keyed by the conda name as spelled: `ruamel.yaml` and `ruamel_yaml` are two packages
    return dict(json.loads(NAMES_FILE.read_text())["conda_to_pypi"])


@functools.cache
def _inverse() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for conda, pypi in json.loads(NAMES_FILE.read_text())["conda_to_pypi"].items():
        for p in pypi:
            out.setdefault(p, []).append(conda)
    return out


@functools.cache
def pypi_to_conda() -> dict[str, str]:
    """Canonical PyPI name -> the one conda-forge name it maps to, for the names that differ."""
    return dict(json.loads(NAMES_FILE.read_text())["pypi_to_conda"])


def pypi_names_for_conda(name: str) -> list[str]:
    """The PyPI distributions a conda-forge package provides."""
    return list(_table().get(name.lower(), [canonical(name)]))


def conda_names_for_pypi(name: str) -> list[str]:
    """The conda-forge names that provide a PyPI distribution (itself included when unlisted)."""
    cname = canonical(name)
    out = list(_inverse().get(cname, []))
    if cname not in _table() and cname not in out:
        out.append(cname)
    return out


def conda_name_for_pypi(name: str) -> str:
    """The one conda-forge name for a PyPI distribution, spelled as conda-forge spells it
    (`huggingface-hub` -> `huggingface_hub`, `torch` -> `pytorch`); the PEP 503 name when unlisted."""
    cname = canonical(name)
    return pypi_to_conda().get(cname, cname)


def conda_lock_mapping(cache: Path) -> Path:
    """The mapping in conda-lock's own format ({pypi: {conda_name, ...}}), written once to `cache`."""
    data = NAMES_FILE.read_bytes()

    path = Path(cache) / f"pypi-mapping-{hashlib.sha256(data).hexdigest()[:16]}.json"
    if path.is_file():
        return path
    out = {p: {"pypi_name": p, "conda_name": c, "conda_forge": c}
           for p, c in json.loads(data)["pypi_to_conda"].items()}

    atomic_write_text(path, json.dumps(out, sort_keys=True))
    return path


# One pattern per kind of name (stack, layer, variable, module part); \Z, since '$' passes a trailing newline.
NAME_PATTERNS: dict[str, re.Pattern[str]] = {
    "stack": re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z"),
    "layer": re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z"),
    "variable": re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}\Z"),
    "module": re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}\Z"),  # one part of NAME/VERSION
}
_NAME_RULES = {
    "stack": "letters, digits, '.', '_' and '-', starting with a letter or digit",
    "layer": "letters, digits, '.', '_' and '-', starting with a letter or digit",
    "variable": "letters, digits and '_', not starting with a digit",
    "module": "letters, digits, '.', '_', '+' and '-', starting with a letter or digit",
}


def is_name(kind: str, value: object) -> bool:
    return isinstance(value, str) and NAME_PATTERNS[kind].match(value) is not None


def check_name(kind: str, value: object, where: str = "") -> str:
    """`value` if it is a valid `kind` name (stack, layer, variable, module), else exit 1 naming it."""
    if not is_name(kind, value):
        shown = ascii(value)[:200] if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
        raise CondastackError(f"{where + ': ' if where else ''}{shown} is not a valid {kind} name "
                              f"(use {_NAME_RULES[kind]}).")
    return str(value)


ENV_VAR_NAME = NAME_PATTERNS["variable"]

# Hex digests, as package records, lockfiles and manifests spell them (either case is accepted: conda
# writes lowercase, some indexes uppercase; writers lowercase them).
DIGEST_HEX_DIGITS = {"md5": 32, "sha256": 64}
_DIGEST = {kind: re.compile(rf"[0-9a-fA-F]{{{n}}}\Z") for kind, n in DIGEST_HEX_DIGITS.items()}


def is_digest(kind: str, value: object) -> bool:
    """Whether `value` is a `kind` ("md5" or "sha256") hex digest."""
    return isinstance(value, str) and _DIGEST[kind].match(value) is not None
