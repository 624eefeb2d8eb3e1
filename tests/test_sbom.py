"""The CycloneDX SBOM of every env, archive, SquashFS image and OCI image.

Real envs built from the test channel (conda packages), the loopback PyPI index (pip wheels)
and a site channel made by `condastack wrap`; every document is checked against the CycloneDX
schema with cyclonedx-python-lib's own validator, and its components against the lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import rattler
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from condastack.env.locked import read_locked_env
from condastack.env.sbom import env_sbom_text
from tests.helpers import REPO, assert_user_error, run_cli, write_pip_project

SBOM_IN_ENV = "conda-meta/condastack.cdx"


def _valid(text: str) -> dict:
    """The document, after cyclonedx-python-lib's strict schema validator accepted it."""
    doc = json.loads(text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, str(error)[:2000]
    return doc


def _props(doc: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in doc["metadata"].get("properties", [])}


def _sha256(comp: dict) -> str | None:
    return next((h["content"] for h in comp.get("hashes", []) if h["alg"] == "SHA-256"), None)


def _check_against_lock(doc: dict, lockfile: Path, platform: str = "linux-64") -> None:
    """One component per locked conda package and pip wheel, with the lock's sha256; nothing else."""
    locked = read_locked_env(lockfile, platform)
    comps = doc["components"]
    assert len(comps) == len(locked.conda) + len(locked.pip)
    conda = {c["name"]: c for c in comps if c["purl"].startswith("pkg:conda/")}
    for r in locked.conda:
        c = conda[r.name.normalized]
        assert c["version"] == str(r.version)
        assert f"build={r.build}" in c["purl"] and f"subdir={r.subdir}" in c["purl"], c["purl"]
        assert _sha256(c) == r.sha256.hex()
    pip = {c["name"]: c for c in comps if c["purl"].startswith("pkg:pypi/")}
    assert {(n, c["version"], _sha256(c)) for n, c in pip.items()} == {(w.name, w.version, w.sha256)
                                                                         for w in locked.pip}
    assert all(c["purl"] == f"pkg:pypi/{c['name']}@{c['version']}" for c in pip.values())
    props = _props(doc)
    assert props["condastack:lock_hash"] == locked.lock_hash()
    assert props["condastack:platform"] == platform


def test_conda_and_pip_env(tmp_path: Path, channel_url: str, pypi_index, pkgs_cache: Path) -> None:  # noqa: ANN001
    proj = write_pip_project(tmp_path / "p", channel_url, pypi_index.url, ["linux-64"])
    assert run_cli("-C", proj, "lock").returncode == 0
    res = run_cli("-C", proj, "build", "app")
    assert res.returncode == 0, res.output
    env = proj / "envs" / "app"
    in_env = (env / SBOM_IN_ENV).read_text()
    doc = _valid(in_env)
    _check_against_lock(doc, proj / "lock" / "app.conda-lock.yml")
    assert {c["name"] for c in doc["components"] if c["purl"].startswith("pkg:pypi/")} == {"tinyapp", "tinylib"}
    assert _props(doc)["condastack:stack"] == "piptest" and _props(doc)["condastack:layer"] == "app"
    assert str(env) not in in_env  # no path of the build machine

    # the commands print what build wrote, for the layer and for --prefix
    assert run_cli("-C", proj, "sbom", "app").stdout == in_env
    assert run_cli("sbom", "--prefix", env).stdout == in_env

    # pack: the same SBOM inside the archive, and beside it with the archive's own facts
    res = run_cli("-C", proj, "pack", "app")
    assert res.returncode == 0, res.output
    arc = proj / "pack" / "app-linux-64.tar.zst"
    side = _valid(Path(f"{arc}.cdx.json").read_text())
    assert side["components"] == doc["components"]
    sha = Path(f"{arc}.sha256").read_text().split()[0]
    assert _props(side)["condastack:archive_sha256"] == sha and _props(side)["condastack:archive"] == arc.name
    member = subprocess.run(["tar", "-xOf", str(arc), SBOM_IN_ENV], capture_output=True, check=True).stdout
    assert member.decode() == in_env
    out = tmp_path / "arc.cdx.json"
    assert run_cli("sbom", arc, "-o", out).returncode == 0
    assert out.read_text() == Path(f"{arc}.cdx.json").read_text()

    # a sidecar that is not valid CycloneDX is refused, naming it
    broken = json.loads(out.read_text())
    broken["components"][0]["type"] = "gadget"
    Path(f"{arc}.cdx.json").write_text(json.dumps(broken))
    assert_user_error(run_cli("sbom", arc), f"{arc.name}.cdx.json", "not valid CycloneDX 1.6")


def _solve_install(channels: list[Path], specs: list[str], prefix: Path, pkgs: Path) -> list:
    vps = [rattler.GenericVirtualPackage(rattler.PackageName("__glibc"), rattler.Version("2.28"),
                                         rattler.BuildString("0"))]
    recs = asyncio.run(rattler.solve([c.as_uri() for c in channels], specs, platforms=["linux-64", "noarch"],
                                     virtual_packages=vps))
    asyncio.run(rattler.install(recs, str(prefix), cache_dir=str(pkgs)))
    (prefix / "conda-meta" / "condastack.info").write_text(json.dumps(
        {"layer": "tools", "stack": "site", "platform": "linux-64", "lock_hash": "55" * 32}))
    return recs


def test_wrapped_components(tmp_path: Path, channel: Path, pypi_index, pkgs_cache: Path) -> None:  # noqa: ANN001
    """A folder built from a git checkout and a wheel, wrapped into a site channel: the SBOM names what
    each was made from (commit and tree hash; the wheel's purl and sha256) and the stated license."""
    site = tmp_path / "site"
    tool = tmp_path / "build" / "mytool"
    (tool / "bin").mkdir(parents=True)
    (tool / "bin" / "mytool").write_text("#!/bin/sh\necho mytool\n")
    (tool / "bin" / "mytool").chmod(0o755)
    commit = "a84a248" + "0" * 33
    res = run_cli("wrap", tool, "--name", "mytool", "--version", "0.3", "--channel", site, "--source-commit", commit,
                  "--source-url", "https://github.com/example/mytool", "--license", "BSD-3-Clause")
    assert res.returncode == 0, res.output
    wheel = pypi_index.wheels["tinylib-1.0-py3-none-any.whl"]
    res = run_cli("wrap", wheel, "--python", "3.11", "--channel", site, "--no-check")
    assert res.returncode == 0, res.output

    prefix = tmp_path / "env"
    recs = _solve_install([channel, site], ["mytool", "tinylib", "python 3.11.*"], prefix, pkgs_cache)
    text = env_sbom_text(prefix)
    doc = _valid(text)
    assert run_cli("sbom", "--prefix", prefix).stdout == text
    # build's view (the records it linked, not conda-meta read back) makes the same document, also where the
    # prefix cannot answer: a conda dist-info file copied (not a hard link), a dist-info no package lists
    assert env_sbom_text(prefix, linked=recs) == text
    (dist,) = prefix.glob("lib/python3.*/site-packages/tinylib-1.0.dist-info")
    assert (dist / "METADATA").stat().st_nlink > 1  # linked from the cache: the view needs no record for it
    for name in ("METADATA", "RECORD"):
        shutil.copy(dist / name, dist / f"{name}.copy")
        os.replace(dist / f"{name}.copy", dist / name)
    extra = dist.with_name("extra-2.0.dist-info")
    extra.mkdir()
    (extra / "METADATA").write_text("Metadata-Version: 2.1\nName: extra\nVersion: 2.0\n\n")
    again = env_sbom_text(prefix)
    assert {c["purl"] for c in _valid(again)["components"] if c["purl"].startswith("pkg:pypi/")} == \
        {"pkg:pypi/extra@2.0"}
    assert env_sbom_text(prefix, linked=recs) == again
    shutil.rmtree(extra)
    comps = {c["name"]: c for c in doc["components"]}
    assert len(doc["components"]) == len(recs)  # the solve is the lock here
    mytool = comps["mytool"]
    assert mytool["purl"].startswith("pkg:conda/site/mytool@0.3?build=")
    assert mytool["licenses"] == [{"license": {"id": "BSD-3-Clause"}}]
    assert mytool["pedigree"]["commits"] == [{"uid": commit, "url": "https://github.com/example/mytool"}]
    tree = {p["name"]: p["value"] for p in mytool["pedigree"]["ancestors"][0]["properties"]}
    assert len(tree["condastack:source_tree_sha256"]) == 64
    tinylib = comps["tinylib"]
    assert tinylib["purl"].startswith("pkg:conda/site/tinylib@1.0")
    (anc,) = tinylib["pedigree"]["ancestors"]
    assert anc["purl"] == "pkg:pypi/tinylib@1.0"
    assert _sha256(anc) == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert not any("pedigree" in c for n, c in comps.items() if n not in ("mytool", "tinylib"))


def test_demo_stack(tmp_path: Path, channel: Path, pkgs_cache: Path) -> None:
    """The bundled demo stack (examples/demo on the test channel): the layer's SBOM, its SquashFS image
    (sidecar, and inside the image when the sidecar is gone) and its OCI image's annotations."""
    proj = tmp_path / "demo"
    shutil.copytree(REPO / "examples" / "demo" / "environments", proj / "environments", symlinks=True)
    link = proj / "environments" / "channel"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(channel)
    for args in (("lock",), ("build", "app")):
        res = run_cli("-C", proj, *args)
        assert res.returncode == 0, res.output
    in_env = (proj / "envs" / "app" / SBOM_IN_ENV).read_text()
    doc = _valid(in_env)
    _check_against_lock(doc, proj / "lock" / "app.conda-lock.yml")
    assert {"hello", "libhello", "python", "gpu-kernels"} <= {c["name"] for c in doc["components"]}

    img = proj / "pack" / "app.squashfs"
    res = run_cli("-C", proj, "pack", "app", "--format", "squashfs", "--dest-prefix", "/shared/envs/demo/app",
                  "-o", img)
    assert res.returncode == 0, res.output
    side = _valid(Path(f"{img}.cdx.json").read_text())
    assert _props(side)["condastack:archive_format"] == "squashfs"
    assert _props(side)["condastack:dest_prefix"] == "/shared/envs/demo/app"
    Path(f"{img}.cdx.json").unlink()
    if shutil.which("unsquashfs"):
        assert run_cli("sbom", img).stdout == in_env  # read from inside the image

    opt = proj / "pack" / "app-opt.tar.gz"
    res = run_cli("-C", proj, "pack", "app", "--format", "tar.gz", "--dest-prefix", "/opt/env", "-o", opt)
    assert res.returncode == 0, res.output
    oci = tmp_path / "app.oci.tar"
    res = run_cli("-C", proj, "container", "app", "--archive", opt, "--oci", oci, "--oci-base", "scratch",
                  "-o", tmp_path / "Dockerfile", "--apptainer", tmp_path / "app.def")
    assert res.returncode == 0, res.output
    with tarfile.open(oci) as tf:
        index = json.load(tf.extractfile("index.json"))
        manifest = json.load(tf.extractfile("blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
        ann = manifest["annotations"]
        blob = tf.extractfile("blobs/sha256/" + ann["org.condastack.sbom.digest"].split(":")[1]).read()
    assert blob == Path(f"{opt}.cdx.json").read_bytes()
    assert ann["org.condastack.sbom.mediatype"] == "application/vnd.cyclonedx+json"
    assert ann["org.condastack.sbom.path"] == "/opt/env/" + SBOM_IN_ENV
    assert len(index["manifests"]) == 1  # one image: skopeo and podman load need no choice
