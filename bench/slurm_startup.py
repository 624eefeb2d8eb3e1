"""Start-up time of the env's python inside a Slurm job: node-local SquashFS vs unpacked tree.

    python bench/slurm_startup.py [ROUNDS]

Starts the single-node test cluster of tests/slurm_cluster.py, builds the demo stack's `app`
layer on the offline test channel (python 3.11 + C libraries), installs it twice under one
"shared" folder: unpacked (tar.zst, `condastack install`) and as a SquashFS image with its
`condastack slurm-preamble`. Then, in one sbatch job per case, it times ROUNDS (default 7)
runs of `python -c 'import <the env's main modules>'`:

  squashfs    from the node-local squashfuse mount (sbcast copy), the first run after the
              mount and the median of the rest;
  tree        from the unpacked tree, page cache warm (median);
  tree-cold   from the unpacked tree after `sync; echo 3 > /proc/sys/vm/drop_caches` before
              each run (median; needs root), the stand-in for a cold shared file system;
  squashfs-cold  the mount after the same cache drop;
  tree-nowrite   the unpacked tree with PYTHONDONTWRITEBYTECODE=1, run first: like the
              read-only image, python cannot replace .pyc files that do not match their
              sources (each job's output counts them: "stale .pyc").

Here the "shared" path is a local disk, so tree-cold is a lower bound for NFS/Lustre, where
every file open is also a network round trip. The demo env has no third-party packages, so
the imports are a broad set of standard-library modules (the env's own lib/python3.11).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "channel"))

from slurm_cluster import SlurmCluster  # noqa: E402
from testchannel import build_test_channel, default_cache_dir  # noqa: E402

IMPORTS = ("asyncio, json, decimal, sqlite3, email.mime.multipart, xml.etree.ElementTree, http.client, "
           "unittest, logging.handlers, argparse, ssl, csv, zipfile, tarfile, multiprocessing, concurrent.futures")

JOB = """#!/bin/bash
#SBATCH --output={out}
set -euo pipefail
{setup}
cmd=(python -c 'import {imports}')
for i in $(seq {rounds}); do
    {before}
    t0=$(date +%s%N); "${{cmd[@]}}"; t1=$(date +%s%N)
    echo "t $i $(( (t1 - t0) / 1000 ))"
done
stale=$(python -v -c 'import {imports}' 2>&1 | grep -c 'bytecode is stale' || true)
echo "python $(command -v python), stale .pyc: $stale"
"""


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> None:
    p = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd, env=env, capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise SystemExit(f"condastack {' '.join(args)} failed:\n{p.stdout}{p.stderr}")


def _prepare(root: Path, env: dict[str, str]) -> tuple[Path, Path, Path]:
    proj = root / "proj"
    shutil.copytree(REPO / "examples" / "demo" / "environments", proj / "environments")
    (proj / "environments" / "channel").symlink_to(build_test_channel(default_cache_dir()))
    tree, sq = root / "shared" / "envs" / "app", root / "shared" / "envs" / "app-sq"
    for args in (("lock",), ("build", "app"), ("pack", "app"),
                 ("pack", "app", "--format", "squashfs", "--dest-prefix", str(sq)),
                 ("install", "pack/app-linux-64.tar.zst", "--prefix", str(tree)),
                 ("install", "pack/app-linux-64.squashfs", "--prefix", str(sq)),
                 ("slurm-preamble", f"{sq}.squashfs", "-o", f"{sq}.preamble.sh")):
        _cli(*args, cwd=proj, env=env)
    return tree, sq, Path(f"{sq}.preamble.sh")


def _run_case(cluster: SlurmCluster, root: Path, name: str, setup: str, before: str, rounds: int,
              env: dict[str, str]) -> list[float]:
    out = root / f"{name}.out"
    script = root / f"{name}.sh"
    script.write_text(JOB.format(out=out, setup=setup, imports=IMPORTS, rounds=rounds, before=before or ":"))
    job = cluster.sbatch(str(script), env=env, cwd=root)
    res = cluster.wait(job, timeout=600)
    text = out.read_text()
    if res.state != "COMPLETED":
        raise SystemExit(f"{name}: job {job} {res.state} {res.exit_code}\n{text}")
    print(f"  {name:14s} {text.splitlines()[-1]}")
    return [int(line.split()[2]) / 1e3 for line in text.splitlines() if line.startswith("t ")]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    root = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root), "LANG": "C.UTF-8",
           "CONDASTACK_PKGS": str(root / "pkgs"), "CONDASTACK_NODE_DIR": str(root / "node-local")}
    (root / "node-local").mkdir()
    t = time.monotonic()
    tree, sq, preamble = _prepare(root, env)
    print(f"built and installed the demo app env in {time.monotonic() - t:.0f} s; starting the cluster")
    cluster = SlurmCluster(root / "slurm").start()
    drop = "sync; echo 3 > /proc/sys/vm/drop_caches"
    try:
        cases = {
            # first, while the tree still has the .pyc files of the archive: none written
            "tree-nowrite": (f". {tree}/activate.sh; export PYTHONDONTWRITEBYTECODE=1", ""),
            "squashfs": (f". {preamble}", ""),
            "tree": (f". {tree}/activate.sh", ""),
            "tree-cold": (f". {tree}/activate.sh", drop),
            "squashfs-cold": (f". {preamble}", drop),
        }
        times = {k: _run_case(cluster, root, k, s, b, rounds, env) for k, (s, b) in cases.items()}
    finally:
        cluster.stop()
    med = {k: statistics.median(v[1:] if k == "squashfs" else v) for k, v in times.items()}
    first = times["squashfs"][0]
    print(f"\nstart-up of python -c 'import {IMPORTS}' inside a job, {rounds} runs each (ms):")
    print(f"  squashfs (node-local mount): first {first:.0f}, median of the rest {med['squashfs']:.0f}")
    print(f"  unpacked tree, warm:         median {med['tree']:.0f}")
    print(f"  unpacked tree, caches dropped: median {med['tree-cold']:.0f}")
    print(f"  squashfs, caches dropped:    median {med['squashfs-cold']:.0f}")
    print(f"  unpacked tree, no .pyc written (as read-only): median {med['tree-nowrite']:.0f}")
    print("ratios:")
    print(f"  squashfs warm / tree warm:            {med['squashfs'] / med['tree']:.2f}")
    print(f"  tree cold / tree warm:                {med['tree-cold'] / med['tree']:.2f}")
    print(f"  tree cold / squashfs warm:            {med['tree-cold'] / med['squashfs']:.2f}")
    print(f"  squashfs cold / tree cold:            {med['squashfs-cold'] / med['tree-cold']:.2f}")
    print(f"  squashfs first run / squashfs warm:   {first / med['squashfs']:.2f}")
    print(f"  squashfs warm / tree no .pyc written: {med['squashfs'] / med['tree-nowrite']:.2f}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
