"""Secrets (issue 9): channel credentials never reach an output file, a log line or an error message.

The test channel is served over HTTP on 127.0.0.1 by a small handler that accepts
conda's two credential forms: a token path (`/t/<token>/...`) and HTTP basic auth
(`http://user:password@host/...`). Everything else gets 401. The stack uses both
URLs; every command runs with -vv, and every file the commands write (lockfiles,
explicit files, the env's conda-meta, the archive's manifest and contents, the OCI
image's config and layer) and all of stdout/stderr are searched for the secrets.
"""

from __future__ import annotations

import base64
import gzip
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.helpers import run_cli, secret_channel, write_project

TOKEN = "tk-5ecr3t-T0KEN-9f8e7d"
USER, PASSWORD = "alice", "pa55-W0RD-s3cr3t"
SECRETS = (TOKEN, PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


@pytest.fixture(scope="module")
def secret_server(channel: Path):  # noqa: ANN201
    with secret_channel(channel, USER, PASSWORD, TOKEN) as address:
        yield address


def _leaks(text: str | bytes) -> list[str]:
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


def _file_leaks(root: Path) -> list[str]:
    """Every file under root, and every member inside archives (tar, tar.gz, tar.zst, OCI blobs)."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or not p.is_file() or p.parent.name == "pkgs" or "pkgs" in p.parts:
            continue
        data = p.read_bytes()
        for blob in _expand(data):
            if _leaks(blob):
                out.append(f"{p.relative_to(root)}: {_leaks(blob)}")
                break
    return out


def _expand(data: bytes) -> list[bytes]:
    """The bytes, and if they are an archive (maybe compressed), every member's bytes too."""
    out = [data]
    raw = data
    if data[:4] == b"\x28\xb5\x2f\xfd":
        raw = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True).stdout
        out.append(raw)
    elif data[:2] == b"\x1f\x8b":
        raw = gzip.decompress(data)
        out.append(raw)
    if len(raw) > 512 and raw[257:262] == b"ustar":
        try:
            with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
                for m in tf:
                    if m.isfile():
                        for inner in _expand(tf.extractfile(m).read()):
                            out.append(inner)
        except tarfile.TarError:
            pass
    return out


@pytest.mark.parametrize("form", ["token", "basic-auth"])
def test_credentials_never_leak(form: str, secret_server: str, tmp_path: Path) -> None:
    url = (f"http://{secret_server}/t/{TOKEN}/" if form == "token"
           else f"http://{USER}:{PASSWORD}@{secret_server}/")
    root = write_project(tmp_path / "proj", """
        name: secrets
        platforms: [linux-64]
        virtual-packages:
          linux-64: {__glibc: "2.28", __cuda: "12.6"}
        layers:
          app: {file: app.yml}
        """, {"app.yml": f'name: app\nchannels: ["{url}"]\ndependencies:\n  - hello\n'})
    env = {"CONDASTACK_PKGS": str(tmp_path / "pkgs")}
    outputs: list[str] = []

    def cli(*args: object, ok: bool = True) -> None:
        res = run_cli("-vv", "-C", root, *args, env=env)
        outputs.append(f"$ condastack {' '.join(map(str, args))}\n{res.output}")
        if ok:
            assert res.returncode == 0, res.output
        else:
            assert res.returncode == 1, res.output

    cli("lock")
    cli("lock", "--dry-run")
    cli("lock", "--check")
    cli("layers", "--json")
    cli("build", "app")
    cli("verify", "app")
    cli("pack", "app")
    cli("pack", "app", "--format", "tar.gz", "--dest-prefix", "/opt/env")
    cli("container", "app", "--oci", root / "pack" / "app.oci.tar", "--oci-base", "scratch")
    # error messages: an unknown package on the secret channel, and a wrong token / password
    (root / "environments" / "app.yml").write_text(
        f'name: app\nchannels: ["{url}"]\ndependencies:\n  - hello\n  - no-such-package\n')
    cli("lock", ok=False)
    wrong = url.replace(TOKEN, TOKEN[::-1]).replace(PASSWORD, PASSWORD[::-1])
    (root / "environments" / "app.yml").write_text(f'name: app\nchannels: ["{wrong}"]\ndependencies:\n  - hello\n')
    cli("lock", ok=False)

    text = "\n".join(outputs)
    assert "hello" in text  # the commands did run
    assert not _leaks(text), f"credentials in the output:\n{text}"
    written = [p for p in root.rglob("*") if p.is_file() and p.parent.name != "environments"]
    assert any(p.name == "app.conda-lock.yml" for p in written) and any(p.suffix == ".json" for p in written)
    assert not _file_leaks(root / "lock") and not _file_leaks(root / "pack") and not _file_leaks(root / "envs")
    # the files hold the channel, but without its credentials
    assert f"http://{secret_server}/" in (root / "lock" / "app.conda-lock.yml").read_text()
