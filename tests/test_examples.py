"""The examples as a user runs them from a clean checkout (README commands 1 and 2, in that order)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, demo_project, run_cli, write_project

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_demo_project_ignores_the_channel_link_command_1_leaves(tmp_path: Path) -> None:
    """`bash examples/run.sh` leaves examples/demo/environments/channel (a link to its channel); a copy
    of the demo made by the tests afterwards (the Slurm `site` fixture) links the test channel instead."""
    src = tmp_path / "demo"
    (src / "environments").mkdir(parents=True)
    for f in (REPO / "examples" / "demo" / "environments").glob("*.yml"):
        (src / "environments" / f.name).write_text(f.read_text())
    (tmp_path / "demo-channel").mkdir()
    (src / "environments" / "channel").symlink_to(tmp_path / "demo-channel")
    test_channel = tmp_path / "test-channel"
    test_channel.mkdir()
    project = demo_project(tmp_path / "proj", test_channel, src)
    env = project / "environments"
    assert (env / "channel").resolve() == test_channel
    assert sorted(p.name for p in env.iterdir()) == ["app.yml", "base.yml", "channel", "stack.yml"]


# --------------------------------------------------------------------------- the real PyPI, reduced for CI

REALWORLD = os.environ.get("CONDASTACK_REALWORLD") == "1"


@pytest.mark.skipif(not REALWORLD, reason="set CONDASTACK_REALWORLD=1 to lock against the real PyPI (CI does; "
                    "scripts/realworld.sh runs the whole torch example)")
def test_real_pypi_lock_build_pack_unpack_import(tmp_path: Path, channel_url: str, pkgs_cache: Path) -> None:
    """scripts/realworld.sh in small: a pure-python package and its dependency from the real PyPI, with the
    test channel's python, locked, built, packed, unpacked elsewhere and imported there."""
    proj = write_project(tmp_path / "proj", """
        name: realpypi
        platforms: [linux-64]
        pip-index: ["https://pypi.org/simple"]
        layers:
          app: {file: app.yml}
        """, {"app.yml": f"""
            channels: ["{channel_url}"]
            dependencies:
              - python {PY}.*
              - pip
              - pip:
                - python-dateutil==2.9.0.post0
            """})
    limit = 300  # seconds per command: a hung index fails the test instead of CI
    res = run_cli("-C", proj, "lock", timeout=limit)
    assert res.returncode == 0, res.output
    lock = yaml.safe_load((proj / "lock" / "app.conda-lock.yml").read_text())
    pip = {p["name"]: p for p in lock["package"] if p["manager"] == "pip"}
    assert set(pip) == {"python-dateutil", "six"}, pip  # the dependency comes from the index, too
    assert pip["python-dateutil"]["version"] == "2.9.0.post0"
    for p in pip.values():
        assert p["url"].startswith("https://files.pythonhosted.org/") and len(p["hash"]["sha256"]) == 64, p
    for args in (["build", "app"], ["verify", "app"], ["pack", "app"]):
        res = run_cli("-C", proj, *args, timeout=limit)
        assert res.returncode == 0, res.output
    dest = tmp_path / "elsewhere" / "app"
    res = run_cli("unpack", proj / "pack" / "app-linux-64.tar.zst", dest, timeout=limit)
    assert res.returncode == 0, res.output
    shutil.rmtree(proj / "envs")
    res = run_cli("verify", "--prefix", dest, timeout=limit)
    assert res.returncode == 0, res.output
    out = subprocess.run([str(dest / "bin" / "python"), "-c", "import dateutil, six, sys; from dateutil.parser import "
                          "parse; print(sys.prefix, dateutil.__file__, parse('2024-02-29T12:00').isoformat())"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=limit)
    prefix, where, when = out.stdout.split()
    assert (prefix, when) == (str(dest), "2024-02-29T12:00:00"), out.stderr
    assert where.startswith(str(dest)), where
