"""The `package:` entries of a lockfile as the text `yaml.dump` writes for them, without PyYAML's representer.

PyYAML's representer and serializer cost ~25 CPU ms per 200 entries (a real stack's cold lock writes
~400: more than any other step of writing a lock). An entry is a fixed shape (conda-lock's v1 entry:
text fields, string-to-string mappings, one bool), so its block YAML is plain string formatting, once
each scalar's style is known. The style follows libyaml's emitter rules for a short scalar of printable
ASCII without line breaks (plain unless an indicator, a leading/trailing space or an implicit type such as
`1.10` or `true` forbids it; then single-quoted). Anything else (non-ASCII, a line that could fold at 80
columns, a long key, an unexpected type) is left to `yaml.dump` for that entry, so the bytes are always
PyYAML's; tests/test_lockyaml.py compares the two on real locks and generated entries.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_DUMPER: Any = getattr(yaml, "CDumper", yaml.Dumper)
_PRINTABLE = re.compile(r"[ -~]+\Z")
_FIRST_INDICATORS = frozenset("#,[]{}&*!|>'\"%@`")
_STR_TAG = "tag:yaml.org,2002:str"
_WIDTH = 80  # PyYAML's default best_width: a scalar with a space may be folded past it
_MAX_KEY = 100  # a simple key is at most 128 characters in libyaml; stay well below
_RESOLVER = yaml.resolver.Resolver()
# The first characters of a plain scalar that an implicit type (bool, int, float, null, timestamp, merge, value)
# may claim: any other string is a string without asking the resolver (unless it has catch-all resolvers).
_TYPED_FIRST = frozenset(k for k in _RESOLVER.yaml_implicit_resolvers if k)
_ANY_TYPED = None in _RESOLVER.yaml_implicit_resolvers
_STYLED: dict[bool, dict[str, str | None]] = {True: {}, False: {}}


def _plain_allowed(s: str) -> bool:
    """libyaml's block_plain_allowed for a non-empty string of printable ASCII with no line break."""
    if s[0] == " " or s[-1] == " " or s.startswith(("---", "...")):
        return False
    first, after_first = s[0], s[1:2]
    if first in _FIRST_INDICATORS or (first in "?:-" and after_first in ("", " ")):
        return False
    return not (": " in s or s.endswith(":") or " #" in s)


def _styled(s: str, key: bool) -> str | None:
    """The scalar as the emitter writes it, or None where this module does not decide (yaml.dump does)."""
    memo = _STYLED[key]
    out = memo.get(s, "")
    if out != "":
        return out
    if s == "":
        out = "''"
    elif not _PRINTABLE.match(s) or (key and (" " in s or len(s) > _MAX_KEY)):
        out = None
    elif _plain_allowed(s) and (not (_ANY_TYPED or s[0] in _TYPED_FIRST)
                                or _RESOLVER.resolve(yaml.ScalarNode, s, (True, False)) == _STR_TAG):
        out = s
    else:
        out = "'" + s.replace("'", "''") + "'"
    if len(memo) < 100_000:
        memo[s] = out
    return out


def _line(prefix: str, key: str, value: object) -> str | None:
    """`prefix key: value` for a scalar value, or None."""
    k = _styled(key, True)
    if k is None:
        return None
    if isinstance(value, bool):
        return f"{prefix}{k}: {'true' if value else 'false'}"
    if not isinstance(value, str):
        return None
    v = _styled(value, False)
    if v is None:
        return None
    line = f"{prefix}{k}: {v}"
    return line if " " not in v or len(line) <= _WIDTH else None  # could fold: leave it to yaml


def _entry_lines(entry: dict[str, Any]) -> list[str] | None:
    lines: list[str] = []
    prefix = "- "
    for key, value in entry.items():
        if not isinstance(key, str):
            return None
        if isinstance(value, dict):
            k = _styled(key, True)
            if k is None:
                return None
            if not value:
                lines.append(f"{prefix}{k}: {{}}")
            else:
                lines.append(f"{prefix}{k}:")
                for sub, v in value.items():
                    line = _line("    ", sub, v) if isinstance(sub, str) else None
                    if line is None:
                        return None
                    lines.append(line)
        else:
            line = _line(prefix, key, value)
            if line is None:
                return None
            lines.append(line)
        prefix = "  "
    return lines if lines else None


def package_yaml(entries: list[dict[str, Any]]) -> str:
    """`package:` and its entries, as `yaml.dump` writes them under a top-level block mapping."""
    if not entries:
        return "package: []\n"
    out = ["package:\n"]
    for entry in entries:
        lines = _entry_lines(entry)
        if lines is None:  # yaml.dump's own text for this one entry, in the same place
            out.append(yaml.dump({"package": [entry]}, Dumper=_DUMPER, sort_keys=False)[len("package:\n"):])
        else:
            out.append("\n".join(lines) + "\n")
    return "".join(out)


__all__ = ["package_yaml"]
