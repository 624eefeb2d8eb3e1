"""Start the test suite's single-node Slurm cluster with pyxis loaded, and run srun --container-image.

    python scripts/pyxis_cluster.py IMAGE.sqsh [PREFIX] [-- CMD...]

PREFIX is where scripts/runtimes.sh installed enroot and pyxis (default /opt/condastack-runtimes).
What pyxis needs there, beyond tests/slurm_cluster.py's own config:
  * etc/plugstack.conf beside slurm.conf (Slurm's default PlugStackConfig is plugstack.conf in
    slurm.conf's folder), holding `required PREFIX/lib/spank_pyxis.so runtime_path=ROOT/pyxis`;
  * `enroot` on the PATH of slurmd (pyxis execvpe()s "enroot" with slurmstepd's environment);
  * ENROOT_{RUNTIME,DATA,CACHE,CONFIG,TEMP}_PATH in slurmd's environment (pyxis drops these
    names from the job's environment, so only the daemon's values count; enroot's defaults,
    ${XDG_*}/enroot and /root/.local/share/enroot for root, would also work).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.slurm_cluster import SlurmCluster  # noqa: E402


class PyxisCluster(SlurmCluster):
    prefix: Path = Path("/opt/condastack-runtimes")

    def _write_configs(self) -> None:
        super()._write_configs()
        (self.root / "pyxis").mkdir(exist_ok=True)
        (self.root / "etc" / "plugstack.conf").write_text(
            f"required {self.prefix}/lib/spank_pyxis.so runtime_path={self.root}/pyxis\n")


def enroot_env(root: Path, prefix: Path) -> dict[str, str]:
    env = {"PATH": f"{prefix}/bin:{os.environ['PATH']}"}
    for k in ("RUNTIME", "DATA", "CACHE", "CONFIG", "TEMP"):
        d = root / "enroot" / k.lower()
        d.mkdir(parents=True, exist_ok=True)
        env[f"ENROOT_{k}_PATH"] = str(d)
    return env


def main() -> int:
    args = sys.argv[1:]
    cmd = ["python3", "-c", "import os,sys; print('task', os.environ.get('SLURM_PROCID'), sys.version.split()[0], "
                            "open('/etc/debian_version').read().strip())"]
    if "--" in args:
        i = args.index("--")
        args, cmd = args[:i], args[i + 1:]
    image = Path(args[0]).resolve()
    prefix = Path(args[1] if len(args) > 1 else "/opt/condastack-runtimes")
    root = Path(tempfile.mkdtemp(prefix="slurm-pyxis-"))
    os.environ.update(enroot_env(root, prefix))  # the daemons inherit it (SlurmCluster.env)
    PyxisCluster.prefix = prefix
    c = PyxisCluster(root).start()
    rc = 0
    try:
        print("srun --help | grep container:")
        print("\n".join(l for l in c.run("srun", "--help").stdout.splitlines() if "container" in l))
        for argv in (["srun", "-n", "4", f"--container-image={image}", *cmd],
                     ["srun", "-n", "1", f"--container-image={image}", f"--container-mounts={root}/etc:/data:ro",
                      "ls", "/data"],
                     ["srun", "-n", "1", f"--container-image={image}", "sh", "-c", "exit 3"]):
            t = time.monotonic()
            p = c.run(*argv, check=False, timeout=300)
            print(f"$ {' '.join(argv)}\n{p.stdout}{p.stderr}[exit {p.returncode}, {time.monotonic() - t:.1f} s]\n")
            rc = rc or (p.returncode if argv[-1] != "exit 3" else int(p.returncode != 3))
    finally:
        if rc:
            print(c.logs())
        c.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
