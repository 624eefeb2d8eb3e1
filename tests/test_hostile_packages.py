"""Hostile conda packages: the path-safety gate refuses them before the installer links anything.

Each package is crafted here byte by byte (a .tar.bz2, or a .conda zip of two
tar.zst), put in a channel indexed by rattler's own indexer, locked like any
other, and then built. A package that names a path outside the prefix (in a
member, a link target, info/paths.json, info/files or info/has_prefix) must be
refused by name with exit 1, with the canary folder beside the prefix
unchanged, no env created and no temporary left. A well-formed package built
the same way goes through, so the gate is not simply refusing everything.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import zstandard

from tests.helpers import assert_user_error, run_cli, write_project

TMP = ".condastack-tmp-"
F, SYM, HARD, FIFO = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE
OUT = "../../canary/victim.txt"  # from a prefix at ROOT/envs/<layer>, the canary file beside it


def _paths_json(paths: list[str]) -> bytes:
    return json.dumps({"paths": [{"_path": p, "path_type": "hardlink", "size_in_bytes": 5} for p in paths],
                       "paths_version": 1}).encode()


# name -> (payload members [(name, type, linkname)], extra info files {name: bytes}, substring of the refusal)
# "{abs}" is replaced by the absolute path of the canary file.
CASES: dict[str, tuple[list[tuple[str, bytes, str]], dict[str, bytes], str]] = {
    "paths-json-dotdot": ([("lib/ok.txt", F, "")], {"info/paths.json": _paths_json(["lib/ok.txt", OUT])},
                          "not normalized"),
    "paths-json-absolute": ([("lib/ok.txt", F, "")], {"info/paths.json": _paths_json(["{abs}"])}, "absolute"),
    "paths-json-dot-part": ([("lib/ok.txt", F, "")], {"info/paths.json": _paths_json(["lib/./ok.txt"])},
                            "not normalized"),
    "paths-json-through-symlink": ([("lib/ok.txt", F, ""), ("up", SYM, "lib")],
                                   {"info/paths.json": _paths_json(["up/ok.txt"])}, "goes through the symlink"),
    "paths-json-not-json": ([("lib/ok.txt", F, "")], {"info/paths.json": b"{not json"}, "malformed"),
    "paths-json-wrong-type": ([("lib/ok.txt", F, "")], {"info/paths.json": b'{"paths": {"_path": 1}}'},
                              "malformed"),
    "files-dotdot": ([("lib/ok.txt", F, "")], {"info/files": f"lib/ok.txt\n{OUT}\n".encode()}, "info/files"),
    "files-absolute": ([("lib/ok.txt", F, "")], {"info/files": b"{abs}\n"}, "info/files"),
    "has-prefix-absolute": ([("lib/ok.txt", F, "")], {"info/has_prefix": b"/opt/placeholder text {abs}\n"},
                            "info/has_prefix"),
    "has-prefix-dotdot-quoted": ([("lib/ok.txt", F, "")],
                                 {"info/has_prefix": f'"/opt/placeholder" text "{OUT}"\n'.encode()},
                                 "info/has_prefix"),
    "member-absolute": ([("lib/ok.txt", F, ""), ("{abs}", F, "")], {}, "is absolute"),
    "member-dotdot": ([("lib/../../../canary/victim.txt", F, "")], {}, "not normalized"),
    "member-symlink-escapes": ([("lib/esc", SYM, "../../../canary")], {}, "outside the prefix"),
    "member-symlink-absolute": ([("lib/esc", SYM, "/etc")], {}, "absolute path"),
    "member-through-symlink": ([("esc", SYM, "lib"), ("lib/x.txt", F, ""), ("esc/y.txt", F, "")], {},
                               "goes through the symlink"),
    "member-hardlink-to-symlink": ([("lib/x.txt", F, ""), ("lib/s", SYM, "x.txt"), ("h", HARD, "lib/s")], {},
                                   "hard link to the symlink"),
    "member-fifo": ([("lib/pipe", FIFO, "")], {}, "fifo"),
}


def _tar(members: list[tuple[str, bytes, str]], info: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in info.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
        for name, kind, link in members:
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname, ti.mode = kind, link, 0o644
            data = b"evil\n" if kind == F else b""
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _index_json(name: str) -> bytes:
    return json.dumps({"name": name, "version": "1.0", "build": "h0_0", "build_number": 0, "depends": [],
                       "subdir": "linux-64", "platform": "linux", "arch": "x86_64", "license": "MIT"}).encode()


def _info(name: str, members: list, extra: dict[str, bytes], abs_target: str) -> dict[str, bytes]:
    payload = [m[0] for m in members if m[1] in (F, HARD)]
    info = {"info/index.json": _index_json(name),
            "info/paths.json": _paths_json([p for p in payload if not p.startswith("/")]),
            "info/files": ("\n".join(payload) + "\n").encode()}
    info.update({k: v.replace(b"{abs}", abs_target.encode()) for k, v in extra.items()})
    return info


def make_tar_bz2(folder: Path, name: str, members: list, extra: dict[str, bytes], abs_target: str) -> Path:
    members = [(n.replace("{abs}", abs_target), k, l) for n, k, l in members]
    raw = _tar(members, _info(name, members, extra, abs_target))
    path = folder / f"{name}-1.0-h0_0.tar.bz2"
    import bz2

    path.write_bytes(bz2.compress(raw))
    return path


def make_conda(folder: Path, name: str, members: list, extra: dict[str, bytes], abs_target: str) -> Path:
    members = [(n.replace("{abs}", abs_target), k, l) for n, k, l in members]
    stem = f"{name}-1.0-h0_0"
    cctx = zstandard.ZstdCompressor()
    path = folder / f"{stem}.conda"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata.json", json.dumps({"conda_pkg_format_version": 2}))
        zf.writestr(f"info-{stem}.tar.zst", cctx.compress(_tar([], _info(name, members, extra, abs_target))))
        zf.writestr(f"pkg-{stem}.tar.zst", cctx.compress(_tar(members, {})))
    return path


LAYERS = {**{k: k for k in CASES}, "conda-member-absolute": "conda-member-absolute",
          "conda-paths-json-dotdot": "conda-paths-json-dotdot", "good": "good", "conda-good": "conda-good"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A project with one layer per hostile package, locked once against a crafted channel."""
    import rattler.index

    root = tmp_path_factory.mktemp("hostile")
    canary = root / "proj" / "canary"
    canary.mkdir(parents=True)
    (canary / "victim.txt").write_text("precious\n")
    chan = root / "channel"
    (chan / "linux-64").mkdir(parents=True)
    (chan / "noarch").mkdir()
    abs_target = str(canary / "victim.txt")
    for case, (members, extra, _) in CASES.items():
        make_tar_bz2(chan / "linux-64", case, members, extra, abs_target)
    make_conda(chan / "linux-64", "conda-member-absolute", [("lib/ok.txt", F, ""), ("{abs}", F, "")], {}, abs_target)
    make_conda(chan / "linux-64", "conda-paths-json-dotdot", [("lib/ok.txt", F, "")],
               {"info/paths.json": _paths_json([OUT])}, abs_target)
    make_tar_bz2(chan / "linux-64", "good", [("lib/good.txt", F, ""), ("lib/l", SYM, "good.txt")], {}, abs_target)
    make_conda(chan / "linux-64", "conda-good", [("lib/cgood.txt", F, "")], {}, abs_target)
    asyncio.run(rattler.index.index_fs(chan, write_zst=False, write_shards=False))
    layers = "\n".join(f"  {n}: {{file: {n}.yml}}" for n in LAYERS)
    write_project(root / "proj", f"name: hostile\nplatforms: [linux-64]\nlayers:\n{layers}\n",
                  {f"{n}.yml": f'channels: ["{chan.as_uri()}"]\ndependencies:\n  - {pkg}\n'
                   for n, pkg in LAYERS.items()})
    env = {"CONDASTACK_PKGS": str(root / "pkgs")}
    res = run_cli("-C", root / "proj", "lock", env=env)
    assert res.returncode == 0, res.output
    return {"root": root / "proj", "canary": canary, "pkgs": root / "pkgs"}


def _no_temporaries(*folders: Path) -> None:
    for folder in folders:
        left = [p for p in folder.rglob("*") if TMP in p.name]
        assert not left, left


def _build(hostile: dict[str, Path], layer: str):  # noqa: ANN202 - a conftest Result
    return run_cli("-C", hostile["root"], "build", layer, env={"CONDASTACK_PKGS": str(hostile["pkgs"])})


@pytest.mark.parametrize("case", [*CASES, "conda-member-absolute", "conda-paths-json-dotdot"])
def test_hostile_package_refused_by_name(case: str, hostile: dict[str, Path]) -> None:
    res = _build(hostile, case)
    want = CASES[case][2] if case in CASES else ("is absolute" if "absolute" in case else "not normalized")
    assert_user_error(res, f"package {case} 1.0", want, "refused")
    assert "Rust" not in res.output and "panicked" not in res.output
    # the canary beside the prefix is as it was, nothing was added to it, and no env was made
    assert sorted(p.name for p in hostile["canary"].iterdir()) == ["victim.txt"]
    assert (hostile["canary"] / "victim.txt").read_text() == "precious\n"
    assert not (hostile["root"] / "envs" / case).exists()
    _no_temporaries(hostile["root"], hostile["pkgs"])
    # the refused archive does not stay in the cache as if it were good
    assert not list(hostile["pkgs"].glob(f"{case}-1.0-*"))


@pytest.mark.parametrize("layer", ["good", "conda-good"])
def test_wellformed_crafted_package_passes_the_gate(layer: str, hostile: dict[str, Path]) -> None:
    res = _build(hostile, layer)
    assert res.returncode == 0, res.output
    name = "good.txt" if layer == "good" else "cgood.txt"
    assert (hostile["root"] / "envs" / layer / "lib" / name).read_text() == "evil\n"
    # checked once: the stamp beside the cached archive says so
    assert list((hostile["pkgs"] / ".condastack-pathsafe").glob(f"{layer}-1.0-*"))
    _no_temporaries(hostile["root"], hostile["pkgs"])
