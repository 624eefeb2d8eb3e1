"""condastack container: the container files, OCI archive, enroot/pyxis SquashFS and SIF of one layer, made together."""


from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from condastack.container.baseimage import IMAGE_ADVICE, debian_base, debian_suite
from condastack.container.oci import OciResult, write_oci_archive
from condastack.container.render import DOCKERFILE, render_apptainer, render_dockerfile
from condastack.container.sif import SifResult, write_image_sif
from condastack.container.spec import (
    DEFAULT_PREFIX,
    DEFAULT_USER,
    ContainerSpec,
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
    spec = container_spec(root, layer, stack=stack, prefix=prefix, base_image=base_image, platform=platform,
                          archive=archive, ld_library_path=ld_library_path, command=command, user=user)
    if dockerfile is None:
        is_default = spec.layer == default_layer(stack)
        dockerfile = root / DOCKERFILE if is_default else layout.pack_dir(root) / f"{spec.layer}.Dockerfile"
    if apptainer is None:
        apptainer = spec.archive.path.parent / f"{spec.layer}.def"
    # The Dockerfile and the definition extract with the base image's tar, which reads gzip only;
    # the OCI writer reads any of our formats. So a .tar.zst archive is fine for --oci alone
    # (then no Dockerfile or definition is written unless asked for, which is an error). So do --sqsh and --sif.
    texts: dict[Path, str] = {}
    images = oci is not None or sqsh is not None or sif is not None
    if spec.archive.fmt == "tar.zst" and (not images or explicit_files):
        spec = dataclasses.replace(spec, archive=gzip_copy(spec.archive))
    if spec.archive.fmt == "tar.gz" or not images or explicit_files:
        texts[Path(dockerfile)] = render_dockerfile(spec, root, Path(dockerfile))
        texts[Path(apptainer)] = render_apptainer(spec, Path(apptainer).parent)
    oci_result, contents = None, None
    if oci is not None:
        oci_base, contents = _oci_base(stack, spec, oci_base)
        oci_result = write_oci_archive(spec, Path(oci), base=oci_base)
    sqsh_result, sif_result = _runtime_images(stack, spec, sqsh, sif)
    for path, text in texts.items():
        atomic_write_text(path, text)
    return ContainerResult(spec=spec, dockerfile=Path(dockerfile) if texts else None,
                           apptainer=Path(apptainer) if texts else None, oci=oci_result, oci_contents=contents,
                           sqsh=sqsh_result, sif=sif_result)


def _runtime_images(stack: Stack, spec: ContainerSpec, sqsh: Path | None,
                    sif: Path | None) -> tuple[SqshResult | None, SifResult | None]:
    """--sqsh and --sif: one SquashFS (kept at `sqsh`, or made beside the SIF for it and removed)."""
    if sqsh is None and sif is None:
        return None, None
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


def _oci_base(stack: Stack, spec: ContainerSpec, oci_base: str | None) -> tuple[str | None, str]:
    """The base layout for --oci and a sentence on what the image holds. No --oci-base: a minimal
    Debian fitting the stack's __glibc (an env alone has no C library to run on); "scratch": none."""
    env = f"layer {spec.layer} at {spec.prefix}"
    if oci_base == "scratch":
        return None, f"{env} only (scratch: no C library, the image cannot run programs on its own)"
    if oci_base is not None:
        return oci_base, f"{env} on the local OCI image {oci_base}"

    base = debian_base(stack.virtual_packages_for(spec.platform).get("__glibc"), spec.platform)
    return base.ref, f"{env} on {base.description}"
