"""Progress bars: drawn on a terminal (a pseudo-terminal here), never with -q or into a pipe."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers import CLI, run_cli


def run_in_pty(*args: str | os.PathLike) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal, as a user at a terminal would."""
    master, slave = os.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="120")
    env.pop("NO_COLOR", None)
    p = subprocess.Popen([*CLI, *map(str, args)], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return p.wait(timeout=600), b"".join(chunks).decode(errors="replace")


BAR = "━"


def test_progress_bars_on_a_terminal_and_none_with_q(base_app_project: Path, pkgs_cache: Path,
                                                    tmp_path: Path) -> None:
    proj = base_app_project
    assert run_cli("-C", proj, "lock", "base").returncode == 0
    rc, out = run_in_pty("-C", proj, "build", "base")
    assert rc == 0, out
    assert "download" in out and "link" in out and BAR in out and "packages" in out
    rc, out = run_in_pty("-C", proj, "pack", "base")
    assert rc == 0, out
    assert "pack" in out and BAR in out and "B/s" in out
    archive = proj / "pack" / "base-linux-64.tar.zst"
    rc, out = run_in_pty("unpack", archive, tmp_path / "u")
    assert rc == 0 and "unpack" in out and BAR in out, out
    rc, out = run_in_pty("install", archive, "--prefix", tmp_path / "i")
    assert rc == 0 and BAR in out, out

    # -q: nothing at all on the terminal; and nothing when stderr is not a terminal
    rc, out = run_in_pty("-q", "-C", proj, "build", "base", "--force")
    assert rc == 0 and out.strip() == "", out
    rc, out = run_in_pty("-q", "unpack", archive, tmp_path / "u2")
    assert rc == 0 and out.strip() == "", out
    res = run_cli("-C", proj, "build", "base", "--force")
    assert res.returncode == 0 and BAR not in res.output and "download" not in res.output
