"""The strict lock reader (issue 23): every field of a valid lockfile, mutated, is refused with exit 1
naming the file, the package and the field; never exit 70 (issue 22's typed LockEntry does the checking).

The bulk runs in process through `read_lock_entries` (hypothesis chooses the entry, the field and the
mutation); a few real CLI runs (`build`, `verify`, `lock --check`) show the same through the commands.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from condastack.core.errors import LockfileInvalid
from condastack.lock.entry import LockEntry, RecordsFile, check_lock_document
from condastack.lock.lockfile import lockfile_text, read_lock_document, read_lock_entries
from tests.helpers import assert_user_error, libhello_project, run_cli

SHA = "ab" * 32
MD5 = "cd" * 16
NON_UTF8 = "@@NON-UTF8@@"  # replaced by raw bytes that are not UTF-8 once the file is written


def _doc() -> dict:
    conda = {"name": "libhello", "version": "1.0.0", "manager": "conda", "platform": "linux-64",
             "dependencies": {"libfoo": ">=1.0,<2"}, "url": "https://example.org/ch/linux-64/libhello-1.0.0-h0_0.conda",
             "hash": {"md5": MD5, "sha256": SHA}, "build": "h0_0", "category": "main", "optional": False}
    pip = {"name": "tinylib", "version": "1.0", "manager": "pip", "platform": "linux-64",
           "dependencies": {"python": "*"}, "url": "https://example.org/files/tinylib-1.0-py3-none-any.whl",
           "hash": {"sha256": SHA}, "category": "main", "optional": False}
    return {"version": 1,
            "metadata": {"content_hash": {"linux-64": SHA}, "channels": [{"url": "https://example.org/ch",
                                                                           "used_env_vars": []}],
                         "platforms": ["linux-64"], "sources": ["../environments/app.yml"]},
            "package": [conda, pip]}


_COUNTER = itertools.count()


def _write(folder: Path, doc: dict) -> Path:
    path = folder / f"fuzz{next(_COUNTER)}.conda-lock.yml"  # a new file each time: no cached parse is reused
    data = yaml.dump(doc, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False,
                     allow_unicode=True).encode()
    path.write_bytes(data.replace(NON_UTF8.encode(), b"\xff\xfe\xc3("))
    return path


BAD_SCALARS = [["a", "list"], {"a": "mapping"}, "", "x" * 100_000, NON_UTF8, "a\x01b", "bad\nnewline"]
ENTRY_FIELDS = {  # field -> mutations that must be refused (beyond BAD_SCALARS where they apply)
    "name": ["-lead", "has space", "a/b", "../x", "x" * 201],
    "version": ["1..0", "1.0 ", "1.0;rm", "v" * 300],
    "manager": ["npm", "Conda", 1],
    "platform": ["linux-65", "noarch", "linux-64/../x"],
    "url": ["https://example.org/ch/linux-64/", "ftp://example.org/x.conda", "not a url",
            "https://example.org/ch/linux-64/../../x.conda", "https://example.org/ch/%2e%2e/x.conda",
            "https://example.org/ch/%252e%252e/x.conda", "https://example.org/ch/linux-64/x.conda.txt",
            "https://example.org/ch/linux-64/" + "x" * 5000 + ".conda", "file:///etc/passwd",
            "https://[::1/ch/linux-64/x.conda"],
    "hash": ["abc", ["md5"], {"sha1": SHA}, {"sha256": SHA[:-1]}, {"sha256": SHA + "0"}, {"md5": MD5[:-2]},
             {"sha256": "zz" * 32}, {"md5": 12345}, {"sha256": NON_UTF8}],
    "build": ["h 0", "h0/../x", "x" * 201],
    "dependencies": ["x", ["a"], {"dep": ["a"]}, {"dep": "a\x00b"}, {f"d{i}": "*" for i in range(10_001)}],
    "category": ["has space", "x" * 101],
    "optional": ["maybe", 2, "yes please"],
}
REQUIRED = ("name", "version", "manager", "platform", "url", "hash", "build")
_MUTATION = st.one_of(
    st.tuples(st.sampled_from(sorted(ENTRY_FIELDS)), st.none()).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.sampled_from(
            ENTRY_FIELDS[t[0]] + [BAD_SCALARS[0], NON_UTF8] + ([] if t[0] in ("hash", "dependencies")
                                                                else [BAD_SCALARS[1]])))),
    st.tuples(st.sampled_from(["name", "version", "build", "category", "url"]), st.sampled_from(BAD_SCALARS)),
    st.tuples(st.sampled_from(REQUIRED), st.just("<missing>")),
    st.tuples(st.just("unknown-field"), st.just("x")),
)


def _expect_refused(path: Path, field: str, package: str | None) -> LockfileInvalid:
    with pytest.raises(LockfileInvalid) as info:
        read_lock_entries(path)
    err = info.value
    text = str(err)
    assert str(path) in text and f"field '{field}" in text, text
    if package:
        assert package in text, text
    assert len(text) < 2000, "a message quotes a huge value whole"
    return err


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from([0, 1]), mutation=_MUTATION)
def test_every_entry_field_mutated_is_refused(tmp_path: Path, which: int, mutation: tuple[str, object]) -> None:
    field, value = mutation
    doc = _doc()
    entry = doc["package"][which]
    if field == "build" and which == 1 and value in ("<missing>", ""):
        return  # a pip entry has no build
    if field == "unknown-field":
        entry["surprise"] = value
        field = "surprise"
    elif value == "<missing>":
        del entry[field]
    else:
        entry[field] = value
    package = f"#{which + 1}" if field in ("name", "manager") else entry["name"]  # no name to show yet
    err = _expect_refused(_write(tmp_path, doc), field, package)
    assert err.field is not None and err.field.split(".")[0] == field


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=st.sampled_from([
    ("version", 2), ("version", "one"), ("metadata.content_hash", "not-a-mapping"),
    ("metadata.content_hash", ["a"]), ("metadata.content_hash", {"linux-64": SHA[:10]}),
    ("metadata.content_hash", {"linux-65": SHA}), ("metadata.platforms", ["linux-65"]),
    ("metadata.platforms", "linux-64"), ("metadata.channels", "x"), ("metadata.channels", [{"url": ["a"]}]),
    ("metadata.custom_metadata", {"condastack.layer": NON_UTF8}),
    ("metadata.platforms", ["linux-aarch64"]),  # the entries are for a platform it does not list
]))
def test_every_metadata_field_mutated_is_refused(tmp_path: Path, mutation: tuple[str, object]) -> None:
    key, value = mutation
    doc = _doc()
    if key == "version":
        doc["version"] = value
    else:
        doc["metadata"][key.split(".", 1)[1]] = value
    path = _write(tmp_path, doc)
    with pytest.raises(LockfileInvalid) as info:
        read_lock_document(path)
    assert str(path) in str(info.value)
    assert key.split(".")[-1] in str(info.value) or info.value.field == "platform", str(info.value)


def test_a_url_that_does_not_parse_is_refused_not_a_crash(tmp_path: Path) -> None:
    """urllib raises ValueError for a bracketed host that is not an IPv6 address: exit 1 naming the field."""
    for url in ("https://[::1/ch/linux-64/x.conda", "https://[zz]/ch/linux-64/x.conda"):
        doc = _doc()
        doc["package"][0]["url"] = url
        _expect_refused(_write(tmp_path, doc), "url", "libhello")


def test_same_package_twice_on_one_platform_is_refused(tmp_path: Path) -> None:
    doc = _doc()
    second = dict(doc["package"][0], version="2.0.0", url=doc["package"][0]["url"].replace("1.0.0", "2.0.0"))
    doc["package"].append(second)
    err = _expect_refused(_write(tmp_path, doc), "name", "libhello")
    assert "1.0.0" in str(err) and "2.0.0" in str(err)
    doc = _doc()  # the same name on another platform is fine
    doc["metadata"]["platforms"].append("linux-aarch64")
    doc["package"].append(dict(doc["package"][0], platform="linux-aarch64"))
    assert len(read_lock_entries(_write(tmp_path, doc))) == 3


def test_entries_round_trip(tmp_path: Path) -> None:
    """read -> write -> read gives equal entries, and the written text is what conda-lock's writer writes."""
    path = _write(tmp_path, _doc())
    entries = read_lock_entries(path)
    text = lockfile_text(path.name, [e.to_dict() for e in entries], channels=["https://example.org/ch"],
                         platforms=["linux-64"], sources=["../environments/app.yml"],
                         content_hash={"linux-64": SHA}, custom={})
    again = tmp_path / "again.conda-lock.yml"
    again.write_text(text)
    assert read_lock_entries(again) == entries
    assert [LockEntry.from_dict(e.to_dict(), "x") for e in entries] == entries
    # strings stay strings: a version or hash of digits is not a number
    doc = _doc()
    doc["package"][0]["version"] = "1.10"
    doc["package"][0]["hash"]["md5"] = "1" * 32
    (e,) = [e for e in read_lock_entries(_write(tmp_path, doc)) if e.manager == "conda"]
    assert (e.version, e.md5) == ("1.10", "1" * 32)
    assert check_lock_document("x", yaml.safe_load(text))


def test_records_file_round_trip_and_strict(tmp_path: Path) -> None:
    rec = {"name": "libhello", "version": "1.0.0", "build": "h0_0", "build_number": 0, "subdir": "linux-64",
           "depends": ["libfoo >=1"], "md5": MD5, "sha256": SHA, "size": 10,
           "url": "https://u:p@example.org/t/tok-123/ch/linux-64/libhello-1.0.0-h0_0.conda",
           "channel": "https://u:p@example.org/t/tok-123/ch/", "fn": "libhello-1.0.0-h0_0.conda"}
    data = {"lock": {"sha256": SHA, "content_hash": {"linux-64": SHA}, "counts": {}, "pins": {}},
            "platforms": {"linux-64": [rec]}}
    rf = RecordsFile.from_dict(data, "r.json")
    text = rf.to_text()
    assert "tok-123" not in text and "u:p@" not in text  # the output gate strips credentials
    (tmp_path / "r.json").write_text(text)
    back = RecordsFile.read(tmp_path / "r.json")
    assert back.to_text() == text and RecordsFile.from_dict(json.loads(text), "r.json") == back
    for key, value in [("sha256", SHA[:-1]), ("size", "big"), ("depends", "x"), ("name", ["x"]),
                       ("url", "https://example.org/%2e%2e/x.conda"), ("md5", "z" * 32)]:
        (tmp_path / "bad.json").write_text(json.dumps(dict(data, platforms={"linux-64": [dict(rec, **{key: value})]})))
        with pytest.raises(LockfileInvalid) as info:
            RecordsFile.read(tmp_path / "bad.json")
        assert "bad.json" in str(info.value) and f"field '{key}'" in str(info.value)
    (tmp_path / "bad.json").write_bytes(b"\xff{")
    with pytest.raises(LockfileInvalid):
        RecordsFile.read(tmp_path / "bad.json")


# --------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def built(channel_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return libhello_project(tmp_path_factory.mktemp("fuzz"), channel_url, "fuzz", ("lock", "build"))


@pytest.mark.parametrize("case", ["sha256-length", "content-hash-not-mapping", "url-not-archive",
                                  "version-list", "non-utf8-name"])
def test_commands_exit_1_naming_file_and_field(built: tuple[Path, dict[str, str]], case: str) -> None:
    proj, env = built
    path = proj / "lock" / "app.conda-lock.yml"
    original = path.read_bytes()
    text = original.decode()
    doc = yaml.safe_load(text)
    pkg = next(p for p in doc["package"] if p["name"] == "libhello")
    old = f"sha256: {pkg['hash']['sha256']}"
    field, edited = {
        "sha256-length": ("hash.sha256", text.replace(old, old + "00")),
        "content-hash-not-mapping": ("metadata.content_hash",
                                     text.replace("  content_hash:\n", "  content_hash: x\n  z:\n")),
        "url-not-archive": ("url", text.replace(pkg["url"], pkg["url"].rsplit("/", 1)[0] + "/")),
        "version-list": ("version", text.replace(f"version: {pkg['version']}", "version: [1, 2]", 1)),
        "non-utf8-name": ("name", text.replace("name: libhello", "name: lib" + NON_UTF8)),
    }[case]
    try:
        path.write_bytes(edited.encode().replace(NON_UTF8.encode(), b"\xff\xfe"))
        for args in (["build", "app"], ["verify", "app"], ["lock", "--check"], ["build", "app", "--frozen"]):
            res = run_cli("-C", proj, *args, env=env)
            assert_user_error(res, str(path), f"field '{field}")
            if case != "content-hash-not-mapping":
                assert "libhello" in res.output or "#" in res.output
    finally:
        path.write_bytes(original)
