#!/usr/bin/env bash
# On the build machine: assemble the folder carried to the GPU node (under 64 MiB).
#   prepare.sh CARRY_DIR [REPODATA_DIR]
# With REPODATA_DIR (the repodata-*.json that `run.sh wrap` wrote on the node), also lock
# the `torch` layer here against a copy of that channel's metadata at the same path
# (/tmp/gpuchannel), and put the lock into CARRY_DIR/gpu/lock.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; REPO="$(cd "$HERE/../.." && pwd)"
C="$1"; RD="${2:-}"
mkdir -p "$C"/{whl,deb,py312,src}
PY312=/root/.pyenv/versions/3.12.1
if ! ls "$C"/py312/python-3.12*.conda >/dev/null 2>&1; then
  T=$(mktemp -d); mkdir -p "$T/empty/noarch"; echo '{"packages":{},"packages.conda":{}}' > "$T/empty/noarch/repodata.json"
  "$REPO/.venv/bin/python" "$REPO/examples/torch/python_recipes.py" "$PY312" "$T/recipes" >/dev/null
  "$REPO/.venv/bin/python" "$REPO/cli.py" wrap --recipe "$T/recipes/python" --channel "$T/channel" -c "file://$T/empty"
  cp "$T"/channel/linux-64/python-3.12*.conda "$C/py312/"; rm -rf "$T"
fi
ls "$C"/whl/py_rattler-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$C/whl" py-rattler==0.28.0 py-rattler-build==0.73.0 conda-pack==0.9.2 zstandard==0.25.0
ls "$C"/deb/zstd_*.deb >/dev/null 2>&1 || (cd "$C/deb" && apt-get download zstd)
rm -rf "$C/src" "$C/gpu" && mkdir -p "$C/src"
cp -r "$REPO/condastack" "$REPO/cli.py" "$C/src/" && find "$C/src" -name __pycache__ -prune -exec rm -rf {} +
cp -r "$HERE" "$C/gpu" && rm -rf "$C/gpu/envs" "$C/gpu/transcript"*
if [ -n "$RD" ]; then
  rm -rf /tmp/gpuchannel && mkdir -p /tmp/gpuchannel/linux-64 /tmp/gpuchannel/noarch
  cp "$RD/repodata-linux-64.json" /tmp/gpuchannel/linux-64/repodata.json
  cp "$RD/repodata-noarch.json" /tmp/gpuchannel/noarch/repodata.json
  "$REPO/.venv/bin/python" "$REPO/cli.py" -C "$HERE" lock torch
  mkdir -p "$C/gpu/lock" && cp "$HERE"/lock/torch.* "$C/gpu/lock/"
fi
du -sh "$C"
