#!/bin/bash
#SBATCH --job-name=verl-app
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=%x-%j.out
#
# A Slurm job that runs in a condastack env delivered to the shared file system.
# It checks the node with `condastack doctor` before doing any work, so a job on a
# node with a too-old driver (or none) fails in seconds with the reason and a fix,
# instead of deep inside the application.
#
#   sbatch examples/slurm/job.sh                      # env from the Lmod module
#   ENV_MODE=squashfs sbatch examples/slurm/job.sh    # env from the SquashFS image, node-local
#
# Everything site-specific is a variable with a default below.
set -euo pipefail

ENV_MODE=${ENV_MODE:-module}                       # module | squashfs
MODULE_DIR=${MODULE_DIR:-/shared/modulefiles}      # written by `condastack module ... -o`
MODULE=${MODULE:-verl/app/0.5}
ENV_PREFIX=${ENV_PREFIX:-/shared/envs/verl/app}    # the --prefix given to `condastack install`
IMAGE=${IMAGE:-$ENV_PREFIX.squashfs}               # squashfs mode: the image `install` copied
PREAMBLE=${PREAMBLE:-$ENV_PREFIX.preamble.sh}      # squashfs mode: written by `condastack slurm-preamble`
CONDASTACK=${CONDASTACK:-condastack}               # needs only click, rich, pyyaml, py-rattler
if [ "$#" -eq 0 ]; then set -- python -c 'import sys; print("running in", sys.prefix)'; fi

case "$ENV_MODE" in
module)
    # Login shells on most clusters define `module`; batch shells may not.
    if ! command -v module >/dev/null 2>&1 && [ -f /usr/share/lmod/lmod/init/bash ]; then
        . /usr/share/lmod/lmod/init/bash
    fi
    module use "$MODULE_DIR"
    module load "$MODULE"
    ;;
squashfs)
    # The preamble of `condastack slurm-preamble` sbcasts the image to node-local storage on
    # every node, mounts it at the prefix it was packed for, activates the env, and unmounts
    # it when this script exits, even on failure or cancellation. Inside Apptainer instead:
    #   apptainer exec --nv --bind "$IMAGE:$ENV_PREFIX:image-src=/" base.sif "$ENV_PREFIX/bin/python" train.py
    . "$PREAMBLE"
    ;;
*)
    echo "ENV_MODE must be module or squashfs, not '$ENV_MODE'" >&2
    exit 2
    ;;
esac

# Fail fast, with the reason, when this node cannot run the env (driver, glibc, GPUs, space, imports).
$CONDASTACK doctor --prefix "$CONDA_PREFIX" --target "${TMPDIR:-/tmp}" || {
    echo "condastack doctor: node $(hostname) cannot run $CONDA_PREFIX; see the table above" >&2
    exit 1
}

${SRUN-srun} "$@"   # SRUN= (empty) runs the command directly, e.g. outside Slurm
