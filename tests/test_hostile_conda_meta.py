"""Malformed conda-meta records in a built env: `verify` and `pack` name the record and exit 1.

Bad JSON, a record that is not an object, fields of the wrong type, paths that leave the
prefix, and a record without `link.source` (which conda-pack needs) used to be exit 70. The
canary folder beside the env is unchanged and no archive or temporary is left.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, libhello_project, run_cli

TMP = ".condastack-tmp-"
RECORDS = {
    "not-json": "{not json",
    "a-list": "[]",
    "name-not-string": json.dumps({"name": 3, "files": []}),
    "files-not-list": json.dumps({"name": "libhello", "files": 7}),
    "paths-data-not-list": json.dumps({"name": "libhello", "paths_data": {"paths": "bin/x"}}),
    "files-dotdot": json.dumps({"name": "libhello", "files": ["../../canary/keep.txt"]}),
    "paths-data-absolute": json.dumps({"name": "libhello", "paths_data": {"paths": [{"_path": "/etc/hostname"}]}}),
}
WHY = {"not-json": "unreadable package record", "a-list": "not an object", "name-not-string": "'name'",
       "files-not-list": "'files'", "paths-data-not-list": "paths_data", "files-dotdot": "not normalized",
       "paths-data-absolute": "is absolute", "no-link": "link.source",
       "sha256-not-hex": "'sha256'", "md5-too-short": "'md5'"}
# Edits of the real record: the digests name the package in the SBOM (a schema-invalid one there before).
EDITS = {"no-link": lambda r: {k: v for k, v in r.items() if k != "link"},
         "sha256-not-hex": lambda r: {**r, "sha256": "z" * 64},
         "md5-too-short": lambda r: {**r, "md5": "0" * 31}}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("meta")
    proj, env = libhello_project(root, channel_url, "m", ("lock", "build"))
    (proj / "canary").mkdir()
    (proj / "canary" / "keep.txt").write_text("keep\n")
    record = next((proj / "envs" / "app" / "conda-meta").glob("libhello-*.json"))
    return {"proj": proj, "env": env, "record": record}


CASES = [(c, "verify") for c in [*RECORDS, *EDITS]] + [
    (c, "pack") for c in ("not-json", "a-list", "files-not-list", "files-dotdot", *EDITS)]


@pytest.mark.parametrize(("case", "cmd"), CASES)
def test_malformed_conda_meta_record(case: str, cmd: str, env: dict[str, Path], tmp_path: Path) -> None:
    good = env["record"].read_text()
    bad = RECORDS.get(case) or json.dumps(EDITS[case](json.loads(good)))
    env["record"].write_text(bad)
    try:
        args = ["pack", "app", "-o", tmp_path / "out" / "a.tar.zst"] if cmd == "pack" else ["verify", "app"]
        res = run_cli("-C", env["proj"], *args, env=env["env"])
    finally:
        env["record"].write_text(good)
    if case == "no-link" and cmd == "verify":  # verify does not need link.source: the env is intact
        assert res.returncode == 0, res.output
        return
    assert_user_error(res, env["record"].name, WHY[case])
    assert (env["proj"] / "canary" / "keep.txt").read_text() == "keep\n"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert not [p for p in env["proj"].rglob("*") if TMP in p.name]


def test_batch_path_check_agrees_with_the_one_by_one_check() -> None:
    """check_meta_record scans a record's paths joined (one scan for ~100k paths): it must pass exactly
    the lists whose every path passes clean_relative, and the error still names the bad path."""
    import itertools

    from condastack.core.errors import CondastackError
    from condastack.core.pathsafe import UnsafePath, _all_clean, check_meta_record, clean_relative

    def one_by_one(paths: tuple) -> bool:
        try:
            for p in paths:
                clean_relative(p, "x")
        except UnsafePath:
            return False
        return True

    cases = ["a", "a/b", ".a", "a..", "..a", "a/.b", "...", "", "/a", "a/", "a//b", "./a", "a/.", "a/..", "../a",
             "a\0b", ".", "..", "a/./b", None, 3]
    for n in (0, 1, 2, 3):
        for combo in itertools.product(cases, repeat=n):
            assert _all_clean(list(combo)) == one_by_one(combo), combo
    record = {"name": "x", "files": ["lib/a", "lib/../../etc/passwd"], "paths_data": {"paths": [{"_path": "lib/a"}]}}
    with pytest.raises(CondastackError, match=r"lib/\.\./\.\./etc/passwd"):
        check_meta_record(record, "x.json")
