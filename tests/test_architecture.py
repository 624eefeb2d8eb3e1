"""The code as a map (issue 22): rooms along the data flow, no import circles, small modules, a light
public API. import-linter checks the one-way flow between rooms (.ci/run); this checks what it cannot."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PKG = REPO / "condastack"
API = ["load_stack", "lock_stack", "build_layer", "build_prefix", "pack_layer", "pack_prefix", "unpack_archive",
       "relocate", "install_archive", "run_doctor", "wrap", "CondastackError"]


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Every condastack module and the condastack modules it imports, inside functions too."""
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    out: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                if n in mods and n != mod:
                    out[mod].add(n)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_rooms_follow_the_data_flow() -> None:
    rooms = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
    assert {"core", "spec", "lock", "env", "archive", "deliver", "container", "channel", "cli"} <= set(rooms)
    assert not [p.name for p in PKG.glob("*.py") if p.name != "__init__.py"], "modules belong in a room"


def test_no_import_circle_counting_imports_inside_functions() -> None:
    graph = _graph()
    # A package and its own submodules are one unit: a submodule's import runs its package's
    # __init__ first (cli's registers the commands), which is no circle of code.
    for mod in graph:
        graph[mod] = {m for m in graph[mod] if not m.startswith(mod + ".") and not mod.startswith(m + ".")}
    assert _cycles(graph) == []
    graph["condastack.core.errors"].add("condastack.deliver.doctor")  # the check itself finds a circle
    assert _cycles(graph)


def test_no_module_over_600_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def test_import_condastack_is_light_and_names_the_api() -> None:
    code = ("import sys, condastack; heavy = [m for m in ('rattler', 'conda_lock', 'conda_pack', 'pydantic', "
            "'rattler_build', 'condastack.lock.layered', 'condastack.env.build') if m in sys.modules]; "
            "print(heavy); print(sorted(n for n in dir(condastack) if not n.startswith('_')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    heavy, names = p.stdout.splitlines()
    assert heavy == "[]"
    assert set(API) <= set(eval(names))  # noqa: S307 - our own printed list


def test_api_names_resolve_to_the_documented_objects() -> None:
    import condastack
    from condastack.core.errors import CondastackError
    from condastack.spec.stack import load_stack

    assert condastack.load_stack is load_stack
    assert condastack.CondastackError is CondastackError
    for name in API:
        assert callable(getattr(condastack, name)), name
