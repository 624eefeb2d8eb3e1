#!/usr/bin/env bash
# The seed's PyTorch 2.7.1 (CUDA 12.6) env for real: lock against PyPI, build, verify,
# pack, unpack elsewhere, import torch/tensordict/sglang/flashinfer, doctor; then
# install, Lmod module and SquashFS as for the demo. Needs network (PyPI) and
# ~30 GB free. Usage: examples/torch/run.sh [PYTHON_ROOT]  (default: pyenv's 3.10)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYROOT="${1:-/root/.pyenv/versions/3.10.13}"
WORK="${TORCH_WORK:-$HERE/out}"
CS=("$REPO/.venv/bin/python" "$REPO/cli.py" -C "$HERE")
[ -x "$REPO/.venv/bin/python" ] || bash "$REPO/scripts/setup.sh"
step() { printf '\n=== %s  [%s]\n' "$*" "$(date +%T)"; }
t() { local s=$SECONDS; "$@"; echo "  ($(( SECONDS - s )) s)"; }

step "site channel: conda python + pip from $PYROOT (condastack wrap --recipe)"
mkdir -p "$WORK/empty-channel/noarch" "$WORK/recipes"
[ -f "$WORK/empty-channel/noarch/repodata.json" ] || echo '{"packages":{},"packages.conda":{}}' \
  > "$WORK/empty-channel/noarch/repodata.json"
"$REPO/.venv/bin/python" "$HERE/python_recipes.py" "$PYROOT" "$WORK/recipes"
for r in python pip; do  # once: the package is rebuilt only when the channel lacks it
  ls "$HERE/environments/channel/"*/"$r"-[0-9]*.conda >/dev/null 2>&1 ||
    t "${CS[@]}" wrap --recipe "$WORK/recipes/$r" -c "file://$WORK/empty-channel"
done

step "lock base + app against the real PyPI"
t "${CS[@]}" lock
step "build app, verify"
t "${CS[@]}" build app
t "${CS[@]}" verify app
du -sh "$HERE/envs/app"

step "pack app, unpack at another path"
rm -rf "$WORK/elsewhere"
t "${CS[@]}" pack app
DEST="$WORK/elsewhere/deeper/app"
t "${CS[@]}" unpack "$HERE/pack/app-linux-64.tar.zst" "$DEST"
t "${CS[@]}" verify --prefix "$DEST"

step "run from the relocated env"
cd /tmp
"$DEST/bin/python" - "$DEST" <<'PY'
import sys, time
t = time.perf_counter()
import torch, tensordict, sglang, flashinfer
print(f"imported torch/tensordict/sglang/flashinfer in {time.perf_counter() - t:.1f} s from {sys.prefix}")
assert sys.prefix == sys.argv[1], sys.prefix
assert torch.__file__.startswith(sys.argv[1]), torch.__file__
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "| tensordict", tensordict.__version__, "| sglang", sglang.__version__, "| flashinfer", flashinfer.__version__)
assert torch.__version__.split("+")[0] == "2.7.1" and torch.version.cuda == "12.6"
a, b = torch.randn(512, 256, dtype=torch.float64), torch.randn(256, 128, dtype=torch.float64)
ref = [[sum(a[i, k].item() * b[k, j].item() for k in range(256)) for j in range(3)] for i in range(3)]
assert torch.allclose((a @ b)[:3, :3], torch.tensor(ref, dtype=torch.float64)), "matmul mismatch"
print("CPU matmul 512x256 @ 256x128 checked against a pure-python product: ok")
PY
cd - >/dev/null
step "doctor --prefix on the relocated env"
"${CS[@]}" doctor --prefix "$DEST" || echo "(doctor exit $?: this build machine has no GPU; see the table)"

step "install to a shared prefix, modulefiles, SquashFS"
rm -rf "$WORK/shared" "$WORK/modules"
t "${CS[@]}" install "$HERE/pack/app-linux-64.tar.zst" --prefix "$WORK/shared/envs/verl-torch/app"
"$WORK/shared/envs/verl-torch/app/bin/python" -c "import torch, sys; print('installed:', sys.prefix, torch.__version__)"
t "${CS[@]}" module "$WORK/shared/envs/verl-torch/app" --name verl-torch/app --version 2.7.1 -o "$WORK/modules"
find "$WORK/modules" -type f
t "${CS[@]}" pack app --format squashfs --dest-prefix /shared/envs/verl-torch/app -o "$HERE/pack/app-linux-64.sqfs"
ls -la "$HERE/pack/"
mkdir -p "$WORK/mnt"
if squashfuse "$HERE/pack/app-linux-64.sqfs" "$WORK/mnt" 2>/dev/null; then
  ls "$WORK/mnt/lib/python3.10/site-packages/torch/lib" | head -5
  fusermount -u "$WORK/mnt" || umount "$WORK/mnt"
fi
step "done"
