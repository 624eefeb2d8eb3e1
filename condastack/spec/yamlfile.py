"""The one YAML reader for stack and layer files: safe, with lines, and strict.

Every mapping and list it returns knows the line of each key or item, so a
message can name it. Duplicate keys (PyYAML keeps the last one and drops the
user's data) and aliases or anchors (a few lines of aliases can expand to
billions of nodes) are refused where they are read, before anything expands.
"""

from __future__ import annotations

from typing import Any

import yaml


class YamlRefused(yaml.YAMLError):
    """A YAML feature these files do not allow (an alias, a duplicate key), with its place."""

    def __init__(self, problem: str, mark: Any) -> None:
        self.problem, self.problem_mark = problem, mark
        super().__init__(problem)


class LinedList(list):
    lines: list[int]


class LinedMap(dict):
    lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    """A safe loader that records lines and refuses duplicate keys, aliases and deep nesting."""

    depth: int = 0


def short(value: Any, limit: int = 80) -> str:
    """A bounded rendering for messages: a 400,000-character key is cut, never processed whole."""
    text = value if isinstance(value, str) else type(value).__name__
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _map(loader: _Loader, node: yaml.MappingNode) -> LinedMap:
    out = LinedMap(yaml.SafeLoader.construct_mapping(loader, node, deep=True))
    out.lines = {}
    for key_node, _ in node.value:
        try:
            key = loader.construct_object(key_node)
            if key in out.lines:
                raise YamlRefused(f"duplicate key {short(key)!r} (first on line {out.lines[key]})",
                                  key_node.start_mark)
            out.lines[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: PyYAML itself refuses it
            pass
    return out


def _seq(loader: _Loader, node: yaml.SequenceNode) -> LinedList:
    out = LinedList(loader.construct_object(n, deep=True) for n in node.value)
    out.lines = [n.start_mark.line + 1 for n in node.value]
    return out


# Far deeper than any stack or environment file; composing recurses once per level, and a few
# thousand `[` would otherwise end in RecursionError (exit 70) instead of a message with a line.
MAX_DEPTH = 100


def _compose_node(loader: _Loader, parent: Any, index: Any) -> Any:
    if loader.check_event(yaml.events.AliasEvent):
        raise YamlRefused("aliases (*name) are not allowed in stack and layer files", loader.peek_event().start_mark)
    event = loader.peek_event()
    if getattr(event, "anchor", None) is not None:
        raise YamlRefused("anchors (&name) are not allowed in stack and layer files", event.start_mark)
    depth = getattr(loader, "depth", 0)
    if depth >= MAX_DEPTH:
        raise YamlRefused(f"lists and mappings nested more than {MAX_DEPTH} levels deep", event.start_mark)
    loader.depth = depth + 1
    try:
        return yaml.SafeLoader.compose_node(loader, parent, index)
    finally:
        loader.depth = depth


_Loader.compose_node = _compose_node  # type: ignore[method-assign, assignment]  # anchors refused
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _seq)


def parse(text: str) -> Any:
    """The document in `text`; raises yaml.YAMLError (YamlRefused included) with a mark."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def error_place(e: yaml.YAMLError) -> tuple[str, int | None]:
    """(the problem, its 1-based line) of a YAML error."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return problem, (mark.line + 1 if mark else None)


def line_of(container: Any, key: Any) -> int | None:
    """The line of `key` in a mapping, or of item `key` in a list, read by `parse`."""
    lines = getattr(container, "lines", None)
    if isinstance(lines, dict):
        return lines.get(key)
    if isinstance(lines, list) and isinstance(key, int) and 0 <= key < len(lines):
        return lines[key]
    return None
