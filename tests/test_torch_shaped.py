"""A pip layer shaped like PyTorch survives lock, build, pack, unpack elsewhere and relocation.

Offline and small, but with what a real CUDA torch wheel has that matters:
- `torch/lib/libtorch_cuda.so` built with gcc, linking `libc10.so` beside it and
  `libcudnn.so.9` from the `nvidia-cudnn-cu12` wheel through an RPATH of
  `$ORIGIN:$ORIGIN/../../nvidia/cudnn/lib` (set with patchelf, as torch's is);
- a large file (24 MB of incompressible data, many read chunks) whose hash must hold;
- `nvidia-*` dependencies pinned with `==` in torch's METADATA;
- a `.pth` file run at interpreter start, and a console entry point;
- `torch/version.py` and `TorchConfig.cmake`, so doctor's torch checks read them.
The wheels are served by a PEP 503 index on 127.0.0.1.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

from tests.helpers import run_cli, write_project

TAG = "py3-none-manylinux_2_17_x86_64"
BIG = 24 * 1024 * 1024
TORCH_INIT = '''\
import ctypes, os
__version__ = "2.7.1+cu126"
_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "lib", "libtorch_cuda.so"))
def check():
    return _lib.torch_cuda_check()
def main():
    print("torch-info", __version__, check(), os.environ.get("TORCH_PTH_RAN"))
'''


def _sh(*cmd: str | Path, cwd: Path) -> None:
    subprocess.run([str(c) for c in cmd], cwd=cwd, check=True, capture_output=True)


def _libs(work: Path) -> dict[str, bytes]:
    """libc10.so, libcudnn.so.9 and libtorch_cuda.so (needs both, found through its RPATH)."""
    (work / "c10.c").write_text("int c10_value(void) { return 7; }\n")
    (work / "cudnn.c").write_text("int cudnn_version(void) { return 90501; }\n")
    (work / "tc.c").write_text("int c10_value(void); int cudnn_version(void);\n"
                               "int torch_cuda_check(void) { return c10_value() + cudnn_version(); }\n")
    _sh("gcc", "-shared", "-fPIC", "-Wl,-soname,libc10.so", "-o", "libc10.so", "c10.c", cwd=work)
    _sh("gcc", "-shared", "-fPIC", "-Wl,-soname,libcudnn.so.9", "-o", "libcudnn.so.9", "cudnn.c", cwd=work)
    _sh("gcc", "-shared", "-fPIC", "-o", "libtorch_cuda.so", "tc.c", "-L.", "-lc10", "-l:libcudnn.so.9", cwd=work)
    _sh("patchelf", "--set-rpath", "$ORIGIN:$ORIGIN/../../nvidia/cudnn/lib", "libtorch_cuda.so", cwd=work)
    return {n: (work / n).read_bytes() for n in ("libc10.so", "libcudnn.so.9", "libtorch_cuda.so")}


def _wheel(folder: Path, name: str, version: str, files: dict[str, bytes], *, requires: tuple[str, ...] = (),
           entry_points: str = "") -> Path:
    mod = name.replace("-", "_")
    dist = f"{mod}-{version}.dist-info"
    files = dict(files)
    files[f"{dist}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    files[f"{dist}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: condastack-tests\nRoot-Is-Purelib: false\nTag: {TAG}\n".encode()
    if entry_points:
        files[f"{dist}/entry_points.txt"] = entry_points.encode()
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}"
              for p, b in files.items()]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    out = folder / f"{mod}-{version}-{TAG}.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if path.endswith((".so", ".so.9")) else 0o644) << 16
            z.writestr(info, data)
    return out


def _torch_wheels(files: Path, work: Path) -> list[Path]:
    libs = _libs(work)
    big = os.urandom(BIG)
    pins = ("nvidia-cudnn-cu12==9.5.1.17", "nvidia-nccl-cu12==2.26.2")
    torch = _wheel(files, "torch", "2.7.1", {
        "torch/__init__.py": TORCH_INIT.encode(),
        "torch/version.py": b"__version__ = '2.7.1+cu126'\ncuda = '12.6'\n",
        "torch/share/cmake/Torch/TorchConfig.cmake": b'set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=1")\n',
        "torch/lib/libc10.so": libs["libc10.so"],
        "torch/lib/libtorch_cuda.so": libs["libtorch_cuda.so"],
        "torch/lib/libtorch_big.bin": big,
        "torch-pth.pth": b"import os; os.environ.setdefault('TORCH_PTH_RAN', 'yes')\n",
    }, requires=pins, entry_points="[console_scripts]\ntorch-info = torch:main\n")
    cudnn = _wheel(files, "nvidia-cudnn-cu12", "9.5.1.17", {
        "nvidia/__init__.py": b"", "nvidia/cudnn/__init__.py": b"", "nvidia/cudnn/lib/libcudnn.so.9": libs["libcudnn.so.9"]})
    nccl = _wheel(files, "nvidia-nccl-cu12", "2.26.2", {
        "nvidia/__init__.py": b"", "nvidia/nccl/__init__.py": b"", "nvidia/nccl/lib/libnccl.so.2": b"\x7fELF nccl"})
    return [torch, cudnn, nccl]


@pytest.fixture(scope="module")
def torch_index(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    for tool in ("gcc", "patchelf"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is needed to build the torch-shaped libraries")
    root = tmp_path_factory.mktemp("torchpypi")
    (root / "files").mkdir()
    (root / "work").mkdir()
    wheels = _torch_wheels(root / "files", root / "work")
    for w in wheels:
        project = w.name.split("-")[0].replace("_", "-")
        d = root / "simple" / project
        d.mkdir(parents=True)
        sha = hashlib.sha256(w.read_bytes()).hexdigest()
        (d / "index.html").write_text(f'<a href="../../files/{w.name}#sha256={sha}">{w.name}</a>\n')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    server.shutdown()


def _ok(*args: str | Path, cwd: Path | None = None) -> str:
    res = run_cli(*args, cwd=cwd)
    assert res.returncode == 0, res.output
    return res.output


def test_torch_shaped_pip_layer_survives_pack_and_relocation(tmp_path: Path, channel_url: str, torch_index: str,
                                                             pkgs_cache: Path) -> None:
    proj = write_project(tmp_path / "proj", f"""
        name: torchshaped
        platforms: [linux-64]
        virtual-packages:
          linux-64: {{__cuda: "12.6", __glibc: "2.28"}}
        pip-index: ["{torch_index}"]
        layers:
          app: {{file: app.yml}}
        """, {"app.yml": f"""
        channels: ["{channel_url}"]
        dependencies:
          - python 3.11.*
          - pip
          - pip:
            - torch==2.7.1
        """})
    _ok("-C", proj, "lock")
    lock_text = (proj / "lock" / "app.conda-lock.yml").read_text()
    assert "nvidia-cudnn-cu12" in lock_text and "nvidia-nccl-cu12" in lock_text
    _ok("-C", proj, "build", "app")
    archive = tmp_path / "app.tar.zst"
    _ok("-C", proj, "pack", "app", "-o", archive)
    shutil.rmtree(proj / "envs")  # nothing of the original is left to lean on
    dest = tmp_path / "else" / "where" / "app"
    _ok("unpack", archive, dest)
    _ok("verify", "--prefix", dest)

    site = dest / "lib" / "python3.11" / "site-packages"
    big = site / "torch" / "lib" / "libtorch_big.bin"
    assert big.stat().st_size == BIG
    rpath = subprocess.run(["patchelf", "--print-rpath", site / "torch" / "lib" / "libtorch_cuda.so"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert rpath == "$ORIGIN:$ORIGIN/../../nvidia/cudnn/lib"
    assert (site / "torch-pth.pth").is_file()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TORCH_PTH"))}
    # Activated (bin/ first on PATH), as conda-pack envs are: their pip launchers say `#!/usr/bin/env python`.
    env["PATH"] = f"{dest / 'bin'}:{env['PATH']}"
    # The entry point's launcher runs the relocated python; the .pth ran at start; the RPATH found libcudnn.
    out = subprocess.run([dest / "bin" / "torch-info"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["torch-info", "2.7.1+cu126", str(7 + 90501), "yes"]
    assert str(proj).encode() not in (dest / "bin" / "torch-info").read_bytes()
    # doctor reads the relocated torch: CUDA 12.6, cuDNN and NCCL wheels as torch pins them.
    res = run_cli("doctor", "--prefix", dest, "--json", env={"CONDA_OVERRIDE_CUDA": "12.8"})
    assert "Traceback" not in res.output, res.output
    import json

    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["torch cuda"]["status"] == "pass", checks
    assert checks["cudnn / nccl"]["status"] == "pass", checks
    assert checks["python imports"]["status"] == "pass", checks


def test_a_locked_sdist_is_refused_with_the_fix(tmp_path: Path) -> None:
    """PyPI has some packages only as sdists (antlr4-python3-runtime 4.9.3, via hydra-core)."""
    from condastack.env.pip import install_wheels
    from condastack.core.errors import CondastackError
    from condastack.env.locked import LockedWheel

    (tmp_path / "tmp" / "bin").mkdir(parents=True)
    (tmp_path / "tmp" / "bin" / "python").write_text("")
    url = "https://files.pythonhosted.org/packages/3e/38/antlr4-python3-runtime-4.9.3.tar.gz"
    w = LockedWheel(name="antlr4-python3-runtime", version="4.9.3", url=url, sha256="0" * 64)
    with pytest.raises(CondastackError) as e:
        install_wheels(tmp_path / "tmp", tmp_path / "final", [w], [tmp_path / "x.tar.gz"])
    assert "antlr4-python3-runtime 4.9.3 (antlr4-python3-runtime-4.9.3.tar.gz)" in str(e.value)
    assert "re-lock" in str(e.value)
