"""Where the wall time of one `condastack pack` goes, against raw `tar | zstd -T0 -3` (with and
without an fsync of its output, since pack makes its archive durable before publishing it).

    python bench/pack_timeline.py [PREFIX] [ROUNDS]     (default: bench/realistic.py's env, 3)

Each round runs the real CLI in a child process whose writer and publisher are wrapped to note
when things happen, counted from the moment the child was spawned:
  first_name   tar is handed its first member (interpreter, imports and the env's checks before it)
  scan         every conda-managed file is checked (the early members are all with tar)
  plan         conda-pack's model, the placeholder files and the SBOM are done
  names_done   tar has every name
  tar_done     tar and zstd have exited (the archive is written)
  durable      the archive and its sidecars are fsynced and renamed into place
  exit         the process leaves
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARKS = ["first_name", "scan", "plan", "names_done", "tar_done", "durable", "exit"]


def child() -> None:
    """Run `condastack pack` with its steps noted; print them as JSON on stderr's last line."""
    spawned = float(os.environ["TIMELINE_SPAWNED"])
    sys.path.insert(0, str(ROOT))
    from condastack.archive import pack, writers

    marks: dict[str, float] = {}

    def note(key: str) -> None:
        marks.setdefault(key, time.time() - spawned)

    def wrap(owner, name: str, before: str | None = None, after: str | None = None) -> None:
        f = getattr(owner, name)

        def g(*a, **k):
            if before:
                note(before)
            r = f(*a, **k)
            if after:
                note(after)
            return r
        setattr(owner, name, g)

    wrap(writers._TarFeed, "add_names", before="first_name")
    wrap(pack._Job, "refuse_modified", after="scan")
    wrap(pack._Job, "plan", after="plan")
    wrap(writers._TarFeed, "close", after="names_done")
    wrap(writers.TarWriter, "_close", after="tar_done")
    wrap(pack, "replace_together", after="durable")
    real_exit = os._exit

    def leave(code: int) -> None:
        note("exit")
        print(json.dumps(marks), file=sys.stderr, flush=True)
        real_exit(code)
    os._exit = leave  # the CLI leaves through os._exit (see cli.app._exit_now)
    from condastack.cli.app import main
    main(prog_name="condastack", args=sys.argv[2:])


def timed_shell(cmd: str) -> float:
    t = time.time()
    subprocess.run(cmd, shell=True, check=True)
    return time.time() - t


def one_pack(env: Path, out: Path) -> dict[str, float]:
    t = time.time()
    p = subprocess.run([sys.executable, __file__, "--child", "pack", "--prefix", str(env), "-o", str(out)],
                       env={**os.environ, "TIMELINE_SPAWNED": repr(t)}, capture_output=True, text=True)
    wall = time.time() - t
    if p.returncode != 0:
        sys.exit(f"pack failed ({p.returncode}): {p.stderr[-2000:]}")
    marks = json.loads(p.stderr.strip().splitlines()[-1])
    marks["wall"] = wall
    return marks


def main() -> None:
    sys.path.insert(0, str(HERE))
    env = Path(sys.argv[1]) if len(sys.argv) > 1 else __import__("realistic").realistic_env()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    work = Path(tempfile.mkdtemp(prefix="condastack-timeline-", dir=os.environ.get("BENCH_TMP")))
    raw, cs = work / "raw.tar.zst", work / "cs.tar.zst"
    subprocess.run(f"tar -C {env} -cf - . > /dev/null", shell=True, check=True)  # warm the page cache,
    one_pack(env, cs)  # the package cache and conda-meta too (pack reads them)
    runs: list[dict[str, float]] = []
    raws: list[float] = []
    synced: list[float] = []
    for r in range(rounds):
        subprocess.run(["sync"], check=True)
        runs.append(one_pack(env, cs))
        subprocess.run(["sync"], check=True)
        raws.append(timed_shell(f"tar -C {env} -cf - . | zstd -T0 -3 -q -f -o {raw}"))
        subprocess.run(["sync"], check=True)
        synced.append(timed_shell(f"tar -C {env} -cf - . | zstd -T0 -3 -q -f -o {raw} && sync {raw}"))
        print(f"round {r + 1}: pack {runs[-1]['wall']:.2f} s, raw {raws[-1]:.2f} s, raw + fsync {synced[-1]:.2f} s",
              flush=True)
    print(f"\n{os.cpu_count()} cores; {env}; medians of {rounds} rounds, seconds from the process's spawn")
    for k in [*MARKS, "wall"]:
        vals = [m[k] for m in runs if k in m]
        if vals:
            print(f"  pack {k:11} {statistics.median(vals):6.3f}")
    mr, ms, mp = statistics.median(raws), statistics.median(synced), statistics.median(m["wall"] for m in runs)
    print(f"  raw  tar|zstd    {mr:6.3f}\n  raw + fsync      {ms:6.3f}")
    print(f"pack / raw {mp / mr:.2f}; pack / (raw + fsync) {mp / ms:.2f}")
    for f in (raw, cs):
        f.unlink(missing_ok=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child()
    else:
        main()
