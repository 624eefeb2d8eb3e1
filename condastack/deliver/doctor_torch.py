"""doctor's checks for a PyTorch env: is the torch in this prefix usable on this node?

Everything is read from files, never by importing torch (a broken torch can crash
or hang its importer, and importing it takes seconds):
- `torch/version.py` (parsed with `ast`) gives the version and the CUDA it was built for;
- the cxx11 ABI flag comes from `torch/share/cmake/Torch/TorchConfig.cmake`
  (`-D_GLIBCXX_USE_CXX11_ABI=N`, written by torch's own build), else from whether
  `libc10.so` names `std::__cxx11` symbols;
- the cuDNN and NCCL wheels (`nvidia-cudnn-cuNN`, `nvidia-nccl-cuNN`) from their
  dist-info, against the pins in torch's `METADATA`;
- a flash-attn build from its build tag (`+cu12torch2.7cxx11abiTRUE`, kept in the
  wheel name that pip records in `direct_url.json`, or in the version) and from the
  symbols of its `flash_attn_2_cuda*.so`. A flash-attn built for another torch or ABI
  fails at import with "undefined symbol", the most common crash of verl users.
"""

from __future__ import annotations

import ast
import json
import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path

from condastack.core.names import canonical
from condastack.deliver.checks import Check, Node
from condastack.env.prefix import dist_infos, site_packages_dirs

_ABI_CMAKE = re.compile(r"_GLIBCXX_USE_CXX11_ABI=([01])")
_FA_TAG = re.compile(r"cu(\d+)torch(\d+\.\d+)cxx11abi(TRUE|FALSE)", re.IGNORECASE)
_REQ = re.compile(r"^Requires-Dist:\s*([A-Za-z0-9_.-]+)\s*(?:\(?\s*==\s*([^;\s)]+))?", re.MULTILINE)
_CXX11 = b"St7__cxx11"  # in mangled names of std::string / std::list under the cxx11 ABI


@dataclass
class TorchEnv:
    site: Path  # site-packages holding torch
    version: str  # "2.7.1+cu126"
    cuda: str | None  # "12.6"; None for a CPU build
    cxx11_abi: bool | None
    abi_source: str
    pins: dict[str, str] = field(default_factory=dict)  # canonical dist name -> "==" version in METADATA

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split("+")[0].split(".")[:2])


def _version_py(path: Path) -> dict[str, object]:
    """Top-level constant assignments of a version.py, without running it."""
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text(errors="replace")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and isinstance(getattr(node, "value", None), ast.Constant):
            values[target.id] = node.value.value  # type: ignore[attr-defined]
    return values


def _binary_has(path: Path, needle: bytes) -> bool:
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(needle) != -1


def so_cxx11_abi(path: Path) -> bool | None:
    """Whether a C++ library was built with the cxx11 ABI; None if it names no std::string at all."""
    if _binary_has(path, _CXX11):
        return True
    # The old ABI mangles std::string as `Ss` (e.g. in `RKSs`): only a library that uses strings tells.
    return False if _binary_has(path, b"RKSs") or _binary_has(path, b"NSs") else None


def torch_abi(torch_dir: Path) -> tuple[bool | None, str]:
    cmake = torch_dir / "share" / "cmake" / "Torch" / "TorchConfig.cmake"
    if cmake.is_file():
        m = _ABI_CMAKE.search(cmake.read_text(errors="replace"))
        if m:
            return m.group(1) == "1", f"{cmake.relative_to(torch_dir.parent)}"
    for lib in sorted((torch_dir / "lib").glob("libc10.so*")):
        abi = so_cxx11_abi(lib)
        if abi is not None:
            return abi, f"symbols of {lib.relative_to(torch_dir.parent)}"
    return None, "unknown (no TorchConfig.cmake, no libc10.so)"


def read_torch(prefix: Path) -> TorchEnv | None:
    """The torch installed in `prefix`, or None when there is none."""
    for site in site_packages_dirs(prefix):
        vfile = site / "torch" / "version.py"
        if not vfile.is_file():
            continue
        values = _version_py(vfile)
        abi, source = torch_abi(site / "torch")
        pins: dict[str, str] = {}
        dist = dist_infos(site).get("torch")
        if dist and (dist[1] / "METADATA").is_file():
            for name, pin in _REQ.findall((dist[1] / "METADATA").read_text(errors="replace")):
                if pin:
                    pins[canonical(name)] = pin
        cuda = values.get("cuda")
        return TorchEnv(site, str(values.get("__version__", "unknown")), str(cuda) if cuda else None, abi, source,
                        pins)
    return None


# --------------------------------------------------------------------------- checks


def _major(v: str) -> int:
    return int(v.split(".")[0])


def _tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def check_torch_cuda(node: Node, t: TorchEnv) -> Check:
    required = f"torch {t.version} built for CUDA {t.cuda}" if t.cuda else f"torch {t.version} (CPU build)"
    have = node.virtual_packages.get("__cuda")
    if t.cuda is None:
        return Check("torch cuda", "pass", required, f"node CUDA {have or 'none'}; a CPU build runs anywhere")
    if have is None:
        return Check("torch cuda", "warn", required, "no CUDA driver on this node",
                     "torch will run on the CPU only (torch.cuda.is_available() is False): run on a GPU node "
                     "(Slurm: --gres=gpu:1) to use CUDA.")
    found = f"driver supports CUDA {have}"
    if _major(have) < _major(t.cuda):
        return Check("torch cuda", "fail", required, found,
                     f"This driver is older than CUDA {_major(t.cuda)}: torch cannot use the GPU. Ask for a driver "
                     f"for CUDA >= {t.cuda}, pick newer GPU nodes, or install a torch built for CUDA "
                     f"{_major(have)}.x (e.g. pip torch=={t.version.split('+')[0]} from "
                     f"https://download.pytorch.org/whl/cu{have.replace('.', '')[:3]}).")
    if _tuple(have) < _tuple(t.cuda):
        return Check("torch cuda", "warn", required, found,
                     f"Runs under CUDA minor-version compatibility, but kernels JIT-compiled from PTX (triton, "
                     f"flashinfer) may fail: prefer a driver for CUDA >= {t.cuda}.")
    return Check("torch cuda", "pass", required, found)


def _lib_check(lib: str, t: TorchEnv, dists: dict[str, tuple[str, Path]]) -> tuple[str, str, str]:
    """(status, found, fix) for one of cudnn / nccl."""
    assert t.cuda is not None
    want = f"nvidia-{lib}-cu{_major(t.cuda)}"
    pin = t.pins.get(want)
    present = {n: v for n, (v, _) in dists.items() if re.fullmatch(rf"nvidia-{lib}-cu\d+", n)}
    if want not in present:
        bundled = sorted(p.name for p in (t.site / "torch" / "lib").glob(f"lib{lib}.so*"))
        if bundled:
            return "pass", f"bundled in torch/lib ({bundled[0]})", ""
        other = ", ".join(f"{n} {v}" for n, v in present.items())
        return "fail", f"no {want}" + (f" (only {other})" if other else ""), \
            (f"pip install '{want}{'==' + pin if pin else ''}' into the env (add it to the layer's pip list and "
             "re-lock).")
    version = present[want]
    libs = _wheel_libs(t.site, dists[want][1], lib)
    if not libs or not all(p.is_file() for p in libs):
        where = ", ".join(str(p.relative_to(t.site)) for p in libs if not p.is_file()) or f"nvidia/{lib}/lib"
        return "fail", f"{want} {version} but no lib{lib}*.so ({where})", \
            "The wheel's files are missing: rebuild or reinstall the env (condastack build / install)."
    if pin and version != pin:
        return "warn", f"{want} {version}; torch pins {pin}", \
            f"torch {t.version} was built with {lib} {pin}; a newer {lib} of the same major usually works " \
            f"(verl's images replace cuDNN this way). If torch fails in {lib} calls, pin {want}=={pin}."
    return "pass", f"{want} {version}", ""


def _wheel_libs(site: Path, info: Path, lib: str) -> list[Path]:
    """The lib<lib>*.so* files a wheel installed, from its RECORD (CUDA 13 wheels use nvidia/cu13/lib)."""
    pat = re.compile(rf"(^|/)lib{lib}[^/]*\.so[^/]*$")
    record = info / "RECORD"
    if record.is_file():
        rows = (line.split(",", 1)[0] for line in record.read_text(errors="replace").splitlines())
        found = [site / r for r in rows if pat.search(r)]
        if found:
            return found
    return sorted((site / "nvidia" / lib / "lib").glob(f"lib{lib}*.so*"))


def check_torch_libs(t: TorchEnv) -> Check:
    if t.cuda is None:
        return Check("cudnn / nccl", "pass", "nothing (CPU build of torch)", "-")
    dists = dist_infos(t.site)
    results = {lib: _lib_check(lib, t, dists) for lib in ("cudnn", "nccl")}
    wheels = {lib: f"nvidia-{lib}-cu{_major(t.cuda)}" for lib in results}
    required = "; ".join(w + (f"=={t.pins[w]}" if w in t.pins else "") for w in wheels.values())
    found = "; ".join(r[1] for r in results.values())
    fix = " ".join(r[2] for r in results.values() if r[2])
    status = "fail" if any(r[0] == "fail" for r in results.values()) else \
        "warn" if any(r[0] == "warn" for r in results.values()) else "pass"
    return Check("cudnn / nccl", status, required, found, fix)  # type: ignore[arg-type]


def flash_attn_tag(site: Path, dist: tuple[str, Path]) -> tuple[re.Match[str] | None, str]:
    """The flash-attn build tag and where it was read (version, or the wheel name in direct_url.json)."""
    version, info = dist
    m = _FA_TAG.search(version)
    if m:
        return m, f"version {version}"
    direct = info / "direct_url.json"
    if direct.is_file():
        try:
            url = str(json.loads(direct.read_text()).get("url", ""))
        except ValueError:
            url = ""
        m = _FA_TAG.search(url)
        if m:
            return m, f"wheel {url.rsplit('/', 1)[-1]}"
    return None, "no build tag recorded"


def _abi_word(abi: bool | None) -> str:
    return "unknown" if abi is None else ("TRUE" if abi else "FALSE")


def check_flash_attn(t: TorchEnv) -> Check | None:
    """None when flash-attn is not installed."""
    dist = dist_infos(t.site).get("flash-attn")
    if dist is None:
        return None
    required = f"built for torch {t.major_minor}, cxx11abi{_abi_word(t.cxx11_abi)} ({t.abi_source})"
    tag, where = flash_attn_tag(t.site, dist)
    sos = sorted(t.site.glob("flash_attn_2_cuda*.so"))
    so_abi = so_cxx11_abi(sos[0]) if sos else None
    found = f"flash-attn {dist[0]}: " + (f"torch{tag.group(2)} cxx11abi{tag.group(3).upper()} from {where}" if tag
                                         else where) + (f"; {sos[0].name} uses cxx11abi{_abi_word(so_abi)}" if sos
                                                        else "; no flash_attn_2_cuda*.so")
    py = t.site.parent.name.replace("python", "").replace(".", "")
    fix = ("Install the flash-attn wheel built for this torch: "
           f"flash_attn-{dist[0].split('+')[0]}+cu{_major(t.cuda or '12')}"
           f"torch{t.major_minor}cxx11abi{_abi_word(t.cxx11_abi)}-cp{py}-cp{py}-linux_x86_64.whl "
           "(github.com/Dao-AILab/flash-attention/releases), or build it against the env's torch "
           "(pip install flash-attn --no-build-isolation), and re-lock.")
    if not sos:
        return Check("flash-attn build", "fail", required, found, "flash-attn's CUDA extension is missing: " + fix)
    problems = []
    if tag and tag.group(2) != t.major_minor:
        problems.append(f"built for torch {tag.group(2)}, env has {t.major_minor}")
    if tag and t.cxx11_abi is not None and (tag.group(3).upper() == "TRUE") != t.cxx11_abi:
        problems.append(f"tag says cxx11abi{tag.group(3).upper()}, torch is cxx11abi{_abi_word(t.cxx11_abi)}")
    if so_abi is not None and t.cxx11_abi is not None and so_abi != t.cxx11_abi:
        problems.append(f"the extension uses cxx11abi{_abi_word(so_abi)}, torch cxx11abi{_abi_word(t.cxx11_abi)}")
    if problems:
        return Check("flash-attn build", "fail", required, f"{found} ({'; '.join(problems)})",
                     "Importing flash_attn will fail with 'undefined symbol'. " + fix)
    if tag is None and (so_abi is None or t.cxx11_abi is None):
        return Check("flash-attn build", "warn", required, found,
                     "Cannot tell which torch flash-attn was built for: check that `import flash_attn` works.")
    return Check("flash-attn build", "pass", required, found)


def torch_checks(prefix: Path, node: Node) -> list[Check]:
    """The torch checks for the env at `prefix` (none when it has no torch)."""
    t = read_torch(prefix)
    if t is None:
        return []
    checks = [check_torch_cuda(node, t), check_torch_libs(t)]
    fa = check_flash_attn(t)
    if fa is not None:
        checks.append(fa)
    return checks
