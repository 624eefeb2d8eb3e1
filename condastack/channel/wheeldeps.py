"""A wheel's `Requires-Dist` as conda dependencies, and whether channels can satisfy them.

Markers are evaluated for the package's target (its python, Linux, its machine),
PyPI names become conda-forge names through the conda-forge mapping, and PEP 440
specifiers become conda version specs (local labels dropped, as conda-forge
versions have none).
"""

from __future__ import annotations

import asyncio
import email.parser
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from condastack.core.errors import CondastackError
from condastack.core.names import pypi_to_conda

_MACHINE = {"linux-64": "x86_64", "linux-aarch64": "aarch64"}


@dataclass(frozen=True)
class WheelDep:
    """One requirement of a wheel, as the wheel says it and as a conda spec."""

    requirement: str  # "mpmath<1.4,>=1.1"
    pypi_name: str  # canonical PyPI name
    spec: str  # "mpmath >=1.1,<1.4"

    @property
    def conda_name(self) -> str:
        return self.spec.split()[0]


def pypi_to_conda_names() -> dict[str, str]:
    """Canonical PyPI name -> conda-forge name, for the names that differ, spelling included (the shipped mapping)."""
    return pypi_to_conda()


def target_environment(python: str, platform: str) -> dict[str, str]:
    """PEP 508 marker variables of CPython `python` (X.Y) on a Linux `platform`."""
    return {
        "python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "implementation_version": f"{python}.0",
        "os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
        "platform_machine": _MACHINE.get(platform, "x86_64"), "platform_release": "", "platform_version": "",
    }


def wheel_requirements(metadata: str, python: str, platform: str, extras: Sequence[str] = (),
                       *, where: str = "wheel") -> list[WheelDep]:
    """The conda dependencies of a METADATA text's Requires-Dist lines for this target."""

    msg = email.parser.Parser().parsestr(metadata, headersonly=True)
    env = target_environment(python, platform)
    mapping = pypi_to_conda_names()
    out: dict[str, WheelDep] = {}
    for line in msg.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise CondastackError(f"wrap: {where}: Requires-Dist '{line}' is not a PEP 508 requirement ({e}).") \
                from None
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": x}) for x in ("", *extras)):
            continue
        if req.url:
            raise CondastackError(f"wrap: {where}: Requires-Dist '{line}' points at a URL; a conda package can only "
                                  "depend on packages of a channel. Pass --depends to say what to use instead.")
        pypi = canonicalize_name(req.name)
        conda = mapping.get(pypi, pypi)
        version = _conda_version_spec(str(req.specifier), line, where)
        dep = WheelDep(line, pypi, f"{conda} {version}" if version else conda)
        prev = out.get(conda)
        out[conda] = dep if prev is None else WheelDep(prev.requirement + "; " + line, pypi,
                                                       _merge(prev.spec, dep.spec))
    return list(out.values())


def _merge(a: str, b: str) -> str:
    name = a.split()[0]
    parts = [s.split(" ", 1)[1] for s in (a, b) if " " in s]
    return f"{name} {','.join(parts)}" if parts else name


def _conda_version_spec(specifier: str, line: str, where: str) -> str:
    """PEP 440 specifiers -> a conda version spec ("<1.4,>=1.1" -> ">=1.1,<1.4")."""
    out = []
    for s in sorted(filter(None, (x.strip() for x in specifier.split(","))), key=lambda x: x.lstrip("<>=!~")):
        m = re.fullmatch(r"(===|==|!=|~=|>=|<=|>|<)\s*([^\s]+)", s)
        if m is None:
            raise CondastackError(f"wrap: {where}: cannot read the version specifier '{s}' of '{line}'.")
        op, ver = m.groups()
        if "+" in ver and not ver.endswith("*"):
            ver = ver.split("+", 1)[0]  # conda-forge versions carry no PEP 440 local label
        op = "==" if op == "===" else op
        if op == "==" and ver.endswith(".*"):
            out.append(ver)  # conda's "1.2.*"
        else:
            out.append(op + ver)
    return ",".join(out)


def _local_channel_exists(url: str) -> bool:

    folder = Path(unquote(urlparse(url).path))
    return (folder / "noarch" / "repodata.json").is_file() or any(folder.glob("*/repodata.json"))


def unsatisfied(deps: Sequence[WheelDep], channels: Sequence[str], platform: str) -> list[WheelDep]:
    """The dependencies that no package of `channels` (platform + noarch) satisfies.

    Only names and versions are checked, not each candidate's own dependencies:
    the lock's solver has the last word. A channel that cannot be read (offline)
    raises, so the caller can say the check was skipped.
    """

    import rattler  # lazy: native, ~0.2 s

    # A local channel not made yet (the site channel before its first package) has nothing to offer.
    channels = [c for c in channels if not c.startswith("file://") or _local_channel_exists(c)]
    if not deps or not channels:
        return list(deps)
    specs = [rattler.MatchSpec(d.spec) for d in deps]
    gateway = rattler.Gateway()
    found = asyncio.run(gateway.query([rattler.Channel(c) for c in channels],
                                      [rattler.Platform(platform), rattler.Platform("noarch")],
                                      [rattler.MatchSpec(d.conda_name) for d in deps], recursive=False))
    records = [r for group in found for r in group]
    return [d for d, s in zip(deps, specs, strict=False) if not any(s.matches(r) for r in records)]
