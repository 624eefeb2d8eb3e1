"""Hostile archives for `unpack`, `relocate` and `install`: malformed tar/pax headers, sparse members,
link tricks and prefix records that name paths outside the destination.

Each case asserts exit 1 (never 70, never a hang: every run has a timeout), that the
message names the archive or records file, that DEST was not created, that the
canary folder beside DEST is unchanged, and that no temporary is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, run_cli

TMP = ".condastack-tmp-"
PLACEHOLDER = "/opt/condastack-placeholder-prefix-that-is-long-enough"


def _member(name: str, data: bytes = b"x\n", kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode, ti.size = kind, link, 0o644, len(data) if kind == tarfile.REGTYPE else 0
    body = data if kind == tarfile.REGTYPE else b""
    return ti.tobuf(tarfile.USTAR_FORMAT) + body + b"\0" * (-len(body) % 512)


def _meta(kind: bytes, body: bytes) -> bytes:
    """An extended header (pax 'x', global 'g', GNU long name 'L') with exactly this body."""
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type, ti.size = kind, len(body)
    return ti.tobuf(tarfile.USTAR_FORMAT) + body + b"\0" * (-len(body) % 512)


def _patch_size(header: bytes, field: bytes) -> bytes:
    """A header whose 12-byte size field is `field`, with a correct checksum (so only the size is wrong)."""
    h = bytearray(header[:512])
    h[124:136] = field.ljust(12, b"\0")[:12]
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + header[512:]


def _end() -> bytes:
    return b"\0" * 1024


def _pax_rec(key: str, value: str) -> bytes:
    rec = f" {key}={value}\n".encode()
    n = len(rec) + 1
    while len(str(n)) + len(rec) != n:
        n += 1
    return str(n).encode() + rec


ENV_FILES = _member("conda-meta/history", b"") + _member("bin/tool", f"#!{PLACEHOLDER}/bin/sh\n".encode())


def _records(records: object) -> bytes:
    return _member("conda-meta/condastack.prefixes",
                   json.dumps({"current": None, "records": records}).encode())


# id -> (tar bytes, or a function of the canary folder giving them; extra CLI args; substrings of the refusal)
CASES: dict[str, tuple[bytes, list[str], list[str]]] = {
    "pax-zero-length-record": (_meta(tarfile.XHDTYPE, b"0 \n") + _member("a") + _end(), [], ["pax header"]),
    "pax-length-not-numeric": (_meta(tarfile.XHDTYPE, b"1x path=a\n") + _member("a") + _end(), [],
                               ["not a number"]),
    "pax-length-past-body": (_meta(tarfile.XHDTYPE, b"99 path=a\n") + _member("a") + _end(), [], ["out of range"]),
    "pax-record-no-equals": (_meta(tarfile.XHDTYPE, b"9 pathab\n") + _member("a") + _end(), [], ["key=value"]),
    "pax-record-no-newline": (_meta(tarfile.XHDTYPE, b"10 path=ab") + _member("a") + _end(), [], ["key=value"]),
    "pax-global-zero-length": (_meta(tarfile.XGLTYPE, b"0 \n") + _member("a") + _end(), [], ["pax header"]),
    "pax-size-not-numeric": (_meta(tarfile.XHDTYPE, _pax_rec("size", "12abc")) + _member("a") + _end(), [],
                             ["not a size"]),
    "pax-size-negative": (_meta(tarfile.XHDTYPE, _pax_rec("size", "-512")) + _member("a") + _end(), [],
                          ["not a size"]),
    "ustar-size-negative": (_patch_size(_member("a"), b"-0000000001") + _end(), [], ["size field"]),
    "ustar-size-underscore": (_patch_size(_member("a"), b"0000_000002") + _end(), [], ["size field"]),
    "ustar-size-plus": (_patch_size(_member("a"), b"+0000000002") + _end(), [], ["size field"]),
    "ustar-size-base256-negative": (_patch_size(_member("a"), b"\xff" * 12) + _end(), [], ["negative size"]),
    "sparse-realsize-over-max-bytes": (
        _meta(tarfile.XHDTYPE, _pax_rec("GNU.sparse.major", "1") + _pax_rec("GNU.sparse.minor", "0")
              + _pax_rec("GNU.sparse.name", "big.bin") + _pax_rec("GNU.sparse.realsize", str(1 << 40)))
        + _member("GNUSparseFile.0/big.bin", b"1\n0\n2\n" + b"\0" * 506 + b"ab") + _end(),
        ["--max-bytes", "1000000"], ["--max-bytes"]),
    "sparse-name-escapes": (
        _meta(tarfile.XHDTYPE, _pax_rec("GNU.sparse.major", "1") + _pax_rec("GNU.sparse.minor", "0")
              + _pax_rec("GNU.sparse.name", "../canary/victim.txt") + _pax_rec("GNU.sparse.realsize", "2"))
        + _member("GNUSparseFile.0/ok.bin", b"1\n0\n2\n" + b"\0" * 506 + b"ab") + _end(), [], ["'..'"]),
    "gnu-old-sparse-type": (_member("s", b"", tarfile.GNUTYPE_SPARSE) + _end(), [], ["unsupported type"]),
    "hardlink-to-inner-symlink": (_member("sub/x") + _member("sub/l", kind=tarfile.SYMTYPE, link="x")
                                  + _member("h", kind=tarfile.LNKTYPE, link="sub/l") + _end(), [],
                                  ["points to a symlink"]),
    "records-dotdot": (ENV_FILES + _records([["../canary/victim.txt", PLACEHOLDER, "text"]]) + _end(), [],
                       ["condastack.prefixes", "../canary/victim.txt", "not normalized"]),
    "records-absolute": (lambda c: ENV_FILES + _records([[f"{c}/victim.txt", PLACEHOLDER, "text"]]) + _end(), [],
                         ["condastack.prefixes", "is absolute"]),
    "records-through-symlink": (ENV_FILES + _member("up", kind=tarfile.SYMTYPE, link="bin")
                                + _records([["up/tool", PLACEHOLDER, "text"]]) + _end(), [],
                                ["condastack.prefixes", "goes through the symlink"]),
    "records-not-json": (ENV_FILES + _member("conda-meta/condastack.prefixes", b"{nope") + _end(), [],
                         ["condastack.prefixes", "not valid JSON"]),
    "records-wrong-types": (ENV_FILES + _member("conda-meta/condastack.prefixes", b'{"records": "bin/tool"}')
                            + _end(), [], ["condastack.prefixes", "relocation records must be"]),
    "records-bad-record": (ENV_FILES + _records([["bin/tool", 7, "text"]]) + _end(), [],
                           ["condastack.prefixes", "malformed relocation record"]),
    "records-bad-mode": (ENV_FILES + _records([["bin/tool", PLACEHOLDER, "octal"]]) + _end(), [],
                         ["condastack.prefixes", "malformed relocation record"]),
    "conda-unpack-records-dotdot": (
        ENV_FILES + _member("bin/conda-unpack", (
            "#!/usr/bin/env python\n_prefix_records = [\n"
            f"    ('../canary/victim.txt', '{PLACEHOLDER}', 'text'),\n]\n").encode()) + _end(), [],
        ["conda-unpack", "not normalized"]),
    "conda-unpack-records-absolute": (
        lambda c: ENV_FILES + _member("bin/conda-unpack", (
            "#!/usr/bin/env python\n_prefix_records = [\n"
            f"    ('{c}/victim.txt', '{PLACEHOLDER}', 'text'),\n]\n").encode()) + _end(), [],
        ["conda-unpack", "is absolute"]),
    "conda-unpack-records-garbage": (
        ENV_FILES + _member("bin/conda-unpack", b"_prefix_records = [\n    (open('x'),\n]\n") + _end(), [],
        ["conda-unpack", "_prefix_records"]),
}

def _setup(tmp_path: Path, data: bytes) -> tuple[Path, Path, Path]:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "victim.txt").write_text(f"{PLACEHOLDER}\n")
    archive = tmp_path / "in" / "crafted.tar.zst"
    archive.parent.mkdir()
    data = data(canary) if callable(data) else data
    subprocess.run(["zstd", "-q", "-f", "-o", str(archive)], input=data, check=True)
    return archive, tmp_path / "dest", canary


def assert_untouched(tmp_path: Path, canary: Path, dest: Path) -> None:
    assert sorted(p.name for p in canary.iterdir()) == ["victim.txt"]
    assert (canary / "victim.txt").read_text() == f"{PLACEHOLDER}\n"
    assert not dest.exists() and not dest.is_symlink()
    left = [p for p in tmp_path.rglob("*") if TMP in p.name]
    assert not left, left


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_archive_unpack(case: str, tmp_path: Path) -> None:
    data, args, needles = CASES[case]
    archive, dest, canary = _setup(tmp_path, data)
    res = run_cli("unpack", archive, dest, *args, timeout=60)
    assert_user_error(res, *needles)
    assert "crafted.tar.zst" in res.output and TMP not in res.output
    assert_untouched(tmp_path, canary, dest)


def test_wellformed_records_relocate(tmp_path: Path) -> None:
    """The same archive with a safe record unpacks and relocates: the gate is not refusing everything."""
    archive, dest, canary = _setup(tmp_path, ENV_FILES + _records([["bin/tool", PLACEHOLDER, "text"]]) + _end())
    res = run_cli("unpack", archive, dest, timeout=60)
    assert res.returncode == 0, res.output
    assert (dest / "bin" / "tool").read_text() == f"#!{dest}/bin/sh\n"
    assert (canary / "victim.txt").read_text() == f"{PLACEHOLDER}\n"


def test_relocate_refuses_records_planted_after_unpack(tmp_path: Path) -> None:
    """`relocate PATH` reads the records again: an edited records file cannot reach outside PATH."""
    archive, dest, canary = _setup(tmp_path, ENV_FILES + _records([["bin/tool", PLACEHOLDER, "text"]]) + _end())
    assert run_cli("unpack", archive, dest, timeout=60).returncode == 0
    rec = dest / "conda-meta" / "condastack.prefixes"
    rec.write_text(json.dumps({"current": None, "records": [["../canary/victim.txt", PLACEHOLDER, "text"]]}))
    moved = tmp_path / "moved"
    dest.rename(moved)
    res = run_cli("relocate", moved, timeout=60)
    assert_user_error(res, "condastack.prefixes", "../canary/victim.txt")
    assert (canary / "victim.txt").read_text() == f"{PLACEHOLDER}\n"


def test_unpack_dest_is_symlink(tmp_path: Path) -> None:
    archive, dest, canary = _setup(tmp_path, _member("a") + _end())
    real = tmp_path / "real"
    real.mkdir()
    dest.symlink_to(real)
    res = run_cli("unpack", archive, dest, timeout=60)
    assert_user_error(res, str(dest), "symlink")
    assert dest.is_symlink() and not any(real.iterdir())
    assert not [p for p in tmp_path.rglob("*") if TMP in p.name]


def test_unpack_dest_below_regular_file(tmp_path: Path) -> None:
    archive, _, canary = _setup(tmp_path, _member("a") + _end())
    (tmp_path / "afile").write_text("not a folder\n")
    dest = tmp_path / "afile" / "dest"
    res = run_cli("unpack", archive, dest, timeout=60)
    assert_user_error(res, str(dest))
    assert (tmp_path / "afile").read_text() == "not a folder\n"
    assert_untouched(tmp_path, canary, tmp_path / "dest")


def test_unpack_manifest_wrong_types_is_ignored_not_a_crash(tmp_path: Path) -> None:
    archive, dest, canary = _setup(tmp_path, _member("a") + _end())
    archive.with_name(archive.name + ".manifest.json").write_text('{"placeholders": [{"file": 1, "placeholder": 2,'
                                                                  ' "mode": "binary"}]}')
    res = run_cli("unpack", archive, dest, timeout=60)
    assert res.returncode == 0, res.output
    assert (dest / "a").read_text() == "x\n"


def test_archive_is_a_fifo(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "victim.txt").write_text(f"{PLACEHOLDER}\n")
    fifo = tmp_path / "in.tar.zst"
    os.mkfifo(fifo)
    for cmd in (["unpack", fifo, tmp_path / "dest"], ["install", fifo, "--prefix", tmp_path / "dest"]):
        res = run_cli(*cmd, timeout=60)
        assert_user_error(res, str(fifo), "not a regular file")
        assert "no such archive" not in res.output
    assert_untouched(tmp_path, canary, tmp_path / "dest")
