"""Effective virtual packages: what conda would detect on a plain node of each platform.

A solve sees only the virtual packages it is given, and conda-forge's noarch
packages depend on `__unix`, so a stack that declares just `__cuda` would not
lock. Like conda-lock and pixi, each platform starts from defaults for a plain
node (pixi's system requirements: Linux 4.18, glibc 2.28, macOS 13.0) and
the stack's declared `virtual-packages` override them name by name.
"""

from __future__ import annotations

_ARCH = {"64": "x86_64", "aarch64": "aarch64", "ppc64le": "ppc64le", "arm64": "arm64"}


def default_virtual_packages(platform: str) -> dict[str, str]:
    """Virtual packages of a plain node of `platform` (version, or version=build)."""
    os_name, _, arch = platform.partition("-")
    out: dict[str, str] = {}
    if os_name in ("linux", "osx"):
        out["__unix"] = "0"
    if os_name == "linux":
        out["__linux"] = "4.18"
        out["__glibc"] = "2.28"
    elif os_name == "osx":
        out["__osx"] = "13.0"
    elif os_name == "win":
        out["__win"] = "0"
    if arch in _ARCH:
        out["__archspec"] = f"1={_ARCH[arch]}"
    return out


def effective_virtual_packages(platform: str, declared: dict[str, str]) -> dict[str, str]:
    """The defaults of `platform`, overridden by what the stack declares."""
    out = default_virtual_packages(platform)
    out.update(declared)
    return dict(sorted(out.items()))
