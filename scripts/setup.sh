#!/usr/bin/env bash
# Installs what condastack and its tests need on a fresh Debian machine:
# apt tools (when root) and a virtual environment at .venv with condastack.
set -euo pipefail
cd "$(dirname "$0")/.."
# slurm-wlm, munge, slurmdbd and mariadb-server: the single-node Slurm cluster of tests/slurm_cluster.py
# (the fixture starts its own daemons on 127.0.0.1; the packages' services are not used).
# fuse-overlayfs: delta SquashFS images mounted over their parent's; docker-registry: the registry tests (127.0.0.1).
APT_PKGS="squashfs-tools squashfuse fuse3 fuse-overlayfs docker-registry zstd pigz patchelf skopeo umoci lmod debootstrap binutils podman runc
  slurm-wlm munge slurmdbd mariadb-server"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi
# Environment Modules conflicts with Lmod as a package, so its modulecmd.tcl is only
# extracted (not installed) for the Tcl modulefile test.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -f .cache/envmodules/modulecmd.tcl ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download -qq environment-modules >/dev/null 2>&1); then
    dpkg -x "$tmp"/environment-modules_*.deb "$tmp/x"
    found=$(find "$tmp/x" -name modulecmd.tcl | head -n 1)
    if [ -n "$found" ]; then mkdir -p .cache/envmodules && cp "$found" .cache/envmodules/modulecmd.tcl; fi
  fi
  rm -rf "$tmp"
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.condastack-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
