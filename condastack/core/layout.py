"""Where things live: every path of a project and of condastack's user caches.

A project folder holds

    environments/stack.yml                  the stack file (and the layer files it names)
    lock/<layer>.conda-lock.yml             the unified lockfile of a layer
    lock/<layer>[.<platform>].lock          its @EXPLICIT file (no platform for the default one)
    lock/<layer>[.<platform>].pip.txt       its pip requirements
    lock/<layer>.records.json               full records (depends, constrains) for child solves
    envs/<layer>                            the built environment
    pack/<layer>-<platform>.<ext>           archives (+ .sha256, .manifest.json, .cdx.json, and with
                                            `pack --sign` .sig and .manifest.json.sig)
    pack/<layer>-over-<parent>-<platform>.<ext>  delta archives (what <layer> adds to <parent>)

and the user caches are $CONDASTACK_CACHE (default ~/.cache/condastack), the
package cache $CONDASTACK_PKGS (default ~/.cache/condastack/pkgs) and the wheel
cache and the git requirement cache (`vcs/`) inside it. Nothing else in condastack spells these paths.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

STACK_FILE = Path("environments") / "stack.yml"
LOCK_DIR = "lock"
ENVS_DIR = "envs"
PACK_DIR = "pack"
LOCKFILE_SUFFIX = ".conda-lock.yml"


# --------------------------------------------------------------------------- project


def stack_file(root: Path) -> Path:
    return Path(root) / STACK_FILE


def lock_dir(root: Path) -> Path:
    return Path(root) / LOCK_DIR


def lockfile_path(root: Path, layer: str) -> Path:
    return lock_dir(root) / f"{layer}{LOCKFILE_SUFFIX}"


def records_sidecar_path(lockfile: Path) -> Path:
    """The full records (depends and constrains) of a lockfile: `<layer>.records.json` beside it."""
    lockfile = Path(lockfile)
    stem = lockfile.name.removesuffix(LOCKFILE_SUFFIX).removesuffix(".yml")
    return lockfile.with_name(f"{stem}.records.json")


def lock_mutex(root: Path) -> Path:
    """The flock file that serialises `lock` runs of one project."""
    return lock_dir(root) / ".condastack.lock"


def explicit_path(root: Path, layer: str, platform: str, default_platform: str) -> Path:
    if platform == default_platform:
        return lock_dir(root) / f"{layer}.lock"
    return lock_dir(root) / f"{layer}.{platform}.lock"


def pip_txt_path(root: Path, layer: str, platform: str, default_platform: str) -> Path:
    if platform == default_platform:
        return lock_dir(root) / f"{layer}.pip.txt"
    return lock_dir(root) / f"{layer}.{platform}.pip.txt"


def env_prefix(root: Path, layer: str) -> Path:
    return Path(root) / ENVS_DIR / layer


def pack_dir(root: Path) -> Path:
    return Path(root) / PACK_DIR


def pack_output(root: Path, layer: str, platform: str, suffix: str) -> Path:
    """pack/<layer>-<platform><suffix>, suffix such as ".tar.zst"."""
    return pack_dir(root) / f"{layer}-{platform}{suffix}"


def delta_output(root: Path, layer: str, parent: str, platform: str, suffix: str) -> Path:
    """pack/<layer>-over-<parent>-<platform><suffix>: what `layer`'s env adds to `parent`'s."""
    return pack_dir(root) / f"{layer}-over-{parent}-{platform}{suffix}"


# --------------------------------------------------------------------------- user caches


def _xdg_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))


def cache_root() -> Path:
    """condastack's user cache folder ($CONDASTACK_CACHE, else ~/.cache/condastack)."""
    env = os.environ.get("CONDASTACK_CACHE")
    return Path(env) if env else _xdg_cache() / "condastack"


def pkgs_dir() -> Path:
    """The shared package cache: `$CONDASTACK_PKGS`, default ~/.cache/condastack/pkgs."""
    env = os.environ.get("CONDASTACK_PKGS")
    if env:
        return Path(env).expanduser().absolute()
    return _xdg_cache() / "condastack" / "pkgs"


def wheels_dir() -> Path:
    return pkgs_dir() / "wheels"


# --------------------------------------------------------------------------- archive sidecars

# The sha256 and the manifest always; the CycloneDX SBOM from this version on; the two SSH
# signatures (`ssh-keygen -Y sign` of the archive and of the manifest) only with `pack --sign`.
SIDECAR_SUFFIXES = {"sha256": ".sha256", "manifest": ".manifest.json", "sbom": ".cdx.json",
                    "sig": ".sig", "manifest_sig": ".manifest.json.sig"}
SIGNATURE_SIDECARS = {"sig": "", "manifest_sig": ".manifest.json"}  # signature kind -> suffix of what it signs


def sidecar(archive: Path, kind: str) -> Path:
    """A file written beside an archive, e.g. `ARCHIVE.sha256`, `ARCHIVE.manifest.json`, `ARCHIVE.cdx.json`."""
    archive = Path(archive)
    return archive.with_name(archive.name + SIDECAR_SUFFIXES[kind])


WHITEOUT = ".wh."  # an overlay (OCI, fuse-overlayfs) hides the lower layer's NAME under a `.wh.NAME` entry


def whiteout(rel: str) -> str:
    """The whiteout entry that hides `rel` of a lower layer: `dir/.wh.name`."""
    head, _, name = rel.rpartition("/")
    return f"{head}/{WHITEOUT}{name}" if head else f"{WHITEOUT}{name}"


def sidecars(archive: Path) -> tuple[Path, Path]:
    """(the .sha256, the .manifest.json) of an archive."""
    return sidecar(archive, "sha256"), sidecar(archive, "manifest")


def signed_pairs(archive: Path) -> list[tuple[Path, Path]]:
    """(signed file, its signature) for the archive and its manifest."""
    archive = Path(archive)
    return [(archive.with_name(archive.name + signed), sidecar(archive, kind))
            for kind, signed in SIGNATURE_SIDECARS.items()]


# --------------------------------------------------------------------------- package cache stamps

VERIFIED_DIR = ".verified"  # stamps of checks already made on cached archives and extracted folders


def verified_stamp(cached: Path, suffix: str = "") -> Path:
    """The stamp of a check of a cached archive or extracted folder: `<cache>/.verified/<name><suffix>`."""
    cached = Path(cached)
    return cached.parent / VERIFIED_DIR / f"{cached.name}{suffix}"


# --------------------------------------------------------------------------- the site's policy

SITE_CONFIG = Path(".condastack") / "site.toml"


def site_config_candidates(target: Path) -> list[Path]:
    """Where a site policy for an env or image at `target` may be: `.condastack/site.toml` in each
    folder above it, from the file system root down (the outermost applies first)."""
    parents = list(Path(target).absolute().parents)
    return [p / SITE_CONFIG for p in reversed(parents)]


# --------------------------------------------------------------------------- inside a package

WRAPPED_META_DIR = "share/condastack/wrapped"


def wrapped_meta(name: str) -> str:
    """Prefix-relative path of what `wrap` records about a package's source (wheel, folder, commit)."""
    return f"{WRAPPED_META_DIR}/{name}.json"


# --------------------------------------------------------------------------- git requirements


def vcs_dir() -> Path:
    """Git requirements: each locked URL's source, metadata and built wheels, under the package cache."""
    return pkgs_dir() / "vcs"


def vcs_entry_dir(locked_url: str) -> Path:
    """One git requirement at one commit (`git+URL@<commit>[#subdirectory=…]`, no credentials): its folder."""
    return vcs_dir() / hashlib.sha256(locked_url.encode()).hexdigest()[:32]


def vcs_source_dir(locked_url: str) -> Path:
    """The repository's tree at the locked commit."""
    return vcs_entry_dir(locked_url) / "src"


def vcs_metadata_path(locked_url: str) -> Path:
    """Name, version and requirements read from the source at lock time (JSON)."""
    return vcs_entry_dir(locked_url) / "metadata.json"


def vcs_wheels_dir(locked_url: str) -> Path:
    """Wheels built from the locked commit, each with `<wheel>.sha256` recorded when it was built."""
    return vcs_entry_dir(locked_url) / "wheels"


def vcs_mutex(locked_url: str) -> Path:
    """The flock file that serialises fetching and building one locked URL."""
    return vcs_entry_dir(locked_url) / ".lock"
