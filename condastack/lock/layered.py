"""Layered locking: `lock/<layer>.conda-lock.yml`, `@EXPLICIT` files and pip requirements.

A child layer is solved with every conda package of its parent's lock pinned
exactly, so `app` is a superset of `base`, package for package. The conda
part is solved by py-rattler and the pip part by conda-lock's PyPI solver;
the lockfile is written by conda-lock's own writer (see solve.py, the seam).

Each platform's `content_hash` is a hash of everything the solve depends on
(specs, channels, virtual packages, pip indexes, and the parent's pins), so a
re-lock with unchanged inputs does not solve at all and rewrites nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from condastack.core import layout
from condastack.core.credentials import redact, strip_credentials
from condastack.core.errors import CondastackError, LockConflict, LockStale
from condastack.core.fs import atomic_write_text, clean_stale_temporaries, file_lock
from condastack.core.layout import lock_dir, lockfile_path
from condastack.core.names import ENV_VAR_NAME, canonical, pypi_names_for_conda
from condastack.core.version import __version__
from condastack.lock.conda_solve import (
    fetch_records,
    gateway_session,
    record_entry,
    records_from_json,
    records_to_json,
    solve_conda,
    spec_name,
)
from condastack.lock.consistency import check_records, describe
from condastack.lock.entry import RecordsFile
from condastack.lock.explain import _solve_failure
from condastack.lock.inputs import SolveInputs
from condastack.lock.lockfile import (
    _summarize,
    explicit_text,
    lock_entries_as_json,
    lock_summary,
    read_lock_entries,
    read_raw,
    read_records_sidecar,
    remember_lockfile,
    render_lockfile,
)
from condastack.lock.pypi_solve import solve_pip
from condastack.lock.vcs import (
    VCS_KEY,
    VcsResolver,
    add_requirements,
    is_vcs_entry,
    recorded_for,
    resolve_all,
    resolver_for,
    split_vcs,
)
from condastack.spec.envfile import PYPI_SIMPLE
from condastack.spec.stack import Stack

VARIABLES_KEY = "condastack.variables"  # custom metadata: the layer's `variables:`, as JSON
Progress = Callable[[str], None]


def records_path(root: Path, layer: str) -> Path:
    """The full repodata records of a layer's lock (depends and constrains), for offline child solves."""
    return layout.records_sidecar_path(lockfile_path(root, layer))


def explicit_path(stack: Stack, layer: str, platform: str) -> Path:
    return layout.explicit_path(stack.root, layer, platform, stack.default_platform)


def pip_txt_path(stack: Stack, layer: str, platform: str) -> Path:
    return layout.pip_txt_path(stack.root, layer, platform, stack.default_platform)


@dataclass
class LayerLock:
    """What `lock` did for one layer."""

    layer: str
    path: Path
    solved: list[str] = field(default_factory=list)  # platforms re-solved
    unchanged: list[str] = field(default_factory=list)  # platforms whose hash matched
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # platform -> {conda, pip}


# --------------------------------------------------------------------------- hashing


def input_hash(stack: Stack, layer: str, platform: str) -> str:
    """The hash of every input of one layer's solve on one platform."""
    return SolveInputs.of(stack, layer, platform).content_hash()


def stale_layers(stack: Stack, layers: list[str] | None = None) -> list[tuple[str, str]]:
    """Layers whose lock is missing or no longer matches their specs: (layer, why)."""
    out: list[tuple[str, str]] = []
    for name in stack.order(layers):
        path = lockfile_path(stack.root, name)
        if not path.is_file():
            out.append((name, f"{path.name} is missing"))
            continue
        hashes = lock_summary(path)["content_hash"]
        changed = [(name, f"{plat} inputs changed since {path.name} was written") for plat in stack.platforms
                   if hashes.get(plat) != input_hash(stack, name, plat)]
        out += changed or [(name, why) for why in _inconsistencies(stack, name)]
    return out


def check_fresh(stack: Stack, layer: str, platform: str) -> None:
    """Refuse to use `layer`'s lock for `platform` when the layer's inputs changed since it was written.

    Cheap enough for every build: spec parsing is cached by file content, the lock's
    hashes come from its summary (the records file) and its metadata line, so a
    no-op build neither parses the lockfile nor imports conda-lock.
    """
    path = lockfile_path(stack.root, layer)
    plats = [platform] if platform in stack.platforms else list(stack.platforms)
    with open(path, encoding="utf-8", errors="replace") as f:
        ours = any(line.lstrip().startswith("condastack.layer:") for line in f)
    if not ours:
        return  # written by conda-lock's own pipeline (--solver conda…): its hashes are not ours
    hashes = lock_summary(path)["content_hash"]
    for plat in plats:
        if hashes.get(plat) != input_hash(stack, layer, plat):
            raise LockStale(layer, path, f"the {plat} inputs (specs, channels, virtual packages or parent "
                                         "lock) changed")


# --------------------------------------------------------------------------- variables, for build


def lock_variables(lockfile: Path) -> dict[str, str]:
    """The layer's `variables:` as its lock records them (custom metadata, VARIABLES_KEY).

    Read from the metadata entry alone, so a no-op build does not parse a 10 MB lockfile again.
    YAML writers (conda-lock's and ours) fold a long value onto the lines below the key, each
    indented deeper than it: those lines belong to the entry too.
    """

    with open(lockfile, encoding="utf-8", errors="surrogateescape") as f:
        entry = _metadata_entry(f, VARIABLES_KEY)
    if entry is None:
        return {}
    try:
        data = json.loads(yaml.safe_load(entry)[VARIABLES_KEY])
    except (ValueError, TypeError, KeyError, yaml.YAMLError):
        data = None
    if not isinstance(data, dict) or not all(isinstance(k, str) and ENV_VAR_NAME.match(k) and isinstance(v, str)
                                             and "\x00" not in v for k, v in data.items()):
        raise CondastackError(f"{lockfile}: its {VARIABLES_KEY} metadata is not a map of variable names "
                              "to strings. Re-create it with `condastack lock`.")
    return data


def _metadata_entry(lines: Iterable[str], key: str) -> str | None:
    """The YAML text of the `key:` entry (its line and its deeper-indented continuation lines), dedented."""
    found: list[str] = []
    indent = 0
    for line in lines:
        if not found:
            if line.lstrip().startswith(f"{key}:"):
                indent = len(line) - len(line.lstrip(" "))
                found.append(line[indent:])
            continue
        if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
            break
        found.append(line[indent:] if line.strip() else "\n")
    return "".join(found) if found else None


def _inconsistencies(stack: Stack, name: str) -> list[str]:
    """The consistency check of a written lock, per platform: a paragraph per failing platform."""
    out = []
    for plat in stack.platforms:
        records, _ = full_records(stack, name, plat, as_written=True)
        pip = [(p.name, p.version) for p in read_lock_entries(lockfile_path(stack.root, name))
               if p.platform == plat and p.manager == "pip"]
        bad = check_records(records, stack.effective_virtual_packages_for(plat), pip)
        if bad:
            out.append(describe(name, plat, bad))
    return out


def full_records(stack: Stack, name: str, plat: str, *, as_written: bool = False) -> tuple[list, bool]:
    """The full records of a layer's lock on one platform, and whether they came from the channels.

    The records file beside the lock is used where it holds the lock entry's package; anything
    it lacks is fetched from the layer's channels by URL. `as_written` (lock --check) takes its
    records by sha256 alone, as the file has them, so a hand edit is judged, not replaced.
    """
    entries = [p for p in read_lock_entries(lockfile_path(stack.root, name))
               if p.platform == plat and p.manager == "conda"]
    records_file = RecordsFile.read(records_path(stack.root, name))
    if as_written:
        by_sha = {r.sha256: r for r in records_file.platforms.get(plat, ())}
        kept = {p.sha256: by_sha[p.sha256] for p in entries if p.sha256 in by_sha}
    else:
        kept = records_file.records_for(plat, entries)
    have = [dict(kept[p.sha256].to_dict(), url=p.url) for p in entries if p.sha256 in kept]
    lacking = [p.to_dict() for p in entries if p.sha256 not in kept]
    records = records_from_json(have) if have else []
    if not lacking:
        return records, False
    fetched, missing = fetch_records(stack.channels_for(name), plat, lacking)
    if missing:
        raise CondastackError(
            f"layer {name} ({plat}): {lockfile_path(stack.root, name).name} holds packages that neither "
            f"{records_path(stack.root, name).name} nor the channels have: {', '.join(missing[:8])}. "
            f"Delete {lockfile_path(stack.root, name).name} and run `condastack lock {name}` to re-lock it.")
    return records + fetched, True


# --------------------------------------------------------------------------- dry run


def dry_run(stack: Stack, layers: list[str] | None = None) -> list[dict[str, object]]:
    """What `lock` would solve, per layer and platform, and the channels it needs."""
    out: list[dict[str, object]] = []
    for name in stack.order(layers):
        path = lockfile_path(stack.root, name)
        hashes = lock_summary(path)["content_hash"] if path.is_file() else None
        for plat in stack.platforms:
            inp = SolveInputs.of(stack, name, plat)
            up_to_date = hashes is not None and hashes.get(plat) == inp.content_hash()
            out.append({
                "layer": name, "platform": plat, "extends": inp.extends,
                "channels": [redact(c) for c in inp.channels],
                "pip-index": [redact(c) for c in inp.pip_indexes] if inp.pip else [],
                "virtual-packages": inp.virtual_packages,
                "conda": list(inp.conda), "pip": [redact(s) for s in inp.pip],
                "vcs": [v.to_json() for v in split_vcs(list(inp.pip))[1]],
                "pip-options": inp.pip_options.to_json(redact),
                "variables": inp.variables,
                "action": "up to date" if up_to_date else "solve",
            })
    return out


# --------------------------------------------------------------------------- locking


def lock_stack(stack: Stack, layers: list[str] | None = None, *, platforms: list[str] | None = None,
               update: list[str] | None = None, progress: Progress | None = None) -> list[LayerLock]:
    """Lock the named layers and their parents (all layers by default)."""
    for p in platforms or []:
        if p not in stack.platforms:
            raise CondastackError(f"{stack.file}: platform '{p}' is not one of the stack's platforms "
                                  f"({', '.join(stack.platforms)}).")
    ldir = lock_dir(stack.root)
    ldir.mkdir(parents=True, exist_ok=True)
    # One lock run at a time per project: a second one waits, then sees the fresh locks.
    with file_lock(layout.lock_mutex(stack.root)):
        clean_stale_temporaries(ldir)
        if update:
            _check_update_names(stack, stack.order(layers), update)
        with gateway_session():
            return [_lock_layer(stack, name, platforms or list(stack.platforms), update or [], progress)
                    for name in stack.order(layers)]


def _lock_layer(stack: Stack, name: str, platforms: list[str], update: list[str],
                progress: Progress | None) -> LayerLock:
    path = lockfile_path(stack.root, name)
    old_hash = dict(lock_summary(path)["content_hash"]) if path.is_file() else {}
    result = LayerLock(layer=name, path=path)
    inputs = {p: SolveInputs.of(stack, name, p) for p in stack.platforms}  # asked once, for hash and solve
    fresh = {p: inputs[p].content_hash() for p in stack.platforms}
    if not update and old_hash and all(old_hash.get(p) == fresh[p] for p in stack.platforms):
        # Nothing changed: no solve, no write; only re-derive files a user deleted.
        result.unchanged = list(stack.platforms)
        counts = lock_summary(path)["counts"]
        for plat in stack.platforms:
            result.counts[plat] = dict(counts.get(plat) or {"conda": 0, "pip": 0})
        if not all(explicit_path(stack, name, p).is_file() for p in stack.platforms):
            _write_derived(stack, name, read_raw(path))
        return result
    previous = [p.to_dict() for p in read_lock_entries(path)] if path.is_file() else None
    resolver = resolver_for(stack, name, update)
    new_hash: dict[str, str] = {}
    packages = []
    full: dict[str, list[dict]] = {}
    for plat in stack.platforms:
        h = fresh[plat]
        new_hash[plat] = h
        prev_pkgs = [p for p in previous if p.get("platform") == plat] if previous else []
        keep = plat not in platforms or (old_hash.get(plat) == h and not update)
        if keep and prev_pkgs:
            packages += prev_pkgs
            new_hash[plat] = old_hash.get(plat, h)
            full[plat] = read_records_sidecar(records_path(stack.root, name), plat)
            result.unchanged.append(plat)
        else:
            if progress:
                progress(f"solving {name} for {plat}")
            solved, records = _solve_platform(stack, inputs[plat], previous, update, resolver)
            packages += solved
            full[plat] = records_to_json(records)
            result.solved.append(plat)
        plat_pkgs = [p for p in packages if p["platform"] == plat]
        result.counts[plat] = {m: sum(p["manager"] == m for p in plat_pkgs) for m in ("conda", "pip")}
    if result.solved:
        _write_lock(stack, name, path, packages, new_hash, full, recorded_for(stack, name, resolver))
    else:
        _write_derived(stack, name, read_raw(path))
    return result


def _check_update_names(stack: Stack, names: list[str], update: list[str]) -> None:
    """`--update PKG` for a package that none of the locks holds is a mistake, not a no-op."""
    held: set[str] = set()
    paths = [lockfile_path(stack.root, n) for n in names]
    for lp in paths:
        if lp.is_file():
            held |= {p.name.lower() for p in read_lock_entries(lp)}
    unknown = [u for u in update if u.lower() not in held]
    if unknown and any(lp.is_file() for lp in paths):
        raise CondastackError(f"--update names {', '.join(unknown)}, which no lock of layer(s) {', '.join(names)} "
                              f"holds. Check the spelling, or add it to a layer file first.")


def _write_lock(stack: Stack, name: str, path: Path, packages: list, new_hash: dict[str, str],
                full: dict[str, list[dict]], vcs: dict[str, dict[str, str]]) -> None:
    sources = [str(Path("..") / stack.layer(l.name).file.relative_to(stack.root))
               if stack.layer(l.name).file.is_relative_to(stack.root) else str(l.file)
               for l in stack.chain(name)]
    custom = {"condastack.layer": name, "condastack.extends": stack.layer(name).extends or "",
              "condastack.stack": stack.name, "condastack.version": __version__,
              VARIABLES_KEY: json.dumps(stack.variables_for(name), sort_keys=True)}
    if vcs:
        custom[VCS_KEY] = json.dumps(vcs, sort_keys=True)
    for plat in stack.platforms:
        custom[f"condastack.virtual-packages.{plat}"] = json.dumps(stack.effective_virtual_packages_for(plat),
                                                                   sort_keys=True)
    lock = render_lockfile(path, packages, channels=[strip_credentials(c) for c in stack.channels_for(name)],
                                platforms=list(stack.platforms), sources=sources, content_hash=new_hash,
                                custom=custom)
    # The lockfile is written last: while it is the old one, the next run finds its inputs changed and
    # rewrites the whole set. The records (and the summary) name the lock they describe by its sha256,
    # so records that got ahead of their lockfile are ignored (records then come from the channels).
    summary = _summarize(lock.doc, hashlib.sha256(lock.text.encode()).hexdigest())
    records = RecordsFile.from_dict({"lock": summary, "platforms": full}, records_path(stack.root, name))
    atomic_write_text(records_path(stack.root, name), records.to_text())
    _write_derived(stack, name, lock.doc)
    atomic_write_text(path, lock.text)
    remember_lockfile(path, lock)


def _write_derived(stack: Stack, name: str, raw: dict) -> None:
    """Write the @EXPLICIT and pip requirement files that follow from a lockfile's document.

    They are rewritten only when their content differs, so a no-op lock touches nothing.
    """
    entries = raw["package"]
    hashes = raw["metadata"].get("content_hash") or {}
    for plat in stack.platforms:
        if not any(p.get("platform") == plat and p.get("manager") == "conda" for p in entries):
            continue
        _write_if_changed(explicit_path(stack, name, plat), explicit_text(entries, plat, hashes.get(plat)))
        pip = sorted((p for p in entries if p.get("platform") == plat and p.get("manager") == "pip"),
                     key=lambda p: p["name"])
        pip_path = pip_txt_path(stack, name, plat)
        if pip:
            lines = [f"# pip packages of layer {name} ({plat}), locked by condastack\n"]
            lines += [f"{p['name']}=={p['version']} --hash=sha256:{(p.get('hash') or {}).get('sha256')}\n"
                      if not is_vcs_entry(p) else
                      f"# {p['name']} @ {p['url']}  (git: `condastack build` builds and installs it; pip cannot "
                      "hash-check a VCS requirement)\n" for p in pip]
            _write_if_changed(pip_path, "".join(lines))
        elif pip_path.exists():
            pip_path.unlink()


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def _solve_platform(stack: Stack, inp: SolveInputs, previous: list[dict] | None,
                    update: list[str], resolver: VcsResolver) -> tuple[list[dict], list]:
    """Solve one layer on one platform; returns (conda-lock entries, full conda records)."""
    name, plat = inp.layer, inp.platform
    channels, vpkgs = list(inp.channels), inp.virtual_packages
    conda_specs, pip_specs = list(inp.conda), list(inp.pip)
    if not channels:
        raise CondastackError(f"{inp.file}: layer '{name}' lists no channels (and inherits none).")

    pinned: list = []
    parent_pip = []
    if inp.extends:
        ppath = lockfile_path(stack.root, inp.extends)
        pinned, _ = full_records(stack, inp.extends, plat)
        parent_pip = [p.to_dict() for p in read_lock_entries(ppath) if p.platform == plat and p.manager == "pip"]
        # The child holds every package of its parent, not only those its specs reach.
        have = {spec_name(s) for s in conda_specs}
        conda_specs = conda_specs + [r.name.normalized for r in pinned if r.name.normalized not in have]
    upd = {u.lower() for u in update}
    locked = []
    if previous is not None:
        prev_entries = [p for p in read_lock_entries(lockfile_path(stack.root, name))
                        if p.platform == plat and p.manager == "conda" and p.name.lower() not in upd]
        locked = records_from_json(lock_entries_as_json(prev_entries)) if prev_entries else []
    try:
        records = solve_conda(channels, conda_specs, plat, vpkgs, pinned=pinned, locked=locked)
    except Exception as e:
        raise _solve_failure(stack, name, plat, e, channels, conda_specs, vpkgs, pinned) from None
    records.sort(key=lambda r: r.name.normalized)
    for r in records:
        r_url = strip_credentials(r.url)
        if r_url != r.url:
            r.url = r_url
    _check_consistent(name, plat, records, vpkgs, [])
    conda_locked = [record_entry(r, plat) for r in records]

    pip_locked = []
    if pip_specs or parent_pip:
        pip_locked = _solve_pip_part(inp, parent_pip, conda_locked, previous, update, resolver)
        _check_consistent(name, plat, records, vpkgs, [(p["name"], str(p["version"])) for p in pip_locked])
        _check_no_overlap(name, plat, conda_locked, pip_locked)
    return conda_locked + pip_locked, records


def _solve_pip_part(inp: SolveInputs, parent_pip: list, conda_locked: list[dict], previous: list[dict] | None,
                    update: list[str], resolver: VcsResolver) -> list[dict]:
    name, plat = inp.layer, inp.platform
    try:
        plain, reqs = split_vcs(list(inp.pip))
        vcs = resolve_all(reqs, resolver)
    except CondastackError as e:
        raise CondastackError(f"layer {name} ({plat}): {redact(str(e))}") from None
    vcs_names = {requirement_name(v.name) for v in vcs}
    parent_vcs = [p for p in parent_pip if is_vcs_entry(p) and requirement_name(p["name"]) not in vcs_names]
    pins = [f"{p['name']}=={p['version']}" for p in parent_pip if not is_vcs_entry(p)]
    have = {requirement_name(s) for s in plain}
    specs = add_requirements(plain + [s for s in pins if requirement_name(s) not in have],
                             [r for v in vcs for r in v.requires])
    installed = {v.name: v.version for v in vcs} | {p["name"]: str(p["version"]) for p in parent_vcs}
    prev_pip = [p for p in previous if p.get("platform") == plat and p.get("manager") == "pip"
                and not is_vcs_entry(p)] if previous else []

    indexes, options = list(inp.pip_indexes), inp.pip_options
    from condastack.lock.findlinks import find_links_index  # lazy: http.server, urllib.request (~10 ms a lock)

    try:
        with find_links_index(options.find_links) as (links_index, served):
            if links_index:  # pip's --find-links adds to the indexes (to PyPI when none is named),
                # asked first: poetry takes a version from the first source that has it, and pip, on
                # a tie, the find-links file; so a site's wheel of a version the index has only as
                # an sdist (or rebuilt) is the one locked
                indexes = [links_index] + (indexes or [PYPI_SIMPLE])
            pip_locked = solve_pip(specs, conda_locked, plat, inp.virtual_packages,
                                   indexes=indexes, previous=prev_pip + [p for p in parent_pip if not is_vcs_entry(p)],
                                   update=list(update), pre=options.pre, installed=installed)
    except CondastackError as e:
        raise CondastackError(f"layer {name} ({plat}): {redact(str(e))}") from None
    for p in pip_locked:
        p["url"] = served.get(p["url"].split("#", 1)[0], p["url"])  # a local --find-links file: its own file:// URL
        p["url"] = strip_credentials(p["url"])
        _check_parent_pip(name, inp.extends, p, parent_pip)
    vcs_entries = [v.entry(plat) for v in vcs] + [dict(p, platform=plat) for p in parent_vcs]
    for p in vcs_entries:
        _check_parent_pip(name, inp.extends, p, parent_pip)
    return pip_locked + vcs_entries


def _check_consistent(name: str, plat: str, records: list, vpkgs: dict[str, str],
                      pip: list[tuple[str, str]]) -> None:
    bad = check_records(records, vpkgs, pip)
    if bad:
        raise CondastackError(describe(name, plat, bad) + " Nothing was written.")


def _check_no_overlap(name: str, plat: str, conda_locked: list, pip_locked: list) -> None:
    """One package in both the conda and the pip section of one platform is a lock error."""

    provided = {p: c["name"] for c in conda_locked for p in pypi_names_for_conda(c["name"])}
    both = [f"{p['name']} (pip {p['version']}, conda {provided[canonical(p['name'])]})" for p in pip_locked
            if canonical(p["name"]) in provided]
    if both:
        raise CondastackError(f"layer {name} ({plat}): packages in both the conda and the pip section: "
                              f"{', '.join(both)}. Nothing was written.")


def requirement_name(spec: str) -> str:
    """The canonical project name of a pip requirement string (`Foo_Bar[x]~=1.0` -> `foo-bar`)."""
    from packaging.requirements import InvalidRequirement, Requirement  # lazy: ~12 ms a lock; pip specs only

    try:
        return canonical(Requirement(spec).name)
    except InvalidRequirement:  # e.g. a bare URL or a path: conda-lock reports it; compare it whole
        return spec.strip().lower()


def _check_parent_pip(name: str, parent: str | None, p, parent_pip: list) -> None:  # noqa: ANN001
    for q in parent_pip:
        if q["name"] == p["name"] and str(q["version"]) != str(p["version"]):
            raise LockConflict(layer=name, parent=parent, package=p["name"], version=str(p["version"]),
                               pinned=str(q["version"]))


# --------------------------------------------------------------------------- diff


# --------------------------------------------------------------------------- conda-lock's own pipeline


