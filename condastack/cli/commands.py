"""The `condastack` command line: thin click wrappers over the Python API.

Every command turns a CondastackError into one paragraph on stderr and exit
code 1; click's usage errors exit 2. Commands live here only as argument
parsing and printing: the work is done by the named modules.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click
from rich.markup import escape

from condastack.cli.app import EXIT_USER, Ctx, emit_json, err_console, fail, known_layer, main, table
from condastack.cli.options import json_option, prefix_option, verbosity_options
from condastack.core.credentials import redact

# --------------------------------------------------------------------------- layers


@main.command()
@json_option
@verbosity_options
@click.pass_obj
def layers(obj: Ctx, as_json: bool) -> None:
    """Show the layer tree: each layer's own specs and what it inherits."""
    stack = obj.stack()
    if as_json:
        emit_json(stack.to_json())
        return
    from rich.tree import Tree  # lazy: ~6 ms of every other command's start-up

    plat = stack.default_platform
    tree = Tree(f"[bold]{stack.name}[/] ({', '.join(stack.platforms)}; specs shown for {plat})")
    nodes: dict[str, Tree] = {}
    for name in stack.order():
        layer = stack.layers[name]
        parent = nodes.get(layer.extends, tree) if layer.extends else tree
        shown = layer.file.relative_to(stack.root) if layer.file.is_relative_to(stack.root) else layer.file
        label = f"[bold cyan]{name}[/]  [dim]{shown}[/]"
        node = parent.add(label)
        own_c, own_p = layer.conda.get(plat, ()), layer.pip.get(plat, ())
        node.add("own conda: " + escape(", ".join(own_c) or "-"))
        if own_p:
            node.add("own pip: " + escape(redact(", ".join(own_p))))  # `pkg[extra]` is not markup
        if layer.extends:
            inh_c, inh_p = stack.specs_for(layer.extends, plat)
            node.add(f"[dim]inherited from {layer.extends}: " + escape(redact(", ".join(inh_c + inh_p)) or "-")
                     + "[/]")
        nodes[name] = node
    obj.console.print(tree)
    vp = stack.virtual_packages
    if vp:
        t = table("platform", "virtual packages", title="target nodes")
        for p in stack.platforms:
            t.add_row(p, ", ".join(f"{k} {v}" for k, v in vp.get(p, {}).items()) or "-")
        obj.console.print(t)


# Commands of later stages register below, each a thin wrapper over its module.


# --------------------------------------------------------------------------- lock / diff


@main.command()
@click.argument("layers", nargs=-1)
@click.option("--platform", "platforms", multiple=True, help="Re-solve only these platforms (repeatable).")
@click.option("--update", "update", multiple=True, metavar="PKG", help="Re-solve toward a newer PKG (repeatable).")
@click.option("--check", is_flag=True, help="Exit 1 naming the layers whose lock no longer matches its specs.")
@click.option("--dry-run", is_flag=True, help="Print what would be solved per layer and platform, and the channels.")
@click.option("--solver", type=click.Choice(["rattler", "conda", "mamba", "micromamba"]), default="rattler",
              show_default=True, help="conda/mamba/micromamba run conda-lock's own pipeline (binary must be on PATH).")
@json_option
@verbosity_options
@click.pass_obj
def lock(obj: Ctx, layers: tuple[str, ...], platforms: tuple[str, ...], update: tuple[str, ...], check: bool,
         dry_run: bool, solver: str, as_json: bool) -> None:
    """Lock LAYERS and their parents (all layers by default) into lock/."""
    from condastack.lock import layered as lk  # lazy: CLI start-up

    stack = obj.stack()
    names = list(layers) or None
    for n in names or []:
        stack.layer(n)
    if solver != "rattler":
        import shutil  # lazy: CLI start-up

        binary = shutil.which(solver)
        if binary is None:
            fail(f"--solver {solver}: no '{solver}' binary on PATH. Install it, or use the default py-rattler solver.")
        from condastack.lock.external import lock_with_conda_lock  # lazy: CLI start-up

        for path in lock_with_conda_lock(stack, names, solver, binary):
            obj.console.print(f"wrote {path}")
        return
    if dry_run:
        plan = lk.dry_run(stack, names)
        if as_json:
            emit_json(plan)
            return
        t = table("layer", "platform", "action", "channels", "conda specs", "pip specs", title="lock plan")
        for row in plan:
            t.add_row(str(row["layer"]), str(row["platform"]), str(row["action"]),
                      escape("\n".join(row["channels"])), escape(", ".join(row["conda"])),  # type: ignore[arg-type]
                      escape(", ".join(row["pip"]) or "-"))  # type: ignore[arg-type]
        obj.console.print(t)
        return
    if check:
        _lock_check(obj, lk.stale_layers(stack, names), as_json)
        return
    with err_console.status("locking…") if obj.show_progress() else _nullctx() as status:
        def progress(msg: str) -> None:
            if status is not None:
                status.update(msg)
            elif obj.verbose:
                err_console.print(msg, markup=False)

        results = lk.lock_stack(stack, names, platforms=list(platforms) or None, update=list(update),
                                progress=progress)
    if as_json:
        emit_json([{"layer": r.layer, "lockfile": str(r.path), "solved": r.solved, "unchanged": r.unchanged,
                    "packages": r.counts} for r in results])
        return
    t = table("layer", "lockfile", "solved", "unchanged", "packages (conda+pip)")
    for r in results:
        counts = ", ".join(f"{p}: {c['conda']}+{c['pip']}" for p, c in r.counts.items())
        t.add_row(r.layer, str(r.path.relative_to(stack.root)), ", ".join(r.solved) or "-",
                  ", ".join(r.unchanged) or "-", counts)
    obj.console.print(t)


def _lock_check(obj: Ctx, stale: list[tuple[str, str]], as_json: bool) -> None:
    """Print every stale (layer, reason) line, then fail naming each stale layer once."""
    if as_json:
        emit_json([{"layer": n, "why": w} for n, w in stale])
    for n, why in stale:
        err_console.print(f"stale: layer {n}: {why}", markup=False)
    if stale:
        layers = list(dict.fromkeys(n for n, _ in stale))
        fail(f"{len(layers)} layer(s) need `condastack lock`: {', '.join(layers)}.")
    if not as_json:
        obj.console.print("all locks are up to date")


def _nullctx():  # noqa: ANN202
    return contextlib.nullcontext(None)


@main.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path), required=False)
@click.option("--git", "rev", metavar="REV", help="Compare OLD (a lockfile) with its version at git REV.")
@json_option
@verbosity_options
@click.pass_obj
def diff(obj: Ctx, old: Path, new: Path | None, rev: str | None, as_json: bool) -> None:
    """Packages added, removed and changed between two lockfiles (or a lockfile and git REV)."""
    from condastack.lock.diff import diff_against_git, diff_locks  # lazy: CLI start-up

    if rev:
        if new is not None:
            raise click.UsageError("give either NEW or --git REV, not both")
        changes = diff_against_git(old, rev)
    else:
        if new is None:
            raise click.UsageError("give NEW, or --git REV")
        changes = diff_locks(old, new)
    if as_json:
        emit_json({p: [{"name": c.name, "old": c.old, "new": c.new} for c in cs] for p, cs in changes.items()})
        return
    for plat, cs in changes.items():
        t = table("package", "old", "new", title=f"{plat}: {len(cs)} change(s)")
        for c in cs:
            t.add_row(c.name, c.old or "[green]added[/]", c.new or "[red]removed[/]")
        obj.console.print(t)


# --------------------------------------------------------------------------- doctor


# --------------------------------------------------------------------------- module


# --------------------------------------------------------------------------- wrap


# --------------------------------------------------------------------------- pack / unpack / relocate


# --------------------------------------------------------------------------- container


# --------------------------------------------------------------------------- install


# --------------------------------------------------------------------------- build / verify


@main.command()
@click.argument("layer")
@prefix_option("Where to build (default: envs/LAYER).")
@click.option("--offline", is_flag=True, help="Use only the package cache ($CONDASTACK_PKGS); list what is missing.")
@click.option("--installer", type=click.Choice(["auto", "rattler", "micromamba"]), default="auto", show_default=True,
              help="auto: micromamba when it is on PATH, else py-rattler.")
@click.option("--force", is_flag=True, help="Rebuild even if unchanged; replace a folder condastack did not make.")
@click.option("--frozen", is_flag=True, help="Build the lock as it is, even if the layer's specs changed since.")
@json_option
@verbosity_options
@click.pass_obj
def build(obj: Ctx, layer: str, prefix: Path | None, offline: bool, installer: str, force: bool, frozen: bool,
          as_json: bool) -> None:
    """Create the environment of LAYER from lock/LAYER.conda-lock.yml for this machine's platform."""
    from condastack.env.build import build_layer  # lazy: CLI start-up

    say = (lambda m: err_console.print(m, markup=False)) if obj.verbose and not obj.quiet else None
    from condastack.core.progress import terminal_meter  # lazy: CLI start-up

    with terminal_meter(not obj.quiet) as meter:
        res = build_layer(obj.root, layer, prefix=prefix, offline=offline, installer=installer, force=force,
                          frozen=frozen, progress=say, meter=meter)
    if as_json:
        emit_json(res.to_json())
        return
    if res.action == "unchanged":
        obj.console.print(f"{res.prefix}: unchanged (lock {res.lock_hash[:12]})", markup=False)
        return
    obj.console.print(
        f"{res.prefix}: {res.action} with {res.installer}: {res.conda_packages} conda + {res.pip_packages} pip "
        f"packages, {len(res.fetched)} fetched, {res.seconds:.1f} s", markup=False)


@main.command()
@click.argument("layer", required=False)
@prefix_option("Verify this environment (its lock is named in conda-meta/condastack.info unless LAYER "
               "is given).")
@json_option
@verbosity_options
@click.pass_obj
def verify(obj: Ctx, layer: str | None, prefix: Path | None, as_json: bool) -> None:
    """Check an environment against its lock; exit 1 on drift."""
    from condastack.env.verify import format_report, verify_layer  # lazy: CLI start-up

    if layer is None and prefix is None:
        raise click.UsageError("verify needs a LAYER or --prefix PATH.")
    rep = verify_layer(obj.root, layer if layer is None else known_layer(obj, layer), prefix=prefix)
    if as_json:
        emit_json(rep.to_json())
    else:
        click.echo(format_report(rep))
    if not rep.ok:
        sys.exit(EXIT_USER)


# --------------------------------------------------------------------------- Slurm node-local preamble


