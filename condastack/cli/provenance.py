"""What is in an env or archive: `condastack sbom`."""

from __future__ import annotations

from pathlib import Path

import click

from condastack.cli.app import Ctx, known_layer, main
from condastack.cli.options import prefix_option, verbosity_options


@main.command("sbom")
@click.argument("target", required=False, metavar="LAYER|ARCHIVE")
@prefix_option("The env at this path instead of a LAYER or ARCHIVE.", file_okay=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the SBOM here (default: print it).")
@verbosity_options
@click.pass_obj
def sbom_cmd(obj: Ctx, target: str | None, prefix: Path | None, output: Path | None) -> None:
    """Print the CycloneDX SBOM of LAYER's built env, of an ARCHIVE (its .cdx.json), or of --prefix P."""
    from condastack.archive.sbom import archive_sbom
    from condastack.core.errors import CondastackError
    from condastack.core.fs import atomic_write_text
    from condastack.core.layout import env_prefix
    from condastack.env.prefix import Env
    from condastack.env.sbom import env_sbom_text

    if (target is None) == (prefix is None):
        raise click.UsageError("give one of LAYER, ARCHIVE or --prefix PATH.")
    if prefix is None and target is not None and Path(target).is_file():
        text = archive_sbom(Path(target))
    else:
        where = prefix if prefix is not None else env_prefix(obj.root, known_layer(obj, str(target)))
        if not Env(where).is_conda_env():
            raise CondastackError(f"{where}: no conda environment here" + (
                f". Run `condastack build {target}` first." if prefix is None else "."))
        text = env_sbom_text(where)
    if output is None:
        click.echo(text, nl=False)
        return
    atomic_write_text(output, text)
    obj.console.print(f"wrote {output}", markup=False)
