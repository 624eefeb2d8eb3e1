"""A real single-node Slurm cluster on 127.0.0.1, for tests and bench/slurm_startup.py.

munged, MariaDB (for slurmdbd, which `sacct` needs: Slurm has no file-based job
accounting any more), slurmdbd, slurmctld and slurmd run in the foreground as
children of this process, with their keys, state, spool, logs and sockets in one
private folder, and are stopped in reverse order. No cgroups: processes are
tracked by proctrack/linuxproc and tasks are not bound (task/none), so it runs
in a container. The node claims 32 CPUs and one GPU whatever the machine has
(config_overrides; a count-only GPU), so examples/slurm/job.sh's `--cpus-per-task=8
--gres=gpu:1` and `srun -n 4` are accepted on 2 cores too.

With `pyxis=find_pyxis()` (scripts/runtimes.sh installed enroot and pyxis), slurmd loads pyxis
through etc/plugstack.conf (Slurm's default PlugStackConfig: plugstack.conf beside slurm.conf), so
`srun --container-image=IMG.sqsh` works. pyxis runs `enroot` from slurmstepd's PATH, and drops
ENROOT_* from the job's environment, so enroot's bin/ and ENROOT_*_PATH (folders under ROOT/enroot)
go into the daemons' environment.

    python tests/slurm_cluster.py      # start one, print SLURM_CONF, stop on Enter
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


class ClusterError(RuntimeError):
    """The cluster did not start or a job did not reach a final state; carries the daemon logs."""


def missing_binaries() -> list[str]:
    return [b for b in DAEMONS if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


RUNTIMES_ENV = "CONDASTACK_RUNTIMES"  # where scripts/runtimes.sh installed enroot, pyxis and Apptainer
DEFAULT_RUNTIMES = "/opt/condastack-runtimes"


def runtimes_prefix() -> Path:
    return Path(os.environ.get(RUNTIMES_ENV) or DEFAULT_RUNTIMES)


def find_pyxis() -> Path | None:
    """spank_pyxis.so of the runtimes prefix, if pyxis and enroot are installed there."""
    prefix = runtimes_prefix()
    so = prefix / "lib" / "spank_pyxis.so"
    return so if so.is_file() and (prefix / "bin" / "enroot").is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class Job:
    """A finished job as sacct reports it."""

    job_id: int
    state: str  # COMPLETED, FAILED, ...
    exit_code: str  # "rc:signal"
    steps: dict[str, str] = field(default_factory=dict)  # step id -> state


@dataclass
class SlurmCluster:
    root: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    starting: Future | None = field(default=None, repr=False)  # start() running in a thread, if so
    pyxis: Path | None = None  # spank_pyxis.so to load through plugstack.conf

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """An environment in which sbatch/srun/sacct talk to this cluster."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        return {**base, "SLURM_CONF": str(self.conf), **(extra or {})}

    # ------------------------------------------------------------------ start / stop

    def start(self, timeout: float = 90) -> SlurmCluster:
        try:
            for d in ("etc", "munge", "db", "dbd", "ctld", "spool", "log"):
                (self.root / d).mkdir(parents=True, exist_ok=True)
            self.ports = {k: _free_port() for k in ("mysql", "dbd", "ctld", "slurmd")}
            self._start_munge()
            self._start_mariadb(timeout)
            self._write_configs()
            self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
            self._wait_port(self.ports["dbd"], "slurmdbd", timeout)
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait_port(self.ports["ctld"], "slurmctld", timeout)
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._cancel_jobs()
        for _name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()

    def _cancel_jobs(self, timeout: float = 60) -> None:
        """Jobs outlive slurmd (their slurmstepd is a process of its own): cancel them and wait."""
        if not any(n == "slurmctld" and p.poll() is None for n, p in self.procs):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self.run("squeue", "-h", "-o", "%A", check=False).stdout.split()
            if not ids:
                return
            self.run("scancel", *ids, check=False)
            time.sleep(0.5)

    def daemon_env(self) -> dict[str, str]:
        """The daemons' environment: with pyxis, enroot on PATH and its folders under ROOT/enroot."""
        if self.pyxis is None:
            return self.env()
        prefix = self.pyxis.parent.parent
        extra = {"PATH": f"{prefix}/bin:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        for kind in ("RUNTIME", "DATA", "CACHE", "CONFIG", "TEMP"):
            folder = self.root / "enroot" / kind.lower()
            folder.mkdir(parents=True, exist_ok=True)
            extra[f"ENROOT_{kind}_PATH"] = str(folder)
        return self.env(extra)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.daemon_env(), start_new_session=True)
        log.close()
        self.procs.append((name, p))
        return p

    def _start_munge(self) -> None:
        m = self.root / "munge"
        m.chmod(0o755)  # clients need to reach the socket
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn("munged", [_which("munged"), "-F", "--force", f"--key-file={key}", f"--socket={m}/munge.sock",
                               f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                               f"--seed-file={m}/munged.seed"])
        self._wait(lambda: (m / "munge.sock").exists(), "munged", 20)

    def _start_mariadb(self, timeout: float) -> None:
        db = self.root / "db"
        subprocess.run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={db}", "--user=root",
                        "--skip-test-db", "--auth-root-authentication-method=normal"],
                       check=True, capture_output=True, timeout=timeout)
        # Only slurmdbd talks to it, on loopback: no grant tables, small buffers.
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", f"--datadir={db}", "--user=root",
                                 f"--socket={db}/mysql.sock", f"--port={self.ports['mysql']}",
                                 "--bind-address=127.0.0.1", "--skip-grant-tables", "--skip-name-resolve",
                                 "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
                                 f"--pid-file={db}/mariadbd.pid"])
        self._wait_port(self.ports["mysql"], "mariadbd", timeout)

    def _write_configs(self) -> None:
        r, p = self.root, self.ports
        (r / "etc" / "slurm.conf").write_text(f"""\
ClusterName=condastack
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={p['ctld']}
SlurmdPort={p['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.sock
CredType=cred/munge
StateSaveLocation={r}/ctld
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/ctld/slurmctld.pid
SlurmdPidFile={r}/spool/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={p['dbd']}
AccountingStoragePass={r}/munge/munge.sock
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=32 RealMemory=2000 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        # A pretend GPU (a plain file as its device): `--gres=gpu:1` in job scripts is accepted and
        # sets CUDA_VISIBLE_DEVICES; without cgroups nothing is bound. Slurm drops GPUs with no File.
        (r / "etc" / "fake-gpu0").touch()
        (r / "etc" / "gres.conf").write_text(f"AutoDetect=off\nNodeName={self.node} Name=gpu File={r}/etc/fake-gpu0\n")
        dbd = r / "etc" / "slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.sock
DbdHost={self.node}
DbdAddr=127.0.0.1
DbdPort={p['dbd']}
SlurmUser=root
PidFile={r}/dbd/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={p['mysql']}
StorageUser=root
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)  # slurmdbd refuses a world-readable config
        if self.pyxis is not None:
            (r / "pyxis").mkdir(exist_ok=True)
            (r / "etc" / "plugstack.conf").write_text(f"required {self.pyxis} runtime_path={r}/pyxis\n")

    # ------------------------------------------------------------------ waiting

    def _wait(self, ok, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs:
                if p.poll() is not None:
                    raise ClusterError(f"{name} exited with {p.returncode} while waiting for {what}\n{self.logs()}")
            if ok():
                return
            time.sleep(0.2)
        raise ClusterError(f"{what} not ready after {timeout:.0f} s\n{self.logs()}")

    def _wait_port(self, port: int, what: str, timeout: float) -> None:
        def ok() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        self._wait(ok, what, timeout)

    def _wait_idle(self, timeout: float) -> None:
        def ok() -> bool:
            out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            return out == "idle"
        self._wait(ok, f"node {self.node} idle", timeout)

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            tail = f.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # ------------------------------------------------------------------ jobs

    def run(self, *argv: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env(env), capture_output=True, text=True, check=check,
                              timeout=timeout)

    def sbatch(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Submit; the job gets exactly `env` (plus SLURM_CONF), like a login shell's environment."""
        job_env = {"SLURM_CONF": str(self.conf), **(env or {})}
        p = subprocess.run([_which("sbatch"), "--parsable", *argv], env=job_env, cwd=cwd, capture_output=True,
                           text=True, timeout=60)
        if p.returncode != 0:
            raise ClusterError(f"sbatch {' '.join(argv)}: exit {p.returncode}: {p.stderr}\n{self.logs()}")
        return int(p.stdout.strip().split(";")[0])

    def wait(self, job_id: int, timeout: float = 120) -> Job:
        """Poll sacct until the job and its steps have reached a final state."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            out = self.run("sacct", "-j", str(job_id), "-n", "-P", "-o", "JobID,State,ExitCode",
                           check=False).stdout
            last = out
            rows = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
            main = [r for r in rows if r[0] == str(job_id)]
            if main and main[0][1].split()[0] in TERMINAL and \
                    all(r[1].split()[0] in TERMINAL for r in rows):
                steps = {r[0].partition(".")[2]: r[1] for r in rows if "." in r[0]}
                return Job(job_id, main[0][1].split()[0], main[0][2], steps)
            time.sleep(0.5)
        raise ClusterError(f"job {job_id} did not finish in {timeout:.0f} s; sacct says:\n{last}\n{self.logs()}")


if __name__ == "__main__":
    import tempfile

    c = SlurmCluster(Path(tempfile.mkdtemp(prefix="slurm-"))).start()
    print(f"export SLURM_CONF={c.conf}")
    try:
        input("cluster running; Enter stops it\n")
    finally:
        c.stop()
