#!/usr/bin/env bash
# The real-PyPI example end to end (examples/realworld): lock torch against the real PyPI, build,
# verify, pack, unpack at another path, verify there, then import torch and check a matmul from
# the unpacked env. Run it before resolving an issue that touches lock, build, wrap or pack, and
# keep its transcript:
#   bash scripts/realworld.sh 2>&1 | tee examples/realworld/transcript.txt
# Needs PyPI (https://pypi.org/simple) and ~20 GB free (5.6 GB env, 2.6 GB archive, 5.6 GB
# unpacked, the wheels in $CONDASTACK_PKGS). Usage: [KEEP=1] scripts/realworld.sh [PYTHON_ROOT]
# PYTHON_ROOT: the CPython repackaged as the layer's conda python (default pyenv's 3.10.13).
# Outputs go to examples/realworld/{lock,envs,pack,out}; they are removed at the end unless KEEP=1.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$REPO/examples/realworld"
PYROOT="${1:-/root/.pyenv/versions/3.10.13}"
WORK="$HERE/out"
CS=("$REPO/.venv/bin/python" "$REPO/cli.py" -C "$HERE")
export COLUMNS="${COLUMNS:-120}"  # tables as wide as a terminal's, also under tee
[ -x "$REPO/.venv/bin/python" ] || bash "$REPO/scripts/setup.sh"
step() { printf '\n=== %s  [%s]\n' "$*" "$(date +%T)"; }
t() { local s=$SECONDS; "$@"; echo "  ($(( SECONDS - s )) s)"; }
START=$SECONDS

echo "scripts/realworld.sh  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $(git -C "$REPO" rev-parse --short HEAD)$(
  [ -z "$(git -C "$REPO" status --porcelain -- condastack scripts examples/realworld)" ] || echo ' (modified)')"
echo "host: $(nproc) cores, glibc $(ldd --version | head -1 | grep -o '[0-9.]*$'), python root $PYROOT"
timeout 20 curl -fsS -o /dev/null https://pypi.org/simple/torch/ ||
  { echo "PyPI (https://pypi.org/simple) is not reachable: this example locks against it." >&2; exit 1; }

step "site channel: conda python + pip from $PYROOT (condastack wrap --recipe)"
rm -rf "$HERE/lock" "$HERE/envs" "$HERE/pack" "$WORK"  # every run is a whole, fresh pipeline
mkdir -p "$WORK/empty-channel/noarch"
echo '{"packages":{},"packages.conda":{}}' > "$WORK/empty-channel/noarch/repodata.json"
"$REPO/.venv/bin/python" "$REPO/examples/torch/python_recipes.py" "$PYROOT" "$WORK/recipes"
for r in python pip; do  # once: the package is rebuilt only when the channel lacks it
  ls "$HERE/environments/channel/"*/"$r"-[0-9]*.conda >/dev/null 2>&1 ||
    t "${CS[@]}" wrap --recipe "$WORK/recipes/$r" -c "file://$WORK/empty-channel"
done

step "lock against the real PyPI"
t "${CS[@]}" lock
grep -c "manager: pip" "$HERE/lock/torch.conda-lock.yml" | sed 's/^/pip packages locked: /'
grep -A2 -E "^- name: (python|torch|triton|nvidia-cudnn-cu12|nvidia-cublas-cu12)$" "$HERE/lock/torch.conda-lock.yml" |
  paste -d' ' - - - - | awk '{print "  " $3, $5, "(" $7 ")"}'

step "build, verify"
t "${CS[@]}" build torch
t "${CS[@]}" verify torch
du -sh "$HERE/envs/torch"

step "pack, unpack at another path, verify there"
t "${CS[@]}" pack torch
ls -l "$HERE/pack/torch-linux-64.tar.zst"
DEST="$WORK/elsewhere/deeper/torch"
t "${CS[@]}" unpack "$HERE/pack/torch-linux-64.tar.zst" "$DEST"
t "${CS[@]}" verify --prefix "$DEST"
rm -rf "$HERE/envs"  # the unpacked copy must stand on its own

step "import torch and multiply from the unpacked env"
(cd /tmp && "$DEST/bin/python" - "$DEST" <<'PY'
import sys, time
t = time.perf_counter()
import torch
print(f"imported torch {torch.__version__} in {time.perf_counter() - t:.1f} s from {sys.prefix}")
assert sys.prefix == sys.argv[1], sys.prefix
assert torch.__file__.startswith(sys.argv[1]), torch.__file__
print("torch.version.cuda", torch.version.cuda, "| cuda available:", torch.cuda.is_available(),
      "| threads:", torch.get_num_threads())
g = torch.Generator().manual_seed(0)
a, b = torch.randn(256, 128, dtype=torch.float64, generator=g), torch.randn(128, 64, dtype=torch.float64, generator=g)
c = a @ b
ref = [[sum(a[i, k].item() * b[k, j].item() for k in range(128)) for j in range(64)] for i in range(256)]
assert torch.allclose(c, torch.tensor(ref, dtype=torch.float64)), "matmul differs from the pure-python product"
print("CPU matmul 256x128 @ 128x64 (float64) equals the pure-python product: ok")
PY
)
if [ -z "${KEEP:-}" ]; then rm -rf "$HERE/pack" "$WORK"; fi
step "done in $(( SECONDS - START )) s"
