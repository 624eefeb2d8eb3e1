"""The credentials module: every URL shape loses its secret in lockfiles, JSON, logs and messages.

Property tests (hypothesis) generate URLs with a scheme in any case, `user[:password]@`
with any characters (':' and '@' included), conda `/t/<token>` at any position and
secret query parameters, embedded in running text, JSON and reprs. The secrets are
drawn so that they cannot appear by chance in the rest of the URL (a marker the host
and path alphabets do not have). An end-to-end test locks from a channel served on
127.0.0.1 with the shapes the old stripper missed and searches every output.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condastack.core.credentials import redact, strip_credentials, with_credentials
from tests.helpers import run_cli, secret_channel, write_project

MARK = "ZQ"  # never in hosts or paths below, so a secret found in an output is a leak
_SAFE = "abcdefghijklmnopqrstuvwxyz0123456789-."
# Any printable character a user or password may hold, '@' and ':' included; not the ones that end a
# URL authority in text (they must be percent-encoded in a real URL).
_SECRET_CHARS = st.characters(min_codepoint=33, max_codepoint=0x2FF,
                              blacklist_characters="/?#\"<>\\`{}|^ %")
secrets = st.text(_SECRET_CHARS, min_size=1, max_size=24).map(lambda s: MARK + s)
tokens = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_"), min_size=1, max_size=20).map(
    lambda s: MARK + s)
schemes = st.sampled_from(["http", "https", "s3", "ftp", "oci", "git+https"]).flatmap(
    lambda s: st.lists(st.booleans(), min_size=len(s), max_size=len(s)).map(
        lambda up: "".join(c.upper() if u else c for c, u in zip(s, up))))
hosts = st.text(st.sampled_from(_SAFE), min_size=1, max_size=15).map(lambda h: "h" + h)
segments = st.lists(st.text(st.sampled_from(_SAFE + "_"), min_size=1, max_size=8), max_size=4)


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """(url, its secrets)."""
    scheme, host, path = draw(schemes), draw(hosts), draw(segments)
    found: list[str] = []
    auth = ""
    if draw(st.booleans()):
        user = draw(secrets)
        found.append(user)
        auth = user
        if draw(st.booleans()):
            pw = draw(secrets)
            found.append(pw)
            auth += ":" + pw
        auth += "@"
    parts = list(path)
    if draw(st.booleans()):
        tok = draw(tokens)
        found.append(tok)
        parts.insert(draw(st.integers(0, len(parts))), f"t/{tok}")
    url = f"{scheme}://{auth}{host}" + "".join("/" + p for p in parts)
    if draw(st.booleans()):
        url += "/"
    if draw(st.booleans()):
        key = draw(st.sampled_from(["token", "access_token", "X-Amz-Signature", "api_key", "sig", "password"]))
        val = draw(tokens)
        found.append(val)
        url += f"?a=1&{key}={val}" if draw(st.booleans()) else f"?{key}={val}"
    return url, found


def _no_secret(text: str, found: list[str]) -> None:
    for s in found:
        assert s not in text, (s, text)


@settings(max_examples=400, deadline=None)
@given(u=urls(), before=st.sampled_from(["", "see ", "'", "(", "channel=", "x\n"]),
       after=st.sampled_from(["", " failed", "'", ")", ".", ",", "\n"]))
def test_redact_removes_every_secret(u: tuple[str, list[str]], before: str, after: str) -> None:
    url, found = u
    _no_secret(redact(before + url + after), found)
    _no_secret(redact(json.dumps({"channels": [url], "n": 1})), found)
    _no_secret(redact(repr([url, url])), found)
    assert redact(redact(url)) == redact(url)


@settings(max_examples=400, deadline=None)
@given(u=urls())
def test_strip_removes_every_secret_and_keeps_the_host(u: tuple[str, list[str]]) -> None:
    url, found = u
    bare = strip_credentials(url)
    _no_secret(bare, found)
    host = url.split("://", 1)[1].rsplit("@", 1)[-1].split("/")[0].split("?")[0] if "@" in url.split("/")[2] \
        else url.split("://", 1)[1].split("/")[0].split("?")[0]
    assert f"://{host}" in bare
    assert strip_credentials(bare) == bare


@settings(max_examples=200, deadline=None)
@given(u=urls(), tail=segments)
def test_with_credentials_gives_back_what_was_stripped(u: tuple[str, list[str]], tail: list[str]) -> None:
    url, _ = u
    url = url.split("?")[0]
    bare = strip_credentials(url).rstrip("/") + "/"
    pkg = bare + "/".join([*tail, "pkg-1.0-0.conda"])
    full, headers = with_credentials(pkg, [url])
    if "@" in url.split("://", 1)[1].split("/")[0]:
        user_pw = url.split("://", 1)[1].split("/")[0].rsplit("@", 1)[0]
        want = user_pw if ":" in user_pw else user_pw + ":"
        assert base64.b64decode(headers["Authorization"].split()[1]).decode() == want
    if "/t/" in url:
        assert "/t/" + url.split("/t/", 1)[1].split("/")[0] in full


SHAPES = {
    "upper-scheme": "HTTP://alice:ZQpass@example.org/c",
    "at-in-password": "https://alice:ZQp@ss@word@example.org/c/",
    "token-at-end": "https://example.org/c/t/ZQtoken",
    "token-in-middle": "https://example.org/t/ZQtoken/c/",
    "token-query": "https://example.org/c?token=ZQtoken&x=1",
    "signature-query": "https://bucket.s3.example/c?X-Amz-Signature=ZQsig",
    "user-only": "https://ZQuser@example.org/c",
    "colon-in-password": "https://alice:ZQa:b:c@example.org/c",
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_known_shapes(shape: str) -> None:
    url = SHAPES[shape]
    assert "ZQ" not in strip_credentials(url)
    assert "ZQ" not in redact(f"error: cannot read {url}: 401")
    assert "example" in strip_credentials(url)


LONG = ["'a' * 1_000_000", "'a://' * 250_000", "'a://b@' * 170_000", "'@' * 1_000_000 + '://'",
        "'/t/x' * 250_000", "'?token=' * 140_000", "':' * 1_000_000", "'https://' + 'u' * 1_000_000 + '@h'",
        "'HTTP://u:p@h/t/x?token=y ' * 40_000"]


def test_long_inputs_finish() -> None:
    """Hostile 1,000,000-character strings: a quadratic scan would not finish in the minute given."""
    code = "from condastack.core.credentials import redact, strip_credentials\n" + "".join(
        f"s = {e}\nassert len(redact(s)) > 0 and strip_credentials(s) is not None\n" for e in LONG)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parent.parent)


# --------------------------------------------------------------------------- end to end

USER, PASSWORD, TOKEN = "alice", "ZQp@ss:w0rd@x", "ZQtok3n-e2e"


@pytest.fixture(scope="module")
def server(channel: Path):  # noqa: ANN201
    """The test channel, to /t/<TOKEN>/... or with basic auth (a password holding '@' and ':')."""
    with secret_channel(channel, USER, PASSWORD, TOKEN) as address:
        yield address


@pytest.mark.parametrize("form", ["upper-scheme-at-in-password", "token-at-end"])
def test_lock_and_json_hold_no_secret(form: str, server: str, tmp_path: Path) -> None:
    from urllib.parse import quote

    url = (f"HTTP://{USER}:{quote(PASSWORD, safe='@:')}@{server}" if form.startswith("upper")
           else f"http://{server}/t/{TOKEN}")
    root = write_project(tmp_path / "proj", "name: s\nplatforms: [linux-64]\nvirtual-packages:\n"
                         "  linux-64: {__glibc: '2.28'}\nlayers:\n  app: {file: app.yml}\n",
                         {"app.yml": f'channels: ["{url}"]\ndependencies:\n  - libhello\n'})
    env = {"CONDASTACK_PKGS": str(tmp_path / "pkgs")}
    outs = [run_cli("-vv", "-C", root, *a, env=env, timeout=300) for a in
            (["lock"], ["layers", "--json"], ["lock", "--check"])]
    text = "".join(r.output for r in outs)
    for secret in ("ZQ", base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()):
        assert secret not in text, text
    written = [p for p in (root / "lock").rglob("*") if p.is_file()] if (root / "lock").exists() else []
    for p in written:
        assert "ZQ" not in p.read_text(errors="replace"), p
    # the lock went through (the gate strips, it does not break the URL), and names the bare channel
    assert outs[0].returncode == 0, outs[0].output
    assert any(f"://{server}" in p.read_text() for p in written if p.name.endswith(".conda-lock.yml"))
