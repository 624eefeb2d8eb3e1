"""Activation of an installed env: Lmod (Lua) and Tcl modulefiles, activate.sh/deactivate.sh.

All of them express the same thing: the env's bin first on PATH, CONDA_PREFIX,
the env's own variables (`conda-meta/state` env_vars, as `conda env config
vars` writes them) and the packages' `etc/conda/activate.d/*.sh` scripts.
Module systems run those scripts with `source_sh`/`source-sh`, which records
what they change so that `module unload` undoes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from condastack.core import quoting
from condastack.core.access import SHARED, Access, apply_file, make_folders
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_write_text
from condastack.core.version import __version__
from condastack.env.prefix import Env, EnvMarker, read_env_vars


@dataclass
class EnvInfo:
    prefix: Path  # absolute, not symlink-resolved: sites reach shared file systems through links
    lock_hash: str | None = None
    layer: str | None = None
    stack: str | None = None
    platform: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    activate_scripts: list[Path] = field(default_factory=list)
    deactivate_scripts: list[Path] = field(default_factory=list)

    def title(self) -> str:
        what = f"layer {self.layer} of stack {self.stack}" if self.layer else f"conda env {self.prefix}"
        return what + (f", lock {self.lock_hash}" if self.lock_hash else "")


@dataclass
class ModuleFiles:
    lua: Path
    tcl: Path


def read_env_info(prefix: Path, *, final_prefix: Path | None = None) -> EnvInfo:
    """What activation needs from the env at `prefix` (scripts named at `final_prefix`)."""
    prefix = Path(os.path.abspath(prefix))
    final = Path(os.path.abspath(final_prefix)) if final_prefix else prefix
    env = Env(prefix)
    env.require_conda_env(" Pass the prefix of an env made by `condastack install`, `unpack` or `build`.")
    info = EnvInfo(prefix=final)
    marker = EnvMarker.read(prefix)  # typed: a field of the wrong type exits 1 naming it
    if marker is not None:
        info.lock_hash, info.layer, info.stack, info.platform = (
            marker.lock_hash, marker.layer, marker.stack, marker.platform)
    info.env_vars.update(read_env_vars(prefix, strict=True))
    for kind, out in (("activate.d", info.activate_scripts), ("deactivate.d", info.deactivate_scripts)):
        folder = prefix / "etc" / "conda" / kind
        if folder.is_dir():
            out += [final / "etc" / "conda" / kind / p.name for p in sorted(folder.glob("*.sh"))]
    return info


# --------------------------------------------------------------------------- modulefiles


_lua_str = quoting.lua
_tcl_str = quoting.tcl
_mv = quoting.module_value


def _help_text(info: EnvInfo, name: str, version: str) -> list[str]:
    lines = [
        f"{name}/{version}: {info.title()}",
        f"prefix: {info.prefix}",
        f"lock sha256: {info.lock_hash or 'unknown (env not built by condastack)'}",
        "Loading puts the env's bin first on PATH and sets CONDA_PREFIX;",
        f"check a node first with: condastack doctor --prefix {info.prefix}",
    ]
    return lines


def render_lua(info: EnvInfo, name: str, version: str) -> str:
    p = _mv(str(info.prefix), "prefix")
    out = [f"-- Lmod modulefile written by condastack {__version__}; regenerate with `condastack module`.",
           f"whatis({_lua_str('Name: ' + name)})",
           f"whatis({_lua_str('Version: ' + version)})",
           f"whatis({_lua_str('Description: ' + info.title())})",
           f"whatis({_lua_str('Lock: ' + (info.lock_hash or 'unknown'))})",
           f"whatis({_lua_str('Prefix: ' + p)})",
           "help(" + _lua_str("\n".join(_help_text(info, name, version)) + "\n") + ")",
           'family("conda_env")',  # one conda env at a time; Lmod swaps on load
           f"local prefix = {_lua_str(p)}",
           'setenv("CONDA_PREFIX", prefix)',
           f'setenv("CONDA_DEFAULT_ENV", {_lua_str(name)})',
           f'setenv("CONDASTACK_LOCK_HASH", {_lua_str(info.lock_hash or "")})',
           'prepend_path("PATH", pathJoin(prefix, "bin"))']
    out += [f"setenv({_lua_str(quoting.check_name('variable', k))}, {_lua_str(_mv(v, 'variable ' + k))})"
            for k, v in info.env_vars.items()]
    # Lmod runs each script now (CONDA_PREFIX is already set) and reverts its changes on unload.
    out += [f'source_sh("bash", {_lua_str(str(s))})' for s in info.activate_scripts]
    return "\n".join(out) + "\n"


def render_tcl(info: EnvInfo, name: str, version: str) -> str:
    p = _mv(str(info.prefix), "prefix")
    help_lines = "\n".join(f"    puts stderr {_tcl_str(line)}" for line in _help_text(info, name, version))
    out = ["#%Module1.0",
           f"## Environment Modules modulefile written by condastack {__version__}.",
           f"module-whatis {_tcl_str(name + '/' + version + ': ' + info.title())}",
           "proc ModulesHelp { } {", help_lines, "}",
           f"set prefix {_tcl_str(p)}",
           "setenv CONDA_PREFIX $prefix",
           f"setenv CONDA_DEFAULT_ENV {_tcl_str(name)}",
           f"setenv CONDASTACK_LOCK_HASH {_tcl_str(info.lock_hash or '')}",
           "prepend-path PATH $prefix/bin"]
    out += [f"setenv {quoting.check_name('variable', k)} {_tcl_str(_mv(v, 'variable ' + k))}"
            for k, v in info.env_vars.items()]
    # source-sh needs Environment Modules >= 4.6; it also reverts the script's changes on unload.
    out += [f"source-sh bash {_tcl_str(str(s))}" for s in info.activate_scripts]
    return "\n".join(out) + "\n"


def write_modulefiles(prefix: Path, name: str, version: str, outdir: Path, access: Access = SHARED) -> ModuleFiles:
    """Write OUTDIR/NAME/VERSION.lua (Lmod) and OUTDIR/NAME/VERSION (Tcl) for the env at PREFIX.

    Both live in one tree: Lmod prefers the .lua file, Environment Modules
    ignores files without its `#%Module` header.
    """
    parts = name.split("/")
    if not all(quoting.is_name("module", x) for x in parts) or not quoting.is_name("module", version):
        raise CondastackError(
            f"module name {name!r} or version {version!r} is not valid: use letters, digits, '.', '_', '-', "
            "'+' and '/' between name parts (e.g. --name verl/app --version 0.5)."
        )
    info = read_env_info(prefix)
    folder = Path(outdir).joinpath(*parts)
    lua = folder / f"{version}.lua"
    tcl = folder / version
    make_folders(folder, access)
    for path, text in ((lua, render_lua(info, name, version)), (tcl, render_tcl(info, name, version))):
        atomic_write_text(path, text)
        apply_file(path, access)
    return ModuleFiles(lua=lua, tcl=tcl)


# --------------------------------------------------------------------------- activate.sh


def render_activate_sh(info: EnvInfo) -> str:
    p = _sh_quote(str(info.prefix))
    lines = [
        "# Written by condastack: `. PREFIX/activate.sh` (sh, bash, zsh) activates this env;",
        "# `. PREFIX/deactivate.sh` undoes it.",
        quoting.sh_comment(info.title()),
        'if [ -n "${CONDASTACK_ACTIVE_PREFIX:-}" ] && [ -f "$CONDASTACK_ACTIVE_PREFIX/deactivate.sh" ]; then',
        '    . "$CONDASTACK_ACTIVE_PREFIX/deactivate.sh"',
        "fi",
        f"CONDASTACK_ACTIVE_PREFIX={p}; export CONDASTACK_ACTIVE_PREFIX",
    ]
    sets = {"CONDA_PREFIX": str(info.prefix), "CONDA_DEFAULT_ENV": str(info.prefix),
            "CONDASTACK_LOCK_HASH": info.lock_hash or "", **info.env_vars}
    for k, v in sets.items():
        quoting.check_name("variable", k)
        # Remember whether (and to what) each variable was set, for deactivate.sh.
        lines += [f'if [ -n "${{{k}+x}}" ]; then _CONDASTACK_OLD_{k}="${k}"; export _CONDASTACK_OLD_{k}; fi',
                  f"{k}={quoting.sh(v, 'variable ' + k)}; export {k}"]
    lines += [f'PATH={p}/bin"${{PATH:+:$PATH}}"; export PATH']
    for s in info.activate_scripts:
        lines.append(f'if [ -f {_sh_quote(str(s))} ]; then . {_sh_quote(str(s))}; fi')
    lines.append("hash -r 2>/dev/null || true")
    return "\n".join(lines) + "\n"


def render_deactivate_sh(info: EnvInfo) -> str:
    p = _sh_quote(str(info.prefix))
    lines = ["# Written by condastack: undoes `. PREFIX/activate.sh`.",
             f'if [ "${{CONDASTACK_ACTIVE_PREFIX:-}}" = {p} ]; then']
    for s in info.deactivate_scripts:
        lines.append(f'    if [ -f {_sh_quote(str(s))} ]; then . {_sh_quote(str(s))}; fi')
    # Drop only our bin from PATH, so PATH edits made after activation survive.
    lines += ['    _cs_new=""; _cs_ifs="$IFS"; IFS=:',
              '    for _cs_d in $PATH; do',
              f'        if [ "$_cs_d" != {p}/bin ]; then _cs_new="${{_cs_new:+$_cs_new:}}$_cs_d"; fi',
              "    done",
              '    IFS="$_cs_ifs"; PATH="$_cs_new"; export PATH; unset _cs_new _cs_ifs _cs_d']
    keys = [quoting.check_name("variable", k)
            for k in ("CONDA_PREFIX", "CONDA_DEFAULT_ENV", "CONDASTACK_LOCK_HASH", *info.env_vars)]
    for k in keys:
        lines += [f'    if [ -n "${{_CONDASTACK_OLD_{k}+x}}" ]; then {k}="$_CONDASTACK_OLD_{k}"; export {k}; '
                  f"unset _CONDASTACK_OLD_{k}; else unset {k}; fi"]
    lines += ["    unset CONDASTACK_ACTIVE_PREFIX", "    hash -r 2>/dev/null || true", "fi"]
    return "\n".join(lines) + "\n"


_sh_quote = quoting.sh


ACTIVATION_FILES = ("activate.sh", "deactivate.sh")  # written by `install` at the top of the prefix


def write_activation_scripts(env_dir: Path, *, final_prefix: Path | None = None) -> tuple[Path, Path]:
    """Write activate.sh and deactivate.sh into `env_dir`, naming paths at `final_prefix`."""
    info = read_env_info(env_dir, final_prefix=final_prefix)
    act, deact = (Path(env_dir) / name for name in ACTIVATION_FILES)
    atomic_write_text(act, render_activate_sh(info))
    atomic_write_text(deact, render_deactivate_sh(info))
    return act, deact
