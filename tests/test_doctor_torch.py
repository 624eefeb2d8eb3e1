"""doctor's torch checks, on prefixes shaped like a pip-installed torch.

The files are the ones doctor reads in a real torch 2.7.1 wheel (torch/version.py,
TorchConfig.cmake, the METADATA pins, nvidia-* dist-info and libraries), with
real C++ libraries compiled by g++ under each libstdc++ ABI standing in for
libc10.so and flash-attn's extension, so the ABI is read from real symbols.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from condastack.deliver.checks import Node
from condastack.deliver.doctor import run_doctor
from condastack.deliver.doctor_torch import read_torch, so_cxx11_abi, torch_checks

SITE = "lib/python3.10/site-packages"
CPP = '#include <string>\nstd::string describe(const std::string& s) { return s + "!"; }\n'
PINS = {"nvidia-cudnn-cu12": "9.5.1.17", "nvidia-nccl-cu12": "2.26.2", "nvidia-cublas-cu12": "12.6.4.1"}


@pytest.fixture(scope="module")
def cxx_libs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """{cxx11 abi: a shared library using std::string built with that ABI}."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is needed to build the C++ libraries whose ABI doctor reads")
    d = tmp_path_factory.mktemp("cxx")
    (d / "s.cpp").write_text(CPP)
    out = {}
    for abi in (True, False):
        lib = d / f"lib{int(abi)}.so"
        subprocess.run(["g++", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={int(abi)}", "-o", lib, d / "s.cpp"],
                       check=True)
        out[abi] = lib
    return out


def node(cuda: str | None) -> Node:
    vps = {"__glibc": "2.36", "__unix": "0"} | ({"__cuda": cuda} if cuda else {})
    return Node("n1", "linux-64", vps, [], [], "test driver" if cuda else None, "test")


def _dist(site: Path, name: str, version: str, metadata: str = "") -> Path:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{metadata}")
    return info


def make_torch(prefix: Path, libs: dict[bool, Path], *, cuda: str | None = "12.6", abi: bool = True,
               cmake: bool = True, cudnn: str | None = "9.5.1.17", nccl: str | None = "2.26.2") -> Path:
    site = prefix / SITE
    torch = site / "torch"
    (torch / "lib").mkdir(parents=True)
    (prefix / "conda-meta").mkdir(parents=True, exist_ok=True)
    tag = f"+cu{cuda.replace('.', '')}" if cuda else "+cpu"
    (torch / "version.py").write_text(
        "from typing import Optional\n\n__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip']\n"
        f"__version__ = '2.7.1{tag}'\ndebug = False\ncuda: Optional[str] = {cuda!r}\n"
        "git_version = 'e2d141dbde55c2a4370fac5165b0561b6af4798b'\nhip: Optional[str] = None\n")
    if cmake:
        (torch / "share" / "cmake" / "Torch").mkdir(parents=True)
        (torch / "share" / "cmake" / "Torch" / "TorchConfig.cmake").write_text(
            "# When we build libtorch with the old libstdc++ ABI, dependent libraries must too.\n"
            f'if(CMAKE_SYSTEM_NAME STREQUAL "Linux")\n  set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI={int(abi)}")\nendif()\n')
    shutil.copy(libs[abi], torch / "lib" / "libc10.so")
    reqs = "".join(f'Requires-Dist: {n}=={v}; platform_system == "Linux" and platform_machine == "x86_64"\n'
                   for n, v in PINS.items()) if cuda else ""
    _dist(site, "torch", "2.7.1", "Requires-Dist: filelock\n" + reqs)
    for lib, version, so in (("cudnn", cudnn, "libcudnn.so.9"), ("nccl", nccl, "libnccl.so.2")):
        if version:
            _dist(site, f"nvidia_{lib}_cu12", version)
            (site / "nvidia" / lib / "lib").mkdir(parents=True)
            (site / "nvidia" / lib / "lib" / so).write_bytes(b"\x7fELF")
    return site


def add_flash_attn(site: Path, lib: Path, wheel_tag: str | None, *, version: str = "2.8.0.post2") -> None:
    info = _dist(site, "flash_attn", version)
    if wheel_tag:
        (info / "direct_url.json").write_text(json.dumps(
            {"url": f"file:///tmp/flash_attn-{version}+{wheel_tag}-cp310-cp310-linux_x86_64.whl", "archive_info": {}}))
    shutil.copy(lib, site / "flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so")


def by_name(checks: list) -> dict:
    return {c.name: c for c in checks}


def test_reads_torch_from_files(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    make_torch(tmp_path, cxx_libs)
    t = read_torch(tmp_path)
    assert t is not None and t.version == "2.7.1+cu126" and t.cuda == "12.6" and t.major_minor == "2.7"
    assert t.cxx11_abi is True and "TorchConfig.cmake" in t.abi_source
    assert t.pins["nvidia-cudnn-cu12"] == "9.5.1.17"
    assert read_torch(tmp_path / "nothing") is None


def test_abi_from_library_symbols_when_no_cmake(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    assert so_cxx11_abi(cxx_libs[True]) is True and so_cxx11_abi(cxx_libs[False]) is False
    make_torch(tmp_path, cxx_libs, abi=False, cmake=False)
    t = read_torch(tmp_path)
    assert t is not None and t.cxx11_abi is False and "libc10.so" in t.abi_source


@pytest.mark.parametrize(("driver", "status"), [("12.8", "pass"), ("13.0", "pass"), ("12.4", "warn"),
                                                 ("11.8", "fail"), (None, "warn")])
def test_torch_cuda_against_driver(tmp_path: Path, cxx_libs: dict[bool, Path], driver: str | None,
                                   status: str) -> None:
    make_torch(tmp_path, cxx_libs)
    c = by_name(torch_checks(tmp_path, node(driver)))["torch cuda"]
    assert c.status == status, c
    assert "CUDA 12.6" in c.required
    if status != "pass":
        assert c.fix


def test_cpu_torch_needs_no_driver_nor_cudnn(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    make_torch(tmp_path, cxx_libs, cuda=None, cudnn=None, nccl=None)
    checks = by_name(torch_checks(tmp_path, node(None)))
    assert checks["torch cuda"].status == "pass" and checks["cudnn / nccl"].status == "pass"


def test_cudnn_and_nccl_present(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    make_torch(tmp_path, cxx_libs)
    c = by_name(torch_checks(tmp_path, node("12.8")))["cudnn / nccl"]
    assert c.status == "pass", c
    assert "nvidia-cudnn-cu12 9.5.1.17" in c.found and "nvidia-nccl-cu12 2.26.2" in c.found


def test_missing_nccl_fails_with_the_pip_fix(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    make_torch(tmp_path, cxx_libs, nccl=None)
    c = by_name(torch_checks(tmp_path, node("12.8")))["cudnn / nccl"]
    assert c.status == "fail" and "no nvidia-nccl-cu12" in c.found
    assert "nvidia-nccl-cu12==2.26.2" in c.fix


def test_cudnn_other_than_torch_pin_warns(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    make_torch(tmp_path, cxx_libs, cudnn="9.8.0.87")  # what verl's image does
    c = by_name(torch_checks(tmp_path, node("12.8")))["cudnn / nccl"]
    assert c.status == "warn" and "torch pins 9.5.1.17" in c.found and "nvidia-cudnn-cu12==9.5.1.17" in c.fix


def test_cudnn_wheel_without_its_library_fails(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    site = make_torch(tmp_path, cxx_libs)
    (site / "nvidia" / "cudnn" / "lib" / "libcudnn.so.9").unlink()
    c = by_name(torch_checks(tmp_path, node("12.8")))["cudnn / nccl"]
    assert c.status == "fail" and "no libcudnn" in c.found and "reinstall" in c.fix


def test_wheel_libraries_are_found_through_record(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    """CUDA 13 wheels put their libraries elsewhere (nvidia/cu13/lib): RECORD says where."""
    site = make_torch(tmp_path, cxx_libs)
    shutil.rmtree(site / "nvidia" / "nccl")
    (site / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    (site / "nvidia" / "cu13" / "lib" / "libnccl.so.2").write_bytes(b"\x7fELF")
    info = site / "nvidia_nccl_cu12-2.26.2.dist-info"
    (info / "RECORD").write_text("nvidia/cu13/lib/libnccl.so.2,sha256=x,4\nnvidia_nccl_cu12-2.26.2.dist-info/RECORD,,\n")
    assert by_name(torch_checks(tmp_path, node("12.8")))["cudnn / nccl"].status == "pass"
    (site / "nvidia" / "cu13" / "lib" / "libnccl.so.2").unlink()
    c = by_name(torch_checks(tmp_path, node("12.8")))["cudnn / nccl"]
    assert c.status == "fail" and "nvidia/cu13/lib/libnccl.so.2" in c.found


def test_flash_attn_matching_build_passes(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    site = make_torch(tmp_path, cxx_libs)
    add_flash_attn(site, cxx_libs[True], "cu12torch2.7cxx11abiTRUE")
    c = by_name(torch_checks(tmp_path, node("12.8")))["flash-attn build"]
    assert c.status == "pass", c
    assert "torch2.7 cxx11abiTRUE" in c.found


def test_flash_attn_for_other_torch_fails(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    site = make_torch(tmp_path, cxx_libs)
    add_flash_attn(site, cxx_libs[True], "cu12torch2.6cxx11abiTRUE")
    c = by_name(torch_checks(tmp_path, node("12.8")))["flash-attn build"]
    assert c.status == "fail" and "built for torch 2.6, env has 2.7" in c.found
    assert "torch2.7cxx11abiTRUE-cp310-cp310" in c.fix


def test_flash_attn_abi_mismatch_fails_from_tag_and_symbols(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    site = make_torch(tmp_path, cxx_libs)
    add_flash_attn(site, cxx_libs[False], "cu12torch2.7cxx11abiFALSE")
    c = by_name(torch_checks(tmp_path, node("12.8")))["flash-attn build"]
    assert c.status == "fail"
    assert "tag says cxx11abiFALSE" in c.found and "extension uses cxx11abiFALSE" in c.found
    assert "undefined symbol" in c.fix


def test_flash_attn_without_tag_is_judged_by_its_symbols(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    site = make_torch(tmp_path, cxx_libs)
    add_flash_attn(site, cxx_libs[False], None)
    c = by_name(torch_checks(tmp_path, node("12.8")))["flash-attn build"]
    assert c.status == "fail" and "extension uses cxx11abiFALSE" in c.found


def test_no_torch_no_torch_checks_and_run_doctor_adds_them(tmp_path: Path, cxx_libs: dict[bool, Path]) -> None:
    assert torch_checks(tmp_path, node("12.8")) == []
    prefix = tmp_path / "env"
    make_torch(prefix, cxx_libs, nccl=None)
    report = run_doctor(prefix=prefix, node=node("12.8"), min_free_bytes=0, min_free_inodes=0)
    names = [c.name for c in report.checks]
    assert "torch cuda" in names and "cudnn / nccl" in names
    assert not report.ok  # nccl is missing
