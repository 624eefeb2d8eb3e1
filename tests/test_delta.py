"""Delivery layers: delta archives (`pack LAYER --over PARENT`) and linked installs (`install DELTA --base B`).

A three-layer stack on the offline test channel (base: python, libhello, libfoo, gpu-kernels; app: + hello;
app2: + pip) is locked, built and packed for real; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, run_cli, run_ok, write_project


def stack_project(root: Path, channel_url: str) -> Path:
    return write_project(root, """
        name: demo
        platforms: [linux-64]
        virtual-packages:
          linux-64: {__cuda: "12.6", __glibc: "2.28"}
        layers:
          base: {file: base.yml}
          app: {file: app.yml, extends: base}
          app2: {file: app2.yml, extends: base}
        """, {
        "base.yml": f"""
            channels: ["{channel_url}"]
            dependencies: [python 3.11.*, libhello, libfoo, gpu-kernels]
            """,
        "app.yml": f"""
            channels: ["{channel_url}"]
            dependencies: [hello]
            """,
        "app2.yml": f"""
            channels: ["{channel_url}"]
            dependencies: [pip]
            """,
    })


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> dict:
    """The project locked and built; base has an unmanaged file its children lack (a removed path);
    base, app and app2 packed, and app and app2 as deltas over base."""
    top = tmp_path_factory.mktemp("delta")
    env = {"CONDASTACK_PKGS": str(top / "pkgs")}
    proj = stack_project(top / "proj", channel_url)
    run_ok("-C", proj, "lock", env=env)
    for layer in ("base", "app", "app2"):
        run_ok("-C", proj, "build", layer, env=env)
    (proj / "envs" / "base" / "share" / "site-note.txt").write_text("only in base\n")
    for args in (["base"], ["app"], ["app2"], ["app", "--over", "base"], ["app2", "--over", "base"]):
        run_ok("-C", proj, "pack", *args, "-j2", env=env)
    return {"proj": proj, "env": env, "pack": proj / "pack", "top": top}


def manifest(archive: Path) -> dict:
    return json.loads(Path(f"{archive}.manifest.json").read_text())


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root: (kind, mode, bytes or link target)."""
    out: dict[str, tuple] = {}
    for r, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(r, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                out[rel] = ("file", st.st_mode & 0o7777, Path(p).read_bytes())
    return out


def prefix_free_files(base: Path) -> list[str]:
    """base's regular files that hold no prefix: not in its relocation records, not conda-meta, not written
    by install."""
    records = {r[0] for r in json.loads((base / "conda-meta" / "condastack.prefixes").read_text())["records"]}
    out = []
    for rel, entry in tree(base).items():
        if entry[0] == "file" and rel not in records and not rel.startswith("conda-meta/") \
                and rel not in ("activate.sh", "deactivate.sh"):
            out.append(rel)
    return out


# --------------------------------------------------------------------------- the delta archive


def test_delta_holds_only_what_app_adds(stack: dict) -> None:
    pack = stack["pack"]
    delta, full, base = (pack / f"{n}-linux-64.tar.zst" for n in ("app-over-base", "app", "base"))
    m, mb = manifest(delta), manifest(base)
    assert m["layer"] == "app" and m["parent_layer"] == "base"
    assert m["parent_lock_hash"] == mb["lock_hash"] and m["parent_sha256"] == mb["sha256"]
    assert m["parent_archive"] == base.name and m["removed"] == ["share/site-note.txt"]
    assert {p["name"] for p in m["packages"]} == {"python", "libhello", "libfoo", "gpu-kernels", "hello"}
    names = subprocess.run(f"zstd -dc {delta} | tar -t", shell=True, capture_output=True, text=True,
                           check=True).stdout.split()
    assert "bin/hello" in names and "etc/hello.conf" in names  # hello's own files
    assert not any(n.startswith("lib/python3.11/") for n in names)  # nothing of base's python
    assert "conda-meta/python-3.11.7-h0_cpython.json" in names  # conda-meta goes in whole
    assert m["file_count"] == len(names) < manifest(full)["file_count"] / 50
    assert delta.stat().st_size * 20 < full.stat().st_size
    # reproducible: packed again from the same envs, byte for byte the same delta
    again = stack["top"] / "again" / delta.name
    run_ok("-C", stack["proj"], "pack", "app", "--over", "base", "-o", again, "-j1", env=stack["env"])
    assert again.read_bytes() == delta.read_bytes()


def test_delta_refused_for_a_layer_that_is_not_an_ancestor(stack: dict) -> None:
    env, proj = stack["env"], stack["proj"]
    assert_user_error(run_cli("-C", proj, "pack", "app", "--over", "app2", env=env),
                      "layer 'app' over 'app2'", "not an ancestor", "base -> app")
    assert_user_error(run_cli("-C", proj, "pack", "base", "--over", "app", env=env),
                      "layer 'base' over 'app'", "not an ancestor")
    assert_user_error(run_cli("-C", proj, "pack", "app", "--over", "base", "--format", "tar.gz", env=env),
                      "layer 'app' over 'base'", "condastack pack base --format tar.gz")


def test_delta_refused_when_the_parent_lock_changed(stack: dict, tmp_path: Path) -> None:
    """base is re-locked (libfoo 2 -> 1) after its archive was packed: the delta is refused, naming both."""
    src, proj = stack["proj"], tmp_path / "proj"
    for d in ("environments", "lock", "pack"):
        shutil.copytree(src / d, proj / d)
    (proj / "envs").mkdir()
    for layer in ("base", "app"):  # hard links: nothing here writes to the envs
        subprocess.run(["cp", "-al", src / "envs" / layer, proj / "envs" / layer], check=True)
    layer_file = proj / "environments" / "base.yml"
    layer_file.write_text(layer_file.read_text().replace("libfoo,", "libfoo <2,"))
    run_ok("-C", proj, "lock", "base", env=stack["env"])
    before = {p.name: p.read_bytes() for p in (proj / "pack").iterdir()}
    res = run_cli("-C", proj, "pack", "app", "--over", "base", env=stack["env"])
    assert_user_error(res, "layer 'app' over 'base'", "the lock of 'base' changed", "base-linux-64.tar.zst")
    assert {p.name: p.read_bytes() for p in (proj / "pack").iterdir()} == before  # nothing written


# --------------------------------------------------------------------------- linked installs


def test_linked_install_equals_full_install_and_links_base(stack: dict, tmp_path: Path) -> None:
    env, pack = stack["env"], stack["pack"]
    base, prefix = tmp_path / "shared" / "base", tmp_path / "shared" / "app"
    run_ok("install", pack / "base-linux-64.tar.zst", "--prefix", base, env=env)
    run_ok("install", pack / "app-linux-64.tar.zst", "--prefix", prefix, env=env)
    full = prefix.with_name("app.full")
    prefix.rename(full)  # the full install, kept for comparison; its files name `prefix`
    out = json.loads(run_ok("install", pack / "app-over-base-linux-64.tar.zst", "--prefix", prefix,
                            "--base", base, "--json", env=env))
    assert out["base"] == str(base) and out["linked"] > 1000

    mine, theirs = tree(prefix), tree(full)
    for t in (mine, theirs):
        t.pop("conda-meta/condastack.install")
    assert mine.keys() == theirs.keys()
    assert [k for k in mine if mine[k] != theirs[k]] == []
    assert "share/site-note.txt" in tree(base) and "share/site-note.txt" not in mine  # removed by the delta
    record = json.loads((prefix / "conda-meta" / "condastack.install").read_text())
    assert record["base"] == str(base) and record["parent_sha256"] == manifest(pack / "base-linux-64.tar.zst")["sha256"]

    res = run_cli("verify", "--prefix", prefix, env=env)
    assert res.returncode == 0 and "ok" in res.stdout, res.output
    hello = subprocess.run([prefix / "bin" / "hello"], capture_output=True, text=True, check=True).stdout
    assert f"prefix={prefix}\n" in hello and f"conf:etc_prefix={prefix}\n" in hello
    py = subprocess.run([prefix / "bin" / "python", "-c", "import sys, sysconfig; print(sys.prefix, "
                         "sysconfig.get_paths()['include'])"], capture_output=True, text=True, check=True).stdout
    assert py.split() == [str(prefix), f"{prefix}/include/python3.11"]

    # base's files that hold no prefix are hard links into base: no new inode, no bytes
    free = [r for r in prefix_free_files(base) if r in mine]
    linked = [r for r in free if os.stat(prefix / r).st_ino == os.stat(base / r).st_ino]
    assert len(free) > 1000 and len(linked) >= 0.95 * len(free), (len(linked), len(free))
    # the ones that hold a prefix are copies (base still names itself)
    lib = "lib/libhello.so.1"
    assert os.stat(prefix / lib).st_ino != os.stat(base / lib).st_ino
    assert str(base).encode() in (base / lib).read_bytes() and str(base).encode() not in (prefix / lib).read_bytes()

    # base replaced later by `install` (atomic swap): the app's links stay on the old inodes and keep working
    py_file = "lib/python3.11/os.py"
    ino = os.stat(prefix / py_file).st_ino
    run_ok("install", pack / "base-linux-64.tar.zst", "--prefix", base, env=env)
    assert os.stat(base / py_file).st_ino != ino == os.stat(prefix / py_file).st_ino
    assert run_cli("verify", "--prefix", prefix, env=env).returncode == 0


def test_linked_install_refuses_the_wrong_base(stack: dict, tmp_path: Path) -> None:
    env, pack = stack["env"], stack["pack"]
    delta = pack / "app-over-base-linux-64.tar.zst"
    app2 = tmp_path / "app2"
    run_ok("install", pack / "app2-linux-64.tar.zst", "--prefix", app2, env=env)
    target = tmp_path / "app"
    assert_user_error(run_cli("install", delta, "--prefix", target, "--base", app2, env=env),
                      "layer 'app' over 'base'", f"--base {app2}", "layer 'app2'")
    # base's own lock, but installed from another archive than the one the delta names
    other = tmp_path / "other" / "base-linux-64.tar.zst"
    run_ok("-C", stack["proj"], "pack", "base", "--level", "1", "-o", other, env=env)
    base = tmp_path / "base"
    run_ok("install", other, "--prefix", base, env=env)
    assert_user_error(run_cli("install", delta, "--prefix", target, "--base", base, env=env),
                      "layer 'app' over 'base'", "installed from base-linux-64.tar.zst")
    # a delta alone, and a full archive with --base
    assert_user_error(run_cli("install", delta, "--prefix", target, env=env), "is a delta of layer 'app' over "
                      "'base'", "--base")
    assert_user_error(run_cli("install", pack / "app-linux-64.tar.zst", "--prefix", target, "--base", base, env=env),
                      "not a delta")
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".condastack-tmp-")]
