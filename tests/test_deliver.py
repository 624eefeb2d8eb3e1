"""Cluster delivery: `install` (verify, unpack, relocate, atomic swap), squashfs, activate scripts,
and modulefiles loaded by the real Lmod (and Environment Modules when present).

Archives are made by `condastack.pack` from envs really installed from the test channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import rattler

from tests.helpers import assert_user_error, run_cli
from condastack.deliver.install import install_archive
from condastack.archive.pack import pack_prefix

LOCK1, LOCK2 = "11" * 32, "22" * 32


def _vp(name: str, version: str) -> rattler.GenericVirtualPackage:
    return rattler.GenericVirtualPackage(rattler.PackageName(name), rattler.Version(version), rattler.BuildString("0"))


def _build_env(channel: Path, prefix: Path, pkgs: Path, specs: list[str], lock_hash: str) -> Path:
    recs = asyncio.run(rattler.solve([channel.as_uri()], specs, platforms=["linux-64", "noarch"],
                                     virtual_packages=[_vp("__glibc", "2.28"), _vp("__cuda", "12.6")]))
    asyncio.run(rattler.install(recs, str(prefix), cache_dir=str(pkgs)))
    (prefix / "conda-meta" / "condastack.info").write_text(json.dumps(
        {"layer": "app", "stack": "verl", "platform": "linux-64", "lock_hash": lock_hash,
         "lockfile": "lock/app.conda-lock.yml", "created_by": "condastack tests"}))
    # the env's own activation: a variable (conda env config vars) and a package-style activate.d script
    (prefix / "conda-meta" / "state").write_text(json.dumps({"env_vars": {"HELLO_MODE": "loud"}}))
    for kind, body in (("activate.d", 'export HELLO_HOME="$CONDA_PREFIX/share/hello"\n'),
                       ("deactivate.d", "unset HELLO_HOME\n")):
        d = prefix / "etc" / "conda" / kind
        d.mkdir(parents=True, exist_ok=True)
        (d / "hello.sh").write_text(body)
    return prefix


@pytest.fixture(scope="module")
def archives(channel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v1 (libfoo 1, gpu-kernels built for CUDA 12) and a newer v2 (libfoo 2 + noarch-data) as tar.zst;
    v1 also as squashfs."""
    base = tmp_path_factory.mktemp("deliver")
    pkgs = base / "pkgs"
    v1 = _build_env(channel, base / "build" / "v1", pkgs, ["python", "hello", "libfoo 1.*", "gpu-kernels"], LOCK1)
    v2 = _build_env(channel, base / "build" / "v2", pkgs, ["python", "hello", "libfoo 2.*", "noarch-data"], LOCK2)
    out = base / "dist"
    sq_prefix = base / "sq" / "envs" / "verl" / "app"
    return {
        "v1": pack_prefix(v1, out / "app-v1.tar.zst").output,
        "v2": pack_prefix(v2, out / "app-v2.tar.zst").output,
        "sq": pack_prefix(v1, out / "app-v1.squashfs", fmt="squashfs", dest_prefix=str(sq_prefix)).output,
        "sq_prefix": sq_prefix,
    }


def _copy_archive(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".sha256", ".manifest.json"):
        shutil.copy2(src.with_name(src.name + suffix), folder / (src.name + suffix))
    return folder / src.name


def _lock_of(prefix: Path) -> str:
    return json.loads((prefix / "conda-meta" / "condastack.info").read_text())["lock_hash"]


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --------------------------------------------------------------------------- install and update


def test_install_then_newer_archive_swaps_atomically(archives: dict, tmp_path: Path) -> None:
    prefix = tmp_path / "shared" / "envs" / "verl" / "app"
    res = run_cli("install", archives["v1"], "--prefix", prefix)
    assert res.returncode == 0, res.output
    hello = subprocess.run([prefix / "bin" / "hello"], capture_output=True, text=True, check=True).stdout
    assert f"prefix={prefix}\n" in hello and f"conf:etc_prefix={prefix}\n" in hello  # relocated to the prefix
    assert _lock_of(prefix) == LOCK1 and (prefix / "activate.sh").is_file() and (prefix / "deactivate.sh").is_file()
    assert list(prefix.glob("conda-meta/libfoo-1.0-*.json"))
    old_inode = prefix.stat().st_ino

    # A job started from the old install: its python runs from the old tree and holds a file open.
    job = subprocess.Popen(
        [str(prefix / "bin" / "python"), "-c",
         "import sys; f = open(sys.prefix + '/conda-meta/condastack.info'); print('ready', flush=True); "
         "sys.stdin.readline(); import json, email.message; print(json.load(f)['lock_hash'], flush=True)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "ready"

    # While the update runs, the prefix path must never be missing (one renameat2 exchange).
    gaps: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not (prefix / "bin" / "hello").exists():
                gaps.append("missing")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = install_archive(archives["v2"], prefix)
    finally:
        stop.set()
        watcher.join()
    assert result.replaced and not gaps

    out, err = job.communicate("go\n", timeout=60)
    assert job.returncode == 0, err
    assert out.strip() == LOCK1  # the running job still reads the old files it holds

    assert _lock_of(prefix) == LOCK2  # while the path now has the new content
    assert prefix.stat().st_ino != old_inode
    assert list(prefix.glob("conda-meta/libfoo-2.0-*.json")) and not list(prefix.glob("conda-meta/libfoo-1.0-*"))
    assert (prefix / "share" / "noarch-data" / "where.txt").is_file()
    hello = subprocess.run([prefix / "bin" / "hello"], capture_output=True, text=True, check=True).stdout
    assert f"prefix={prefix}\n" in hello
    record = json.loads((prefix / "conda-meta" / "condastack.install").read_text())
    assert record["sha256"] == result.sha256 and record["lock_hash"] == LOCK2
    # no staging folder or old tree is left beside the prefix
    assert _listing(prefix.parent) == [".app.condastack-install.lock", "app"]


def test_tampered_archive_is_refused_before_anything_is_written(archives: dict, tmp_path: Path) -> None:
    bad = _copy_archive(archives["v1"], tmp_path / "dl")
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    bad.write_bytes(bytes(data))
    fresh = tmp_path / "new-fs" / "envs" / "app"
    res = run_cli("install", bad, "--prefix", fresh)
    assert_user_error(res, "sha256 mismatch", "nothing was installed")
    assert not (tmp_path / "new-fs").exists()  # not even the parent folder was created

    # over an existing install: the old env stays exactly as it was
    prefix = tmp_path / "envs" / "app"
    install_archive(archives["v2"], prefix)
    before = _listing(prefix.parent), _lock_of(prefix), prefix.stat().st_ino
    assert_user_error(run_cli("install", bad, "--prefix", prefix), "sha256 mismatch")
    assert (_listing(prefix.parent), _lock_of(prefix), prefix.stat().st_ino) == before


def test_sidecar_problems_are_refused(archives: dict, tmp_path: Path) -> None:
    a = _copy_archive(archives["v1"], tmp_path / "a")
    a.with_name(a.name + ".sha256").unlink()
    assert_user_error(run_cli("install", a, "--prefix", tmp_path / "p"), ".sha256 is missing")

    b = _copy_archive(archives["v1"], tmp_path / "b")
    man = b.with_name(b.name + ".manifest.json")
    m = json.loads(man.read_text())
    m["sha256"] = "0" * 64
    man.write_text(json.dumps(m))
    assert_user_error(run_cli("install", b, "--prefix", tmp_path / "p"), "disagree")
    assert not (tmp_path / "p").exists()


def test_result_is_checked_against_the_manifest(archives: dict, tmp_path: Path) -> None:
    """The sha256 covers the archive; the manifest's file count is checked after unpacking."""
    c = _copy_archive(archives["v1"], tmp_path / "c")
    man = c.with_name(c.name + ".manifest.json")
    m = json.loads(man.read_text())
    m["file_count"] += 1
    man.write_text(json.dumps(m))
    prefix = tmp_path / "envs" / "app"
    assert_user_error(run_cli("install", c, "--prefix", prefix), "manifest lists", "Nothing was installed")
    assert _listing(prefix.parent) == [".app.condastack-install.lock"]  # no prefix, no staging left


def test_refuses_to_replace_a_folder_that_is_not_an_env(archives: dict, tmp_path: Path) -> None:
    prefix = tmp_path / "home"
    prefix.mkdir()
    (prefix / "thesis.tex").write_text("precious")
    assert_user_error(run_cli("install", archives["v1"], "--prefix", prefix), "is not a conda env")
    assert (prefix / "thesis.tex").read_text() == "precious"


def test_activate_and_deactivate_scripts(archives: dict, tmp_path: Path) -> None:
    prefix = tmp_path / "envs" / "app"
    install_archive(archives["v1"], prefix)
    script = f"""
    set -e
    export HELLO_MODE=quiet
    before="$PATH"
    . {prefix}/activate.sh
    echo "first=${{PATH%%:*}}"
    echo "which=$(command -v hello)"
    echo "prefix=$CONDA_PREFIX mode=$HELLO_MODE home=$HELLO_HOME"
    . {prefix}/deactivate.sh
    [ "$PATH" = "$before" ] && echo path-restored
    echo "after prefix=${{CONDA_PREFIX-unset}} mode=$HELLO_MODE home=${{HELLO_HOME-unset}}"
    """
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"first={prefix}/bin" in lines
    assert f"which={prefix}/bin/hello" in lines
    assert f"prefix={prefix} mode=loud home={prefix}/share/hello" in lines
    assert "path-restored" in lines
    assert "after prefix=unset mode=quiet home=unset" in lines  # the user's own HELLO_MODE is back


# --------------------------------------------------------------------------- squashfs


def test_squashfs_install_copies_image_and_prints_mount_lines(archives: dict, tmp_path: Path) -> None:
    prefix = archives["sq_prefix"]
    res = run_cli("install", archives["sq"], "--prefix", prefix)
    assert res.returncode == 0, res.output
    image = prefix.with_name("app.squashfs")
    assert image.is_file() and not prefix.exists()  # copied, not unpacked
    assert (image.with_name(image.name + ".sha256").read_text().split()[0] ==
            archives["sq"].with_name(archives["sq"].name + ".sha256").read_text().split()[0])
    out = " ".join(res.stdout.split())
    assert f"squashfuse {image} {prefix}" in out
    assert f"apptainer exec --bind {image}:{prefix}:image-src=/" in out

    wrong = run_cli("install", archives["sq"], "--prefix", tmp_path / "elsewhere")
    assert_user_error(wrong, "can only be mounted there")

    if shutil.which("squashfuse") is None or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("squashfuse or /dev/fuse not available: mount not exercised")
    prefix.mkdir(parents=True)
    mnt = subprocess.run(["squashfuse", str(image), str(prefix)], capture_output=True, text=True)
    if mnt.returncode != 0:
        pytest.skip(f"squashfuse cannot mount here: {mnt.stderr.strip()}")
    try:
        hello = subprocess.run([prefix / "bin" / "hello"], capture_output=True, text=True, check=True).stdout
        assert f"prefix={prefix}\n" in hello
    finally:
        subprocess.run(["fusermount", "-u", str(prefix)], check=False)


# --------------------------------------------------------------------------- modulefiles


def _lmod_available() -> bool:
    return Path("/usr/share/lmod/lmod/init/bash").is_file()


@pytest.fixture()
def installed(archives: dict, tmp_path: Path) -> Path:
    prefix = tmp_path / "shared" / "envs" / "verl" / "app"
    install_archive(archives["v1"], prefix)
    return prefix


def test_module_writes_lua_and_tcl(installed: Path, tmp_path: Path) -> None:
    mods = tmp_path / "modulefiles"
    res = run_cli("module", installed, "--name", "verl/app", "--version", "0.5", "-o", mods)
    assert res.returncode == 0, res.output
    lua = (mods / "verl" / "app" / "0.5.lua").read_text()
    tcl = (mods / "verl" / "app" / "0.5").read_text()
    for text in (lua, tcl):
        assert LOCK1 in text and str(installed) in text and "HELLO_MODE" in text
    assert tcl.startswith("#%Module")
    assert_user_error(run_cli("module", installed, "--name", "verl app", "--version", "0.5", "-o", mods),
                      "not valid")
    assert_user_error(run_cli("module", tmp_path / "nope", "--name", "x", "--version", "1", "-o", mods),
                      "not a conda environment")


@pytest.mark.skipif(not _lmod_available(), reason="Lmod is not installed (apt-get install lmod)")
def test_lmod_load_puts_env_first_and_unload_restores(installed: Path, tmp_path: Path) -> None:
    mods = tmp_path / "modulefiles"
    assert run_cli("module", installed, "--name", "verl/app", "--version", "0.5", "-o", mods).returncode == 0
    script = f"""
    module use {mods}
    before="$PATH"
    module load verl/app/0.5 || exit 3
    echo "first=${{PATH%%:*}}"
    echo "which=$(command -v hello)"
    echo "prefix=$CONDA_PREFIX mode=$HELLO_MODE home=$HELLO_HOME"
    module whatis verl/app/0.5 2>&1 | tr -s ' ' | sed 's/^/whatis:/'
    module help verl/app/0.5 2>&1 | sed 's/^/help:/'
    module unload verl/app/0.5
    [ "$PATH" = "$before" ] && echo path-restored
    echo "after prefix=${{CONDA_PREFIX-unset}} mode=${{HELLO_MODE-unset}} home=${{HELLO_HOME-unset}}"
    """
    env = {"HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin", "USER": "test", "TERM": "dumb"}
    out = subprocess.run(["bash", "-lc", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert f"first={installed}/bin" in lines, out.stdout + out.stderr
    assert f"which={installed}/bin/hello" in lines
    assert f"prefix={installed} mode=loud home={installed}/share/hello" in lines  # source_sh ran activate.d
    assert any(line.startswith("whatis:") and LOCK1 in line for line in lines), out.stdout
    assert any(line.startswith("help:") and LOCK1 in line for line in lines), out.stdout
    assert "path-restored" in lines
    assert "after prefix=unset mode=unset home=unset" in lines


_TCL_STUBS = """
proc setenv {k v} { puts "setenv $k=$v" }
proc prepend-path {k v} { puts "prepend $k=$v" }
proc module-whatis {s} { puts "whatis $s" }
proc source-sh {shell script} { puts "source-sh $shell $script" }
source [lindex $argv 0]
ModulesHelp
"""


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh not installed")
def test_tcl_modulefile_is_valid_tcl(installed: Path, tmp_path: Path) -> None:
    mods = tmp_path / "modulefiles"
    run_cli("module", installed, "--name", "verl/app", "--version", "0.5", "-o", mods)
    stubs = tmp_path / "stubs.tcl"
    stubs.write_text(_TCL_STUBS)
    out = subprocess.run(["tclsh", str(stubs), str(mods / "verl" / "app" / "0.5")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"prepend PATH={installed}/bin" in out.stdout
    assert f"setenv CONDA_PREFIX={installed}" in out.stdout and "setenv HELLO_MODE=loud" in out.stdout
    assert f"source-sh bash {installed}/etc/conda/activate.d/hello.sh" in out.stdout
    assert LOCK1 in out.stderr  # ModulesHelp names the lock


def _modulecmd_tcl() -> str | None:
    for p in (os.environ.get("CONDASTACK_TEST_MODULECMD"), "/usr/share/modules/libexec/modulecmd.tcl",
              "/usr/lib/x86_64-linux-gnu/modulecmd.tcl"):
        if p and Path(p).is_file():
            return p
    return None


@pytest.mark.skipif(_modulecmd_tcl() is None, reason="Environment Modules (modulecmd.tcl) not installed; "
                    "set CONDASTACK_TEST_MODULECMD to an extracted one")
def test_environment_modules_load_and_unload(installed: Path, tmp_path: Path) -> None:
    mods = tmp_path / "modulefiles"
    run_cli("module", installed, "--name", "verl/app", "--version", "0.5", "-o", mods)
    cmd = f"tclsh {_modulecmd_tcl()} bash"
    script = f"""
    before="$PATH"
    eval "$({cmd} use {mods})"
    eval "$({cmd} load verl/app/0.5)"
    echo "first=${{PATH%%:*}} mode=$HELLO_MODE home=$HELLO_HOME"
    eval "$({cmd} unload verl/app/0.5)"
    eval "$({cmd} unuse {mods})"
    [ "$PATH" = "$before" ] && echo path-restored
    echo "after home=${{HELLO_HOME-unset}}"
    """
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    lines = out.stdout.splitlines()
    assert f"first={installed}/bin mode=loud home={installed}/share/hello" in lines, out.stdout + out.stderr
    assert "path-restored" in lines and "after home=unset" in lines


# --------------------------------------------------------------------------- the Slurm example


JOB = Path(__file__).resolve().parent.parent / "examples" / "slurm" / "job.sh"


def _run_job(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    from tests.helpers import CLI

    base = {"HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(tmp_path),
            "SRUN": "", "CONDASTACK": " ".join(CLI)}
    return subprocess.run(["bash", str(JOB), "hello"], capture_output=True, text=True, env={**base, **env},
                          timeout=300)


@pytest.mark.skipif(not _lmod_available(), reason="Lmod is not installed")
def test_slurm_job_runs_doctor_first_with_the_module(installed: Path, tmp_path: Path) -> None:
    mods = tmp_path / "modulefiles"
    run_cli("module", installed, "--name", "verl/app", "--version", "0.5", "-o", mods)
    common = {"MODULE_DIR": str(mods), "MODULE": "verl/app/0.5"}
    # gpu-kernels needs __cuda >=12: with the driver given as 12.6 the job runs the command
    ok = _run_job(tmp_path, **common, CONDA_OVERRIDE_CUDA="12.6")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"prefix={installed}" in ok.stdout and "all checks passed" in ok.stdout
    # with an old driver it stops before the command, saying why
    bad = _run_job(tmp_path, **common, CONDA_OVERRIDE_CUDA="11.8")
    assert bad.returncode == 1 and "prefix=" not in bad.stdout
    assert "cannot run" in bad.stderr and "FAIL" in bad.stdout


# The squashfs mode of job.sh (sbcast + node-local mount) needs a Slurm job: tests/test_slurm.py.
