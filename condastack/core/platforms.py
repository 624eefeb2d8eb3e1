"""conda platforms: which exist, the one this machine is, and their names in OCI and Debian."""

from __future__ import annotations

import platform as _platform
import sys

KNOWN_PLATFORMS = ("linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64", "win-64")
# conda's names for the machines containers and Debian bases are made for.
OCI_ARCH = {"linux-64": "amd64", "linux-aarch64": "arm64", "linux-ppc64le": "ppc64le"}
DEB_ARCH = {"linux-64": "amd64", "linux-aarch64": "arm64", "linux-ppc64le": "ppc64el"}
_MACHINES = {("linux", "x86_64"): "linux-64", ("linux", "aarch64"): "linux-aarch64",
             ("linux", "ppc64le"): "linux-ppc64le", ("darwin", "x86_64"): "osx-64",
             ("darwin", "arm64"): "osx-arm64", ("win32", "AMD64"): "win-64"}


def host_platform() -> str:
    """This machine's conda platform (as rattler's Platform.current() names it, without importing rattler)."""
    key = (sys.platform, _platform.machine())
    if key not in _MACHINES:
        import rattler  # an unusual machine: ask rattler (loaded only here)

        return str(rattler.Platform.current())
    return _MACHINES[key]
