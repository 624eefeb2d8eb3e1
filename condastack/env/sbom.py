"""The CycloneDX SBOM of an environment: what is inside it, for security teams and CVE scanners.

One CycloneDX 1.6 JSON document per env, made with `cyclonedx-python-lib` from typed models
(see `bom_text` for where it is checked against the CycloneDX schema):

- one component per conda package: `pkg:conda/<channel>/NAME@VERSION?build=..&subdir=..&type=conda`,
  with the package file's sha256 (and md5) and the license of its index.json (as its conda-meta
  record carries it);
- one per pip distribution no conda package owns: `pkg:pypi/NAME@VERSION`, with the wheel's
  sha256 (pip's `direct_url.json`, written from the lock's hash) and the license of its METADATA;
- a package made by `condastack wrap` also names what it was made from (its `pedigree`): the
  wheel and its sha256, or the folder's content hash and, where given, the git commit;
- the stack, layer, lock content hash and platform as `condastack:*` metadata properties.

The document is reproducible: its timestamp is `$SOURCE_DATE_EPOCH` or the newest build time of
the env's packages, and its serial number is derived from its content, so two envs of one lock
give the same bytes (a pack stays byte-identical). It names no path of the build machine.

`build` writes it into the env (`conda-meta/condastack.cdx`: the name must not end in .json, which
conda reads as package records); `pack` writes it again into the archive (so it matches what the
archive holds) and beside the archive (`ARCHIVE.cdx.json`, with the archive's name and sha256).
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.utils import parse_wheel_filename

from condastack.core.credentials import strip_credentials
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_write_text
from condastack.core.layout import wrapped_meta
from condastack.core.version import __version__
from condastack.env.linkview import LinkedEnv
from condastack.env.prefix import SBOM_FILE, Env, RawRecords

# cyclonedx-python-lib, packageurl and the jsonschema validator take 1 to 3 s to import here (measured with
# -X importtime): they are imported inside the functions that need them ("lazy" below), so only the
# commands that make or check an SBOM pay for them, not every `condastack` start.

SPEC_VERSION = "1.6"
PROPERTY_NS = "condastack"
# Serial numbers are uuid5 of the document's content in this namespace.
_SERIAL_NS = uuid.UUID("6f7a3c52-2f4e-4c55-9d0b-6a1b3e8e2c10")


@dataclass(frozen=True)
class PipDist:
    """A pip distribution of the env (no conda package owns it)."""

    name: str
    version: str
    sha256: str | None
    license: str | None


# --------------------------------------------------------------------------- reading the env


def _channel_name(record: dict[str, Any]) -> str:
    """The purl namespace of a package: the channel's name (`conda-forge`, or a local channel's folder)."""
    channel = strip_credentials(str(record.get("channel") or record.get("url") or ""))
    path = urlsplit(channel).path.rstrip("/") if "://" in channel else channel.rstrip("/")
    subdir = str(record.get("subdir") or "")
    if path.endswith((".conda", ".tar.bz2")):  # a package URL: drop the file and its subdir
        path = path.rsplit("/", 1)[0]
        path = path.removesuffix("/" + subdir) if subdir else path
    return path.rsplit("/", 1)[-1] or "unknown"


def _dist_metadata(dist_info: Path) -> tuple[str | None, str | None]:
    """(wheel sha256, license) of an installed distribution."""
    sha = None
    try:
        direct = json.loads((dist_info / "direct_url.json").read_text())
        hashes = (direct.get("archive_info") or {}).get("hashes") or {}
        sha = hashes.get("sha256") if isinstance(hashes, dict) else None
    except (OSError, ValueError, AttributeError):
        pass
    lic = None
    try:
        for line in (dist_info / "METADATA").read_text(errors="replace").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            if key.lower() == "license-expression" or (key.lower() == "license" and lic is None):
                lic = value.strip() or lic
    except OSError:
        pass
    return (sha if isinstance(sha, str) else None), lic


def pip_dists(env: Env, lock_hashes: dict[str, str] | None = None) -> list[PipDist]:
    """The env's pip distributions; `lock_hashes` (canonical name -> sha256) fills in what pip did not record."""
    out = []
    for name, (version, rel) in sorted(env.pip_dists().items()):
        sha, lic = _dist_metadata(env.prefix / rel)
        out.append(PipDist(name, version, sha or (lock_hashes or {}).get(name), lic))
    return out


def _wrapped(env: Env, record: dict[str, Any]) -> dict[str, Any] | None:
    """What `condastack wrap` recorded about a package's source, when the package holds that file."""
    rel = wrapped_meta(str(record.get("name")))
    if not env.owns(record, rel):
        return None
    try:
        data = json.loads((env.prefix / rel).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sbom_timestamp(env: Env) -> int:
    """$SOURCE_DATE_EPOCH, else the newest build time of the env's packages (0 without any)."""
    sde = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if sde.isdigit():
        return int(sde)
    newest = 0
    for rec in env.records.values():
        t = rec.get("timestamp")
        if isinstance(t, int) and not isinstance(t, bool):
            newest = max(newest, t // 1000 if t > 10**11 else t)  # conda stores ms since 2019
    return newest


# --------------------------------------------------------------------------- the document


def _conda_component(record: dict[str, Any], wrapped: dict[str, Any] | None) -> Any:
    from cyclonedx.contrib.license.factories import LicenseFactory  # lazy: see above
    from cyclonedx.model import HashAlgorithm, HashType, Property  # lazy: see above
    from cyclonedx.model.component import Component, ComponentType  # lazy: see above
    from packageurl import PackageURL  # lazy: see above

    name, version, build = str(record["name"]), str(record["version"]), str(record.get("build") or "")
    fn = str(record.get("fn") or record.get("url") or "")
    qualifiers = {"build": build, "subdir": str(record.get("subdir") or ""),
                  "type": "tar.bz2" if fn.endswith(".tar.bz2") else "conda"}
    purl = PackageURL("conda", _channel_name(record), name, version, {k: v for k, v in qualifiers.items() if v})
    hashes = [HashType(alg=alg, content=str(record[key]).lower())
              for alg, key in ((HashAlgorithm.SHA_256, "sha256"), (HashAlgorithm.MD5, "md5")) if record.get(key)]
    lic = str(record.get("license") or "").strip()
    props = [Property(name=f"{PROPERTY_NS}:kind", value="conda")]
    comp = Component(type=ComponentType.LIBRARY, name=name, version=version, purl=purl, bom_ref=purl.to_string(),
                     hashes=hashes, licenses=[LicenseFactory().make_from_string(lic)] if lic else None,
                     properties=props)
    if wrapped is not None:
        comp.pedigree = _pedigree(wrapped)
        comp.properties.add(Property(name=f"{PROPERTY_NS}:wrapped_from", value=str(wrapped.get("wrapped_from"))))
    return comp


def _pedigree(wrapped: dict[str, Any]) -> Any:
    """Where a wrapped package came from: the wheel (with its sha256), or the folder and its commit."""
    from cyclonedx.model import HashAlgorithm, HashType, Property, XsUri  # lazy: see above
    from cyclonedx.model.component import Commit, Component, ComponentType, Pedigree  # lazy: see above
    from packageurl import PackageURL  # lazy: see above

    source = str(wrapped.get("wrapped_from") or "source")
    sha = wrapped.get("sha256")
    hashes = [HashType(alg=HashAlgorithm.SHA_256, content=sha)] if isinstance(sha, str) and len(sha) == 64 else []
    props = [Property(name=f"{PROPERTY_NS}:{k}", value=str(wrapped[k]))
             for k in ("source_tree_sha256", "source_url") if wrapped.get(k)]
    purl = None
    if source.endswith(".whl"):
        try:
            wname, wver, _, _ = parse_wheel_filename(source)
            purl = PackageURL("pypi", None, str(wname), str(wver))
        except ValueError:
            pass
    ancestor = Component(type=ComponentType.LIBRARY, name=source, hashes=hashes, purl=purl, properties=props,
                         bom_ref=f"source:{source}:{sha or wrapped.get('source_tree_sha256') or ''}")
    commit = wrapped.get("source_commit")
    url = wrapped.get("source_url")
    commits = [Commit(uid=str(commit), url=XsUri(strip_credentials(str(url))) if url else None)] if commit else None
    return Pedigree(ancestors=[ancestor], commits=commits)


def _pip_component(d: PipDist) -> Any:
    from cyclonedx.contrib.license.factories import LicenseFactory  # lazy: see above
    from cyclonedx.model import HashAlgorithm, HashType, Property  # lazy: see above
    from cyclonedx.model.component import Component, ComponentType  # lazy: see above
    from packageurl import PackageURL  # lazy: see above

    purl = PackageURL("pypi", None, d.name, d.version)
    return Component(type=ComponentType.LIBRARY, name=d.name, version=d.version, purl=purl,
                     bom_ref=purl.to_string(),
                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=d.sha256.lower())] if d.sha256 else None,
                     licenses=[LicenseFactory().make_from_string(d.license)] if d.license else None,
                     properties=[Property(name=f"{PROPERTY_NS}:kind", value="pip")])


def _conda_components(env: Env) -> list[Any]:
    """One component per conda package."""
    return [_conda_component(rec, _wrapped(env, rec)) for _, rec in sorted(env.records.items())]


def env_bom(prefix: Path, *, timestamp: int | None = None, lock_hashes: dict[str, str] | None = None,
            records: RawRecords | None = None, linked: Sequence[Any] | None = None) -> Any:
    """The cyclonedx `Bom` of the env at `prefix` (more metadata properties: `add_properties`).
    `records` are the env's conda-meta records already read (pack's scan), so they are not parsed again;
    `linked`: the RepoDataRecords rattler has just linked into `prefix` (build), see env.linkview."""
    from cyclonedx.model.bom import Bom  # lazy: see above
    from cyclonedx.model.component import Component, ComponentType  # lazy: see above

    env = Env(prefix) if linked is None else LinkedEnv(prefix, linked)
    if records is not None:
        env.use_records(records)
    marker = env.marker
    comps = [*_conda_components(env), *(_pip_component(d) for d in pip_dists(env, lock_hashes))]
    facts: dict[str, str | None] = {k: getattr(marker, k, None) for k in ("stack", "layer", "lock_hash", "platform")}
    when = sbom_timestamp(env) if timestamp is None else timestamp
    top = Component(type=ComponentType.APPLICATION, bom_ref="condastack-env",
                    name="/".join(str(v) for v in (facts["stack"], facts["layer"]) if v) or env.prefix.name,
                    version=str(facts["lock_hash"] or "")[:12] or None)
    bom = Bom(components=comps)
    bom.metadata.component = top
    bom.metadata.timestamp = datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc)
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="condastack",
                                                version=__version__))
    add_properties(bom, facts)
    bom.register_dependency(top, comps)
    return bom


def add_properties(bom: Any, facts: dict[str, str | None]) -> None:
    """`condastack:KEY` metadata properties (the empty ones are left out)."""
    from cyclonedx.model import Property  # lazy: see above

    for k, v in sorted(facts.items()):
        if v:
            bom.metadata.properties.add(Property(name=f"{PROPERTY_NS}:{k}", value=str(v)))


def bom_text(bom: Any) -> str:
    """The Bom as CycloneDX JSON, with a serial number derived from its content.

    Not schema-checked here: importing jsonschema's format checkers costs ~1 s (its IRI grammar is compiled
    at import), paid by every build and pack. What enters the document is checked on the way in instead
    (package records by the path gate, digests as hex), the suite validates every document it makes, and
    documents read from archives are validated (`validate_sbom`)."""
    from cyclonedx.output.json import JsonV1Dot6  # lazy: see above

    bom.serial_number = _SERIAL_NS  # a fixed placeholder while the content is hashed
    draft = JsonV1Dot6(bom).output_as_string(indent=1)
    bom.serial_number = uuid.uuid5(_SERIAL_NS, draft)
    return JsonV1Dot6(bom).output_as_string(indent=1) + "\n"


def validate_sbom(text: str, where: str) -> None:
    """Refuse a document that is not valid CycloneDX JSON of the version it claims (1.5 or 1.6)."""
    from cyclonedx.schema import SchemaVersion  # lazy: see above
    from cyclonedx.validation.json import JsonStrictValidator  # lazy: see above

    try:
        claimed = json.loads(text).get("specVersion")
    except (ValueError, AttributeError):
        raise CondastackError(f"{where}: not JSON, so not a CycloneDX SBOM.") from None
    versions = {"1.5": SchemaVersion.V1_5, "1.6": SchemaVersion.V1_6}
    if claimed not in versions:
        raise CondastackError(f"{where}: CycloneDX specVersion {claimed!r}; condastack reads 1.5 and 1.6.")
    error = JsonStrictValidator(versions[claimed]).validate_str(text)
    if error is not None:
        raise CondastackError(f"{where}: not valid CycloneDX {claimed}: {str(error).splitlines()[0]}")


def env_sbom_text(prefix: Path, *, timestamp: int | None = None, lock_hashes: dict[str, str] | None = None,
                  linked: Sequence[Any] | None = None) -> str:
    """The SBOM of the env at `prefix` as CycloneDX JSON text (see the module docstring)."""
    return bom_text(env_bom(prefix, timestamp=timestamp, lock_hashes=lock_hashes, linked=linked))


def sbom_bytes(prefix: Path, **kw: Any) -> bytes:
    """The SBOM of an env as bytes, for writers that embed it (the SIF descriptor, the OCI blob)."""
    return env_sbom_text(prefix, **kw).encode()


def write_env_sbom(prefix: Path, *, lock_hashes: dict[str, str] | None = None,
                   linked: Sequence[Any] | None = None) -> Path:
    """Write the env's SBOM to `conda-meta/condastack.cdx` inside it (atomically); `linked`: see env_bom."""
    path = Path(prefix) / SBOM_FILE
    atomic_write_text(path, env_sbom_text(prefix, lock_hashes=lock_hashes, linked=linked))
    return path


__all__ = ["SPEC_VERSION", "PipDist", "add_properties", "bom_text", "env_bom", "env_sbom_text", "pip_dists",
           "sbom_bytes", "sbom_timestamp", "validate_sbom", "write_env_sbom"]
