"""Write rattler-build recipes that repackage an installed CPython (and its pip)
as relocatable conda `python` and `pip` packages, for `condastack wrap --recipe`.

The same steps as the offline test channel (tests/channel/testchannel.py), but for
any interpreter on the machine (pyenv's 3.10 here, 3.12 on the GPU node), since
the seed's python version need not be the one running condastack.

    python python_recipes.py /root/.pyenv/versions/3.10.13 OUTDIR
    # -> OUTDIR/python/recipe.yaml, OUTDIR/pip/recipe.yaml
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_SKIP = ("site-packages", "test", "idlelib", "tkinter", "lib2to3/tests", "ensurepip/_bundled", "config-*/*.a")


def _facts(root: Path) -> dict:
    code = ("import sys, sysconfig, json; print(json.dumps({'v': '%d.%d' % sys.version_info[:2], "
            "'full': sys.version.split()[0], 'shared': sysconfig.get_config_var('Py_ENABLE_SHARED'), "
            "'prefix': sys.base_prefix, 'purelib': sysconfig.get_paths()['purelib']}))")
    out = subprocess.run([str(root / "bin" / "python3"), "-S", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def python_recipe(root: Path, out: Path) -> Path:
    f = _facts(root)
    if not f["shared"]:
        raise SystemExit(f"{root}: this python has no shared libpython; build it with --enable-shared")
    v, src = f["v"], f["prefix"]
    exclude = " ".join(f"--exclude=python{v}/{d}" for d in _SKIP)
    (out / "python").mkdir(parents=True, exist_ok=True)
    (out / "python" / "recipe.yaml").write_text(f"""
package:
  name: python
  version: "{f['full']}"
build:
  number: 0
  string: h0_cpython
  # .pyc files are written on first import; compiling ~2k files one process each takes minutes.
  python:
    skip_pyc_compilation: ["**/*.py"]
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
    # pyenv builds keep debug info (libpython alone is 30 MB); the package needs none of it.
    - strip --strip-debug $PREFIX/bin/python{v} $PREFIX/lib/libpython{v}.so.1.0 $PREFIX/lib/python{v}/lib-dynload/*.so
    - patchelf --set-rpath '$ORIGIN/../lib' $PREFIX/bin/python{v}
    - patchelf --set-rpath '$ORIGIN' $PREFIX/lib/libpython{v}.so.1.0
    - for f in $PREFIX/lib/python{v}/lib-dynload/*.so; do patchelf --set-rpath '$ORIGIN/../..' "$f"; done
""")
    return out / "python"


def pip_recipe(root: Path, out: Path) -> Path:
    f = _facts(root)
    sp, v = Path(f["purelib"]), f["v"]
    dirs = [p.name for p in sp.iterdir() if p.name == "pip" or (p.name.startswith("pip-") and p.name.endswith(".dist-info"))]
    version = next(n[4:-10] for n in dirs if n.endswith(".dist-info"))
    (out / "pip").mkdir(parents=True, exist_ok=True)
    (out / "pip" / "recipe.yaml").write_text(f"""
package:
  name: pip
  version: "{version}"
build:
  number: 0
  string: pyh0_0
  script:
    - mkdir -p $PREFIX/lib/python{v}/site-packages
    - tar -C {sp} -cf - --exclude=__pycache__ {' '.join(dirs)} | tar -C $PREFIX/lib/python{v}/site-packages -xf -
requirements:
  run:
    - python {v}.*
""")
    return out / "pip"


if __name__ == "__main__":
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    print(python_recipe(root, out))
    print(pip_recipe(root, out))
