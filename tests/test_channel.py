"""The offline test channel: its packages install with py-rattler and relocate."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import rattler


def _vp(name: str, version: str) -> rattler.GenericVirtualPackage:
    return rattler.GenericVirtualPackage(rattler.PackageName(name), rattler.Version(version), rattler.BuildString("0"))


def _solve(url: str, specs: list[str], vps: list) -> list:
    return asyncio.run(rattler.solve([url], specs, platforms=["linux-64", "noarch"], virtual_packages=vps))


def test_channel_contents(channel: Path) -> None:
    names = {}
    for sub in ("linux-64", "linux-aarch64", "noarch"):
        data = json.loads((channel / sub / "repodata.json").read_text())
        names[sub] = {(r["name"], r["version"], r["build"]) for r in {**data["packages"], **data["packages.conda"]}.values()}
    l64 = names["linux-64"]
    assert {("libfoo", "1.0"), ("libfoo", "2.0")} <= {(n, v) for n, v, _ in l64}  # two versions of one library
    assert ("gpu-kernels", "1.0", "cuda12_1") in l64
    assert any(n == "python" for n, _, _ in l64) and any(n == "pip" for n, _, _ in l64)
    assert any(n == "noarch-data" for n, _, _ in names["noarch"])
    assert {"hello", "libhello", "python"} <= {n for n, _, _ in names["linux-aarch64"]}
    cuda = json.loads((channel / "linux-64" / "repodata.json").read_text())["packages.conda"]
    assert any("__cuda >=12" in r["depends"] for r in cuda.values())


def test_install_and_relocation(channel: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "some" / "deeper" / "env"
    recs = _solve(channel.as_uri(), ["hello", "python", "pip", "gpu-kernels", "noarch-data"],
                  [_vp("__cuda", "12.6"), _vp("__glibc", "2.28")])
    asyncio.run(rattler.install(recs, str(prefix), cache_dir=str(tmp_path / "pkgs")))
    out = subprocess.run([str(prefix / "bin" / "hello")], capture_output=True, text=True, check=True).stdout
    # binary placeholder (in bin/hello and in libhello via RPATH) and text placeholder (etc/hello.conf)
    assert f"prefix={prefix}\n" in out
    assert f"lib={prefix}\n" in out
    assert f"conf:etc_prefix={prefix}\n" in out
    assert "placehold" not in out
    readelf = subprocess.run(["readelf", "-d", str(prefix / "bin" / "hello")], capture_output=True, text=True).stdout
    assert "$ORIGIN/../lib" in readelf
    assert (prefix / "share/gpu-kernels/variant").read_text().strip() == "variant=cuda12"
    py = subprocess.run([str(prefix / "bin/python"), "-c", "import sys, ssl; print(sys.prefix)"],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert py == str(prefix)
    pip = subprocess.run([str(prefix / "bin/python"), "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0 and str(prefix) in pip.stdout


def test_virtual_packages_select_builds(channel: Path) -> None:
    """Without __cuda the CPU build is chosen; with __cuda 12.6 the CUDA one."""
    cpu = _solve(channel.as_uri(), ["gpu-kernels"], [])
    gpu = _solve(channel.as_uri(), ["gpu-kernels"], [_vp("__cuda", "12.6")])
    assert [str(r.build) for r in cpu] == ["cpu_0"]
    assert [str(r.build) for r in gpu] == ["cuda12_1"]
