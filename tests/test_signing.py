"""Signed archives: `pack --sign KEY`, and `install`/`unpack`/`slurm-preamble` refusing what an
allowed signer did not make, unchanged. Real ed25519 keys made by ssh-keygen; real archives of
envs installed from the test channel; everything through the CLI, as a user would run it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import rattler

from tests.helpers import assert_user_error, run_cli

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed (openssh-client)")

SUFFIXES = ("", ".sha256", ".manifest.json", ".cdx.json", ".sig", ".manifest.json.sig")


def _keypair(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@site", "-f", str(key)], check=True)
    return key


def _allowed(folder: Path, *keys: Path) -> Path:
    out = folder / "allowed_signers"
    out.write_text("".join(f'{k.name}@site namespaces="condastack" {k.with_suffix(".pub").read_text()}' for k in keys))
    return out


def _env(channel: Path, prefix: Path, pkgs: Path) -> Path:
    vps = [rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v), rattler.BuildString("0"))
           for n, v in (("__glibc", "2.28"), ("__cuda", "12.6"))]
    recs = asyncio.run(rattler.solve([channel.as_uri()], ["hello", "libfoo 1.*"], platforms=["linux-64", "noarch"],
                                     virtual_packages=vps))
    asyncio.run(rattler.install(recs, str(prefix), cache_dir=str(pkgs)))
    (prefix / "conda-meta" / "condastack.info").write_text(json.dumps(
        {"layer": "app", "stack": "signed", "platform": "linux-64", "lock_hash": "33" * 32,
         "lockfile": "lock/app.conda-lock.yml", "created_by": "condastack tests"}))
    return prefix


@pytest.fixture(scope="module")
def dist(channel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Keys (alice trusted, mallory not), and archives of one env: signed by alice, by mallory, unsigned;
    a SquashFS image signed by alice and an unsigned one."""
    base = tmp_path_factory.mktemp("signing")
    keys = base / "keys"
    keys.mkdir()
    alice, mallory = _keypair(keys, "alice"), _keypair(keys, "mallory")
    env = _env(channel, base / "env", base / "pkgs")
    out = {"alice_key": alice, "mallory_key": mallory, "allowed": _allowed(keys, alice), "base": base}
    for name, key in (("signed", alice), ("mallory", mallory), ("unsigned", None)):
        res = run_cli("pack", "--prefix", env, "-o", base / name / "app.tar.zst", *(["--sign", key] if key else []))
        assert res.returncode == 0, res.output
        out[name] = base / name / "app.tar.zst"
    sq_prefix = base / "mnt" / "app"
    for name, key in (("sq_signed", alice), ("sq_unsigned", None)):
        res = run_cli("pack", "--prefix", env, "-o", base / name / "app.squashfs", "--format", "squashfs",
                      "--dest-prefix", sq_prefix, *(["--sign", key] if key else []))
        assert res.returncode == 0, res.output
        out[name] = base / name / "app.squashfs"
    out["sq_prefix"] = sq_prefix
    return out


def _copy(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in SUFFIXES:
        if src.with_name(src.name + suffix).exists():
            shutil.copy2(src.with_name(src.name + suffix), folder / (src.name + suffix))
    return folder / src.name


def test_pack_sign_writes_verifiable_signatures(dist: dict[str, Path], tmp_path: Path) -> None:
    arc = dist["signed"]
    for suffix in (".sig", ".manifest.json.sig"):
        sig = arc.with_name(arc.name + suffix)
        assert sig.read_text().startswith("-----BEGIN SSH SIGNATURE-----")
    # ssh-keygen itself accepts them: the format is the standard one, not ours
    with open(arc, "rb") as data:
        p = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(dist["allowed"]), "-I", "alice@site", "-n",
                            "condastack", "-s", f"{arc}.sig"], stdin=data, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert not dist["unsigned"].with_name("app.tar.zst.sig").exists()
    res = run_cli("install", _copy(arc, tmp_path / "in"), "--prefix", tmp_path / "envs" / "app",
                  "--allowed-signers", dist["allowed"])
    assert res.returncode == 0, res.output
    assert (tmp_path / "envs" / "app" / "bin" / "hello").exists()
    res = run_cli("unpack", arc, tmp_path / "unpacked", "--allowed-signers", dist["allowed"])
    assert res.returncode == 0, res.output


def test_repack_unsigned_drops_old_signatures(dist: dict[str, Path], tmp_path: Path) -> None:
    arc = _copy(dist["signed"], tmp_path / "d")
    res = run_cli("pack", "--prefix", dist["base"] / "env", "-o", arc)
    assert res.returncode == 0, res.output
    assert not arc.with_name(arc.name + ".sig").exists() and not arc.with_name(arc.name + ".manifest.json.sig").exists()


def _refused(archive: Path, allowed: Path, tmp_path: Path, *needles: str) -> None:
    """install and unpack both refuse, with exit 1 and the cause named; nothing is written."""
    prefix = tmp_path / "envs" / "app"
    assert_user_error(run_cli("install", archive, "--prefix", prefix, "--allowed-signers", allowed), *needles)
    assert not prefix.exists()
    dest = tmp_path / "unpacked"
    assert_user_error(run_cli("unpack", archive, dest, "--allowed-signers", allowed), *needles)
    assert not dest.exists()


def test_unsigned_archive_refused(dist: dict[str, Path], tmp_path: Path) -> None:
    _refused(dist["unsigned"], dist["allowed"], tmp_path, "app.tar.zst is not signed", "no app.tar.zst.sig")


def test_signature_of_unknown_key_refused(dist: dict[str, Path], tmp_path: Path) -> None:
    _refused(dist["mallory"], dist["allowed"], tmp_path, "app.tar.zst.sig was made by a key that is not in",
             str(dist["allowed"]))


def test_archive_edited_after_signing_refused(dist: dict[str, Path], tmp_path: Path) -> None:
    arc = _copy(dist["signed"], tmp_path / "d")
    with open(arc, "r+b") as f:  # one byte flipped in the middle
        f.seek(arc.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    _refused(arc, dist["allowed"], tmp_path, "app.tar.zst was changed after it was signed by alice@site")


def test_manifest_edited_after_signing_refused(dist: dict[str, Path], tmp_path: Path) -> None:
    arc = _copy(dist["signed"], tmp_path / "d")
    man = arc.with_name(arc.name + ".manifest.json")
    data = json.loads(man.read_text())
    data["lock_hash"] = "44" * 32
    man.write_text(json.dumps(data, indent=1) + "\n")
    _refused(arc, dist["allowed"], tmp_path, "app.tar.zst.manifest.json was changed after it was signed")


def test_replaced_sha256_refused(dist: dict[str, Path], tmp_path: Path) -> None:
    """The .sha256 is not signed itself, but a replaced one disagrees with the signed manifest."""
    arc = _copy(dist["signed"], tmp_path / "d")
    arc.with_name(arc.name + ".sha256").write_text(f"{'ab' * 32}  {arc.name}\n")
    _refused(arc, dist["allowed"], tmp_path, "app.tar.zst.sha256 was replaced")


def _site(root: Path, text: str) -> Path:
    (root / ".condastack").mkdir(parents=True, exist_ok=True)
    (root / ".condastack" / "site.toml").write_text(text)
    return root / ".condastack" / "site.toml"


def test_site_policy_install(dist: dict[str, Path], tmp_path: Path) -> None:
    """A site.toml above the prefix requires signatures: no flag needed to be protected, none skips it."""
    root = tmp_path / "shared"
    shutil.copy(dist["allowed"], _site(root, 'require_signature = true\nallowed_signers = "allowed_signers"\n')
                .with_name("allowed_signers"))
    prefix = root / "envs" / "team" / "app"
    res = run_cli("install", dist["unsigned"], "--prefix", prefix)
    assert_user_error(res, "app.tar.zst is not signed", f"Site policy: {root / '.condastack' / 'site.toml'}")
    assert_user_error(run_cli("install", dist["mallory"], "--prefix", prefix), "not in")
    # the user's own allowed-signers file (trusting mallory) does not replace the site's
    mine = _allowed(tmp_path, dist["mallory_key"])
    assert_user_error(run_cli("install", dist["mallory"], "--prefix", prefix, "--allowed-signers", mine), "not in")
    # a deeper site.toml cannot switch it off
    _site(root / "envs" / "team", "require_signature = false\n")
    assert_user_error(run_cli("install", dist["unsigned"], "--prefix", prefix), "is not signed")
    assert not prefix.exists()
    res = run_cli("install", dist["signed"], "--prefix", prefix)
    assert res.returncode == 0, res.output
    assert (prefix / "bin" / "hello").exists()


def test_site_policy_without_signers_and_typos(dist: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "shared"
    _site(root, "require_signature = true\n")
    prefix = root / "envs" / "app"
    assert_user_error(run_cli("install", dist["signed"], "--prefix", prefix),
                      "the site requires signed archives", "Pass --allowed-signers FILE")
    res = run_cli("install", dist["signed"], "--prefix", prefix, "--allowed-signers", dist["allowed"])
    assert res.returncode == 0, res.output
    _site(root, "require_signatures = true\n")  # misspelt: refused, not silently ignored
    assert_user_error(run_cli("install", dist["signed"], "--prefix", prefix), "unknown key 'require_signatures'")


def test_site_policy_slurm_preamble(dist: dict[str, Path], tmp_path: Path) -> None:
    if shutil.which("unsquashfs") is None:
        pytest.skip("unsquashfs not installed: apt-get install squashfs-tools")
    root = tmp_path / "shared"
    _site(root, f'require_signature = true\nallowed_signers = "{dist["allowed"]}"\n')
    unsigned = _copy(dist["sq_unsigned"], root / "images" / "unsigned")
    signed = _copy(dist["sq_signed"], root / "images" / "signed")
    assert_user_error(run_cli("slurm-preamble", unsigned), "app.squashfs is not signed", "Site policy")
    res = run_cli("slurm-preamble", signed)
    assert res.returncode == 0, res.output
    assert "sbcast" in res.stdout and str(dist["sq_prefix"]) in res.stdout
    # without a site policy the flag alone asks for the check
    assert_user_error(run_cli("slurm-preamble", dist["sq_unsigned"], "--allowed-signers", dist["allowed"]),
                      "is not signed")
    # install of a signed image copies its signatures (and keeps its manifest's bytes) beside the copy,
    # so the preamble made from the installed image checks too
    res = run_cli("install", signed, "--prefix", dist["sq_prefix"], "--image", root / "images" / "app.squashfs")
    assert res.returncode == 0, res.output
    res = run_cli("slurm-preamble", root / "images" / "app.squashfs")
    assert res.returncode == 0, res.output
