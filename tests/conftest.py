"""Shared fixtures: the offline test channel, project folders and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "channel"))

from testchannel import build_test_channel, default_cache_dir  # noqa: E402

CLI = [sys.executable, str(REPO / "cli.py")]


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


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str | os.PathLike, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> Result:
    """Run `python cli.py ARGS` in a subprocess, as a user would."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.run([*CLI, *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True,
                       timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


def assert_user_error(res: Result, *needles: str) -> None:
    """Exit 1, no traceback, and the message contains every needle."""
    assert res.returncode == 1, f"exit {res.returncode}\n{res.output}"
    assert "Traceback" not in res.output, res.output
    for n in needles:
        assert n in res.output, f"{n!r} not in:\n{res.output}"


def write_project(root: Path, stack: str, layers: dict[str, str]) -> Path:
    """Write environments/stack.yml and its layer files under root."""
    env = root / "environments"
    env.mkdir(parents=True, exist_ok=True)
    (env / "stack.yml").write_text(textwrap.dedent(stack).lstrip())
    for name, text in layers.items():
        (env / name).write_text(textwrap.dedent(text).lstrip())
    return root


def write_pip_project(root: Path, channel_url: str, index_url: str, platforms: list[str]) -> Path:
    """base: python + pip + pip tinylib==1.0; app extends base with pip tinyapp (needs tinylib)."""
    return write_project(root, f"""
        name: piptest
        platforms: [{", ".join(platforms)}]
        pip-index: ["{index_url}"]
        layers:
          base: {{file: base.yml}}
          app: {{file: app.yml, extends: base}}
        """, {
        "base.yml": f"""
            channels: ["{channel_url}"]
            dependencies:
              - python 3.11.*
              - pip
              - pip:
                - tinylib==1.0
            """,
        "app.yml": """
            dependencies:
              - pip:
                - tinyapp
            """,
    })


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


def make_wheel(folder: Path, name: str, version: str, *, requires: list[str] | None = None,
               scripts: dict[str, str] | None = None) -> Path:
    """Write a small pure-python wheel by hand (PEP 427), with an optional console script."""
    import base64
    import hashlib
    import zipfile

    mod = name.replace("-", "_")
    dist = f"{mod}-{version}.dist-info"
    files: dict[str, str] = {
        f"{mod}/__init__.py": f'__version__ = "{version}"\n\ndef main():\n    print("{name} {version} running")\n',
        f"{dist}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires or []),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: condastack-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if scripts:
        files[f"{dist}/entry_points.txt"] = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    out = folder / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            info = zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0))
            z.writestr(info, text)
    return out


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
