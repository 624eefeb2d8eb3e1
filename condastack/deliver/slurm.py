"""`condastack slurm-preamble`: a job preamble that runs a SquashFS env from node-local storage.

A SquashFS image packed with `--dest-prefix P` runs only when mounted at P.
Mounting it from the shared file system makes every node read the image over
the network for each page; copying it once per node with `sbcast` (Slurm's tree
broadcast) and mounting the local copy keeps the start-up reads node-local.

The preamble is a bash fragment to source at the top of an sbatch script. On
every node of the job it:
1. `sbcast`s the image to node-local storage ($CONDASTACK_NODE_DIR, default /tmp);
2. mounts the copy with `squashfuse_ll -f` (or `squashfuse -f`) at P, in a job step that lasts as long as
   the script (Slurm kills a step's processes when the step ends, so the FUSE
   daemon must live in a step of its own; `--overlap` keeps it from holding CPUs
   the job's own steps need);
3. activates the env (the same variables and activate.d scripts as `install`'s
   activate.sh, read from the image now, so the job needs no condastack);
and, from a bash EXIT trap, unmounts P when the script ends, whether it
succeeds or fails. When the job is cancelled or times out, squashfuse unmounts
on the SIGTERM Slurm sends. The node-local copy is unlinked as soon as it is
mounted, so it disappears with the mount however the job ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from condastack.archive.signing import check_signatures
from condastack.core import quoting
from condastack.core.access import SHARED, Access, apply_file, make_folders
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_write_text
from condastack.core.version import __version__
from condastack.deliver.install import verify_archive
from condastack.deliver.module import EnvInfo, read_env_info, render_activate_sh

# How long the preamble waits for every node's mount (tenths of a second).
MOUNT_WAIT_TICKS = 300


@dataclass
class Preamble:
    image: Path
    prefix: Path
    sha256: str
    text: str


def image_env_info(image: Path, prefix: Path) -> EnvInfo:
    """The activation facts of the env inside IMAGE (conda-meta, etc/conda), named at PREFIX."""
    if shutil.which("unsquashfs") is None:
        raise CondastackError("unsquashfs is not on PATH; install squashfs-tools (it reads the env's activation "
                              "scripts from the image).")
    with tempfile.TemporaryDirectory(prefix="condastack-preamble-") as tmp:
        out = Path(tmp) / "x"
        # Only regular files and folders of these two trees are extracted (no symlinks followed).
        p = subprocess.run(["unsquashfs", "-no-progress", "-no-xattrs", "-d", str(out), str(image),
                            "conda-meta", "etc/conda"], capture_output=True, text=True)
        if p.returncode != 0:
            raise CondastackError(f"{image}: unsquashfs cannot read it ({p.stderr.strip()[-300:]}); it is not a "
                                  "SquashFS image made by `condastack pack --format squashfs`.")
        for f in out.rglob("*"):
            if f.is_symlink():
                f.unlink()  # activation reads only real files from the image
        return read_env_info(out, final_prefix=prefix)


_q = quoting.sh


def _mount_block(image: Path, prefix: Path) -> list[str]:
    name = prefix.name
    return [
        f"_cs_image={_q(str(image))}",
        f"_cs_prefix={_q(str(prefix))}",
        f'_cs_local="${{CONDASTACK_NODE_DIR:-/tmp}}/condastack-${{SLURM_JOB_ID:?source this inside a Slurm job}}'
        f'-"{_q(name)}.squashfs',  # the name quoted as a word of its own: no expansion inside it
        # One task on each node of the job; --overlap: do not take CPUs from the job's own steps.
        '_cs_each_node() { srun --overlap --nodes="${SLURM_JOB_NUM_NODES:-1}" '
        '--ntasks="${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node=1 --kill-on-bad-exit=0 "$@"; }',
        "_cs_cleanup() {",
        "    _cs_rc=$?",
        "    trap - EXIT",
        "    cd / || true",
        '    if [ -n "${_cs_mounter:-}" ]; then',
        '        _cs_each_node fusermount -u "$_cs_prefix" ||',
        '            echo "condastack: could not unmount $_cs_prefix on every node (busy?)" >&2',
        '        kill "$_cs_mounter" 2>/dev/null || true; wait "$_cs_mounter" 2>/dev/null || true',
        "    fi",
        '    _cs_each_node rm -f "$_cs_local" || true',
        '    exit "$_cs_rc"',
        "}",
        "trap _cs_cleanup EXIT",
        "trap 'exit 143' TERM; trap 'exit 130' INT; trap 'exit 129' HUP",
        'sbcast --force "$_cs_image" "$_cs_local" || { echo "condastack: sbcast $_cs_image failed" >&2; exit 1; }',
        "_cs_each_node bash -c 'mkdir -p \"$1\" || exit 1",
        '    if mountpoint -q "$1"; then',
        '        echo "condastack: $1 is already mounted on $(hostname) (another job?); '
        'run jobs that mount an image with --exclusive" >&2; exit 1',
        "    fi",
        # squashfuse_ll (low-level FUSE API, lets the kernel cache lookups) starts python faster.
        "    fuse=$(command -v squashfuse_ll || command -v squashfuse) ||",
        '        { echo "condastack: no squashfuse on $(hostname)" >&2; exit 1; }',
        '    "$fuse" -f "$2" "$1" & pid=$!',
        # Mounted, the copy needs no name: it is freed when squashfuse exits, however the job ends.
        '    until mountpoint -q "$1"; do kill -0 "$pid" 2>/dev/null || exit 1; sleep 0.05; done',
        '    rm -f "$2"',
        "    wait \"$pid\"' mount \"$_cs_prefix\" \"$_cs_local\" &",
        "_cs_mounter=$!",
        "_cs_i=0",
        'until _cs_each_node mountpoint -q "$_cs_prefix" >/dev/null 2>&1; do',
        f'    if ! kill -0 "$_cs_mounter" 2>/dev/null || [ "$((_cs_i += 1))" -gt {MOUNT_WAIT_TICKS} ]; then',
        '        echo "condastack: could not mount $_cs_local at $_cs_prefix on every node" >&2; exit 1',
        "    fi",
        "    sleep 0.1",
        "done",
    ]


def render_preamble(image: Path, prefix: Path, info: EnvInfo, sha256: str) -> str:
    head = [
        "# Written by `condastack slurm-preamble` " + __version__ + ": source it at the top of an sbatch script.",
        quoting.sh_comment(f"It copies {image} to node-local storage on every node of the job (sbcast),"),
        quoting.sh_comment(f"mounts it at {prefix} with squashfuse and activates the env; when the script"),
        "# exits, even on failure, it unmounts the image and deletes the copies.",
        quoting.sh_comment(f"image sha256 {sha256}; {info.title()}"),
    ]
    return "\n".join(head + _mount_block(image, prefix)) + "\n" + render_activate_sh(info)


def make_preamble(image: Path, prefix: Path | None = None, *, allowed_signers: Path | None = None) -> Preamble:
    """Verify IMAGE (its signatures when `allowed_signers` is given or a site config above the image or
    PREFIX requires them, then its .sha256/.manifest.json) and render its node-local preamble."""
    image = Path(image).absolute()
    check_signatures(image, allowed_signers, [image] + ([Path(os.path.abspath(prefix))] if prefix else []))
    verified = verify_archive(image)
    m = verified.manifest
    if m.format != "squashfs":
        raise CondastackError(f"{verified.archive}: is a {m.format} archive; the node-local preamble needs a "
                              "SquashFS image (`condastack pack --format squashfs --dest-prefix PREFIX`).")
    dest = m.dest_prefix
    if not dest:
        raise CondastackError(f"{verified.archive}: its manifest names no dest_prefix, so where it must be mounted "
                              "is unknown; re-pack it with --dest-prefix PREFIX.")
    if prefix is not None and os.path.normpath(os.path.abspath(prefix)) != os.path.normpath(dest):
        raise CondastackError(f"{verified.archive}: was packed for {dest} and can only be mounted there, not at "
                              f"{prefix}. Drop --prefix, or re-pack with --dest-prefix {prefix}.")
    where = Path(dest)
    info = image_env_info(verified.archive, where)
    text = render_preamble(verified.archive, where, info, verified.sha256)
    return Preamble(image=verified.archive, prefix=where, sha256=verified.sha256, text=text)


def write_preamble(preamble: Preamble, output: Path, access: Access = SHARED) -> Path:
    make_folders(Path(output).parent, access)
    atomic_write_text(output, preamble.text)
    apply_file(output, access)
    return output
