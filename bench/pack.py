"""Benchmark `condastack pack` / `unpack` against raw tar|zstd and conda-pack, in one run.

    python bench/pack.py [--keep]

On the realistic env of bench/realistic.py (>= 1 GB, >= 50k files), with a
warm page cache, it times, in $BENCH_ROUNDS (default 3) interleaved rounds, each
command after a `sync` (median and best are printed, ratios use medians):
  - condastack pack (tar.zst, defaults) and its peak memory (sum of the RSS of
    condastack and its tar/zstd children, sampled every 20 ms);
  - raw `tar -cf - . | zstd -T0 -3` of the same prefix;
  - `conda-pack` with its defaults (tar.gz);
  - condastack unpack vs raw `zstd -dc | tar -x` of the same archive;
and prints the ratios the issue sets as targets. $BENCH_TMP picks the work folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from realistic import realistic_env, tree_size  # noqa: E402

PY = sys.executable
CLI = [PY, str(REPO / "cli.py")]


def _tree_rss_kb(root: int) -> int:
    """Sum of VmRSS of `root` and all its descendants."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            with open(f"/proc/{d}/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(d)] = ppid
        rss[int(d)] = pages * os.sysconf("SC_PAGE_SIZE") // 1024
    tree = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return sum(rss.get(p, 0) for p in tree)


def timed(cmd: list[str] | str, *, shell: bool = False, env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak process-tree RSS (kB) of one command."""
    peak = 0
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, shell=shell, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_kb(p.pid))
            time.sleep(0.02)

    th = threading.Thread(target=sample)
    th.start()
    _, err = p.communicate()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {cmd}\n{err.decode(errors='replace')}")
    return wall, peak


ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# conda-pack (one gzip thread) is slow: $BENCH_CONDA_PACK_ROUNDS runs it in the first rounds only (0: never).
CP_ROUNDS = int(os.environ.get("BENCH_CONDA_PACK_ROUNDS") or ROUNDS)
TARGET = 1.10  # pack and unpack against raw tar|zstd (issue 26)


def settle() -> None:
    """Flush the previous step's dirty pages, so its write-back is not billed to the next one."""
    subprocess.run(["sync"], check=True)


def main() -> None:
    import statistics

    env = realistic_env()
    n_files, size = tree_size(env)
    work = Path(tempfile.mkdtemp(prefix="condastack-bench-pack-", dir=os.environ.get("BENCH_TMP")))
    print(f"env: {env}: {n_files} files, {size / 1e9:.2f} GB; cpus: {os.cpu_count()}; work: {work}; "
          f"{ROUNDS} interleaved rounds", flush=True)
    conda_pack = [str(Path(PY).parent / "conda-pack")]
    if not Path(conda_pack[0]).exists():  # installed with pip --target (the GPU node): no script beside python
        conda_pack = [PY, "-c", "import sys; from conda_pack.cli import main; sys.argv[0] = 'conda-pack'; main()"]
    cs, raw, cp = work / "cs.tar.zst", work / "raw.tar.zst", work / "cp.tar.gz"
    d_cs, d_raw = work / "u-cs" / "env", work / "u-raw"
    names = ["pack", "raw", "conda-pack", "unpack", "unraw"]
    times: dict[str, list[float]] = {k: [] for k in names}
    rss: dict[str, int] = {"pack": 0, "unpack": 0}
    try:
        # Warm the page cache for both sides: raw reads the env; pack also reads conda-meta and, for the
        # files with placeholders, the package cache (a first pack right after a cache drop took 2x).
        subprocess.run(f"tar -C {env} -cf - . > /dev/null", shell=True, check=True)
        timed([*CLI, "pack", "--prefix", str(env), "-o", str(cs)])
        for r in range(ROUNDS):
            # pack and raw trade places each round: the step after an unpack pays for its 2.7 GB of writes
            order = (["pack", "raw"] if r % 2 == 0 else ["raw", "pack"]) + names[2:]
            for k in (k for k in order if k != "conda-pack" or r < CP_ROUNDS):
                for d in (d_cs.parent, d_raw):
                    if k in ("unpack", "unraw"):
                        shutil.rmtree(d, ignore_errors=True)
                settle()
                if k == "pack":
                    t, peak = timed([*CLI, "pack", "--prefix", str(env), "-o", str(cs)])
                elif k == "raw":
                    t, peak = timed(f"tar -C {env} -cf - . | zstd -T0 -3 -q -o {raw} -f", shell=True)
                elif k == "conda-pack":
                    t, peak = timed([*conda_pack, "-p", str(env), "-o", str(cp), "--quiet", "--force"])
                elif k == "unpack":
                    t, peak = timed([*CLI, "unpack", str(cs), str(d_cs)])
                    ok = subprocess.run([str(d_cs / "bin" / "rt-tool1")], capture_output=True, text=True).stdout.strip()
                    assert ok == f"tool1 prefix={d_cs}", ok
                else:
                    d_raw.mkdir()
                    t, peak = timed(f"zstd -dc {cs} | tar -xf - -C {d_raw}", shell=True)
                times[k].append(t)
                if k in rss:
                    rss[k] = max(rss[k], peak)
            print(f"round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in names if times[k]), flush=True)

        if not times["conda-pack"]:  # BENCH_CONDA_PACK_ROUNDS=0
            names.remove("conda-pack")
        med = {k: statistics.median(v) for k, v in times.items() if v}
        best = {k: min(v) for k, v in times.items() if v}
        s_cs, s_raw = cs.stat().st_size, raw.stat().st_size
        s_cp = cp.stat().st_size if cp.exists() else 0
        rows = [
            ("condastack pack (tar.zst -3, all cores)", "pack", s_cs, rss["pack"]),
            ("raw tar | zstd -T0 -3", "raw", s_raw, None),
            ("conda-pack (defaults, tar.gz)", "conda-pack", s_cp, None),
            ("condastack unpack", "unpack", None, rss["unpack"]),
            ("raw zstd -dc | tar -x", "unraw", None, None),
        ]
        checks = [
            ("pack / raw tar|zstd", med["pack"] / med["raw"], f"<= {TARGET}", med["pack"] / med["raw"] <= TARGET),
            ("pack peak RSS MB", rss["pack"] / 1024, "<= 300", rss["pack"] / 1024 <= 300),
            ("unpack / raw zstd -dc|tar -x", med["unpack"] / med["unraw"], f"<= {TARGET}",
             med["unpack"] / med["unraw"] <= TARGET),
        ]
        if "conda-pack" in med:
            checks[1:1] = [("conda-pack / pack (speed-up)", med["conda-pack"] / med["pack"], ">= 3",
                            med["conda-pack"] / med["pack"] >= 3),
                           ("pack size / conda-pack tar.gz", s_cs / s_cp, "<= 1.0", s_cs <= s_cp)]
        rows = [r for r in rows if r[1] in med]
        print(f"\n{'step':44} {'median s':>9} {'best s':>8} {'size MB':>9} {'peak RSS MB':>12}")
        for name, k, sz, r in rows:
            print(f"{name:44} {med[k]:9.2f} {best[k]:8.2f} {'' if sz is None else f'{sz / 1e6:9.1f}':>9} "
                  f"{'' if r is None else f'{r / 1024:12.0f}':>12}")
        print()
        for name, v, target, met in checks:
            print(f"{name:44} {v:9.2f}   target {target:8} {'met' if met else 'MISSED'}")
        print("\n```markdown")
        print(f"Realistic env: {n_files} files, {size / 1e9:.2f} GB, {os.cpu_count()} cores, warm page cache, "
              f"{ROUNDS} interleaved rounds (median and best wall time; ratios of medians).\n")
        print("| step | median (s) | best (s) | archive (MB) | peak RSS (MB) |\n|---|---|---|---|---|")
        for name, k, sz, r in rows:
            print(f"| {name.replace('|', chr(92) + '|')} | {med[k]:.2f} | {best[k]:.2f} | {'' if sz is None else f'{sz / 1e6:.0f}'} | "
                  f"{'' if r is None else f'{r / 1024:.0f}'} |")
        print("\n| ratio | value | target | |\n|---|---|---|---|")
        for name, v, target, met in checks:
            print(f"| {name.replace('|', chr(92) + '|')} | {v:.2f} | {target} | {'met' if met else 'missed'} |")
        print("```")
    finally:
        if "--keep" not in sys.argv:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
