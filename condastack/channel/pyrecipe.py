"""Recipes that repackage an installed CPython (and its pip) as relocatable conda packages.

Site-channel tooling for the interpreter a stack needs when no conda channel
can be reached: `python` (the interpreter, libpython, headers and the standard
library without site-packages, tests or GUI modules; RPATHs made relative with
patchelf; its own prefix rewritten to $PREFIX in the text files that name it)
and `pip` (`pyh0_0`, depending on `python X.Y.*`). Built with rattler-build
(`channel.build_recipe` or `condastack wrap --recipe`).

The standard library is byte-compiled once in the recipe as checked-hash .pyc
files: they stay valid whatever the files' mtimes after a pack, an unpack or a
SquashFS image, so a read-only install never recompiles them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from condastack.core.errors import CondastackError
from condastack.core.pyc import compileall_argv

_SKIP = ("site-packages", "test", "idlelib", "tkinter", "lib2to3/tests", "ensurepip/_bundled", "config-*/*.a")
_FACTS = ("import sys, sysconfig, json; print(json.dumps({'v': '%d.%d' % sys.version_info[:2], "
          "'full': sys.version.split()[0], 'shared': bool(sysconfig.get_config_var('Py_ENABLE_SHARED')), "
          "'prefix': sys.base_prefix, 'purelib': sysconfig.get_paths()['purelib']}))")


@dataclass(frozen=True)
class Interpreter:
    """What the recipes need to know of an installed CPython."""

    prefix: Path  # its sys.base_prefix
    version: str  # X.Y
    full_version: str  # X.Y.Z
    purelib: Path  # where its pip is installed

    @classmethod
    def at(cls, root: Path) -> Interpreter:
        exe = Path(root) / "bin" / "python3"
        try:
            p = subprocess.run([str(exe), "-S", "-c", _FACTS], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise CondastackError(f"{exe}: cannot run this python to repackage it: {e}") from None
        f = json.loads(p.stdout)
        if not f["shared"]:
            raise CondastackError(f"{root}: this python has no shared libpython, so it cannot be made "
                                  "relocatable. Use a build configured with --enable-shared (pyenv: "
                                  "PYTHON_CONFIGURE_OPTS=--enable-shared).")
        return cls(Path(f["prefix"]), f["v"], f["full"], Path(f["purelib"]))


def python_recipe(py: Interpreter, folder: Path) -> Path:
    """Write `folder/recipe.yaml` for the conda `python` package of `py`; returns `folder`."""
    v, src = py.version, py.prefix
    exclude = " ".join(f"--exclude=python{v}/{d}" for d in _SKIP)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(f"""
package:
  name: python
  version: "{py.full_version}"
build:
  number: 0
  string: h0_cpython
  python:
    skip_pyc_compilation: ["**/*.py"]  # compiled below, once, as checked-hash .pyc
  script:
    - mkdir -p $PREFIX/bin $PREFIX/lib $PREFIX/include
    - cp -a {src}/bin/python{v} $PREFIX/bin/
    - ln -s python{v} $PREFIX/bin/python3
    - ln -s python{v} $PREFIX/bin/python
    - cp -a {src}/lib/libpython{v}.so* {src}/lib/libpython3.so $PREFIX/lib/
    - cp -a {src}/include/python{v} $PREFIX/include/
    - tar -C {src}/lib -cf - --exclude=__pycache__ {exclude} python{v} | tar -C $PREFIX/lib -xf -
    - mkdir -p $PREFIX/lib/python{v}/site-packages
    - grep -rlI '{src}' $PREFIX/lib/python{v} | xargs -r sed -i 's|{src}|'"$PREFIX"'|g'
    - strip --strip-debug $PREFIX/bin/python{v} $PREFIX/lib/libpython{v}.so.1.0 $PREFIX/lib/python{v}/lib-dynload/*.so
    - patchelf --set-rpath '$ORIGIN/../lib' $PREFIX/bin/python{v}
    - patchelf --set-rpath '$ORIGIN' $PREFIX/lib/libpython{v}.so.1.0
    - for f in $PREFIX/lib/python{v}/lib-dynload/*.so; do patchelf --set-rpath '$ORIGIN/../..' "$f"; done
    # -f: rewrite any .pyc that exist (see core/pyc.py for the rest)
    - {" ".join(compileall_argv(f"$PREFIX/bin/python{v}", f"$PREFIX/lib/python{v}", force=True, jobs=0, isolated=True))}
      >/dev/null || true
""")
    return folder


def pip_recipe(py: Interpreter, folder: Path) -> Path:
    """Write `folder/recipe.yaml` for the conda `pip` package of `py`'s own pip; returns `folder`."""
    dirs = sorted(p.name for p in py.purelib.iterdir()
                  if p.name == "pip" or (p.name.startswith("pip-") and p.name.endswith(".dist-info")))
    version = next((n[4:-len(".dist-info")] for n in dirs if n.endswith(".dist-info")), None)
    if version is None:
        raise CondastackError(f"{py.purelib}: this python has no pip installed to repackage.")
    v = py.version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(f"""
package:
  name: pip
  version: "{version}"
build:
  number: 0
  string: pyh0_0
  script:
    - mkdir -p $PREFIX/lib/python{v}/site-packages
    - tar -C {py.purelib} -cf - --exclude=__pycache__ {' '.join(dirs)} |
      tar -C $PREFIX/lib/python{v}/site-packages -xf -
requirements:
  run:
    - python {v}.*
""")
    return folder
