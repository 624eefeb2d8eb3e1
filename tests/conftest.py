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
