"""condastack build / verify: environments from lockfiles, on the offline test channel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, run_cli, write_pip_project, write_project

MARKER_KEYS = {"layer", "stack", "platform", "lock_hash", "lockfile", "created_by"}


def _lock(proj: Path, *layers: str) -> None:
    res = run_cli("-C", proj, "lock", *layers)
    assert res.returncode == 0, res.output


def _build(proj: Path, *args: str) -> dict:
    res = run_cli("-C", proj, "build", *args, "--json")
    assert res.returncode == 0, res.output
    return json.loads(res.stdout)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".condastack-tmp-")] if folder.is_dir() else []


def _files_mentioning(prefix: Path, needle: bytes) -> list[str]:
    out = []
    for p in prefix.rglob("*"):
        if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
            out.append(str(p.relative_to(prefix)))
    return out


# --------------------------------------------------------------------------- base, then app


def test_build_base_then_app_and_verify(base_app_project: Path, pkgs_cache: Path) -> None:
    proj = base_app_project
    _lock(proj)
    base = _build(proj, "base")
    assert base["action"] == "created" and base["installer"] == "rattler"
    assert sorted(base["fetched"]) == sorted(p.name for p in pkgs_cache.glob("*.conda"))
    app = _build(proj, "app")
    # layer reuse: app fetches only what base did not have ...
    assert [f.split("-1.0.0")[0] for f in app["fetched"]] == ["hello"]
    prefix = proj / "envs" / "app"
    # ... and links the shared files from the cache (same inode in base, app and the cache)
    variant = Path("share/gpu-kernels/variant")
    inodes = {os.stat(p).st_ino for p in (proj / "envs" / "base" / variant, prefix / variant,
                                          next(pkgs_cache.glob("gpu-kernels-*/")) / variant)}
    assert len(inodes) == 1

    # text and binary placeholders point at the final prefix, not the temporary build folder
    out = subprocess.run([str(prefix / "bin" / "hello")], capture_output=True, text=True, check=True).stdout
    assert f"prefix={prefix}\n" in out and f"lib={prefix}\n" in out and f"conf:etc_prefix={prefix}\n" in out
    script = subprocess.run([str(prefix / "bin" / "hello-script")], capture_output=True, text=True).stdout
    assert str(prefix) in script
    assert _files_mentioning(prefix, b".condastack-tmp-") == []
    assert _leftovers(proj / "envs") == []

    marker = json.loads((prefix / "conda-meta" / "condastack.info").read_text())
    assert set(marker) == MARKER_KEYS
    assert marker["layer"] == "app" and marker["stack"] == "demo" and marker["platform"] == "linux-64"
    assert marker["lockfile"] == str(proj / "lock" / "app.conda-lock.yml")
    # conda-meta names the channel URL of the lock, not our cache
    hello_meta = json.loads(next((prefix / "conda-meta").glob("hello-*.json")).read_text())
    assert hello_meta["url"].startswith("file://") and "/linux-64/hello-" in hello_meta["url"]
    assert str(pkgs_cache) not in hello_meta["url"]

    for layer in ("base", "app"):
        res = run_cli("-C", proj, "verify", layer)
        assert res.returncode == 0, res.output
        assert "ok" in res.stdout
    res = run_cli("-C", proj, "verify", "--prefix", prefix, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["ok"] is True


def test_rattler_reads_the_lock_like_conda_lock(base_app_project: Path) -> None:
    """The build reads lockfiles with py-rattler; it must see what conda-lock's parser sees."""
    from conda_lock.lockfile import parse_conda_lock_file

    from condastack.env.locked import read_locked_env

    _lock(base_app_project)
    path = base_app_project / "lock" / "app.conda-lock.yml"
    ours = read_locked_env(path, "linux-64")
    theirs = [p for p in parse_conda_lock_file(path).package if p.platform == "linux-64"]
    assert {(r.name.normalized, str(r.version), str(r.build), r.url, r.sha256.hex()) for r in ours.conda} == {
        (p.name, p.version, p.build, p.url, p.hash.sha256) for p in theirs}
    assert set(ours.platforms) == {"linux-64", "linux-aarch64"}


# --------------------------------------------------------------------------- idempotent, atomic


def test_noop_rebuild_then_lock_change_rebuilds(base_app_project: Path, pkgs_cache: Path) -> None:
    proj = base_app_project
    _lock(proj, "base")
    assert _build(proj, "base")["action"] == "created"
    prefix = proj / "envs" / "base"
    ino = prefix.stat().st_ino
    again = _build(proj, "base")
    assert again["action"] == "unchanged" and again["fetched"] == []
    assert prefix.stat().st_ino == ino  # not rebuilt
    res = run_cli("-C", proj, "build", "base")
    assert res.returncode == 0 and "unchanged" in res.stdout

    # a changed lock rebuilds (libfoo 2.0 -> 1.0) and the result verifies
    layer = proj / "environments" / "base.yml"
    layer.write_text(layer.read_text().replace("- libfoo\n", "- libfoo <2\n"))
    _lock(proj, "base")
    res = _build(proj, "base")
    assert res["action"] == "rebuilt"
    assert [p.name for p in (prefix / "conda-meta").glob("libfoo-*.json")] == ["libfoo-1.0-hb0f4dca_0.json"]
    assert run_cli("-C", proj, "verify", "base").returncode == 0
    # a stale temporary of a killed build is cleaned up by the next build
    stale = proj / "envs" / ".condastack-tmp-base.999999999.x"
    (stale / "bin").mkdir(parents=True)
    assert _build(proj, "base", "--force")["action"] == "rebuilt"
    assert _leftovers(proj / "envs") == []


def test_foreign_prefix_refused_unless_force(base_app_project: Path, pkgs_cache: Path) -> None:
    proj = base_app_project
    _lock(proj, "base")
    prefix = proj / "envs" / "base"
    prefix.mkdir(parents=True)
    (prefix / "precious.txt").write_text("mine\n")
    res = run_cli("-C", proj, "build", "base")
    assert_user_error(res, str(prefix), "not made by condastack", "--force")
    assert (prefix / "precious.txt").read_text() == "mine\n"
    assert _build(proj, "base", "--force")["action"] == "rebuilt"
    assert not (prefix / "precious.txt").exists() and (prefix / "conda-meta" / "condastack.info").is_file()


# --------------------------------------------------------------------------- offline, tampering


def test_offline_build_from_cache_and_missing_list(base_app_project: Path, pkgs_cache: Path,
                                                   tmp_path: Path) -> None:
    proj = base_app_project
    _lock(proj, "base")
    _build(proj, "base")
    other = tmp_path / "elsewhere" / "env"
    res = _build(proj, "base", "--offline", "--prefix", str(other))
    assert res["action"] == "created" and res["fetched"] == []
    assert run_cli("-C", proj, "verify", "base", "--prefix", other).returncode == 0

    empty = tmp_path / "empty-cache"
    res = run_cli("-C", proj, "build", "base", "--offline", "--prefix", tmp_path / "x", env={"CONDASTACK_PKGS": str(empty)})
    assert_user_error(res, "--offline", "3 package(s)", "libhello 1.0.0", "libfoo 2.0", "gpu-kernels 1.0")
    assert not (tmp_path / "x").exists() and _leftovers(tmp_path) == []


def test_tampered_cache_and_lock_mismatch_refused(base_app_project: Path, pkgs_cache: Path, tmp_path: Path) -> None:
    proj = base_app_project
    _lock(proj, "base")
    _build(proj, "base")
    prefix = proj / "envs" / "base"
    before = (prefix / "conda-meta" / "condastack.info").read_bytes()

    # a same-size, in-place change of a cached archive
    archive = next(pkgs_cache.glob("libhello-*.conda"))
    good = archive.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    # offline it cannot be fetched again: refused, naming it
    res = run_cli("-C", proj, "build", "base", "--force", "--offline")
    assert_user_error(res, "libhello", str(archive), "tampered")
    # the existing env is untouched, nothing half-made is left
    assert (prefix / "conda-meta" / "condastack.info").read_bytes() == before
    assert _leftovers(proj / "envs") == []
    assert run_cli("-C", proj, "verify", "base").returncode == 0
    # online it is fetched again from its locked URL and checked, as conda and micromamba do on a hash
    # mismatch (the cache is keyed by file name: two channels can hold one name with other bytes)
    res = run_cli("-C", proj, "build", "base", "--force")
    assert res.returncode == 0, res.output
    assert archive.read_bytes() == good
    assert run_cli("-C", proj, "verify", "base").returncode == 0

    # a lock whose sha256 does not match the channel's file: refused on fetch, naming package and URL
    lock = proj / "lock" / "base.conda-lock.yml"
    text = lock.read_text()
    sha = next(p for p in __import__("yaml").safe_load(text)["package"]
               if p["name"] == "libfoo" and p["platform"] == "linux-64")["hash"]["sha256"]
    lock.write_text(text.replace(sha, "0" * 64))
    res = run_cli("-C", proj, "build", "base", "--prefix", tmp_path / "fresh",
                  env={"CONDASTACK_PKGS": str(tmp_path / "fresh-cache")})
    assert_user_error(res, "libfoo", "libfoo-2.0-hb0f4dca_0.conda", "lock says " + "0" * 64)
    assert not (tmp_path / "fresh").exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- bad input


def test_missing_lock_other_platform_and_installer_choice(base_app_project: Path, tmp_path: Path,
                                                          channel_url: str, pkgs_cache: Path) -> None:
    res = run_cli("-C", base_app_project, "build", "app")
    assert_user_error(res, "condastack lock app")
    assert_user_error(run_cli("-C", base_app_project, "build", "nope"), "unknown layer 'nope'")

    arm = write_project(tmp_path / "arm", """
        name: armonly
        platforms: [linux-aarch64]
        layers:
          base: {file: base.yml}
        """, {"base.yml": f"""
            channels: ["{channel_url}"]
            dependencies: [libhello]
            """})
    _lock(arm)
    res = run_cli("-C", arm, "build", "base")
    assert_user_error(res, "linux-aarch64", "linux-64", "base.conda-lock.yml")
    assert not (arm / "envs" / "base").exists()

    # micromamba is not installed here: auto picks rattler; asking for micromamba says what to do
    if shutil.which("micromamba"):
        pytest.skip("micromamba is installed on this machine")
    _lock(base_app_project, "base")
    assert _build(base_app_project, "base", "--installer", "auto")["installer"] == "rattler"
    res = run_cli("-C", base_app_project, "build", "base", "--installer", "micromamba", "--force")
    assert_user_error(res, "micromamba", "PATH", "--installer rattler")


def test_full_disk_cleans_up(base_app_project: Path, pkgs_cache: Path, tmp_path: Path, channel_url: str) -> None:
    """A real small tmpfs: the python package does not fit; nothing is left behind."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proj = write_project(tmp_path / "py", """
            name: py
            layers:
              py: {file: py.yml}
            """, {"py.yml": f"""
                channels: ["{channel_url}"]
                dependencies: [python 3.11.*, pip]
                """})
        _lock(proj)
        res = run_cli("-C", proj, "build", "py", "--prefix", small / "env")
        assert_user_error(res, "no space left", str(small / "env"), "temporary folder was removed")
        assert [p.name for p in small.iterdir() if not p.name.endswith(".condastack-build.lock")] == []
    finally:
        subprocess.run(["umount", str(small)])


# --------------------------------------------------------------------------- pip layer


def _shadow_wheel(folder: Path, pip_init: bytes) -> Path:
    """A wheel whose payload overwrites conda's pip/__init__.py (what breaks conda-pack later)."""
    out = folder / "shadow-1.0-py3-none-any.whl"
    dist = "shadow-1.0.dist-info"
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("pip/__init__.py", pip_init + b"# shadowed\n")
        z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: shadow\nVersion: 1.0\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", f"pip/__init__.py,,\n{dist}/METADATA,,\n{dist}/WHEEL,,\n{dist}/RECORD,,\n")
    return out


def test_pip_layer_installs_locked_wheels(tmp_path: Path, channel_url: str, pypi_index, pkgs_cache: Path) -> None:  # noqa: ANN001
    proj = write_pip_project(tmp_path / "p", channel_url, pypi_index.url, ["linux-64"])
    _lock(proj)
    res = _build(proj, "app")
    assert res["pip_packages"] == 2
    assert {"tinyapp-1.0-py3-none-any.whl", "tinylib-1.0-py3-none-any.whl"} <= set(res["fetched"])
    prefix = proj / "envs" / "app"
    py = prefix / "bin" / "python"
    out = subprocess.run([str(py), "-c", "import tinylib, tinyapp, sys; print(tinylib.__version__, sys.prefix)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1.0", str(prefix)]
    # pip's files are compiled to checked-hash .pyc: valid whatever mtimes a pack or unpack gives them
    pycs = list(prefix.glob("lib/python3.*/site-packages/tiny*/__pycache__/*.pyc"))
    assert pycs and all(p.read_bytes()[4] == 3 for p in pycs), pycs
    # the console script pip wrote names the final interpreter, not the temporary build folder
    script = prefix / "bin" / "tinyapp"
    assert script.read_text().splitlines()[0] == f"#!{py}"
    assert subprocess.run([str(script)], capture_output=True, text=True, check=True).stdout == "tinyapp 1.0 running\n"
    assert _files_mentioning(prefix, b".condastack-tmp-") == []
    rep = json.loads(run_cli("-C", proj, "verify", "app", "--json").stdout)
    assert rep["ok"] and rep["pip_packages"] == 2, rep

    # offline, from the wheel cache alone, into a second prefix
    res = _build(proj, "app", "--offline", "--prefix", str(tmp_path / "again"))
    assert res["fetched"] == [] and (tmp_path / "again" / "bin" / "tinyapp").exists()

    # drift: pip overwrites a conda file and adds a distribution the lock does not have
    pip_init = next(prefix.glob("lib/python3.*/site-packages/pip/__init__.py"))
    wheel = _shadow_wheel(tmp_path, pip_init.read_bytes())
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    res = run_cli("-C", proj, "verify", "app", "--json")
    assert res.returncode == 1, res.output
    problems = json.loads(res.stdout)["problems"]
    clobbered = [p for p in problems if p["kind"] == "clobbered-file"]
    assert len(clobbered) == 1 and clobbered[0]["path"].endswith("site-packages/pip/__init__.py")
    assert clobbered[0]["owners"] == ["pip", "shadow 1.0"]
    assert any(p["kind"] == "extra-pip" and p["package"] == "shadow" for p in problems)
    text = run_cli("-C", proj, "verify", "app")
    assert text.returncode == 1 and "pip/__init__.py" in text.stdout and "shadow 1.0" in text.stdout


def test_verify_reports_package_drift(base_app_project: Path, pkgs_cache: Path) -> None:
    proj = base_app_project
    _lock(proj)
    _build(proj, "app")
    prefix = proj / "envs" / "app"
    meta = prefix / "conda-meta"
    # a missing package, an extra one, a wrong build and a modified binary
    next(meta.glob("libfoo-*.json")).unlink()
    extra = json.loads(next(meta.glob("hello-*.json")).read_text())
    extra.update(name="stowaway", version="9", build="x_0", paths_data={"paths": []})
    (meta / "stowaway-9-x_0.json").write_text(json.dumps(extra))
    gk = next(meta.glob("gpu-kernels-*.json"))
    gk.write_text(gk.read_text().replace('"build": "cuda12_1"', '"build": "cpu_0"'))
    (prefix / "bin" / "hello").write_bytes((prefix / "bin" / "hello").read_bytes() + b"\0")
    res = run_cli("-C", proj, "verify", "app", "--json")
    assert res.returncode == 1, res.output
    kinds = {(p["kind"], p["package"]) for p in json.loads(res.stdout)["problems"]}
    assert kinds == {("missing-package", "libfoo"), ("extra-package", "stowaway"), ("wrong-build", "gpu-kernels"),
                     ("modified-file", "hello")}
    # the changed env is not "intact" any more: build repairs it
    assert _build(proj, "app")["action"] == "rebuilt"
    assert run_cli("-C", proj, "verify", "app").returncode == 0


def test_pkgs_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from condastack.env.build import pkgs_dir

    monkeypatch.delenv("CONDASTACK_PKGS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert pkgs_dir() == Path("/somewhere/condastack/pkgs")
    monkeypatch.setenv("CONDASTACK_PKGS", "/x/pkgs")
    assert pkgs_dir() == Path("/x/pkgs")
    assert sys.modules["condastack.env.build"].MARKER == Path("conda-meta/condastack.info")


def test_stale_lock_refused_and_frozen_builds(base_app_project: Path, pkgs_cache: Path) -> None:
    proj = base_app_project
    _lock(proj, "base")
    layer = proj / "environments" / "base.yml"
    layer.write_text(layer.read_text().replace("- libfoo\n", "- libfoo <2\n"))
    res = run_cli("-C", proj, "build", "base")
    assert_user_error(res, "layer base", "condastack lock base", "--frozen")
    assert not (proj / "envs" / "base").exists()
    # --frozen builds what the lock says (libfoo 2.0), not the new spec
    assert _build(proj, "base", "--frozen")["action"] == "created"
    assert [p.name for p in (proj / "envs" / "base" / "conda-meta").glob("libfoo-*.json")] == \
        ["libfoo-2.0-hb0f4dca_0.json"]
    _lock(proj, "base")
    assert _build(proj, "base")["action"] == "rebuilt"


def test_edited_cache_file_is_extracted_again(base_app_project: Path, pkgs_cache: Path) -> None:
    proj = base_app_project
    _lock(proj)
    _build(proj, "base")
    variant = Path("share/gpu-kernels/variant")
    cached = next(pkgs_cache.glob("gpu-kernels-*/")) / variant
    original = cached.read_bytes()
    edited = proj / "envs" / "base" / variant
    assert os.stat(edited).st_ino == os.stat(cached).st_ino  # a hard link: an in-place edit reaches the cache
    with open(edited, "ab") as f:
        f.write(b"edited in place\n")
    assert cached.read_bytes() != original
    _build(proj, "app")
    app_file = proj / "envs" / "app" / variant
    assert app_file.read_bytes() == original  # linked from a fresh extraction, not the edited file
    assert cached.read_bytes() == original and os.stat(app_file).st_ino == os.stat(cached).st_ino
    assert run_cli("-C", proj, "verify", "app").returncode == 0
    # an untouched cache is linked from again (no new extraction: same inode as before)
    ino = os.stat(cached).st_ino
    _build(proj, "app", "--force")
    assert os.stat(app_file).st_ino == ino
