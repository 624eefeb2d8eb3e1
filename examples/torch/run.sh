#!/usr/bin/env bash
# The seed's PyTorch 2.7.1 (CUDA 12.6) env for real: lock against PyPI, build, verify,
# pack, unpack elsewhere, import torch/tensordict/sglang/flashinfer, doctor; then
# install, Lmod module and SquashFS as for the demo. Needs network (PyPI) and
# ~30 GB free. Usage: [LAYER=app|base] [SKIP_LOCK=1] [BASE_PYTHON=...] examples/torch/run.sh [PYTHON_ROOT]
# (default: layer app, pyenv's 3.10; SKIP_LOCK=1 builds from the lock a previous run wrote: locks name this machine's site channel and wheel folder, so none is committed).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYROOT="${1:-/root/.pyenv/versions/3.10.13}"
WORK="${TORCH_WORK:-$HERE/out}"
LAYER="${LAYER:-app}"
MODS="torch, tensordict"; [ "$LAYER" = app ] && MODS="torch, tensordict, sglang, flashinfer"
CS=("$REPO/.venv/bin/python" "$REPO/cli.py" -C "$HERE")
[ -x "$REPO/.venv/bin/python" ] || bash "$REPO/scripts/setup.sh"
step() { printf '\n=== %s  [%s]\n' "$*" "$(date +%T)"; }
export COLUMNS="${COLUMNS:-120}"  # tables as wide as a terminal's, also under tee
echo "examples/torch/run.sh LAYER=$LAYER  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $(git -C "$REPO" rev-parse --short HEAD)"
echo "host: $(nproc) cores, glibc $(ldd --version | head -1 | grep -o '[0-9.]*$'), python root $PYROOT"
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

# flashinfer-python 0.2.6.post1 is on PyPI as an sdist only; a build installs locked wheels only.
# So its wheel is built once, by the base env's python (setup.py imports torch; 0.2.6 compiles its
# kernels at run time: no GPU needed, and the nvcc version found, if any, is only recorded), into
# the site wheel folder that app.yml names with `-f wheels`; the lock then takes it from there. BASE_PYTHON: another base env's python.
FI=flashinfer-python==0.2.6.post1
UPDATE=()
if [ "$LAYER" = app ] && ! ls "$HERE/environments/wheels/"flashinfer_python-0.2.6.post1-*.whl >/dev/null 2>&1; then
  BASEPY="${BASE_PYTHON:-$HERE/envs/base/bin/python}"
  if [ ! -x "$BASEPY" ]; then
    step "build base (its python builds the $FI wheel)"
    [ -n "${SKIP_LOCK:-}" ] || t "${CS[@]}" lock base
    t "${CS[@]}" build base
  fi
  step "build the $FI wheel with $BASEPY into environments/wheels/"
  # setuptools >= 77 reads its PEP 639 license field; wheel for bdist_wheel: both beside the env
  "$BASEPY" -m pip install -q --disable-pip-version-check --target "$WORK/build-tools" "setuptools>=77" wheel
  (cd /tmp && t env PYTHONPATH="$WORK/build-tools" "$BASEPY" -m pip wheel -q --disable-pip-version-check \
    --no-deps --no-build-isolation "$FI" -w "$HERE/environments/wheels")
  ls -l "$HERE/environments/wheels/"
  # a new wheel has a new sha256: re-solve that package in an app lock a previous run wrote (a fresh
  # clone has none: the first lock solves it anyway)
  [ -f "$HERE/lock/app.conda-lock.yml" ] && UPDATE=(--update flashinfer-python)
fi

if [ -z "${SKIP_LOCK:-}" ]; then
  # LAYER=base locks base alone: app's flashinfer wheel is built from the base env first
  LOCKED=(); [ "$LAYER" = base ] && LOCKED=(base)
  step "lock ${LOCKED[*]:-base + app} against the real PyPI"
  t "${CS[@]}" lock "${UPDATE[@]}" "${LOCKED[@]}"
fi
step "build $LAYER, verify"
t "${CS[@]}" build "$LAYER"
t "${CS[@]}" verify "$LAYER"
du -sh "$HERE/envs/$LAYER"

step "pack $LAYER, unpack at another path"
rm -rf "$WORK/elsewhere"
t "${CS[@]}" pack "$LAYER"
ls -l "$HERE/pack/$LAYER-linux-64.tar.zst"
DEST="$WORK/elsewhere/deeper/$LAYER"
t "${CS[@]}" unpack "$HERE/pack/$LAYER-linux-64.tar.zst" "$DEST"
t "${CS[@]}" verify --prefix "$DEST"

step "run from the relocated env"
cd /tmp
"$DEST/bin/python" - "$DEST" "$MODS" <<'PY'
import importlib, sys, time
t = time.perf_counter()
mods = {m: importlib.import_module(m) for m in sys.argv[2].split(", ")}
print(f"imported {', '.join(mods)} in {time.perf_counter() - t:.1f} s from {sys.prefix}")
torch, tensordict = mods["torch"], mods["tensordict"]
assert sys.prefix == sys.argv[1], sys.prefix
assert torch.__file__.startswith(sys.argv[1]), torch.__file__
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "|",
      " | ".join(f"{m} {getattr(mod, '__version__', '?')}" for m, mod in mods.items() if m != "torch"))
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
SH="$WORK/shared/envs/verl-torch/$LAYER"
t "${CS[@]}" install "$HERE/pack/$LAYER-linux-64.tar.zst" --prefix "$SH"
(cd /tmp && "$SH/bin/python" -c "import torch, sys; print('installed:', sys.prefix, torch.__version__)")
t "${CS[@]}" module "$SH" --name "verl-torch/$LAYER" --version 2.7.1 -o "$WORK/modules"
find "$WORK/modules" -type f
t "${CS[@]}" pack "$LAYER" --format squashfs --dest-prefix "/shared/envs/verl-torch/$LAYER" \
  -o "$HERE/pack/$LAYER-linux-64.sqfs"
ls -la "$HERE/pack/"
mkdir -p "$WORK/mnt"
if squashfuse "$HERE/pack/$LAYER-linux-64.sqfs" "$WORK/mnt" 2>/dev/null; then
  ls "$WORK/mnt/lib/python3.10/site-packages/torch/lib" | head -5
  fusermount -u "$WORK/mnt" || umount "$WORK/mnt"
fi
step "done"
