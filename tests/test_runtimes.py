"""The runtimes GPU clusters use, running what condastack writes: enroot, pyxis under Slurm, Apptainer.

The env is python 3.11, pip and the test channel's `hello` (its binary prints the prefix compiled into
it), packed with --dest-prefix /opt/env. `container --sqsh` puts it on the cached debootstrap Debian
and `--sif` wraps that SquashFS in a SIF. The SquashFS and SIF checks (bytes, siftool) need no runtime
and run everywhere; the runtime tests skip where scripts/runtimes.sh has not installed the runtime
(under $CONDASTACK_RUNTIMES, default /opt/condastack-runtimes).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from condastack.container.sif import DATA_PARTITION, DESCRIPTOR, HEADER
from condastack.container.spec import container_spec
from condastack.container.sqsh import image_definition
from tests.helpers import assert_user_error, run_cli
from tests.slurm_cluster import SlurmCluster, find_pyxis, missing_binaries, runtimes_prefix
from tests.test_container import _debootstrap_tarball, _seed_debian_rootfs, _write_stack

PREFIX = "/opt/env"
LOCK_A, LOCK_B = "a" * 64, "b" * 64
HINT = "run scripts/runtimes.sh"
PROBE = ("import os, sys, pip; print('task', os.environ.get('SLURM_PROCID', '-'), sys.prefix, "
         "os.path.dirname(pip.__file__), os.environ['CONDA_PREFIX'])")


def _runtime(name: str) -> str:
    """The runtime's program from the runtimes prefix (or PATH), else skip naming the script that builds it."""
    exe = runtimes_prefix() / "bin" / name
    found = str(exe) if exe.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed: {HINT} (looked in {runtimes_prefix()}/bin and on PATH)")
    return found


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run scripts/setup.sh (apt-get install squashfs-tools siftool)")


def _install_env(root: Path, channel_url: str, name: str, specs: list[str], lock_hash: str, pkgs: Path) -> Path:
    """An env as `condastack build` leaves it (conda-meta/condastack.info with the lock hash)."""
    import rattler

    prefix = root / "envs" / name
    recs = asyncio.run(rattler.solve([channel_url], specs, platforms=["linux-64", "noarch"]))
    asyncio.run(rattler.install(recs, str(prefix), cache_dir=str(pkgs)))
    (prefix / "conda-meta" / "condastack.info").write_text(json.dumps(
        {"layer": "app", "stack": "demo", "platform": "linux-64", "lock_hash": lock_hash,
         "lockfile": "lock/app.conda-lock.yml", "created_by": "test"}))
    return prefix


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, channel: Path) -> Path:
    """The app layer packed for /opt/env twice: pack/ (lock A) and pack-b/ (lock B, with libfoo added)."""
    from condastack.archive.pack import pack_prefix

    root = _write_stack(tmp_path_factory.mktemp("rt") / "proj", channel.as_uri(), '{__glibc: "2.28"}')
    pkgs = tmp_path_factory.mktemp("pkgs")
    for lock, extra, folder in ((LOCK_A, [], "pack"), (LOCK_B, ["libfoo"], "pack-b")):
        env = _install_env(root, channel.as_uri(), f"app-{folder}", ["hello", "python 3.11.*", "pip", *extra],
                           lock, pkgs)
        pack_prefix(env, root / folder / "app-linux-64.tar.gz", fmt="tar.gz", dest_prefix=PREFIX)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """$CONDASTACK_CACHE holding the Debian rootfs condastack would debootstrap (from the test cache)."""
    folder = tmp_path_factory.mktemp("cache")
    _seed_debian_rootfs(folder, _debootstrap_tarball())
    return {"CONDASTACK_CACHE": str(folder)}


@pytest.fixture(scope="module")
def images(project: Path, cache: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """app.sqsh and app.sif of lock A, and app-b.sqsh of lock B (the env changed)."""
    _need("mksquashfs")
    out = tmp_path_factory.mktemp("img")
    res = run_cli("-C", project, "container", "app", "--sqsh", out / "app.sqsh", "--sif", out / "app.sif", env=cache)
    assert res.returncode == 0, res.output
    assert "Debian bookworm minbase" in res.stdout and f"layer app at {PREFIX}" in res.stdout
    res = run_cli("-C", project, "container", "app", "--archive", project / "pack-b" / "app-linux-64.tar.gz",
                  "--sqsh", out / "app-b.sqsh", env=cache)
    assert res.returncode == 0, res.output
    return {"sqsh": out / "app.sqsh", "sif": out / "app.sif", "sqsh_b": out / "app-b.sqsh"}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cat(image: Path, member: str) -> str:
    return subprocess.run(["unsquashfs", "-cat", str(image), member], capture_output=True, text=True,
                          check=True).stdout


# --------------------------------------------------------------------------- the SquashFS and the SIF (no runtime)


def test_sqsh_is_byte_reproducible_and_carries_env_and_labels(project: Path, cache: dict[str, str],
                                                               images: dict[str, Path], tmp_path: Path) -> None:
    again = tmp_path / "again.sqsh"
    res = run_cli("-C", project, "container", "app", "--sqsh", again, env=cache)
    assert res.returncode == 0, res.output
    assert _sha256(again) == _sha256(images["sqsh"])  # two runs, the same bytes
    assert (tmp_path / "again.sqsh.sha256").read_text().split()[0] == _sha256(again)
    assert _sha256(images["sqsh_b"]) != _sha256(images["sqsh"])
    environment = _cat(again, "etc/environment").splitlines()
    assert f"PATH={PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in environment
    assert f"CONDA_PREFIX={PREFIX}" in environment
    assert f'PATH="{PREFIX}/bin:$PATH"' in _cat(again, "etc/profile.d/condastack.sh")
    record = json.loads(_cat(again, "etc/condastack/labels.json"))
    assert record["lock_hash"] == LOCK_A and record["labels"]["org.condastack.lock-hash"] == LOCK_A
    assert record["prefix"] == PREFIX and record["environment"]["CONDA_PREFIX"] == PREFIX
    assert f"# org.condastack.lock-hash {LOCK_A}" in _cat(again, "etc/rc")
    assert json.loads(_cat(images["sqsh_b"], "etc/condastack/labels.json"))["lock_hash"] == LOCK_B
    assert "Bootstrap: debootstrap" in _cat(again, ".singularity.d/Singularity")
    listing = subprocess.run(["unsquashfs", "-lln", str(again)], capture_output=True, text=True, check=True).stdout
    assert f"squashfs-root{PREFIX}/bin/hello" in listing and "squashfs-root/dev/null" not in listing
    assert all(" 0/0 " in line for line in listing.splitlines() if line.startswith(("-", "d", "l")))  # -all-root


def _siftool(*args: str) -> str:
    p = subprocess.run(["siftool", *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_sif_is_accepted_by_siftool(images: dict[str, Path], project: Path, tmp_path: Path) -> None:
    """Debian's siftool lists the four objects, reads the header and descriptors, and dumps the partition
    as the very bytes of the SquashFS; writing it again gives the same bytes."""
    _need("siftool", "mksquashfs")
    sif = images["sif"]
    listing = _siftool("list", str(sif))
    for kind in ("Def.FILE", "JSON.Labels", "JSON.Generic", "FS (Squashfs/*System/amd64)"):
        assert kind in listing, listing
    header = _siftool("header", str(sif))
    assert "Primary Architecture: amd64" in header and "Descriptors Free:     44" in header
    info = _siftool("info", "4", str(sif))
    assert "Partition Type:   *System" in info and "Filesystem Type:  Squashfs" in info
    part = subprocess.run(["siftool", "dump", "4", str(sif)], capture_output=True, check=True).stdout
    assert part == images["sqsh"].read_bytes()
    labels = json.loads(_siftool("dump", "2", str(sif)))
    assert labels["org.condastack.lock-hash"] == LOCK_A and labels["org.condastack.prefix"] == PREFIX
    inspect = json.loads(_siftool("dump", "3", str(sif)))
    assert inspect["data"]["attributes"]["labels"] == labels and inspect["type"] == "container"
    assert _siftool("dump", "1", str(sif)) == _cat(images["sqsh"], ".singularity.d/Singularity")
    # the layout siftool read, checked against the format's own numbers
    raw = sif.read_bytes()[: 4096 + 4 * DESCRIPTOR.size]
    fields = HEADER.unpack(raw[: HEADER.size])
    assert fields[1] == b"SIF_MAGIC\0" and fields[9] == 4096
    part_descr = DESCRIPTOR.unpack(raw[4096 + 3 * DESCRIPTOR.size: 4096 + 4 * DESCRIPTOR.size])
    assert part_descr[0] == DATA_PARTITION and part_descr[5] % 4096 == 0
    from condastack.container.sif import write_image_sif

    spec = container_spec(project, "app")
    again = write_image_sif(spec, tmp_path / "again.sif", images["sqsh"], _siftool("dump", "1", str(sif)))
    assert again.sha256 == _sha256(sif)


def test_sif_refuses_what_is_not_a_squashfs(project: Path, tmp_path: Path) -> None:
    from condastack.container.sif import write_image_sif
    from condastack.core.errors import CondastackError

    bogus = tmp_path / "x.sqsh"
    bogus.write_bytes(b"not squashfs")
    with pytest.raises(CondastackError, match="not a SquashFS image"):
        write_image_sif(container_spec(project, "app"), tmp_path / "x.sif", bogus, "Bootstrap: scratch\n")
    assert not (tmp_path / "x.sif").exists()


def test_image_refusals_keep_what_is_on_disk(project: Path, tmp_path: Path) -> None:
    """One path for both images, and no base rootfs to be had: exit 1 naming the fix, nothing written."""
    same = tmp_path / "x.img"
    assert_user_error(run_cli("-C", project, "container", "app", "--sqsh", same, "--sif", same), "give two files")
    out = tmp_path / "app.sqsh"
    out.write_bytes(b"old image")
    res = run_cli("-C", project, "container", "app", "--sqsh", out,
                  env={"CONDASTACK_CACHE": str(tmp_path / "empty"), "CONDASTACK_DEBIAN_MIRROR": "http://127.0.0.1:9/d",
                       "PATH": "/nonexistent:" + os.path.dirname(sys.executable) + ":/usr/bin:/bin"})
    assert_user_error(res, "no cached Debian bookworm rootfs", "--sqsh FILE` once as root")
    assert out.read_bytes() == b"old image" and not (tmp_path / "app.sqsh.sha256").exists()


def test_prefix_through_a_symlink_of_the_base_is_refused(project: Path, cache: dict[str, str], tmp_path: Path) -> None:
    """Debian's /var/run is a symlink to /run: extracting through it would write outside the image tree."""
    from condastack.archive.pack import pack_prefix

    archive = project / "pack-var" / "app-linux-64.tar.gz"  # inside the project: Dockerfile.thin's context
    pack_prefix(project / "envs" / "app-pack", archive, fmt="tar.gz", dest_prefix="/var/run/env")
    res = run_cli("-C", project, "container", "app", "--prefix", "/var/run/env", "--archive", archive,
                  "--sqsh", tmp_path / "x.sqsh", env=cache)
    assert_user_error(res, "symlink at /var/run")
    assert not (tmp_path / "x.sqsh").exists() and not Path("/run/env").exists()


# --------------------------------------------------------------------------- enroot


def _enroot_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{Path(_runtime('enroot')).parent}:{os.environ['PATH']}", **extra)
    for kind in ("RUNTIME", "DATA", "CACHE", "CONFIG", "TEMP"):
        (tmp_path / "enroot" / kind.lower()).mkdir(parents=True, exist_ok=True)
        env[f"ENROOT_{kind}_PATH"] = str(tmp_path / "enroot" / kind.lower())
    return env


def _enroot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["enroot", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("login", ["true", "false"])
def test_enroot_runs_the_env_program_and_python(images: dict[str, Path], tmp_path: Path, login: str) -> None:
    """enroot create + start, as a login shell (Debian's /etc/profile resets PATH: profile.d puts the env
    back) and not (then /etc/environment alone sets it); the same container started twice."""
    env = _enroot_env(tmp_path, ENROOT_LOGIN_SHELL=login)
    made = _enroot(env, "create", "-n", "app", str(images["sqsh"]))
    assert made.returncode == 0, made.stderr
    hello = _enroot(env, "start", "app", "hello")
    assert hello.returncode == 0, hello.stderr
    assert f"prefix={PREFIX}\n" in hello.stdout and f"lib={PREFIX}\n" in hello.stdout
    for _ in range(2):  # started twice: the same answer
        py = _enroot(env, "start", "app", "python", "-c", PROBE)
        assert py.returncode == 0, py.stderr
        assert py.stdout.split() == ["task", "-", PREFIX, f"{PREFIX}/lib/python3.11/site-packages/pip", PREFIX]
    which = _enroot(env, "start", "app", "sh", "-c", "command -v python; echo $PATH")
    assert which.stdout.splitlines()[0] == f"{PREFIX}/bin/python", which.stdout
    fail = _enroot(env, "start", "app", "python", "-c", "import sys; sys.exit(3)")
    assert fail.returncode == 3


def test_enroot_image_of_a_changed_env(images: dict[str, Path], tmp_path: Path) -> None:
    """The image of the changed env (lock B, libfoo added) shows the change; a container of the old image,
    created before, still shows the old env."""
    env = _enroot_env(tmp_path)
    for name, image in (("old", images["sqsh"]), ("new", images["sqsh_b"])):
        made = _enroot(env, "create", "-n", name, str(image))
        assert made.returncode == 0, made.stderr
    probe = ("import json, glob; r = json.load(open('/etc/condastack/labels.json')); "
             "print(r['lock_hash'][:1], len(glob.glob('/opt/env/conda-meta/libfoo-*.json')))")
    old = _enroot(env, "start", "old", "python", "-c", probe)
    new = _enroot(env, "start", "new", "python", "-c", probe)
    assert (old.stdout, new.stdout) == ("a 0\n", "b 1\n"), old.stderr + new.stderr
    again = _enroot(env, "start", "old", "python", "-c", probe)
    assert again.stdout == "a 0\n"


# --------------------------------------------------------------------------- pyxis under Slurm


@pytest.fixture(scope="module")
def pyxis_cluster(tmp_path_factory: pytest.TempPathFactory):
    so = find_pyxis()
    if so is None:
        pytest.skip(f"pyxis (spank_pyxis.so) or enroot not installed under {runtimes_prefix()}: {HINT}")
    if missing_binaries():
        pytest.skip(f"Slurm daemons missing: {missing_binaries()}")
    c = SlurmCluster(tmp_path_factory.mktemp("slurm-pyxis"), pyxis=so).start()
    yield c
    c.stop()


def test_pyxis_srun_four_tasks_mounts_and_failure(pyxis_cluster: SlurmCluster, images: dict[str, Path],
                                                  tmp_path: Path) -> None:
    image = f"--container-image={images['sqsh']}"
    four = pyxis_cluster.run("srun", "-n", "4", image, "python", "-c", PROBE, check=False, timeout=300)
    assert four.returncode == 0, four.stderr + pyxis_cluster.logs()
    rows = sorted(four.stdout.splitlines())
    assert rows == [f"task {r} {PREFIX} {PREFIX}/lib/python3.11/site-packages/pip {PREFIX}" for r in range(4)], rows

    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("from the host\n")
    mounted = pyxis_cluster.run("srun", "-n", "1", image, f"--container-mounts={data}:/data:ro",
                                "python", "-c", "print(open('/data/input.txt').read().strip())",
                                check=False, timeout=300)
    assert mounted.returncode == 0 and mounted.stdout == "from the host\n", mounted.stderr

    failed = pyxis_cluster.run("srun", "-n", "1", "--job-name=failing", image, "python", "-c",
                               "import sys; sys.exit(3)", check=False, timeout=300)
    assert failed.returncode == 3, failed.stderr
    assert "Exited with exit code 3" in failed.stderr
    job_id = _job_id_by_name(pyxis_cluster, "failing")
    job = pyxis_cluster.wait(job_id)
    assert job.state == "FAILED" and job.exit_code == "3:0", job  # accounting sees the failed step too


def _job_id_by_name(cluster: SlurmCluster, name: str, timeout: float = 60) -> int:
    """The id of a finished job, once slurmdbd has recorded it (accounting lags the step's exit)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = cluster.run("sacct", "-n", "-X", "-P", f"--name={name}", "-o", "JobID").stdout.split()
        if ids:
            return int(ids[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"sacct never listed job {name!r} in {timeout:.0f} s\n{cluster.logs()}")
        time.sleep(0.5)


# --------------------------------------------------------------------------- Apptainer


def _apptainer(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    exe = _runtime("apptainer")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _runs_env(sif: Path | str, *bind: str) -> None:
    hello = _apptainer("exec", *bind, sif, "hello")
    assert hello.returncode == 0, hello.stderr
    assert f"prefix={PREFIX}\n" in hello.stdout
    py = _apptainer("exec", *bind, sif, "python", "-c", PROBE)
    assert py.returncode == 0, py.stderr
    assert py.stdout.split() == ["task", "-", PREFIX, f"{PREFIX}/lib/python3.11/site-packages/pip", PREFIX]


def test_apptainer_runs_the_directly_written_sif(images: dict[str, Path]) -> None:
    _runs_env(images["sif"])
    run = _apptainer("run", images["sif"], "python", "-c", "import sys; print(sys.prefix)")
    assert run.returncode == 0 and run.stdout == f"{PREFIX}\n", run.stderr
    inspect = _apptainer("inspect", "--json", images["sif"])
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["data"]["attributes"]["labels"]["org.condastack.lock-hash"] == LOCK_A
    assert _apptainer("exec", images["sif"], "python", "-c", "import sys; sys.exit(3)").returncode == 3


def test_apptainer_also_runs_the_sqsh(images: dict[str, Path]) -> None:
    """A bare SquashFS image is an Apptainer image too (its /.singularity.d is read)."""
    _runs_env(images["sqsh"])


def test_apptainer_builds_the_generated_definition(project: Path, cache: dict[str, str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`apptainer build` from pack/app.def, offline: its base is condastack's Debian as a local OCI layout
    (`--base-image oci:DIR:TAG` gives `Bootstrap: oci`)."""
    _runtime("apptainer")
    from condastack.container.baseimage import debian_base

    monkeypatch.setenv("CONDASTACK_CACHE", cache["CONDASTACK_CACHE"])
    base = debian_base("2.28", "linux-64")  # the local OCI layout `container --oci` uses
    definition = tmp_path / "app.def"
    res = run_cli("-C", project, "container", "app", "--base-image", f"oci:{base.ref}", "--apptainer", definition,
                  "-o", tmp_path / "Dockerfile", env=cache)
    assert res.returncode == 0, res.output
    assert "Bootstrap: oci\nFrom: " in definition.read_text()
    built = _apptainer("build", "def.sif", definition.name, cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    _runs_env(tmp_path / "def.sif")


def test_apptainer_builds_from_the_oci_archive(project: Path, cache: dict[str, str], tmp_path: Path) -> None:
    _runtime("apptainer")
    oci = tmp_path / "app.oci.tar"
    res = run_cli("-C", project, "container", "app", "--oci", oci, env=cache)
    assert res.returncode == 0, res.output
    built = _apptainer("build", tmp_path / "oci.sif", f"oci-archive:{oci}")
    assert built.returncode == 0, built.stdout + built.stderr
    _runs_env(tmp_path / "oci.sif")


def test_apptainer_run_bind_squashfs_env_as_the_install_docs_say(project: Path, images: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    """README: `install` of a SquashFS archive prints the `apptainer ... --bind IMG:PREFIX:image-src=/` line;
    run with it, the container's python is the env's from the image, at the site prefix."""
    _runtime("apptainer")
    from condastack.archive.pack import pack_prefix

    site = tmp_path / "sw" / "app"
    archive = tmp_path / "app-linux-64.squashfs"
    pack_prefix(project / "envs" / "app-pack", archive, fmt="squashfs", dest_prefix=str(site))
    res = run_cli("install", archive, "--prefix", site)
    assert res.returncode == 0, res.output
    line = next(x for x in res.output.splitlines() if "image-src=/" in x).strip()
    bind = next(w for w in line.split() if w.endswith(":image-src=/"))
    ran = _apptainer("run", "--bind", bind, images["sif"], f"{site}/bin/python", "-c",
                     "import sys, pip; print(sys.prefix, pip.__file__)")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [str(site), f"{site}/lib/python3.11/site-packages/pip/__init__.py"]


def test_image_definition_is_what_the_sif_and_image_hold(project: Path, images: dict[str, Path]) -> None:
    spec = container_spec(project, "app")
    text = image_definition(spec, "bookworm", spec.archive.path.parent)
    assert text == _cat(images["sqsh"], ".singularity.d/Singularity")
    assert "Include: zstd" not in text and "tar -xzf" in text
