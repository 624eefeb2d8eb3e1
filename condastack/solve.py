"""The one seam between conda-lock (formats) and py-rattler (solving, installing).

conda-lock is the authority on what an environment.yml means (selectors,
channels, `pip:`) and on the lockfile models; py-rattler does the solving.
Everything that converts between the two lives here and nowhere else.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import yaml

from .errors import CondastackError

MAPPING_FILE = Path(__file__).parent / "data" / "pypi-mapping.yml"


def mapping_url() -> str:
    """conda-lock's conda<->PyPI name mapping, read from a file we ship (no network)."""
    return str(MAPPING_FILE)


# --------------------------------------------------------------------------- environment.yml


def parse_layer_specs(path: Path, platform: str, *, layer: str) -> tuple[list[str], list[str]]:
    """Conda match specs and pip requirement strings of one environment.yml for one platform.

    Selectors and pip markers are applied by conda-lock's own parser.
    """
    from conda_lock.models.lock_spec import VersionedDependency
    from conda_lock.src_parser.environment_yaml import parse_environment_file
    from conda_lock.src_parser.markers import evaluate_marker
    from conda_lock.src_parser.pyproject_toml import parse_python_requirement
    from conda_lock.src_parser.selectors import filter_platform_selectors

    sink = io.StringIO()
    try:
        # conda-lock prints a line for each selector it drops; keep our output clean.
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            spec = parse_environment_file(Path(path), [platform], mapping_url=mapping_url())
    except Exception as e:  # conda-lock raises plain ValueErrors for bad specs
        raise CondastackError(f"{path}: layer '{layer}': cannot parse the environment file: {e}") from None

    conda: list[str] = []
    for dep in spec.dependencies[platform]:
        if dep.manager != "conda" or not isinstance(dep, VersionedDependency):
            continue
        ms = to_match_spec(dep)
        if ms not in conda and not (dep.name == "pip" and any(c.split()[0] == "pip" for c in conda)):
            conda.append(ms)

    # pip requirement strings are kept verbatim (conda-lock mangles URLs when it parses them),
    # but only those whose markers hold on this platform.
    text = "\n".join(filter_platform_selectors(Path(path).read_text(), platform=platform))
    raw = yaml.safe_load(text) or {}
    pip: list[str] = []
    for entry in raw.get("dependencies") or []:
        if isinstance(entry, dict):
            for req in entry.get("pip") or []:
                req = str(req).strip()
                if req.startswith("-e ") or req.startswith("--editable"):
                    raise CondastackError(
                        f"{path}: layer '{layer}': editable pip dependency '{req}' cannot be locked or "
                        "packed; build it as a wheel or wrap it with `condastack wrap`."
                    )
                try:
                    dep = parse_python_requirement(req, manager="pip", category="main", mapping_url=mapping_url())
                except Exception as e:
                    raise CondastackError(f"{path}: layer '{layer}': bad pip requirement '{req}': {e}") from None
                if evaluate_marker(dep.markers, platform) and req not in pip:
                    pip.append(req)
    return conda, pip


def to_match_spec(dep: object) -> str:
    """A conda-lock VersionedDependency as a conda MatchSpec string."""
    name = dep.name  # type: ignore[attr-defined]
    version = (dep.version or "").strip()  # type: ignore[attr-defined]
    build = dep.build  # type: ignore[attr-defined]
    channel = dep.conda_channel  # type: ignore[attr-defined]
    out = f"{channel}::{name}" if channel else name
    if version and version != "*":
        out += f" {version}"
        if build:
            out += f" {build}"
    elif build:
        out += f" * {build}"
    return out


_SPEC_NAME = re.compile(r"^(?:[^:\s]+::)?([A-Za-z0-9_.-]+)")


def spec_name(spec: str) -> str:
    """The package name of a conda match spec string."""
    m = _SPEC_NAME.match(spec.strip())
    return m.group(1).lower() if m else spec.strip().lower()
