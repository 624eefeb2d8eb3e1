#!/usr/bin/env bash
# condastack on a GPU node with no network (the device machine: one H200, 16 cores).
# It runs from a carried folder C (see prepare.sh) that holds:
#   C/whl/  py-rattler, py-rattler-build, conda-pack wheels (pip --target, no network)
#   C/deb/  Debian's zstd, unpacked with dpkg -x (the node has no zstd)
#   C/py312/ the conda python 3.12 package built on the build machine from pyenv's CPython
#   C/src/  condastack itself; C/gpu/ this folder, with the lock made on the build machine
#
#   run.sh wrap   wrap the node's torch + nvidia wheels; write the channel's repodata to $OUT
#                 (lock it on the build machine: conda-lock is not on the node)
#   run.sh all    (wrap again if the channel is gone: wrapping is reproducible, so the
#                 lock's hashes still hold) build, verify, pack, unpack elsewhere, CUDA
#                 matmul vs CPU, doctor, import times, pack vs conda-pack vs tar|zstd
set -uo pipefail
C="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
CH=/tmp/gpuchannel
W=/tmp/gpuwork
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
step() { printf '\n=== %s  [%s]\n' "$*" "$(date +%T)"; }
# measure NAME CMD...: wall seconds and peak RSS of the command and its children
measure() {
  local name=$1; shift
  python3 - "$name" "$@" <<'PY'
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[2:]).returncode
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"MEASURE {sys.argv[1]}: {wall:.1f} s, peak RSS {rss:.0f} MB, exit {rc}", flush=True)
sys.exit(rc)
PY
}

setup() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$C"/whl/*.whl || exit 1
  mkdir -p /tmp/zstd && for d in "$C"/deb/*.deb; do dpkg -x "$d" /tmp/zstd; done
  export PATH="/tmp/zstd/usr/bin:$PATH" PYTHONPATH="$C/src:/tmp/site"
  CS=(python3 "$C/src/cli.py")
  nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import sys, torch; print(sys.version.split()[0], sys.prefix, "torch", torch.__version__, torch.version.cuda)'
  zstd --version
}

wrap_phase() {
  step "wrap the node's torch and its dependency closure into $CH (condastack wrap)"
  rm -rf "$CH" && mkdir -p "$CH/linux-64" && cp "$C"/py312/*.conda "$CH/linux-64/"
  WRAP_TMP=/tmp measure wrap python3 "$C/gpu/wrap_installed.py" "$CH" torch | tee "$OUT/wrap.jsonl"
  du -sh "$CH"
  cp "$CH/linux-64/repodata.json" "$OUT/repodata-linux-64.json"
  cp "$CH/noarch/repodata.json" "$OUT/repodata-noarch.json"
}

all_phase() {
  if [ ! -f "$CH/linux-64/repodata.json" ]; then wrap_phase; fi
  rm -rf "$W" && mkdir -p "$W" && cp -r "$C/gpu" "$W/proj"
  ENV="$W/proj/envs/torch"
  step "build the locked env (condastack.build.build_prefix: the CLI's stack reading needs conda-lock)"
  measure build python3 -c "
from pathlib import Path; from condastack import build_prefix
r = build_prefix(Path('$W/proj/lock/torch.conda-lock.yml'), Path('$ENV'), layer='torch', stack='gpu-node')
print(r.action, r.conda_packages, 'conda packages', r.installer)" || return 1
  du -sh "$ENV"; "${CS[@]}" verify --prefix "$ENV" || return 1

  step "pack: condastack vs raw tar | zstd -T0 vs conda-pack (16 cores)"
  for r in 1 2 3; do  # three interleaved rounds of the two fast ones
    measure "round $r: condastack pack (tar.zst, all cores)" "${CS[@]}" pack --prefix "$ENV" -o "$W/torch.tar.zst"
    measure "round $r: raw tar | zstd -T0 -3" bash -c "tar -C '$ENV' -cf - . | zstd -T0 -3 -q -f -o '$W/raw.tar.zst'"
  done
  CP=(python3 -c "import sys; from conda_pack.cli import main; sys.argv[0]='conda-pack'; main()")
  measure "conda-pack defaults (tar.gz, 1 thread)" timeout 300 "${CP[@]}" -p "$ENV" -o "$W/cp1.tar.gz" -q
  measure "conda-pack -j 16 (tar.gz)" timeout 300 "${CP[@]}" -p "$ENV" -o "$W/cp.tar.gz" -j 16 -q
  measure "conda-pack -j 16 (tar.zst)" timeout 300 "${CP[@]}" -p "$ENV" -o "$W/cp.tar.zst" -j 16 -q
  ls -l "$W"/*.tar.* | awk '{printf "%s %.0f MB\n", $9, $5/1e6}'

  step "unpack at another path (relocate) vs raw zstd -dc | tar -x"
  DEST="$W/elsewhere/deeper/torch"
  for r in 1 2; do
    rm -rf "$W/elsewhere" "$W/rawx"; sync
    measure "round $r: condastack unpack" "${CS[@]}" unpack "$W/torch.tar.zst" "$DEST"
    sync; mkdir -p "$W/rawx"
    measure "round $r: raw zstd -dc | tar -x" bash -c "zstd -dc '$W/raw.tar.zst' | tar -C '$W/rawx' -xf -"
  done
  rm -rf "$W/rawx" "$ENV"   # the original build is gone: the relocated copy stands alone
  "${CS[@]}" verify --prefix "$DEST"

  step "CUDA matmul from the relocated env, checked against the CPU"
  (unset PYTHONPATH VIRTUAL_ENV; cd /tmp && "$DEST/bin/python" - "$DEST" <<'PY'
import sys, time, torch
assert sys.prefix == sys.argv[1] and torch.__file__.startswith(sys.argv[1]), (sys.prefix, torch.__file__)
print("python", sys.version.split()[0], "at", sys.prefix)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "nccl", ".".join(map(str, torch.cuda.nccl.version())), "device", torch.cuda.get_device_name(0))
g = torch.Generator().manual_seed(0)
for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
    a = torch.randn(4096, 4096, dtype=dtype, generator=g)
    b = torch.randn(4096, 4096, dtype=dtype, generator=g)
    cpu = a @ b
    ga, gb = a.cuda(), b.cuda()
    torch.cuda.synchronize(); t = time.perf_counter()
    gpu = ga @ gb
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    err = ((gpu.cpu() - cpu).abs().max() / cpu.abs().max()).item()
    print(f"{dtype}: 4096x4096 @ 4096x4096 on {torch.cuda.get_device_name(0)} in {dt * 1e3:.1f} ms; "
          f"max |gpu - cpu| / max |cpu| = {err:.2e} (tolerance {tol:g})")
    assert err < tol, "GPU and CPU products differ"
print("CUDA matmul matches the CPU")
PY
  ) || return 1

  step "doctor --prefix on the relocated env"
  "${CS[@]}" doctor --prefix "$DEST"; echo "doctor exit $?"

  step "import torch: relocated env vs the node's original install (5 runs each, after a warm-up)"
  python3 - "$DEST/bin/python" "$(command -v python3)" <<'PY'
import os, statistics, subprocess, sys, time
env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
# `pass` and `import sympy` (pure python) separate the interpreter's own speed from the env's layout.
for code in ("import torch", "pass", "import sympy"):
    for label, py in (("relocated", sys.argv[1]), ("original", sys.argv[2])):
        subprocess.run([py, "-W", "ignore", "-c", code], env=env, check=True, stderr=subprocess.DEVNULL)
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run([py, "-W", "ignore", "-c", code], env=env, check=True, stderr=subprocess.DEVNULL)
            runs.append(time.perf_counter() - t)
        print(f"{code!r:16} {label:9} ({py}): min {min(runs):.2f} s, median {statistics.median(runs):.2f} s")
PY
}

setup
case "${1:-all}" in
  wrap) wrap_phase ;;
  all) all_phase ;;
esac
