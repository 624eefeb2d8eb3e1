"""OSErrors on the user's paths are user errors (exit 1 naming the path), never exit 70.

Read-only file systems and full disks are real: each such command runs in its own mount
namespace (`unshare -m`) over a read-only or tiny tmpfs, so nothing is mounted for the
rest of the machine. Outputs below a regular file and DEST / --prefix symlinks need no
privileges. Each case asserts exit 1, the offending path in the message, the canary
beside the output unchanged and no temporary left.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import CLI, Result, assert_user_error, libhello_project, run_cli

TMP = ".condastack-tmp-"


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    p = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return p.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (root or user namespaces)")


def run_on_mount(folder: Path, opts: str, *args: object, env: dict[str, str] | None = None) -> Result:
    """Run the CLI with a fresh tmpfs (mount options `opts`) over `folder`, in a private mount namespace."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(shlex.quote(str(a)) for a in [*CLI, *args])
    script = f"mount -t tmpfs -o {opts} tmpfs {shlex.quote(str(folder))} && exec {cmd}"
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=full_env,
                       timeout=600)
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("userpaths")
    proj, env = libhello_project(root, channel_url, "up", ("lock", "build", "pack"))
    return {"root": root, "proj": proj, "env": env,
            "archive": next((proj / "pack").glob("app-linux-64.tar.zst"))}


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A folder for outputs with a canary beside it."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("keep\n")
    return tmp_path


def _after(site: Path) -> None:
    assert sorted(p.name for p in (site / "canary").iterdir()) == ["keep.txt"]
    assert (site / "canary" / "keep.txt").read_text() == "keep\n"
    assert not [p for p in site.rglob("*") if TMP in p.name]


def _copy_project(packed: dict[str, Path], site: Path) -> Path:
    dst = site / "proj"
    shutil.copytree(packed["proj"], dst, symlinks=True, ignore=shutil.ignore_patterns("envs", "pack"))
    return dst


# --------------------------------------------------------------------------- read-only and full file systems


@needs_mount
def test_lock_output_read_only(packed: dict[str, Path], site: Path) -> None:
    proj = _copy_project(packed, site)
    shutil.rmtree(proj / "lock")
    res = run_on_mount(proj / "lock", "ro", "-C", proj, "lock", env=packed["env"])
    assert_user_error(res, str(proj / "lock"), "read-only")
    _after(site)


@needs_mount
def test_build_prefix_read_only(packed: dict[str, Path], site: Path) -> None:
    proj = _copy_project(packed, site)
    res = run_on_mount(site / "ro", "ro", "-C", proj, "build", "app", "--prefix", site / "ro" / "env",
                       env=packed["env"])
    assert_user_error(res, str(site / "ro"), "read-only")
    _after(site)


@needs_mount
def test_pack_output_read_only(packed: dict[str, Path], site: Path) -> None:
    res = run_on_mount(site / "ro", "ro", "-C", packed["proj"], "pack", "app", "-o", site / "ro" / "a.tar.zst",
                       env=packed["env"])
    assert_user_error(res, str(site / "ro"), "read-only")
    _after(site)


@needs_mount
def test_unpack_dest_read_only(packed: dict[str, Path], site: Path) -> None:
    res = run_on_mount(site / "ro", "ro", "unpack", packed["archive"], site / "ro" / "dest")
    assert_user_error(res, str(site / "ro"))
    _after(site)


@needs_mount
def test_install_prefix_read_only(packed: dict[str, Path], site: Path) -> None:
    res = run_on_mount(site / "ro", "ro", "install", packed["archive"], "--prefix", site / "ro" / "app")
    assert_user_error(res, str(site / "ro"))
    _after(site)


@needs_mount
def test_unpack_disk_full(packed: dict[str, Path], site: Path) -> None:
    res = run_on_mount(site / "small", "size=64k", "unpack", packed["archive"], site / "small" / "dest")
    assert_user_error(res)
    assert "app-linux-64.tar.zst" in res.output or str(site / "small") in res.output, res.output
    assert "internal error" not in res.output
    _after(site)


@needs_mount
def test_pack_disk_full(packed: dict[str, Path], site: Path) -> None:
    res = run_on_mount(site / "small", "size=4k", "-C", packed["proj"], "pack", "app", "-o",
                       site / "small" / "a.tar.zst", env=packed["env"])
    assert_user_error(res)
    assert str(site / "small") in res.output or "a.tar.zst" in res.output, res.output
    _after(site)


# --------------------------------------------------------------------------- below a regular file, symlinks


def test_lock_output_below_regular_file(packed: dict[str, Path], site: Path) -> None:
    proj = _copy_project(packed, site)
    shutil.rmtree(proj / "lock")
    (proj / "lock").write_text("a file where the lock folder goes\n")
    res = run_cli("-C", proj, "lock", env=packed["env"])
    assert_user_error(res, str(proj / "lock"))
    assert (proj / "lock").read_text() == "a file where the lock folder goes\n"
    _after(site)


def test_build_prefix_below_regular_file(packed: dict[str, Path], site: Path) -> None:
    (site / "afile").write_text("x\n")
    res = run_cli("-C", packed["proj"], "build", "app", "--prefix", site / "afile" / "env", env=packed["env"])
    assert_user_error(res, str(site / "afile"))
    _after(site)


def test_pack_output_below_regular_file(packed: dict[str, Path], site: Path) -> None:
    (site / "afile").write_text("x\n")
    res = run_cli("-C", packed["proj"], "pack", "app", "-o", site / "afile" / "a.tar.zst", env=packed["env"])
    assert_user_error(res, str(site / "afile"))
    _after(site)


def test_install_prefix_below_regular_file(packed: dict[str, Path], site: Path) -> None:
    (site / "afile").write_text("x\n")
    res = run_cli("install", packed["archive"], "--prefix", site / "afile" / "app")
    assert_user_error(res, str(site / "afile"))
    _after(site)


def test_install_prefix_is_symlink(packed: dict[str, Path], site: Path) -> None:
    (site / "real").mkdir()
    (site / "app").symlink_to(site / "real")
    res = run_cli("install", packed["archive"], "--prefix", site / "app")
    assert_user_error(res, str(site / "app"), "symlink")
    assert not any((site / "real").iterdir())
    _after(site)


def test_build_prefix_is_symlink(packed: dict[str, Path], site: Path) -> None:
    (site / "real").mkdir()
    (site / "env").symlink_to(site / "real")
    res = run_cli("-C", packed["proj"], "build", "app", "--prefix", site / "env", env=packed["env"])
    assert_user_error(res, str(site / "env"), "symlink")
    assert not any((site / "real").iterdir())
    _after(site)
