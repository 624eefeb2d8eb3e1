"""Concurrency (issue 9): parallel builds on one package cache; two locks of the same layer.

- Four `build`s of different layers start at the same time with one empty
  $CONDASTACK_PKGS (two of them need the same 37 MB python package, all need
  libhello): all succeed and `verify`, and the cache holds no temporaries. A second
  round (--force, warm cache) does the same.
- Two `lock`s of the same layer: `lock` holds a flock on lock/.condastack.lock.
  While the test holds that lock, both commands are seen in /proc/locks as
  waiters on it and write nothing; released, both finish, and the lockfile is
  valid and identical to one made alone. Started together without the test's
  hold, one waits for the other and the result is the same valid lockfile.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import CLI, run_cli, write_project

LAYERS = {
    "l1": ["hello"],
    "l2": ["libhello", "libfoo"],
    "l3": ["python", "hello"],
    "l4": ["python", "gpu-kernels", "noarch-data"],
}


def _project(root: Path, channel_url: str) -> Path:
    layers = "".join(f"  {n}: {{file: {n}.yml}}\n" for n in LAYERS)
    return write_project(root, f"""
name: concurrent
platforms: [linux-64]
virtual-packages:
  linux-64: {{__glibc: "2.28", __cuda: "12.6"}}
layers:
{layers}""", {f"{n}.yml": f'name: {n}\nchannels: ["{channel_url}"]\ndependencies:\n'
              + "".join(f"  - {d}\n" for d in deps) for n, deps in LAYERS.items()})


def _start(args: list, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [(p.wait(timeout=600), p.stdout.read()) for p in procs]


@pytest.mark.slow
def test_four_builds_share_one_cache(tmp_path: Path, channel_url: str) -> None:
    proj = _project(tmp_path / "proj", channel_url)
    pkgs = tmp_path / "pkgs"
    env = {"CONDASTACK_PKGS": str(pkgs)}
    res = run_cli("-C", proj, "lock", env=env)
    assert res.returncode == 0, res.output
    for extra in ([], ["--force"]):  # a cold cache, then a warm one
        procs = [_start(["-C", proj, "build", n, *extra], env) for n in LAYERS]
        for (rc, out), n in zip(_finish(procs), LAYERS):
            assert rc == 0, f"build {n}:\n{out}"
        for n in LAYERS:
            res = run_cli("-C", proj, "verify", n, env=env)
            assert res.returncode == 0 and "ok: the environment matches its lock" in res.output, res.output
        assert not [p for p in pkgs.rglob("*") if ".condastack-tmp-" in p.name]
        assert not [p for p in (proj / "envs").iterdir() if ".condastack-tmp-" in p.name]
    assert subprocess.run([str(proj / "envs" / "l3" / "bin" / "hello")], capture_output=True).returncode == 0


def _waiters(lockfile: Path) -> tuple[set[int], set[int]]:
    """(holders, waiters): pids with a flock on `lockfile` per /proc/locks."""
    ino = os.stat(lockfile).st_ino
    holders, waiters = set(), set()
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        waiting = parts[1] == "->"
        if waiting:
            parts.pop(1)
        if parts[1] != "FLOCK" or int(parts[5].split(":")[-1]) != ino:
            continue
        (waiters if waiting else holders).add(int(parts[4]))
    return holders, waiters


def test_two_locks_of_one_layer_wait_for_each_other(tmp_path: Path, channel_url: str) -> None:
    from condastack.lock.lockfile import read_raw

    ref = _project(tmp_path / "ref", channel_url)
    assert run_cli("-C", ref, "lock", "l3").returncode == 0
    want = (ref / "lock" / "l3.conda-lock.yml").read_bytes()

    # 1. the test holds the project's lock: both commands wait on it and write nothing
    proj = _project(tmp_path / "proj", channel_url)
    flock = proj / "lock" / ".condastack.lock"
    flock.parent.mkdir()
    fd = os.open(flock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        procs = [_start(["-C", proj, "lock", "l3"], {}) for _ in range(2)]
        deadline = time.monotonic() + 120
        while _waiters(flock)[1] != {p.pid for p in procs}:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "never waited on the lock"
            time.sleep(0.05)
        assert sorted(p.name for p in (proj / "lock").iterdir()) == [".condastack.lock"]
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    for rc, out in _finish(procs):
        assert rc == 0, out
    assert (proj / "lock" / "l3.conda-lock.yml").read_bytes() == want

    # 2. started together: one holds the lock while the other waits; the result is one valid lockfile
    proj2 = _project(tmp_path / "proj2", channel_url)
    procs = [_start(["-C", proj2, "lock", "l3"], {}) for _ in range(2)]
    seen_wait = False
    flock2 = proj2 / "lock" / ".condastack.lock"
    while any(p.poll() is None for p in procs):
        if flock2.exists():
            holders, waiters = _waiters(flock2)
            assert len(holders) <= 1  # never two holders at once
            seen_wait |= bool(holders) and bool(waiters)
        time.sleep(0.01)
    for rc, out in _finish(procs):
        assert rc == 0, out
    got = proj2 / "lock" / "l3.conda-lock.yml"
    assert got.read_bytes() == want
    data = read_raw(got)
    assert {p["name"] for p in data["package"]} == {"python", "hello", "libhello"}
    assert not [p for p in (proj2 / "lock").iterdir() if ".condastack-tmp-" in p.name]
    print(f"second lock seen waiting on the first: {seen_wait}")
