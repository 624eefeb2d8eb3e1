"""Start-up from a SquashFS image: the levers, one at a time, against the unpacked tree (needs root).

    python bench/squashfs_levers.py [WARM_RUNS] [COLD_RUNS] [--focus]    (defaults 5 and 3)

Builds the demo `app` env as bench/slurm_startup.py does (an unpacked tree and an image packed for
its own prefix), then times `python -c 'import <slurm_startup.IMPORTS>'` from:
  - the unpacked tree;
  - the image as `pack --format squashfs` makes it, mounted by each mounter in turn: squashfuse
    (high-level FUSE), squashfuse with -o kernel_cache,entry_timeout,attr_timeout, squashfuse_ll
    (multi-threaded, its default), squashfuse_ll -s (one thread), the kernel (mount -t squashfs -o loop);
  - re-made images (unsquashfs, then mksquashfs as the SquashfsWriter does with one option changed):
    block size, zstd level, and files ordered by first access (-sort from the first reads of the
    import in the unpacked tree, as `pack --warmup` records them). "image as packed" is pack's
    default: ordered by the interpreter's own start-up (`--warmup pass`).
Each case: the median of WARM_RUNS runs after one warm-up, and the median of COLD_RUNS runs each after
`sync; echo 3 > /proc/sys/vm/drop_caches` (the whole machine's page cache: keep COLD_RUNS small on a
shared machine). Each case's runs alternate with runs from the unpacked tree, its peer: the ratios are
to those, so both sides see the same load. No Slurm here: the job
steps of bench/slurm_startup.py add nothing to the time of the import itself.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from slurm_startup import IMPORTS, _prepare  # noqa: E402

from condastack.archive.access import first_access, sort_file_text  # noqa: E402

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def _drop() -> None:
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)


def _import_ms(prefix: Path, code: str = f"import {IMPORTS}") -> float:
    t = time.perf_counter()
    p = subprocess.run([str(prefix / "bin" / "python"), "-c", code], env=ENV, cwd="/", capture_output=True)
    if p.returncode != 0:  # the program's own warnings are not shown otherwise (torch without numpy warns)
        raise SystemExit(f"{prefix}: python -c {code!r} exited {p.returncode}: {p.stderr.decode(errors='replace')}")
    return (time.perf_counter() - t) * 1e3


def _times(prefix: Path, tree: Path, warm: int, cold: int,
           code: str = f"import {IMPORTS}") -> tuple[float, float, float, float]:
    """Medians (warm, cold) of `python -c code` from the image at `prefix` and from the unpacked `tree`,
    runs alternating between the two, so that both see the same load on a shared machine."""
    runs: dict[tuple[Path, bool], list[float]] = {(p, c): [] for p in (prefix, tree) for c in (False, True)}
    for i in range(cold):
        for p in (prefix, tree) if i % 2 == 0 else (tree, prefix):
            _drop()
            runs[p, True].append(_import_ms(p, code))
    _import_ms(prefix, code)
    _import_ms(tree, code)
    for i in range(warm):
        for p in (prefix, tree) if i % 2 == 0 else (tree, prefix):
            runs[p, False].append(_import_ms(p, code))
    m = {k: statistics.median(v) for k, v in runs.items()}
    return m[prefix, False], m[prefix, True], m[tree, False], m[tree, True]


def _mount(kind: str, image: Path, at: Path) -> subprocess.Popen | None:
    if kind == "kernel":
        subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro", str(image), str(at)], check=True)
        return None
    cmd = {
        "squashfuse": ["squashfuse", "-f"],
        "squashfuse+cache": ["squashfuse", "-f", "-o", "kernel_cache,entry_timeout=86400,attr_timeout=86400,"
                             "negative_timeout=86400"],
        "squashfuse_ll": ["squashfuse_ll", "-f"],
        "squashfuse_ll -s": ["squashfuse_ll", "-f", "-s"],
    }[kind]
    p = subprocess.Popen([*cmd, str(image), str(at)], stderr=subprocess.PIPE)
    for _ in range(200):
        if subprocess.run(["mountpoint", "-q", str(at)]).returncode == 0:
            return p
        if p.poll() is not None:
            raise SystemExit(f"{kind}: {p.stderr.read().decode() if p.stderr else ''}")
        time.sleep(0.05)
    raise SystemExit(f"{kind}: no mount at {at}")


def _umount(kind: str, at: Path, p: subprocess.Popen | None) -> None:
    subprocess.run(["umount" if kind == "kernel" else "fusermount", *([] if kind == "kernel" else ["-u"]), str(at)],
                   check=True)
    if p is not None:
        p.wait()


def _mksquashfs(src: Path, out: Path, extra: list[str], level: int = 3) -> Path:
    # as condastack.archive.writers.SquashfsWriter does, plus `extra`
    subprocess.run(["mksquashfs", str(src), str(out), "-noappend", "-no-progress", "-quiet", "-comp", "zstd",
                    "-Xcompression-level", str(level), "-processors", str(os.cpu_count()), "-all-root",
                    "-no-xattrs", *extra], check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "0"})
    return out


def access_order(tree: Path, out: Path) -> Path:
    """A mksquashfs sort file from the first reads of the import in the unpacked tree, recorded as
    `pack --format squashfs --warmup 'import ...'` records them (condastack.archive.access)."""
    order = first_access(tree, f"import {IMPORTS}")
    out.write_text(sort_file_text(order))
    print(f"access order: {len(order)} files read by the import")
    return out


def main() -> None:
    warm = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    cold = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    focus = "--focus" in sys.argv  # the squashfuse_ll and kernel cases of 128K/64K blocks, sorted or not
    root = Path(tempfile.mkdtemp(prefix="bench-sqfs-"))
    env = {**ENV, "HOME": str(root), "CONDASTACK_PKGS": str(root / "pkgs"),
           "CONDASTACK_NODE_DIR": str(root / "node-local")}
    try:
        tree, sq, _ = _prepare(root, env)
        image = Path(f"{sq}.squashfs")
        flat = root / "flat"
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(flat), str(image)], check=True)
        sort = access_order(tree, root / "order.sort")  # the tree and the image hold the same files
        images = {
            "image as packed (128K blocks, zstd 3)": image,
            "-b 64K": _mksquashfs(flat, root / "b64.sqfs", ["-b", "64K"]),
            "-b 1M": _mksquashfs(flat, root / "b1m.sqfs", ["-b", "1M"]),
            "zstd level 1": _mksquashfs(flat, root / "l1.sqfs", [], level=1),
            "zstd level 19": _mksquashfs(flat, root / "l19.sqfs", [], level=19),
            "-sort by first access": _mksquashfs(flat, root / "sort.sqfs", ["-sort", str(sort)]),
            "-b 64K, -sort by first access": _mksquashfs(flat, root / "b64sort.sqfs",
                                                         ["-b", "64K", "-sort", str(sort)]),
        }
        print(f"load {os.getloadavg()}; {warm} warm runs (median), {cold} cold runs (median), ms; each case "
              "alternates with the unpacked tree", flush=True)
        rows = []
        sq.mkdir(parents=True, exist_ok=True)
        cases = [(kind, "image as packed", image) for kind in
                 ("squashfuse", "squashfuse+cache", "squashfuse_ll", "squashfuse_ll -s", "kernel")]
        cases += [(kind, label, img) for kind in ("squashfuse_ll", "kernel") for label, img in list(images.items())[1:]]
        if focus:  # the candidates only, with more runs
            cases = [c for c in cases if c[0] in ("squashfuse_ll", "kernel")
                     and c[1] in ("image as packed", "-b 64K", "-sort by first access",
                                  "-b 64K, -sort by first access")]
        for kind, label, img in cases:
            p = _mount(kind, img, sq)
            try:
                rows.append((kind, label, *_times(sq, tree, warm, cold)))
            finally:
                _umount(kind, sq, p)
            print(f"  {rows[-1]} load {os.getloadavg()[0]:.1f}", flush=True)
        print(f"\nload {os.getloadavg()}; image sizes: "
              + ", ".join(f"{k} {v.stat().st_size / 1e6:.1f} MB" for k, v in images.items()))
        print("| mounter | image | warm ms (tree) | / tree warm | cold ms (tree) | / tree cold |\n"
              "|---|---|---|---|---|---|")
        for kind, label, w, c, tw, tc in rows:
            print(f"| {kind} | {label} | {w:.0f} ({tw:.0f}) | {w / tw:.2f} | {c:.0f} ({tc:.0f}) | {c / tc:.2f} |")
    finally:
        if subprocess.run(["mountpoint", "-q", str(root / "shared" / "envs" / "app-sq")]).returncode == 0:
            subprocess.run(["umount", "-l", str(root / "shared" / "envs" / "app-sq")])
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
