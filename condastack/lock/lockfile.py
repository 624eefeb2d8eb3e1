"""The one seam between conda-lock (formats) and py-rattler (solving, installing).

conda-lock is the authority on what one conda match spec or pip requirement
means (envfile.py reads the environment.yml around them through here) and on
the lockfile models; py-rattler does the solving. Everything that converts
between the two lives here and nowhere else.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import yaml

from condastack.core.condalock import conda_lock_write
from condastack.core.errors import CondastackError
from condastack.core.fs import TMP_MARK, remove_path
from condastack.core.layout import records_sidecar_path
from condastack.lock.conda_solve import _PLAIN_CHANNEL
from condastack.lock.entry import ENTRY_KEYS, LockEntry, RecordsFile, check_lock_document

# --------------------------------------------------------------------------- conda-lock's dependency model


# --------------------------------------------------------------------------- conda part (py-rattler)


def read_lock_document(path: Path, *, strings: bool = True) -> dict:
    """A conda-lock file as plain data, every field checked (see lock/entry.py), entries normalised.

    py-rattler's LockFile reader rejects the pip dependency values conda-lock
    itself writes ('*' or a bare version), so it is never on a read path.
    Every scalar is read as the text it is (a hash of all digits is not a number,
    `1.10` is not `1.1`); `strings` is kept for callers and has no effect.
    One lock run reads a parent's lock several times, so a parse is reused while the file is unchanged.
    """
    return _read_checked(Path(path))[0]


def read_lock_entries(path: Path, *, strings: bool = True) -> list[LockEntry]:
    """The `package` entries of a conda-lock file, typed and checked (see read_lock_document)."""
    return list(_read_checked(Path(path))[1])


def _read_checked(path: Path) -> tuple[dict, tuple[LockEntry, ...]]:
    try:
        key = _lock_doc_key(path)
    except FileNotFoundError:
        raise CondastackError(f"lockfile not found: {path}.") from None
    except OSError as e:
        raise CondastackError(f"{path}: cannot read the lockfile: {e.strerror}.") from None
    if key not in _LOCK_DOCS:
        if len(_LOCK_DOCS) >= 16:  # a run touches a few files; old versions are dropped
            _LOCK_DOCS.pop(next(iter(_LOCK_DOCS)))
        _LOCK_DOCS[key] = _checked(path, _load_lock_document(path))
    return _LOCK_DOCS[key]  # shared: callers read it and never change it


_LOCK_DOCS: dict[tuple, tuple[dict, tuple[LockEntry, ...]]] = {}


def _lock_doc_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, st.st_ino)


def _checked(path: Path, data: dict) -> tuple[dict, tuple[LockEntry, ...]]:
    """The document with its entries checked and in the form the writer writes."""
    entries = tuple(check_lock_document(path, data))
    return dict(data, package=[e.to_dict() for e in entries]), entries


def _load_lock_document(path: Path) -> dict:
    """The YAML of a lockfile, every scalar a string. Bytes that are not UTF-8 become U+FFFD, which the
    field checks then name (the field, not only the file)."""
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    try:
        data = yaml.load(path.read_bytes().decode("utf-8", "replace"), Loader=loader)  # noqa: S506 - base loader
    except (OSError, yaml.YAMLError, RecursionError) as e:
        where = getattr(e, "problem_mark", None)
        at = f", line {where.line + 1}" if where is not None else ""
        raise CondastackError(f"{path}: not a readable conda-lock file ({type(e).__name__}{at}). "
                              "Re-create it with `condastack lock`.") from None
    if not isinstance(data, dict) or not isinstance(data.get("package"), list) or \
            not isinstance(data.get("metadata"), dict):
        raise CondastackError(f"{path}: not a conda-lock lockfile (no 'package' list or 'metadata'). "
                              "Re-create it with `condastack lock`.")
    return data


def lock_entries_as_json(entries: list[LockEntry]) -> list[dict]:
    """Conda entries of a lockfile as repodata JSON (no constrains: the file does not carry them)."""
    return [{"name": p.name, "version": p.version, "build": p.build or "",
             "depends": [f"{k} {v}".strip() if v and v != "*" else k for k, v in p.dependencies.items()],
             "md5": p.md5, "sha256": p.sha256, "url": p.url} for p in entries]


# --------------------------------------------------------------------------- pip part (conda-lock)


# --------------------------------------------------------------------------- lockfile format (conda-lock)


class RenderedLock(NamedTuple):
    """A lockfile not yet written: its text, the document reading it back gives, and its checked entries."""

    text: str
    doc: dict
    entries: tuple[LockEntry, ...]


def render_lockfile(path: Path, packages: list[dict], *, channels: list[str], platforms: list[str],
                    sources: list[str], content_hash: dict[str, str], custom: dict[str, str]) -> RenderedLock:
    """conda-lock's unified lockfile (v1 on disk) for `path`, not yet written. The plain writer where it
    covers the lock, else conda-lock's own writer."""
    if can_write_fast(packages, channels):
        return lockfile_document(Path(path).name, packages, channels=channels, platforms=platforms,
                                 sources=sources, content_hash=content_hash, custom=custom)
    # conda-lock writes the file's own name into its header: a temporary folder keeps that name.

    tmpdir = Path(path).parent / f"{TMP_MARK}{Path(path).name}.{os.getpid()}.new"
    tmpdir.mkdir(exist_ok=True)
    try:
        conda_lock_write(tmpdir / Path(path).name, packages, channels=channels, platforms=platforms,
                         sources=sources, content_hash=content_hash, custom=custom)
        written = tmpdir / Path(path).name
        return RenderedLock(written.read_text(), *_checked(Path(path), _load_lock_document(written)))
    finally:
        remove_path(tmpdir)


def remember_lockfile(path: Path, lock: RenderedLock) -> None:
    """`lock` was just written at `path`: reading it in this run gives its document, with no re-parse.
    Its entries were checked one by one as it was rendered; the document around them is checked here
    (metadata, no package twice), so what is remembered is what reading the file accepts."""
    check_lock_document(path, lock.doc, checked=lock.entries)
    _LOCK_DOCS[_lock_doc_key(Path(path))] = (lock.doc, lock.entries)  # shared: readers never change it


# --------------------------------------------------------------------------- build seam: build and verify
# Reading a lockfile for installing: the entries are read as plain YAML (py-rattler's
# reader rejects the pip dependency values conda-lock writes), full records come
# from the records file beside the lock.


def read_records_sidecar(path: Path, platform: str) -> list[dict]:
    """One platform's repodata JSON entries from a records file ([] when absent), checked (RecordsFile)."""
    return [r.to_dict() for r in RecordsFile.read(path).platforms.get(platform, ())]


# --------------------------------------------------------------------------- lockfile format, without the import
# Importing conda-lock and building its pydantic models costs more than the solve itself on a
# real stack. The common path (conda packages, main category) therefore writes the same bytes
# conda-lock's writer and explicit renderer write; tests/test_lock.py compares the two on
# every change, so conda-lock stays the authority on the format.


def _v1_entry(p: dict, name: str) -> LockEntry:
    """An entry, checked as the reader checks it (LockEntry), so nothing is written that would not read back;
    its to_dict() is conda-lock's written key order, unset fields left out, dependencies sorted."""
    out = {k: p[k] for k in ENTRY_KEYS if p.get(k) is not None}
    out["hash"] = {k: v for k, v in (p.get("hash") or {}).items() if v is not None}
    return LockEntry.from_dict(out, name, 0)


def can_write_fast(packages: list[dict], channels: list[str]) -> bool:
    """Whether the plain writer covers this lock (else conda-lock's own writer runs)."""
    return all(_PLAIN_CHANNEL.match(c) for c in channels) and all(
        p.get("category", "main") == "main" and not p.get("optional") and not p.get("source") for p in packages)


def lockfile_text(name: str, packages: list[dict], *, channels: list[str], platforms: list[str], sources: list[str],
                  content_hash: dict[str, str], custom: dict[str, str]) -> str:
    """The text conda-lock's write_conda_lock_file writes for a main-category lock named `name`."""
    return lockfile_document(name, packages, channels=channels, platforms=platforms, sources=sources,
                             content_hash=content_hash, custom=custom).text


def lockfile_document(name: str, packages: list[dict], *, channels: list[str], platforms: list[str],
                      sources: list[str], content_hash: dict[str, str], custom: dict[str, str]) -> RenderedLock:
    """The lockfile's text, the document it holds and its checked entries."""
    header = [
        'This lock file was generated by conda-lock (https://github.com/conda/conda-lock). DO NOT EDIT!', '',
        'A "lock file" contains a concrete list of package versions (with checksums) to be installed. Unlike',
        'e.g. `conda env create`, the resulting environment will not change as new package versions become',
        'available, unless you explicitly update the lock file.', '',
        'Install this environment as "YOURENV" with:', f'    conda-lock install -n YOURENV {name}',
        'To update a single package to the latest version compatible with the version constraints in the source:',
        f'    conda-lock lock  --lockfile {name} --update PACKAGE',
        'To re-solve the entire environment, e.g. after changing a version constraint in the source file:',
        f'    conda-lock {" ".join("-f " + s for s in sources)} --lockfile {name}',
    ]
    pkgs = sorted((p for p in packages if not (p["manager"] == "conda" and p["name"].startswith("__"))),
                  key=lambda p: (p["manager"], p["name"], p["platform"]))
    # copies: the document is kept (remember_lockfile) and must not change with the caller's objects
    meta: dict = {"content_hash": dict(content_hash),
                  "channels": [{"url": c, "used_env_vars": []} for c in channels],
                  "platforms": list(platforms), "sources": list(sources)}
    if custom:
        meta["custom_metadata"] = dict(custom)
    entries = tuple(_v1_entry(p, name) for p in pkgs)
    package = [e.to_dict() for e in entries]
    out = {"version": 1, "metadata": meta, "package": package}
    dumper = getattr(yaml, "CDumper", yaml.Dumper)
    text = ("".join(("# " + line).rstrip() + "\n" for line in header)
            + yaml.dump(out, Dumper=dumper, sort_keys=False))
    return RenderedLock(text, out, entries)


def _toposort(deps: dict[str, set[str]]) -> list[str]:
    """conda's toposort (as conda-lock orders @EXPLICIT files): sorted layers; cycles broken by fewest deps."""
    data = {k: set(v) - {k} for k, v in deps.items()}
    if "python" in data:
        data["python"].discard("pip")
    for extra in set().union(*data.values()) - set(data) if data else ():
        data[extra] = set()
    out: list[str] = []
    while data:
        ready = sorted(k for k, v in data.items() if not v)
        if not ready:
            key = sorted(data.items(), key=lambda item: (len(item[1]), item[0]))[0][0]
            ready = [key]
        for k in ready:
            out.append(k)
            data.pop(k, None)
        for v in data.values():
            v -= set(ready)
    return out


def explicit_text(packages: list[dict], platform: str, input_hash: str | None) -> str:
    """conda-lock's @EXPLICIT rendering of one platform (pip packages as '# pip' lines)."""
    lines = ["# Generated by conda-lock.", f"# platform: {platform}", f"# input_hash: {input_hash}", "@EXPLICIT"]
    for manager in ("conda", "pip"):
        mine = {p["name"]: p for p in packages if p["platform"] == platform and p["manager"] == manager
                and not (manager == "conda" and p["name"].startswith("__"))}
        order = [n for n in _toposort({n: set(p.get("dependencies") or {}) for n, p in mine.items()}) if n in mine]
        for n in order:
            p = mine[n]
            if manager == "conda":
                lines.append(os.path.expandvars(f"{p['url']}#{(p.get('hash') or {}).get('md5')}"))
            else:
                sha = (p.get("hash") or {}).get("sha256")
                lines.append(f"# pip {n} @ {p['url']}" + (f"#sha256={sha}" if sha else ""))
    return "\n".join(lines) + "\n"


def read_raw(path: Path) -> dict:
    """A lockfile as plain data, checked: the fast path for hashes and pins (conda-lock's import is slow)."""
    return read_lock_document(path)


def lock_summary(path: Path) -> dict:
    """What no-op locks and hashes need from a lockfile: content_hash, counts and pins per platform.

    The records file beside the lock (read through RecordsFile) keeps this summary with the sha256
    of the lockfile it describes; while that matches, the lockfile is not parsed at all.
    """
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    summary = RecordsFile.read(records_sidecar_path(path)).summary
    if summary.get("sha256") == sha:
        return summary
    return _summarize(read_raw(path), sha)


def _pin_hash(p: dict) -> str | None:
    """What pins an entry: its sha256 or md5; a git package's URL with the commit, which has neither."""
    h = p.get("hash") or {}
    return h.get("sha256") or h.get("md5") or (p.get("url") if not h else None)


def _summarize(doc: dict, sha: str) -> dict:
    pkgs = doc["package"]
    plats = sorted({str(p.get("platform")) for p in pkgs} | set(doc["metadata"].get("platforms") or []))
    return {
        "sha256": sha,
        "content_hash": dict(doc["metadata"].get("content_hash") or {}),
        "counts": {pl: {m: sum(1 for p in pkgs if p.get("platform") == pl and p.get("manager") == m)
                        for m in ("conda", "pip")} for pl in plats},
        "pins": {pl: sorted(f"{p.get('manager')}:{p.get('name')}:{p.get('version')}:"
                            f"{_pin_hash(p)}" for p in pkgs if p.get("platform") == pl) for pl in plats},
    }
