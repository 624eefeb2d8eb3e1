"""Downloads trust nothing they are told (issue 23).

- every cache path derived from a URL goes through the path gate: a percent-encoded `..` in a locked
  wheel URL writes nothing outside the package cache;
- credentials go only to the host they belong to: a channel's redirect to another host (127.0.0.2 here,
  another loopback address) never receives the Authorization header, while a redirect on the same
  host keeps it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from condastack.core.errors import CondastackError
from condastack.env.fetch import _fetch, fetch_wheels
from condastack.env.locked import LockedWheel
from tests.helpers import assert_user_error, libhello_project, run_cli, write_project

USER, PASSWORD = "alice", "pa55-W0RD-redirect"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@contextmanager
def _serve(host: str, folder: Path, seen: list[tuple[str, str | None]],
           redirect: dict[str, str] | None = None, need_auth: bool = False) -> Iterator[str]:
    """Serve `folder` on host; record (path, Authorization) of every request; redirect paths ending in
    a key of `redirect` to that base URL (a base starting with '/' is on this same host)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            if need_auth and self.headers.get("Authorization") != AUTH:
                self.send_response(401)
                self.end_headers()
                return
            for suffix, base in (redirect or {}).items():
                if self.path.endswith(suffix) and not self.path.startswith("/direct/"):
                    self.send_response(302)
                    self.send_header("Location", base.rstrip("/") + self.path)
                    self.end_headers()
                    return
            if self.path.startswith("/direct/"):
                self.path = self.path[len("/direct"):]
            super().do_GET()

    srv = http.server.ThreadingHTTPServer((host, 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{srv.server_address[1]}"
    finally:
        srv.shutdown()


def test_redirect_to_another_host_drops_credentials(channel: Path, tmp_path: Path) -> None:
    """lock and build from a channel with basic auth on 127.0.0.1 whose package downloads redirect to
    127.0.0.2: the build succeeds and the other host never sees the Authorization header."""
    other: list[tuple[str, str | None]] = []
    home: list[tuple[str, str | None]] = []
    with _serve("127.0.0.2", channel, other) as mirror, \
            _serve("127.0.0.1", channel, home, redirect={".conda": mirror}, need_auth=True) as origin:
        url = origin.replace("http://", f"http://{USER}:{PASSWORD}@") + "/"
        proj = write_project(tmp_path / "proj", "name: r\nplatforms: [linux-64]\nvirtual-packages:\n"
                             "  linux-64: {__glibc: '2.28'}\nlayers:\n  app: {file: app.yml}\n",
                             {"app.yml": f'channels: ["{url}"]\ndependencies:\n  - libhello\n'})
        env = {"CONDASTACK_PKGS": str(tmp_path / "pkgs"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
        res = run_cli("-C", proj, "lock", env=env)
        assert res.returncode == 0, res.output
        res = run_cli("-C", proj, "build", "app", env=env)
        assert res.returncode == 0, res.output
    conda = [(p, a) for p, a in other if p.endswith(".conda")]
    assert conda, f"the redirect was never followed: {other}"
    assert all(a is None for _, a in other), f"credentials crossed to another host: {other}"
    assert any(p.endswith(".conda") and a == AUTH for p, a in home)  # the channel's own host did get them


def test_redirect_on_the_same_host_keeps_credentials(tmp_path: Path) -> None:
    data = b"payload" * 100
    (tmp_path / "f.bin").write_bytes(data)
    seen: list[tuple[str, str | None]] = []
    with _serve("127.0.0.1", tmp_path, seen, redirect={".bin": "/direct"}, need_auth=True) as origin:
        _fetch(f"{origin}/f.bin", tmp_path / "out" / "f.bin", hashlib.sha256(data).hexdigest(), "test file",
               [origin.replace("http://", f"http://{USER}:{PASSWORD}@") + "/"])
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert [a for _, a in seen] == [AUTH, AUTH]


@pytest.mark.parametrize("name", ["..%2f..%2f..%2fevil-1.0-py3-none-any.whl", "%2e%2e%2fevil-1.0-py3-none-any.whl",
                                  "..%252f..%252fevil-1.0-py3-none-any.whl"])
def test_encoded_dotdot_in_a_wheel_url_writes_nothing_outside_the_cache(tmp_path: Path, name: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "a" / "b" / "c"  # the URL's folder; its decoded '..' parts reach the copies above it
    base.mkdir(parents=True)
    for folder in (tmp_path, tmp_path / "a", tmp_path / "a" / "b", base):
        (folder / "evil-1.0-py3-none-any.whl").write_bytes(b"PK not really")
    cache = tmp_path / "deep" / "er" / "pkgs"
    monkeypatch.setenv("CONDASTACK_PKGS", str(cache))
    w = LockedWheel("evil", "1.0", f"{base.as_uri()}/{name}", hashlib.sha256(b"PK not really").hexdigest())
    before = sorted(tmp_path.rglob("*"))
    try:
        fetch_wheels([w])
    except CondastackError as e:
        assert "evil" in str(e)
    outside = [p for p in sorted(tmp_path.rglob("*")) if not p.is_relative_to(cache) and not cache.is_relative_to(p)]
    assert outside == [p for p in before if not cache.is_relative_to(p)], "a file was written outside the cache"


def test_build_refuses_a_locked_wheel_url_with_encoded_dotdot(channel_url: str, tmp_path: Path) -> None:
    proj, env = libhello_project(tmp_path, channel_url, "wheelpath", ("lock",))
    lock = proj / "lock" / "app.conda-lock.yml"
    doc = yaml.safe_load(lock.read_text())
    doc["package"].append({"name": "evil", "version": "1.0", "manager": "pip", "platform": "linux-64",
                           "dependencies": {}, "url": "http://127.0.0.1:9/files/%2e%2e/%2e%2e/evil-1.0-py3-none-any.whl",
                           "hash": {"sha256": "0" * 64}, "category": "main", "optional": False})
    lock.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = run_cli("-C", proj, "build", "app", "--frozen", env=env)
    assert_user_error(res, str(lock), "evil", "field 'url'")
