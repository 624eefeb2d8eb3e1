"""lock/lockyaml.py writes a lockfile's `package:` entries byte for byte as `yaml.dump` does.

Generated entries draw their text from the characters that change a scalar's YAML style (indicators,
spaces, quotes, digits that read as numbers, non-ASCII) and from the shapes real locks hold; every one is
compared with yaml.dump's text. The fast path must really be taken for ordinary entries, or the
comparison proves nothing about it.
"""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from condastack.lock.lockyaml import _DUMPER, _entry_lines, package_yaml

SHA = "ab" * 32


def _dump(entries: list[dict]) -> str:
    return yaml.dump({"package": entries}, Dumper=_DUMPER, sort_keys=False)


def _entry(**over: object) -> dict:
    e: dict = {"name": "libhello", "version": "1.10", "manager": "conda", "platform": "linux-64",
               "dependencies": {"__glibc": ">=2.17,<3.0.a0", "python": "*", "python_abi": "3.11.* *_cp311",
                                "libgcc": ""},
               "url": "https://example.org/ch/linux-64/libhello-1.10-h0_0.conda",
               "hash": {"md5": "1" * 32, "sha256": SHA}, "build": "h0_0", "category": "main", "optional": False}
    e.update(over)
    return e


TRICKY = ["", " ", "a b", " lead", "trail ", "1", "1.10", "1e3", "0x1F", "0o17", "1_000", "-1", "+1", ".5", "1:30",
          "12:30:45", "2001-12-14", "true", "True", "no", "on", "null", "~", "Null", "NaN", ".nan", ".inf", "-.inf",
          "=", "<<", "*", "&a", "!x", "|", ">=1", "'q'", '"q"', "%", "@x", "`x", "#x", "a #b", "a#b", "a: b", "a:",
          ":a", ": a", "?", "? a", "?a", "-", "- a", "-a", "--", "---", "--- a", "...", "....", "[a]", "a[b]", "{a}",
          "a,b", ",a", "a'b", 'a"b', "a\\b", "é", "naïve", "x" * 79, "a " * 40, "b " * 60, "k" * 101,
          "2.0a0,<3", "1.2.*", "3.11.* *_cp311", "py_0", "cuda126*", "0", "00", "0.0", "1.", "1.2.3"]
TEXT = st.one_of(st.sampled_from(TRICKY), st.text(alphabet=st.sampled_from(list("aZ09 .-_:#?*&!|>'\"%@`,[]{}=<~+é")),
                                                  max_size=30))


@settings(max_examples=400, deadline=None)
@given(name=TEXT, version=TEXT, dep_key=TEXT, dep_value=TEXT, build=TEXT, url=TEXT, optional=st.booleans(),
       source=st.one_of(st.none(), st.dictionaries(TEXT, TEXT, max_size=2)))
def test_generated_entries_are_written_as_yaml_dump_writes_them(name: str, version: str, dep_key: str,
                                                                dep_value: str, build: str, url: str,
                                                                optional: bool, source: dict | None) -> None:
    entry = _entry(name=name, version=version, dependencies={dep_key: dep_value, "python": ">=3.9"}, build=build,
                   url=url, optional=optional)
    if source is not None:
        entry["source"] = source
    assert package_yaml([entry, _entry()]) == _dump([entry, _entry()])


def test_every_tricky_scalar_in_every_place() -> None:
    for s in TRICKY:
        for entry in (_entry(version=s), _entry(dependencies={s: s}), _entry(hash={}), _entry(dependencies={}),
                      _entry(build=s, url=s), _entry(source={"url": s})):
            assert package_yaml([entry]) == _dump([entry]), (s, entry)
    assert package_yaml([]) == _dump([])


def test_ordinary_entries_take_the_fast_path() -> None:
    assert _entry_lines(_entry()) is not None
    assert _entry_lines(_entry(dependencies={"python_abi": "3.11.* *_cp311"}, version="2024.1")) is not None
    # a line that could fold at 80 columns, or non-ASCII text, is yaml.dump's to write
    assert _entry_lines(_entry(dependencies={"x": "a " * 40})) is None
    assert _entry_lines(_entry(version="é")) is None
