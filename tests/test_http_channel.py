"""An HTTP channel that answers conditional requests (ETag, Last-Modified) with `304 Not Modified`.

Real channel servers and CDNs revalidate with 304. The channel is served on 127.0.0.1 by a
handler that sends ETag, Last-Modified and `Cache-Control: max-age=0, must-revalidate` (so
every solve revalidates) and answers 304 when If-None-Match or If-Modified-Since match.
Two layers are locked from it, then locked again; the test requires that 304s were really
served, in both the sharded and the plain repodata.json layouts.
"""

from __future__ import annotations

import email.utils
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.helpers import run_cli, write_project


class _Conditional(http.server.SimpleHTTPRequestHandler):
    served_304: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()
        st = os.stat(path)
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
        fresh = inm == etag if inm is not None else (
            ims is not None and email.utils.parsedate_to_datetime(ims).timestamp() >= int(st.st_mtime))
        if fresh:
            self.served_304.append(self.path)
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return None
        f = open(path, "rb")
        self.send_response(200)
        self.send_header("Content-Length", str(st.st_size))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("Cache-Control", "public, max-age=0, must-revalidate")
        self.end_headers()
        return f


@pytest.fixture(params=["sharded", "repodata-json"])
def served(request: pytest.FixtureRequest, channel: Path, tmp_path: Path):
    folder = channel
    if request.param == "repodata-json":  # only repodata.json, as many plain servers have
        folder = tmp_path / "plain-channel"
        shutil.copytree(channel, folder)
        for p in list(folder.rglob("*shards*")) + list(folder.rglob("repodata.json.*")):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    hits: list[str] = []
    handler = type("H", (_Conditional,), {"served_304": hits})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/", hits
    srv.shutdown()


def test_lock_two_layers_from_a_revalidating_channel(served: tuple[str, list[str]], tmp_path: Path) -> None:
    url, hits = served
    root = write_project(tmp_path / "proj", "name: h\nplatforms: [linux-64]\nvirtual-packages:\n"
                         "  linux-64: {__glibc: '2.28'}\nlayers:\n  base: {file: base.yml}\n"
                         "  app: {file: app.yml, extends: base}\n",
                         {"base.yml": f'channels: ["{url}"]\ndependencies:\n  - libhello\n',
                          "app.yml": f'channels: ["{url}"]\ndependencies:\n  - hello\n'})
    # a private rattler cache, so the first request of this test is a plain 200 and later ones revalidate
    env = {"CONDASTACK_PKGS": str(tmp_path / "pkgs"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    first = run_cli("-C", root, "lock", env=env, timeout=300)
    assert first.returncode == 0, first.output
    again = run_cli("-C", root, "lock", "--update", "hello", env=env, timeout=300)
    assert again.returncode == 0, again.output
    assert "304" not in again.output
    assert hits, "the server never answered 304: the test did not exercise revalidation"
    for layer in ("base", "app"):
        text = (root / "lock" / f"{layer}.conda-lock.yml").read_text()
        assert "libhello" in text and url.rstrip("/") in text


class _Plain(http.server.SimpleHTTPRequestHandler):
    """`python -m http.server` as it is: a 304 for If-Modified-Since, with neither ETag nor Last-Modified."""

    codes: list[int]

    def log_message(self, *args: object) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self.codes.append(code)
        super().send_response(code, message)


def test_lock_twice_from_plain_http_server(channel: Path, tmp_path: Path) -> None:
    """A channel served by `python -m http.server` can be locked twice: py-rattler fails a 304 without
    validators ("unexpected status code (304 Not Modified)"); the lock refetches instead."""
    import time

    folder = tmp_path / "channel"
    shutil.copytree(channel, folder)
    for p in folder.rglob("*"):  # just written, as a site's freshly indexed channel: a cached copy is stale at once
        os.utime(p)
    codes: list[int] = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        type("P", (_Plain,), {"codes": codes}), directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/"
        root = write_project(tmp_path / "proj", "name: h\nplatforms: [linux-64]\nvirtual-packages:\n"
                             "  linux-64: {__glibc: '2.28'}\nlayers:\n  base: {file: base.yml}\n",
                             {"base.yml": f'channels: ["{url}"]\ndependencies:\n  - libhello\n'})
        env = {"CONDASTACK_PKGS": str(tmp_path / "pkgs"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
        first = run_cli("-C", root, "lock", env=env, timeout=300)
        assert first.returncode == 0, first.output
        time.sleep(2)  # past the heuristic freshness of the cached index (a tenth of its age)
        again = run_cli("-C", root, "lock", "--update", "libhello", env=env, timeout=300)
        assert again.returncode == 0, again.output
        assert 304 in codes, "the server never answered 304: the test did not exercise revalidation"
        assert "libhello" in (root / "lock" / "base.conda-lock.yml").read_text()
    finally:
        srv.shutdown()
