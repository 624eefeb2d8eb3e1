"""A layer with ten realistic `variables:` from lock to a shared install read by another user.

lock -> build -> pack -> install, module -o and slurm-preamble-free outputs, all under `umask 077`;
another system user then activates the env and loads its module, and every value is intact.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import CLI, assert_user_error, run_cli, write_project

READER = "csreader"

TEN = {
    "OMP_NUM_THREADS": "8",
    "NCCL_DEBUG": "WARN",
    "NCCL_SOCKET_IFNAME": "^docker0,lo",
    "HF_HOME": "/scratch/shared/cache/huggingface/hub-cache-for-the-whole-group-of-researchers/" + "x" * 60,
    "TORCH_HOME": "/scratch/shared/cache/torch with spaces/models",
    "HF_ENDPOINT": "https://hf-mirror.example.org/api/models?full=true&limit=100#frag",
    "WANDB_NOTES": "it's \"quoted\" and costs $5; `not run` $(not run either)",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True,max_split_size_mb:512",
    "MY_TEMPLATE": "${HOME}/runs/$SLURM_JOB_ID %p %j [a] {b} \\n",
    "GREETING": "naïve café 日本語",
}


def _reader() -> str:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to read the install as another user")
    try:
        pwd.getpwnam(READER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", READER], check=True)
    return READER


def _as(user: str, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", "env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp",
                           "LANG=C.UTF-8", *(f"{k}={v}" for k, v in (env or {}).items()), "bash", "-c", script],
                          capture_output=True, timeout=300, cwd="/")


def _dump(names: list[str]) -> str:
    return "".join(f'printf "%s\\0%s\\0" {n} "${{{n}-<unset>}}"\n' for n in names)


def _parse(out: bytes) -> dict[str, str]:
    parts = out.split(b"\0")[:-1]
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}


def test_ten_variables_shared_install_under_umask_077(tmp_path: Path, channel_url: str) -> None:
    user = _reader()
    # The reader must reach the site: pytest's base folder is private (and other runs reset it to 0700).
    site_root = Path(tempfile.mkdtemp(prefix="condastack-site-", dir="/tmp"))
    os.chmod(site_root, 0o755)
    try:
        _ten_variables(tmp_path, site_root, channel_url, user)
    finally:
        shutil.rmtree(site_root, ignore_errors=True)


def _ten_variables(tmp_path: Path, site_root: Path, channel_url: str, user: str) -> None:
    variables = "\n".join(f"  {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in TEN.items())
    proj = write_project(tmp_path / "p", "name: ten\nplatforms: [linux-64]\nvirtual-packages:\n"
                         "  linux-64: {__glibc: '2.28'}\nlayers:\n  app: {file: app.yml}\n",
                         {"app.yml": f'channels: ["{channel_url}"]\nvariables:\n{variables}\n'
                                     "dependencies: [libhello]\n"})
    env = {"CONDASTACK_PKGS": str(tmp_path / "pkgs")}

    def cli(*args: object) -> None:
        cmd = " ".join(f"'{a}'" for a in [*CLI, *args])
        p = subprocess.run(["bash", "-c", f"umask 077; exec {cmd}"], capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr

    cli("-C", proj, "lock")
    lock = (proj / "lock" / "app.conda-lock.yml")
    assert lock.is_file()
    cli("-C", proj, "build", "app")  # used to refuse for ever: "re-create it with condastack lock"
    assert json.loads((proj / "envs" / "app" / "conda-meta" / "state").read_text())["env_vars"] == TEN
    cli("-C", proj, "pack", "app", "-o", tmp_path / "out" / "app.tar.zst")
    shared = site_root / "site" / "envs" / "ten"
    cli("install", tmp_path / "out" / "app.tar.zst", "--prefix", shared)
    cli("module", shared, "--name", "ten/app", "--version", "1", "-o", site_root / "site" / "modules")

    for path in (shared, shared / "bin", shared / "conda-meta", shared / "activate.sh",
                 site_root / "site" / "modules" / "ten" / "app" / "1.lua", tmp_path / "out" / "app.tar.zst"):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o004, (path, oct(mode))
        if path.is_dir():
            assert mode & 0o001, (path, oct(mode))

    got = _as(user, f". '{shared}/activate.sh'\n" + _dump([*TEN, "CONDA_PREFIX"]))
    assert got.returncode == 0, got.stderr.decode()
    assert _parse(got.stdout) == {**TEN, "CONDA_PREFIX": str(shared)}, got.stderr.decode()
    listing = _as(user, f"ls '{shared}/conda-meta' '{shared}/bin' && cat '{shared}/conda-meta/state' >/dev/null")
    assert listing.returncode == 0, listing.stderr.decode()
    lmod = Path("/usr/share/lmod/lmod/init/bash")
    if not lmod.is_file():
        pytest.skip("Lmod not installed: the module load as another user was not tried")
    loaded = _as(user, f". {lmod}\nmodule use '{site_root}/site/modules'\nmodule load ten/app/1 || exit 3\n"
                 + _dump(list(TEN)))
    assert loaded.returncode == 0, loaded.stderr.decode()
    assert _parse(loaded.stdout) == TEN


def test_mode_option(tmp_path: Path) -> None:
    assert_user_error(run_cli("module", tmp_path, "--name", "a", "--version", "1", "--mode", "0077"),
                      "--mode 0077")
    assert_user_error(run_cli("module", tmp_path, "--name", "a", "--version", "1", "--mode", "everyone"),
                      "shared, group, private")


def test_private_mode_keeps_modulefiles_private(tmp_path: Path) -> None:
    from condastack.core.access import parse_mode
    from condastack.deliver.module import write_modulefiles

    env = tmp_path / "env"
    (env / "conda-meta").mkdir(parents=True)
    (env / "conda-meta" / "history").write_text("")
    files = write_modulefiles(env, "a/b", "1", tmp_path / "mods", parse_mode("private"))
    assert stat.S_IMODE(os.stat(files.lua).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "mods" / "a").st_mode) == 0o700
    files = write_modulefiles(env, "c/d", "1", tmp_path / "mods2", parse_mode("0750"))
    assert stat.S_IMODE(os.stat(files.tcl).st_mode) == 0o640
