"""Start-up time of the env's python inside a Slurm job: node-local SquashFS vs unpacked tree.

    python bench/slurm_startup.py [ROUNDS]

Starts the single-node test cluster of tests/slurm_cluster.py, builds the demo stack's `app`
layer on the offline test channel (python 3.11 + C libraries), installs it twice under one
"shared" folder: unpacked (tar.zst, `condastack install`) and as a SquashFS image with its
`condastack slurm-preamble`. Then, in one sbatch job per case, it times ROUNDS (default 7)
runs of `python -c 'import <the env's main modules>'`:

  squashfs    from the node-local mount the preamble makes (sbcast copy; the kernel's squashfs
              where the job is root), the first run after the mount and the median of the rest;
  fuse, fuse-cold  the same with CONDASTACK_MOUNT=fuse (squashfuse_ll, as a non-root job gets it);
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

    python bench/slurm_startup.py --runtimes [ROUNDS]

The container runtimes against the same env, on the test cluster with pyxis loaded (scripts/runtimes.sh):
one job per path, each running ROUNDS job steps `srun -n 1 ... python -c 'import <modules>'`, each step
timed from the batch script (so srun's own cost is in every figure), and reported as the median step
and as a ratio to the unpacked tree:

  tree           the unpacked tree (`condastack install`), activate.sh;
  squashfs       the `slurm-preamble` path: sbcast + squashfuse mount once per job (its time is shown
                 apart), then plain steps;
  pyxis          `srun --container-image=app.sqsh` (`container --sqsh`): pyxis's default, `enroot create`
                 unsquashes the image for every step;
  pyxis-fuse     the same with pyxis's `use_squashfuse=1` (plugstack.conf): the image is mounted, not unpacked;
  apptainer      `srun apptainer exec app.sif` (`container --sif`), where Apptainer is installed.

The test python's sqlite3 and ssl modules load the host's libsqlite3/libssl, which a minimal Debian image
lacks, so these imports leave those two out (the same program on every path).
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
    mounted = [ln for ln in text.splitlines() if "mounted by" in ln]
    print(f"  {name:14s} {text.splitlines()[-1]} {mounted[0].split(': ', 2)[-1] if mounted else ''}")
    return [int(line.split()[2]) / 1e3 for line in text.splitlines() if line.startswith("t ")]


CONTAINER_IMPORTS = ", ".join(m for m in IMPORTS.split(", ") if m not in ("sqlite3", "ssl"))

STEP_JOB = """#!/bin/bash
#SBATCH --output={out}
set -euo pipefail
t0=$(date +%s%N)
{setup}
t1=$(date +%s%N); echo "setup $(( (t1 - t0) / 1000 ))"
for i in $(seq {rounds}); do
    t0=$(date +%s%N)
    srun -n 1 {srun_opts} {launcher} python -c 'import {imports}; import sys; print(sys.prefix)' >/dev/null
    t1=$(date +%s%N); echo "t $i $(( (t1 - t0) / 1000 ))"
done
"""


def _runtimes_prepare(root: Path, env: dict[str, str]) -> dict[str, Path]:
    tree, sq, preamble = _prepare(root, env)
    proj = root / "proj"
    _cli("pack", "app", "--format", "tar.gz", "--dest-prefix", "/opt/env", cwd=proj, env=env)
    img = root / "shared" / "images"
    _cli("container", "app", "--sqsh", str(img / "app.sqsh"), "--sif", str(img / "app.sif"), cwd=proj, env=env)
    return {"tree": tree, "sq": sq, "preamble": preamble, "sqsh": img / "app.sqsh", "sif": img / "app.sif"}


def _step_case(cluster: SlurmCluster, root: Path, name: str, setup: str, srun_opts: str, launcher: str,
               rounds: int, env: dict[str, str]) -> tuple[float, list[float]]:
    out, script = root / f"{name}.out", root / f"{name}.sh"
    script.write_text(STEP_JOB.format(out=out, setup=setup or ":", rounds=rounds, srun_opts=srun_opts,
                                      launcher=launcher, imports=CONTAINER_IMPORTS))
    job = cluster.sbatch(str(script), env=env, cwd=root)
    res = cluster.wait(job, timeout=1800)
    text = out.read_text()
    if res.state != "COMPLETED":
        raise SystemExit(f"{name}: job {job} {res.state} {res.exit_code}\n{text}\n{cluster.logs()}")
    setup_ms = next(int(line.split()[1]) / 1e3 for line in text.splitlines() if line.startswith("setup "))
    steps = [int(line.split()[2]) / 1e3 for line in text.splitlines() if line.startswith("t ")]
    print(f"  {name:11s} setup {setup_ms:7.0f} ms, steps (ms): {' '.join(f'{t:.0f}' for t in steps)}")
    return setup_ms, steps


def runtimes_main(rounds: int) -> None:
    from slurm_cluster import find_pyxis, runtimes_prefix

    pyxis = find_pyxis()
    if pyxis is None:
        raise SystemExit(f"pyxis/enroot not installed under {runtimes_prefix()}: run scripts/runtimes.sh")
    apptainer = runtimes_prefix() / "bin" / "apptainer"
    root = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root), "LANG": "C.UTF-8",
           "CONDASTACK_PKGS": str(root / "pkgs"), "CONDASTACK_NODE_DIR": str(root / "node-local"),
           "CONDASTACK_CACHE": str(root / "cache"), "CONDA_OVERRIDE_CUDA": "12.6"}
    (root / "node-local").mkdir()
    seed = default_cache_dir() / "debootstrap-bookworm-minbase-v1.tar.zst"  # the tests' debootstrap, if made
    if seed.is_file():
        (root / "cache" / "rootfs").mkdir(parents=True)
        os.link(seed, root / "cache" / "rootfs" / "debian-bookworm-amd64-minbase.tar.zst")
    t = time.monotonic()
    p = _runtimes_prepare(root, env)
    print(f"built the demo app env, its installs and images in {time.monotonic() - t:.0f} s; starting the cluster")
    cluster = SlurmCluster(root / "slurm", pyxis=pyxis).start()
    image = f"--container-image={p['sqsh']}"
    cases = [("tree", f". {p['tree']}/activate.sh", "", ""),
             ("squashfs", f". {p['preamble']}", "", ""),
             ("pyxis", "", image, "")]
    results: dict[str, tuple[float, list[float]]] = {}
    try:
        for name, setup, opts, launcher in cases:
            results[name] = _step_case(cluster, root, name, setup, opts, launcher, rounds, env)
        # pyxis's use_squashfuse=1: slurmstepd reads plugstack.conf at each step
        conf = cluster.root / "etc" / "plugstack.conf"
        conf.write_text(conf.read_text().rstrip("\n") + " use_squashfuse=1\n")
        results["pyxis-fuse"] = _step_case(cluster, root, "pyxis-fuse", "", image, "", rounds, env)
        if apptainer.is_file():
            results["apptainer"] = _step_case(cluster, root, "apptainer", "", "", f"{apptainer} exec {p['sif']}",
                                              rounds, env)
        else:
            print(f"  apptainer   not installed ({apptainer}): not measured")
    finally:
        cluster.stop()
    tree = statistics.median(results["tree"][1])
    print(f"\none job step `srun -n 1 ... python -c 'import {CONTAINER_IMPORTS}'`, {rounds} steps per path:")
    print(f"  {'path':11s} {'first':>7s} {'median':>7s} {'ratio':>6s}  (ms; ratio = median / tree median)")
    for name, (setup_ms, steps) in results.items():
        med = statistics.median(steps)
        extra = f"  + {setup_ms:.0f} ms once per job (preamble)" if name == "squashfs" else ""
        print(f"  {name:11s} {steps[0]:7.0f} {med:7.0f} {med / tree:6.2f}{extra}")
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--runtimes":
        runtimes_main(int(sys.argv[2]) if len(sys.argv) > 2 else 5)
        return
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
            # the preamble's FUSE path (squashfuse_ll), as a job that is not root gets it
            "fuse": (f"export CONDASTACK_MOUNT=fuse; . {preamble}", ""),
            "fuse-cold": (f"export CONDASTACK_MOUNT=fuse; . {preamble}", drop),
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
    print(f"  FUSE (squashfuse_ll) warm / tree warm: {med['fuse'] / med['tree']:.2f}")
    print(f"  FUSE cold / tree cold:                 {med['fuse-cold'] / med['tree-cold']:.2f}")
    print(f"  load average at the end: {os.getloadavg()}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
