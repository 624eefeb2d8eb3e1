"""Write the runtime transcripts in this folder: the demo stack's app layer run by enroot, pyxis and Apptainer.

    python examples/runtimes/transcripts.py [OUT_DIR]      (as root; default: this folder)

Builds the bundled demo stack (examples/demo, on the offline test channel) with the condastack CLI as a
user would: lock, build, `pack app --format tar.gz --dest-prefix /opt/env`, then
`container app --sqsh app.sqsh --sif app.sif --oci app.oci.tar`. Then it runs, each command echoed with
its output and exit status:

  enroot.txt     enroot create + start: the env's program and python, twice, and a failing program;
  pyxis.txt      the test Slurm cluster with pyxis loaded (tests/slurm_cluster.py): srun -n 4
                 --container-image=app.sqsh, --container-mounts, a failing step;
  apptainer.txt  apptainer build from the .def and from oci-archive:, exec of the directly written SIF
                 (only where scripts/runtimes.sh installed Apptainer; otherwise it says so);
  siftool.txt    siftool list/header/info of the directly written SIF;
  build.txt      the condastack commands that made the images.

The runtimes come from $CONDASTACK_RUNTIMES (default /opt/condastack-runtimes, scripts/runtimes.sh).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from tests.channel.testchannel import build_test_channel, default_cache_dir  # noqa: E402
from tests.slurm_cluster import SlurmCluster, find_pyxis, runtimes_prefix  # noqa: E402

PROBE = ('import os, sys, json, pip; print("task", os.environ.get("SLURM_PROCID", "-"), "python", '
         'sys.version.split()[0], "prefix", sys.prefix, "pip from", os.path.dirname(pip.__file__))')


class Transcript:
    def __init__(self, path: Path, env: dict[str, str], cwd: Path, hide: dict[str, str]) -> None:
        self.path, self.env, self.cwd, self.hide = path, env, cwd, hide
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(f"# {text}")

    def run(self, argv: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> int:
        shown = " ".join(shlex.quote(a) for a in argv)
        t = time.monotonic()
        p = subprocess.run(argv, cwd=self.cwd, env=env or self.env, capture_output=True, text=True, timeout=timeout)
        out = (p.stdout + p.stderr).rstrip("\n")
        status = f"[exit {p.returncode}, {time.monotonic() - t:.1f} s]"
        self.lines += [f"$ {shown}", *([out] if out else []), status, ""]
        return p.returncode

    def save(self) -> None:
        text = "\n".join(self.lines) + "\n"
        for real, shown in self.hide.items():
            text = text.replace(real, shown)
        self.path.write_text(text)


def _prepare(work: Path, env: dict[str, str], t: Transcript) -> Path:
    proj = work / "proj"
    shutil.copytree(REPO / "examples" / "demo" / "environments", proj / "environments")
    (proj / "environments" / "channel").symlink_to(build_test_channel(default_cache_dir()))
    t.cwd = proj
    cs = "condastack"  # the venv's, first on PATH
    for args in (["lock"], ["build", "app"], ["pack", "app", "--format", "tar.gz", "--dest-prefix", "/opt/env"],
                 ["container", "app", "--sqsh", "app.sqsh", "--sif", "app.sif", "--oci", "app.oci.tar"]):
        if t.run([cs, *args]) != 0:
            t.save()
            raise SystemExit(f"condastack {' '.join(args)} failed: see {t.path}")
    return proj


def _enroot(t: Transcript, work: Path, runtimes: Path) -> None:
    env = dict(t.env, PATH=f"{runtimes}/bin:{t.env['PATH']}")
    for kind in ("RUNTIME", "DATA", "CACHE", "CONFIG", "TEMP"):
        (work / "enroot" / kind.lower()).mkdir(parents=True, exist_ok=True)
        env[f"ENROOT_{kind}_PATH"] = str(work / "enroot" / kind.lower())
    t.note(f"enroot {subprocess.run(['enroot', 'version'], env=env, capture_output=True, text=True).stdout.strip()}"
           f" ({runtimes}/bin), ENROOT_*_PATH under a scratch folder, as root")
    t.run(["enroot", "create", "-n", "app", "app.sqsh"], env=env)
    t.run(["enroot", "start", "app", "hello"], env=env)
    t.run(["enroot", "start", "app", "sh", "-c", "command -v python; echo CONDA_PREFIX=$CONDA_PREFIX"], env=env)
    for _ in range(2):
        t.run(["enroot", "start", "app", "python", "-c", PROBE], env=env)
    t.run(["enroot", "start", "app", "cat", "/etc/condastack/labels.json"], env=env)
    t.run(["enroot", "start", "app", "python", "-c", "import sys; sys.exit(3)"], env=env)
    t.run(["enroot", "remove", "-f", "app"], env=env)


def _pyxis(t: Transcript, work: Path, proj: Path) -> None:
    so = find_pyxis()
    if so is None:
        t.note(f"pyxis not installed under {runtimes_prefix()}: run scripts/runtimes.sh")
        return
    cluster = SlurmCluster(work / "slurm", pyxis=so).start()
    try:
        t.env = cluster.env()
        t.note(f"test Slurm cluster with `required {so} runtime_path=...` in plugstack.conf")
        image = f"--container-image={proj / 'app.sqsh'}"
        t.run(["srun", "-n", "4", image, "python", "-c", PROBE])
        t.run(["srun", "-n", "4", image, "hello"])
        data = work / "data"
        data.mkdir()
        (data / "input.txt").write_text("data from the host\n")
        t.run(["srun", "-n", "1", image, f"--container-mounts={data}:/data:ro", "python", "-c",
               "print(open('/data/input.txt').read().strip())"])
        t.run(["srun", "-n", "1", image, "python", "-c", "import sys; sys.exit(3)"])
    finally:
        cluster.stop()


def _apptainer(t: Transcript, proj: Path, runtimes: Path) -> None:
    exe = runtimes / "bin" / "apptainer"
    if not exe.is_file():
        t.note(f"Apptainer is not installed under {runtimes} (scripts/runtimes.sh could not build it here: see "
               "examples/runtimes/BUILD.md); the SIF is checked with siftool instead (siftool.txt).")
        return
    t.run([str(exe), "--version"])
    t.run([str(exe), "build", "def.sif", "pack/app.def"])
    t.run([str(exe), "build", "oci.sif", "oci-archive:app.oci.tar"])
    for sif in ("def.sif", "oci.sif", "app.sif"):
        t.run([str(exe), "exec", sif, "hello"])
        t.run([str(exe), "exec", sif, "python", "-c", PROBE])


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    work = Path(tempfile.mkdtemp(prefix="runtimes-transcripts-"))
    runtimes = runtimes_prefix()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(work),
           "LANG": "C.UTF-8", "CONDASTACK_PKGS": str(work / "pkgs"), "CONDASTACK_CACHE": str(work / "cache"),
           "CONDA_OVERRIDE_CUDA": "12.6"}
    seed = default_cache_dir() / "debootstrap-bookworm-minbase-v1.tar.zst"  # else condastack debootstraps
    if seed.is_file():
        (work / "cache" / "rootfs").mkdir(parents=True)
        os.link(seed, work / "cache" / "rootfs" / "debian-bookworm-amd64-minbase.tar.zst")
    hide = {str(work): "$WORK"}
    build = Transcript(out / "build.txt", env, work, hide)
    proj = _prepare(work, env, build)
    build.save()
    for name, fn in (("enroot", lambda t: _enroot(t, work, runtimes)), ("pyxis", lambda t: _pyxis(t, work, proj)),
                     ("apptainer", lambda t: _apptainer(t, proj, runtimes))):
        t = Transcript(out / f"{name}.txt", dict(env), proj, hide)
        fn(t)
        t.save()
    sif = Transcript(out / "siftool.txt", env, proj, hide)
    for args in (["list", "app.sif"], ["header", "app.sif"], ["info", "4", "app.sif"], ["dump", "2", "app.sif"]):
        sif.run(["siftool", *args])
    sif.run(["sha256sum", "app.sqsh", "app.sif"])
    sif.save()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
