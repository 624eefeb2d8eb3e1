"""An environment.yml as users write it, read into specs, pip options, variables and channels.

conda-build selectors (`# [linux and x86_64]`) are evaluated per platform,
quoted versions (`python='3.10'`) are unquoted, `defaults` becomes the
channels conda means by it, and the `pip:` list may hold pip's own option
lines (`--index-url`, `-r requirements.txt`, ...). What cannot be locked
(editable installs, local folders) is refused by name with the fix; a git
requirement is kept as written and resolved to a commit at lock time.
conda-lock stays the authority on what a single conda match spec or pip
requirement means.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from condastack.core.condalock import conda_lock_version, conda_match_spec
from condastack.core.credentials import redact
from condastack.core.errors import StackInvalid
from condastack.core.fs import atomic_write_text
from condastack.core.layout import cache_root
from condastack.core.names import ENV_VAR_NAME
from condastack.core.names import NAMES_FILE as MAPPING_FILE
from condastack.core.version import __version__
from condastack.spec import yamlfile
from condastack.spec.pipreqs import PipOptions, Where, _bad, _pip_line, _PipState, _where

ENV_KEYS = ("name", "channels", "dependencies", "platforms", "pip-repositories", "allow-pypi-requests",
            "category", "variables", "prefix")
# What conda means by `defaults` on Linux and macOS (conda's default_channels).
DEFAULT_CHANNELS = ("https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r")
PYPI_SIMPLE = "https://pypi.org/simple"

# conda-build's selector names, true per platform (conda-build's get_selectors).
SELECTORS: dict[str, frozenset[str]] = {
    "linux-64": frozenset({"linux", "linux64", "unix", "x86", "x86_64"}),
    "linux-aarch64": frozenset({"linux", "aarch64", "unix"}),
    "linux-ppc64le": frozenset({"linux", "ppc64le", "unix"}),
    "osx-64": frozenset({"osx", "osx64", "unix", "x86", "x86_64"}),
    "osx-arm64": frozenset({"osx", "arm64", "unix"}),
    "win-64": frozenset({"win", "win64", "x86", "x86_64"}),
}
SELECTOR_NAMES = frozenset({"linux32", "win32", "s390x", "armv6l", "armv7l"}).union(*SELECTORS.values())
_SELECTOR = re.compile(r"(.+?)\s*(#.*)\[([^\[\]]+)\](?(2)[^\(\)]*)$")  # conda-build's; the spec of `selector`


def selector(line: str) -> str | None:
    """The selector of a line, as conda-build's _SELECTOR finds it (its group 3), in one linear pass.

    The regex backtracks quadratically on a long line with many '#' or '[' (a hostile comment).
    Its match: a '#' after the first character, then the rightmost `[...]` (no brackets inside)
    whose ']' no parenthesis follows on the line.
    """
    h = line.find("#", 1)
    if h < 0:
        return None
    tail = line[h + 1:]
    last_paren = max(tail.rfind("("), tail.rfind(")"))
    close = -1  # the nearest ']' right of the current position, left of which a '[' may open
    for i in range(len(tail) - 1, -1, -1):
        c = tail[i]
        if c == "]":
            close = i if i > last_paren else -1
        elif c == "[":
            if close > i + 1:
                return tail[i + 1:close]
            close = -1
    return None


@dataclass(frozen=True)
class EnvFile:
    """One environment.yml, read for every platform of the stack."""

    path: Path
    channels: tuple[str, ...]
    conda: dict[str, tuple[str, ...]]  # platform -> conda match specs
    pip: dict[str, tuple[str, ...]]  # platform -> pip requirement strings
    pip_options: PipOptions = PipOptions()
    variables: dict[str, str] = field(default_factory=dict)
    pip_repositories: tuple[str, ...] = ()
    includes: tuple[tuple[str, str], ...] = ()  # (requirements/constraints file, sha256)


@dataclass(frozen=True)
class EnvShape:
    """The parts of an environment.yml that need no spec parsing."""

    channels: tuple[str, ...]
    pip_repositories: tuple[str, ...] = ()
    variables: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- selectors


def eval_selector(cond: str, platform: str, *, where: Where | str) -> bool:
    """A conda-build selector (`not win`, `linux and x86_64`, `(osx or linux) and not aarch64`)."""
    try:
        tree = ast.parse(cond.strip(), mode="eval")
    except SyntaxError:
        raise _bad(where, f"selector [{cond}] is not an expression like [linux and not aarch64].") \
            from None
    true = SELECTORS[platform]

    def ev(node: ast.AST) -> bool:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not ev(node.operand)
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name) and node.id in SELECTOR_NAMES:
            return node.id in true
        what = node.id if isinstance(node, ast.Name) else ast.unparse(node)
        raise _bad(
            where, f"selector [{cond}] uses '{what}', which condastack cannot evaluate before solving "
            f"(known: {', '.join(sorted(SELECTOR_NAMES))}, with not/and/or). Use a pip marker or a separate layer.")

    return ev(tree)


def apply_selectors(text: str, platform: str, path: Path) -> str:
    """The file's text for one platform: lines whose selector is false are blanked (line numbers stay)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        sel = selector(line)
        if sel is not None and not line.lstrip().startswith("#"):
            line = line if eval_selector(sel, platform, where=_where(path, n)) else ""
        out.append(line)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- YAML with item lines


def _load(text: str, path: Path) -> Any:
    try:
        return yamlfile.parse(text)
    except yaml.YAMLError as e:
        problem, line = yamlfile.error_place(e)
        raise _bad(_where(path, line), f"malformed YAML: {problem}.") from None


_line = yamlfile.line_of


# --------------------------------------------------------------------------- channels, variables


def expand_channels(channels: list[str]) -> list[str]:
    """`defaults` as conda means it; `nodefaults` only says "do not add defaults", which condastack never does."""
    out: list[str] = []
    for ch in channels:
        for c in DEFAULT_CHANNELS if ch == "defaults" else () if ch == "nodefaults" else (ch,):
            if c not in out:
                out.append(c)
    return out


def _variables(data: Any, path: Path) -> dict[str, str]:
    raw = data.get("variables")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad(_where(path, _line(data, 'variables')), "'variables' must map names to values, "
                              "e.g. variables: {OMP_NUM_THREADS: \"8\"}.")
    out: dict[str, str] = {}
    for k, v in raw.items():
        where = _where(path, _line(raw, k))
        if not isinstance(k, str) or not ENV_VAR_NAME.match(k):
            raise _bad(where, f"'{k}' is not an environment variable name (letters, digits, '_').")
        if v is None or isinstance(v, (dict, list)):
            raise _bad(where, f"variable {k} needs a plain value (a string or number).")
        out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


# --------------------------------------------------------------------------- pip lines


# --------------------------------------------------------------------------- the file


_VER = r"\d[A-Za-z0-9_.+]*"
_FAST_SPEC = re.compile(rf"^([a-z0-9_][a-z0-9_.-]*)(?: +((?:(?:>=|<=|<|>|!=){_VER}\*?|{_VER}\.\*)"
                        rf"(?:,(?:>=|<=|<|>|!=){_VER}\*?)*))?$")


def fast_conda_spec(spec: str) -> str | None:
    """A plain spec as conda-lock would write it, without importing conda-lock (~0.6 s), or None.

    Only `name` and `name <ops-version>` / `name X.Y.*` qualify, the forms conda-lock
    reads back unchanged (tests/test_lock.py checks each against conda-lock).
    """
    m = _FAST_SPEC.match(spec.strip())
    if m is None:
        return None
    return f"{m.group(1)} {m.group(2)}" if m.group(2) else m.group(1)


def conda_spec(spec: str, where: Where) -> str:
    """One conda dependency as a MatchSpec string; `python='3.10'` is read as conda reads it."""
    clean = spec.replace("'", "").replace('"', "").strip()
    fast = fast_conda_spec(clean)
    return fast if fast is not None else _conda_lock_spec(spec, where)


def _conda_lock_spec(spec: str, where: Where) -> str:
    clean = spec.replace("'", "").replace('"', "").strip()
    try:
        return conda_match_spec(clean)
    except Exception as e:  # conda-lock raises plain ValueErrors for bad specs
        raise _bad(where, f"'{spec}' is not a conda match spec: {e}") from None


def _is_conda_entry(d: Any) -> bool:
    return isinstance(d, (str, int, float)) and not isinstance(d, bool)


def _dependencies(data: Any, path: Path, layer: str) -> list[Any]:
    """The `dependencies:` list, each entry checked to be a conda spec or a `pip:` list (specs unchecked)."""
    deps = data.get("dependencies")
    if deps is None:
        return []  # conda treats a file without dependencies as an empty environment
    if not isinstance(deps, list):
        raise _bad(_where(path, _line(data, "dependencies")), f"'dependencies' of layer '{layer}' must be a list.")
    for i, d in enumerate(deps):
        pip_list = isinstance(d, dict) and set(d) <= {"pip"} and isinstance(d.get("pip") or [], list)
        if d is not None and not _is_conda_entry(d) and not pip_list:
            raise _bad(_where(path, _line(deps, i)), f"layer '{layer}': each dependency must be a conda spec "
                       f"string or a 'pip:' list, not {json.dumps(d, default=str)}.")
    return deps


def _platform_deps(data: Any, path: Path, layer: str, platform: str) -> tuple[list[str], _PipState]:
    deps = _dependencies(data, path, layer)
    conda: list[str] = []
    st = _PipState(platform=platform)
    has_pip = False
    for i, d in enumerate(deps):
        if d is None:
            continue
        if _is_conda_entry(d):
            ms = conda_spec(str(d), _where(path, _line(deps, i)))
            if ms not in conda:
                conda.append(ms)
            continue
        pip_list = d.get("pip") or []
        has_pip = has_pip or d.get("pip") is not None
        for j, req in enumerate(pip_list):
            if req is not None:
                _pip_line(str(req).strip(), path.parent, _where(path, _line(pip_list, j)), st)
    if has_pip and not any(c.split()[0].split("::")[-1] == "pip" for c in conda):
        conda.append("pip")  # conda-lock adds pip wherever a pip: list is
    return conda, st


def _top(data: Any, path: Path, layer: str) -> tuple[list[str], list[str]]:
    for key in data:
        if key not in ENV_KEYS:
            raise _bad(_where(path, _line(data, key)), f"unknown key '{key}' in layer '{layer}' "
                                  f"(an environment.yml has: {', '.join(sorted(ENV_KEYS))}).")
    out = []
    for key in ("channels", "pip-repositories"):
        v = data.get(key) or []
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise _bad(_where(path, _line(data, key)), f"'{key}' must be a list of strings.")
        out.append(list(v))
    return out[0], out[1]


def _read_text(path: Path, layer: str) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
        return data, data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StackInvalid(path, f"layer file of '{layer}' is not UTF-8 text ({e.reason} at byte {e.start}).") \
            from None
    except OSError as e:
        raise StackInvalid(path, f"cannot read the layer file of '{layer}': {e.strerror}.") from None


def _platform_data(path: Path, text: str, platform: str, layer: str) -> Any:
    """The file as YAML for one platform, after selectors; an empty file is an empty mapping."""
    data = _load(apply_selectors(text, platform, path), path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StackInvalid(path, f"layer '{layer}' must be a conda environment.yml (a mapping with 'dependencies').")
    return data


@contextlib.contextmanager
def _naming_layer(layer: str) -> Iterator[None]:
    """Every problem found in a layer file names the layer as well as the file."""
    try:
        yield
    except StackInvalid as e:
        if f"'{layer}'" in e.problem:  # it already does
            raise
        raise StackInvalid(e.file, f"layer '{layer}': {e.problem}", e.line) from None


def read_env_shape(path: Path, platforms: list[str] | tuple[str, ...], *, layer: str) -> EnvShape:
    """What loading a stack needs of a layer file, checked for every platform without conda-lock:
    its keys, channels, pip-repositories, variables and the form of its dependencies (not each spec)."""
    with _naming_layer(layer):
        return _read_env_shape(Path(path), platforms, layer)


def _read_env_shape(path: Path, platforms: list[str] | tuple[str, ...], layer: str) -> EnvShape:
    _, text = _read_text(path, layer)
    datas = [_platform_data(path, text, plat, layer) for plat in platforms]
    channels, repos = _top(datas[0], path, layer)
    variables = _variables(datas[0], path)
    for data in datas:
        _dependencies(data, path, layer)
    return EnvShape(channels=tuple(expand_channels(channels)), pip_repositories=tuple(repos), variables=variables)


def load_env_file(path: Path, platforms: list[str] | tuple[str, ...], *, layer: str) -> EnvFile:
    """Read one layer's environment.yml for each platform (selectors, pip options, variables).

    Checking specs needs conda-lock, whose import costs ~0.6 s, so results are cached by the
    file's content and path and the content of every -r/-c file it read: a no-op `lock` never
    imports it.
    """
    path = Path(path)
    data, text = _read_text(path, layer)
    cached = _cache_file(path, data, list(platforms))
    hit = _from_cache(cached, path)
    if hit is not None:
        return hit
    with _naming_layer(layer):
        env = _read_env_file(path, text, list(platforms), layer)
    _to_cache(cached, env)
    return env


def _cache_file(path: Path, data: bytes, platforms: list[str]) -> Path:


    key = hashlib.sha256(b"|".join([b"envfile-1", str(path.resolve()).encode(), data, ",".join(platforms).encode(),
                                    conda_lock_version().encode(), __version__.encode(),
                                    Path(__file__).read_bytes(), MAPPING_FILE.read_bytes()])).hexdigest()
    return cache_root() / "envfiles" / f"{key}.json"


def _from_cache(cached: Path, path: Path) -> EnvFile | None:
    try:
        d = json.loads(cached.read_text())
        for inc, sha in d["includes"]:
            if hashlib.sha256(Path(inc).read_bytes()).hexdigest() != sha:
                return None
        o = d["pip_options"]
        opts = PipOptions(index_url=o["index_url"], pre=bool(o["pre"]),
                          **{k: tuple(o[k]) for k in ("extra_index_urls", "find_links", "trusted_hosts",
                                                      "constraints")})
        return EnvFile(path=path, channels=tuple(d["channels"]),
                       conda={k: tuple(v) for k, v in d["conda"].items()},
                       pip={k: tuple(v) for k, v in d["pip"].items()}, pip_options=opts,
                       variables=dict(d["variables"]), pip_repositories=tuple(d["pip_repositories"]),
                       includes=tuple((a, b) for a, b in d["includes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _to_cache(cached: Path, env: EnvFile) -> None:

    d = asdict(env)
    d.pop("path")
    text = json.dumps(d)
    if redact(text) != text:
        return  # credentials (an index's or a git URL's) are never written: such a file is read each time
    try:
        atomic_write_text(cached, text)
    except OSError:
        pass  # a read-only cache only costs speed


def _read_env_file(path: Path, text: str, platforms: list[str], layer: str) -> EnvFile:
    conda: dict[str, tuple[str, ...]] = {}
    pip: dict[str, tuple[str, ...]] = {}
    opts = PipOptions()
    includes: dict[str, str] = {}
    channels: list[str] = []
    repos: list[str] = []
    variables: dict[str, str] = {}
    for n, plat in enumerate(platforms):
        data = _platform_data(path, text, plat, layer)
        if n == 0:
            channels, repos = _top(data, path, layer)
            variables = _variables(data, path)
        c, st = _platform_deps(data, path, layer, plat)
        conda[plat], pip[plat] = tuple(c), tuple(st.reqs)
        opts = opts.merged(PipOptions(index_url=st.opts["index_url"], pre=st.opts["pre"],
                                      **{k: tuple(st.opts[k]) for k in ("extra_index_urls", "find_links",
                                                                        "trusted_hosts", "constraints")}))
        includes.update(st.includes)
    return EnvFile(path=path, channels=tuple(expand_channels(channels)), conda=conda, pip=pip, pip_options=opts,
                   variables=variables, pip_repositories=tuple(repos), includes=tuple(sorted(includes.items())))


