"""pack / unpack / relocate on real envs installed from the offline test channel."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from tests.helpers import assert_user_error, run_cli

ENV_SPECS = ["hello", "python", "pip"]
META = {"layer": "app", "stack": "demo", "platform": "linux-64", "lock_hash": "0123abcd",
        "lockfile": "environments/conda-lock.yml", "created_by": "test"}


@pytest.fixture(scope="session")
def records(channel: Path) -> list:
    import rattler

    vps = [rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v), rattler.BuildString("0"))
           for n, v in (("__cuda", "12.6"), ("__glibc", "2.28"))]
    return asyncio.run(rattler.solve([channel.as_uri()], ENV_SPECS, platforms=["linux-64", "noarch"],
                                     virtual_packages=vps))


@pytest.fixture(scope="session")
def shared_pkgs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pack-pkgs")


def make_env(prefix: Path, records: list, pkgs: Path, *, meta: bool = True) -> Path:
    """Install hello + python + pip with py-rattler, as `condastack build` does."""
    import rattler

    asyncio.run(rattler.install(records, str(prefix), cache_dir=str(pkgs)))
    if meta:
        (prefix / "conda-meta" / "condastack.info").write_text(json.dumps(META))
    return prefix


@pytest.fixture()
def app_env(tmp_path: Path, records: list, shared_pkgs: Path) -> Path:
    """A fresh env per test (tests change it); project layout <proj>/envs/app."""
    return make_env(tmp_path / "proj" / "envs" / "app", records, shared_pkgs)


@pytest.fixture(scope="session")
def packed(tmp_path_factory: pytest.TempPathFactory, records: list, shared_pkgs: Path) -> Path:
    """`condastack pack app` of an untouched env, with the default output name."""
    proj = tmp_path_factory.mktemp("packed") / "proj"
    make_env(proj / "envs" / "app", records, shared_pkgs)
    res = run_cli("-C", proj, "pack", "app")
    assert res.returncode == 0, res.output
    return proj / "pack" / "app-linux-64.tar.zst"


def run_hello(prefix: Path, expect: Path) -> None:
    """The relocated binary and text placeholders all point at `expect`."""
    out = subprocess.run([str(prefix / "bin" / "hello")], capture_output=True, text=True, check=True).stdout
    assert f"prefix={expect}\n" in out  # binary placeholder in bin/hello
    assert f"lib={expect}\n" in out  # binary placeholder in lib/libhello.so.1
    assert f"conf:etc_prefix={expect}\n" in out  # text placeholder in etc/hello.conf
    assert "placehold" not in out
    script = subprocess.run([str(prefix / "bin" / "hello-script")], capture_output=True, text=True, check=True)
    assert script.stdout == f"script_prefix={expect}\n"
    assert (prefix / "share/hello/data.txt").read_text() == f"data_prefix={expect}\n"


def python_prefix(prefix: Path) -> str:
    return subprocess.run([str(prefix / "bin/python"), "-c", "import sys, sysconfig; "
                           "print(sys.prefix + '|' + sysconfig.get_paths()['include'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


# --------------------------------------------------------------------------- formats


def test_pack_tar_zst_unpack_deeper(packed: Path, tmp_path: Path) -> None:
    assert packed.is_file()
    manifest = json.loads(Path(f"{packed}.manifest.json").read_text())
    digest = Path(f"{packed}.sha256").read_text().split()[0]
    assert digest == manifest["sha256"] == subprocess.run(
        ["sha256sum", str(packed)], capture_output=True, text=True).stdout.split()[0]
    assert manifest["format"] == "tar.zst" and manifest["dest_prefix"] is None
    assert manifest["lock_hash"] == META["lock_hash"] and manifest["layer"] == "app"
    assert {p["name"] for p in manifest["packages"]} == {"hello", "libhello", "python", "pip"}
    assert manifest["file_count"] > 1000 and manifest["bytes_unpacked"] > manifest["size"]
    ph = {r["file"]: r["mode"] for r in manifest["placeholders"]}
    assert ph["bin/hello"] == "binary" and ph["etc/hello.conf"] == "text"
    # conda-pack's layout: placeholders in the archive, its scripts beside them
    with subprocess.Popen(["zstd", "-dc", str(packed)], stdout=subprocess.PIPE) as p:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tf:
            members = {}
            for m in tf:
                members[m.name] = tf.extractfile(m).read() if m.name == "etc/hello.conf" else None
    assert {"bin/conda-unpack", "bin/activate", "bin/deactivate", "conda-meta/condastack.prefixes"} <= members.keys()
    assert b"placehold" in members["etc/hello.conf"]

    dest = tmp_path / "site" / "a" / "much" / "deeper" / "place" / "app"
    res = run_cli("unpack", packed, dest)
    assert res.returncode == 0, res.output
    run_hello(dest, dest)
    assert python_prefix(dest) == f"{dest}|{dest}/include/python3.11"
    assert [p.name for p in dest.parent.iterdir()] == ["app"]  # no temporaries left


def test_pack_tar_gz_plain_tar_and_conda_unpack(app_env: Path, tmp_path: Path) -> None:
    """The conda-pack route: only `tar`, then bin/conda-unpack with the env's own python."""
    out = tmp_path / "out" / "app.tar.gz"
    res = run_cli("pack", "--prefix", app_env, "--format", "tar.gz", "-o", out)
    assert res.returncode == 0, res.output
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    dest = tmp_path / "node" / "scratch" / "envs" / "app"
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(out), "-C", str(dest)], check=True)
    subprocess.run([str(dest / "bin/python"), str(dest / "bin/conda-unpack")], check=True)
    run_hello(dest, dest)
    assert python_prefix(dest).startswith(f"{dest}|")
    # and condastack can move it again afterwards (conda-unpack alone cannot)
    moved = tmp_path / "elsewhere" / "app2"
    moved.parent.mkdir()
    dest.rename(moved)
    res = run_cli("relocate", moved)
    assert res.returncode == 0, res.output
    run_hello(moved, moved)


def test_unpack_move_relocate_again(packed: Path, tmp_path: Path) -> None:
    first = tmp_path / "a" / "app"
    assert run_cli("unpack", packed, first).returncode == 0
    run_hello(first, first)
    for target in (tmp_path / "b" / "a" / "longer" / "path" / "app", tmp_path / "c"):
        target.parent.mkdir(parents=True, exist_ok=True)
        first.rename(target)
        res = run_cli("relocate", target)
        assert res.returncode == 0, res.output
        run_hello(target, target)
        assert python_prefix(target).startswith(f"{target}|")
        first = target
    # relocating in place again is a no-op
    res = run_cli("relocate", first)
    assert res.returncode == 0 and "relocated 0 files" in res.output


def test_dest_prefix_tar_zst_needs_no_unpack(app_env: Path, tmp_path: Path) -> None:
    dest = tmp_path / "shared" / "envs" / "demo" / "app"
    out = tmp_path / "app-fixed.tar.zst"
    res = run_cli("pack", "--prefix", app_env, "--dest-prefix", dest, "-o", out)
    assert res.returncode == 0, res.output
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["dest_prefix"] == str(dest) and manifest["placeholders"] == []
    dest.mkdir(parents=True)
    subprocess.run(f"zstd -dc {out} | tar -xf - -C {dest}", shell=True, check=True)
    assert not (dest / "bin/conda-unpack").exists()
    run_hello(dest, dest)
    assert python_prefix(dest).startswith(f"{dest}|")


def test_squashfs_mounted_at_dest_prefix(app_env: Path, tmp_path: Path) -> None:
    if not shutil.which("squashfuse") or not os.path.exists("/dev/fuse"):
        pytest.skip("squashfuse or /dev/fuse not available")
    mnt = tmp_path / "cvmfs" / "envs" / "app"
    img = tmp_path / "app.squashfs"
    res = run_cli("pack", "--prefix", app_env, "--format", "squashfs", "--dest-prefix", mnt, "-o", img, "-j", "2")
    assert res.returncode == 0, res.output
    assert img.read_bytes()[:4] == b"hsqs"
    assert not any(p.name.startswith(".condastack-tmp") for p in app_env.parent.iterdir())
    mnt.mkdir(parents=True)
    subprocess.run(["squashfuse", str(img), str(mnt)], check=True)
    try:
        run_hello(mnt, mnt)
        assert python_prefix(mnt).startswith(f"{mnt}|")
    finally:
        if subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", str(mnt)], check=False)
    # the files a warm-up reads go first (mksquashfs -sort): another warm-up, another layout of the same files
    again = tmp_path / "again.squashfs"
    res = run_cli("pack", "--prefix", app_env, "--format", "squashfs", "--dest-prefix", mnt, "-o", again, "-j", "2")
    assert res.returncode == 0 and again.read_bytes() == img.read_bytes(), res.output  # reproducible
    json_first = tmp_path / "json.squashfs"
    res = run_cli("pack", "--prefix", app_env, "--format", "squashfs", "--dest-prefix", mnt, "-o", json_first,
                  "-j", "2", "--warmup", "import json, email.mime.text")
    assert res.returncode == 0, res.output
    assert json_first.read_bytes() != img.read_bytes() and json_first.stat().st_size == pytest.approx(
        img.stat().st_size, rel=0.05)
    res = run_cli("pack", "--prefix", app_env, "-o", tmp_path / "x.tar.zst", "--warmup", "pass")
    assert res.returncode == 2 and "--warmup orders a squashfs image" in res.output, res.output
    # squashfs without a dest prefix cannot work: refused
    assert_user_error(run_cli("pack", "--prefix", app_env, "--format", "squashfs", "-o", tmp_path / "x.sqfs"),
                      "--dest-prefix")


# --------------------------------------------------------------------------- crafted archives


def _tar_zst(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    subprocess.run(["zstd", "-q", "-o", str(path)], input=buf.getvalue(), check=True)
    return path


def _m(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes | None = b"x\n") -> tuple:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, 0o644
    return ti, data if kind == tarfile.REGTYPE else None


CRAFTED = {
    "traversal": ([_m("ok.txt"), _m("../outside/evil.txt")], "'..'"),
    "absolute": ([_m("ok.txt"), _m("{outside}/evil.txt")], "absolute"),
    "symlink-escape": ([_m("esc", tarfile.SYMTYPE, "../outside"), _m("esc/evil.txt")], "outside the destination"),
    "symlink-absolute": ([_m("esc", tarfile.SYMTYPE, "{outside}"), _m("esc/evil.txt")], "outside the destination"),
    "symlink-chain": ([_m("x", tarfile.SYMTYPE, "."), _m("y", tarfile.SYMTYPE, "x/.."),
                       _m("y/outside/evil.txt")], "outside the destination"),
    "dir-then-symlink": ([_m("d", tarfile.DIRTYPE), _m("d", tarfile.SYMTYPE, "../outside"),
                          _m("d/evil.txt")], "outside the destination"),
    "hardlink-outside": ([_m("h", tarfile.LNKTYPE, "../outside/secret.txt")], "'..'"),
    "hardlink-absolute": ([_m("h", tarfile.LNKTYPE, "{outside}/secret.txt")], "absolute"),
    "fifo": ([_m("ok.txt"), _m("pipe", tarfile.FIFOTYPE)], "fifo"),
    "device": ([_m("null", tarfile.CHRTYPE)], "device"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_archive_refused(case: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    members, needle = CRAFTED[case]
    fixed = []
    for info, data in members:
        info.name = info.name.replace("{outside}", str(outside))
        info.linkname = info.linkname.replace("{outside}", str(outside))
        fixed.append((info, data))
    arc = _tar_zst(tmp_path / "evil.tar.zst", fixed)
    dest = tmp_path / "dest" / "env"
    res = run_cli("unpack", arc, dest)
    assert_user_error(res, "refused", needle)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert not dest.exists()
    assert list((tmp_path / "dest").iterdir()) == []  # no temporary left beside DEST


def test_internal_links_are_fine_and_limits(tmp_path: Path) -> None:
    arc = _tar_zst(tmp_path / "ok.tar.zst", [
        _m("lib/real.txt"), _m("lib/link", tarfile.SYMTYPE, "real.txt"), _m("lib64", tarfile.SYMTYPE, "lib"),
        _m("lib64/via.txt"), _m("hard", tarfile.LNKTYPE, "lib/real.txt")])
    from condastack.archive.unpack import unpack_archive

    res = unpack_archive(arc, tmp_path / "d1")
    assert (tmp_path / "d1/lib/via.txt").is_file() and (tmp_path / "d1/hard").read_text() == "x\n"
    assert res.members == 5
    assert_user_error(run_cli("unpack", "--max-members", "3", arc, tmp_path / "d2"), "--max-members")
    assert_user_error(run_cli("unpack", "--max-bytes", "3", arc, tmp_path / "d3"), "--max-bytes")
    assert not (tmp_path / "d2").exists() and not (tmp_path / "d3").exists()


# --------------------------------------------------------------------------- bad input and faults


def test_pip_clobber_listed_and_allow_modified(app_env: Path, tmp_path: Path) -> None:
    victim = app_env / "lib/python3.11/site-packages/pip/__init__.py"
    victim.unlink()  # pip replaces files (new inode), it does not write through the hard link
    victim.write_text("__version__ = 'clobbered'\n")
    out = tmp_path / "x.tar.zst"
    res = run_cli("pack", "--prefix", app_env, "-o", out)
    assert_user_error(res, "lib/python3.11/site-packages/pip/__init__.py", "--allow-modified")
    assert not out.exists()
    res = run_cli("pack", "--prefix", app_env, "-o", out, "--allow-modified")
    assert res.returncode == 0, res.output
    got = subprocess.run(f"zstd -dc {out} | tar -xOf - lib/python3.11/site-packages/pip/__init__.py",
                         shell=True, capture_output=True, text=True, check=True).stdout
    assert got == "__version__ = 'clobbered'\n"


def test_editable_install_refused(app_env: Path, tmp_path: Path) -> None:
    dist = app_env / "lib/python3.11/site-packages/mytool-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mytool\nVersion: 0.1\n")
    (dist / "direct_url.json").write_text(json.dumps({"url": "file:///src/mytool", "dir_info": {"editable": True}}))
    (app_env / "lib/python3.11/site-packages/__editable__.mytool-0.1.pth").write_text("/src/mytool\n")
    res = run_cli("pack", "--prefix", app_env, "-o", tmp_path / "x.tar.zst")
    assert_user_error(res, "editable", "mytool")


def test_not_an_env_or_not_ours(tmp_path: Path, records: list, shared_pkgs: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("pack", "--prefix", empty, "-o", tmp_path / "a.tar.zst"), "no conda-meta")
    foreign = make_env(tmp_path / "foreign", records, shared_pkgs, meta=False)
    assert_user_error(run_cli("pack", "--prefix", foreign, "-o", tmp_path / "b.tar.zst"),
                      "not built by condastack", "--allow-foreign")
    res = run_cli("pack", "--prefix", foreign, "-o", tmp_path / "b.tar.zst", "--allow-foreign")
    assert res.returncode == 0, res.output
    assert_user_error(run_cli("-C", tmp_path, "pack", "nosuchlayer"), "nosuchlayer", "condastack build")
    assert_user_error(run_cli("unpack", tmp_path / "missing.tar.zst", tmp_path / "d"), "no such archive")
    assert_user_error(run_cli("relocate", empty), "not a conda environment")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine\n")
    assert_user_error(run_cli("unpack", tmp_path / "b.tar.zst", busy), "not empty")
    assert (busy / "keep.txt").read_text() == "mine\n"
    assert_user_error(run_cli("pack", "--prefix", foreign, "--allow-foreign", "--dest-prefix", "rel/path",
                              "-o", tmp_path / "c.tar.zst"), "absolute")


def _fake_zstd(folder: Path, body: str) -> dict[str, str]:
    folder.mkdir()
    (folder / "zstd").write_text("#!/bin/sh\n" + body)
    (folder / "zstd").chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def test_failed_pack_leaves_no_archive(app_env: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "app.tar.zst"
    env = _fake_zstd(tmp_path / "fakebin", "head -c 100000 >/dev/null; echo 'zstd: disk full' >&2; exit 1\n")
    res = run_cli("pack", "--prefix", app_env, "-o", out, env=env)
    assert_user_error(res, "zstd", "disk full")
    assert list(out.parent.iterdir()) == []


def test_killed_pack_leaves_no_archive(app_env: Path, tmp_path: Path) -> None:
    from tests.helpers import CLI

    out = tmp_path / "out" / "app.tar.zst"
    out.parent.mkdir()
    out.write_bytes(b"previous complete archive")
    env = dict(os.environ, **_fake_zstd(tmp_path / "fakebin", "cat; sleep 60\n"))
    p = subprocess.Popen([*CLI, "pack", "--prefix", str(app_env), "-o", str(out)], env=env,
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(".condastack-tmp-app.tar.zst" in q.name and q.stat().st_size > 0 for q in out.parent.iterdir()):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert out.read_bytes() == b"previous complete archive"
    assert not Path(f"{out}.manifest.json").exists()


def test_dest_too_long_for_binary_placeholder(packed: Path, app_env: Path, tmp_path: Path) -> None:
    long_dest = tmp_path / ("x" * 100) / ("y" * 100) / ("z" * 100) / "app"
    res = run_cli("pack", "--prefix", app_env, "--dest-prefix", long_dest, "-o", tmp_path / "x.tar.zst")
    assert_user_error(res, "at most", "bin/")
    assert not (tmp_path / "x.tar.zst").exists()
    placeholder = json.loads(Path(f"{packed}.manifest.json").read_text())["placeholders"][0]["placeholder"]
    res = run_cli("unpack", packed, long_dest)
    assert_user_error(res, f"at most {len(placeholder)} characters")
    assert "bin/hello" in res.output or "lib/libhello" in res.output
    assert not long_dest.exists()
    # the same check without the manifest beside the archive: found after extraction, DEST still untouched
    bare = tmp_path / "bare.tar.zst"
    shutil.copy(packed, bare)
    assert_user_error(run_cli("unpack", bare, long_dest), f"at most {len(placeholder)} characters")
    assert not long_dest.exists() and [p.name for p in long_dest.parent.iterdir()] == []


def _members(archive: Path) -> dict[str, bytes | str | None]:
    """name -> file bytes, link target, or None for folders, of a .tar.zst."""
    data = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True).stdout
    out: dict[str, bytes | str | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            out[m.name] = tf.extractfile(m).read() if m.isfile() else (m.linkname if m.issym() else None)
    return out


def test_restart_path_writes_the_same_archive_content(app_env: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """When conda-pack's model disagrees with the early stream, the archive is planned once more and
    written again from the start: same members, same content as the streamed one."""
    from condastack.archive import pack

    normal = pack.pack_prefix(app_env, tmp_path / "normal.tar.zst")
    assert "restarted" not in normal.timings
    monkeypatch.setattr(pack, "_confirm_early", lambda env, early: False)
    again = pack.pack_prefix(app_env, tmp_path / "again.tar.zst")
    assert again.timings.get("restarted") == 1.0
    a, b = _members(normal.output), _members(again.output)
    assert a.keys() == b.keys() and len(a) == normal.file_count == again.file_count
    differ = [n for n in a if a[n] != b[n]]
    # every member holds the same bytes (or link target) either way
    assert differ == [], differ[:10]
    assert json.loads(again.manifest.read_text())["bytes_unpacked"] == normal.bytes_unpacked


# --------------------------------------------------------------------------- reproducible archives


def _sha(path: Path) -> str:
    return Path(f"{path}.sha256").read_text().split()[0]


def _timestamp_pycs(prefix: Path) -> dict[str, bool]:
    """Each timestamp-based .pyc under `prefix` that has its source beside it: whether the source
    mtime and size it records still match the .py (what python checks before using it)."""
    out = {}
    for pyc in prefix.glob("lib/python3.*/**/__pycache__/*.pyc"):
        flags, mtime, size = struct.unpack("<III", pyc.read_bytes()[4:16])
        src = pyc.parent.parent / (pyc.name.split(".")[0] + ".py")
        if flags == 0 and src.is_file():
            st = src.stat()
            out[str(pyc.relative_to(prefix))] = (mtime, size) == (int(st.st_mtime) & 0xFFFFFFFF, st.st_size)
    return out


def test_timestamp_pycs_stay_valid_after_unpack(app_env: Path, tmp_path: Path) -> None:
    """Mtimes are clamped, not forced to one value: a package's .py keeps the mtime its timestamp
    .pyc records, so python does not recompile it at every start from the unpacked env."""
    py = app_env / "bin" / "python3"
    json_dir = next(app_env.glob("lib/python3.*/json"))
    # timestamp .pyc files, as conda and micromamba compile noarch packages when linking them
    # (compileall writes new files: the package cache keeps its own; packed with --allow-modified
    # as these replace the package's checked-hash ones)
    subprocess.run([str(py), "-m", "compileall", "-q", "-f", "--invalidation-mode", "timestamp", str(json_dir)],
                   check=True)
    valid = {k for k, ok in _timestamp_pycs(app_env).items() if ok}
    assert any("/json/" in k for k in valid), valid
    tar, sq = tmp_path / "env.tar.zst", tmp_path / "env.squashfs"
    for out, more in ((tar, []), (sq, ["--format", "squashfs", "--dest-prefix", "/opt/app"])):
        res = run_cli("pack", "--prefix", app_env, "-o", out, "--allow-modified", *more)
        assert res.returncode == 0, res.output
    clamp = json.loads(Path(f"{tar}.manifest.json").read_text())["built_from"]["mtime"]
    assert (json_dir / "__init__.py").stat().st_mtime < clamp  # one mtime for all would break these .pyc

    dest = tmp_path / "unpacked"
    assert run_cli("unpack", tar, dest).returncode == 0
    after = _timestamp_pycs(dest)
    assert sorted(k for k in valid if not after.get(k)) == []
    v = subprocess.run([str(dest / "bin" / "python3"), "-v", "-c", "import json"], capture_output=True, text=True)
    assert v.returncode == 0 and "bytecode is stale for 'json'" not in v.stderr
    init_pyc = next((json_dir / "__pycache__").glob("__init__.*.pyc")).relative_to(app_env)
    assert f"{dest / init_pyc} matches" in v.stderr

    tree = tmp_path / "squashfs-tree"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(sq)], check=True, capture_output=True)
    after = _timestamp_pycs(tree)
    assert sorted(k for k in valid if not after.get(k)) == []


def test_archives_are_reproducible(app_env: Path, tmp_path: Path, records: list, shared_pkgs: Path) -> None:
    a, b = tmp_path / "a.tar.zst", tmp_path / "b.tar.zst"
    assert run_cli("pack", "--prefix", app_env, "-o", a, "-j", "1").returncode == 0
    time.sleep(1.1)  # a second later: any pack-time mtime would show
    assert run_cli("pack", "--prefix", app_env, "-o", b, "-j", "2").returncode == 0
    assert _sha(a) == _sha(b) and a.read_bytes() == b.read_bytes()
    manifest = json.loads(Path(f"{a}.manifest.json").read_text())
    built = manifest["built_from"]
    assert built["lock_hash"] == META["lock_hash"] and built["mtime_from"] == "packages" and built["mtime"] > 0
    with subprocess.Popen(["zstd", "-dc", str(a)], stdout=subprocess.PIPE) as p:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tf:
            members = {m.name: (m.mtime, m.uid, m.gid) for m in tf}
    assert {(u, g) for _, u, g in members.values()} == {(0, 0)}
    # clamped: what the install wrote (this record) gets the time; package files keep older mtimes
    assert max(t for t, _, _ in members.values()) == built["mtime"]
    assert members["conda-meta/condastack.info"][0] == built["mtime"]
    assert members["bin/hello"][0] < built["mtime"]

    # two envs of one lock in different folders, packed for the same --dest-prefix
    other = make_env(tmp_path / "elsewhere" / "deeper" / "app", records, shared_pkgs)
    dest = "/shared/envs/app"
    for env, out in ((app_env, a), (other, b)):
        res = run_cli("pack", "--prefix", env, "--dest-prefix", dest, "-o", out, "--format", "tar.gz",
                      env={"SOURCE_DATE_EPOCH": "1700000000"})
        assert res.returncode == 0, res.output
    assert _sha(a) == _sha(b)
    assert json.loads(Path(f"{b}.manifest.json").read_text())["built_from"]["mtime"] == 1700000000


def test_pack_warns_when_the_lock_moved_on(tmp_path: Path, channel_url: str, pkgs_cache: Path) -> None:
    from tests.helpers import write_project

    proj = write_project(tmp_path / "p", """
        name: w
        platforms: [linux-64]
        layers:
          base: {file: base.yml}
        """, {"base.yml": f"""
        channels: ["{channel_url}"]
        dependencies: [libfoo]
        """})
    assert run_cli("-C", proj, "lock").returncode == 0
    assert run_cli("-C", proj, "build", "base").returncode == 0
    res = run_cli("-C", proj, "pack", "base")
    assert res.returncode == 0 and "warning" not in res.output
    layer = proj / "environments" / "base.yml"
    layer.write_text(layer.read_text().replace("[libfoo]", "[libfoo <2]"))
    assert run_cli("-C", proj, "lock").returncode == 0
    res = run_cli("-C", proj, "pack", "base")
    assert res.returncode == 0 and "warning: layer base: the env was built from lock" in res.stderr


# --------------------------------------------------------------------------- verify after a move


def test_verify_passes_after_unpack_install_relocate(base_app_project: Path, pkgs_cache: Path,
                                                     tmp_path: Path) -> None:
    proj = base_app_project
    assert run_cli("-C", proj, "lock", "app").returncode == 0
    assert run_cli("-C", proj, "build", "app").returncode == 0
    res = run_cli("-C", proj, "pack", "app")
    assert res.returncode == 0, res.output
    archive = proj / "pack" / "app-linux-64.tar.zst"

    def verify(prefix: Path) -> dict:
        res = run_cli("verify", "--prefix", prefix, "--json")
        return json.loads(res.stdout)

    unpacked = tmp_path / "u" / "app"
    assert run_cli("unpack", archive, unpacked).returncode == 0
    installed = tmp_path / "shared" / "envs" / "app"
    res = run_cli("install", archive, "--prefix", installed)
    assert res.returncode == 0, res.output
    moved = tmp_path / "moved" / "somewhere" / "app"
    moved.parent.mkdir(parents=True)
    shutil.copytree(unpacked, moved, symlinks=True)
    assert run_cli("relocate", moved).returncode == 0
    for prefix in (unpacked, installed, moved):
        rep = verify(prefix)
        assert rep["ok"] is True, (prefix, rep["problems"])
    # and it still catches an edit of a relocated file
    conf = moved / "etc" / "hello.conf"
    conf.write_text(conf.read_text() + "# edited\n")
    rep = verify(moved)
    assert rep["ok"] is False
    assert [p["path"] for p in rep["problems"] if p["kind"] == "modified-file"] == ["etc/hello.conf"]
