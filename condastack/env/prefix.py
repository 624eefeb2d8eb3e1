"""An environment on disk: its prefix, condastack's marker, package records and pip distributions.

Modelled on conda-pack's `CondaEnv`: one object per prefix that reads
`conda-meta` once and lazily. Every stage that looks inside an environment
(build, verify, pack, unpack, deliver, doctor, container, module) asks this
module; none opens `conda-meta` itself.

Files condastack keeps in `conda-meta` (none ends in .json, so tools that read
`conda-meta/*.json` as package records never see them):

    condastack.info      the marker of an env built by condastack:
                         {"layer", "stack", "platform", "lock_hash", "lockfile", "created_by"}
    condastack.prefixes  relocation state of a packed/unpacked env (see unpack.relocate)
    condastack.install   what `condastack install` installed there
    condastack.cdx       the env's CycloneDX SBOM (JSON; see env.sbom), written by build and pack

and conda's own `conda-meta/state` ({"env_vars": {...}}, what `conda env config
vars` writes): condastack writes a layer's `variables:` there, and activation
scripts, modulefiles and containers set them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from condastack.core.errors import CondastackError, EnvDamaged, PrefixTooLong
from condastack.core.fs import atomic_write_text
from condastack.core.names import ENV_VAR_NAME, canonical
from condastack.core.pathsafe import check_meta_record
from condastack.core.version import __version__

META_DIR = "conda-meta"
MARKER = Path(META_DIR) / "condastack.info"
PREFIXES_FILE = f"{META_DIR}/condastack.prefixes"
INSTALL_RECORD = f"{META_DIR}/condastack.install"
SBOM_FILE = f"{META_DIR}/condastack.cdx"  # CycloneDX JSON; not *.json, which conda reads as package records
STATE_FILE = Path(META_DIR) / "state"  # conda's per-env state (env_vars)
CREATED_BY = f"condastack {__version__}"

RawRecords = dict[str, tuple[bytes, dict]]  # conda-meta file path -> (its bytes, parsed)


# --------------------------------------------------------------------------- the marker


def is_record_member(target: str) -> bool:
    """Whether a prefix-relative path is a package record (conda-meta/*.json)."""
    return target.startswith(META_DIR + "/") and target.endswith(".json")


def record_file_name(name: str, version: str, build: str) -> str:
    """The conda-meta file name of an installed package."""
    return f"{name}-{version}-{build}.json"


def with_file_hashes(info: dict, hashes: dict[str, tuple[str | None, int]]) -> dict | None:
    """A copy of package record `info` whose files in `hashes` ({path: (sha256 or None, size)})
    say what they now hold (`sha256_in_prefix`, `size_in_bytes`; None: the package's own
    `sha256`), or None when none of its files is in `hashes`."""
    paths = (info.get("paths_data") or {}).get("paths") or []
    if not any(p.get("_path") in hashes for p in paths):
        return None
    new_paths = []
    for p in paths:
        if p.get("_path") in hashes:
            sha, size = hashes[p["_path"]]
            p = dict(p, sha256_in_prefix=sha or p.get("sha256"), size_in_bytes=size)
        new_paths.append(p)
    return dict(info, paths_data=dict(info["paths_data"], paths=new_paths))


_FIELDS = ("layer", "stack", "platform", "lock_hash", "lockfile", "created_by")


@dataclass(frozen=True)
class EnvMarker:
    layer: str | None = None
    stack: str | None = None
    platform: str | None = None
    lock_hash: str | None = None
    lockfile: str | None = None
    created_by: str | None = None

    @classmethod
    def from_json(cls, data: object, path: Path) -> EnvMarker:
        if not isinstance(data, dict):
            raise CondastackError(f"{path}: must be a JSON object of {', '.join(_FIELDS)}. Rebuild the env with "
                                  "`condastack build`.")
        for key in _FIELDS:
            if data.get(key) is not None and not isinstance(data[key], str):
                raise CondastackError(f"{path}: field '{key}' must be a string, not {str(data[key])[:80]!r}. "
                                      "Rebuild the env with `condastack build`.")
        return cls(**{k: data.get(k) for k in _FIELDS})

    @classmethod
    def read(cls, prefix: Path, *, strict: bool = True) -> EnvMarker | None:
        """The marker of the env at `prefix`; None without one. A damaged one raises, or is None
        when not `strict` (build: the folder is then not an env condastack built)."""
        path = Path(prefix) / MARKER
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            if not strict:
                return None
            raise CondastackError(f"{path}: unreadable ({e}). Rebuild the env with `condastack build`.") from None
        try:
            return cls.from_json(data, path)
        except CondastackError:
            if strict:
                raise
            return None

    def write(self, prefix: Path) -> None:
        path = Path(prefix) / MARKER
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: v for k, v in asdict(self).items() if v is not None}, indent=2) + "\n")


def read_marker(prefix: Path, *, strict: bool = False) -> EnvMarker | None:
    """The `conda-meta/condastack.info` of an environment, or None (see EnvMarker.read)."""
    return EnvMarker.read(prefix, strict=strict)


def write_marker(prefix: Path, marker: EnvMarker) -> None:
    marker.write(prefix)


# --------------------------------------------------------------------------- conda's state (variables)


def read_env_vars(prefix: Path, *, strict: bool = False) -> dict[str, str]:
    """The env_vars of `conda-meta/state` ({} without one). `strict` refuses a damaged file or a
    bad name (for what gets exported); otherwise they read as no variables (for a rewrite)."""
    path = Path(prefix) / STATE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        if strict:
            raise CondastackError(f"{path}: unreadable JSON ({e}). Reinstall the env.") from None
        return {}
    raw = data.get("env_vars") if isinstance(data, dict) else None
    out: dict[str, str] = {}
    for k, v in (raw if isinstance(raw, dict) else {}).items():
        if not ENV_VAR_NAME.match(str(k)):
            if strict:
                raise CondastackError(f"{path}: '{k}' is not a valid environment variable name.")
            continue
        out[str(k)] = str(v)
    return out


def write_env_vars(prefix: Path, variables: dict[str, str]) -> None:
    """Set conda's `conda-meta/state` env_vars, keeping its other keys; no file is made for no variables."""

    path = Path(prefix) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    if not variables and "env_vars" not in data:
        return
    data["env_vars"] = dict(variables)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- pip distributions


def site_packages_dirs(prefix: Path) -> list[Path]:
    return sorted(p for p in Path(prefix).glob("lib/python*/site-packages") if p.is_dir())


def dist_infos(site: Path) -> dict[str, tuple[str, Path]]:
    """canonical distribution name -> (version, *.dist-info folder) in one site-packages (cheap:
    from the folder names)."""
    out: dict[str, tuple[str, Path]] = {}
    for d in Path(site).glob("*.dist-info"):
        name, _, version = d.name[: -len(".dist-info")].partition("-")
        out[canonical(name)] = (version, d)
    return out


def dist_name_version(d: Path) -> tuple[str, str]:
    """Name and version of a *.dist-info folder, from its METADATA (else its folder name)."""
    name = version = ""
    try:
        for line in (d / "METADATA").read_text(errors="replace").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            if key.lower() == "name" and not name:
                name = value.strip()
            elif key.lower() == "version" and not version:
                version = value.strip()
    except OSError:
        pass
    if not name:
        name, _, version = d.name[: -len(".dist-info")].partition("-")
    return name, version


# --------------------------------------------------------------------------- placeholders


def check_dest_fits(records: Sequence[tuple[str, str, str]], dest: str) -> None:
    """A binary placeholder can only be replaced by a path no longer than itself."""
    for f, ph, mode in records:
        if mode == "binary" and len(dest.encode()) > len(ph.encode()):
            raise PrefixTooLong(file=f, prefix=dest, room=len(ph.encode()))


# --------------------------------------------------------------------------- the model


class Env:
    """An environment at `prefix`; everything read from `conda-meta` is read once, on first use."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = Path(prefix)

    @property
    def meta_dir(self) -> Path:
        return self.prefix / META_DIR

    def is_conda_env(self) -> bool:
        return self.meta_dir.is_dir()

    def require_conda_env(self, advice: str = "") -> None:
        """Refuse a folder that is not a conda environment; `advice` follows the reason."""
        if not self.is_conda_env():
            raise CondastackError(f"{self.prefix}: not a conda environment (no {META_DIR}/).{advice}")

    @cached_property
    def marker(self) -> EnvMarker | None:
        """The env's condastack.info, checked: a damaged one is refused naming the field."""
        return read_marker(self.prefix, strict=True)

    def has_marker(self) -> bool:
        return (self.prefix / MARKER).is_file()

    def path(self, rel: str | Path) -> Path:
        """A file of condastack's inside the env, e.g. `env.path(PREFIXES_FILE)`."""
        return self.prefix / rel

    def record_path(self, name: str, version: str, build: str) -> Path:
        return self.meta_dir / record_file_name(name, version, build)

    def record_names(self) -> list[str]:
        """File names of the package records (conda-meta/*.json), sorted."""
        try:
            names = os.listdir(self.meta_dir)
        except OSError:
            return []
        return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))

    def raw_records(self, out: RawRecords, *, strict: bool = False) -> Iterator[dict]:
        """Each package record, parsed, as it is read; `out` collects {path: (bytes, parsed)} so a
        caller can hand them on (pack gives them to conda-pack's model and rewrites their bytes).
        A generator, so a scan can use the first package before the others are parsed.
        Unreadable ones are left out, unless `strict`: then a malformed one (bad JSON, wrong types,
        unsafe paths, no link.source) is refused by the path gate, naming it (pack uses that:
        conda-pack would stop on it with a traceback)."""
        meta_dir = str(self.meta_dir)
        for name in self.record_names():
            path = os.path.join(meta_dir, name)
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                info = json.loads(raw)
            except ValueError as e:
                if strict:
                    raise EnvDamaged(file=path, reason=str(e)) from None
                continue
            except OSError:
                continue
            if strict:
                check_meta_record(info, path, need_link=True)
            if isinstance(info, dict):
                out[path] = (raw, info)
                yield info

    def update_file_hashes(self, hashes: dict[str, tuple[str | None, int]]) -> None:
        """Record what rewritten files now hold (relocation), so that `verify` compares against it."""

        for name in self.record_names():
            path = self.meta_dir / name
            info = self.readable_record(path)
            new = with_file_hashes(info, hashes) if info is not None else None
            if new is not None:
                atomic_write_text(path, json.dumps(new, sort_keys=True))

    @cached_property
    def records(self) -> dict[str, dict[str, Any]]:
        """package name -> its conda-meta record; an unreadable record is refused."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.record_names():
            f = self.meta_dir / name
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                raise EnvDamaged(file=f, reason=str(e)) from None
            check_meta_record(data, str(f))
            out[str(data.get("name", f.stem))] = data
        return out

    def use_records(self, raw: RawRecords) -> None:
        """Take the records a caller has already read with `raw_records(strict=True)` (and so checked)
        as this env's `records`, instead of parsing them again."""
        self.__dict__["records"] = {str(d.get("name", Path(path).stem)): d for path, (_, d) in raw.items()}
        self.__dict__.pop("_conda_files", None)

    def write_record(self, record: dict[str, Any]) -> None:
        """Replace a package's conda-meta record (atomically), e.g. to list files made at link time."""

        path = self.record_path(str(record["name"]), str(record["version"]), str(record["build"]))
        atomic_write_text(path, json.dumps(record, indent=2))
        self.__dict__.pop("records", None)
        self.__dict__.pop("_conda_files", None)

    def readable_records(self) -> list[dict[str, Any]]:
        """The records that can be read, skipping damaged ones (for best-effort questions)."""
        return list(self.raw_records({}))

    @staticmethod
    def readable_record(path: Path) -> dict[str, Any] | None:
        """One record file's JSON object, or None where it cannot be read (for best-effort questions)."""
        try:
            info = json.loads(Path(path).read_bytes())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def conda_files(self) -> set[str]:
        """Prefix-relative paths of every conda-managed file."""
        return {e.get("_path") or e.get("path") for m in self.records.values()
                for e in (m.get("paths_data") or {}).get("paths") or []}

    @cached_property
    def _conda_files(self) -> set[str]:  # dropped with `records` (use_records, write_record)
        return self.conda_files()

    def conda_owns(self, *rels: str) -> bool:
        """Whether a conda package lists one of the prefix-relative `rels` among its files."""
        return any(rel in self._conda_files for rel in rels)

    def owns(self, record: dict[str, Any], rel: str) -> bool:
        """Whether the package of `record` (one of `records`) lists the prefix-relative `rel`."""
        return rel in {p.get("_path") for p in (record.get("paths_data") or {}).get("paths") or []}

    def site_packages_dirs(self) -> list[Path]:
        return site_packages_dirs(self.prefix)

    def installed_dists(self) -> dict[str, str]:
        """canonical distribution name -> version, from the *.dist-info folder names (cheap)."""
        return {name: version for sp in self.site_packages_dirs() for name, (version, _) in dist_infos(sp).items()}

    def pip_dists(self) -> dict[str, tuple[str, str]]:
        """canonical name -> (version, dist-info path) of distributions no conda package owns."""
        out: dict[str, tuple[str, str]] = {}
        for sp in self.site_packages_dirs():
            for d in sp.glob("*.dist-info"):
                rel = os.path.relpath(d, self.prefix)
                if self.conda_owns(f"{rel}/METADATA", f"{rel}/RECORD"):
                    continue
                name, version = dist_name_version(d)
                out[canonical(name)] = (version, rel)
        return out

    def min_binary_placeholder(self) -> int | None:
        """The shortest binary placeholder of the env's packages (bytes), None if none."""
        lengths: list[int] = []
        for data in self.readable_records():
            for p in (data.get("paths_data") or {}).get("paths") or []:
                ph = p.get("prefix_placeholder") if isinstance(p, dict) else None
                if ph and p.get("file_mode") == "binary":
                    lengths.append(len(ph.encode()))
        return min(lengths) if lengths else None

