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
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from condastack.core import layout
from condastack.core.condalock import parse_lockfile
from condastack.core.credentials import redact, strip_credentials
from condastack.core.errors import CondastackError, LockConflict, LockStale
from condastack.core.fs import (
    TMP_MARK,
    atomic_write_text,
    clean_stale_temporaries,
    file_lock,
)
from condastack.core.layout import lock_dir, lockfile_path, records_sidecar_path
from condastack.core.names import mapping_url
from condastack.core.version import __version__
from condastack.lock.conda_solve import (
    explain_solver_error,
    fetch_records,
    gateway_session,
    query_records,
    record_entry,
    records_from_json,
    records_to_json,
    solve_conda,
    spec_name,
    split_depend,
)
from condastack.lock.consistency import check_records, describe
from condastack.lock.lockfile import (
    explicit_text,
    lock_entries_as_json,
    read_lock_document,
    read_lock_entries,
    read_records_sidecar,
    remember_lockfile,
    render_lockfile,
)
from condastack.lock.pypi_solve import solve_pip
from condastack.spec.envfile import PYPI_SIMPLE, PipOptions
from condastack.spec.stack import Stack

LOCK_FORMAT = "condastack-lock-1"
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


def read_raw(path: Path) -> dict:
    """A lockfile as plain YAML: the fast path for hashes and pins (conda-lock's import is slow)."""
    return read_lock_document(path)


def lock_summary(path: Path) -> dict:
    """What no-op locks and hashes need from a lockfile: content_hash, counts and pins per platform.

    The records file beside the lock keeps this summary with the sha256 of the
    lockfile it describes; while that matches, the lockfile is not parsed at all.
    """
    data = Path(path).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    try:
        summary = json.loads(records_sidecar_path(path).read_bytes()).get("lock") or {}
        if summary.get("sha256") == sha:
            return summary
    except (OSError, ValueError, AttributeError):
        pass
    return _summarize(read_raw(path), sha)


def _summarize(doc: dict, sha: str) -> dict:
    pkgs = doc["package"]
    plats = sorted({str(p.get("platform")) for p in pkgs} | set(doc["metadata"].get("platforms") or []))
    return {
        "sha256": sha,
        "content_hash": dict(doc["metadata"].get("content_hash") or {}),
        "counts": {pl: {m: sum(1 for p in pkgs if p.get("platform") == pl and p.get("manager") == m)
                        for m in ("conda", "pip")} for pl in plats},
        "pins": {pl: sorted(f"{p.get('manager')}:{p.get('name')}:{p.get('version')}:"
                            f"{(p.get('hash') or {}).get('sha256') or (p.get('hash') or {}).get('md5')}"
                            for p in pkgs if p.get("platform") == pl) for pl in plats},
    }


def _parent_pins(stack: Stack, layer: str, platform: str) -> list[str]:
    parent = stack.layer(layer).extends
    if parent is None:
        return []
    path = lockfile_path(stack.root, parent)
    if not path.is_file():
        return []
    return list(lock_summary(path)["pins"].get(platform, []))


def input_hash(stack: Stack, layer: str, platform: str) -> str:
    """The hash of every input of one layer's solve on one platform."""
    conda, pip = stack.specs_for(layer, platform)
    data = {
        "format": LOCK_FORMAT,
        "conda": conda,
        "pip": pip,
        "channels": stack.channels_for(layer),
        "virtual-packages": stack.effective_virtual_packages_for(platform),
        "pip-index": [strip_credentials(u) for u in stack.pip_indexes_for(layer)],
        "parent": _parent_pins(stack, layer, platform),
    }
    # environment.yml's variables, pip option lines and -r/-c file contents (a rotated token is no change);
    # only when present, so locks of files without them keep their hash.
    extra = {"variables": stack.variables_for(layer),
             "pip-options": stack.pip_options_for(layer).to_json(strip_credentials),
             "includes": stack.includes_for(layer)}
    data.update({k: v for k, v in extra.items() if v and v != PipOptions().to_json()})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


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

    Read from the one metadata line, so a no-op build does not parse a 10 MB lockfile again.
    """
    import re

    import yaml

    from condastack.env.prefix import ENV_VAR_NAME

    with open(lockfile, encoding="utf-8", errors="replace") as f:
        line = next((l for l in f if l.lstrip().startswith(f"{VARIABLES_KEY}:")), None)
    if line is None:
        return {}
    try:
        data = json.loads(yaml.safe_load(line.strip())[VARIABLES_KEY])
    except (ValueError, TypeError, KeyError, yaml.YAMLError):
        data = None
    if not isinstance(data, dict) or not all(isinstance(k, str) and ENV_VAR_NAME.match(k) and isinstance(v, str)
                                             and re.fullmatch(r"[^\x00]*", v) for k, v in data.items()):
        raise CondastackError(f"{lockfile}: its {VARIABLES_KEY} metadata is not a map of variable names "
                              "to strings. Re-create it with `condastack lock`.")
    return data


def _inconsistencies(stack: Stack, name: str) -> list[str]:
    """The consistency check of a written lock, per platform: a paragraph per failing platform."""
    out = []
    for plat in stack.platforms:
        records, _ = full_records(stack, name, plat)
        pip = [(str(p["name"]), str(p["version"])) for p in read_lock_entries(lockfile_path(stack.root, name))
               if p.get("platform") == plat and p.get("manager") == "pip"]
        bad = check_records(records, stack.effective_virtual_packages_for(plat), pip)
        if bad:
            out.append(describe(name, plat, bad))
    return out


def full_records(stack: Stack, name: str, plat: str) -> tuple[list, bool]:
    """The full records of a layer's lock on one platform, and whether they came from the channels.

    The records file beside the lock is used where it matches the lock entry by
    sha256; anything it lacks is fetched from the layer's channels by URL.
    """
    entries = [p for p in read_lock_entries(lockfile_path(stack.root, name))
               if p.get("platform") == plat and p.get("manager") == "conda"]
    kept = {str(j.get("sha256")): j for j in read_records_sidecar(records_path(stack.root, name), plat)}
    have = [dict(kept[(p.get("hash") or {}).get("sha256")], url=p["url"]) for p in entries
            if (p.get("hash") or {}).get("sha256") in kept]
    lacking = [p for p in entries if (p.get("hash") or {}).get("sha256") not in kept]
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
    out = []
    for name in stack.order(layers):
        path = lockfile_path(stack.root, name)
        hashes = lock_summary(path)["content_hash"] if path.is_file() else None
        for plat in stack.platforms:
            conda, pip = stack.specs_for(name, plat)
            up_to_date = hashes is not None and hashes.get(plat) == input_hash(stack, name, plat)
            out.append({
                "layer": name, "platform": plat, "extends": stack.layer(name).extends,
                "channels": [redact(c) for c in stack.channels_for(name)],
                "pip-index": [redact(c) for c in stack.pip_indexes_for(name)] if pip else [],
                "virtual-packages": stack.effective_virtual_packages_for(plat),
                "conda": conda, "pip": pip,
                "pip-options": stack.pip_options_for(name).to_json(redact),
                "variables": stack.variables_for(name),
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
    fresh = {p: input_hash(stack, name, p) for p in stack.platforms}
    if not update and old_hash and all(old_hash.get(p) == fresh[p] for p in stack.platforms):
        # Nothing changed: no solve, no write; only re-derive files a user deleted.
        result.unchanged = list(stack.platforms)
        counts = lock_summary(path)["counts"]
        for plat in stack.platforms:
            result.counts[plat] = dict(counts.get(plat) or {"conda": 0, "pip": 0})
        if not all(explicit_path(stack, name, p).is_file() for p in stack.platforms):
            _write_derived(stack, name, read_raw(path))
        return result
    previous = read_lock_entries(path) if path.is_file() else None
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
            solved, records = _solve_platform(stack, name, plat, previous, update)
            packages += solved
            full[plat] = records_to_json(records)
            result.solved.append(plat)
        plat_pkgs = [p for p in packages if p["platform"] == plat]
        result.counts[plat] = {m: sum(p["manager"] == m for p in plat_pkgs) for m in ("conda", "pip")}
    if result.solved:
        _write_lock(stack, name, path, packages, new_hash, full)
    else:
        _write_derived(stack, name, read_raw(path))
    return result


def _check_update_names(stack: Stack, names: list[str], update: list[str]) -> None:
    """`--update PKG` for a package that none of the locks holds is a mistake, not a no-op."""
    held: set[str] = set()
    paths = [lockfile_path(stack.root, n) for n in names]
    for lp in paths:
        if lp.is_file():
            held |= {str(p.get("name", "")).lower() for p in read_lock_entries(lp)}
    unknown = [u for u in update if u.lower() not in held]
    if unknown and any(lp.is_file() for lp in paths):
        raise CondastackError(f"--update names {', '.join(unknown)}, which no lock of layer(s) {', '.join(names)} "
                              f"holds. Check the spelling, or add it to a layer file first.")


def _write_lock(stack: Stack, name: str, path: Path, packages: list, new_hash: dict[str, str],
                full: dict[str, list[dict]]) -> None:
    sources = [str(Path("..") / stack.layer(l.name).file.relative_to(stack.root))
               if stack.layer(l.name).file.is_relative_to(stack.root) else str(l.file)
               for l in stack.chain(name)]
    custom = {"condastack.layer": name, "condastack.extends": stack.layer(name).extends or "",
              "condastack.stack": stack.name, "condastack.version": __version__,
              VARIABLES_KEY: json.dumps(stack.variables_for(name), sort_keys=True)}
    for plat in stack.platforms:
        custom[f"condastack.virtual-packages.{plat}"] = json.dumps(stack.effective_virtual_packages_for(plat),
                                                                   sort_keys=True)
    text, doc = render_lockfile(path, packages, channels=[strip_credentials(c) for c in stack.channels_for(name)],
                                platforms=list(stack.platforms), sources=sources, content_hash=new_hash,
                                custom=custom)
    # The lockfile is written last: while it is the old one, the next run finds its inputs changed and
    # rewrites the whole set. The records (and the summary) name the lock they describe by its sha256,
    # so records that got ahead of their lockfile are ignored (records then come from the channels).
    summary = _summarize(doc, hashlib.sha256(text.encode()).hexdigest())
    atomic_write_text(records_path(stack.root, name),
                      json.dumps({"lock": summary, "platforms": full}, sort_keys=True) + "\n")
    _write_derived(stack, name, doc)
    atomic_write_text(path, text)
    remember_lockfile(path, doc)


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
                      for p in pip]
            _write_if_changed(pip_path, "".join(lines))
        elif pip_path.exists():
            pip_path.unlink()


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def _solve_platform(stack: Stack, name: str, plat: str, previous: list[dict] | None,
                    update: list[str]) -> tuple[list[dict], list]:
    """Solve one layer on one platform; returns (conda-lock entries, full conda records)."""
    layer = stack.layer(name)
    channels = stack.channels_for(name)
    vpkgs = stack.effective_virtual_packages_for(plat)
    conda_specs, pip_specs = stack.specs_for(name, plat)
    if not channels:
        raise CondastackError(f"{layer.file}: layer '{name}' lists no channels (and inherits none).")

    pinned: list = []
    parent_pip = []
    if layer.extends:
        ppath = lockfile_path(stack.root, layer.extends)
        pinned, _ = full_records(stack, layer.extends, plat)
        parent_pip = [p for p in read_lock_entries(ppath) if p.get("platform") == plat and p.get("manager") == "pip"]
        # The child holds every package of its parent, not only those its specs reach.
        have = {spec_name(s) for s in conda_specs}
        conda_specs = conda_specs + [r.name.normalized for r in pinned if r.name.normalized not in have]
    upd = {u.lower() for u in update}
    locked = []
    if previous is not None:
        prev_entries = [p for p in read_lock_entries(lockfile_path(stack.root, name))
                        if p.get("platform") == plat and p.get("manager") == "conda"
                        and str(p.get("name")).lower() not in upd]
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
        pip_locked = _solve_pip_part(stack, name, plat, pip_specs, parent_pip, conda_locked, previous, update)
        _check_consistent(name, plat, records, vpkgs, [(p["name"], str(p["version"])) for p in pip_locked])
        _check_no_overlap(name, plat, conda_locked, pip_locked)
    return conda_locked + pip_locked, records


def _solve_pip_part(stack: Stack, name: str, plat: str, pip_specs: list[str], parent_pip: list,
                    conda_locked: list[dict], previous: list[dict] | None, update: list[str]) -> list[dict]:
    layer = stack.layer(name)
    pins = [f"{p['name']}=={p['version']}" for p in parent_pip]
    have = {requirement_name(s) for s in pip_specs}
    specs = pip_specs + [s for s in pins if requirement_name(s) not in have]
    prev_pip = [p for p in previous if p.get("platform") == plat and p.get("manager") == "pip"] if previous else []
    from condastack.lock.findlinks import find_links_index

    indexes, options = stack.pip_indexes_for(name), stack.pip_options_for(name)
    try:
        with find_links_index(options.find_links) as (links_index, served):
            if links_index:  # pip's --find-links adds to the indexes (to PyPI when none is named),
                # asked first: poetry takes a version from the first source that has it, and pip, on
                # a tie, the find-links file; so a site's wheel of a version the index has only as
                # an sdist (or rebuilt) is the one locked
                indexes = [links_index] + (indexes or [PYPI_SIMPLE])
            pip_locked = solve_pip(specs, conda_locked, plat, stack.effective_virtual_packages_for(plat),
                                   indexes=indexes, previous=prev_pip + parent_pip, update=list(update),
                                   pre=options.pre)
    except CondastackError as e:
        raise CondastackError(f"layer {name} ({plat}): {redact(str(e))}") from None
    for p in pip_locked:
        p["url"] = served.get(p["url"].split("#", 1)[0], p["url"])  # a local --find-links file: its own file:// URL
        p["url"] = strip_credentials(p["url"])
        _check_parent_pip(name, layer.extends, p, parent_pip)
    return pip_locked


def _check_consistent(name: str, plat: str, records: list, vpkgs: dict[str, str],
                      pip: list[tuple[str, str]]) -> None:
    bad = check_records(records, vpkgs, pip)
    if bad:
        raise CondastackError(describe(name, plat, bad) + " Nothing was written.")


def _check_no_overlap(name: str, plat: str, conda_locked: list, pip_locked: list) -> None:
    """One package in both the conda and the pip section of one platform is a lock error."""
    from condastack.core.names import canonical, pypi_names_for_conda

    provided = {p: c["name"] for c in conda_locked for p in pypi_names_for_conda(c["name"])}
    both = [f"{p['name']} (pip {p['version']}, conda {provided[canonical(p['name'])]})" for p in pip_locked
            if canonical(p["name"]) in provided]
    if both:
        raise CondastackError(f"layer {name} ({plat}): packages in both the conda and the pip section: "
                              f"{', '.join(both)}. Nothing was written.")


def requirement_name(spec: str) -> str:
    """The canonical project name of a pip requirement string (`Foo_Bar[x]~=1.0` -> `foo-bar`)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        return canonicalize_name(Requirement(spec).name)
    except InvalidRequirement:  # e.g. a bare URL or a path: conda-lock reports it; compare it whole
        return spec.strip().lower()


def _check_parent_pip(name: str, parent: str | None, p, parent_pip: list) -> None:  # noqa: ANN001
    for q in parent_pip:
        if q["name"] == p["name"] and str(q["version"]) != str(p["version"]):
            raise LockConflict(layer=name, parent=parent, package=p["name"], version=str(p["version"]),
                               pinned=str(q["version"]))


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
    import rattler

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
    import rattler

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
    import rattler

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
    import rattler

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
            if p.get("platform") == plat and p.get("name") == rec.name.normalized \
                    and str(p.get("version")) == str(rec.version):
                return layer.name
    return stack.layer(name).extends or "?"


# --------------------------------------------------------------------------- diff


@dataclass
class Change:
    name: str
    old: str | None  # "version build" or None when added
    new: str | None  # None when removed


def diff_locks(old: Path, new: Path) -> dict[str, list[Change]]:
    """Per platform: packages added, removed and changed (version, build) between two lockfiles."""
    return _diff(parse_lockfile(old), parse_lockfile(new))


def diff_against_git(path: Path, rev: str) -> dict[str, list[Change]]:
    path = Path(path).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True,
                             text=True, check=True).stdout.strip()
        rel = path.relative_to(top)
        text = subprocess.run(["git", "show", f"{rev}:{rel.as_posix()}"], cwd=top, capture_output=True,
                              text=True, check=True).stdout
    except (subprocess.CalledProcessError, ValueError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise CondastackError(f"{path}: cannot read it at git revision {rev}: {detail.strip()}") from None
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=layout.LOCKFILE_SUFFIX, delete=False) as f:
        f.write(text)
    try:
        return _diff(parse_lockfile(Path(f.name)), parse_lockfile(path))
    finally:
        Path(f.name).unlink()


def _diff(a, b) -> dict[str, list[Change]]:  # noqa: ANN001
    def index(lf) -> dict[str, dict[str, str]]:  # noqa: ANN001
        out: dict[str, dict[str, str]] = {}
        for p in lf.package:
            label = f"{p.version} {p.build}" if p.manager == "conda" else f"{p.version} (pip)"
            out.setdefault(p.platform, {})[f"{p.name}" if p.manager == "conda" else f"pip:{p.name}"] = label
        return out

    ia, ib = index(a), index(b)
    result: dict[str, list[Change]] = {}
    for plat in sorted(set(ia) | set(ib)):
        pa, pb = ia.get(plat, {}), ib.get(plat, {})
        changes = [Change(n, pa.get(n), pb.get(n)) for n in sorted(set(pa) | set(pb)) if pa.get(n) != pb.get(n)]
        result[plat] = changes
    return result


# --------------------------------------------------------------------------- conda-lock's own pipeline


def lock_with_conda_lock(stack: Stack, layers: list[str] | None, solver: str, binary: str) -> list[Path]:
    """Run conda-lock's own pipeline (conda/mamba/micromamba as solver) for each layer.

    conda-lock cannot pin a parent's exact builds, so a child is solved from
    the union of its chain's files and then checked: any parent package whose
    version or build moved is an error, and the child's lockfile is not written.
    """
    import shutil
    import sys
    import tempfile

    import yaml

    exe = shutil.which("conda-lock") or str(Path(sys.executable).parent / "conda-lock")
    out: list[Path] = []
    ldir = lock_dir(stack.root)
    ldir.mkdir(parents=True, exist_ok=True)
    with file_lock(layout.lock_mutex(stack.root)):
        for name in stack.order(layers):
            final = lockfile_path(stack.root, name)
            with tempfile.TemporaryDirectory(dir=ldir, prefix=f"{TMP_MARK}conda-lock.{os.getpid()}.") as tmp:
                vp = Path(tmp) / "virtual-packages.yml"
                # conda-lock's spec writes a build as "1 x86_64" where condastack writes 1=x86_64
                vp.write_text(yaml.safe_dump({"subdirs": {p: {"packages": {
                    k: v.replace("=", " ") for k, v in stack.effective_virtual_packages_for(p).items()}}
                    for p in stack.platforms}}))
                target = Path(tmp) / final.name
                cmd = [exe, "lock", f"--{'micromamba' if solver == 'micromamba' else 'no-micromamba'}",
                       "--conda", binary, "--virtual-package-spec", str(vp), "--lockfile", str(target),
                       "--pypi_to_conda_lookup_file", mapping_url()]
                for layer in stack.chain(name):
                    cmd += ["-f", str(layer.file)]
                for p in stack.platforms:
                    cmd += ["-p", p]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = " ".join(redact(proc.stderr).strip().splitlines()[-6:])
                    raise CondastackError(f"layer {name}: conda-lock ({solver}) failed: {tail}")
                parent = stack.layer(name).extends
                if parent:
                    _check_superset(name, parent, lockfile_path(stack.root, parent), target)
                atomic_write_text(final, target.read_text())
                _write_derived(stack, name, read_raw(final))
            out.append(final)
    return out


def _check_superset(name: str, parent: str, parent_lock: Path, child_lock: Path) -> None:
    have = {(p["platform"], p["name"]): (p["version"], p.get("build")) for p in read_raw(child_lock)["package"]}
    for p in read_raw(parent_lock)["package"]:
        got = have.get((p["platform"], p["name"]))
        if got != (p["version"], p.get("build")):
            now = f"{got[0]} {got[1]}" if got else "nothing"
            raise CondastackError(f"layer {name}: conda-lock resolved {p['name']} to {now}, but layer {parent} "
                                  f"pins {p['name']} {p['version']} {p.get('build')} ({p['platform']}). "
                                  "Use the default solver, which keeps parent pins exactly.")
