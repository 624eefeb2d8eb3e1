"""The env layers of a layered OCI image: the stack's layers as packed archives at the container prefix.

A child layer's delta archive (`pack LAYER --over PARENT --dest-prefix P`) names the archive it goes on
top of (`parent_archive`, `parent_sha256`); following those names from LAYER's delta down to a full
archive gives one image layer per stack layer: the root layer's whole env, then each child's delta.
Two children of one base then share the base env layer byte for byte (the archives are reproducible,
and so is the layer made from each), so a registry stores and a node pulls it once.
"""

from __future__ import annotations

from pathlib import Path

from condastack.container.spec import PackedArchive, pack_candidates, read_archive
from condastack.core import layout
from condastack.core.errors import CondastackError
from condastack.core.pathsafe import UnsafePath, member_name
from condastack.spec.stack import Stack


def delta_pack_commands(chain: list[str], prefix: str) -> str:
    """The pack commands that give `chain[-1]` an image layer of its own over its parent's (chain: root first).
    A delta goes on top of a full archive, so a deeper stack's image has the parent's env whole, then the delta."""
    parent, layer = chain[-2], chain[-1]
    return (f"`condastack pack {parent} --dest-prefix {prefix}` and "
            f"`condastack pack {layer} --over {parent} --dest-prefix {prefix}`")


def layer_chain(stack: Stack, layer: str, platform: str, prefix: str,
                archive: Path | None = None) -> list[PackedArchive] | None:
    """The archives of a layered image of `layer`, root first; None for one env layer.

    One env layer: `layer` has no parent, `archive` is a full archive, or no delta of `layer` over its
    parent is packed for `prefix` (then the layer's full archive is used, as before deltas existed).
    A delta whose parents cannot be found, or are not the archives it was packed over, is refused.
    """
    chain = [lay.name for lay in stack.chain(layer)]
    if archive is not None:
        top = read_archive(Path(archive))
        if top.parent_layer is None:
            return None
    else:
        if len(chain) == 1:
            return None
        found = [read_archive(p) for parent in reversed(chain[:-1])  # the nearest ancestor first
                 for p in pack_candidates(layout.pack_dir(stack.root), f"{layer}-over-{parent}", platform)]
        tops = [a for a in found if a.dest_prefix is not None and a.dest_prefix.rstrip("/") == prefix]
        if not tops:
            return None
        top = tops[0]
    if top.layer not in (None, layer):
        raise CondastackError(f"{top.path}: a delta of layer '{top.layer}', not '{layer}'.")
    out = [top]
    while out[-1].parent_layer is not None:
        out.append(_parent_of(out[-1], layer, prefix, chain))
    for a in out:
        if a.dest_prefix is None or a.dest_prefix.rstrip("/") != prefix:
            raise CondastackError(f"{a.path}: packed for --dest-prefix {a.dest_prefix}, not {prefix}. Pack the "
                                  f"layers for the container prefix: {delta_pack_commands(chain, prefix)}.")
    return list(reversed(out))


def _parent_of(child: PackedArchive, layer: str, prefix: str, chain: list[str]) -> PackedArchive:
    """The archive `child` (a delta) was packed over: beside it, under the name and sha256 its manifest gives."""
    parent = str(child.parent_layer)
    how = f"Pack them again: {delta_pack_commands(chain, prefix)}, or pass --archive FULL for one env layer"
    try:
        name = member_name(str(child.parent_archive or ""), str(child.path), "parent_archive")
    except UnsafePath as e:
        raise CondastackError(f"{child.path}: its manifest's parent_archive {e.why}.") from None
    path = child.path.parent / name
    if not name or "/" in name or not path.is_file():
        raise CondastackError(f"layer '{layer}': {child.path.name} is a delta over '{parent}' archive "
                              f"{name or '(unnamed)'}, which is not in {child.path.parent}. {how}.")
    found = read_archive(path)
    if found.sha256 != child.parent_sha256 or found.layer not in (None, parent):
        raise CondastackError(f"layer '{layer}': {path.name} is not the '{parent}' archive {child.path.name} was "
                              f"packed over (sha256 {found.sha256[:12]}, the delta names "
                              f"{str(child.parent_sha256)[:12]}). {how}.")
    return found


def whiteouts(removed: tuple[str, ...], source: Path) -> list[str]:
    """The `.wh.NAME` entries (relative to the prefix, sorted) that hide a delta's removed paths in the layers
    below: one per removed path, none under a removed folder (its whiteout hides all of it)."""
    clean = set()
    for rel in removed:
        try:
            clean.add(member_name(rel, str(source), "removed path"))
        except UnsafePath as e:
            raise CondastackError(f"{source}: its manifest's removed path {e.why}.") from None
    clean.discard("")
    tops = [r for r in clean if not any("/".join(r.split("/")[:i]) in clean for i in range(1, r.count("/") + 1))]
    return sorted(layout.whiteout(r) for r in tops)


__all__ = ["delta_pack_commands", "layer_chain", "whiteouts"]
