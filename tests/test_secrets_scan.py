"""One output gate for credentials (issue 23): every command, run against a channel and a pip index that
carry credentials in every shape the credentials module knows, leaves the secret in no file under the
project, the package cache or the outputs, and in none of stdout/stderr.

Shapes: `user:password@host` (basic auth), `/t/<token>/` (conda token), and secret query parameters
(`?token=`, `&access_key=`, `X-Amz-Signature=`) on the pip index. The channel is served on 127.0.0.1
by tests.helpers.secret_channel, which accepts only the token path or basic auth.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import make_wheel, run_cli, secret_channel, write_project
from tests.test_secrets import _expand

TOKEN = "tk-SCAN-5ecr3t-77aa11"
USER, PASSWORD = "bob", "pw-SCAN-s3cr3t-99"
QUERY_SECRET = "qs-SCAN-s3cr3t-4242"
SIGNATURE = "sig-SCAN-s3cr3t-1717"
SECRETS = (TOKEN, PASSWORD, QUERY_SECRET, SIGNATURE)


@pytest.fixture(scope="module")
def secret_server(channel: Path):
    with secret_channel(channel, USER, PASSWORD, TOKEN) as address:
        yield address


def _leaks(data: bytes) -> list[str]:
    import base64

    found = [s for s in SECRETS if s.encode() in data]
    if base64.b64encode(f"{USER}:{PASSWORD}".encode()) in data:
        found.append("basic-auth header")
    return found


def _scan(root: Path) -> list[str]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or not p.is_file() or "environments" in p.relative_to(root).parts:
            continue  # the user's own input files hold the credentials
        for blob in _expand(p.read_bytes()):
            if _leaks(blob):
                out.append(f"{p}: {_leaks(blob)}")
                break
    return out


@pytest.mark.parametrize("form", ["token", "basic-auth"])
def test_no_command_writes_or_prints_a_credential(form: str, secret_server: str, tmp_path: Path) -> None:
    channel = (f"http://{secret_server}/t/{TOKEN}/" if form == "token"
               else f"http://{USER}:{PASSWORD}@{secret_server}/")
    # a pip index in the other shapes: it is named in the stack and hashed into the lock, never solved against
    index = (f"https://{USER}:{PASSWORD}@pypi.example.org/t/{TOKEN}/simple/?token={QUERY_SECRET}"
             f"&access_key={QUERY_SECRET}&X-Amz-Signature={SIGNATURE}")
    root = write_project(tmp_path / "proj", f"""
        name: scan
        platforms: [linux-64]
        pip-index: ["{index}"]
        virtual-packages:
          linux-64: {{__glibc: "2.28", __cuda: "12.6"}}
        layers:
          app: {{file: app.yml}}
        """, {"app.yml": f'name: app\nchannels: ["{channel}"]\ndependencies:\n  - hello\n'})
    out = tmp_path / "out"
    out.mkdir()
    env = {"CONDASTACK_PKGS": str(tmp_path / "pkgs"), "XDG_CACHE_HOME": str(tmp_path / "rattler-cache")}
    transcript: list[str] = []

    def cli(*args: object, ok: tuple[int, ...] = (0,)) -> None:
        res = run_cli("-vv", "-C", root, *args, env=env)
        transcript.append(f"$ condastack {args[0]}\n{res.stdout}\n{res.stderr}")  # the arguments hold secrets
        assert res.returncode in ok, res.output

    lock = root / "lock" / "app.conda-lock.yml"
    cli("layers")
    cli("layers", "--json")
    cli("lock")
    cli("lock", "--dry-run")
    cli("lock", "--check")
    cli("lock", "--json", "--update", "hello")
    cli("diff", lock, lock)
    cli("diff", lock, lock, "--json")
    cli("build", "app")
    cli("build", "app", "--json")
    cli("verify", "app")
    cli("verify", "app", "--json")
    cli("pack", "app")
    cli("pack", "app", "--format", "tar.gz", "--dest-prefix", "/opt/env")
    archive = root / "pack" / "app-linux-64.tar.zst"
    cli("unpack", archive, out / "unpacked")
    shutil.move(out / "unpacked", out / "moved")
    cli("relocate", out / "moved")
    cli("install", archive, "--prefix", out / "installed", "--json")
    cli("module", out / "installed", "--name", "scan/app", "--version", "1", "-o", out / "modulefiles")
    cli("container", "app", "--oci", root / "pack" / "app.oci.tar", "--oci-base", "scratch", "--json")
    cli("doctor", "app", "--json", ok=(0, 1))
    cli("doctor", "--prefix", out / "installed", ok=(0, 1))
    if shutil.which("mksquashfs"):
        cli("pack", "app", "--format", "squashfs", "--dest-prefix", "/opt/scan", "-o", out / "app.squashfs")
        cli("slurm-preamble", out / "app.squashfs", "--prefix", "/opt/scan", "-o", out / "preamble.sh")
        cli("slurm-preamble", out / "app.squashfs", "--prefix", "/opt/scan")
    wheel = make_wheel(tmp_path, "scanwheel", "1.0", requires=["hello"])
    cli("wrap", wheel, "--channel", out / "site-channel", "--python", "3.11", "--check-channel", channel,
        ok=(0, 1))
    # errors: a package the channel lacks, and a wrong credential
    (root / "environments" / "app.yml").write_text(
        f'name: app\nchannels: ["{channel}"]\ndependencies:\n  - hello\n  - no-such-package\n')
    cli("lock", ok=(1,))
    wrong = channel.replace(TOKEN, TOKEN[::-1]).replace(PASSWORD, PASSWORD[::-1])
    (root / "environments" / "app.yml").write_text(f'name: app\nchannels: ["{wrong}"]\ndependencies:\n  - hello\n')
    cli("lock", ok=(1,))
    cli("build", "app", "--force", ok=(0, 1))

    text = "\n".join(transcript)
    assert "hello" in text and "scan/app" in text  # the commands did run
    leaks = [s for s in SECRETS if s in text]
    assert not leaks, f"credentials {leaks} in the output:\n{text}"
    assert (root / "lock" / "app.records.json").is_file() and (out / "installed" / "conda-meta").is_dir()
    found = _scan(root) + _scan(out) + _scan(tmp_path / "pkgs")
    assert not found, "credentials in written files:\n" + "\n".join(found)
    # the files do hold the channel and the index, without their credentials (not even masked: a records
    # file names the channel as the lock does, not as `.../t/********/`)
    assert f"http://{secret_server}/" in lock.read_text()
    records = json.loads((root / "lock" / "app.records.json").read_text())["platforms"]["linux-64"]
    assert {r["channel"] for r in records} == {f"http://{secret_server}/"}
    assert all(r["url"].startswith(f"http://{secret_server}/linux-64/") for r in records)


def test_the_gate_masks_urls_and_leaves_other_text_alone() -> None:
    from condastack.core.credentials import gate

    text = ("export P=/home/t/abc; key=1\n"
            f"ch: http://{USER}:{PASSWORD}@h.example/t/{TOKEN}/c/?token={QUERY_SECRET}&a=1\n"
            f'"https://h.example/t/{TOKEN}/x" git+https://h.example/r@abc1234 file:///data/t/x\n')
    out = gate(text)
    assert not [s for s in SECRETS if s in out]
    assert out.startswith("export P=/home/t/abc; key=1\n") and "git+https://h.example/r@abc1234" in out
    assert "file:///data/t/x" in out and "h.example/t/***/c/?token=***&a=1" in out
