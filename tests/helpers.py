"""What tests share besides fixtures: run the CLI as a user would, check a user error, write projects.

Imported as `from tests.helpers import ...` (tests/ is a package; pytest puts the
repository root on sys.path for it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(REPO / "cli.py")]


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


def run_ok(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """`run_cli` of a command that must succeed; its stdout."""
    res = run_cli(*args, cwd=cwd, env=env)  # type: ignore[arg-type]
    assert res.returncode == 0, res.output
    return res.stdout


def assert_user_error(res: Result, *needles: str) -> None:
    """Exit 1, no traceback, and the message contains every needle."""
    assert res.returncode == 1, f"exit {res.returncode}\n{res.output}"
    assert "Traceback" not in res.output, res.output
    for n in needles:
        assert n in res.output, f"{n!r} not in:\n{res.output}"


def demo_project(project: Path, channel: Path, src: Path = REPO / "examples" / "demo") -> Path:
    """A copy of the bundled example's stack files under project, its `channel` linked to `channel`.

    Only the stack's own files are copied: `bash examples/run.sh` (README command 1) leaves its own
    channel link in src/environments, which must neither be copied nor clash with this link."""
    shutil.copytree(src / "environments", project / "environments", ignore=shutil.ignore_patterns("channel"))
    (project / "environments" / "channel").symlink_to(channel)
    return project


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


def libhello_project(root: Path, channel_url: str, name: str, steps: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """A one-layer project (`app`: libhello from the test channel) with its own package cache,
    taken through `steps` (a subset of lock, build, pack) with the CLI; (project, env for run_cli)."""
    proj = write_project(root / "proj", f"name: {name}\nplatforms: [linux-64]\nvirtual-packages:\n"
                         "  linux-64: {__glibc: '2.28'}\nlayers:\n  app: {file: app.yml}\n",
                         {"app.yml": f'channels: ["{channel_url}"]\ndependencies:\n  - libhello\n'})
    env = {"CONDASTACK_PKGS": str(root / "pkgs")}
    for step in steps:
        res = run_cli("-C", proj, step, *(["app"] if step != "lock" else []), env=env)
        assert res.returncode == 0, res.output
    return proj, env


@contextlib.contextmanager
def secret_channel(folder: Path, user: str, password: str, token: str) -> Iterator[str]:
    """Serve a channel folder on 127.0.0.1 to /t/<token>/... or with basic auth (401 otherwise);
    yields "127.0.0.1:PORT"."""
    import base64
    import functools
    import http.server
    import threading

    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _allowed(self) -> bool:
            if self.path.startswith(f"/t/{token}/"):
                self.path = self.path[len(f"/t/{token}"):]
                return True
            return self.headers.get("Authorization") == want

        def _refuse(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="channel"')
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            super().do_GET() if self._allowed() else self._refuse()

        def do_HEAD(self) -> None:  # noqa: N802
            super().do_HEAD() if self._allowed() else self._refuse()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
