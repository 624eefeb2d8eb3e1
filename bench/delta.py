"""What shipping a child layer as a delta over its parent saves: archive bytes, the bytes written and
inodes created by a linked install (`install DELTA --base B`) against a full install of the child, and
the bytes a registry receives for app's OCI image once an image holding base is there.

    python bench/delta.py              the demo stack (examples/demo: base = python + libhello + libfoo +
                                       gpu-kernels, app = + hello + noarch-data) on the offline test channel
    python bench/delta.py --realistic  the realistic bench env (bench/realistic.py, >= 1 GB) split into base + app

Everything runs through the CLI as a user would (lock, build base and app, pack base, app and
`app --over base`, install base, then app fully and as a delta). "Written" counts the bytes of the
regular files whose inode the install created and "inodes" every file, link and folder it
created: a hard link into base creates neither. "Pushed" is the growth of a real registry's storage
(Debian's docker-registry on 127.0.0.1, pushed to with skopeo) when app's image is pushed after base's
image (`container base --oci`, which holds what a sibling child's image shares with app): the layered
image (`container app --oci`, one image layer per stack layer) against the one-layer image of app's
full archive. Images are `--oci-base scratch`: an OS base layer would be shared by both alike. One run;
sizes do not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLI = [sys.executable, str(REPO / "cli.py")]


def cli(*args: object, env: dict[str, str]) -> str:
    p = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env={**os.environ, **env})
    if p.returncode != 0:
        raise SystemExit(f"condastack {' '.join(map(str, args))} failed:\n{p.stdout}{p.stderr}")
    return p.stdout


def demo_project(root: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.channel.testchannel import build_test_channel, default_cache_dir

    shutil.copytree(REPO / "examples" / "demo" / "environments", root / "environments")
    (root / "environments" / "channel").symlink_to(build_test_channel(default_cache_dir()))
    return root


def realistic_project(root: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from realistic import realistic_app_specs, realistic_base_specs, realistic_channel

    env = root / "environments"
    env.mkdir(parents=True)
    (env / "stack.yml").write_text(textwrap.dedent("""
        name: realistic
        platforms: [linux-64]
        layers:
          base: {file: base.yml}
          app: {file: app.yml, extends: base}
        """))
    for name, specs in (("base", realistic_base_specs()), ("app", realistic_app_specs())):
        (env / f"{name}.yml").write_text(json.dumps({"channels": [realistic_channel().as_uri()],
                                                     "dependencies": specs}))
    return root


def created(prefix: Path, base: Path) -> tuple[int, int]:
    """(bytes of regular files, inodes) under `prefix` that are not hard links of files under `base`."""
    base_inodes = {os.lstat(os.path.join(r, n)).st_ino for r, _d, fs in os.walk(base) for n in fs}
    nbytes = inodes = 0
    for r, dirs, files in os.walk(prefix):
        inodes += len(dirs)
        for n in files:
            st = os.lstat(os.path.join(r, n))
            if st.st_ino in base_inodes:
                continue
            inodes += 1
            nbytes += st.st_size if not os.path.islink(os.path.join(r, n)) else 0
    return nbytes, inodes


@contextmanager
def registry(work: Path) -> Iterator[tuple[str, Path]]:
    """Debian's docker-registry on a free loopback port, its storage under `work`: (host:port, storage)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = work / "registry"
    cfg = work / "registry.yml"
    cfg.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {store}}}\n"
                   f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", store
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def stored(store: Path) -> int:
    """Bytes of the blobs (layers, configs, manifests) a registry stores."""
    return sum(p.stat().st_size for p in (store / "docker/registry/v2/blobs").rglob("data"))


def push(oci: Path, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci-archive:{oci}", f"docker://{dest}"],
                   check=True, capture_output=True)


def measure_push(proj: Path, work: Path, env: dict[str, str]) -> dict[str, float]:
    """Bytes the registry stores for app's image pushed after base's: layered, then as one env layer."""
    for args in (["base"], ["app"], ["app", "--over", "base"]):  # the container prefix
        cli("-C", proj, "pack", *args, "--dest-prefix", "/opt/env", env=env)
    imgs = {name: work / f"{name}.oci.tar" for name in ("base", "app", "app-flat")}
    cli("-C", proj, "container", "base", "--oci", imgs["base"], "--oci-base", "scratch", env=env)
    cli("-C", proj, "container", "app", "--oci", imgs["app"], "--oci-base", "scratch", env=env)
    cli("-C", proj, "container", "app", "--oci", imgs["app-flat"], "--oci-base", "scratch",
        "--archive", proj / "pack" / "app-linux-64.tar.zst", env=env)
    out: dict[str, float] = {}
    with registry(work) as (host, store):
        for name in ("base", "app", "app-flat"):
            before = stored(store) if (store / "docker").is_dir() else 0
            push(imgs[name], f"{host}/{name}:1")
            out[f"pushed_{name}"] = stored(store) - before
    return out


def measure(proj: Path, work: Path) -> dict[str, float]:
    env = {"CONDASTACK_PKGS": str(work / "pkgs"), "CONDA_OVERRIDE_CUDA": "12.6"}
    cli("-C", proj, "lock", env=env)
    for layer in ("base", "app"):
        cli("-C", proj, "build", layer, env=env)
    for args in (["base"], ["app"], ["app", "--over", "base"]):
        cli("-C", proj, "pack", *args, env=env)
    pack = proj / "pack"
    full, delta = pack / "app-linux-64.tar.zst", pack / "app-over-base-linux-64.tar.zst"
    shared = work / "shared"
    cli("install", pack / "base-linux-64.tar.zst", "--prefix", shared / "base", env=env)
    cli("install", full, "--prefix", shared / "app-full", env=env)
    cli("install", delta, "--prefix", shared / "app-linked", "--base", shared / "base", env=env)
    fb, fi = created(shared / "app-full", shared / "base")
    lb, li = created(shared / "app-linked", shared / "base")
    man = json.loads(Path(f"{delta}.manifest.json").read_text())
    pushed = measure_push(proj, work, env) if shutil.which("docker-registry") and shutil.which("skopeo") else {}
    return {**pushed, "full_archive": full.stat().st_size, "delta_archive": delta.stat().st_size,
            "full_members": json.loads(Path(f"{full}.manifest.json").read_text())["file_count"],
            "delta_members": man["file_count"], "full_written": fb, "full_inodes": fi,
            "linked_written": lb, "linked_inodes": li}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realistic", action="store_true", help="the realistic bench env instead of the demo stack")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="condastack-bench-delta-") as tmp:
        work = Path(tmp)
        proj = (realistic_project if args.realistic else demo_project)(work / "proj")
        r = measure(proj, work)
    name = "realistic" if args.realistic else "demo"
    print(f"| {name} | full app | delta app over base | ratio |\n|---|---|---|---|")
    for label, a, b, unit in (("archive (tar.zst)", "full_archive", "delta_archive", 1e6),
                              ("archive members", "full_members", "delta_members", 1),
                              ("install: bytes written", "full_written", "linked_written", 1e6),
                              ("install: inodes created", "full_inodes", "linked_inodes", 1)):
        fmt = (lambda v: f"{v / 1e6:.2f} MB") if unit != 1 else (lambda v: f"{int(v)}")
        print(f"| {label} | {fmt(r[a])} | {fmt(r[b])} | {r[a] / max(r[b], 1):.0f}x |")
    if "pushed_app" in r:
        print(f"| push app's image after base's (registry growth) | {r['pushed_app-flat'] / 1e6:.2f} MB | "
              f"{r['pushed_app'] / 1e6:.2f} MB | {r['pushed_app-flat'] / max(r['pushed_app'], 1):.0f}x |")
        print(f"\n(base's image, pushed first: {r['pushed_base'] / 1e6:.2f} MB)")
    else:
        print("\n(no docker-registry or skopeo here: push figures skipped; apt-get install docker-registry skopeo)")


if __name__ == "__main__":
    main()
