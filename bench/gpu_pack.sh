#!/usr/bin/env bash
# bench/pack.py on the 16-core GPU node (the `device` machine: no network, python 3.12, no zstd).
# It runs in the repository's root there (the working tree travels). Carry a folder C (the whole call
# must stay under 64 MiB; here .cache/speedcarry of the checkout) holding:
#   C/whl/  cp312 wheels: py-rattler 0.28.0, py-rattler-build 0.73.0, conda-pack 0.9.2, zstandard 0.25.0,
#           cyclonedx-python-lib 11.12.0 and its needs (py-serializable, license-expression, boolean.py,
#           packageurl-python, defusedxml); click, rich, pyyaml and packaging are there already
#   C/pkg/  Debian's zstd .deb (apt-get download zstd), unpacked with dpkg -x
# then: run(command="ROUNDS=3 CP_ROUNDS=0 BUDGET=3000000000 bash bench/gpu_pack.sh .cache/speedcarry",
#           carry=[".cache/speedcarry"]).
# It builds bench/realistic.py's env there (site-packages and /usr/share capped at BUDGET bytes each),
# runs bench/pack_timeline.py (where pack's wall time goes) and bench/pack.py, and times pack and raw
# tar|zstd (CPU split); the logs land in $OUT.
set -uo pipefail
C="$(cd "${1:?usage: bench/gpu_pack.sh CARRY_FOLDER}" && pwd)"
SRC="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
date -u; nproc; uptime; cat /proc/cpuinfo | grep -m1 "model name"; free -g | head -2; df -h /tmp | tail -1
mkdir -p /tmp/site /tmp/zstd
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$C"/whl/*.whl || exit 1
dpkg -x "$C"/pkg/zstd_*.deb /tmp/zstd || exit 1
export PATH="/tmp/zstd/usr/bin:$PATH" PYTHONPATH="$SRC:/tmp/site"
python3 -V; zstd --version; command -v gcc tar mksquashfs; tar --version | head -1
python3 -c "import rattler, rattler_build, conda_pack, zstandard, cyclonedx, condastack.archive.pack; print('imports ok')" || exit 1
cd "$SRC"
export CONDASTACK_BENCH_CACHE=/tmp/bcache CONDASTACK_BENCH_BUDGET=${BUDGET:-450000000}
t=$(date +%s); python3 bench/realistic.py || exit 1; echo "realistic env built in $(( $(date +%s) - t )) s"
ENV=$(ls -d /tmp/bcache/env-*/env)
# where pack's wall time goes (bench/pack_timeline.py), then the bench itself, then the CPU split
python3 bench/pack_timeline.py "$ENV" ${ROUNDS:-3} 2>&1 | tee "$OUT/timeline.txt"
BENCH_TMP=/tmp BENCH_ROUNDS=${ROUNDS:-3} BENCH_CONDA_PACK_ROUNDS=${CP_ROUNDS:-1} python3 bench/pack.py 2>&1 | tee "$OUT/pack.txt"
TIMEFORMAT="pack: wall %R s, user %U s, sys %S s"; time python3 cli.py pack --prefix "$ENV" -o /tmp/p.tar.zst >/dev/null
TIMEFORMAT="raw:  wall %R s, user %U s, sys %S s"; time bash -c "tar -C '$ENV' -cf - . | zstd -T0 -3 -q -f -o /tmp/r.tar.zst"
date -u
