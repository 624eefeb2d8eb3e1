"""Lock benchmark: a real stack on real conda-forge metadata, then the offline test channel.

    .venv/bin/python bench/lock.py

Real stack (../shared/realworld/channel): base python 3.11, pytorch 2.10, numpy,
pandas; app + transformers, scipy, matplotlib, scikit-learn, jupyterlab. A cold
`condastack lock` (empty caches, no lock) is timed side by side with a bare
py-rattler solve of the same two layers (app pinned to base) in a fresh
interpreter, alternating, several rounds; the figures are medians, and CPU
seconds (user+sys of the child) are given too because wall time on a shared
machine is noisy.

Each figure is the wall time of the `condastack` CLI (a fresh process, as a
user runs it), so it includes interpreter start-up and imports. The peer is a
bare `rattler.solve` of the same specs in the same run: the cost of the solve
that a cold lock cannot avoid.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "channel"))

from testchannel import build_test_channel  # noqa: E402

CLI = [sys.executable, str(REPO / "cli.py")]


def _run(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([*CLI, *args], check=True, capture_output=True)
    return time.perf_counter() - t


REAL = (REPO / ".." / "shared" / "realworld" / "channel").resolve()
REAL_BASE = ["python 3.11.*", "pytorch 2.10.*", "numpy", "pandas"]
REAL_APP = ["transformers", "scipy", "matplotlib", "scikit-learn", "jupyterlab"]
BARE = """
import asyncio, sys, rattler
V = lambda n, v, b="0": rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v),
                                                      rattler.BuildString(b))
vp = [V("__unix", "0"), V("__linux", "4.18"), V("__glibc", "2.28"), V("__cuda", "12.6"),
      V("__archspec", "1", "x86_64")]
ch, base, app = [sys.argv[1]], sys.argv[2].split(";"), sys.argv[3].split(";")
r1 = asyncio.run(rattler.solve(ch, base, platforms=["linux-64", "noarch"], virtual_packages=vp))
asyncio.run(rattler.solve(ch, base + app, platforms=["linux-64", "noarch"], virtual_packages=vp, pinned_packages=r1))
"""


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU (user+sys) seconds of one child process."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def real_stack(rounds: int = 5) -> None:
    """Cold and no-op lock of the real stack against a bare py-rattler solve, side by side."""
    import shutil

    # Byte-compiled modules, as an installed condastack has (PYTHONDONTWRITEBYTECODE may be set).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "condastack"), str(REPO / "cli.py")],
                   check=True, capture_output=True, env=env)
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp) / "proj"
        envdir = proj / "environments"
        envdir.mkdir(parents=True)
        (envdir / "stack.yml").write_text(
            "name: real\nplatforms: [linux-64]\nvirtual-packages:\n"
            "  linux-64: {__cuda: \"12.6\", __glibc: \"2.28\"}\n"
            "layers:\n  base: {file: base.yml}\n  app: {file: app.yml, extends: base}\n")
        (envdir / "base.yml").write_text(f"channels: ['{REAL.as_uri()}']\ndependencies: [{', '.join(REAL_BASE)}]\n")
        (envdir / "app.yml").write_text(f"dependencies: [{', '.join(REAL_APP)}]\n")
        bare_cmd = [sys.executable, "-c", BARE, REAL.as_uri(), ";".join(REAL_BASE), ";".join(REAL_APP)]
        _timed(bare_cmd)  # warm the OS file cache for both
        rows: dict[str, list[tuple[float, float]]] = {"bare": [], "cold": [], "noop": []}
        for i in range(rounds):
            shutil.rmtree(proj / "lock", ignore_errors=True)
            cold_env = {**env, "CONDASTACK_CACHE": str(Path(tmp) / f"cache{i}")}
            rows["bare"].append(_timed(bare_cmd))
            rows["cold"].append(_timed([*CLI, "-C", str(proj), "lock"], cold_env))
            rows["noop"].append(_timed([*CLI, "-C", str(proj), "lock"], cold_env))
    med = {k: (_median([w for w, _ in v]), _median([c for _, c in v])) for k, v in rows.items()}
    ratios = [c[0] / b[0] for b, c in zip(rows["bare"], rows["cold"])]
    print(f"real stack, {rounds} rounds (medians; the machine is shared, so wall times are noisy)")
    print("| step | wall (s) | CPU (s) |")
    print("|---|---|---|")
    print(f"| bare py-rattler solve, base + app, fresh interpreter | {med['bare'][0]:.2f} | {med['bare'][1]:.2f} |")
    print(f"| cold `condastack lock` (empty caches) | {med['cold'][0]:.2f} | {med['cold'][1]:.2f} |")
    print(f"| no-op `condastack lock` | {med['noop'][0]:.2f} | {med['noop'][1]:.2f} |")
    print(f"\ncold lock / bare solve: wall {_median(ratios):.2f}x (per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}), CPU {med['cold'][1] / med['bare'][1]:.2f}x\n")


def main() -> None:
    if (REAL / "linux-64" / "repodata.json").is_file():
        real_stack()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CONDASTACK_CACHE"] = cache  # a cold lock starts with an empty spec cache
        _main()


def _main() -> None:
    channel = build_test_channel()
    url = channel.as_uri()
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp) / "proj"
        env = proj / "environments"
        env.mkdir(parents=True)
        (env / "stack.yml").write_text(textwrap.dedent("""
            name: bench
            platforms: [linux-64, linux-aarch64]
            virtual-packages:
              linux-64: {__cuda: "12.6", __glibc: "2.28"}
              linux-aarch64: {__glibc: "2.28"}
            layers:
              base: {file: base.yml}
              app: {file: app.yml, extends: base}
            """))
        (env / "base.yml").write_text(f'channels: ["{url}"]\ndependencies: [python, pip, libhello, "libfoo <2", gpu-kernels]\n')
        (env / "app.yml").write_text("dependencies: [hello, noarch-data]\n")

        import rattler

        from condastack.lock.conda_solve import virtual_packages

        t = time.perf_counter()
        for plat in ("linux-64", "linux-aarch64"):
            asyncio.run(rattler.solve([url], ["python", "pip", "libhello", "libfoo <2", "gpu-kernels", "hello",
                                              "noarch-data"], platforms=[plat, "noarch"],
                                      virtual_packages=virtual_packages({"__glibc": "2.28"})))
        bare = time.perf_counter() - t

        cold = _run("-C", str(proj), "lock")
        noop = min(_run("-C", str(proj), "lock") for _ in range(3))
        (env / "base.yml").write_text(f'channels: ["{url}"]\ndependencies: [python, pip, libhello, libfoo, gpu-kernels]\n')
        relax = _run("-C", str(proj), "lock")  # spec relaxed: previous solution kept as preference
        update = _run("-C", str(proj), "lock", "--update", "libfoo")
        check = _run("-C", str(proj), "lock", "--check")
        startup = min(_run("--version") for _ in range(3))

    rows = [
        ("cold lock (2 layers x 2 platforms)", cold),
        ("no-op re-lock", noop),
        ("re-lock after a spec change", relax),
        ("--update libfoo", update),
        ("--check", check),
        ("condastack --version (start-up floor)", startup),
        ("bare rattler.solve, same specs, 2 platforms (in-process)", bare),
    ]
    print("| step | wall (s) |")
    print("|---|---|")
    for name, secs in rows:
        print(f"| {name} | {secs:.2f} |")
    print(f"\nno-op re-lock / cold lock = {noop / cold:.2f}")


if __name__ == "__main__":
    main()
