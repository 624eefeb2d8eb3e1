"""Environments built by condastack stay readable by the real conda-pack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import run_cli


def test_real_conda_pack_reads_our_env(base_app_project: Path, pkgs_cache: Path, tmp_path: Path) -> None:
    assert run_cli("-C", base_app_project, "lock").returncode == 0
    res = run_cli("-C", base_app_project, "build", "app")
    assert res.returncode == 0, res.output
    env = base_app_project / "envs" / "app"
    # our marker must not look like a package record (conda-meta/*.json) to conda or conda-pack
    assert (env / "conda-meta" / "condastack.info").is_file()
    assert sorted(p.name.rsplit("-", 2)[0] for p in (env / "conda-meta").glob("*.json")) == \
        ["gpu-kernels", "hello", "libfoo", "libhello"]
    out = tmp_path / "app.tar.gz"
    p = subprocess.run([str(Path(sys.executable).parent / "conda-pack"), "-p", str(env), "-o", str(out), "-q"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    dest = tmp_path / "unpacked"
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(out), "-C", str(dest)], check=True)
    assert (dest / "bin" / "conda-unpack").exists() and (dest / "bin" / "hello").exists()
