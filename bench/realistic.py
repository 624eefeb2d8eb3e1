"""A realistic channel and installed environment for the benchmarks (>= 1 GB, >= 50k files).

Real conda packages: bulk payloads copied from this machine (/usr/lib ELF
libraries, which compress poorly, /usr/share text and data, which compress
well, and this interpreter's site-packages), assembled with
`rattler_build.assemble_package`; plus `rt-tools`, built by rattler-build
from a recipe whose gcc-compiled binaries have the prefix compiled in
(binary placeholders) and whose scripts and config files mention it (text
placeholders). Built once and cached by a hash of this file under
$CONDASTACK_BENCH_CACHE (default ~/.cache/condastack-bench).

    realistic_channel() -> Path          the channel folder
    realistic_specs() -> list[str]       everything (base + app)
    realistic_base_specs(), realistic_app_specs()   for "app after base" benchmarks
    realistic_env() -> Path              an installed env (with conda-meta/condastack.info)

    python bench/realistic.py            builds both and prints their paths and sizes
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from condastack.channel.index import build_recipe, cached_build, channel_url, index_channel  # noqa: E402

N_PROGRAMS = 24       # distinct gcc-compiled binaries with the prefix inside
N_BIN_COPIES = 16     # copies of each (binary placeholder files)
N_TEXT = 3000         # text files with the prefix inside
LIB_BUDGET = 450_000_000  # bytes of /usr/lib payload (ELF, compresses ~3x)
# A cap on the /usr/share and site-packages payloads, for machines where those are GBs (the GPU node's
# interpreter holds torch, jax, ...): $CONDASTACK_BENCH_BUDGET bytes each; unset, no cap.
OTHER_BUDGET = int(os.environ.get("CONDASTACK_BENCH_BUDGET") or 0) or None

BASE = ["rt-syslibs", "rt-share", "rt-tools"]
APP = ["rt-app"]


def cache_dir() -> Path:
    return Path(os.environ.get("CONDASTACK_BENCH_CACHE") or os.path.expanduser("~/.cache/condastack-bench"))


def _key() -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"{sys.version}|{sys.base_prefix}".encode())
    if OTHER_BUDGET is not None:
        h.update(f"|{OTHER_BUDGET}".encode())
    return h.hexdigest()[:16]


def realistic_specs() -> list[str]:
    return BASE + APP


def realistic_base_specs() -> list[str]:
    return list(BASE)


def realistic_app_specs() -> list[str]:
    return list(APP)


def _link_tree(src: Path, dst: Path, budget: int | None = None) -> int:
    """Hard-link (or copy) the regular files of src under dst; symlinks and specials are skipped."""
    import shutil

    used = 0
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            p = Path(root, name)
            if p.is_symlink() or not p.is_file():
                continue
            size = p.stat().st_size
            if budget is not None and used + size > budget:
                continue
            out = dst / p.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(p, out)
            except OSError:
                shutil.copy2(p, out)
            used += size
    return used


def _tools_recipe(folder: Path) -> Path:
    src = folder / "src"
    src.mkdir()
    (src / "tool.c").write_text(
        '#include <stdio.h>\n#ifndef ID\n#define ID 0\n#endif\n'
        'static const char prefix[] = PREFIX_STR;\n'
        'int main(void) { printf("tool%d prefix=%s\\n", ID, prefix); return 0; }\n')
    lines = [
        "mkdir -p $PREFIX/bin $PREFIX/etc/rt $PREFIX/lib/pkgconfig $PREFIX/lib/cmake/rt",
        f"for i in $(seq 1 {N_PROGRAMS}); do /usr/bin/gcc -O1 -DID=$i -DPREFIX_STR=\"\\\"$PREFIX\\\"\" "
        "-o $PREFIX/bin/rt-tool$i tool.c; done",
        f"for i in $(seq 1 {N_PROGRAMS}); do for j in $(seq 1 {N_BIN_COPIES}); do "
        "cp $PREFIX/bin/rt-tool$i $PREFIX/lib/rt-tool$i-$j.bin; done; done",
        f"for i in $(seq 1 {N_TEXT // 3}); do "
        "printf 'prefix=%s\\nlibdir=${prefix}/lib\\nName: rt%s\\n' \"$PREFIX\" $i > $PREFIX/lib/pkgconfig/rt$i.pc; "
        "printf 'set(RT_ROOT \"%s\")\\n' \"$PREFIX\" > $PREFIX/lib/cmake/rt/rt$i.cmake; "
        "printf 'home=%s\\nid=%s\\n' \"$PREFIX\" $i > $PREFIX/etc/rt/rt$i.conf; done",
        "printf '#!/bin/sh\\necho \"rt-script prefix=%s\"\\n' \"$PREFIX\" > $PREFIX/bin/rt-script",
        "chmod +x $PREFIX/bin/rt-script",
    ]
    script = "\n".join(f"    - {json.dumps(line)}" for line in lines)
    (folder / "recipe.yaml").write_text(
        f'package:\n  name: rt-tools\n  version: "1.0"\nsource:\n  path: src\nbuild:\n  number: 0\n  script:\n{script}\n')
    return folder


def _build_channel(out: Path) -> None:
    from rattler_build import assemble_package

    index_channel(out)
    sub = out / "linux-64"
    site = Path(sysconfig.get_paths()["purelib"])
    payloads = {
        "rt-syslibs": [(Path("/usr/lib/x86_64-linux-gnu"), "lib", LIB_BUDGET)],
        "rt-share": [(Path("/usr/share"), "share", OTHER_BUDGET)],
        "rt-app": [(site, "lib/python3/site-packages", OTHER_BUDGET)],
    }
    depends = {"rt-app": ["rt-syslibs", "rt-tools"], "rt-syslibs": [], "rt-share": []}
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        for name, parts in payloads.items():
            files = Path(work) / name
            for src, rel, budget in parts:
                _link_tree(src, files / rel, budget)
            assemble_package(name, "1.0", "linux-64", "h0_0", sub, files_dir=files, depends=depends[name],
                             detect_prefix=False, compression_level=1, compression_threads=os.cpu_count())
        rdir = Path(work) / "tools"
        rdir.mkdir()
        for pkg in build_recipe(_tools_recipe(rdir), Path(work) / "out", [channel_url(out)], level=1):
            os.replace(pkg, sub / pkg.name)
    index_channel(out)


def realistic_channel() -> Path:
    return cached_build(cache_dir(), "channel-" + _key(), _build_channel)


def realistic_env() -> Path:
    """The whole realistic stack installed with py-rattler (hard links from its own package cache)."""
    channel = realistic_channel()

    def build(folder: Path) -> None:
        import rattler

        prefix = folder / "env"
        recs = asyncio.run(rattler.solve([channel.as_uri()], realistic_specs(), platforms=["linux-64", "noarch"]))
        asyncio.run(rattler.install(recs, str(prefix), cache_dir=str(cache_dir() / "pkgs")))
        (prefix / "conda-meta" / "condastack.info").write_text(json.dumps({
            "layer": "app", "stack": "realistic", "platform": "linux-64", "lock_hash": _key(),
            "lockfile": None, "created_by": "bench/realistic.py"}))

    return cached_build(cache_dir(), "env-" + _key(), build) / "env"


def tree_size(path: Path) -> tuple[int, int]:
    n = size = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            n += 1
            size += st.st_size
    return n, size


if __name__ == "__main__":
    print("channel:", realistic_channel())
    env = realistic_env()
    n, size = tree_size(env)
    print(f"env: {env} ({n} files, {size / 1e9:.2f} GB)")
    sys.stdout.flush()
    os._exit(0)  # py-rattler's runtime can crash at interpreter exit
