#!/bin/bash
# One device run: doctor on a real GPU node (issue 7).
# Copied from the (ignored) .gpu/ folder it ran from: .gpu/proj/environments/stack.yml = stack.yml here,
# .gpu/app-linux-64.tar.gz = `pack --format tar.gz` of hello + gpu-kernels (cuda12_1) + libfoo from the test channel.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{
  echo "## python3: $(python3 --version); $(python3 -c 'import click, rich, yaml, rattler; print("click", click.__version__, "yaml", yaml.__version__)')"
  python3 -c 'import conda_lock' 2>&1 | tail -1
  echo "## nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader"
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader
  echo "## which zstd gzip pigz: $(which zstd gzip pigz | tr '\n' ' ')"
  echo "## condastack -C .gpu/proj doctor app"
  python3 cli.py -C .gpu/proj doctor app; echo "exit=$?"
  echo "## CONDA_OVERRIDE_CUDA=11.8 condastack -C .gpu/proj doctor app"
  CONDA_OVERRIDE_CUDA=11.8 python3 cli.py -C .gpu/proj doctor app; echo "exit=$?"
  echo "## condastack install .gpu/app-linux-64.tar.gz --prefix /tmp/shared/envs/verl/app"
  python3 cli.py install .gpu/app-linux-64.tar.gz --prefix /tmp/shared/envs/verl/app; echo "exit=$?"
  /tmp/shared/envs/verl/app/bin/hello
  echo "## condastack doctor --prefix /tmp/shared/envs/verl/app"
  python3 cli.py doctor --prefix /tmp/shared/envs/verl/app; echo "exit=$?"
  echo "## condastack module /tmp/shared/envs/verl/app --name verl/app --version 0.5 -o /tmp/mods"
  python3 cli.py module /tmp/shared/envs/verl/app --name verl/app --version 0.5 -o /tmp/mods; echo "exit=$?"
} > "$OUT/doctor-gpu.txt" 2>&1
python3 cli.py -C .gpu/proj doctor app --json > "$OUT/doctor-layer.json" 2>&1
python3 cli.py doctor --prefix /tmp/shared/envs/verl/app --json > "$OUT/doctor-prefix.json" 2>&1
cat "$OUT/doctor-gpu.txt"
