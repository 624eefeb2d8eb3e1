"""The stack file: `environments/stack.yml` and the layer files it names.

A stack names layers; each layer is an ordinary conda environment.yml and
may extend one parent. The whole stack is loaded and validated at once so
that every later stage can trust it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from condastack.core.credentials import redact
from condastack.core.errors import CondastackError, StackInvalid
from condastack.core.layout import stack_file
from condastack.core.names import NAME_PATTERNS, is_name
from condastack.core.platforms import KNOWN_PLATFORMS
from condastack.spec import yamlfile
from condastack.spec.envfile import PYPI_SIMPLE, EnvFile, expand_channels, load_env_file, read_env_shape
from condastack.spec.pipreqs import PipOptions, apply_constraints
from condastack.spec.vcsreq import parse_vcs
from condastack.spec.virtual import effective_virtual_packages

_STACK_KEYS = {"name", "platforms", "virtual-packages", "layers", "pip-index", "channels"}
_LAYER_KEYS = {"file", "extends", "description"}
_LAYER_NAME = NAME_PATTERNS["layer"]  # the one layer-name pattern (core.names)
_VPKG_NAME = re.compile(r"^__[a-z0-9_]+\Z")


@dataclass(frozen=True)
class Layer:
    """One layer of the stack: an environment.yml plus its place in the tree.

    Its specs are checked by conda-lock (through envfile.py) on first use, so a
    reader that needs only the stack's shape never imports the solver.
    """

    name: str
    file: Path
    extends: str | None
    channels: tuple[str, ...]
    platforms: tuple[str, ...]
    pip_repositories: tuple[str, ...] = ()
    description: str = ""
    variables: dict[str, str] = field(default_factory=dict)  # own `variables:` of the file
    _env: list[EnvFile] = field(default_factory=list, compare=False, repr=False)  # the parsed file, once

    def env_file(self) -> EnvFile:
        """The file read for every platform: specs checked by conda-lock (cached by content), pip options."""
        if not self._env:
            self._env.append(load_env_file(self.file, self.platforms, layer=self.name))
        return self._env[0]

    def specs(self, platform: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(conda match specs, pip requirement strings) of this layer alone, after selectors."""
        env = self.env_file()
        return env.conda[platform], env.pip[platform]

    @property
    def conda(self) -> dict[str, tuple[str, ...]]:
        """platform -> conda match specs (own, after selectors)."""
        return dict(self.env_file().conda)

    @property
    def pip(self) -> dict[str, tuple[str, ...]]:
        """platform -> pip requirement strings (own)."""
        return dict(self.env_file().pip)

    @property
    def pip_options(self) -> PipOptions:
        """Own pip option lines (--index-url, -c, ...), from the file and the -r/-c files it reads."""
        return self.env_file().pip_options

    @property
    def includes(self) -> tuple[tuple[str, str], ...]:
        """-r/-c files read, with their sha256."""
        return self.env_file().includes


@dataclass(frozen=True)
class Stack:
    root: Path  # the project folder (the one holding environments/)
    file: Path
    name: str
    platforms: tuple[str, ...]
    virtual_packages: dict[str, dict[str, str]]
    layers: dict[str, Layer]
    pip_index: tuple[str, ...] = ()
    channels: tuple[str, ...] = field(default=())

    @property
    def default_platform(self) -> str:
        return self.platforms[0]

    def layer(self, name: str) -> Layer:
        try:
            return self.layers[name]
        except KeyError:
            known = ", ".join(self.layers) or "none"
            raise CondastackError(
                f"{self.file}: unknown layer '{name}' (layers: {known})."
            ) from None

    def chain(self, name: str) -> list[Layer]:
        """The layer and its ancestors, root first."""
        out: list[Layer] = []
        cur: str | None = name
        while cur is not None:
            layer = self.layer(cur)
            out.append(layer)
            cur = layer.extends
        return list(reversed(out))

    def children(self, name: str) -> list[str]:
        return [n for n, l in self.layers.items() if l.extends == name]

    def order(self, names: list[str] | None = None) -> list[str]:
        """Layers (and their ancestors) in dependency order, parents first."""
        wanted = list(self.layers) if not names else names
        out: list[str] = []
        for n in wanted:
            for layer in self.chain(n):
                if layer.name not in out:
                    out.append(layer.name)
        return out

    def channels_for(self, name: str) -> list[str]:
        """Effective channels: the ancestors' channels first, then the layer's new ones."""
        out: list[str] = list(self.channels)
        for layer in self.chain(name):
            for ch in layer.channels:
                if ch not in out:
                    out.append(ch)
        return out

    def specs_for(self, name: str, platform: str) -> tuple[list[str], list[str]]:
        """All conda and pip specs of a layer and its ancestors for one platform."""
        conda: list[str] = []
        pip: list[str] = []
        for layer in self.chain(name):
            own_conda, own_pip = layer.specs(platform) if platform in layer.platforms else ((), ())
            conda += [s for s in own_conda if s not in conda]
            pip += [s for s in own_pip if s not in pip]
        return conda, apply_constraints(pip, self.pip_options_for(name).constraints)

    def pip_options_for(self, name: str) -> PipOptions:
        """pip option lines of the layer and its ancestors; a child's --index-url replaces its parent's."""
        out = PipOptions()
        for layer in self.chain(name):
            out = out.merged(layer.pip_options)
        return out

    def variables_for(self, name: str) -> dict[str, str]:
        """`variables:` of the layer and its ancestors; a child's value overrides its parent's."""
        out: dict[str, str] = {}
        for layer in self.chain(name):
            out.update(layer.variables)
        return out

    def includes_for(self, name: str) -> list[tuple[str, str]]:
        return sorted({i for layer in self.chain(name) for i in layer.includes})

    def pip_indexes_for(self, name: str) -> list[str]:
        out = list(self.pip_index)
        for layer in self.chain(name):
            out += [r for r in layer.pip_repositories if r not in out]
        opts = self.pip_options_for(name)
        if opts.index_url:
            out += [opts.index_url] if opts.index_url not in out else []
        elif opts.extra_index_urls and not out:
            out.append(PYPI_SIMPLE)  # pip's --extra-index-url adds to PyPI, it does not replace it
        out += [u for u in opts.extra_index_urls if u not in out]
        return out

    def virtual_packages_for(self, platform: str) -> dict[str, str]:
        """The virtual packages the stack declares for one platform."""
        return dict(self.virtual_packages.get(platform, {}))

    def effective_virtual_packages_for(self, platform: str) -> dict[str, str]:
        """What a solve sees: a plain node's virtual packages, overridden by the declared ones."""

        return effective_virtual_packages(platform, self.virtual_packages_for(platform))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": str(self.file),
            "platforms": list(self.platforms),
            "virtual-packages": self.virtual_packages,
            "effective-virtual-packages": {p: self.effective_virtual_packages_for(p) for p in self.platforms},
            "layers": {
                n: {
                    "file": str(l.file),
                    "extends": l.extends,
                    "channels": self.channels_for(n),
                    "own": {
                        p: {"conda": list(l.conda.get(p, ())), "pip": [redact(s) for s in l.pip.get(p, ())],
                            "vcs": _vcs_json(l.pip.get(p, ()))}
                        for p in self.platforms
                    },
                    "inherited": {
                        p: _inherited(self, n, p) for p in self.platforms
                    },
                    "own-variables": dict(l.variables),
                    "variables": self.variables_for(n),
                    "pip-options": self.pip_options_for(n).to_json(redact),
                    "pip-index": [redact(u) for u in self.pip_indexes_for(n)],
                    "includes": {p: d for p, d in self.includes_for(n)},
                }
                for n, l in self.layers.items()
            },
        }


def _inherited(stack: Stack, name: str, platform: str) -> dict[str, list[str]]:
    parent = stack.layer(name).extends
    if parent is None:
        return {"conda": [], "pip": []}
    conda, pip = stack.specs_for(parent, platform)
    return {"conda": conda, "pip": [redact(s) for s in pip]}


def _vcs_json(reqs: tuple[str, ...] | list[str]) -> list[dict[str, object]]:
    """Each git requirement as written (credentials masked) and how the lock resolves it."""
    out = []
    for line in reqs:
        v = parse_vcs(line)
        if v is not None:
            out.append(v.to_json())
    return out


# --------------------------------------------------------------------------- YAML


def load_yaml(path: Path, what: str) -> Any:
    """Read a YAML file; every problem becomes one CondastackError naming the file."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise StackInvalid(path, f"{what} is not a regular file (a folder, fifo or device); give a YAML file.")
    if not path.is_file():
        raise CondastackError(f"{what} not found: {path}.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CondastackError(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except OSError as e:
        raise CondastackError(f"{path}: cannot read {what}: {e.strerror}.") from None
    try:
        return yamlfile.parse(text)
    except yaml.YAMLError as e:
        problem, line = yamlfile.error_place(e)
        raise StackInvalid(path, f"malformed YAML in {what}: {problem}.", line) from None


_line = yamlfile.line_of


def _expect(cond: bool, path: Path, data: Any, key: Any, msg: str) -> None:
    if not cond:
        raise StackInvalid(path, msg, _line(data, key))


# --------------------------------------------------------------------------- loading


def find_stack_file(root: Path) -> Path:
    return stack_file(root)


def load_stack(root: Path | str = ".", *, parse_specs: bool = True) -> Stack:
    """Load and validate `ROOT/environments/stack.yml` and every layer file.

    With `parse_specs` (the default) every layer's specs are parsed now, so a bad
    spec is reported at load; without, they are parsed on first use and loading
    never imports the solver (doctor on a compute node uses that).
    """
    root = Path(root).resolve()
    path = find_stack_file(root)
    if path.exists() and not path.is_file():
        raise StackInvalid(path, "the stack file is not a regular file (a folder, fifo or device).")
    if not path.is_file():
        raise CondastackError(
            f"no stack file at {path}. Create environments/stack.yml (see README) "
            "or point -C at the project folder."
        )
    data = load_yaml(path, "stack file")
    name, platforms = _check_top(path, data)
    vpkgs = _virtual_packages(path, data, platforms)
    pip_index = _str_list(data.get("pip-index", []), path, data, "pip-index")
    channels = [resolve_channel(c, path.parent)
                for c in expand_channels(_str_list(data.get("channels", []), path, data, "channels"))]
    layers_raw = data["layers"]
    _check_layer_entries(path, data, layers_raw)
    _check_cycles(path, layers_raw)

    layers: dict[str, Layer] = {}
    for lname, spec in layers_raw.items():
        lfile = (path.parent / spec["file"]).resolve()
        layers[lname] = _load_layer(lname, lfile, spec.get("extends"), tuple(platforms), path, layers_raw,
                                    str(spec.get("description", "")))
        if parse_specs:
            layers[lname].env_file()
    return Stack(root=root, file=path, name=name, platforms=tuple(platforms), virtual_packages=vpkgs,
                 layers=layers, pip_index=tuple(pip_index), channels=tuple(channels))


def _check_top(path: Path, data: Any) -> tuple[str, list[str]]:
    """The stack file's own keys, its name and its platforms."""
    if not isinstance(data, dict):
        raise StackInvalid(path, "the stack file must be a mapping with 'name', 'platforms' and 'layers'.")
    for key in data:
        _expect(key in _STACK_KEYS, path, data, key,
                f"unknown key '{key}' in the stack file (allowed: {', '.join(sorted(_STACK_KEYS))}).")
    for key in ("name", "layers"):
        _expect(key in data, path, data, None, f"the stack file has no '{key}'.")
    name = data["name"]
    _expect(isinstance(name, str) and bool(name), path, data, "name", "'name' must be a non-empty string.")
    _expect(is_name("stack", name), path, data, "name",
            f"stack name {ascii(name)[:120]} is not valid: use letters, digits, '.', '_' and '-' (it names "
            "modules, images and files).")

    platforms = data.get("platforms", ["linux-64"])
    _expect(isinstance(platforms, list) and bool(platforms) and all(isinstance(p, str) for p in platforms),
            path, data, "platforms", "'platforms' must be a non-empty list of platform names.")
    for p in platforms:
        _expect(p in KNOWN_PLATFORMS, path, data, "platforms",
                f"unknown platform '{p}' (known: {', '.join(KNOWN_PLATFORMS)}).")
    _expect(len(set(platforms)) == len(platforms), path, data, "platforms", "a platform is listed twice.")
    return name, platforms


def _virtual_packages(path: Path, data: Any, platforms: list[str]) -> dict[str, dict[str, str]]:
    vpkgs_raw = data.get("virtual-packages") or {}
    _expect(isinstance(vpkgs_raw, dict), path, data, "virtual-packages",
            "'virtual-packages' must map a platform to {__name: version}.")
    vpkgs: dict[str, dict[str, str]] = {}
    for plat, pk in vpkgs_raw.items():
        _expect(plat in platforms, path, vpkgs_raw, plat,
                f"virtual-packages names platform '{plat}', which is not in 'platforms' ({', '.join(platforms)}).")
        _expect(isinstance(pk, dict), path, vpkgs_raw, plat,
                f"virtual-packages for {plat} must map names like __cuda to versions.")
        for vname, ver in pk.items():
            _expect(isinstance(vname, str) and bool(_VPKG_NAME.match(vname)), path, pk, vname,
                    f"'{vname}' is not a virtual package name (they start with '__', e.g. __cuda).")
            _expect(isinstance(ver, (str, int, float)) and not isinstance(ver, bool), path, pk, vname,
                    f"the version of {vname} must be a string such as \"12.6\".")
        vpkgs[plat] = {k: str(v) for k, v in pk.items()}
    return vpkgs


def _check_layer_entries(path: Path, data: Any, layers_raw: Any) -> None:
    _expect(isinstance(layers_raw, dict) and bool(layers_raw), path, data, "layers",
            "'layers' must map layer names to {file: ..., extends: ...}.")
    for lname, spec in layers_raw.items():
        _expect(isinstance(lname, str) and bool(_LAYER_NAME.match(str(lname))), path, layers_raw, lname,
                f"{yamlfile.short(lname)!r} is not a valid layer name (letters, digits, '-', '_', '.').")
        _expect(isinstance(spec, dict), path, layers_raw, lname,
                f"layer '{lname}' must be a mapping with 'file' (and optionally 'extends').")
        for key in spec:
            _expect(key in _LAYER_KEYS, path, spec, key,
                    f"unknown key '{key}' in layer '{lname}' (allowed: {', '.join(sorted(_LAYER_KEYS))}).")
        _expect("file" in spec and isinstance(spec["file"], str), path, layers_raw, lname,
                f"layer '{lname}' needs 'file: <environment.yml>'.")
        ext = spec.get("extends")
        _expect(ext is None or isinstance(ext, str), path, spec, "extends",
                f"'extends' of layer '{lname}' must be one layer name.")
        _expect(ext is None or ext in layers_raw, path, spec, "extends",
                f"layer '{lname}' extends unknown layer '{ext}' (layers: {', '.join(map(str, layers_raw))}).")


def resolve_channel(channel: str, base: Path) -> str:
    """A channel as the solver sees it: local paths (./channel, ../x, /abs) become file:// URLs.

    Relative paths are taken from the folder of the file that names them, so a
    site channel beside the stack works from any working directory.
    """
    if channel.startswith(("./", "../", "/")) or channel in (".", ".."):
        return (Path(base) / channel).resolve().as_uri()
    return channel


def _str_list(value: Any, path: Path, data: Any, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    _expect(isinstance(value, list) and all(isinstance(v, str) for v in value), path, data, key,
            f"'{key}' must be a list of strings.")
    return list(value)


def _check_cycles(path: Path, layers_raw: dict[str, Any]) -> None:
    for start in layers_raw:
        seen = [start]
        cur = layers_raw[start].get("extends")
        while cur is not None:
            if cur in seen:
                loop = " -> ".join([*seen[seen.index(cur):], cur])
                raise StackInvalid(path, f"layers extend each other in a cycle: {loop}.", _line(layers_raw, start))
            seen.append(cur)
            cur = layers_raw[cur].get("extends")


def _load_layer(name: str, lfile: Path, extends: str | None, platforms: tuple[str, ...], stack_path: Path,
                layers_raw: Any, description: str) -> Layer:
    if not lfile.is_file():
        gone = "is not a regular file" if lfile.exists() else "does not exist"
        raise StackInvalid(stack_path, f"layer '{name}' names file {lfile}, which {gone}.", _line(layers_raw, name))
    shape = read_env_shape(lfile, platforms, layer=name)
    return Layer(
        name=name,
        file=lfile,
        extends=extends,
        channels=tuple(resolve_channel(c, lfile.parent) for c in shape.channels),
        platforms=platforms,
        pip_repositories=shape.pip_repositories,
        description=description,
        variables=shape.variables,
    )
