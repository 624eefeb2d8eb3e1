"""Benchmark pack / unpack on the real PyTorch env of examples/torch, in one run.

    python bench/real_torch.py [PREFIX] [--keep]     # default: examples/torch/envs/app

The env is the seed's torch 2.7.1 (CUDA 12.6) + sglang stack that examples/torch/run.sh
builds (multi-GB, single files over 1 GB). Same steps and targets as bench/pack.py
(the synthetic env), once each (BENCH_ROUNDS to repeat): condastack pack vs raw
`tar | zstd -T0 -3` vs conda-pack (defaults, tar.gz); condastack unpack vs raw
`zstd -dc | tar -x`; archive sizes; peak RSS of the process tree. The load average
is printed with the figures, since a shared machine skews them.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from pack import CLI, PY, settle, timed  # noqa: E402
from realistic import tree_size  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1"))
STEPS = ["pack", "raw", "conda-pack", "unpack", "unraw"]


def _run_step(k: str, env: Path, work: Path) -> tuple[float, int]:
    cs, raw, cp = work / "cs.tar.zst", work / "raw.tar.zst", work / "cp.tar.gz"
    if k == "pack":
        return timed([*CLI, "pack", "--prefix", str(env), "-o", str(cs)])
    if k == "raw":
        return timed(f"tar -C {env} -cf - . | zstd -T0 -3 -q -o {raw} -f", shell=True)
    if k == "conda-pack":
        return timed([str(Path(PY).parent / "conda-pack"), "-p", str(env), "-o", str(cp), "--quiet", "--force"])
    if k == "unpack":
        dest = work / "u-cs" / "env"
        shutil.rmtree(dest.parent, ignore_errors=True)
        res = timed([*CLI, "unpack", str(cs), str(dest)])
        out = subprocess.run([str(dest / "bin" / "python"), "-c", "import sys, torch; print(sys.prefix, torch.__version__)"],
                             capture_output=True, text=True, cwd="/tmp")
        assert out.stdout.split()[:1] == [str(dest)], out.stdout + out.stderr
        return res
    d_raw = work / "u-raw"
    shutil.rmtree(d_raw, ignore_errors=True)
    d_raw.mkdir()
    return timed(f"zstd -dc {cs} | tar -xf - -C {d_raw}", shell=True)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    env = Path(args[0] if args else REPO / "examples" / "torch" / "envs" / "app").resolve()
    if not (env / "conda-meta").is_dir():
        raise SystemExit(f"{env}: no env there; run examples/torch/run.sh first")
    n_files, size = tree_size(env)
    biggest = max((p.stat().st_size for p in env.rglob("*") if p.is_file() and not p.is_symlink()), default=0)
    work = Path(tempfile.mkdtemp(prefix="condastack-bench-torch-", dir=os.environ.get("BENCH_TMP")))
    load0 = os.getloadavg()
    print(f"env: {env}: {n_files} files, {size / 1e9:.2f} GB, largest file {biggest / 1e9:.2f} GB; "
          f"cpus: {os.cpu_count()}; load {load0[0]:.1f}; {ROUNDS} round(s)", flush=True)
    times: dict[str, list[float]] = {k: [] for k in STEPS}
    rss = {k: 0 for k in STEPS}
    try:
        subprocess.run(f"tar -C {env} -cf - . > /dev/null", shell=True, check=True)  # warm the page cache
        for r in range(ROUNDS):
            for k in STEPS:
                settle()
                t, peak = _run_step(k, env, work)
                times[k].append(t)
                rss[k] = max(rss[k], peak)
            print(f"round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.1f} s" for k in STEPS), flush=True)
        _report(env, times, rss, work, n_files, size, biggest, load0)
    finally:
        if "--keep" not in sys.argv:
            shutil.rmtree(work, ignore_errors=True)


def _report(env: Path, times: dict[str, list[float]], rss: dict[str, int], work: Path, n_files: int, size: int, biggest: int,
            load0: tuple[float, float, float]) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    sizes = {k: (work / f).stat().st_size for k, f in (("pack", "cs.tar.zst"), ("raw", "raw.tar.zst"),
                                                        ("conda-pack", "cp.tar.gz"))}
    names = {"pack": "condastack pack (tar.zst -3, all cores)", "raw": "raw tar \\| zstd -T0 -3",
             "conda-pack": "conda-pack (defaults, tar.gz)", "unpack": "condastack unpack (+ relocate)",
             "unraw": "raw zstd -dc \\| tar -x"}
    checks = [
        ("pack / raw tar\\|zstd", med["pack"] / med["raw"], "<= 1.25", med["pack"] / med["raw"] <= 1.25),
        ("conda-pack / pack (speed-up)", med["conda-pack"] / med["pack"], ">= 3", med["conda-pack"] / med["pack"] >= 3),
        ("pack size / conda-pack tar.gz", sizes["pack"] / sizes["conda-pack"], "<= 1.0",
         sizes["pack"] <= sizes["conda-pack"]),
        ("pack peak RSS MB", rss["pack"] / 1024, "<= 300", rss["pack"] / 1024 <= 300),
        ("unpack / raw zstd -dc\\|tar -x", med["unpack"] / med["unraw"], "<= 1.25", med["unpack"] / med["unraw"] <= 1.25),
    ]
    load1 = os.getloadavg()
    print("\n```markdown")
    print(f"Real PyTorch env ({env}): {n_files} files, {size / 1e9:.2f} GB, largest file "
          f"{biggest / 1e9:.2f} GB; {os.cpu_count()} cores; {ROUNDS} round(s); load average {load0[0]:.1f} before, "
          f"{load1[0]:.1f} after.\n")
    print("| step | wall (s) | archive (MB) | peak RSS (MB) |\n|---|---|---|---|")
    for k in STEPS:
        sz = f"{sizes[k] / 1e6:.0f}" if k in sizes else ""
        print(f"| {names[k]} | {med[k]:.1f} | {sz} | {rss[k] / 1024:.0f} |")
    print("\n| ratio | value | target | |\n|---|---|---|---|")
    for name, v, target, met in checks:
        print(f"| {name} | {v:.2f} | {target} | {'met' if met else 'missed'} |")
    print("```")


if __name__ == "__main__":
    main()
