"""`condastack slurm-preamble`: a job preamble that runs a SquashFS env from node-local storage.

A SquashFS image packed with `--dest-prefix P` runs only when mounted at P.
Mounting it from the shared file system makes every node read the image over
the network for each page; copying it once per node with `sbcast` (Slurm's tree
broadcast) and mounting the local copy keeps the start-up reads node-local.

The preamble is a bash fragment to source at the top of an sbatch script. On
every node of the job it:
1. `sbcast`s the image to node-local storage ($CONDASTACK_NODE_DIR, default /tmp);
2. mounts the copy at P: with the kernel's squashfs (`mount -o loop`) where the job runs as root,
   else with `squashfuse_ll -f` (or `squashfuse -f`), and says which; in a job step that lasts as long as
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
from condastack.core.errors import CondastackError, DeltaRefused
from condastack.core.fs import atomic_write_text, remove_path
from condastack.core.layout import WHITEOUT
from condastack.core.version import __version__
from condastack.deliver.install import Verified, verify_archive
from condastack.deliver.module import EnvInfo, read_env_info, render_activate_sh

# How long the preamble waits for every node's mount (tenths of a second).
MOUNT_WAIT_TICKS = 300


@dataclass
class Preamble:
    image: Path
    prefix: Path
    sha256: str
    text: str


def image_env_info(image: Path, prefix: Path, base: Path | None = None) -> EnvInfo:
    """The activation facts of the env inside IMAGE (conda-meta, etc/conda), named at PREFIX; with `base`,
    of IMAGE mounted over BASE (the child's files win, its `.wh.NAME` whiteouts hide the parent's)."""
    if shutil.which("unsquashfs") is None:
        raise CondastackError("unsquashfs is not on PATH; install squashfs-tools (it reads the env's activation "
                              "scripts from the image).")
    with tempfile.TemporaryDirectory(prefix="condastack-preamble-") as tmp:
        out = Path(tmp) / "x"
        for img in ([base] if base is not None else []) + [image]:
            # Only regular files and folders of these two trees are extracted (no symlinks followed).
            p = subprocess.run(["unsquashfs", "-no-progress", "-no-xattrs", "-f", "-d", str(out), str(img),
                                "conda-meta", "etc/conda"], capture_output=True, text=True)
            if p.returncode != 0:
                raise CondastackError(f"{img}: unsquashfs cannot read it ({p.stderr.strip()[-300:]}); it is not a "
                                      "SquashFS image made by `condastack pack --format squashfs`.")
        for f in sorted(out.rglob("*"), reverse=True):
            if f.name.startswith(WHITEOUT):
                remove_path(f.with_name(f.name[len(WHITEOUT):]))
                f.unlink()
            elif f.is_symlink():
                f.unlink()  # activation reads only real files from the image
        return read_env_info(out, final_prefix=prefix)


_q = quoting.sh


def _mount_block(image: Path, prefix: Path, base: Path | None = None) -> list[str]:
    name = prefix.name
    # the name quoted as a word of its own: no expansion inside it
    local = f'"${{CONDASTACK_NODE_DIR:-/tmp}}/condastack-${{SLURM_JOB_ID:?source this inside a Slurm job}}-"{_q(name)}'
    lines = [
        f"_cs_image={_q(str(image))}",
        f"_cs_prefix={_q(str(prefix))}",
        f"_cs_local={local}.squashfs",
        # One task on each node of the job; --overlap: do not take CPUs from the job's own steps.
        '_cs_each_node() { srun --overlap --nodes="${SLURM_JOB_NUM_NODES:-1}" '
        '--ntasks="${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node=1 --kill-on-bad-exit=0 "$@"; }',
    ]
    if base is not None:  # the parent's image too, and node-local mount points for both (the overlay's lower dirs)
        lines += [f"_cs_base_image={_q(str(base))}", f"_cs_base_local={local}.base.squashfs",
                  f"_cs_lower={local}.lower"]
    lines += [
        "_cs_cleanup() {",
        "    _cs_rc=$?",
        "    trap - EXIT",
        "    cd / || true",
        '    if [ -n "${_cs_mounter:-}" ]; then',
        # a FUSE mount, or the kernel's (root jobs: see _kernel_mount)
        "        _cs_each_node bash -c 'fusermount -u \"$1\" 2>/dev/null || umount \"$1\"' - \"$_cs_prefix\" ||",
        '            echo "condastack: could not unmount $_cs_prefix on every node (busy?)" >&2',
        *(["        _cs_each_node bash -c 'for d in \"$1/child\" \"$1/base\"; do ! mountpoint -q \"$d\" || "
           "fusermount -u \"$d\"; done' - \"$_cs_lower\" || true"] if base is not None else []),
        # unmounted, the mounting step ends by itself (in 0.2 s): cancelled, Slurm would log an error
        '        for _cs_i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$_cs_mounter" 2>/dev/null || break; sleep 0.2; done',
        '        kill "$_cs_mounter" 2>/dev/null || true; wait "$_cs_mounter" 2>/dev/null || true',
        "    fi",
        '    _cs_each_node rm -f "$_cs_local"' + (' "$_cs_base_local"' if base is not None else "") + " || true",
        *(['    _cs_each_node rmdir "$_cs_lower/child" "$_cs_lower/base" "$_cs_lower" 2>/dev/null || true']
          if base is not None else []),
        '    exit "$_cs_rc"',
        "}",
        "trap _cs_cleanup EXIT",
        "trap 'exit 143' TERM; trap 'exit 130' INT; trap 'exit 129' HUP",
        'sbcast --force "$_cs_image" "$_cs_local" || { echo "condastack: sbcast $_cs_image failed" >&2; exit 1; }',
    ]
    if base is not None:
        lines += ['sbcast --force "$_cs_base_image" "$_cs_base_local" || '
                  '{ echo "condastack: sbcast $_cs_base_image failed" >&2; exit 1; }']
    lines += _node_mount(base is not None)
    lines += [
        "_cs_mounter=$!",
        "_cs_i=0",
        'until _cs_each_node mountpoint -q "$_cs_prefix" >/dev/null 2>&1; do',
        f'    if ! kill -0 "$_cs_mounter" 2>/dev/null || [ "$((_cs_i += 1))" -gt {MOUNT_WAIT_TICKS} ]; then',
        '        echo "condastack: could not mount $_cs_local at $_cs_prefix on every node" >&2; exit 1',
        "    fi",
        "    sleep 0.1",
        "done",
    ]
    return lines


def _kernel_mount() -> list[str]:
    """Where the job runs as root (and $CONDASTACK_MOUNT is not `fuse`), the kernel's squashfs through a
    loop device: no daemon, and python starts from it as from the unpacked tree (README: start-up). The
    step then only waits, and unmounts on Slurm's SIGTERM (lazily, if the job's programs still hold it)."""
    return [
        '    if [ "$(id -u)" = 0 ] && [ "${CONDASTACK_MOUNT:-}" != fuse ] &&',
        '            mount -t squashfs -o loop,ro,nodev,nosuid "$2" "$1" 2>/dev/null; then',
        '        echo "condastack: $(hostname): $1 mounted by the kernel (squashfs on a loop device)" >&2',
        '        rm -f "$2"; mp=$1',
        # unmounted already (the EXIT trap's cleanup), a quiet end; else (cancelled) unmount, lazily if busy
        '        bye() { mountpoint -q "$mp" || exit 0; umount "$mp" 2>/dev/null || umount -l "$mp"; exit 143; }',
        "        trap bye TERM",
        '        while mountpoint -q "$mp"; do sleep 0.2 & wait $!; done',
        "        exit 0",
        "    fi",
    ]


def _node_mount(overlay: bool) -> list[str]:
    """The step that mounts on each node and lasts the job: the image at the prefix, or, for a delta, both
    images at node-local lower dirs and their fuse-overlayfs merge (child over parent, read-only) at the prefix."""
    head = [
        "_cs_each_node bash -c 'mkdir -p \"$1\" || exit 1",
        '    if mountpoint -q "$1"; then',
        '        echo "condastack: $1 is already mounted on $(hostname) (another job?); '
        'run jobs that mount an image with --exclusive" >&2; exit 1',
        "    fi",
        # squashfuse_ll (low-level FUSE API, lets the kernel cache lookups) starts python faster.
        "    fuse=$(command -v squashfuse_ll || command -v squashfuse) ||",
        '        { echo "condastack: no squashfuse on $(hostname)" >&2; exit 1; }',
    ]
    if not overlay:
        return head + _kernel_mount() + [
            '    echo "condastack: $(hostname): $1 mounted by $(basename "$fuse")" >&2',
            '    "$fuse" -f "$2" "$1" & pid=$!',
            # Mounted, the copy needs no name: it is freed when squashfuse exits, however the job ends.
            '    until mountpoint -q "$1"; do kill -0 "$pid" 2>/dev/null || exit 1; sleep 0.05; done',
            '    rm -f "$2"',
            "    wait \"$pid\"' mount \"$_cs_prefix\" \"$_cs_local\" &",
        ]
    return head + [
        '    command -v fuse-overlayfs >/dev/null ||',
        '        { echo "condastack: no fuse-overlayfs on $(hostname) (apt-get install fuse-overlayfs)" >&2; exit 1; }',
        '    mkdir -p "$4/child" "$4/base" || exit 1',
        # Cancelled, every process of the step gets SIGTERM and each FUSE daemon unmounts itself; the
        # mount points go once they have exited, so nothing is left on the node however the job ends.
        '    lw=$4; gone() { wait; rmdir "$lw/child" "$lw/base" "$lw" 2>/dev/null; }',
        "    trap \"gone; exit 143\" TERM",
        '    "$fuse" -f "$3" "$4/base" & pb=$!',
        '    "$fuse" -f "$2" "$4/child" & pc=$!',
        '    until mountpoint -q "$4/base" && mountpoint -q "$4/child"; do',
        '        kill -0 "$pb" 2>/dev/null && kill -0 "$pc" 2>/dev/null || exit 1; sleep 0.05',
        "    done",
        '    rm -f "$2" "$3"',
        # No upper dir: a read-only merge; the child wins where both hold a path, its .wh.NAME hide the parent's.
        '    fuse-overlayfs -f -o "lowerdir=$4/child:$4/base" "$1" & po=$!',
        '    wait "$po"',
        '    fusermount -u "$4/child"; fusermount -u "$4/base"',
        "    gone' mount \"$_cs_prefix\" \"$_cs_local\" \"$_cs_base_local\" \"$_cs_lower\" &",
    ]


def render_preamble(image: Path, prefix: Path, info: EnvInfo, sha256: str, base: Path | None = None) -> str:
    head = [
        "# Written by `condastack slurm-preamble` " + __version__ + ": source it at the top of an sbatch script.",
        quoting.sh_comment(f"It copies {image} to node-local storage on every node of the job (sbcast),"),
        quoting.sh_comment(f"mounts it at {prefix} with squashfuse and activates the env; when the script"),
        "# exits, even on failure, it unmounts the image and deletes the copies.",
        quoting.sh_comment(f"image sha256 {sha256}; {info.title()}"),
    ]
    if base is not None:
        head.insert(4, quoting.sh_comment(f"{image.name} is a delta: it is mounted over {base} (also copied) with "
                                          "fuse-overlayfs."))
    return "\n".join(head + _mount_block(image, prefix, base)) + "\n" + render_activate_sh(info)


def make_preamble(image: Path, prefix: Path | None = None, base: Path | None = None, *,
                  allowed_signers: Path | None = None) -> Preamble:
    """Verify IMAGE (its signatures when `allowed_signers` is given or a site config above the image or
    PREFIX requires them, then its .sha256/.manifest.json) and render its node-local preamble; a delta
    IMAGE is mounted over the parent's image BASE (verified the same way), which it must name."""
    image = Path(image).absolute()
    near = [Path(os.path.abspath(prefix))] if prefix else []
    check_signatures(image, allowed_signers, [image, *near])
    if base is not None:
        base = Path(base).absolute()
        check_signatures(base, allowed_signers, [base, *near])
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
    parent = _check_overlay(verified, base)
    where = Path(dest)
    info = image_env_info(verified.archive, where, parent)
    text = render_preamble(verified.archive, where, info, verified.sha256, parent)
    return Preamble(image=verified.archive, prefix=where, sha256=verified.sha256, text=text)


def _check_overlay(delta: Verified, base: Path | None) -> Path | None:
    """The parent's image a delta image is mounted over (verified: the one the delta names, for its prefix)."""
    m = delta.manifest
    if base is None:
        if m.is_delta:
            raise DeltaRefused(m.layer, m.parent_layer, f"{delta.archive.name} is a delta; mount it over the "
                               f"parent's image: `condastack slurm-preamble {delta.archive.name} --base "
                               f"{m.parent_archive}`.")
        return None
    if not m.is_delta:
        raise CondastackError(f"{delta.archive}: is a full image of layer '{m.layer}'; --base is for a delta "
                              "(`condastack pack LAYER --over PARENT --format squashfs`).")
    parent = verify_archive(Path(base))
    pm = parent.manifest
    if parent.sha256 != m.parent_sha256 or pm.is_delta or pm.dest_prefix != m.dest_prefix:
        raise DeltaRefused(m.layer, m.parent_layer, f"--base {parent.archive} (layer '{pm.layer}', sha256 "
                           f"{parent.sha256[:16]}, for {pm.dest_prefix}) is not the image this delta goes over: "
                           f"{m.parent_archive} (sha256 {str(m.parent_sha256)[:16]}, for {m.dest_prefix}).")
    return parent.archive


def write_preamble(preamble: Preamble, output: Path, access: Access = SHARED) -> Path:
    make_folders(Path(output).parent, access)
    atomic_write_text(output, preamble.text)
    apply_file(output, access)
    return output
