"""The `condastack` command line: thin click wrappers over the Python API.

Every command turns a CondastackError into one paragraph on stderr and exit
code 1; click's usage errors exit 2. Commands live here only as argument
parsing and printing: the work is done by the named modules.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from . import __version__
from .errors import CondastackError
from .stack import load_stack, redact

EXIT_USER = 1
EXIT_BUG = 70  # EX_SOFTWARE: an unexpected exception, i.e. a condastack bug

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Ctx:
    root: Path
    verbose: int
    quiet: bool

    @property
    def console(self) -> Console:
        return Console(quiet=self.quiet, highlight=False, soft_wrap=True)

    def stack(self):  # noqa: ANN201 - Stack, imported lazily by callers
        return load_stack(self.root)

    def show_progress(self) -> bool:
        return not self.quiet and sys.stderr.isatty()


def fail(message: str) -> NoReturn:
    raise CondastackError(message)


def emit_json(data: Any) -> None:
    click.echo(redact(json.dumps(data, indent=2, sort_keys=False, default=str)))


class _Group(click.Group):
    """Maps errors to exit codes: user errors 1 (no traceback), bugs 70."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CondastackError as e:
            err_console.print(f"condastack: error: {redact(str(e))}", markup=False)
            sys.exit(EXIT_USER)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            err_console.print("condastack: interrupted", markup=False)
            sys.exit(130)
        except Exception as e:  # a bug: say so briefly; the traceback only with -v
            obj = ctx.obj
            if isinstance(obj, Ctx) and obj.verbose:
                traceback.print_exc()
            err_console.print(
                f"condastack: internal error: {type(e).__name__}: {redact(str(e))} "
                "(this is a bug in condastack; rerun with -v for details)",
                markup=False,
            )
            sys.exit(EXIT_BUG)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="condastack")
@click.option("-C", "root", type=click.Path(file_okay=False, path_type=Path), default=".",
              help="Run as if started in this folder (the project holding environments/).")
@click.option("-v", "--verbose", count=True, help="More output (repeat for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def main(ctx: click.Context, root: Path, verbose: int, quiet: bool) -> None:
    """condastack: layered, locked conda environments for GPU clusters without Docker.

    stack.yml -> lock -> build -> pack -> unpack/install, plus containers,
    Lmod modules and a node doctor.
    """
    if not root.is_dir():
        raise click.BadParameter(f"{root} is not a folder", param_hint="-C")
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(root=root.resolve(), verbose=verbose, quiet=quiet)


# --------------------------------------------------------------------------- layers


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def layers(obj: Ctx, as_json: bool) -> None:
    """Show the layer tree: each layer's own specs and what it inherits."""
    stack = obj.stack()
    if as_json:
        emit_json(stack.to_json())
        return
    plat = stack.default_platform
    tree = Tree(f"[bold]{stack.name}[/] ({', '.join(stack.platforms)}; specs shown for {plat})")
    nodes: dict[str, Tree] = {}
    for name in stack.order():
        layer = stack.layers[name]
        parent = nodes.get(layer.extends, tree) if layer.extends else tree
        label = f"[bold cyan]{name}[/]  [dim]{layer.file.relative_to(stack.root) if layer.file.is_relative_to(stack.root) else layer.file}[/]"
        node = parent.add(label)
        own_c, own_p = layer.conda.get(plat, ()), layer.pip.get(plat, ())
        node.add("own conda: " + (", ".join(own_c) or "-"))
        if own_p:
            node.add("own pip: " + ", ".join(own_p))
        if layer.extends:
            inh_c, inh_p = stack.specs_for(layer.extends, plat)
            node.add(f"[dim]inherited from {layer.extends}: " + (", ".join(inh_c + inh_p) or "-") + "[/]")
        nodes[name] = node
    obj.console.print(tree)
    vp = stack.virtual_packages
    if vp:
        table = Table("platform", "virtual packages", title="target nodes")
        for p in stack.platforms:
            table.add_row(p, ", ".join(f"{k} {v}" for k, v in vp.get(p, {}).items()) or "-")
        obj.console.print(table)


# Commands of later stages register below, each a thin wrapper over its module.
