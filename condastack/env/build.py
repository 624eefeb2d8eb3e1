"""Environments from lockfiles: `condastack build LAYER`.

The conda part is linked by py-rattler from a shared package cache
(`$CONDASTACK_PKGS`, laid out like conda's pkgs dir: `<file>.conda` archives
next to the extracted `<name>-<version>-<build>/` folders rattler links from).
py-rattler does not check sha256 for file:// channels, so every archive is
hashed here against the lock before rattler sees it, and rattler is handed
the verified local archive instead of the channel URL. A verified archive is
not hashed again while its size, mtime, ctime and inode stay the same.

Atomicity: the environment is built in a sibling temporary folder and swapped
into place. Relocation must still write the FINAL path into text and binary
placeholders, so rattler links into the temporary folder with
`alternative_target_prefix=<final>`; pip runs with the temporary env's python
but is told the final interpreter path for the shebangs it writes. Nothing of
the temporary path is left inside the files, and a killed build leaves only a
`.condastack-tmp-*` sibling, removed by the next build.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condastack.core.errors import CondastackError
from condastack.core.fs import clean_stale_temporaries, file_lock, make_tempdir, remove_path, swap_dir
from condastack.core.layout import env_prefix, lockfile_path, pkgs_dir
from condastack.core.names import canonical
from condastack.core.platforms import host_platform
from condastack.core.progress import Meter
from condastack.env.bytecode import compile_noarch_python
from condastack.env.fetch import fetch_archives, fetch_wheels
from condastack.env.locked import LockedEnv, read_locked_env
from condastack.env.pip import install_wheels
from condastack.env.pkgcache import Checker, discard, stamp
from condastack.env.prefix import (
    CREATED_BY,
    MARKER,
    Env,
    EnvMarker,
    read_env_vars,
    read_marker,
    record_file_name,
    write_env_vars,
    write_marker,
)
from condastack.env.sbom import write_env_sbom
from condastack.env.vcswheel import record_origin, vcs_wheels
from condastack.lock.conda_solve import with_url
from condastack.lock.layered import check_fresh, lock_variables
from condastack.lock.vcs import source_env
from condastack.spec.stack import load_stack
from condastack.spec.vcsreq import credential_urls

INSTALLERS = ("auto", "rattler", "micromamba")
# Names other modules (and tests) import from here.
__all__ = ["BuildResult", "build_layer", "build_prefix", "pkgs_dir", "host_platform"]

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    prefix: Path
    layer: str | None
    action: str  # "created", "rebuilt" (lock changed or --force) or "unchanged"
    lock_hash: str
    installer: str
    conda_packages: int = 0
    pip_packages: int = 0
    fetched: list[str] = field(default_factory=list)  # archive/wheel file names fetched by this build
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"prefix": str(self.prefix), "layer": self.layer, "action": self.action, "lock_hash": self.lock_hash,
                "installer": self.installer, "conda_packages": self.conda_packages,
                "pip_packages": self.pip_packages, "fetched": self.fetched, "seconds": round(self.seconds, 3)}


# --------------------------------------------------------------------------- entry points


def build_layer(root: Path, layer: str, *, prefix: Path | None = None, offline: bool = False,
                installer: str = "auto", force: bool = False, frozen: bool = False,
                progress: Progress | None = None, meter: Meter | None = None) -> BuildResult:
    """Build `envs/<layer>` (or `prefix`) from `lock/<layer>.conda-lock.yml`.

    A lock whose layer inputs changed since it was written is refused (LockStale)
    unless `frozen`, which builds the lock as it is (pixi's --frozen).
    """
    root = Path(root).absolute()
    lockfile = lockfile_path(root, layer)

    @functools.cache
    def stack() -> Any:  # loaded once, and only when needed (the no-op path never reads it)

        return load_stack(root)

    if not lockfile.is_file():
        stack().layer(layer)  # an unknown layer is reported as such
        raise CondastackError(f"{lockfile}: layer '{layer}' has no lock. Run `condastack lock {layer}` first.")
    if not frozen:

        check_fresh(load_stack(root, parse_specs=False), layer, host_platform())

    def stack_name() -> str:
        return stack().name

    def channel_urls() -> list[str]:
        git = credential_urls([s for p in stack().platforms for s in stack().specs_for(layer, p)[1]])
        return stack().channels_for(layer) + stack().pip_indexes_for(layer) + git

    def pip_env() -> dict[str, str]:  # where pip finds the build requirements of a git package
        opts = stack().pip_options_for(layer)
        return source_env(stack().pip_indexes_for(layer), opts.find_links, opts.pre)

    return build_prefix(lockfile, prefix or env_prefix(root, layer), layer=layer, stack=stack_name,
                        offline=offline, installer=installer, force=force, progress=progress,
                        credentials=channel_urls, meter=meter, pip_env=pip_env)


def _installer_for(installer: str, env: LockedEnv, lockfile: Path) -> str:
    """The installer to use; micromamba would hand pip a git URL unchecked, so git packages need rattler."""
    chosen = choose_installer(installer)
    if chosen == "micromamba" and any(w.vcs for w in env.pip):
        if installer == "micromamba":
            git = ", ".join(w.name for w in env.pip if w.vcs)
            raise CondastackError(f"{lockfile}: the lock has git packages ({git}), which condastack builds itself; "
                                  "use --installer rattler.")
        chosen = "rattler"
    return chosen


def build_prefix(lockfile: Path, prefix: Path, *, layer: str | None = None, stack: str | Callable[[], str] = "",
                 offline: bool = False, installer: str = "auto", force: bool = False,
                 progress: Progress | None = None,
                 credentials: list[str] | tuple[str, ...] | Callable[[], list[str]] = (),
                 meter: Meter | None = None,
                 pip_env: dict[str, str] | Callable[[], dict[str, str]] | None = None) -> BuildResult:
    """Build the environment of a conda-lock file at `prefix` for this machine's platform.

    A no-op when `prefix` already holds this lock intact. `stack` may be a
    callable, so that the no-op path never loads the stack file. `credentials`:
    channel/index URLs with credentials (user:password@ or /t/<token>/), which the
    lock leaves out; a download whose URL falls under one of them uses them.
    `pip_env`: pip's settings for a git package's build requirements (the layer's
    indexes); by default the user's own pip configuration.
    """

    t0 = time.monotonic()
    say = progress or (lambda _msg: None)
    if installer not in INSTALLERS:
        raise CondastackError(f"unknown installer '{installer}' (choose one of {', '.join(INSTALLERS)}).")
    lockfile, prefix = Path(lockfile).absolute(), Path(prefix).absolute()
    if prefix.is_symlink():
        raise CondastackError(f"{prefix}: --prefix is a symlink; give the real folder (or a new path).")
    env = read_locked_env(lockfile, host_platform())
    lock_hash = env.lock_hash()
    variables = lock_variables(lockfile)
    chosen = _installer_for(installer, env, lockfile)

    prefix.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(prefix.parent / f".{prefix.name}.condastack-build.lock"):
        clean_stale_temporaries(prefix.parent, prefix.name)
        marker = read_marker(prefix)
        existed = prefix.exists() or prefix.is_symlink()
        if existed:
            if marker is None and not force and not _is_empty_dir(prefix):
                raise CondastackError(
                    f"{prefix}: this folder exists and was not made by condastack (no {MARKER}). "
                    "Choose another --prefix, or pass --force to replace it."
                )
            if marker is not None and marker.lock_hash == lock_hash and not force and is_intact(prefix, env):
                if read_env_vars(prefix) != variables:
                    write_env_vars(prefix, variables)  # only `variables:` changed: no relink needed
                return BuildResult(prefix, layer, "unchanged", lock_hash, chosen, len(env.conda), len(env.pip),
                                   seconds=time.monotonic() - t0)

        res = BuildResult(prefix, layer, "rebuilt" if existed and not _is_empty_dir(prefix) else "created",
                          lock_hash, chosen, len(env.conda), len(env.pip))
        stack_name = stack() if callable(stack) else stack
        creds = list(credentials() if callable(credentials) else credentials)
        tmp = make_tempdir(prefix.parent, prefix.name)
        built: dict[str, str] = {}  # a git package's wheel sha256, known once built
        _umask_mode(tmp)
        try:
            if chosen == "micromamba":
                _install_micromamba(lockfile, tmp, prefix)
            else:
                say(f"checking {len(env.conda)} conda packages against the lock")
                archives = fetch_archives(env.conda, offline=offline, fetched=res.fetched, credentials=creds,
                                          meter=meter, source=lockfile)
                say(f"linking {len(env.conda)} conda packages")
                _install_rattler(env.conda, archives, tmp, prefix, meter)
                compile_noarch_python(tmp, prefix, env.conda)  # conda does this when linking; rattler does not
                if env.pip:
                    say(f"installing {len(env.pip)} pip packages")
                    built = _install_pip(env.pip, tmp, prefix, offline=offline, fetched=res.fetched,
                                         credentials=creds, pip_env=pip_env)
            write_marker(tmp, EnvMarker(layer=layer, stack=stack_name, platform=env.platform, lock_hash=lock_hash,
                                        lockfile=str(lockfile), created_by=CREATED_BY))
            write_env_vars(tmp, variables)
            write_env_sbom(tmp, lock_hashes={canonical(w.name): w.sha256 for w in env.pip if w.sha256} | built,
                           linked=env.conda if chosen == "rattler" else None)
            swap_dir(tmp, prefix)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _no_space(prefix, layer) from None
            raise CondastackError(f"{prefix}: building the environment failed: {e}. Nothing was changed at "
                                  f"{prefix}.") from None
        finally:
            remove_path(tmp)
    res.seconds = time.monotonic() - t0
    return res


def _install_pip(locked: tuple, tmp: Path, prefix: Path, *, offline: bool, fetched: list[str],
                 credentials: list[str],
                 pip_env: dict[str, str] | Callable[[], dict[str, str]] | None) -> dict[str, str]:
    """The lock's wheels, fetched, and its git packages, built once from their commits, installed by pip;
    returns the git packages' wheel sha256s (canonical name -> sha256)."""
    plain = [w for w in locked if not w.vcs]
    git = [w for w in locked if w.vcs]
    paths = fetch_wheels(plain, offline=offline, fetched=fetched, credentials=credentials)
    built: list = []
    if git:
        if not (tmp / "bin" / "python").exists():
            raise CondastackError(f"{prefix}: the lock has pip packages ({', '.join(w.name for w in git)}) but no "
                                  "python in its conda part. Add python and pip to the layer and re-lock.")
        penv = (pip_env() if callable(pip_env) else pip_env) if pip_env is not None else dict(os.environ)
        built, built_paths = vcs_wheels(git, tmp / "bin" / "python", offline=offline, fetched=fetched,
                                        credentials=credentials, pip_env=penv)
        paths += built_paths
    install_wheels(tmp, prefix, plain + built, paths)
    if git:
        record_origin(tmp, {canonical(w.name): w.url for w in git})
    return {canonical(w.name): w.sha256 for w in built}


def choose_installer(installer: str) -> str:
    if installer == "auto":
        return "micromamba" if shutil.which("micromamba") else "rattler"
    if installer == "micromamba" and not shutil.which("micromamba"):
        raise CondastackError(
            "--installer micromamba: no `micromamba` on PATH. Install micromamba (mamba >= 2, which has "
            "--relocate-prefix) or use --installer rattler (the default when micromamba is absent)."
        )
    return installer


def _no_space(prefix: Path, layer: str | None) -> CondastackError:
    return CondastackError(
        f"{prefix}: no space left on the device while building {('layer ' + repr(layer)) if layer else 'the env'}. "
        f"The temporary folder was removed and {prefix} was not changed. Free space on "
        f"{prefix.parent} (or point --prefix elsewhere) and run the build again."
    )


def _umask_mode(path: Path) -> None:
    """mkdtemp makes 0700 folders; an environment gets the usual umask-based mode."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o777 & ~mask)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


# --------------------------------------------------------------------------- marker and intactness


def is_intact(prefix: Path, env: Any) -> bool:
    """A quick check that an env still holds what its lock says (records and dist-infos exist).

    Deliberately cheap (no file hashing): it decides only whether a rebuild is needed.
    `condastack verify` is the thorough check.
    """
    on_disk = Env(prefix)
    if not on_disk.is_conda_env():
        return False
    want = {record_file_name(r.name.normalized, str(r.version), r.build) for r in env.conda}
    if set(on_disk.record_names()) != want:
        return False
    if env.pip:
        dists = on_disk.installed_dists()
        if any(dists.get(canonical(w.name)) != w.version for w in env.pip):
            return False
    return True


# --------------------------------------------------------------------------- conda archives


def _extracted_dir(record: Any) -> Path:
    return pkgs_dir() / f"{record.name.normalized}-{record.version}-{record.build}"


def _extracted_matches(record: Any) -> bool:
    """Whether rattler's cache already holds this exact package (so it will not fetch it).

    Reads rattler's `<name-version-build>.lock` (a revision then the sha256); any
    surprise in that layout answers False, which only costs the slower safe path.
    """
    key = f"{record.name.normalized}-{record.version}-{record.build}"
    try:
        head = (pkgs_dir() / f"{key}.lock").read_bytes()[:40]
    except OSError:
        return False
    return len(head) == 40 and head[8:] == bytes(record.sha256) and (pkgs_dir() / key / "info" / "index.json").is_file()


class _LinkWatch(threading.Thread):
    """Reports linked packages while rattler installs: it writes a package's conda-meta record
    once the package is linked (rattler's own progress bar cannot be read from Python)."""

    def __init__(self, prefix: Path, total: int, meter: Meter) -> None:
        super().__init__(daemon=True)
        self.meta, self.total, self.meter = prefix / "conda-meta", total, meter
        self.stop = threading.Event()

    def count(self) -> int:
        try:
            return sum(1 for n in os.listdir(self.meta) if n.endswith(".json"))
        except OSError:
            return 0

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.meter("link", self.count(), self.total, "packages")

    def finish(self) -> None:
        self.stop.set()
        self.join()
        self.meter("link", self.count(), self.total, "packages")


def _install_rattler(records: tuple | list, archives: list[Path], tmp: Path, final: Path,
                     meter: Meter | None = None) -> None:
    """Link the packages into `tmp`. Extracted cache folders are checked while rattler links from
    them; if one was edited, it is removed and the env is linked again (it is then re-extracted)."""
    reused = {id(r) for r in records if _extracted_matches(r)}
    checker = Checker([_extracted_dir(r) for r in records if id(r) in reused])
    checker.start()
    try:
        _link(records, archives, tmp, final, meter, reused)
    except BaseException:
        if not checker.edited():
            raise
    edited = checker.edited()
    if edited:
        for folder in edited:
            discard(folder)
        remove_path(tmp)
        tmp.mkdir()
        _umask_mode(tmp)
        _link(records, archives, tmp, final, meter, {id(r) for r in records if _extracted_matches(r)})


def _link(records: tuple | list, archives: list[Path], tmp: Path, final: Path, meter: Meter | None,
          reused: set[int]) -> None:
    import rattler  # lazy: native, ~0.2 s


    # rattler gets our verified archive as the URL of every package it would have to
    # fetch; packages already extracted in its cache keep their locked URL.
    local = [r if id(r) in reused else with_url(r, a.as_uri()) for r, a in zip(records, archives, strict=False)]
    watch = _LinkWatch(tmp, len(records), meter) if meter is not None else None
    if watch is not None:
        watch.start()
    try:
        asyncio.run(rattler.install(local, str(tmp), cache_dir=pkgs_dir(),
                                    installed_packages=[], alternative_target_prefix=str(final), show_progress=False))
    except Exception as e:  # rattler's install errors are one exception type per cause
        text = str(e)
        if "No space left on device" in text or "os error 28" in text:
            raise OSError(errno.ENOSPC, text) from None
        raise CondastackError(f"{final}: linking the conda packages failed: {text}. Nothing was changed at "
                              f"{final}.") from None
    finally:
        if watch is not None:
            watch.finish()
    fresh: list[Path] = []
    for orig, used in zip(records, local, strict=False):
        if used is not orig:
            fresh.append(_extracted_dir(orig))
            _restore_origin(Env(tmp).record_path(orig.name.normalized, str(orig.version), orig.build), used, orig)
    stamp(*fresh)  # just extracted from the verified archives: one `find` lists them all


def _restore_origin(meta_file: Path, used: Any, orig: Any) -> None:
    """conda-meta should name the locked URL, not our cache (a textual edit: these files reach 10+ MB)."""
    text = meta_file.read_text()
    patched = text
    for key, a, b in (("url", used.url, orig.url), ("channel", used.channel, orig.channel)):
        patched = patched.replace(f'"{key}": {json.dumps(a, ensure_ascii=False)}',
                                  f'"{key}": {json.dumps(b, ensure_ascii=False)}', 1)
    data = json.loads(patched) if patched != text else None
    if data is None or data.get("url") != orig.url:  # unexpected formatting: do it the slow way
        data = json.loads(text)
        data["url"], data["channel"] = orig.url, orig.channel
        patched = json.dumps(data, indent=2)
    meta_file.write_text(patched)


# --------------------------------------------------------------------------- pip


# --------------------------------------------------------------------------- micromamba


def _install_micromamba(lockfile: Path, tmp: Path, final: Path) -> None:
    """`micromamba create -y -p TMP --relocate-prefix FINAL -f <layer>.conda-lock.yml`.

    micromamba reads the conda-lock file itself (conda and pip parts) and checks
    the archives' hashes; its package cache is ours ($CONDA_PKGS_DIRS).
    """
    mm = shutil.which("micromamba")
    assert mm is not None  # choose_installer checked
    helptext = subprocess.run([mm, "create", "--help"], capture_output=True, text=True).stdout
    if "--relocate-prefix" not in helptext:
        raise CondastackError(f"{mm}: this micromamba cannot install into a temporary folder for a final path "
                              "(no --relocate-prefix; needs mamba 2). Use --installer rattler.")
    tmp.rmdir()  # micromamba wants to create the prefix itself
    env = dict(os.environ, CONDA_PKGS_DIRS=str(pkgs_dir()))
    p = subprocess.run([mm, "create", "-y", "-p", str(tmp), "--relocate-prefix", str(final), "-f", str(lockfile)],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        out = (p.stdout + p.stderr).strip()
        if "No space left on device" in out:
            raise OSError(errno.ENOSPC, out)
        raise CondastackError(f"{final}: micromamba failed: {' | '.join(out.splitlines()[-6:])}")

