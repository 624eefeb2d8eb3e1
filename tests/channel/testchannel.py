"""Build the offline test channel (also used by the bundled example).

No conda channel is reachable from our machines, so the tests make their own:
real packages built by rattler-build from the recipes in ./recipes (their
scripts call the system gcc), a relocatable `python` + `pip` built from the
interpreter running the tests, and metadata-only linux-aarch64 packages for
multi-platform locking. The result is cached by a hash of its inputs.

    python tests/channel/testchannel.py [CACHE_DIR]    # prints the channel folder
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from condastack.channel import build_recipe, cached_build, channel_url, index_channel, tree_hash  # noqa: E402

RECIPES = HERE / "recipes"
# Order matters: hello's host environment needs libhello in the channel.
ORDER = ["libhello", "hello", "libfoo-1", "libfoo-2", "needs-old-foo", "gpu-kernels-cuda",
         "gpu-kernels-cpu", "noarch-data"]

PY_VER = f"{sys.version_info.major}.{sys.version_info.minor}"
PY_FULL = f"{PY_VER}.{sys.version_info.micro}"

# Packages that exist for linux-aarch64 only as metadata (no payload), so that
# multi-platform locks can be solved and checked without an aarch64 machine.
AARCH64 = [
    ("libhello", "1.0.0", "h0_0", []),
    ("hello", "1.0.0", "h0_0", ["libhello >=1.0,<2"]),
    ("libfoo", "1.0", "h0_0", []),
    ("libfoo", "2.0", "h0_0", []),
    ("needs-old-foo", "1.0", "h0_0", ["libfoo <2"]),
    ("gpu-kernels", "1.0", "cpu_0", []),
    ("python", PY_FULL, "h0_cpython", []),
    ("pip", "23.2.1", "pyh0_0", [f"python {PY_VER}.*"]),
]


def default_cache_dir() -> Path:
    base = os.environ.get("CONDASTACK_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "condastack-test")
    return Path(base)


def _python_recipe(folder: Path) -> Path:
    """A recipe that repackages this interpreter as a relocatable conda `python`."""
    src = Path(sys.base_prefix)
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise SystemExit(f"{src}: the test python must be built with a shared libpython")
    exclude = " ".join(f"--exclude=python{PY_VER}/{d}" for d in
                       ("site-packages", "test", "idlelib", "tkinter", "lib2to3/tests", "ensurepip/_bundled"))
    (folder / "recipe.yaml").write_text(f"""
package:
  name: python
  version: "{PY_FULL}"
build:
  number: 0
  string: h0_cpython
  script:
    - mkdir -p $PREFIX/bin $PREFIX/lib $PREFIX/include
    - cp -a {src}/bin/python{PY_VER} $PREFIX/bin/
    - ln -s python{PY_VER} $PREFIX/bin/python3
    - ln -s python{PY_VER} $PREFIX/bin/python
    - cp -a {src}/lib/libpython{PY_VER}.so* {src}/lib/libpython3.so $PREFIX/lib/
    - cp -a {src}/include/python{PY_VER} $PREFIX/include/
    - tar -C {src}/lib -cf - --exclude=__pycache__ {exclude} python{PY_VER} | tar -C $PREFIX/lib -xf -
    - mkdir -p $PREFIX/lib/python{PY_VER}/site-packages
    - grep -rlI '{src}' $PREFIX/lib/python{PY_VER} | xargs -r sed -i 's|{src}|'"$PREFIX"'|g'
    - patchelf --set-rpath '$ORIGIN/../lib' $PREFIX/bin/python{PY_VER}
    - patchelf --set-rpath '$ORIGIN' $PREFIX/lib/libpython{PY_VER}.so.1.0
    - for f in $PREFIX/lib/python{PY_VER}/lib-dynload/*.so; do patchelf --set-rpath '$ORIGIN/../..' "$f"; done
""")
    return folder


def _pip_recipe(folder: Path) -> Path:
    sp = Path(sysconfig.get_paths()["purelib"])
    pip_dirs = [p.name for p in sp.iterdir() if p.name == "pip" or (p.name.startswith("pip-") and p.name.endswith(".dist-info"))]
    version = next(n[4:-10] for n in pip_dirs if n.endswith(".dist-info"))
    (folder / "recipe.yaml").write_text(f"""
package:
  name: pip
  version: "{version}"
build:
  number: 0
  string: pyh0_0
  script:
    - mkdir -p $PREFIX/lib/python{PY_VER}/site-packages
    - tar -C {sp} -cf - --exclude=__pycache__ {' '.join(pip_dirs)} | tar -C $PREFIX/lib/python{PY_VER}/site-packages -xf -
requirements:
  run:
    - python {PY_VER}.*
""")
    return folder


def _assemble_aarch64(out: Path) -> None:
    from rattler_build import assemble_package

    with tempfile.TemporaryDirectory() as empty:
        Path(empty, "share").mkdir()
        Path(empty, "share", ".metadata-only").write_text("no payload for this platform in the test channel\n")
        for name, version, build, depends in AARCH64:
            assemble_package(name, version, "linux-aarch64", build, out / "linux-aarch64",
                             files_dir=empty, depends=depends, detect_prefix=False, compression_level=1)


def _build(out: Path) -> None:
    index_channel(out)
    url = channel_url(out)
    with tempfile.TemporaryDirectory() as work:
        work_p = Path(work)
        for name in ORDER:
            dest = work_p / "out"
            for pkg in build_recipe(RECIPES / name, dest, [url]):
                sub = out / pkg.parent.name
                sub.mkdir(exist_ok=True)
                os.replace(pkg, sub / pkg.name)
            index_channel(out)  # so the next recipe's host env can see it
        for maker in (_python_recipe, _pip_recipe):
            rdir = work_p / maker.__name__
            rdir.mkdir()
            for pkg in build_recipe(maker(rdir), work_p / "out", [url]):
                os.replace(pkg, out / pkg.parent.name / pkg.name)
    _assemble_aarch64(out)
    index_channel(out)


def build_test_channel(cache_dir: Path | None = None) -> Path:
    """The test channel folder, built once per distinct recipe set and interpreter."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = "channel-" + tree_hash([RECIPES, Path(__file__)], extra=f"{sys.base_prefix}|{sys.version}")
    return cached_build(cache_dir, key, _build)


if __name__ == "__main__":
    print(build_test_channel(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
