"""The main job on the bundled offline example (README command 1).

Builds the local channel, then runs the whole pipeline through the real CLI,
as a user would: lock -> build -> verify -> pack -> unpack at another path
-> run a program from the relocated env -> install to a "shared" prefix ->
Lmod module -> SquashFS image -> thin container files -> doctor. Ends with a
summary table of what each step took and produced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEMO = HERE / "demo"
OUT = DEMO / "out"
sys.path.insert(0, str(REPO / "tests" / "channel"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(highlight=False)


@dataclass
class Step:
    name: str
    seconds: float
    result: str


def _size(path: Path) -> str:
    if path.is_file():
        n = path.stat().st_size
    else:
        n = sum(p.lstat().st_size for p in path.rglob("*"))
    return f"{n / 1e6:.1f} MB"


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(REPO / "cli.py"), "-C", str(DEMO), *map(str, args)]
    console.print(f"[dim]$ condastack -C examples/demo {' '.join(map(str, args))}[/]")
    p = subprocess.run(cmd, text=True, capture_output=True)
    if p.stdout.strip():
        console.print(p.stdout.rstrip(), markup=False, highlight=False)
    if p.returncode != 0 and check:
        console.print(p.stderr, markup=False)
        raise SystemExit(f"step failed: condastack {' '.join(map(str, args))} (exit {p.returncode})")
    return p


def timed(steps: list[Step], name: str, fn, describe) -> object:  # noqa: ANN001
    t = time.perf_counter()
    value = fn()
    steps.append(Step(name, time.perf_counter() - t, describe(value)))
    return value


def main() -> None:
    from testchannel import build_test_channel

    steps: list[Step] = []
    for leftover in ("out", "envs", "pack", "lock"):  # every run is a whole, fresh pipeline
        shutil.rmtree(DEMO / leftover, ignore_errors=True)
    OUT.mkdir(parents=True)

    channel = timed(steps, "build the local channel (rattler-build, cached)", build_test_channel,
                    lambda ch: f"{sum(1 for _ in ch.rglob('*.conda'))} packages")
    link = DEMO / "environments" / "channel"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(channel)

    timed(steps, "lock base + app (2 platforms)", lambda: cli("lock"),
          lambda _: ", ".join(p.name for p in sorted((DEMO / "lock").glob("*.lock")) if not p.name.startswith(".")))
    timed(steps, "re-lock (no-op)", lambda: cli("lock"), lambda _: "no solve, no write")
    timed(steps, "build base", lambda: cli("build", "base"), lambda _: _size(DEMO / "envs" / "base"))
    timed(steps, "build app (reuses base's cache)", lambda: cli("build", "app"), lambda _: _size(DEMO / "envs" / "app"))
    timed(steps, "verify app", lambda: cli("verify", "app"), lambda _: "matches its lock")
    archive = DEMO / "pack" / "app-linux-64.tar.zst"
    timed(steps, "pack app (tar.zst)", lambda: cli("pack", "app"), lambda _: _size(archive))

    dest = OUT / "elsewhere" / "deeper" / "app"
    timed(steps, "unpack at another path + relocate", lambda: cli("unpack", archive, dest), lambda _: _size(dest))
    run = timed(steps, "run bin/hello from the relocated env",
                lambda: subprocess.run([str(dest / "bin" / "hello")], capture_output=True, text=True, check=True),
                lambda p: p.stdout.splitlines()[0])
    console.print(run.stdout.rstrip(), markup=False)  # type: ignore[attr-defined]
    assert f"prefix={dest}" in run.stdout, "relocation failed"  # type: ignore[attr-defined]

    shared = OUT / "shared" / "envs" / "demo" / "app"
    timed(steps, "install to a shared prefix", lambda: cli("install", archive, "--prefix", shared),
          lambda _: str(shared.relative_to(REPO)))
    modules = OUT / "modules"
    timed(steps, "Lmod + Tcl modulefiles", lambda: cli("module", shared, "--name", "demo/app", "--version", "1.0",
                                                        "-o", modules),
          lambda _: ", ".join(str(p.relative_to(modules)) for p in sorted(modules.rglob("*")) if p.is_file()))
    sqfs = DEMO / "pack" / "app-linux-64.sqfs"
    timed(steps, "pack app as SquashFS for /shared/envs/demo/app",
          lambda: cli("pack", "app", "--format", "squashfs", "--dest-prefix", "/shared/envs/demo/app", "-o", sqfs),
          lambda _: _size(sqfs))
    opt = DEMO / "pack" / "app-linux-64-opt-env.tar.gz"  # gzip: Docker's ADD and base images' tar read it
    timed(steps, "pack app for a container at /opt/env (tar.gz)",
          lambda: cli("pack", "app", "--format", "tar.gz", "--dest-prefix", "/opt/env", "-o", opt),
          lambda _: _size(opt))
    oci = OUT / "app.oci.tar"
    # scratch: the default Debian base needs debootstrap and a mirror; the demo stays offline
    timed(steps, "Dockerfile.thin + Apptainer def + OCI archive (env only, --oci-base scratch)",
          lambda: cli("container", "app", "--archive", opt, "-o", REPO / "Dockerfile.thin",
                      "--apptainer", DEMO / "pack" / "app.def", "--oci", oci, "--oci-base", "scratch"),
          lambda _: f"OCI {_size(oci)}")
    doc = timed(steps, "doctor (this node against the stack)", lambda: cli("doctor", "app", check=False),
                lambda p: "pass" if p.returncode == 0 else "fails on this node (see table)")
    if doc.returncode not in (0, 1):  # type: ignore[attr-defined]
        raise SystemExit("doctor crashed")

    table = Table("step", "time (s)", "result", title="condastack on the bundled example (offline)")
    for s in steps:
        table.add_row(s.name, f"{s.seconds:.2f}", s.result)
    console.print(table)


if __name__ == "__main__":
    os.environ.setdefault("CONDASTACK_PKGS", str(DEMO / "out" / "pkgs"))
    main()
