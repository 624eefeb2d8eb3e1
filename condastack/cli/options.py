"""Click options shared by several commands, defined once (as pip-tools' scripts/options.py).

Each is a decorator: `@json_option` on a command gives it `--json` bound to `as_json`.
Options whose help depends on the command (`--prefix`) are made by a function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def prefix_option(help: str, *, required: bool = False, file_okay: bool = True) -> Callable[[F], F]:  # noqa: A002
    """`--prefix PATH`: an environment folder on this machine; what it means is the command's `help`."""
    return click.option("--prefix", required=required, help=help,
                        type=click.Path(file_okay=file_okay, path_type=Path))


def mode_option(f: F) -> F:
    """--mode: who may read the outputs (core.access); readable by all unless the site says otherwise."""
    return click.option("--mode", "mode", default="shared", show_default=True, metavar="MODE",
                        help="Who may read what is written, whatever the umask: shared (folders 0755, files "
                             "0644), group (0750/0640), private (0700/0600) or an octal folder mode such as "
                             "0750.")(f)


def limit_options(f: F) -> F:
    """`--max-members` / `--max-bytes`: the extraction limits of the shared archive gate."""
    f = click.option("--max-bytes", type=click.IntRange(0), metavar="N",
                     help="Refuse archives larger than N bytes once expanded "
                     "(default: $CONDASTACK_MAX_BYTES, else no limit).")(f)
    return click.option("--max-members", type=click.IntRange(0), metavar="N",
                        help="Refuse archives with more than N members "
                        "(default: $CONDASTACK_MAX_MEMBERS, else no limit).")(f)


allowed_signers_option = click.option(
    "--allowed-signers", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
    help="Refuse the archive unless it and its manifest carry SSH signatures (pack --sign) by a key listed in "
    "FILE (ssh-keygen's allowed-signers format). A site can require this: .condastack/site.toml above the "
    "target.")


# --------------------------------------------------------------------------- verbosity


def configure_logging(verbose: int) -> None:
    """Debug logs from -vv on; the level follows the last -v seen (before or after the subcommand)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def _more_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    obj = ctx.find_root().obj
    if value and obj is not None:
        obj.verbose += value
        configure_logging(obj.verbose)


def _quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    obj = ctx.find_root().obj
    if value and obj is not None:
        obj.quiet = True


def verbosity_options(f: F) -> F:
    """`-v` (repeatable) and `-q`, accepted after the subcommand as well as before it.

    They only update the group's context object (fields `verbose`, `quiet`), so
    `condastack -q build app` and `condastack build app -q` mean the same.
    """
    f = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_quiet,
                     help="Only errors.")(f)
    return click.option("-v", "--verbose", count=True, expose_value=False, callback=_more_verbose,
                        help="More output (repeat for debug logs).")(f)


__all__ = [
    "allowed_signers_option", "json_option", "prefix_option", "limit_options", "verbosity_options", "configure_logging"]
