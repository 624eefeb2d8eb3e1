"""Shared fixtures: the offline test channel, package caches, projects and a local PyPI index.

Plain helpers (run_cli, assert_user_error, write_project, ...) live in tests/helpers.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.channel.testchannel import build_test_channel, default_cache_dir
from tests.helpers import make_wheel, write_project


@pytest.fixture(scope="session", autouse=True)
def _drop_shared_temporaries(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN202
    """At the end of the run, remove the folders made by tmp_path_factory (package caches, built
    envs: hundreds of MB each). Tests' own tmp_path folders (named test_*) are left to pytest's
    retention policy (pyproject: kept only for failed tests)."""
    yield
    import shutil

    base = tmp_path_factory.getbasetemp()
    for entry in base.iterdir():
        if entry.name.startswith("test_") or entry.is_symlink():
            continue
        shutil.rmtree(entry, ignore_errors=True)
    for entry in base.iterdir():
        if entry.is_symlink() and not entry.exists():  # pytest's `<name>current` links to them
            entry.unlink()


@pytest.fixture(scope="session")
def channel() -> Path:
    """The offline test channel folder (built once, cached by recipe hash)."""
    return build_test_channel(default_cache_dir())


@pytest.fixture(scope="session")
def channel_url(channel: Path) -> str:
    return channel.as_uri()


@pytest.fixture()
def pkgs_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private package cache per test, so tests never see each other's downloads."""
    d = tmp_path_factory.mktemp("pkgs")
    monkeypatch.setenv("CONDASTACK_PKGS", str(d))
    return d


@pytest.fixture()
def base_app_project(tmp_path: Path, channel_url: str) -> Path:
    """A two-layer, two-platform stack on the test channel (base: libhello; app: hello)."""
    return write_project(
        tmp_path / "proj",
        """
        name: demo
        platforms: [linux-64, linux-aarch64]
        virtual-packages:
          linux-64: {__cuda: "12.6", __glibc: "2.28"}
          linux-aarch64: {__glibc: "2.28"}
        layers:
          base: {file: base.yml}
          app: {file: app.yml, extends: base}
        """,
        {
            "base.yml": f"""
            name: base
            channels: ["{channel_url}"]
            dependencies:
              - libhello >=1.0
              - libfoo
              - gpu-kernels
            """,
            "app.yml": f"""
            name: app
            channels: ["{channel_url}"]
            dependencies:
              - hello
            """,
        },
    )


# --------------------------------------------------------------------------- a local PyPI index


@dataclass
class PyIndex:
    url: str  # PEP 503 simple index root, e.g. http://127.0.0.1:PORT/simple/
    wheels: dict[str, Path]  # file name -> path


@pytest.fixture(scope="session")
def pypi_index(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A PEP 503 index on 127.0.0.1 serving wheels built here: tinylib 1.0/2.0, tinyapp 1.0 (needs tinylib>=1)."""
    import functools
    import hashlib
    import http.server
    import threading

    root = tmp_path_factory.mktemp("pypi")
    files = root / "files"
    files.mkdir()
    wheels = [
        make_wheel(files, "tinylib", "1.0"),
        make_wheel(files, "tinylib", "2.0"),
        make_wheel(files, "tinyapp", "1.0", requires=["tinylib>=1"], scripts={"tinyapp": "tinyapp:main"}),
    ]
    by_project: dict[str, list[Path]] = {}
    for w in wheels:
        by_project.setdefault(w.name.split("-")[0].replace("_", "-"), []).append(w)
    simple = root / "simple"
    for proj, ws in by_project.items():
        d = simple / proj
        d.mkdir(parents=True)
        links = "".join(
            f'<a href="../../files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">{w.name}</a>\n'
            for w in ws)
        (d / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    (simple / "index.html").write_text("".join(f'<a href="{p}/">{p}</a>\n' for p in by_project))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield PyIndex(url=f"http://127.0.0.1:{server.server_address[1]}/simple/", wheels={w.name: w for w in wheels})
    server.shutdown()
