"""condastack container: the container files, OCI archive, enroot/pyxis SquashFS and SIF of one layer, made together."""


from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from condastack.container.baseimage import IMAGE_ADVICE, debian_base, debian_suite
from condastack.container.layers import delta_pack_commands, layer_chain
from condastack.container.oci import OciResult, write_oci_archive
from condastack.container.render import DOCKERFILE, render_apptainer, render_dockerfile
from condastack.container.sif import SifResult, write_image_sif
from condastack.container.spec import (
    DEFAULT_PREFIX,
    DEFAULT_USER,
    ContainerSpec,
    PackedArchive,
    check_prefix,
    container_spec,
    default_layer,
    gzip_copy,
)
from condastack.container.sqsh import SqshResult, image_definition, write_sqsh
from condastack.core import layout
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_write_text, make_tempdir, remove_path
from condastack.spec.stack import Stack, load_stack


@dataclass(frozen=True)
class ContainerResult:
    spec: ContainerSpec
    dockerfile: Path | None
    apptainer: Path | None
    oci: OciResult | None
    oci_contents: str | None = None  # what the OCI image holds, in words
    sqsh: SqshResult | None = None
    sif: SifResult | None = None


def make_container(root: Path | str, layer: str | None = None, *, base_image: str | None = None,
                   prefix: str = DEFAULT_PREFIX, oci: Path | None = None, oci_base: str | None = None,
                   apptainer: Path | None = None, dockerfile: Path | None = None, archive: Path | None = None,
                   platform: str | None = None, ld_library_path: bool | None = None,
                   command: tuple[str, ...] = (), user: str = DEFAULT_USER, sqsh: Path | None = None,
                   sif: Path | None = None) -> ContainerResult:
    """`condastack container`: write Dockerfile.thin, the Apptainer definition and, with `oci`, an OCI archive;
    with `sqsh` an enroot/pyxis SquashFS image, with `sif` a SIF (both on the default Debian base).

    The Dockerfile goes to ROOT/Dockerfile.thin for the default layer and to
    pack/<layer>.Dockerfile for others (or `dockerfile`); the definition to
    pack/<layer>.def (or `apptainer`), next to the archive.
    """
    root = Path(root).resolve()
    explicit_files = dockerfile is not None or apptainer is not None
    stack = load_stack(root)
    kw: dict[str, Any] = dict(stack=stack, prefix=prefix, base_image=base_image, platform=platform,
                              ld_library_path=ld_library_path, command=command, user=user)
    chain = None
    if oci is not None:  # one image layer per stack layer where the deltas are packed (layers.py)
        chain = layer_chain(stack, layer or default_layer(stack), platform or stack.default_platform,
                            check_prefix(prefix), archive)
    spec = container_spec(root, layer, archive=chain[-1].path if chain else archive, **kw)
    # What Dockerfile.thin, the definition, --sqsh and --sif hold: the layer's full archive.
    files_spec: ContainerSpec | None = spec
    if chain:
        wanted = explicit_files or sqsh is not None or sif is not None
        files_spec = container_spec(root, layer, archive=None, **kw) if wanted else None
    if dockerfile is None:
        is_default = spec.layer == default_layer(stack)
        dockerfile = root / DOCKERFILE if is_default else layout.pack_dir(root) / f"{spec.layer}.Dockerfile"
    texts: dict[Path, str] = {}
    images = oci is not None or sqsh is not None or sif is not None
    if files_spec is not None:
        apptainer = apptainer or files_spec.archive.path.parent / f"{spec.layer}.def"
        files_spec, texts = _render_files(root, files_spec, Path(dockerfile), Path(apptainer),
                                          not images or explicit_files)
    oci_result, contents = None, None
    if oci is not None:
        oci_base, contents = _oci_base(stack, spec, oci_base, chain)
        oci_result = write_oci_archive(spec, Path(oci), base=oci_base, layers=chain)
    sqsh_result, sif_result = _runtime_images(stack, files_spec, sqsh, sif)
    for path, text in texts.items():
        atomic_write_text(path, text)
    return ContainerResult(spec=files_spec if texts and files_spec else spec,
                           dockerfile=Path(dockerfile) if texts else None,
                           apptainer=Path(apptainer) if texts and apptainer else None, oci=oci_result,
                           oci_contents=contents, sqsh=sqsh_result, sif=sif_result)


def _runtime_images(stack: Stack, spec: ContainerSpec | None, sqsh: Path | None,
                    sif: Path | None) -> tuple[SqshResult | None, SifResult | None]:
    """--sqsh and --sif: one SquashFS (kept at `sqsh`, or made beside the SIF for it and removed)."""
    if spec is None or (sqsh is None and sif is None):
        return None, None
    _refuse_delta(spec)
    if sqsh is not None and sif is not None and Path(sqsh).absolute() == Path(sif).absolute():
        raise CondastackError(f"--sqsh and --sif both name {sqsh}; give two files.")
    glibc = stack.virtual_packages_for(spec.platform).get("__glibc")
    # %files relative to the archive's folder, so the image does not depend on where it is written
    definition = image_definition(spec, debian_suite(glibc, IMAGE_ADVICE), spec.archive.path.parent)
    if sqsh is not None:
        made = write_sqsh(spec, Path(sqsh), definition, glibc)
        return made, (write_image_sif(spec, Path(sif), made.path, definition, made.sha256) if sif else None)
    out = Path(sif).absolute()  # type: ignore[arg-type]  # not None: checked above
    work = make_tempdir(out.parent, out.name)
    try:
        made = write_sqsh(spec, work / "image.sqsh", definition, glibc)
        return None, write_image_sif(spec, out, made.path, definition, made.sha256)
    finally:
        remove_path(work)


def _render_files(root: Path, spec: ContainerSpec, dockerfile: Path, apptainer: Path,
                  asked: bool) -> tuple[ContainerSpec, dict[Path, str]]:
    """Dockerfile.thin and the Apptainer definition. They extract with the base image's tar, which reads
    gzip only; the OCI writer reads any of our formats. So a .tar.zst archive is fine for --oci alone
    (then no Dockerfile or definition is written unless asked for: `asked`)."""
    if not asked and spec.archive.fmt != "tar.gz":
        return spec, {}
    _refuse_delta(spec)
    if spec.archive.fmt == "tar.zst":
        spec = dataclasses.replace(spec, archive=gzip_copy(spec.archive))
    return spec, {dockerfile: render_dockerfile(spec, root, dockerfile),
                  apptainer: render_apptainer(spec, apptainer.parent)}


def _refuse_delta(spec: ContainerSpec) -> None:
    if spec.archive.parent_layer is not None:
        raise CondastackError(f"{spec.archive.path}: a delta over '{spec.archive.parent_layer}' serves --oci only; "
                              "Dockerfile.thin, the Apptainer definition, --sqsh and --sif need the layer's full "
                              f"archive (`condastack pack {spec.layer} --format tar.gz --dest-prefix {spec.prefix}`).")


def _env_words(stack: Stack, spec: ContainerSpec, chain: list[PackedArchive] | None) -> str:
    if not chain:
        names = [lay.name for lay in stack.chain(spec.layer)]
        if len(names) == 1 or spec.archive.path.parent != layout.pack_dir(stack.root):
            return f"layer {spec.layer} at {spec.prefix}"
        return (f"layer {spec.layer} at {spec.prefix} as one env layer (no delta of {spec.layer} packed for "
                f"{spec.prefix}; for one image layer per stack layer run {delta_pack_commands(names, spec.prefix)})")
    names = [a.layer or "?" for a in chain]
    return f"layers {' + '.join(names)} at {spec.prefix}, one image layer each ({names[0]} whole, then deltas)"


def _oci_base(stack: Stack, spec: ContainerSpec, oci_base: str | None,
              chain: list[PackedArchive] | None) -> tuple[str | None, str]:
    """The base layout for --oci and a sentence on what the image holds. No --oci-base: a minimal
    Debian fitting the stack's __glibc (an env alone has no C library to run on); "scratch": none."""
    env = _env_words(stack, spec, chain)
    if oci_base == "scratch":
        return None, f"{env} only (scratch: no C library, the image cannot run programs on its own)"
    if oci_base is not None:
        return oci_base, f"{env} on the local OCI image {oci_base}"

    base = debian_base(stack.virtual_packages_for(spec.platform).get("__glibc"), spec.platform)
    return base.ref, f"{env} on {base.description}"
