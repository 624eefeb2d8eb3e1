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
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from condastack.channel import pyrecipe as pyrecipe_module  # noqa: E402
from condastack.channel.index import build_recipe, cached_build, channel_url, index_channel, tree_hash  # noqa: E402
from condastack.channel.pyrecipe import Interpreter, pip_recipe, python_recipe  # noqa: E402

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
        py = Interpreter.at(Path(sys.base_prefix))
        for maker in (python_recipe, pip_recipe):
            for pkg in build_recipe(maker(py, work_p / maker.__name__), work_p / "out", [url]):
                os.replace(pkg, out / pkg.parent.name / pkg.name)
    _assemble_aarch64(out)
    index_channel(out)


def build_test_channel(cache_dir: Path | None = None) -> Path:
    """The test channel folder, built once per distinct recipe set and interpreter."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = "channel-" + tree_hash([RECIPES, Path(__file__), Path(pyrecipe_module.__file__)],
                                 extra=f"{sys.base_prefix}|{sys.version}")
    return cached_build(cache_dir, key, _build)


if __name__ == "__main__":
    print(build_test_channel(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
