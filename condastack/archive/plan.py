"""The pack planner: what goes into an archive and from where (package files reverted to placeholders, conda-meta
made machine-neutral, unmanaged files scanned for the prefix), handed to a writer as a Plan.
"""


from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import threading
from pathlib import Path

from condastack.archive.relocate import RelocationRecord
from condastack.archive.writers import Plan
from condastack.core.errors import CondastackError
from condastack.core.fs import sha256_file
from condastack.env.prefix import PREFIXES_FILE, Env, RawRecords, check_dest_fits, is_record_member, with_file_hashes

_SCAN_CHUNK = 1 << 20


class _ParsedJson:
    """Stands in for the `json` module inside `conda_pack.core` while it loads an env, so that
    the conda-meta records we already parsed are not parsed again (the biggest is ~14 MB).

    conda-pack only reads these records; every other file goes to the real `json`.
    """

    def __init__(self, parsed: RawRecords) -> None:
        self.parsed = parsed

    def load(self, fil, **kw):  # noqa: ANN001, ANN003, ANN202 - json.load's signature
        got = self.parsed.get(str(getattr(fil, "name", "")))
        return got[1] if got is not None and not kw else json.load(fil, **kw)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(json, name)


_CONDA_PACK_JSON = threading.Lock()


def load_env(prefix: Path, records: RawRecords | None = None):  # noqa: ANN201 - CondaEnv
    """conda-pack's view of the env: its file list with sources and placeholders.

    `records` ({path: (bytes, parsed)} from `Env.raw_records`) are handed to conda-pack
    instead of being parsed again; its model is otherwise unchanged.
    """
    import conda_pack.core as cpc  # lazy: only when packing
    from conda_pack.core import (  # lazy: only when packing
        CondaEnv,
        CondaPackException,
    )

    try:
        if not records:
            return CondaEnv.from_prefix(str(prefix), on_missing_cache="raise")
        with _CONDA_PACK_JSON:
            cpc.json = _ParsedJson(records)
            try:
                return CondaEnv.from_prefix(str(prefix), on_missing_cache="raise")
            finally:
                cpc.json = json
    except CondaPackException as e:
        text = " ".join(str(e).split())
        if "editable" in text:
            raise CondastackError(
                f"{prefix}: {text}. Editable installs point outside the environment and cannot be packed; "
                "install the package as a wheel (or `condastack wrap` it) and rebuild."
            ) from None
        if "without entries in the package cache" in text:
            raise CondastackError(
                f"{prefix}: {text}. The package cache ($CONDASTACK_PKGS) no longer holds these packages; "
                "rebuild the layer with `condastack build` to refill it."
            ) from None
        raise CondastackError(f"{prefix}: conda-pack cannot read this environment: {text}") from None


def _record_unchanged(path: str, rec: dict, st: os.stat_result) -> bool:
    """Whether a conda-managed regular file still matches its conda-meta record.

    Cheap first: a file that still shares its inode with the package cache
    (st_nlink > 1) and has the recorded size is unchanged; pip and editors
    replace files (new inode, one link). Only otherwise is it hashed.
    Placeholder files are copies, so they are always hashed (they are few and small).
    """
    if stat.S_ISLNK(st.st_mode):
        return False
    if rec.get("prefix_placeholder"):
        want = rec.get("sha256_in_prefix")
        return not want or sha256_file(Path(path)) == want
    size = rec.get("size_in_bytes")
    if size is not None and st.st_size != size:
        return False
    if st.st_nlink > 1:
        return True
    return not rec.get("sha256") or sha256_file(Path(path)) == rec["sha256"]


def _scan_managed(prefix: Path, emit,  # noqa: ANN001
                  records: RawRecords | None = None) -> tuple[list[str], dict[str, bool], int]:
    """Check every conda-managed file; hand the unchanged plain ones (and symlinks) to `emit` at once,
    a package's worth at a time (`emit(names)`).

    Returns (modified, emitted {target: is_symlink}, bytes emitted). `emit` lets the archive stream
    start before conda-pack's model of the env is ready; that model later confirms each early choice
    (see `_confirm_early`). Once a file is found modified nothing more is emitted. `records` collects
    the conda-meta records read on the way (see `Env.raw_records`); they are read lazily, so the
    first package streams before the others are parsed.
    """
    modified: list[str] = []
    emitted: dict[str, bool] = {}
    nbytes = 0
    fd = os.open(prefix, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for info in Env(prefix).raw_records({} if records is None else records, strict=True):
            nbytes += _scan_package(fd, str(prefix), (info.get("paths_data") or {}).get("paths", []),
                                    modified, emitted, emit)
    finally:
        os.close(fd)
    return modified, emitted, nbytes


def _scan_package(fd: int, prefix: str, entries: list[dict], modified: list[str],
                  emitted: dict[str, bool], emit) -> int:  # noqa: ANN001
    """One package's part of `_scan_managed` (the hot loop: ~75k files on a real env); returns the bytes
    emitted. Names go to `emit` in batches of _BATCH, so tar starts before a big package is scanned.
    `fd` is the prefix, so each lstat is one short lookup."""
    lstat, is_reg, is_lnk = os.lstat, stat.S_ISREG, stat.S_ISLNK
    batch: list[str] = []
    nbytes = 0
    for rec in entries:
        rel = rec["_path"]
        try:
            st = lstat(rel, dir_fd=fd)
        except OSError:
            continue  # missing files are reported by conda-pack
        if rec.get("path_type") not in (None, "hardlink"):
            if is_lnk(st.st_mode) and rel not in emitted and not modified:
                emitted[rel] = True
                batch.append(rel)
            continue
        if not _record_unchanged(prefix + "/" + rel, rec, st):
            modified.append(rel)
        elif is_reg(st.st_mode) and not rec.get("prefix_placeholder") and rel not in emitted and not modified:
            emitted[rel] = False
            nbytes += st.st_size
            batch.append(rel)
        if len(batch) >= _BATCH and emit is not None:
            emit(batch)
            batch = []
    if batch and emit is not None:
        emit(batch)
    return nbytes


_BATCH = 2048


def _contains(path: str, needle: bytes) -> bool:
    """Whether a file contains `needle`, read in chunks (files may be huge)."""
    keep = len(needle) - 1
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(_SCAN_CHUNK):
            if needle in tail + chunk:
                return True
            tail = chunk[-keep:] if keep else b""
    return False


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_MACHINE_PATHS = (("", "extracted_package_dir"), ("", "package_tarball_full_path"), ("link", "source"))


_KEY_COLON = re.compile(rb'[ \t\r\n]*:[ \t\r\n]*')


def _blank_bytes(raw: bytes, info: dict) -> bytes | None:
    """`raw` with the machine-path fields set to "", edited as bytes (no parse, no dump: ~0.1 s
    on a 14 MB record), or None when the record is not plain enough to be sure of the edit.

    Sure because a token `"key"` followed by `:` can only be an object key (quotes inside JSON
    strings are escaped); each key must occur once in the whole text, and the string after it
    must be the very value the parsed record holds there.
    """
    if b"\\u" in raw:  # escaped keys could hide a second occurrence
        return None
    spans: list[tuple[int, int]] = []
    for parent, key in _MACHINE_PATHS:
        holder = info.get(parent) if parent else info
        if not isinstance(holder, dict) or key not in holder:
            continue
        if not isinstance(holder[key], str):
            return None
        token = b'"' + key.encode() + b'"'
        at = raw.find(token)
        if at < 0 or raw.find(token, at + 1) >= 0:
            return None
        colon = _KEY_COLON.match(raw, at + len(token))
        if colon is None:  # the token is a value, not a key
            return None
        start = colon.end()
        value = json.dumps(holder[key], ensure_ascii=False).encode()
        if raw[start:start + len(value)] != value:
            return None
        spans.append((start, start + len(value)))
    out, pos = [], 0
    for start, end in sorted(spans):
        out += [raw[pos:start], b'""']
        pos = end
    out.append(raw[pos:])
    return b"".join(out)


def _rewrite_conda_meta(source: str, parsed: tuple[bytes, dict] | None = None) -> tuple[bytes, dict]:
    """A package record without the build machine's paths, as conda-pack's `rewrite_conda_meta`;
    returns (its bytes, the record as parsed before the edit).

    `parsed` is (bytes, record) as read by `Env.raw_records`; it is not modified. Its bytes are
    edited in place (the record keeps its own layout). Otherwise it is written compact: json's
    C encoder does not indent, and its pure-Python indenting one spends ~0.5 s on a 14 MB record.
    """
    if parsed is not None and (edited := _blank_bytes(*parsed)) is not None:
        return edited, parsed[1]
    if parsed is None:
        with open(source, "rb") as f:
            data = json.loads(f.read())
    else:  # a shallow copy is enough: only top-level keys and `link` change
        data = dict(parsed[1])
        if isinstance(data.get("link"), dict):
            data["link"] = dict(data["link"])
    for key in ("extracted_package_dir", "package_tarball_full_path"):
        if key in data:
            data[key] = ""
    if isinstance(data.get("link"), dict) and "source" in data["link"]:
        data["link"]["source"] = ""
    return json.dumps(data, sort_keys=True).encode(), data


def _plan(prefix: Path, env, staging: Path, dest: str | None, modified: set[str],  # noqa: ANN001
          skip: dict[str, bool] | None = None, records: RawRecords | None = None) -> Plan:
    from conda_pack.core import BIN_DIR  # lazy: only when packing

    plan = Plan()
    prefix_s = str(prefix)
    prefix_b = prefix_s.encode()

    held: dict[str, tuple[str | None, int]] = {}  # see _restage_records
    staged_records: dict[str, dict] = {}

    def stage(target: str, data: bytes, like: str) -> None:
        out = staging / target
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        shutil.copymode(like, out)
        plan.staged.append(target)
        plan.bytes_unpacked += len(data)

    def from_cache(source: str, target: str) -> None:
        src = Path(source)
        base = str(src)[: -len(target)].rstrip("/") if str(src).endswith("/" + target) else ""
        if base:
            plan.from_cache.setdefault(base, []).append(target)
        else:  # e.g. noarch python: the cache path differs from the target path
            out = staging / target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out)
            plan.staged.append(target)
        size = src.stat().st_size
        plan.bytes_unpacked += size
        held[target] = (None, size)

    skip = skip or {}
    for f in env.files:
        target = f.target
        if target in skip:  # already streamed from the prefix
            continue
        in_prefix = os.path.join(prefix_s, target)
        if target in modified:  # --allow-modified: keep the prefix's version, as an unmanaged file
            f.source, f.is_conda, f.file_mode, f.prefix_placeholder = in_prefix, False, "unknown", None
        if os.path.islink(in_prefix) or os.path.isdir(in_prefix):
            plan.from_prefix.append(target)
            continue
        if f.file_mode is None:
            if is_record_member(target):
                data, info = _rewrite_conda_meta(f.source, (records or {}).get(f.source))
                plan.packages.append(info)
                staged_records[target] = info
                stage(target, data, f.source)
            else:
                plan.from_prefix.append(target)
                plan.bytes_unpacked += os.lstat(in_prefix).st_size
            continue
        mode, placeholder = f.file_mode, f.prefix_placeholder
        if mode == "unknown":
            text = _unmanaged_text(f.source, prefix_b)
            if text is None:
                plan.from_prefix.append(target)
                plan.bytes_unpacked += os.lstat(in_prefix).st_size
                continue
            mode, placeholder, data = "text", prefix_s, text
        elif dest is None and not (mode == "text" and target.startswith(BIN_DIR + "/")):
            from_cache(f.source, target)
            plan.records.append((target, placeholder, mode))
            continue
        else:
            data = Path(f.source).read_bytes()
        data, keeps_placeholder = _rewritten(data, target, mode, placeholder, dest)
        if keeps_placeholder:
            plan.records.append((target, placeholder, mode))
        held[target] = (hashlib.sha256(data).hexdigest(), len(data))
        stage(target, data, f.source)
    _restage_records(staging, staged_records, held)
    return plan


def _unmanaged_text(source: str, prefix_b: bytes) -> bytes | None:
    """An unmanaged file's bytes if it is text holding the prefix; like conda-pack, unmanaged
    binaries are left alone on Unix."""
    if not _contains(source, prefix_b):
        return None
    data = Path(source).read_bytes()
    return data if _is_text(data) else None


def _rewritten(data: bytes, target: str, mode: str, placeholder: str, dest: str | None) -> tuple[bytes, bool]:
    """What a placeholder file holds in the archive, and whether that still has the placeholder."""
    from conda_pack.core import (  # lazy: only when packing
        BIN_DIR,
        rewrite_shebang,
    )
    from conda_pack.prefixes import replace_prefix  # lazy: only when packing

    if dest is not None:
        check_dest_fits([(target, placeholder, mode)], dest)
        return replace_prefix(data, mode, placeholder, dest), False
    if mode == "text" and target.startswith(BIN_DIR + "/"):
        data, fixed = rewrite_shebang(data, target, placeholder)
        return data, not fixed
    return data, True


def _restage_records(staging: Path, staged: dict[str, dict], held: dict[str, tuple[str | None, int]]) -> None:
    """Rewrite the staged records of packages with placeholder files to name what the archive holds
    (`held`: {target: (sha256, or None for the package's own, size)}). The records then describe
    the archive whatever the build prefix was, and `verify` after unpack compares against them."""
    for target, info in staged.items():
        new = with_file_hashes(info, held)
        if new is None:
            continue
        for key in ("extracted_package_dir", "package_tarball_full_path"):
            if key in new:
                new[key] = ""
        if isinstance(new.get("link"), dict) and "source" in new["link"]:
            new["link"] = dict(new["link"], source="")
        (staging / target).write_bytes(json.dumps(new, sort_keys=True).encode())


def _confirm_early(env, early: dict[str, bool]) -> bool:  # noqa: ANN001
    """conda-pack's model agrees with every early choice: each streamed file is one it would
    also take unchanged from the prefix (a plain conda file or a symlink), and none is missing."""
    seen: set[str] = set()
    for f in env.files:
        link = early.get(f.target)
        if link is None:
            continue
        if not link and (f.file_mode is not None or is_record_member(f.target)):
            return False
        seen.add(f.target)
    return len(seen) == len(early)


def _add_scripts(plan: Plan, staging: Path, dest: str | None) -> None:
    """conda-pack's activate scripts and, without a dest prefix, its bin/conda-unpack."""
    import conda_pack  # lazy: only when packing
    import conda_pack.core as cpc  # lazy: only when packing

    here = Path(cpc.__file__).parent
    has_conda = any(p.get("name") == "conda" for p in plan.packages)

    def write(target: str, text: str, executable: bool) -> None:
        out = staging / target
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.chmod(0o755 if executable else 0o644)
        if target not in plan.staged:
            plan.staged.append(target)
        plan.bytes_unpacked += out.stat().st_size

    if not (dest is not None and has_conda):
        for source, target in cpc._scripts:
            write(target, Path(source).read_text(), True)
    if dest is None:
        write("bin/conda_unpack_progress.py", (here / "_progress.py").read_text(), False)
        python = re.compile("bin/python")
        records = ",\n".join(repr(r) for r in plan.records if not python.match(r[0]))
        script = cpc._conda_unpack_template.format(
            shebang="#!/usr/bin/env python", prefix_records=records,
            prefixes_py=(here / "prefixes.py").read_text(), version=conda_pack.__version__)
        write("bin/conda-unpack", script + _UNPACK_NOTE, True)
    write(PREFIXES_FILE, RelocationRecord(dest, tuple(plan.records)).text(), False)  # type: ignore[arg-type]


# Appended to conda-pack's conda-unpack: record where the files now point, so
# that `condastack relocate` can move the env again later.
_UNPACK_NOTE = f"""
    if not args.version:
        import json as _json
        _state_path = os.path.join(new_prefix, {PREFIXES_FILE!r})
        if os.path.exists(_state_path):
            with open(_state_path) as _f:
                _state = _json.load(_f)
            _state['current'] = new_prefix
            with open(_state_path + '.tmp', 'w') as _f:
                _json.dump(_state, _f, indent=1)
            os.replace(_state_path + '.tmp', _state_path)
"""


_TIMESTAMP = re.compile(rb'"timestamp"\s*:\s*(\d+)')


def archive_mtime(prefix: Path) -> tuple[int, str]:
    """The time members' mtimes are clamped to, and where it came from: `$SOURCE_DATE_EPOCH`, else
    the newest build time of the locked packages (the same for every env built from one lock).

    Only the head of each record is read (rattler writes `timestamp` before `paths_data`);
    a record without one there is read whole.
    """
    sde = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if sde.isdigit():
        return int(sde), "SOURCE_DATE_EPOCH"
    newest = 0
    env = Env(prefix)
    for name in env.record_names():
        try:
            with open(env.meta_dir / name, "rb") as f:
                m = _TIMESTAMP.search(f.read(1 << 16)) or _TIMESTAMP.search(f.read())
        except OSError:
            continue
        if m:
            t = int(m.group(1))
            newest = max(newest, t // 1000 if t > 10**11 else t)  # conda stores ms since 2019
    return newest, "packages"
