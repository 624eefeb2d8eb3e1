"""Benchmark `condastack build` on the realistic environment (bench/realistic.py: >= 1 GB, >= 50k files).

In one run, on one machine, it measures:
- warm-cache `build` (API, into a fresh prefix) against a bare `rattler.install`
  of the same records from the same warm cache (target: <= 1.1x);
- app-after-base (base built first into the same empty cache) against
  app-cold (empty cache);
- the no-op rebuild (API and CLI).

Warm figures: REPEAT interleaved runs each, alternating which side goes first;
the ratio uses the fastest run of each side (least disturbed by other load on a
shared machine), the median is shown too, and so are the CPU seconds (user+sys of
this process, rattler's threads and the integrity check's `find` included), which
other load on the machine disturbs less. The env folders are removed between
runs and the removal is synced to disk, outside the timed part: otherwise the
writeback of 57k unlinked files lands in the next timed run.

    python bench/build.py [REPEAT]    (default 5)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file is named like PyPI's `build`, which conda-lock imports: keep bench/ off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def _load_realistic():  # noqa: ANN202 - the bench/realistic.py module
    import importlib.util

    spec = importlib.util.spec_from_file_location("realistic", HERE / "realistic.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["realistic"] = mod
    spec.loader.exec_module(mod)
    return mod


_r = _load_realistic()
cache_dir, realistic_base_specs, realistic_channel = _r.cache_dir, _r.realistic_base_specs, _r.realistic_channel
realistic_specs, tree_size = _r.realistic_specs, _r.tree_size

from condastack.env.build import build_prefix  # noqa: E402
from condastack.env.locked import read_locked_env
from condastack.lock.lockfile import render_lockfile
from condastack.lock.conda_solve import record_entry, solve_conda  # noqa: E402

PLATFORM = "linux-64"


def write_lock(path: Path, channel: str, specs: list[str], pinned: list | None = None) -> list:
    recs = solve_conda([channel], specs, PLATFORM, {}, pinned=pinned)
    text = render_lockfile(path, [record_entry(r, PLATFORM) for r in recs], channels=[channel],
                           platforms=[PLATFORM], sources=["bench"], custom={},
                           content_hash={PLATFORM: hashlib.sha256(b"bench").hexdigest()}).text
    path.write_text(text)
    return recs


def timed(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_seconds() -> float:
    """user + sys of this process (rattler's threads included) and of its waited-for children (find, pip)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_cpu(fn, cpu: list[float]) -> float:  # noqa: ANN001
    """Wall seconds of fn(); its CPU seconds are appended to `cpu`."""
    c = cpu_seconds()
    wall = timed(fn)
    cpu.append(cpu_seconds() - c)
    return wall


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def main(repeat: int = 5) -> None:
    import rattler

    channel = realistic_channel().as_uri()
    work = cache_dir() / f"build-bench-{os.getpid()}"
    fresh(work).mkdir(parents=True)
    try:
        base_lock, app_lock = work / "base.conda-lock.yml", work / "app.conda-lock.yml"
        base_recs = write_lock(base_lock, channel, realistic_base_specs())
        write_lock(app_lock, channel, realistic_specs(), pinned=base_recs)
        app = read_locked_env(app_lock, PLATFORM)
        print(f"app lock: {len(app.conda)} conda packages: "
              + ", ".join(f"{r.name.normalized} {r.version}" for r in app.conda))

        # cold: app alone into an empty cache, and base then app into another empty cache
        os.environ["CONDASTACK_PKGS"] = str(work / "pkgs-cold")
        t_app_cold = timed(lambda: build_prefix(app_lock, work / "app-cold", stack="bench", layer="app"))
        n, size = tree_size(work / "app-cold")
        print(f"environment: {n} files, {size / 1e9:.2f} GB")
        os.environ["CONDASTACK_PKGS"] = str(work / "pkgs-layered")
        t_base_cold = timed(lambda: build_prefix(base_lock, work / "base", stack="bench", layer="base"))
        res = {}
        t_app_after = timed(lambda: res.update(r=build_prefix(app_lock, work / "app-after", stack="bench",
                                                                layer="app")))
        print(f"app after base fetched: {res['r'].fetched}")
        shutil.rmtree(work / "base")
        shutil.rmtree(work / "app-after")

        # warm: the cache filled by the app-cold build; condastack vs bare rattler, interleaved
        os.environ["CONDASTACK_PKGS"] = str(work / "pkgs-cold")
        ours, bare = [], []
        ours_cpu: list[float] = []
        bare_cpu: list[float] = []

        def run_ours() -> None:
            target = fresh(work / "warm-ours")
            os.sync()  # the removal's writeback must not land inside the next timed run
            ours.append(timed_cpu(lambda: build_prefix(app_lock, target, stack="bench", layer="app"), ours_cpu))

        def run_bare() -> None:
            target = fresh(work / "warm-bare")
            os.sync()
            bare.append(timed_cpu(lambda: asyncio.run(rattler.install(
                list(app.conda), str(target), cache_dir=str(work / "pkgs-cold"), installed_packages=[],
                show_progress=False)), bare_cpu))

        for i in range(repeat):  # alternate which side goes first
            for run in ((run_ours, run_bare) if i % 2 == 0 else (run_bare, run_ours)):
                run()
        t_noop = timed(lambda: build_prefix(app_lock, work / "warm-ours", stack="bench", layer="app"))

        # the same no-op and a warm --force rebuild through the CLI (python start-up included)
        proj = work / "proj"
        (proj / "lock").mkdir(parents=True)
        shutil.copy(app_lock, proj / "lock" / "app.conda-lock.yml")
        (proj / "environments").mkdir()
        (proj / "environments" / "stack.yml").write_text("name: bench\nlayers:\n  app: {file: app.yml}\n")
        (proj / "environments" / "app.yml").write_text(f"channels: ['{channel}']\ndependencies: [rt-app]\n")
        cli = [sys.executable, str(HERE.parent / "cli.py"), "-C", str(proj), "build", "app", "--prefix",
               str(work / "warm-ours")]
        t_cli_force = timed(lambda: subprocess.run([*cli, "--force"], check=True, capture_output=True))
        t_cli_noop = timed(lambda: subprocess.run(cli, check=True, capture_output=True))

        m_ours, m_bare = min(ours), min(bare)
        print()
        print(f"{'measure':48} {'seconds':>8}")
        for label, v in [
            ("app-cold (empty cache)", t_app_cold),
            ("base (empty cache)", t_base_cold),
            ("app after base (same cache)", t_app_after),
            (f"warm build, condastack API (best of {repeat})", m_ours),
            (f"warm install, bare rattler.install (best of {repeat})", m_bare),
            (f"warm build, condastack API (median of {repeat})", statistics.median(ours)),
            (f"warm install, bare rattler.install (median of {repeat})", statistics.median(bare)),
            ("no-op rebuild, API", t_noop),
            ("warm --force rebuild, CLI", t_cli_force),
            ("no-op rebuild, CLI", t_cli_noop),
        ]:
            print(f"{label:48} {v:8.2f}")
        print(f"  runs (wall s): condastack {[round(x, 2) for x in ours]}, rattler {[round(x, 2) for x in bare]}")
        print(f"  runs (CPU s, user+sys): condastack {[round(x, 2) for x in ours_cpu]}, "
              f"rattler {[round(x, 2) for x in bare_cpu]}")
        print(f"  load average at the end: {os.getloadavg()[0]:.2f}")
        print()
        print(f"ratio warm condastack build / bare rattler.install: {m_ours / m_bare:.2f}x best-of, "
              f"{statistics.median(ours) / statistics.median(bare):.2f}x median (target <= 1.1x)")
        print(f"  in CPU seconds:                                   {min(ours_cpu) / min(bare_cpu):.2f}x best-of, "
              f"{statistics.median(ours_cpu) / statistics.median(bare_cpu):.2f}x median")
        print(f"ratio app-after-base / app-cold:                    {t_app_after / t_app_cold:.2f}x")
        sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    sys.stdout.flush()
    os._exit(0)  # py-rattler's runtime can crash at interpreter exit
