"""Lock benchmark: cold lock, no-op re-lock and `--update`, on the offline test channel.

    .venv/bin/python bench/lock.py

Each figure is the wall time of the `condastack` CLI (a fresh process, as a
user runs it), so it includes interpreter start-up and imports. The peer is a
bare `rattler.solve` of the same specs in the same run: the cost of the solve
that a cold lock cannot avoid.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "channel"))

from testchannel import build_test_channel  # noqa: E402

CLI = [sys.executable, str(REPO / "cli.py")]


def _run(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([*CLI, *args], check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CONDASTACK_CACHE"] = cache  # a cold lock starts with an empty spec cache
        _main()


def _main() -> None:
    channel = build_test_channel()
    url = channel.as_uri()
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp) / "proj"
        env = proj / "environments"
        env.mkdir(parents=True)
        (env / "stack.yml").write_text(textwrap.dedent("""
            name: bench
            platforms: [linux-64, linux-aarch64]
            virtual-packages:
              linux-64: {__cuda: "12.6", __glibc: "2.28"}
              linux-aarch64: {__glibc: "2.28"}
            layers:
              base: {file: base.yml}
              app: {file: app.yml, extends: base}
            """))
        (env / "base.yml").write_text(f'channels: ["{url}"]\ndependencies: [python, pip, libhello, "libfoo <2", gpu-kernels]\n')
        (env / "app.yml").write_text("dependencies: [hello, noarch-data]\n")

        import rattler

        from condastack.solve import virtual_packages

        t = time.perf_counter()
        for plat in ("linux-64", "linux-aarch64"):
            asyncio.run(rattler.solve([url], ["python", "pip", "libhello", "libfoo <2", "gpu-kernels", "hello",
                                              "noarch-data"], platforms=[plat, "noarch"],
                                      virtual_packages=virtual_packages({"__glibc": "2.28"})))
        bare = time.perf_counter() - t

        cold = _run("-C", str(proj), "lock")
        noop = min(_run("-C", str(proj), "lock") for _ in range(3))
        (env / "base.yml").write_text(f'channels: ["{url}"]\ndependencies: [python, pip, libhello, libfoo, gpu-kernels]\n')
        relax = _run("-C", str(proj), "lock")  # spec relaxed: previous solution kept as preference
        update = _run("-C", str(proj), "lock", "--update", "libfoo")
        check = _run("-C", str(proj), "lock", "--check")
        startup = min(_run("--version") for _ in range(3))

    rows = [
        ("cold lock (2 layers x 2 platforms)", cold),
        ("no-op re-lock", noop),
        ("re-lock after a spec change", relax),
        ("--update libfoo", update),
        ("--check", check),
        ("condastack --version (start-up floor)", startup),
        ("bare rattler.solve, same specs, 2 platforms (in-process)", bare),
    ]
    print("| step | wall (s) |")
    print("|---|---|")
    for name, secs in rows:
        print(f"| {name} | {secs:.2f} |")
    print(f"\nno-op re-lock / cold lock = {noop / cold:.2f}")


if __name__ == "__main__":
    main()
