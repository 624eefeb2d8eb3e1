"""Cluster delivery under a real Slurm: jobs submitted with sbatch to a real slurmctld, checked
through sacct (slurmdbd) and their output files.

The command lines come word for word from the README's "Running on a cluster" section; only
/shared (the cluster's shared file system) is mapped to a folder of this test, in the lines and in
the defaults of examples/slurm/job.sh (the test submits a copy with that one substitution).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, demo_project
from tests.slurm_cluster import SlurmCluster, missing_binaries

pytestmark = [
    pytest.mark.skipif(bool(missing_binaries()), reason=f"Slurm/munge/MariaDB not installed ({missing_binaries()}): "
                       "apt-get install slurm-wlm munge slurmdbd mariadb-server (scripts/setup.sh does)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test cluster's slurmd must run as root"),
    pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK) or shutil.which("squashfuse") is None,
                       reason="squashfuse or /dev/fuse not available"),
]


def readme_blocks() -> list[list[str]]:
    """The untagged ``` blocks of the README's "Running on a cluster" section, as command lines."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Running on a cluster\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    return [[ln for ln in b.strip().splitlines() if ln.strip()] for b in re.findall(r"\n```\n(.*?)\n```", section,
                                                                                    re.S)]


@dataclass
class Site:
    """A login node's view: the project, the shared file system, PATH with condastack and sbatch."""

    cluster: SlurmCluster
    project: Path
    shared: Path
    node_dir: Path  # node-local storage for sbcast copies
    examples: Path  # examples/slurm/ with /shared mapped
    env: dict[str, str]

    def sh(self, line: str, *, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        line = line.replace("/shared/", f"{self.shared}/").replace("examples/slurm/", f"{self.examples}/")
        p = subprocess.run(["bash", "-c", f"set -eo pipefail; {line}"], cwd=self.project, capture_output=True,
                           text=True, env={**self.env, **(extra or {})}, timeout=300)
        assert p.returncode == 0, f"{line}\n{p.stdout}\n{p.stderr}"
        return p

    def submit(self, line: str, *, extra: dict[str, str] | None = None) -> int:
        out = self.sh(line, extra=extra).stdout
        m = re.search(r"Submitted batch job (\d+)", out)
        assert m, out
        return int(m.group(1))

    def output(self, job_id: int) -> str:
        return (self.project / f"verl-app-{job_id}.out").read_text()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The cluster, starting in the background: `delivered` builds the env meanwhile, then waits for it."""
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    with ThreadPoolExecutor(1) as pool:
        c.starting = pool.submit(c.start)
        yield c
        c.starting.exception()  # let a start still under way finish before stopping
    c.stop()


@pytest.fixture(scope="module")
def site(cluster: SlurmCluster, channel: Path, tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("site")
    project = root / "proj"
    demo_project(project, channel)
    bindir = root / "bin"
    bindir.mkdir()
    (bindir / "condastack").symlink_to(Path(sys.executable).parent / "condastack")
    (root / "node-local").mkdir()
    examples = root / "examples" / "slurm"
    examples.mkdir(parents=True)
    job = (REPO / "examples" / "slurm" / "job.sh").read_text()
    (examples / "job.sh").write_text(job.replace("/shared/", f"{root / 'shared'}/"))
    env = {"PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(root), "USER": "root", "LANG": "C.UTF-8",
           "SLURM_CONF": str(cluster.conf), "CONDASTACK_PKGS": str(root / "pkgs"),
           "CONDASTACK_NODE_DIR": str(root / "node-local"),
           # This node has no GPU driver; the demo stack needs __cuda 12.6, as a GPU node's driver gives.
           "CONDA_OVERRIDE_CUDA": "12.6"}
    return Site(cluster, project, root / "shared", root / "node-local", examples, env)


@pytest.fixture(scope="module")
def delivered(site: Site) -> Site:
    """Block 1 of the README up to sbatch: build, pack, install, module."""
    for line in readme_blocks()[0][:-1]:
        site.sh(line)
    site.cluster.starting.result()
    return site


def _lock(prefix: Path) -> str:
    return json.loads((prefix / "conda-meta" / "condastack.info").read_text())["lock_hash"]


# --------------------------------------------------------------------------- the documented job path


def test_documented_job_path_module_doctor_program(delivered: Site) -> None:
    site, prefix = delivered, delivered.shared / "envs" / "verl" / "app"
    job = site.submit(readme_blocks()[0][-1])
    res = site.cluster.wait(job)
    out = site.output(job)
    assert (res.state, res.exit_code) == ("COMPLETED", "0:0"), out
    assert res.steps.get("batch") == "COMPLETED" and res.steps.get("0") == "COMPLETED", res
    assert "all checks passed" in out  # condastack doctor ran on the node
    assert f"running in {prefix}\n" in out  # the env's python, first on PATH after `module load`

    # On a node whose driver is too old the job stops at doctor, before the program, and fails.
    bad = site.submit(readme_blocks()[0][-1], extra={"CONDA_OVERRIDE_CUDA": "11.8"})
    res = site.cluster.wait(bad)
    out = site.output(bad)
    assert (res.state, res.exit_code) == ("FAILED", "1:0"), out
    assert "cannot run" in out and "running in" not in out and "0" not in res.steps


# --------------------------------------------------------------------------- node-local SquashFS, 4 tasks

TRAIN = """\
import os, pathlib, sys, time
rank, n = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
prefix = os.environ["CONDA_PREFIX"]
fstype = next((ln.split(" - ")[1].split()[0] for ln in open("/proc/self/mountinfo") if ln.split()[4] == prefix), "-")
served = "-"  # the file the squashfuse (or the kernel's loop device) serving the prefix reads
source = next((ln.split(" - ")[1].split()[1] for ln in open("/proc/self/mountinfo") if ln.split()[4] == prefix), "-")
if source.startswith("/dev/loop"):
    served = open(f"/sys/block/{source[5:]}/loop/backing_file").read().strip().removesuffix(" (deleted)")
for cmd in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
    try:
        args = cmd.read_bytes().split(b"\\0")
    except OSError:
        continue
    if args and b"squashfuse" in args[0] and prefix.encode() in args:
        served = args[args.index(prefix.encode()) - 1].decode()
# all tasks wait for each other: they run the env's python at the same time
barrier = pathlib.Path(f"barrier-{os.environ['SLURM_JOB_ID']}")
barrier.mkdir(exist_ok=True)
(barrier / str(rank)).touch()
give_up = time.monotonic() + 60
while len(list(barrier.iterdir())) < n and time.monotonic() < give_up:
    time.sleep(0.05)
print(f"task {rank}/{n} python={sys.executable} fs={fstype} image={served} together={len(list(barrier.iterdir()))}")
"""


def test_node_local_squashfs_preamble_with_4_tasks(delivered: Site) -> None:
    site = delivered
    block = readme_blocks()[1]
    for line in block[:-1]:  # pack the image, install it beside its prefix, write the preamble
        site.sh(line)
    prefix = site.shared / "envs" / "verl" / "app-sq"
    (site.project / "train.py").write_text(TRAIN)
    fuse = "squashfuse_ll" if shutil.which("squashfuse_ll") else "squashfuse"
    # a root job gets the kernel's squashfs where it can mount one; CONDASTACK_MOUNT=fuse, squashfuse
    for extra in ({}, {"CONDASTACK_MOUNT": "fuse"}):
        job = site.submit(block[-1], extra=extra)
        res = site.cluster.wait(job)
        out = site.output(job)
        assert (res.state, res.exit_code) == ("COMPLETED", "0:0"), out
        assert "all checks passed" in out
        local = f"{site.node_dir}/condastack-{job}-app-sq.squashfs"
        tasks = sorted(ln for ln in out.splitlines() if ln.startswith("task "))
        kernel = "mounted by the kernel (squashfs on a loop device)" in out
        assert kernel == (not extra and os.geteuid() == 0 and "squashfs" in Path("/proc/filesystems").read_text()
                          and Path("/dev/loop-control").exists()), out
        assert kernel or f"mounted by {fuse}" in out, out
        assert "error" not in out, out  # the mounting step ends quietly too
        assert tasks == [f"task {r}/4 python={prefix}/bin/python fs={'squashfs' if kernel else 'fuse.' + fuse} "
                         f"image={local} together=4" for r in range(4)], out
        # unmounted and the node-local copy deleted at the end
        assert not os.path.ismount(prefix) and list(site.node_dir.iterdir()) == []

    # A failing job: it fails with the program's exit code, and the trap still unmounts.
    bad = site.submit(block[-1].replace("python train.py", "python -c 'import sys; sys.exit(3)'"))
    res = site.cluster.wait(bad)
    assert (res.state, res.exit_code) == ("FAILED", "3:0"), site.output(bad)
    assert not os.path.ismount(prefix) and list(site.node_dir.iterdir()) == []

    # A cancelled job: squashfuse unmounts on Slurm's SIGTERM; the unlinked copy goes with it.
    long = site.submit(block[-1].replace("python train.py", "python -c 'import time; time.sleep(600)'"))
    give_up = time.monotonic() + 120
    while not (os.path.ismount(prefix) and list(site.node_dir.iterdir()) == []) and time.monotonic() < give_up:
        time.sleep(0.1)
    # mounted, and the copy already unlinked
    assert os.path.ismount(prefix) and list(site.node_dir.iterdir()) == [], site.output(long)
    site.cluster.run("scancel", str(long))
    res = site.cluster.wait(long)
    assert res.state == "CANCELLED", res
    # sacct says CANCELLED once Slurm has signalled the step; squashfuse then unmounts as it exits,
    # which takes a moment on a loaded node: wait for it (nobody else unmounts it)
    give_up = time.monotonic() + 60
    while os.path.ismount(prefix) and time.monotonic() < give_up:
        time.sleep(0.1)
    assert not os.path.ismount(prefix)


# --------------------------------------------------------------------------- a delta image over its parent's

OVERLAY = """\
import os, pathlib, subprocess, sys, time
rank, n = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
prefix = os.environ["CONDA_PREFIX"]
fstype = next((ln.split(" - ")[1].split()[0] for ln in open("/proc/self/mountinfo") if ln.split()[4] == prefix), "-")
hello = subprocess.run([prefix + "/bin/hello"], capture_output=True, text=True).stdout.splitlines()[0]
note = os.path.exists(prefix + "/share/site-note.txt")  # base's, removed by app: hidden by the whiteout
if rank == 0:
    v = subprocess.run(["condastack", "verify", "--prefix", prefix], capture_output=True, text=True)
    print(f"verify rc={v.returncode} {v.stdout.strip().splitlines()[-1]}")
barrier = pathlib.Path(f"barrier-{os.environ['SLURM_JOB_ID']}")
barrier.mkdir(exist_ok=True)
(barrier / str(rank)).touch()
give_up = time.monotonic() + 60
while len(list(barrier.iterdir())) < n and time.monotonic() < give_up:
    time.sleep(0.05)
print(f"task {rank}/{n} python={sys.executable} fs={fstype} {hello} note={note} together={len(list(barrier.iterdir()))}")
"""


def _fuse_mounts(*under: Path) -> list[str]:
    return [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()
            if any(ln.split()[1].startswith(str(u)) for u in under)]


def test_delta_squashfs_over_its_parent_with_4_tasks(delivered: Site) -> None:
    """app's delta image mounted over base's with fuse-overlayfs: 4 tasks see the whole app env, verify passes
    on the merged view, and every mount goes at exit, on failure and on cancel."""
    if shutil.which("fuse-overlayfs") is None:
        pytest.skip("fuse-overlayfs not installed: apt-get install fuse-overlayfs (scripts/setup.sh does)")
    site = delivered
    prefix = site.shared / "envs" / "verl" / "app-ov"
    site.sh("condastack build base")
    (site.project / "envs" / "base" / "share" / "site-note.txt").write_text("only in base\n")
    site.sh("condastack pack base --format squashfs --dest-prefix /shared/envs/verl/app-ov")
    site.sh("condastack pack app --over base --format squashfs --dest-prefix /shared/envs/verl/app-ov")
    delta, base = (site.project / "pack" / f"{n}-linux-64.squashfs" for n in ("app-over-base", "base"))
    assert delta.stat().st_size * 20 < base.stat().st_size
    site.sh(f"condastack slurm-preamble {delta} --base {base} -o /shared/envs/verl/app-ov.preamble.sh")
    (site.project / "overlay.py").write_text(OVERLAY)
    sbatch = "ENV_MODE=squashfs ENV_PREFIX=/shared/envs/verl/app-ov sbatch -n 4 examples/slurm/job.sh python overlay.py"
    job = site.submit(sbatch)
    res = site.cluster.wait(job)
    out = site.output(job)
    assert (res.state, res.exit_code) == ("COMPLETED", "0:0"), out
    tasks = sorted(ln for ln in out.splitlines() if ln.startswith("task "))
    assert tasks == [f"task {r}/4 python={prefix}/bin/python fs=fuse.fuse-overlayfs prefix={prefix} note=False "
                     "together=4" for r in range(4)], out
    assert "verify rc=0 ok: the environment matches its lock" in out
    assert _fuse_mounts(prefix, site.node_dir) == [] and list(site.node_dir.iterdir()) == []

    bad = site.submit(sbatch.replace("python overlay.py", "python -c 'import sys; sys.exit(3)'"))
    res = site.cluster.wait(bad)
    assert (res.state, res.exit_code) == ("FAILED", "3:0"), site.output(bad)
    assert _fuse_mounts(prefix, site.node_dir) == [] and list(site.node_dir.iterdir()) == []

    long = site.submit(sbatch.replace("python overlay.py", "python -c 'import time; time.sleep(600)'"))
    give_up = time.monotonic() + 120
    while len(_fuse_mounts(prefix, site.node_dir)) < 3 and time.monotonic() < give_up:
        time.sleep(0.1)
    assert len(_fuse_mounts(prefix, site.node_dir)) == 3, site.output(long)  # the merge and both images
    site.cluster.run("scancel", str(long))
    res = site.cluster.wait(long)
    assert res.state == "CANCELLED", res
    give_up = time.monotonic() + 30
    while (_fuse_mounts(prefix, site.node_dir) or list(site.node_dir.iterdir())) and time.monotonic() < give_up:
        time.sleep(0.1)
    assert _fuse_mounts(prefix, site.node_dir) == [] and list(site.node_dir.iterdir()) == []


# --------------------------------------------------------------------------- install under a running job

HOLD = """\
import json, os, pathlib, sys, time
prefix = os.environ["CONDA_PREFIX"]
held = open(os.path.join(prefix, "conda-meta", "condastack.info"))  # opened before the install

def tree() -> str:
    # one lookup of the prefix path, then everything relative to that tree: a consistent view
    try:
        fd = os.open(prefix, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return "missing"
    try:
        meta = os.open("conda-meta", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        lock = json.loads(os.read(os.open("condastack.info", os.O_RDONLY, dir_fd=meta), 1 << 16))["lock_hash"]
        foo = ",".join(sorted(n for n in os.listdir(meta) if n.startswith("libfoo-")))
        python = os.path.exists(os.path.join(f"/proc/self/fd/{fd}", "bin", "python"))
        return f"{lock[:12]}:{foo}:python={python}"
    finally:
        os.close(fd)

ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
seen = [tree()]
ready.with_suffix(".tmp").write_text(seen[0])
ready.with_suffix(".tmp").rename(ready)  # whole, or not there yet
while True:
    now = tree()
    if now != seen[-1]:
        seen.append(now)
    if go.exists():
        break
    time.sleep(0.005)
print("held", json.load(held)["lock_hash"])
# the interpreter still running is the old one, whose files the install has since removed
print("exe", os.readlink("/proc/self/exe"))
print("seen", " ".join(seen))
"""


def _wait_file(path: Path, site: Site, job: int) -> None:
    give_up = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > give_up:
            pytest.fail(f"job {job} never got ready\n{site.cluster.logs()}")
        time.sleep(0.1)


def test_install_of_a_new_archive_under_a_running_job(delivered: Site, tmp_path: Path) -> None:
    site, prefix = delivered, delivered.shared / "envs" / "verl" / "app"
    install_line, sbatch_line = readme_blocks()[0][1], readme_blocks()[0][-1]
    # A new release (libfoo pinned back to 1.*), built by the same README line in a copy of the project.
    v2 = tmp_path / "proj-v2"
    shutil.copytree(site.project / "environments", v2 / "environments", symlinks=True)
    base = v2 / "environments" / "base.yml"
    base.write_text(base.read_text().replace("  - libfoo\n", "  - libfoo 1.*\n"))
    p = subprocess.run(["bash", "-c", readme_blocks()[0][0]], cwd=v2, env=site.env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    old_lock, new_lock = _lock(prefix), _lock(v2 / "envs" / "app")
    assert old_lock != new_lock
    old, new = (f"{_lock(p)[:12]}:{','.join(x.name for x in p.glob('conda-meta/libfoo-*'))}:python=True"
                for p in (prefix, v2 / "envs" / "app"))
    assert "libfoo-1.0" in new and "libfoo-1.0" not in old

    (site.project / "hold.py").write_text(HOLD)
    ready, go = tmp_path / "ready", tmp_path / "go"
    job = site.submit(sbatch_line.replace("job.sh", f"job.sh python hold.py {ready} {go}", 1))
    _wait_file(ready, site, job)
    assert ready.read_text() == old
    site.sh(install_line.replace("pack/", f"{v2}/pack/"))  # while the job runs
    go.touch()
    res = site.cluster.wait(job)
    out = site.output(job)
    assert (res.state, res.exit_code) == ("COMPLETED", "0:0"), out
    assert f"held {old_lock}\n" in out  # it finished on the old files
    assert re.search(r"^exe .*/bin/python3\.\d+ \(deleted\)$", out, re.M), out
    assert f"seen {old} {new}\n" in out  # the path named a whole old tree, then a whole new one: no mix

    nxt = site.submit(sbatch_line.replace(
        "job.sh", "job.sh python -c 'import json, sys; print(\"lock\", json.load(open(sys.prefix + "
        "\"/conda-meta/condastack.info\"))[\"lock_hash\"])'", 1))
    res = site.cluster.wait(nxt)
    out = site.output(nxt)
    assert (res.state, res.exit_code) == ("COMPLETED", "0:0"), out
    assert f"lock {new_lock}\n" in out


# --------------------------------------------------------------------------- the preamble refuses bad input


def test_preamble_refuses_what_it_cannot_mount(delivered: Site, tmp_path: Path) -> None:
    from tests.helpers import assert_user_error, run_cli

    site = delivered
    image = site.shared / "envs" / "verl" / "app-sq.squashfs"
    if not image.exists():
        for line in readme_blocks()[1][:2]:
            site.sh(line)
    assert_user_error(run_cli("slurm-preamble", site.project / "pack" / "app-linux-64.tar.zst"),
                      "needs a SquashFS image")
    assert_user_error(run_cli("slurm-preamble", image, "--prefix", tmp_path / "elsewhere"),
                      "can only be mounted there")
    bad = tmp_path / image.name
    for suffix in ("", ".sha256", ".manifest.json"):
        shutil.copy(f"{image}{suffix}", f"{bad}{suffix}")
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert_user_error(run_cli("slurm-preamble", bad, "-o", tmp_path / "p.sh"), "sha256 mismatch")
    assert not (tmp_path / "p.sh").exists()

    # Sourced outside a job it stops before touching anything.
    pre = tmp_path / "ok.sh"
    assert run_cli("slurm-preamble", image, "-o", pre).returncode == 0
    env = {k: v for k, v in site.env.items() if k != "SLURM_CONF"}
    p = subprocess.run(["bash", "-c", f". {pre}; echo still-here"], capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "inside a Slurm job" in p.stderr and "still-here" not in p.stdout
    assert not os.path.ismount(image.with_suffix("")) and list(site.node_dir.iterdir()) == []
