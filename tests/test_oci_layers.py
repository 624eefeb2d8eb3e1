"""Layered OCI images (`container LAYER --oci`: one image layer per stack layer) and a real registry.

A three-layer stack on the offline test channel (base: libhello + libfoo; app: + hello; app2: + noarch-data)
is locked, built and packed for /opt/env for real: base whole, app and app2 as deltas over base. base holds
a file its children lack (a removed path, so a whiteout). Images are read back with skopeo and umoci, run
with podman (runc), and pushed to and pulled from Debian's docker-registry (distribution 2.8) on loopback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, run_cli, run_ok, write_project

PREFIX = "/opt/env"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="podman as used here (runc, rootful storage) needs root")


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run scripts/setup.sh")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> dict:
    top = tmp_path_factory.mktemp("ocilayers")
    env = {"CONDASTACK_PKGS": str(top / "pkgs")}
    proj = write_project(top / "proj", """
        name: demo
        platforms: [linux-64]
        virtual-packages:
          linux-64: {__glibc: "2.28"}
        layers:
          base: {file: base.yml}
          app: {file: app.yml, extends: base}
          app2: {file: app2.yml, extends: base}
          app3: {file: app3.yml, extends: app}
        """, {
        "base.yml": f"""
            channels: ["{channel_url}"]
            dependencies: [libhello, libfoo]
            """,
        "app.yml": f"""
            channels: ["{channel_url}"]
            dependencies: [hello]
            """,
        "app2.yml": f"""
            channels: ["{channel_url}"]
            dependencies: [noarch-data]
            """,
        "app3.yml": f"""
            channels: ["{channel_url}"]
            dependencies: [noarch-data]
            """,
    })
    run_ok("-C", proj, "lock", env=env)
    for layer in ("base", "app", "app2", "app3"):
        run_ok("-C", proj, "build", layer, env=env)
    (proj / "envs" / "base" / "lib" / "site-note.txt").write_text("only in base\n")
    for args in (["base"], ["app", "--over", "base"], ["app2", "--over", "base"], ["app3", "--over", "base"],
                 ["app", "--format", "tar.gz"]):
        run_ok("-C", proj, "pack", *args, "--dest-prefix", PREFIX, "-j2", env=env)
    return {"proj": proj, "env": env, "top": top, "full": proj / "pack" / "app-linux-64.tar.gz"}


# --------------------------------------------------------------------------- reading an OCI archive


class Image:
    """An OCI archive read back: its manifest, config and blobs (by digest)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with tarfile.open(path) as tf:
            self.files = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}  # type: ignore[union-attr]
        index = json.loads(self.files["index.json"])
        self.manifest_digest = index["manifests"][0]["digest"]
        self.manifest = json.loads(self.blob(self.manifest_digest))
        self.config = json.loads(self.blob(self.manifest["config"]["digest"]))
        self.layers = [lay["digest"] for lay in self.manifest["layers"]]

    def blob(self, digest: str) -> bytes:
        data = self.files["blobs/" + digest.replace(":", "/")]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    def members(self, digest: str) -> list[str]:
        with tarfile.open(fileobj=io.BytesIO(self.blob(digest)), mode="r:gz") as tf:
            return tf.getnames()


def image(stack: dict, layer: str, name: str, *args: object, env: dict[str, str] | None = None) -> tuple[Image, str]:
    out = stack["top"] / name
    stdout = run_ok("-C", stack["proj"], "container", layer, "--oci", out, *args,
                    env={**stack["env"], **(env or {})})
    return Image(out), stdout


# --------------------------------------------------------------------------- layers, digests, whiteouts


def test_children_share_the_base_env_layer(stack: dict) -> None:
    app, out = image(stack, "app", "app.oci.tar", "--oci-base", "scratch")
    app2, _ = image(stack, "app2", "app2.oci.tar", "--oci-base", "scratch")
    assert "layers base + app at /opt/env" in out
    assert len(app.layers) == len(app2.layers) == 2
    # the base env layer: one digest, the same bytes, in both images; the child layers differ
    assert app.layers[0] == app2.layers[0] and app.blob(app.layers[0]) == app2.blob(app2.layers[0])
    assert app.layers[1] != app2.layers[1]
    assert app.config["rootfs"]["diff_ids"][0] == app2.config["rootfs"]["diff_ids"][0]
    assert app.config["config"]["Labels"]["org.condastack.env-layers"] == "base app"
    assert len(app.config["history"]) == 2 and "app-over-base" in app.config["history"][1]["comment"]

    base, child = app.members(app.layers[0]), app.members(app.layers[1])
    assert "opt/env/lib/libhello.so" in base and "opt/env/lib/site-note.txt" in base
    assert "opt/env/bin/hello" in child and not any(n.startswith("opt/env/lib/libhello") for n in child)
    assert "opt/env/lib/.wh.site-note.txt" in child  # the path app lacks is hidden
    child2 = app2.members(app2.layers[1])
    assert "opt/env/share/noarch-data/where.txt" in child2 and "opt/env/bin/hello" not in child2

    again, _ = image(stack, "app", "app-again.oci.tar", "--oci-base", "scratch")
    assert again.manifest_digest == app.manifest_digest  # reproducible, byte for byte


def test_a_grandchild_over_base_shares_base_too(stack: dict) -> None:
    """app3 extends app; packed `--over base` (no delta over app is there), its image shares base's layer."""
    app, _ = image(stack, "app", "app.oci.tar", "--oci-base", "scratch")
    app3, out = image(stack, "app3", "app3.oci.tar", "--oci-base", "scratch")
    assert "layers base + app3" in out and len(app3.layers) == 2 and app3.layers[0] == app.layers[0]
    top = app3.members(app3.layers[1])
    assert "opt/env/bin/hello" in top and "opt/env/share/noarch-data/where.txt" in top


def _unpack(oci: Path, work: Path) -> Path:
    work.mkdir()
    layout, bundle = work / "layout", work / "bundle"
    subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{oci}", f"oci:{layout}:x"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:x", str(bundle)], check=True, capture_output=True)
    return bundle / "rootfs"


def _tree(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for r, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(r) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.stat().st_mode & 0o7777, p.read_bytes())
    return out


def test_layered_image_unpacks_to_the_full_env(stack: dict, tmp_path: Path) -> None:
    """umoci applies the layers (whiteouts included): the layered image holds what the one-layer image of
    app's full archive holds, file by file."""
    _need("skopeo", "umoci")
    layered, _ = image(stack, "app", "l.oci.tar", "--oci-base", "scratch")
    flat, out = image(stack, "app", "f.oci.tar", "--oci-base", "scratch", "--archive", stack["full"])
    assert len(layered.layers) == 2 and len(flat.layers) == 1 and "layers base" not in out
    a = _tree(_unpack(layered.path, tmp_path / "a") / "opt/env")
    b = _tree(_unpack(flat.path, tmp_path / "b") / "opt/env")
    assert "lib/site-note.txt" not in a and "bin/hello" in a and "lib/libhello.so" in a
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_one_layer_for_a_root_layer_or_without_deltas(stack: dict, tmp_path: Path) -> None:
    base, out = image(stack, "base", "base.oci.tar", "--oci-base", "scratch")
    assert len(base.layers) == 1 and "layer base at /opt/env only" in out
    app, _ = image(stack, "app", "app.oci.tar", "--oci-base", "scratch")
    assert base.layers[0] == app.layers[0]  # the base image's layer is app's lower layer
    # no delta packed for the prefix: app's full archive as one layer, and the output says how to get more
    proj = tmp_path / "proj"
    shutil.copytree(stack["proj"], proj, symlinks=True, ignore=shutil.ignore_patterns("*-over-*"))
    res = run_cli("-C", proj, "container", "app", "--oci", tmp_path / "one.tar", "--oci-base", "scratch",
                  env=stack["env"])
    assert res.returncode == 0, res.output
    assert "as one env layer" in res.stdout and "condastack pack app --over base --dest-prefix /opt/env" in res.stdout
    assert len(Image(tmp_path / "one.tar").layers) == 1


def test_broken_delta_chain_is_refused(stack: dict, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(stack["proj"], proj, symlinks=True)
    oci = tmp_path / "x.tar"
    base = proj / "pack" / "base-linux-64.tar.zst"
    sha = Path(f"{base}.sha256")
    sha.write_text("0" * 64 + f"  {base.name}\n")  # another base archive than the one app was packed over
    res = run_cli("-C", proj, "container", "app", "--oci", oci, "--oci-base", "scratch", env=stack["env"])
    assert_user_error(res, "layer 'app'", "is not the 'base' archive", "condastack pack app --over base")
    base.unlink()
    res = run_cli("-C", proj, "container", "app", "--oci", oci, "--oci-base", "scratch", env=stack["env"])
    assert_user_error(res, "a delta over 'base'", "not in", "condastack pack base --dest-prefix /opt/env")
    assert not oci.exists()
    # a delta cannot be ADDed by a Dockerfile on its own
    delta = proj / "pack" / "app-over-base-linux-64.tar.zst"
    res = run_cli("-C", proj, "container", "app", "--archive", delta, env=stack["env"])
    assert_user_error(res, "serves --oci only", "condastack pack app --format tar.gz --dest-prefix /opt/env")


# --------------------------------------------------------------------------- podman and a real registry


def _podman_env(tmp: Path) -> dict[str, str]:
    conf = tmp / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    return dict(os.environ, CONTAINERS_CONF=str(conf))


@pytest.fixture(scope="module")
def debian_images(stack: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    """app and app2 on the default OCI base (debootstrap Debian, seeded from the test cache)."""
    from tests.test_container import _debootstrap_tarball

    cache = tmp_path_factory.mktemp("cscache")
    dest = cache / "rootfs" / "debian-bookworm-amd64-minbase.tar.zst"
    dest.parent.mkdir(parents=True)
    os.link(_debootstrap_tarball(), dest)
    env = {"CONDASTACK_CACHE": str(cache)}
    app, out = image(stack, "app", "app-deb.oci.tar", env=env)
    assert "Debian bookworm" in out and "layers base + app" in out
    return {"app": app, "app2": image(stack, "app2", "app2-deb.oci.tar", env=env)[0]}


def _podman_run(env: dict[str, str], ref: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "run", "--rm", "--network=none", "--runtime", "runc", ref, *argv],
                          env=env, capture_output=True, text=True)


def _check_runs(env: dict[str, str], refs: dict[str, str]) -> None:
    out = _podman_run(env, refs["app"], "hello")
    assert out.returncode == 0 and f"prefix={PREFIX}\n" in out.stdout and f"lib={PREFIX}\n" in out.stdout, out
    out = _podman_run(env, refs["app"], "/bin/sh", "-c", f"test ! -e {PREFIX}/lib/site-note.txt && id -u")
    assert out.returncode == 0 and out.stdout.strip() == "1000", out  # whiteout applied; not root
    out = _podman_run(env, refs["app2"], "/bin/sh", "-c",
                      f"cat {PREFIX}/share/noarch-data/where.txt; test ! -e {PREFIX}/bin/hello")
    assert out.returncode == 0 and out.stdout == f"noarch_prefix={PREFIX}\n", out


@needs_root
def test_layered_images_run_under_podman(debian_images: dict[str, Image], tmp_path: Path) -> None:
    _need("podman", "runc", "skopeo")
    app, app2 = debian_images["app"], debian_images["app2"]
    assert len(app.layers) == len(app2.layers) == 3  # Debian, base env, the child's delta
    assert app.layers[:2] == app2.layers[:2] and app.layers[2] != app2.layers[2]
    env = _podman_env(tmp_path)
    refs = {k: f"localhost/condastack-test-{k}:{os.getpid()}" for k in debian_images}
    try:
        for k, img in debian_images.items():
            subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{img.path}", f"containers-storage:{refs[k]}"],
                           env=env, check=True, capture_output=True)
        _check_runs(env, refs)
    finally:
        subprocess.run(["podman", "rmi", "-f", *refs.values()], env=env, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Debian's docker-registry on 127.0.0.1 with its storage in tmp: (host:port, storage folder)."""
    _need("docker-registry")
    store, port = tmp_path / "registry", _free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {store}}}\n"
                   f"http:\n  addr: 127.0.0.1:{port}\n")
    log = open(tmp_path / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"docker-registry did not answer: {(tmp_path / 'registry.log').read_text()[-500:]}")
        yield f"127.0.0.1:{port}", store
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def registry_blobs(store: Path) -> dict[str, int]:
    """The registry's stored blobs (layers, configs and manifests): digest -> bytes."""
    root = store / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {"sha256:" + p.parent.name: p.stat().st_size for p in root.glob("*/*/data")} if root.is_dir() else {}


def push(img: Image, dest: str, env: dict[str, str]) -> set[str]:
    """skopeo copy to the registry; the digests of the blobs it skipped as already there."""
    p = subprocess.run(["skopeo", "--debug", "copy", "--dest-tls-verify=false", f"oci-archive:{img.path}",
                        f"docker://{dest}"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return {w for line in p.stderr.splitlines() if "Skipping blob" in line
            for w in line.replace('"', " ").split() if w.startswith("sha256:")}


@needs_root
def test_second_push_uploads_only_the_child_layer(debian_images: dict[str, Image], registry: tuple[str, Path],
                                                  tmp_path: Path) -> None:
    _need("skopeo", "podman", "runc")
    host, store = registry
    env = _podman_env(tmp_path)
    app, app2 = debian_images["app"], debian_images["app2"]
    assert push(app, f"{host}/app:1", env) == set()
    after_app = registry_blobs(store)
    assert set(app.layers) | {app.manifest["config"]["digest"], app.manifest_digest} <= after_app.keys()

    skipped = push(app2, f"{host}/app2:1", env)
    after_app2 = registry_blobs(store)
    assert skipped == set(app2.layers[:2])  # Debian and the base env: already there
    new = after_app2.keys() - after_app.keys()
    assert new == {app2.layers[2], app2.manifest["config"]["digest"], app2.manifest_digest}
    grown = sum(after_app2[d] for d in new)
    assert grown == len(app2.blob(app2.layers[2])) + len(app2.blob(app2.manifest["config"]["digest"])) + len(
        app2.blob(app2.manifest_digest))
    assert grown * 10 < sum(after_app.values())

    refs = {"app": f"{host}/app:1", "app2": f"{host}/app2:1"}
    try:
        for ref in refs.values():
            p = subprocess.run(["podman", "pull", "-q", "--tls-verify=false", ref], env=env, capture_output=True,
                               text=True)
            assert p.returncode == 0, p.stderr
        _check_runs(env, refs)
    finally:
        subprocess.run(["podman", "rmi", "-f", *refs.values()], env=env, capture_output=True)
