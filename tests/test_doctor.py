"""`condastack doctor`: node checks against a layer or an installed env.

The driver's CUDA version and glibc come from CONDA_OVERRIDE_CUDA /
CONDA_OVERRIDE_GLIBC, as conda honours them, so pass and fail paths both run
on CPU machines. The env is really installed from the test channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
import rattler

from tests.helpers import assert_user_error, run_cli, write_project
from condastack.deliver.checks import Gpu, Node
from condastack.deliver.doctor import Requirements, check_gpus, check_space, detect_virtual_packages, run_doctor

def _vp(name: str, version: str) -> rattler.GenericVirtualPackage:
    return rattler.GenericVirtualPackage(rattler.PackageName(name), rattler.Version(version), rattler.BuildString("0"))


@pytest.fixture(scope="module")
def gpu_env(channel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """python + pip + gpu-kernels (the cuda12 build: depends __cuda >=12), installed for real."""
    base = tmp_path_factory.mktemp("doctor-env")
    prefix = base / "envs" / "app"
    recs = asyncio.run(rattler.solve([channel.as_uri()], ["python", "pip", "gpu-kernels", "hello"],
                                     platforms=["linux-64", "noarch"],
                                     virtual_packages=[_vp("__cuda", "12.6"), _vp("__glibc", "2.28")]))
    asyncio.run(rattler.install(recs, str(prefix), cache_dir=str(base / "pkgs")))
    (prefix / "conda-meta" / "condastack.info").write_text(json.dumps(
        {"layer": "app", "stack": "demo", "platform": "linux-64", "lock_hash": "ab" * 32,
         "lockfile": "lock/app.conda-lock.yml", "created_by": "condastack test"}))
    return prefix


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    return write_project(
        tmp_path / "proj",
        """
        name: demo
        platforms: [linux-64]
        virtual-packages:
          linux-64: {__cuda: "12.6", __glibc: "2.28"}
        layers:
          app: {file: app.yml}
        """,
        {"app.yml": "name: app\ndependencies: [python]\n"},
    )


def _json_run(*args: str | Path, **overrides: str) -> tuple[int, dict]:
    res = run_cli(*args, "--json", env=overrides)
    assert "Traceback" not in res.output, res.output
    return res.returncode, json.loads(res.stdout)


def _checks(data: dict) -> dict[str, dict]:
    return {c["name"]: c for c in data["checks"]}


# --------------------------------------------------------------------------- detection


def test_overrides_are_honoured_as_conda_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """py-rattler's plain detect() ignores CONDA_OVERRIDE_*; ours must not."""
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.4")
    monkeypatch.setenv("CONDA_OVERRIDE_GLIBC", "2.17")
    plain = {vp.into_generic().name.normalized: str(vp.into_generic().version) for vp in rattler.VirtualPackage.detect()}
    ours, overridden = detect_virtual_packages()
    assert ours["__cuda"] == "12.4" and ours["__glibc"] == "2.17"
    assert set(overridden) >= {"__cuda", "__glibc"}
    assert plain.get("__glibc") != "2.17"  # the reason we pass VirtualPackageOverrides.from_env()
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "")  # conda: empty means "no CUDA"
    ours, _ = detect_virtual_packages()
    assert "__cuda" not in ours


# --------------------------------------------------------------------------- a layer of the stack


def test_layer_pass_with_overrides(project: Path) -> None:
    rc, data = _json_run("-C", project, "doctor", "app", CONDA_OVERRIDE_CUDA="12.8", CONDA_OVERRIDE_GLIBC="2.36")
    checks = _checks(data)
    assert rc == 0 and data["ok"], data
    assert checks["cuda driver"]["status"] == "pass" and "12.8" in checks["cuda driver"]["found"]
    assert checks["glibc"]["status"] == "pass" and ">=2.28" in checks["glibc"]["required"]
    assert checks["free space"]["status"] == "pass"


def test_layer_fails_on_old_driver_and_glibc(project: Path) -> None:
    rc, data = _json_run("-C", project, "doctor", "app", CONDA_OVERRIDE_CUDA="11.8", CONDA_OVERRIDE_GLIBC="2.17")
    checks = _checks(data)
    assert rc == 1 and not data["ok"]
    assert checks["cuda driver"]["status"] == "fail" and "11.8" in checks["cuda driver"]["fix"]
    assert checks["glibc"]["status"] == "fail" and "2.17" in checks["glibc"]["fix"]
    # the table form names the failure and its fix too, and exits 1 without a traceback
    res = run_cli("-C", project, "doctor", "app", env={"CONDA_OVERRIDE_CUDA": "11.8", "CONDA_OVERRIDE_GLIBC": "2.17"})
    assert res.returncode == 1 and "Traceback" not in res.output
    assert "FAIL" in res.stdout and "newer driver" in res.stdout and "some checks failed" in res.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists(),
                    reason="this machine has an NVIDIA driver")
def test_cpu_only_node_says_no_driver(project: Path) -> None:
    if "CONDA_OVERRIDE_CUDA" in os.environ:
        pytest.skip("CONDA_OVERRIDE_CUDA is set in the test environment")
    res = run_cli("-C", project, "doctor", "app")
    assert res.returncode == 1, res.output
    # said on a line of its own, not only inside a wrapped table cell
    assert any(line.startswith("No NVIDIA GPU driver is present on this node") and "CPU-only" in line
               for line in res.stdout.splitlines()), res.stdout
    rc, data = _json_run("-C", project, "doctor", "app")
    checks = _checks(data)
    assert checks["cuda driver"]["status"] == "fail"
    assert "no NVIDIA GPU driver is present" in checks["cuda driver"]["found"]
    assert checks["gpus"]["status"] == "fail" and "--gres=gpu" in checks["gpus"]["fix"]


def test_unknown_layer_is_a_user_error(project: Path) -> None:
    assert_user_error(run_cli("-C", project, "doctor", "nope"), "unknown layer 'nope'")
    assert_user_error(run_cli("-C", project, "doctor"), "LAYER", "--prefix")


def test_layer_without_conda_lock_installed(project: Path) -> None:
    """A compute node may have only click, rich, pyyaml and py-rattler: doctor LAYER still works."""
    import subprocess
    import sys

    from tests.helpers import REPO

    code = ("import sys; sys.modules['conda_lock'] = None; sys.argv = ['condastack', '-C', sys.argv[1], "
            "'doctor', 'app', '--json']; from condastack.cli import main; main()")
    p = subprocess.run([sys.executable, "-c", code, str(project)], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, CONDA_OVERRIDE_CUDA="12.8", CONDA_OVERRIDE_GLIBC="2.36"))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ok"] is True


# --------------------------------------------------------------------------- an installed env


def test_prefix_pass_reads_package_requirements(gpu_env: Path) -> None:
    rc, data = _json_run("doctor", "--prefix", gpu_env, CONDA_OVERRIDE_CUDA="12.6")
    checks = _checks(data)
    assert rc == 0, data
    assert data["target"]["lock_hash"] == "ab" * 32
    # the requirement comes from gpu-kernels' own depends (__cuda >=12), not from a stack
    assert "gpu-kernels" in checks["cuda driver"]["required"] and ">=12" in checks["cuda driver"]["required"]
    imp = checks["python imports"]
    assert imp["status"] == "pass" and "pip" in imp["required"]


def test_prefix_fails_on_old_driver(gpu_env: Path) -> None:
    rc, data = _json_run("doctor", "--prefix", gpu_env, CONDA_OVERRIDE_CUDA="11.2")
    checks = _checks(data)
    assert rc == 1
    assert checks["cuda driver"]["status"] == "fail" and "gpu-kernels" in checks["cuda driver"]["required"]


def test_prefix_import_failure_is_reported(gpu_env: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(gpu_env, broken, symlinks=True)
    # an env that was copied, not relocated: python still works but the import check must
    # see the real failure we plant next
    init = next(broken.glob("lib/python3*/site-packages/pip/__init__.py"))
    init.write_text("raise ImportError('planted by the test')\n")
    rc, data = _json_run("doctor", "--prefix", broken, CONDA_OVERRIDE_CUDA="12.6")
    imp = _checks(data)["python imports"]
    assert rc == 1 and imp["status"] == "fail"
    assert "pip" in imp["found"] and "planted by the test" in imp["found"]


def test_missing_prefix_is_a_user_error(tmp_path: Path) -> None:
    assert_user_error(run_cli("doctor", "--prefix", tmp_path / "none"), "not a conda environment")


# --------------------------------------------------------------------------- single checks


def test_space_and_inode_check(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    ok = check_space(tmp_path, 1, 1)
    assert ok.status == "pass"
    too_much = check_space(tmp_path, st.f_bavail * st.f_frsize + (1 << 40), 1)
    assert too_much.status == "fail" and "space" in too_much.fix
    if st.f_files:
        inodes = check_space(tmp_path, 1, st.f_favail + 10**9)
        assert inodes.status == "fail" and "inodes" in inodes.fix


def test_compute_capability_check() -> None:
    node = Node(hostname="n", platform="linux-64", virtual_packages={"__cuda": "13.0"}, overridden=[],
                gpus=[Gpu("NVIDIA H200", "580.159", "9.0", "143771 MiB")], driver="present")
    req = Requirements(target="t", kind="layer")
    req.add("__cuda", ">=12", "x")
    assert check_gpus(node, req).status == "pass"
    req.add("__cuda_arch", ">=10.0", "blackwell-kernels 1.0")
    bad = check_gpus(node, req)
    assert bad.status == "fail" and "compute capability" in bad.fix


def test_run_doctor_api(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.6")
    monkeypatch.setenv("CONDA_OVERRIDE_GLIBC", "2.28")
    report = run_doctor(root=project, layer="app")
    assert report.ok and report.to_json()["node"]["virtual_packages"]["__cuda"] == "12.6"
