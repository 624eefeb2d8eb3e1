"""Start-up of an import-heavy real env from its SquashFS image against its unpacked tree (needs root).

    python bench/torch_startup.py TREE [WARM_RUNS] [COLD_RUNS] [CODE]   (defaults 5, 3, "import torch")

TREE is an unpacked env that condastack can pack (e.g. the torch env `KEEP=1 scripts/realworld.sh`
leaves at examples/realworld/out/elsewhere/deeper/torch: torch 2.7.1 and its CUDA wheels from the
real PyPI, ~5.6 GB, ~17k files). The image is made as users make it:
`condastack pack --prefix TREE --format squashfs --dest-prefix MOUNT --warmup CODE`, so its files are
ordered by the first reads of CODE. Then `python -c CODE` is timed from the image mounted by the kernel
(`mount -t squashfs`, what the Slurm preamble uses as root) and by squashfuse_ll (what it uses
otherwise), each case's runs alternating with runs from TREE (the peer); warm: median of WARM_RUNS
after one warm-up; cold: median of COLD_RUNS, each after `sync; echo 3 > /proc/sys/vm/drop_caches`.
Targets (issue 26): image warm <= 1.10x the tree warm, image cold <= the tree cold.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from squashfs_levers import _mount, _times, _umount  # noqa: E402

REPO = HERE.parent


def _pack_image(tree: Path, out: Path, mount: Path, code: str) -> Path:
    image = out / "env.squashfs"
    t = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "cli.py"), "pack", "--prefix", str(tree), "--format", "squashfs",
                    "--dest-prefix", str(mount), "--warmup", code, "-o", str(image)], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"image: {image.stat().st_size / 1e9:.2f} GB, packed in {time.perf_counter() - t:.0f} s", flush=True)
    return image


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    tree = Path(sys.argv[1]).resolve()
    warm = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    cold = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    code = sys.argv[4] if len(sys.argv) > 4 else "import torch"
    root = Path(tempfile.mkdtemp(prefix="bench-torch-start-", dir=os.environ.get("BENCH_TMP")))
    mount = root / "mnt" / "env"
    mount.mkdir(parents=True)
    try:
        image = _pack_image(tree, root, mount, code)
        print(f"load {os.getloadavg()}; python -c {code!r}; {warm} warm runs, {cold} cold runs (medians, ms); "
              "each case alternates with the unpacked tree", flush=True)
        rows = []
        for kind in ("kernel", "squashfuse_ll"):
            p = _mount(kind, image, mount)
            try:
                rows.append((kind, *_times(mount, tree, warm, cold, code)))
            finally:
                _umount(kind, mount, p)
            print(f"  {rows[-1]} load {os.getloadavg()[0]:.1f}", flush=True)
        print("\n| mounter | image warm ms (tree) | / tree warm | image cold ms (tree) | / tree cold |\n"
              "|---|---|---|---|---|")
        for kind, w, c, tw, tc in rows:
            print(f"| {kind} | {w:.0f} ({tw:.0f}) | **{w / tw:.2f}** | {c:.0f} ({tc:.0f}) | **{c / tc:.2f}** |")
    finally:
        if subprocess.run(["mountpoint", "-q", str(mount)]).returncode == 0:
            subprocess.run(["umount", "-l", str(mount)])
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
