"""The package-cache integrity check (env.pkgcache): one `find` listing against stamps, os.scandir alike."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from condastack.core.layout import verified_stamp
from condastack.env import pkgcache


def _package(cache: Path, name: str) -> Path:
    """An extracted package folder as the installer leaves it: files, a symlink, info/paths.json."""
    folder = cache / name
    files = {"lib/libx.so": b"\x7fELF" + name.encode(), "share/doc/a b.txt": b"text\n", "bin/tool": b"#!/bin/sh\n"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "lib" / "libx.so.1").symlink_to("libx.so")
    paths = [{"_path": rel, "path_type": "hardlink", "sha256": hashlib.sha256(d).hexdigest()}
             for rel, d in files.items()]
    paths.append({"_path": "lib/libx.so.1", "path_type": "softlink"})
    (folder / "info").mkdir()
    (folder / "info" / "paths.json").write_text(json.dumps({"paths": paths, "paths_version": 1}))
    return folder


def test_find_and_scandir_list_alike(tmp_path: Path) -> None:
    if shutil.which("find") is None:
        pytest.skip("no find here")
    folders = [_package(tmp_path, f"pkg{i}-1.0-0") for i in range(3)]
    found = pkgcache._find_listings(folders)
    assert found is not None, "GNU find with -printf is expected on the test machine"
    for folder, listing in zip(folders, found, strict=True):
        scanned = pkgcache._scan_listing(folder)
        assert scanned is not None and listing.startswith(b"d \0") and listing.endswith(b"\0")
        assert sorted(listing.split(b"\0")) == sorted(scanned.split(b"\0"))
        assert b" lib/libx.so.1\0" in listing and b" share/doc/a b.txt\0" in listing


def test_stamped_folders_hold_and_an_edit_is_caught(tmp_path: Path) -> None:
    folders = [_package(tmp_path, f"pkg{i}-1.0-0") for i in range(3)]
    pkgcache.stamp(*folders)
    assert all(verified_stamp(f, ".tree").is_file() for f in folders)
    assert pkgcache.edited_folders(folders) == []
    # an in-place edit (same size: only the mtime tells) of one folder's file is caught, the others hold
    target = folders[1] / "share" / "doc" / "a b.txt"
    before = target.stat().st_mtime_ns
    target.write_bytes(b"TEXT\n")
    os.utime(target, ns=(before, before + 1_000_000))  # a later mtime, even within one clock tick
    assert pkgcache.edited_folders(folders) == [folders[1]]
    pkgcache.discard(folders[1])
    assert not folders[1].exists() and not verified_stamp(folders[1], ".tree").exists()


def test_stamps_shifted_between_folders_are_not_trusted(tmp_path: Path) -> None:
    """find's whole output is compared with the stamps one after the other; stamps whose bytes add up
    to it but are cut at other places (one folder's listing moved into the stamp before it) are not
    taken as good: those folders are hashed and stamped anew."""
    folders = [_package(tmp_path, f"pkg{i}-1.0-0") for i in range(3)]
    pkgcache.stamp(*folders)
    first, second = (verified_stamp(f, ".tree") for f in folders[:2])
    first.write_bytes(first.read_bytes() + second.read_bytes())
    second.write_bytes(b"")
    assert pkgcache.edited_folders(folders) == []  # the files are as their paths.json says
    assert second.read_bytes().startswith(b"d \0")  # hashed and stamped again, not trusted as it was
    assert sorted(first.read_bytes().split(b"\0")) == sorted(pkgcache.listings([folders[0]])[0].split(b"\0"))


def test_touched_but_unchanged_and_old_stamps_are_hashed_and_restamped(tmp_path: Path) -> None:
    folder = _package(tmp_path, "pkg-1.0-0")
    stamp_file = verified_stamp(folder, ".tree")
    stamp_file.parent.mkdir(parents=True)
    stamp_file.write_text("5 1700000000000000000 bin/tool\n")  # the older text format
    assert pkgcache.intact(folder)  # hashed against paths.json, then stamped in the new form
    assert stamp_file.read_bytes().startswith(b"d \0")
    os.utime(folder / "bin" / "tool", ns=(1, 1))  # mtime moved, content unchanged: hashes hold
    assert pkgcache.intact(folder)
    # a folder gone (find fails): the others are still checked, through os.scandir
    os.utime(folder / "bin" / "tool", ns=(2, 2))
    (folder / "bin" / "tool").write_bytes(b"#!/bin/XX\n")
    os.utime(folder / "bin" / "tool", ns=(3, 3))
    assert pkgcache.edited_folders([tmp_path / "gone-1.0-0", folder]) == [folder]
