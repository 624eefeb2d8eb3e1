"""Why a layer's solve failed, in the user's words: missing specs, and which parent pin or spec clashes (the
conflict explainer).
"""


from __future__ import annotations

from condastack.core.credentials import redact
from condastack.core.errors import CondastackError
from condastack.core.layout import lockfile_path
from condastack.lock.conda_solve import explain_solver_error, query_records, solve_conda, spec_name, split_depend
from condastack.lock.lockfile import read_lock_entries
from condastack.spec.stack import Stack


def _solve_failure(stack: Stack, name: str, plat: str, err: Exception, channels: list[str], specs: list[str],
                   vpkgs: dict[str, str], pinned: list) -> CondastackError:
    """Turn a solver failure into one paragraph; a culprit is named only when a re-solve confirms it."""
    text = str(err)
    if "FetchRepoData" in type(err).__name__ or "fetch" in text.lower() and "repodata" in text.lower():
        return CondastackError(
            f"layer {name} ({plat}): cannot read the channel(s) {', '.join(redact(c) for c in channels)}: "
            f"{redact(text.strip().splitlines()[0] if text.strip() else type(err).__name__)}"
        )
    tail = " The existing lockfiles were left unchanged."
    missing = _missing_specs(channels, plat, specs)
    if missing:
        return CondastackError(f"layer {name} ({plat}): {'; '.join(missing)} in "
                               f"{', '.join(redact(c) for c in channels)}.{tail}")
    if pinned:
        conflict = _explain_pin_conflict(stack, name, plat, channels, vpkgs, pinned)
        if conflict:
            return CondastackError(conflict + tail)
    detail = explain_solver_error(err)
    return CondastackError(f"layer {name} ({plat}): the specs cannot be satisfied.\n{redact(detail)}\n{tail.strip()}")


def _missing_specs(channels: list[str], plat: str, specs: list[str]) -> list[str]:
    """Every spec that no record of the channels can meet, each described once."""
    import rattler  # lazy: native, ~0.2 s

    names = sorted({spec_name(s) for s in specs if not spec_name(s).startswith("__")})
    try:
        found = query_records(channels, plat, names)
    except Exception:
        return []
    by_name: dict[str, list] = {}
    for r in found:
        by_name.setdefault(r.name.normalized, []).append(r)
    out = []
    for s in specs:
        n = spec_name(s)
        if n.startswith("__"):
            continue
        if not by_name.get(n):
            out.append(f"package {n} not found")
            continue
        try:
            ms = rattler.MatchSpec(s)
        except Exception:
            continue
        if not any(ms.matches(r) for r in by_name[n]):
            out.append(f"no version of {n} matching '{s.strip()}' found")
    return out


def _solves(channels: list[str], specs: list[str], plat: str, vpkgs: dict[str, str],
            pinned: list | None = None) -> bool:
    try:
        solve_conda(channels, specs, plat, vpkgs, pinned=pinned)
    except Exception:
        return False
    return True


def _explain_pin_conflict(stack: Stack, name: str, plat: str, channels: list[str],
                          vpkgs: dict[str, str], pinned: list) -> str | None:
    """Which parent spec or record a child's own spec breaks, confirmed by re-solving."""
    import rattler  # lazy: native, ~0.2 s

    parent = stack.layer(name).extends or "?"
    own = list(stack.layer(name).conda.get(plat, ()))
    parent_specs, _ = stack.specs_for(parent, plat)
    pins = {r.name.normalized: r for r in pinned}
    for s in own:
        r = pins.get(spec_name(s))
        if r is not None and not rattler.MatchSpec(s).matches(r):
            return (f"layer {name}: it asks for {s}, but layer {_pin_owner(stack, name, plat, r)} pins "
                    f"{r.name.normalized} {r.version} {r.build}.")
    for s in own:
        if _solves(channels, [s, *parent_specs], plat, vpkgs) or not _solves(channels, [s], plat, vpkgs):
            continue
        for p in parent_specs:
            rest = [q for q in parent_specs if q != p]
            if _solves(channels, [s, *rest], plat, vpkgs):
                return (f"layer {name} asks for '{s}', which cannot be installed together with layer "
                        f"{_spec_owner(stack, name, plat, p)}'s spec '{p}' (each alone can be solved; "
                        f"together they cannot){_clashes(channels, [s, *rest], plat, vpkgs, pinned, p)}.")
        return (f"layer {name} asks for '{s}', which conflicts with the specs of layer {parent} "
                f"({', '.join(parent_specs)}).")
    for s in own:
        if _solves(channels, [s], plat, vpkgs, pinned=pinned) or not _solves(channels, [s], plat, vpkgs):
            continue
        for r in pinned:
            rest = [q for q in pinned if q.name.normalized != r.name.normalized]
            if _solves(channels, [s], plat, vpkgs, pinned=rest):
                return _pin_culprit(stack, name, plat, channels, vpkgs, s, r, rest)
        return f"layer {name} asks for '{s}', which cannot be installed over the locked packages of layer {parent}."
    return None


def _clashes(channels: list[str], specs: list[str], plat: str, vpkgs: dict[str, str], pinned: list,
             culprit: str) -> str:
    """Facts behind a confirmed clash: the culprit's locked record against the solution without it."""
    import rattler  # lazy: native, ~0.2 s

    try:
        free = {r.name.normalized: r for r in solve_conda(channels, specs, plat, vpkgs)}
    except Exception:
        return ""
    facts = []
    for r in (r for r in pinned if r.name.normalized == spec_name(culprit)):
        for kind, deps in (("needs", r.depends), ("constrains", r.constrains)):
            for dep in deps:
                got = free.get(split_depend(dep)[0])
                if got is not None and not rattler.MatchSpec(dep).matches(got):
                    facts.append(f"{r.name.normalized} {r.version} {kind} '{dep}', and without it "
                                 f"{got.name.normalized} {got.version} is chosen")
    return f": {'; '.join(facts[:3])}" if facts else ""


def _pin_culprit(stack: Stack, name: str, plat: str, channels: list[str], vpkgs: dict[str, str], spec: str,
                 pin, rest: list) -> str:  # noqa: ANN001
    """The message for a parent record that a re-solve without it confirmed as the blocker."""
    import rattler  # lazy: native, ~0.2 s

    owner = _pin_owner(stack, name, plat, pin)
    pname = pin.name.normalized
    for rec in solve_conda(channels, [spec], plat, vpkgs, pinned=rest):
        for kind, deps in (("needs", rec.depends), ("constrains", rec.constrains)):
            for dep in deps:
                dname, dspec = split_depend(dep)
                if dname == pname and not rattler.MatchSpec(dep).matches(pin):
                    return (f"layer {name}: {rec.name.normalized} {rec.version} {kind} {dname} {dspec}, but layer "
                            f"{owner} pins {pname} {pin.version} ({pin.build}).")
    return (f"layer {name} asks for '{spec}', which cannot be installed with {pname} {pin.version} {pin.build} "
            f"as locked in layer {owner}.")


def _spec_owner(stack: Stack, name: str, plat: str, spec: str) -> str:
    for layer in stack.chain(name)[:-1]:
        if spec in layer.conda.get(plat, ()):
            return layer.name
    return stack.layer(name).extends or "?"


def _pin_owner(stack: Stack, name: str, plat: str, rec) -> str:  # noqa: ANN001
    """The highest ancestor whose lock holds this exact record."""
    for layer in stack.chain(name)[:-1]:
        for p in read_lock_entries(lockfile_path(stack.root, layer.name)):
            if p.platform == plat and p.name == rec.name.normalized and p.version == str(rec.version):
                return layer.name
    return stack.layer(name).extends or "?"
