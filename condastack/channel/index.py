"""Local conda channels: build packages with py-rattler-build and index them.

Used for the offline test channel, the bundled example, and the site channel
that `condastack wrap` fills with components built from git.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
from collections.abc import Iterable
from pathlib import Path

from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_path, file_lock

SUBDIRS = ("noarch", "linux-64")


def index_channel(folder: Path) -> None:
    """(Re)write repodata.json for every subdir of a local channel folder."""
    import rattler.index  # lazy: native, ~0.2 s

    folder = Path(folder)
    for sub in SUBDIRS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    asyncio.run(rattler.index.index_fs(folder))


def channel_url(folder: Path) -> str:
    return Path(folder).resolve().as_uri()


def tree_hash(paths: Iterable[Path], extra: str = "") -> str:
    """A content hash of files and folders (names and bytes), for caching builds."""
    h = hashlib.sha256(extra.encode())
    for root in sorted(Path(p) for p in paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(root.parent)).encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def build_recipe(recipe: Path, output_dir: Path, channels: list[str], *, level: int = 1) -> list[Path]:
    """Build one rattler-build recipe into output_dir; returns the package files."""
    from rattler_build import (  # lazy: only to build
        Stage0Recipe,
        ToolConfiguration,
    )

    recipe = Path(recipe)
    recipe_file = recipe / "recipe.yaml" if recipe.is_dir() else recipe
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            rec = Stage0Recipe.from_file(str(recipe_file))
            results = rec.run_build(
                tool_config=ToolConfiguration(test_strategy="skip", compression_threads=os.cpu_count()),
                output_dir=str(output_dir),
                channels=channels,
                package_format=f"conda:{level}",
                no_include_recipe=True,
                no_build_id=True,
            )
    except Exception as e:  # rattler-build's errors carry the build log
        raise CondastackError(f"building recipe {recipe_file} failed: {e}") from None
    return [Path(p) for r in results for p in r.packages]


def cached_build(cache_root: Path, key: str, build) -> Path:  # noqa: ANN001 - build(folder) -> None
    """Return `cache_root/key`, running `build(tmp)` once if it is missing.

    Concurrent callers wait on a file lock; a half-built folder is never used
    because it is renamed into place only when complete.
    """

    cache_root = Path(cache_root)
    final = cache_root / key
    if (final / ".complete").exists():
        return final
    with file_lock(cache_root / f".{key}.lock"):
        if (final / ".complete").exists():
            return final
        with atomic_path(final) as tmp:
            tmp.mkdir(parents=True)
            build(tmp)
            (tmp / ".complete").write_text(key + "\n")
    return final
