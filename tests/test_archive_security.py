"""Archive security on `unpack` AND `install` (issue 9).

Crafted archives (path traversal, absolute members, symlink-then-write, hard links
to outside, device and fifo members) are refused by both commands; the member-count
and expanded-size limits are configurable (options and $CONDASTACK_MAX_MEMBERS /
$CONDASTACK_MAX_BYTES); on refusal DEST is exactly as it was (absent, or an existing
install), nothing outside is touched, and no temporary is left.

`install` checks an archive's sha256 before it unpacks, so each crafted archive here
gets honest sidecars: the attack is in the content, not in a broken checksum.
(test_pack.py covers the same crafted members on `unpack` alone; this file adds
`install`, the limits on both, and the "DEST as it was" checks for an existing env.)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, run_cli, write_project

TMP = ".condastack-tmp-"
F, D, SYM, HARD = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

# name -> (members [(name, type, linkname)], substring of the refusal)
CRAFTED: dict[str, tuple[list[tuple[str, bytes, str]], str]] = {
    "traversal": ([("ok.txt", F, ""), ("../outside/evil.txt", F, "")], "'..'"),
    "traversal-deep": ([("a/b/../../../outside/evil.txt", F, "")], "'..'"),
    "absolute": ([("ok.txt", F, ""), ("{outside}/evil.txt", F, "")], "absolute"),
    "symlink-then-write": ([("esc", SYM, "../outside"), ("esc/evil.txt", F, "")], "outside the destination"),
    "symlink-absolute-then-write": ([("esc", SYM, "{outside}"), ("esc/evil.txt", F, "")], "outside the destination"),
    "symlink-chain-then-write": ([("x", SYM, "."), ("y", SYM, "x/.."), ("y/outside/evil.txt", F, "")],
                                 "outside the destination"),
    "dir-replaced-by-symlink": ([("d", D, ""), ("d", SYM, "../outside"), ("d/evil.txt", F, "")],
                                "outside the destination"),
    "hardlink-outside": ([("h", HARD, "../outside/secret.txt")], "'..'"),
    "hardlink-absolute": ([("h", HARD, "{outside}/secret.txt")], "absolute"),
    "hardlink-through-symlink": ([("lib", D, ""), ("lib/l", SYM, "../.."), ("h", HARD, "lib/l/outside/secret.txt")],
                                 "outside the destination"),
    "fifo": ([("ok.txt", F, ""), ("pipe", tarfile.FIFOTYPE, "")], "fifo"),
    "char-device": ([("null", tarfile.CHRTYPE, "")], "character device"),
    "block-device": ([("sda", tarfile.BLKTYPE, "")], "block device"),
}


def crafted_archive(folder: Path, members: list[tuple[str, bytes, str]], outside: Path) -> Path:
    """A tar.zst of these members, with a matching .sha256 and a minimal manifest beside it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind, link in members:
            ti = tarfile.TarInfo(name.replace("{outside}", str(outside)))
            ti.type, ti.linkname, ti.mode = kind, link.replace("{outside}", str(outside)), 0o644
            data = b"evil\n" if kind == F else None
            ti.size = len(data) if data else 0
            tf.addfile(ti, io.BytesIO(data) if data else None)
    folder.mkdir(parents=True, exist_ok=True)
    arc = folder / "evil.tar.zst"
    subprocess.run(["zstd", "-q", "-f", "-o", str(arc)], input=buf.getvalue(), check=True)
    _sidecars(arc)
    return arc


def _sidecars(arc: Path, **manifest: object) -> None:
    digest = hashlib.sha256(arc.read_bytes()).hexdigest()
    Path(f"{arc}.sha256").write_text(f"{digest}  {arc.name}\n")
    Path(f"{arc}.manifest.json").write_text(json.dumps(
        {"format_version": 1, "format": "tar.zst", "archive": arc.name, "sha256": digest,
         "size": arc.stat().st_size, **manifest}))


def tree(path: Path) -> dict[str, str] | None:
    """Content of a folder by relative path (sha256 or link target); None if absent."""
    if not path.exists() and not path.is_symlink():
        return None
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(path))
            out[rel] = ("link:" + os.readlink(p) if p.is_symlink() else "dir" if p.is_dir()
                        else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TMP in p.name] if folder.is_dir() else []


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Path:
    """A real archive of a small env (hello), as `condastack pack` writes it."""
    root = tmp_path_factory.mktemp("secure")
    env = {"CONDASTACK_PKGS": str(root / "pkgs")}
    proj = write_project(root / "proj", """
        name: secure
        platforms: [linux-64]
        virtual-packages:
          linux-64: {__glibc: "2.28"}
        layers:
          app: {file: app.yml}
        """, {"app.yml": f'name: app\nchannels: ["{channel_url}"]\ndependencies:\n  - hello\n'})
    for args in (["lock"], ["build", "app"], ["pack", "app"]):
        res = run_cli("-C", proj, *args, env=env)
        assert res.returncode == 0, res.output
    return proj / "pack" / "app-linux-64.tar.zst"


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text("secret\n")
    return d


def _outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret\n"


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_archive_refused_by_unpack_and_install(case: str, tmp_path: Path, outside: Path,
                                                       good_archive: Path) -> None:
    members, needle = CRAFTED[case]
    # the members resolve against DEST's parent, where `outside` lives
    arc = crafted_archive(tmp_path / "dl", members, outside)

    dest = tmp_path / "dest"
    assert_user_error(run_cli("unpack", arc, dest), "refused", needle, str(arc))
    assert not dest.exists() and leftovers(tmp_path) == []
    _outside_untouched(outside)

    # install: into a new prefix, and over an existing install, which must stay as it was
    fresh = tmp_path / "site" / "fresh"
    assert_user_error(run_cli("install", arc, "--prefix", fresh), "refused", needle)
    assert not fresh.exists() and leftovers(fresh.parent) == []
    prefix = tmp_path / "site" / "app"
    res = run_cli("install", good_archive, "--prefix", prefix)
    assert res.returncode == 0, res.output
    before = tree(prefix)
    assert_user_error(run_cli("install", arc, "--prefix", prefix), "refused", needle)
    assert tree(prefix) == before
    assert leftovers(prefix.parent) == []
    _outside_untouched(outside)


LIMITS = [
    # (how the limit is set: CLI options or environment, which limit, expected words)
    ("option", "members", "--max-members"),
    ("option", "bytes", "--max-bytes"),
    ("env", "members", "CONDASTACK_MAX_MEMBERS"),
    ("env", "bytes", "CONDASTACK_MAX_BYTES"),
]


@pytest.mark.parametrize("how,kind,word", LIMITS, ids=[f"{h}-{k}" for h, k, _ in LIMITS])
def test_limits_refused_by_unpack_and_install(how: str, kind: str, word: str, good_archive: Path,
                                              tmp_path: Path) -> None:
    manifest = json.loads(Path(f"{good_archive}.manifest.json").read_text())
    # just under what the archive needs: members (files + folders) > file_count / 2; bytes < bytes_unpacked
    limit = manifest["file_count"] // 2 if kind == "members" else manifest["bytes_unpacked"] // 2
    args = [f"--max-{kind}", str(limit)] if how == "option" else []
    env = {f"CONDASTACK_MAX_{kind.upper()}": str(limit)} if how == "env" else {}

    dest = tmp_path / "dest"
    assert_user_error(run_cli("unpack", *args, good_archive, dest, env=env), "refused", word, f"more than {limit}")
    assert not dest.exists() and leftovers(tmp_path) == []

    prefix = tmp_path / "site" / "app"
    assert run_cli("install", good_archive, "--prefix", prefix).returncode == 0
    before = tree(prefix)
    assert_user_error(run_cli("install", good_archive, "--prefix", prefix, *args, env=env), "refused", word)
    assert tree(prefix) == before and leftovers(prefix.parent) == []

    # a generous limit lets the same archive through: the limit is what refused it
    big = str(limit * 100)
    ok_args = [f"--max-{kind}", big] if how == "option" else []
    ok_env = {f"CONDASTACK_MAX_{kind.upper()}": big} if how == "env" else {}
    res = run_cli("unpack", *ok_args, good_archive, dest, env=ok_env)
    assert res.returncode == 0, res.output


def test_bad_limit_setting_is_a_user_error(good_archive: Path, tmp_path: Path) -> None:
    res = run_cli("unpack", good_archive, tmp_path / "d", env={"CONDASTACK_MAX_BYTES": "lots"})
    assert_user_error(res, "CONDASTACK_MAX_BYTES='lots'", "whole number")
    assert not (tmp_path / "d").exists()
