"""Commands past the lock: pack, unpack, relocate, install, container, module, doctor, slurm-preamble and wrap."""


from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from condastack.cli.app import EXIT_USER, Ctx, emit_json, err_console, fail, known_layer, main, require_archive, table
from condastack.cli.options import (
    allowed_signers_option,
    json_option,
    limit_options,
    mode_option,
    prefix_option,
    verbosity_options,
)
from condastack.core.access import apply_file, parse_mode
from condastack.core.layout import sidecars


@main.command()
@click.argument("layer", required=False)
@prefix_option("Check an installed env instead of a layer.")
@click.option("--target", type=click.Path(path_type=Path),
              help="File system to check for free space (default: the prefix, or the project folder).")
@click.option("--min-free-gb", type=float, help="Free space required on --target (default: 1 GB, or the env's "
              "size on its own file system).")
@click.option("--min-free-inodes", type=int, help="Free inodes required (default: 10000, or the env's file count).")
@json_option
@verbosity_options
@click.pass_obj
def doctor(obj: Ctx, layer: str | None, prefix: Path | None, target: Path | None, min_free_gb: float | None,
           min_free_inodes: int | None, as_json: bool) -> None:
    """Check this node against what LAYER (or the env at --prefix) needs; exit 1 if a check fails.

    Honours CONDA_OVERRIDE_CUDA / CONDA_OVERRIDE_GLIBC as conda does.
    """
    from rich.markup import escape  # lazy: CLI start-up

    from condastack.deliver.doctor import machine_summary, run_doctor  # lazy: CLI start-up

    report = run_doctor(root=obj.root, layer=layer, prefix=prefix, target=target,
                        min_free_bytes=None if min_free_gb is None else int(min_free_gb * 1e9),
                        min_free_inodes=min_free_inodes)
    if as_json:
        emit_json(report.to_json())
    else:
        req = report.requirements
        con = Console(highlight=False, soft_wrap=False, width=max(Console().width, 140))
        title = f"doctor: {req.kind} {req.target}" + (f" (lock {req.lock_hash[:12]})" if req.lock_hash else "")
        t = table("check", "result", "required", "found", "fix", title=title, show_lines=True)
        style = {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]", "warn": "[yellow]WARN[/]"}
        for c in report.checks:
            t.add_row(c.name, style[c.status], escape(c.required), escape(c.found), escape(c.fix or "-"))
        if not obj.quiet:
            con.print(f"node: {machine_summary(report.node)}", markup=False)
            for note in report.notes:
                con.print(note, markup=False, soft_wrap=True)
            con.print(t)
            con.print("[green]all checks passed[/]" if report.ok else "[bold red]some checks failed[/]")
    if not report.ok:
        sys.exit(EXIT_USER)


@main.command("module")
@click.argument("prefix", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Module name, e.g. verl/app.")
@click.option("--version", "mod_version", required=True, help="Module version, e.g. 0.5.")
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("modulefiles"),
              show_default=True, help="Module tree to write into (`module use` this folder).")
@mode_option
@verbosity_options
@click.pass_obj
def module_cmd(obj: Ctx, prefix: Path, name: str, mod_version: str, outdir: Path, mode: str) -> None:
    """Write an Lmod (Lua) and a Tcl modulefile for the env at PREFIX."""
    from condastack.deliver.module import write_modulefiles  # lazy: CLI start-up

    files = write_modulefiles(prefix, name, mod_version, outdir, parse_mode(mode))
    obj.console.print(f"wrote {files.lua}\nwrote {files.tcl}\n"
                      f"use it: module use {outdir.resolve()}; module load {name}/{mod_version}", markup=False)


@main.command("wrap")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", help="Conda package name (default for a wheel: its project name).")
@click.option("--version", "pkg_version", help="Package version (default for a wheel: its version, local label moved "
              "to the build string).")
@click.option("--depends", multiple=True, metavar="SPEC", help="Run dependency, a conda match spec (repeatable); for "
              "a wheel, adds to its Requires-Dist and replaces one of the same name.")
@click.option("--channel", "channel_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Site channel folder (default: environments/channel beside the stack).")
@click.option("--recipe", is_flag=True, help="SOURCE is a rattler-build recipe: build it (needs its toolchain).")
@click.option("--platform", default="linux-64", show_default=True,
              type=click.Choice(["linux-64", "linux-aarch64", "noarch"]), help="Subdir of the package.")
@click.option("--python", "python", metavar="X.Y", help="Python of a pure wheel (cpXY wheels say it themselves).")
@click.option("--build-number", default=0, show_default=True, type=click.IntRange(0), help="Conda build number.")
@click.option("--build-string", help="Use this build string instead of the input hash.")
@click.option("-c", "--build-channel", "build_channels", multiple=True, metavar="URL",
              help="Channels for a recipe's build/host deps (repeatable; default conda-forge).")
@click.option("--extra", "extras", multiple=True, metavar="NAME", help="Wheel extra whose requirements to add.")
@click.option("--keep-local-version", is_flag=True, help="Keep a wheel's local version ('2.13.0+cpu') as the version.")
@click.option("--check-channel", "check_channels", multiple=True, metavar="URL", help="Channel to check the "
              "wheel's dependencies against (repeatable; default: every channel of the stack, and the site channel).")
@click.option("--no-check", is_flag=True, help="Do not check that channels can satisfy the wheel's dependencies.")
@click.option("--wheels", "wheel_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Wrap unsatisfied wheel dependencies too, from the wheels in this folder.")
@click.option("--force", is_flag=True, help="Replace a different package with the same name-version-build.")
@click.option("--source-commit", metavar="SHA", help="The git commit it was built from (recorded for the SBOM).")
@click.option("--source-url", metavar="URL", help="Its repository or source URL (recorded for the SBOM).")
@click.option("--license", "license_", metavar="SPDX", help="Its license, e.g. BSD-3-Clause (package metadata).")
@json_option
@verbosity_options
@click.pass_obj
def wrap_cmd(obj: Ctx, source: Path, name: str | None, pkg_version: str | None, depends: tuple[str, ...],
             channel_dir: Path | None, recipe: bool, platform: str, python: str | None, build_number: int,
             build_string: str | None, build_channels: tuple[str, ...], extras: tuple[str, ...],
             keep_local_version: bool, check_channels: tuple[str, ...], no_check: bool, wheel_dir: Path | None,
             force: bool, source_commit: str | None, source_url: str | None, license_: str | None,
             as_json: bool) -> None:
    """Make a conda package from SOURCE (a built folder, a wheel, or --recipe) in the site channel."""
    from condastack.channel.assemble import Provenance, WheelOptions  # lazy: CLI start-up
    from condastack.channel.wrap import (
        default_channel,
        stack_channels,
        still_unsatisfied,
        wrap,
    )  # lazy: CLI start-up

    channel = channel_dir if channel_dir is not None else default_channel(obj.root)
    checked = None if no_check else tuple(check_channels or stack_channels(obj.root))
    opts = WheelOptions(extras=extras, keep_local_version=keep_local_version, check_channels=checked,
                        wheel_dir=wheel_dir)
    pkgs = wrap(source, channel=channel, name=name, version=pkg_version, depends=depends, recipe=recipe,
                platform=platform, python=python, build_number=build_number, build_string=build_string,
                build_channels=build_channels or ("conda-forge",), force=force, wheel=opts,
                provenance=Provenance(source_commit=source_commit, source_url=source_url, license=license_))
    if as_json:
        emit_json([{"path": str(p.path), "name": p.name, "version": p.version, "build": p.build,
                    "subdir": p.subdir, "status": p.status, "entry_points": list(p.entry_points),
                    "depends": list(p.depends), "unsatisfied": list(p.unsatisfied), "notes": list(p.notes)}
                   for p in pkgs])
        return
    for p in pkgs:
        eps = f" (entry points: {', '.join(p.entry_points)})" if p.entry_points else ""
        obj.console.print(f"{p.status}: {p.subdir}/{p.path.name}{eps}", markup=False)
        if p.depends:
            obj.console.print(f"  depends: {', '.join(p.depends)}", markup=False)
        for n in p.notes:
            obj.console.print(f"  note: {n}", markup=False)
        left = still_unsatisfied(p, pkgs)
        if left:
            err_console.print(
                f"warning: {p.name}: no channel of the stack has {'; '.join(left)}. Locking will fail until one "
                "does: wrap its wheel too (condastack wrap WHEEL, or --wheels DIR), or replace the dependency "
                "with --depends.", markup=False)
    obj.console.print(f"site channel: {channel.resolve()} (re-indexed)", markup=False)


@main.command("pack")
@click.argument("layer", required=False)
@prefix_option("Pack this env instead of envs/LAYER.", file_okay=False)
@click.option("--format", "fmt", type=click.Choice(["tar.zst", "tar.gz", "squashfs"]), default="tar.zst",
              show_default=True)
@click.option("--dest-prefix", help="Rewrite placeholders for this install path now (no unpack step needed).")
@click.option("-o", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Archive path (default: pack/LAYER-PLATFORM.EXT).")
@click.option("--level", type=int, help="Compression level (zstd default 3, gzip 4).")
@click.option("-j", "threads", type=int, help="Compression threads (default: all cores).")
@click.option("--allow-modified", is_flag=True, help="Pack conda files changed since the build as they are.")
@click.option("--allow-foreign", is_flag=True, help="Pack an env not built by condastack.")
@mode_option
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False, path_type=Path), metavar="KEY",
              help="Sign the archive and its manifest with this SSH key (ssh-keygen -Y sign, namespace condastack).")
@click.option("--warmup", metavar="CODE", default=None,
              help="squashfs only: python code the env's python runs once now; the files it reads are placed "
              "first in the image, in that order, for a faster cold start (default: 'pass', the interpreter's "
              "start-up; e.g. 'import torch').")
@click.option("--over", "parent", metavar="PARENT", help="Pack only what LAYER adds to its ancestor PARENT (a delta "
              "archive that goes on top of PARENT's archive).")
@click.option("--parent-archive", type=click.Path(dir_okay=False, path_type=Path), help="With --over: the parent's "
              "archive the delta goes on top of (default: pack/PARENT-PLATFORM.EXT).")
@verbosity_options
@click.pass_obj
def pack_cmd(obj: Ctx, layer: str | None, prefix: Path | None, fmt: str, dest_prefix: str | None,
             output: Path | None, level: int | None, threads: int | None, allow_modified: bool,
             allow_foreign: bool, mode: str, sign_key: Path | None, warmup: str | None, parent: str | None,
             parent_archive: Path | None) -> None:
    """Export the built env of LAYER (or --prefix PATH) as a relocatable archive."""
    from condastack.archive.pack import pack_layer, pack_prefix  # lazy: CLI start-up
    from condastack.core.progress import terminal_meter  # lazy: CLI start-up

    access = parse_mode(mode)
    kw: dict[str, Any] = dict(fmt=fmt, dest_prefix=dest_prefix, level=level, threads=threads,
                              allow_modified=allow_modified, allow_foreign=allow_foreign, sign=sign_key)
    if parent_archive is not None and parent is None:
        raise click.UsageError("--parent-archive goes with --over PARENT.")
    if warmup is not None:
        if fmt != "squashfs" or parent is not None:
            raise click.UsageError("--warmup orders a squashfs image (not a tar archive or a delta).")
        kw["warmup"] = warmup
    with terminal_meter(not obj.quiet) as meter:
        kw["meter"] = meter
        if parent is not None:
            from condastack.archive.delta import pack_delta  # lazy: CLI start-up

            if prefix is not None or not layer or allow_modified or allow_foreign:
                raise click.UsageError("--over packs a LAYER of the project (not --prefix, --allow-modified or "
                                       "--allow-foreign).")
            res = pack_delta(obj.root, known_layer(obj, layer), known_layer(obj, parent), output=output,
                             parent_archive=parent_archive, fmt=fmt, dest_prefix=dest_prefix, level=level,
                             threads=threads, meter=meter, sign=sign_key)
        elif prefix is not None:
            if output is None:
                raise click.UsageError("--prefix needs -o FILE (where to write the archive).")
            res = pack_prefix(prefix, output, **kw)
        elif layer:
            res = pack_layer(obj.root, known_layer(obj, layer), output=output, **kw)
        else:
            raise click.UsageError("name a LAYER to pack, or give --prefix PATH -o FILE.")
    for path in (res.output, *sidecars(res.output), *([res.sbom] if res.sbom else []), *res.signatures):
        if path.is_file():
            apply_file(path, access)
    for note in res.warnings:
        err_console.print(f"condastack: warning: {note}", markup=False)
    t = res.timings["total"]
    obj.console.print(f"packed {res.file_count} files, {res.bytes_unpacked / 1e6:.1f} MB -> {res.output} "
                      f"({res.bytes_archive / 1e6:.1f} MB, {t:.1f} s)\nsha256 {res.sha256}\nmanifest {res.manifest}\n"
                      f"sbom {res.sbom}" + "".join(f"\nsigned {s}" for s in res.signatures), markup=False)


@main.command("unpack")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@limit_options
@allowed_signers_option
@verbosity_options
@click.pass_obj
def unpack_cmd(obj: Ctx, archive: Path, dest: Path, max_members: int | None, max_bytes: int | None,
               allowed_signers: Path | None) -> None:
    """Extract ARCHIVE safely into DEST and relocate it there."""
    from condastack.archive.signing import check_signatures  # lazy: CLI start-up
    from condastack.archive.unpack import unpack_archive  # lazy: CLI start-up
    from condastack.core.progress import terminal_meter  # lazy: CLI start-up

    require_archive(archive)
    check_signatures(archive.absolute(), allowed_signers, [dest.absolute()])
    with terminal_meter(not obj.quiet) as meter:
        res = unpack_archive(archive, dest, max_members=max_members, max_bytes=max_bytes, meter=meter)
    obj.console.print(f"unpacked {res.members} members ({res.bytes / 1e6:.1f} MB) into {res.dest}; "
                      f"relocated {res.relocated_files} files", markup=False)


@main.command("relocate")
@click.argument("prefix", type=click.Path(file_okay=False, path_type=Path))
@verbosity_options
@click.pass_obj
def relocate_cmd(obj: Ctx, prefix: Path) -> None:
    """Point an unpacked env that was moved to PREFIX at its new path (repeatable)."""
    from condastack.archive.relocate import relocate  # lazy: CLI start-up

    if not prefix.is_dir():
        fail(f"{prefix}: no such folder.")
    res = relocate(prefix)
    obj.console.print(f"{res.prefix}: relocated {res.files_changed} files (was {res.old_prefix or 'placeholders'})",
                      markup=False)


@main.command()
@click.argument("layer", required=False)
@click.option("--base-image", metavar="IMAGE", help="FROM image (default: fits the stack's __cuda and __glibc).")
@click.option("--prefix", default="/opt/env", show_default=True, help="Where the env lives in the image.")
@click.option("--oci", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write an OCI image archive here: one image layer per stack layer where LAYER's delta "
                   "(`pack LAYER --over PARENT --dest-prefix P`) is packed, else LAYER's env as one layer.")
@click.option("--oci-base", metavar="DIR[:TAG]", help="Base image for --oci: a local OCI layout, or `scratch` "
              "(default: a minimal Debian made by debootstrap, cached).")
@click.option("--sqsh", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write an enroot/pyxis image here: a SquashFS of a minimal Debian with the env at the prefix "
              "(`srun --container-image=FILE`; Apptainer runs it too).")
@click.option("--sif", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a SIF here (that SquashFS, the definition and labels), with no Apptainer needed.")
@click.option("--apptainer", type=click.Path(dir_okay=False, path_type=Path),
              help="Apptainer definition to write (default: pack/<layer>.def).")
@click.option("-o", "--dockerfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Dockerfile to write (default: Dockerfile.thin for the default layer, else "
                   "pack/<layer>.Dockerfile).")
@click.option("--archive", type=click.Path(dir_okay=False, path_type=Path),
              help="The --dest-prefix archive to use (default: found in pack/): a full archive gives one env "
                   "layer, a delta one layer per stack layer.")
@click.option("--platform", help="Target platform (default: the stack's first).")
@click.option("--command", "command", metavar="CMD", help="The image's CMD (default: /bin/sh).")
@click.option("--ld-library-path/--no-ld-library-path", default=None,
              help="Set LD_LIBRARY_PATH=<prefix>/lib (default: only if a program in envs/LAYER/bin needs a "
              "library of the env and has no RPATH; conda packages normally have one).")
@json_option
@verbosity_options
@click.pass_obj
def container(obj: Ctx, layer: str | None, base_image: str | None, prefix: str, oci: Path | None,
              oci_base: str | None, sqsh: Path | None, sif: Path | None, apptainer: Path | None,
              dockerfile: Path | None, archive: Path | None, platform: str | None, command: str | None,
              ld_library_path: bool | None, as_json: bool) -> None:
    """Thin container files for LAYER: Dockerfile.thin, an Apptainer definition, and with --oci an OCI archive,
    --sqsh an enroot/pyxis SquashFS image, --sif a SIF."""
    from condastack.container.make import make_container  # lazy: CLI start-up
    from condastack.container.spec import shlex_command  # lazy: CLI start-up

    res = make_container(obj.root, layer, base_image=base_image, prefix=prefix, oci=oci, oci_base=oci_base,
                         apptainer=apptainer, dockerfile=dockerfile, archive=archive, platform=platform,
                         ld_library_path=ld_library_path, command=shlex_command(command), sqsh=sqsh, sif=sif)
    spec = res.spec
    out = {"layer": spec.layer, "platform": spec.platform, "prefix": spec.prefix, "base_image": spec.base_image,
           "archive": str(spec.archive.path), "archive_sha256": spec.archive.sha256,
           "lock_hash": spec.archive.lock_hash, "dockerfile": str(res.dockerfile) if res.dockerfile else None,
           "apptainer": str(res.apptainer) if res.apptainer else None,
           "oci": None if res.oci is None else {"path": str(res.oci.path), "tag": res.oci.tag,
                                                "manifest": res.oci.manifest_digest,
                                                "layer": res.oci.layer_digest, "layer_size": res.oci.layer_size,
                                                "env_layers": [{"layer": e.layer, "archive": str(e.archive),
                                                                "digest": e.digest, "size": e.size,
                                                                "whiteouts": e.whiteouts}
                                                               for e in res.oci.env_layers],
                                                "contents": res.oci_contents},
           "sqsh": None if res.sqsh is None else {"path": str(res.sqsh.path), "sha256": res.sqsh.sha256,
                                                  "size": res.sqsh.size, "base": res.sqsh.base},
           "sif": None if res.sif is None else {"path": str(res.sif.path), "sha256": res.sif.sha256,
                                                "size": res.sif.size, "id": res.sif.image_id}}
    if as_json:
        emit_json(out)
        return
    for what in ("dockerfile", "apptainer"):
        if out[what]:
            obj.console.print(f"wrote {out[what]}", markup=False)
    if res.oci is not None:
        sizes = ", ".join(f"{e.layer} {e.size / 1e6:.1f} MB" for e in res.oci.env_layers)
        what = f"{res.oci.layer_size / 1e6:.1f} MB layer" if len(res.oci.env_layers) == 1 else f"env layers {sizes}"
        obj.console.print(f"wrote {res.oci.path} (tag {res.oci.tag}, {what}): {res.oci_contents}", markup=False)
    if res.sqsh is not None:
        obj.console.print(f"wrote {res.sqsh.path} ({res.sqsh.size / 1e6:.1f} MB SquashFS, sha256 "
                          f"{res.sqsh.sha256[:16]}): layer {spec.layer} at {spec.prefix} on {res.sqsh.base}",
                          markup=False)
    if res.sif is not None:
        obj.console.print(f"wrote {res.sif.path} ({res.sif.size / 1e6:.1f} MB SIF, sha256 {res.sif.sha256[:16]}): "
                          f"layer {spec.layer} at {spec.prefix}", markup=False)
    if res.dockerfile is not None:
        obj.console.print(f"Dockerfile: layer {spec.layer} at {spec.prefix} on {spec.base_image}", markup=False)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@prefix_option("Where the env lives on the shared file system (replaced atomically if present).", required=True)
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path),
              help="squashfs only: where to put the image (default: PREFIX.squashfs).")
@click.option("--base", type=click.Path(file_okay=False, path_type=Path),
              help="ARCHIVE is a delta (`pack LAYER --over PARENT`): build the full env from the parent's install "
              "here, hard-linking its files that hold no prefix.")
@limit_options
@mode_option
@allowed_signers_option
@json_option
@verbosity_options
@click.pass_obj
def install(obj: Ctx, archive: Path, prefix: Path, image: Path | None, base: Path | None,
            max_members: int | None, max_bytes: int | None, mode: str, allowed_signers: Path | None,
            as_json: bool) -> None:
    """Verify ARCHIVE (sha256 + manifest), unpack, relocate and swap it in at --prefix."""
    from condastack.core.progress import terminal_meter  # lazy: CLI start-up
    from condastack.deliver.install import InstallResult, install_archive  # lazy: CLI start-up
    from condastack.deliver.linked import install_linked  # lazy: CLI start-up

    require_archive(archive)
    access = parse_mode(mode)
    res: InstallResult
    with terminal_meter(not obj.quiet) as meter:
        if base is not None:
            if image is not None:
                raise click.UsageError("--image is for squashfs images; --base for delta archives.")
            res = install_linked(archive, prefix, base, max_members=max_members, max_bytes=max_bytes, meter=meter,
                                 access=access, allowed_signers=allowed_signers)
        else:
            res = install_archive(archive, prefix, image=image, max_members=max_members, max_bytes=max_bytes,
                                  meter=meter, access=access, allowed_signers=allowed_signers)
    counts = getattr(res, "counts", None)
    if as_json:
        emit_json({"prefix": str(res.prefix), "format": res.format, "sha256": res.sha256,
                   "lock_hash": res.lock_hash, "replaced": res.replaced, "file_count": res.file_count,
                   "image": str(res.image) if res.image else None, "mount": res.mount_lines,
                   "activate": str(res.activate) if res.activate else None,
                   **({"base": str(base), "linked": counts.linked, "copied": counts.copied,
                       "bytes_copied": counts.bytes_copied} if counts is not None else {})})
        return
    con = obj.console
    if counts is not None:
        con.print(f"on base {base}: {counts.linked} files hard-linked, {counts.copied} copied "
                  f"({counts.bytes_copied / 1e6:.1f} MB)", markup=False)
    if res.format == "squashfs":
        con.print(f"{'replaced' if res.replaced else 'copied'} image {res.image} (sha256 {res.sha256[:16]}…)\n"
                  "mount it where it was packed for, with either of:", markup=False)
        for line in res.mount_lines:
            con.print(f"  {line}", markup=False)
        return
    con.print(f"{'updated' if res.replaced else 'installed'} {res.prefix} ({res.file_count} files, "
              f"lock {(res.lock_hash or 'unknown')[:12]}, archive sha256 {res.sha256[:16]}…)\n"
              f"activate: . {res.activate}\n"
              f"module:   condastack module {res.prefix} --name NAME --version VERSION -o MODULEDIR", markup=False)


@main.command("slurm-preamble")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--prefix", type=click.Path(path_type=Path),
              help="Where to mount it: must be the --dest-prefix it was packed for (the default).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the preamble here (default: print it).")
@click.option("--base", type=click.Path(dir_okay=False, path_type=Path),
              help="IMAGE is a delta (`pack LAYER --over PARENT --format squashfs`): the parent's image, mounted "
              "under it with fuse-overlayfs.")
@mode_option
@allowed_signers_option
@verbosity_options
@click.pass_obj
def slurm_preamble_cmd(obj: Ctx, image: Path, prefix: Path | None, output: Path | None, mode: str,
                       allowed_signers: Path | None, base: Path | None) -> None:
    """Print (or write) a job preamble that sbcasts a SquashFS IMAGE to the job's nodes and mounts it.

    Source it at the top of an sbatch script: `. PREAMBLE`. It unmounts the
    image and deletes the copies when the script exits, even on failure.
    """
    from condastack.deliver.slurm import make_preamble, write_preamble  # lazy: CLI start-up

    access = parse_mode(mode)
    pre = make_preamble(image, prefix, base, allowed_signers=allowed_signers)
    if output is None:
        click.echo(pre.text, nl=False)
        return
    write_preamble(pre, output, access)
    obj.console.print(f"wrote {output}: sbcast {pre.image} to each node, mount at {pre.prefix}\n"
                      f"use it: `. {output.resolve()}` at the top of an sbatch script", markup=False)
