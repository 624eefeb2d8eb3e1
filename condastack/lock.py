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

from . import __version__, layout
from .errors import CondastackError, LockConflict, LockStale
from .fsutil import TMP_MARK, atomic_write_text, clean_stale_temporaries, file_lock, remove_path
from .solve import (
    explain_solver_error,
    parse_lockfile,
    read_lock_records,
    records_to_locked,
    render_explicit,
    solve_conda,
    solve_pip,
    spec_name,
    split_depend,
    write_lockfile,
)
from .layout import lock_dir, lockfile_path
from .stack import Stack, redact, strip_credentials

LOCK_FORMAT = "condastack-lock-1"
Progress = Callable[[str], None]


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
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(Path(path).read_text(), Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CondastackError(f"{path}: not a readable conda-lock lockfile ({type(e).__name__}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("package"), list) or \
            not isinstance(data.get("metadata"), dict):
        raise CondastackError(f"{path}: not a conda-lock lockfile (no 'package' list or 'metadata').")
    return data


def _parent_pins(stack: Stack, layer: str, platform: str) -> list[str]:
    parent = stack.layer(layer).extends
    if parent is None:
        return []
    path = lockfile_path(stack.root, parent)
    if not path.is_file():
        return []
    return sorted(f"{p.get('manager')}:{p.get('name')}:{p.get('version')}:"
                  f"{(p.get('hash') or {}).get('sha256') or (p.get('hash') or {}).get('md5')}"
                  for p in read_raw(path)["package"] if p.get("platform") == platform)


def input_hash(stack: Stack, layer: str, platform: str) -> str:
    """The hash of every input of one layer's solve on one platform."""
    conda, pip = stack.specs_for(layer, platform)
    data = {
        "format": LOCK_FORMAT,
        "conda": conda,
        "pip": pip,
        "channels": stack.channels_for(layer),
        "virtual-packages": stack.virtual_packages_for(platform),
        "pip-index": stack.pip_indexes_for(layer),
        "parent": _parent_pins(stack, layer, platform),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def stale_layers(stack: Stack, layers: list[str] | None = None) -> list[tuple[str, str]]:
    """Layers whose lock is missing or no longer matches their specs: (layer, why)."""
    out: list[tuple[str, str]] = []
    for name in stack.order(layers):
        path = lockfile_path(stack.root, name)
        if not path.is_file():
            out.append((name, f"{path.name} is missing"))
            continue
        hashes = read_raw(path)["metadata"].get("content_hash") or {}
        for plat in stack.platforms:
            if hashes.get(plat) != input_hash(stack, name, plat):
                out.append((name, f"{plat} inputs changed since {path.name} was written"))
                break
    return out


def check_fresh(stack: Stack, layer: str, platform: str) -> None:
    """Refuse to use `layer`'s lock for `platform` when the layer's inputs changed since it was written.

    Cheap enough for every build: spec parsing is cached by file content, so this
    reads YAML and hashes, and never imports conda-lock.
    """
    path = lockfile_path(stack.root, layer)
    plats = [platform] if platform in stack.platforms else list(stack.platforms)
    meta = read_raw(path)["metadata"]
    if "condastack.layer" not in (meta.get("custom_metadata") or {}):
        return  # written by conda-lock's own pipeline (--solver conda…): its hashes are not ours
    hashes = meta.get("content_hash") or {}
    for plat in plats:
        if hashes.get(plat) != input_hash(stack, layer, plat):
            raise LockStale(layer, path, f"the {plat} inputs (specs, channels, virtual packages or parent "
                                         "lock) changed")


# --------------------------------------------------------------------------- dry run


def dry_run(stack: Stack, layers: list[str] | None = None) -> list[dict[str, object]]:
    """What `lock` would solve, per layer and platform, and the channels it needs."""
    out = []
    for name in stack.order(layers):
        path = lockfile_path(stack.root, name)
        hashes = (read_raw(path)["metadata"].get("content_hash") or {}) if path.is_file() else None
        for plat in stack.platforms:
            conda, pip = stack.specs_for(name, plat)
            up_to_date = hashes is not None and hashes.get(plat) == input_hash(stack, name, plat)
            out.append({
                "layer": name, "platform": plat, "extends": stack.layer(name).extends,
                "channels": [redact(c) for c in stack.channels_for(name)],
                "pip-index": [redact(c) for c in stack.pip_indexes_for(name)] if pip else [],
                "virtual-packages": stack.virtual_packages_for(plat),
                "conda": conda, "pip": pip,
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
        return [_lock_layer(stack, name, platforms or list(stack.platforms), update or [], progress)
                for name in stack.order(layers)]


def _lock_layer(stack: Stack, name: str, platforms: list[str], update: list[str],
                progress: Progress | None) -> LayerLock:
    path = lockfile_path(stack.root, name)
    old_hash = dict(read_raw(path)["metadata"].get("content_hash") or {}) if path.is_file() else {}
    result = LayerLock(layer=name, path=path)
    fresh = {p: input_hash(stack, name, p) for p in stack.platforms}
    if not update and old_hash and all(old_hash.get(p) == fresh[p] for p in stack.platforms):
        # Nothing changed: no solve, no write; only re-derive files a user deleted.
        result.unchanged = list(stack.platforms)
        raw = read_raw(path)["package"]
        for plat in stack.platforms:
            result.counts[plat] = {m: sum(1 for p in raw if p.get("platform") == plat and p.get("manager") == m)
                                   for m in ("conda", "pip")}
        if not all(explicit_path(stack, name, p).is_file() for p in stack.platforms):
            _write_derived(stack, name, path)
        return result
    previous = parse_lockfile(path) if path.is_file() else None
    new_hash: dict[str, str] = {}
    packages = []
    wants_update = bool(update)  # --update re-solves; everything not named stays preferred
    for plat in stack.platforms:
        h = fresh[plat]
        new_hash[plat] = h
        prev_pkgs = [p for p in previous.package if p.platform == plat] if previous else []
        keep = plat not in platforms or (old_hash.get(plat) == h and not wants_update)
        if keep and prev_pkgs:
            packages += prev_pkgs
            new_hash[plat] = old_hash.get(plat, h)
            result.unchanged.append(plat)
        else:
            if progress:
                progress(f"solving {name} for {plat}")
            packages += _solve_platform(stack, name, plat, previous, update)
            result.solved.append(plat)
        plat_pkgs = [p for p in packages if p.platform == plat]
        result.counts[plat] = {"conda": sum(p.manager == "conda" for p in plat_pkgs),
                               "pip": sum(p.manager == "pip" for p in plat_pkgs)}
    if result.solved:
        sources = [str(Path("..") / stack.layer(l.name).file.relative_to(stack.root))
                   if stack.layer(l.name).file.is_relative_to(stack.root) else str(l.file)
                   for l in stack.chain(name)]
        custom = {"condastack.layer": name, "condastack.extends": stack.layer(name).extends or "",
                  "condastack.stack": stack.name, "condastack.version": __version__}
        # conda-lock writes the file's own name into its header, so the temporary keeps the final
        # name inside a temporary folder (cleaned by the next run if this one is killed).
        tmpdir = path.parent / f"{TMP_MARK}{path.name}.{os.getpid()}.new"
        tmpdir.mkdir(exist_ok=True)
        try:
            write_lockfile(tmpdir / path.name, packages,
                           channels=[strip_credentials(c) for c in stack.channels_for(name)],
                           platforms=list(stack.platforms), sources=sources, content_hash=new_hash, custom=custom)
            text = (tmpdir / path.name).read_text()
            _write_derived(stack, name, tmpdir / path.name)
        finally:
            remove_path(tmpdir)
        atomic_write_text(path, text)
    else:
        _write_derived(stack, name, path)
    return result


def _write_derived(stack: Stack, name: str, lockfile: Path) -> None:
    """Write the @EXPLICIT and pip requirement files that follow from a lockfile.

    They are rewritten only when their content differs, so a no-op lock touches nothing.
    """
    lf = parse_lockfile(lockfile)
    for plat in stack.platforms:
        conda = [p for p in lf.package if p.platform == plat and p.manager == "conda"]
        if not conda:
            continue
        _write_if_changed(explicit_path(stack, name, plat), render_explicit(lf, plat))
        pip = sorted((p for p in lf.package if p.platform == plat and p.manager == "pip"), key=lambda p: p.name)
        pip_path = pip_txt_path(stack, name, plat)
        if pip:
            lines = [f"# pip packages of layer {name} ({plat}), locked by condastack\n"]
            lines += [f"{p.name}=={p.version} --hash=sha256:{p.hash.sha256}\n" for p in pip]
            _write_if_changed(pip_path, "".join(lines))
        elif pip_path.exists():
            pip_path.unlink()


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def _solve_platform(stack: Stack, name: str, plat: str, previous, update: list[str]) -> list:  # noqa: ANN001
    layer = stack.layer(name)
    channels = stack.channels_for(name)
    vpkgs = stack.virtual_packages_for(plat)
    conda_specs, pip_specs = stack.specs_for(name, plat)
    if not channels:
        raise CondastackError(f"{layer.file}: layer '{name}' lists no channels (and inherits none).")

    pinned = []
    parent_pip = []
    if layer.extends:
        ppath = lockfile_path(stack.root, layer.extends)
        pinned = read_lock_records(ppath, plat)
        parent_pip = [p for p in parse_lockfile(ppath).package if p.platform == plat and p.manager == "pip"]
        # The child holds every package of its parent, not only those its specs reach.
        have = {spec_name(s) for s in conda_specs}
        conda_specs = conda_specs + [r.name.normalized for r in pinned if r.name.normalized not in have]
    upd = {u.lower() for u in update}
    locked = [r for r in read_lock_records(lockfile_path(stack.root, name), plat)
              if r.name.normalized not in upd] if previous else []
    try:
        records = solve_conda(channels, conda_specs, plat, vpkgs, pinned=pinned, locked=locked)
    except Exception as e:
        raise _solve_failure(stack, name, plat, e, channels, conda_specs, vpkgs, pinned) from None
    records.sort(key=lambda r: r.name.normalized)
    for r in records:
        r_url = strip_credentials(r.url)
        if r_url != r.url:
            r.url = r_url
    conda_locked = records_to_locked(records, plat)

    pip_locked = []
    if pip_specs or parent_pip:
        pins = [f"{p.name}=={p.version}" for p in parent_pip]
        have = {requirement_name(s) for s in pip_specs}
        specs = pip_specs + [s for s in pins if requirement_name(s) not in have]
        prev_pip = [p for p in previous.package if p.platform == plat and p.manager == "pip"] if previous else []
        try:
            pip_locked = solve_pip(specs, conda_locked, plat, vpkgs, indexes=stack.pip_indexes_for(name),
                                   previous=prev_pip + parent_pip, update=list(update))
        except CondastackError as e:
            raise CondastackError(f"layer {name} ({plat}): {e}") from None
        for p in pip_locked:
            p.url = strip_credentials(p.url)
            _check_parent_pip(name, layer.extends, p, parent_pip)
    return conda_locked + pip_locked


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
        if q.name == p.name and q.version != p.version:
            raise LockConflict(layer=name, parent=parent, package=p.name, version=p.version, pinned=q.version)


def _solve_failure(stack: Stack, name: str, plat: str, err: Exception, channels: list[str], specs: list[str],
                   vpkgs: dict[str, str], pinned: list) -> CondastackError:
    """Turn a solver failure into one paragraph; name the layers when a parent pin is the cause."""
    text = str(err)
    if "FetchRepoData" in type(err).__name__ or "fetch" in text.lower() and "repodata" in text.lower():
        return CondastackError(
            f"layer {name} ({plat}): cannot read the channel(s) {', '.join(redact(c) for c in channels)}: "
            f"{redact(text.strip().splitlines()[0] if text.strip() else type(err).__name__)}"
        )
    if pinned:
        conflict = _explain_pin_conflict(stack, name, plat, channels, specs, vpkgs, pinned)
        if conflict:
            return CondastackError(conflict + " The existing lockfiles were left unchanged.")
    missing = [s for s in specs if f"No candidates were found for {spec_name(s)}" in text
               or f"no candidates were found for {spec_name(s)}" in text.lower()]
    detail = explain_solver_error(err)
    head = f"layer {name} ({plat}): the specs cannot be satisfied"
    if missing:
        # "hello >=9" is not a missing package but a version the channels do not have
        what = [f"package {spec_name(m)} not found" if m.strip() == spec_name(m)
                else f"no version of {spec_name(m)} matching '{m.strip()}' found" for m in missing]
        head = f"layer {name} ({plat}): {'; '.join(what)} in {', '.join(redact(c) for c in channels)} for {plat}"
    return CondastackError(f"{head}.\n{redact(detail)}\nThe existing lockfiles were left unchanged.")


def _explain_pin_conflict(stack: Stack, name: str, plat: str, channels: list[str], specs: list[str],
                          vpkgs: dict[str, str], pinned: list) -> str | None:
    import rattler

    pins = {r.name.normalized: r for r in pinned}
    own = [s for s in specs if spec_name(s) not in pins or s != spec_name(s)]
    # A spec of the layer itself that the pin cannot meet.
    for s in own:
        r = pins.get(spec_name(s))
        if r is not None and not rattler.MatchSpec(s).matches(r):
            return (f"layer {name}: it asks for {s}, but layer {_pin_owner(stack, name, plat, r)} pins "
                    f"{r.name.normalized} {r.version}.")
    try:
        free = solve_conda(channels, own, plat, vpkgs)
    except Exception:
        return None
    for rec in free:
        for dep in rec.depends:
            dname, dspec = split_depend(dep)
            r = pins.get(dname)
            if r is not None and not rattler.MatchSpec(dep).matches(r):
                return (f"layer {name}: {rec.name.normalized} {rec.version} needs {dname} {dspec}, but layer "
                        f"{_pin_owner(stack, name, plat, r)} pins {dname} {r.version}.")
    return None


def _pin_owner(stack: Stack, name: str, plat: str, rec) -> str:  # noqa: ANN001
    """The highest ancestor whose lock holds this exact record."""
    for layer in stack.chain(name)[:-1]:
        for r in read_lock_records(lockfile_path(stack.root, layer.name), plat):
            if r.name.normalized == rec.name.normalized and str(r.version) == str(rec.version):
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
                vp.write_text(yaml.safe_dump({"subdirs": {
                    p: {"packages": stack.virtual_packages_for(p)} for p in stack.platforms}}))
                target = Path(tmp) / final.name
                cmd = [exe, "lock", f"--{'micromamba' if solver == 'micromamba' else 'no-micromamba'}",
                       "--conda", binary, "--virtual-package-spec", str(vp), "--lockfile", str(target),
                       "--pypi_to_conda_lookup_file", str(Path(__file__).parent / "data" / "pypi-mapping.yml")]
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
                _write_derived(stack, name, final)
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
