"""The `condastack` command group and what every command shares: the context, error-to-exit-code mapping (user
errors 1, usage 2, bugs 70), tables and JSON output.
"""


from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console

from condastack.cli.options import configure_logging
from condastack.core import interrupt
from condastack.core.credentials import gate_std_streams, redact
from condastack.core.errors import CondastackError, from_os_error
from condastack.core.version import __version__

if TYPE_CHECKING:
    from rich.table import Table

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
        from condastack.spec.stack import load_stack  # lazy: ~35 ms (yaml) that pack, unpack, doctor... never use

        return load_stack(self.root)

    def show_progress(self) -> bool:
        return not self.quiet and sys.stderr.isatty()


def fail(message: str) -> NoReturn:
    raise CondastackError(message)


def table(*columns: str, **kw: Any) -> Table:
    """A rich Table whose cells fold long names and paths onto more lines instead of cutting them."""
    from rich.table import Table  # lazy: CLI start-up

    t = Table(**kw)
    for c in columns:
        t.add_column(c, overflow="fold")
    return t


# An archive starts with one of these (tar's "ustar" magic sits at offset 257).
_ARCHIVE_MAGIC = (b"\x28\xb5\x2f\xfd", b"\x1f\x8b", b"hsqs")  # zstd, gzip, SquashFS


def require_archive(path: Path) -> None:
    """Refuse a file that is neither compressed (zstd, gzip), SquashFS nor a tar, before any work on it.

    A file that is missing, unreadable or not a regular file (a fifo would block the read) is left
    to the library, which names that problem itself.
    """
    if not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return
    if any(head.startswith(m) for m in _ARCHIVE_MAGIC) or head[257:262] == b"ustar":
        return
    hint = " It looks like a checksum file; pass the archive it names." if path.name.endswith(".sha256") else ""
    fail(f"{path}: refused: not an archive (neither tar, tar.zst, tar.gz nor SquashFS).{hint}")


def known_layer(obj: Ctx, layer: str) -> str:
    """`layer` if the stack defines it; else the stack's "unknown layer" error, before any other check.

    Without a stack file there is nothing to check against: the built env's own marker
    still names its layer, and the library checks that.
    """
    from condastack.spec.stack import find_stack_file  # lazy: see Ctx.stack

    if find_stack_file(obj.root).is_file():
        obj.stack().layer(layer)
    return layer


def emit_json(data: Any) -> None:
    click.echo(redact(json.dumps(data, indent=2, sort_keys=False, default=str)))


def _exit_now(code: int) -> NoReturn:
    """Exit at once, skipping interpreter finalization.

    After a failed py-rattler solve, its native threads can crash a finalizing
    interpreter (SIGSEGV or SIGABRT, about 1 run in 8), which would turn a clean
    "exit 1 with a message" into a crash. The message is out and every `finally`
    has run by now, so there is nothing left for finalization to do.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _stdout_gone() -> NoReturn:
    """Exit 1 without a traceback when stdout is a closed pipe; later flushes go to /dev/null."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    _exit_now(EXIT_USER)


class _Group(click.Group):
    """Maps errors to exit codes: user errors 1 (no traceback), bugs 70."""

    def invoke(self, ctx: click.Context) -> NoReturn:
        try:
            super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not in interpreter shutdown (exit 120)
            # Every command has written and printed everything by now. The native threads of py-rattler and
            # rattler-build can crash a finalizing interpreter after good runs too (a SIGSEGV after two good
            # solves; SIGABRT in PyGILState_Release after a good `wrap`, seen in a CI run), and the teardown
            # costs ~0.02-0.03 CPU s. So every command leaves the way errors do, through one exit.
            _exit_now(0)
        except CondastackError as e:
            err_console.print(f"condastack: error: {redact(str(e))}", markup=False)
            _exit_now(EXIT_USER)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except BrokenPipeError:  # the reader went away (`layers --json | head`): nothing more to say
            _stdout_gone()
        except OSError as e:
            mapped = from_os_error(e)
            if mapped is None:
                self._bug(ctx, e)
            err_console.print(f"condastack: error: {redact(str(mapped))}", markup=False)
            _exit_now(EXIT_USER)
        except KeyboardInterrupt as e:  # every `finally` has run: children ended, temporaries removed
            err_console.print("condastack: interrupted", markup=False)
            _exit_now(128 + getattr(e, "signum", 2))
        except Exception as e:  # a bug: say so briefly; the traceback only with -v
            self._bug(ctx, e)

    @staticmethod
    def _bug(ctx: click.Context, e: Exception) -> NoReturn:
        obj = ctx.obj
        if isinstance(obj, Ctx) and obj.verbose:
            traceback.print_exc()
        err_console.print(
            f"condastack: internal error: {type(e).__name__}: {redact(str(e))} "
            "(this is a bug in condastack; rerun with -v for details)",
            markup=False,
        )
        _exit_now(EXIT_BUG)


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
    Lmod modules and a node doctor. -q and -v may also follow the command.
    """
    interrupt.install()
    gate_std_streams()  # everything printed, logs included, passes the credentials output gate
    if not root.is_dir():
        raise click.BadParameter(f"{root} is not a folder", param_hint="-C")
    configure_logging(verbose)
    ctx.obj = Ctx(root=root.resolve(), verbose=verbose, quiet=quiet)
