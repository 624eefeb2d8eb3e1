"""Races and signals: two commands on one output, and SIGINT/SIGTERM in the middle of a pack.

- Two `unpack` runs into one new DEST: one wins, the other exits 1 naming DEST (never 70).
- Two `pack` runs to one output take turns: the archive matches its .sha256 and manifest.
- SIGTERM or SIGINT while zstd and tar run: condastack ends them, removes its temporaries and
  exits 128+signal; no child is still running once it has exited.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import CLI, libhello_project, run_cli

TMP = ".condastack-tmp-"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("races")
    proj, env = libhello_project(root, channel_url, "r", ("lock", "build", "pack"))
    return {"proj": proj, "env": env, "archive": proj / "pack" / "app-linux-64.tar.zst"}


def _both(*cmds: list[object], env: dict[str, str] | None = None) -> list:  # noqa: ANN401
    out: list = [None] * len(cmds)

    def one(i: int) -> None:
        out[i] = run_cli(*cmds[i], env=env)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(cmds))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def test_two_unpacks_into_one_new_dest(built: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    a, b = _both(["unpack", built["archive"], dest], ["unpack", built["archive"], dest])
    assert sorted([a.returncode, b.returncode]) == [0, 1], a.output + b.output
    loser = a if a.returncode else b
    assert str(dest) in loser.output and "internal error" not in loser.output
    assert (dest / "conda-meta").is_dir()
    assert not [p for p in tmp_path.iterdir() if TMP in p.name]


def test_two_packs_to_one_output_stay_consistent(built: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "same.tar.zst"
    cmd = ["-C", built["proj"], "pack", "app", "-o", out]
    a, b = _both(cmd, [*cmd[:-2], "--level", "9", "-o", out], env=built["env"])
    assert a.returncode == 0 and b.returncode == 0, a.output + b.output
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert out.with_name(out.name + ".sha256").read_text().split()[0] == digest
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["sha256"] == digest and manifest["size"] == out.stat().st_size
    assert not [p for p in tmp_path.iterdir() if TMP in p.name]


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_pack_ends_children_and_temporaries(sig: int, built: dict[str, Path], tmp_path: Path) -> None:
    big = built["proj"] / "envs" / "app" / "share" / "incompressible.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(os.urandom(48 << 20))  # zstd -19 on one thread takes many seconds over this
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        proc = subprocess.Popen([*CLI, "-C", built["proj"], "pack", "app", "--level", "19", "-j", "1", "-o",
                                 out_dir / "big.tar.zst"], env={**os.environ, **built["env"]},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        kids: list[int] = []
        for _ in range(600):  # until the compressor runs and the temporary archive exists
            kids = _children(proc.pid)
            if len(kids) >= 2 and any(TMP in p.name for p in out_dir.iterdir()):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert len(kids) >= 2, "tar and zstd never started"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        big.unlink()
    assert proc.returncode == 128 + sig, err
    assert "interrupted" in err and "Traceback" not in err
    assert not [k for k in kids if _running(k)], "a child still runs after condastack exited"
    assert not list(out_dir.iterdir()), list(out_dir.iterdir())
