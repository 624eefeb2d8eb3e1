"""conda-lock is reached through one adapter (condastack.core.condalock), and the private parts of
the pinned conda-lock that it leans on are checked here, so an upgrade that moves them fails loudly."""

from __future__ import annotations

import ast
import inspect
from importlib.metadata import version
from pathlib import Path

from tests.helpers import REPO

PKG = REPO / "condastack"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_only_the_adapter_imports_conda_lock_and_nothing_imports_unittest() -> None:
    users = {p.relative_to(REPO).as_posix() for p in PKG.rglob("*.py")
             if any(m == "conda_lock" or m.startswith("conda_lock.") for m in _imports(p))}
    assert users == {"condastack/core/condalock.py"}
    assert not [p for p in PKG.rglob("*.py") if any(m.split(".")[0] == "unittest" for m in _imports(p))]


def test_pinned_conda_lock_still_has_the_private_parts_the_adapter_uses() -> None:
    assert version("conda-lock") == "4.0.3", "the adapter was checked against conda-lock 4.0.3: re-check it"
    from conda_lock import pypi_solver
    from conda_lock._vendor.poetry.core.packages.package import Package

    params = inspect.signature(pypi_solver._prepare_repositories_pool).parameters
    assert params, "conda-lock's _prepare_repositories_pool changed shape"
    assert "_prepare_repositories_pool" in inspect.getsource(pypi_solver.solve_pypi), \
        "solve_pypi no longer builds its pool through _prepare_repositories_pool: the conda-first pool is not used"
    pool_type = inspect.signature(pypi_solver._prepare_repositories_pool).return_annotation
    assert "Pool" in str(pool_type) or pool_type is inspect.Signature.empty
    p = Package("torch", "2.7.1")
    assert str(p.version) == "2.7.1"
    from conda_lock.src_parser.conda_common import conda_spec_to_versioned_dep
    from conda_lock.src_parser.markers import evaluate_marker
    from conda_lock.src_parser.pyproject_toml import parse_python_requirement

    assert callable(conda_spec_to_versioned_dep) and callable(evaluate_marker) and callable(parse_python_requirement)


def test_the_pool_hook_is_restored_after_a_solve() -> None:
    from conda_lock import pypi_solver

    from condastack.core import condalock

    real = pypi_solver._prepare_repositories_pool
    try:
        with condalock._pool_wrapped(pypi_solver, lambda pool: pool):
            assert pypi_solver._prepare_repositories_pool is not real
            raise RuntimeError("solver failed")
    except RuntimeError:
        pass
    assert pypi_solver._prepare_repositories_pool is real


def test_adapter_reads_specs_as_conda_lock_does() -> None:
    from condastack.core import condalock

    assert condalock.conda_match_spec("python=3.10") == "python 3.10.*"
    assert condalock.parse_pip_requirement("Tiny_Lib>=1.0").name == "tiny-lib"
    assert condalock.marker_holds("sys_platform == 'linux'", "linux-64")
    assert not condalock.marker_holds("sys_platform == 'win32'", "linux-64")
