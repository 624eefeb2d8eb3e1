"""The quoting gate: every name, path and value written into a generated file goes through here.

One writer per target language (bash/sh, Lua, Tcl, Dockerfile, Apptainer definition, OCI JSON,
enroot environment files). Each writer either returns text that the target reads back as
exactly the value given, byte for byte, or raises `Unrepresentable` (exit 1) naming the value
and the target. Names (stack, layer, variable, module) are checked against one pattern each.

Why one module: the bugs this gate closes came from each generator quoting on its own, with a
different idea of what its language treats as special (a newline in a comment, `$(...)` inside
double quotes, a `%post` line inside an Apptainer value, `$` in a Docker ENV value).
"""

from __future__ import annotations

import json
import re

from condastack.core.errors import CondastackError
from condastack.core.names import NAME_PATTERNS, check_name, is_name

__all__ = ["NAME_PATTERNS", "check_name", "is_name"]  # names are checked here too, for the writers


class Unrepresentable(CondastackError):
    """A value that the target language cannot hold as written."""

    def __init__(self, what: str, value: str, target: str, why: str, hint: str = "") -> None:
        self.what, self.value, self.target = what, value, target
        tail = f" {hint}" if hint else ""
        super().__init__(f"{what} {_show(value)} cannot be written into {target}: {why}.{tail}")


def _show(value: str) -> str:
    """The value as a reader can see it (control characters visible, bounded length)."""
    text = ascii(value) if _CONTROL.search(value) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- names

# --------------------------------------------------------------------------- shared checks

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # C0 controls but tab, and DEL
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _common(value: str, what: str, target: str) -> str:
    """Refusals every target shares: a NUL ends a C string, a lone surrogate is no UTF-8."""
    if not isinstance(value, str):
        raise CondastackError(f"{what} {value!r} is a {type(value).__name__}, not a string; it cannot be "
                              f"written into {target}.")
    if "\x00" in value:
        raise Unrepresentable(what, value, target, "it holds a NUL byte, which no environment or file can carry")
    if _SURROGATE.search(value):
        raise Unrepresentable(what, value, target, "it is not valid UTF-8 (undecodable bytes)")
    return value


def _no_controls(value: str, what: str, target: str, hint: str = "") -> str:
    _common(value, what, target)
    m = _CONTROL.search(value)
    if m:
        raise Unrepresentable(what, value, target, f"it holds the control character {m.group()!r}, which ends "
                              "a line there", hint)
    return value


# --------------------------------------------------------------------------- sh / bash


def sh(value: str, what: str = "value") -> str:
    """One POSIX sh word that is exactly `value` (single quotes; newlines kept as written)."""
    _common(value, what, "a shell script")
    return "'" + value.replace("'", "'\\''") + "'"


def sh_one_line(value: str, what: str = "value") -> str:
    """Like `sh`, but the text holds no line break: control characters are made by printf at run time.

    For files whose outer format is read line by line (the Apptainer definition), where a value's
    own newline would otherwise start a line of that format. Needs SH_NEWLINE_SETUP before it.
    """
    _common(value, what, "a shell script")
    out: list[str] = []
    for part in re.split(r"([\x01-\x08\x0a-\x1f\x7f])", value):
        if not part:
            continue
        if len(part) == 1 and _CONTROL.fullmatch(part):
            out.append('"$_cs_nl"' if part == "\n" else f"\"$(printf '\\{ord(part):03o}')\"")
        else:
            out.append("'" + part.replace("'", "'\\''") + "'")
    return "".join(out) or "''"


# A newline made at run time (command substitution drops trailing newlines, hence the `_`).
SH_NEWLINE_SETUP = "_cs_nl=\"$(printf '\\n_')\"; _cs_nl=\"${_cs_nl%_}\""
SH_NEWLINE_TEARDOWN = "unset _cs_nl"


def sh_comment(text: str) -> str:
    """A `# ...` comment line; control characters are shown escaped so the text stays one comment."""
    return "# " + _visible(text)


def _visible(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


# --------------------------------------------------------------------------- Lua (Lmod)


def lua(value: str, what: str = "value") -> str:
    """A Lua string literal: control bytes as decimal escapes, other bytes (UTF-8) as written."""
    _common(value, what, "a Lua modulefile")
    body = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _CONTROL.sub(lambda m: f"\\{ord(m.group()):03d}", body) + '"'


def module_value(value: str, what: str = "value") -> str:
    """A value a module tool can pass on: Lmod and Environment Modules print `export K=...` lines for
    the shell, and neither quotes a line break or a carriage return there (tried: both break the eval)."""
    return _no_controls(value, what, "a modulefile",
                        "Module tools cannot pass it to the shell; set it in activate.sh instead.")


# --------------------------------------------------------------------------- Tcl (Environment Modules)


def tcl(value: str, what: str = "value") -> str:
    """A Tcl word: every character Tcl substitutes or ends a word on is backslash-escaped."""
    _common(value, what, "a Tcl modulefile")
    body = re.sub(r'([\\"$\[\]{};])', r"\\\1", value)
    return '"' + _CONTROL.sub(lambda m: f"\\{ord(m.group()):03o}", body) + '"'


# --------------------------------------------------------------------------- Dockerfile

_DOCKER_HINT = "Dockerfile lines cannot hold it; `condastack container --oci` writes the image config directly."


def docker_value(value: str, what: str = "value") -> str:
    """A double-quoted Dockerfile word (ENV, LABEL) that Docker/BuildKit read back as `value`.

    In double quotes Docker's lexer un-escapes `\\"`, `\\$` and `\\\\` only; a line break cannot
    be written at all (the parser joins continuation lines), so control characters are refused.
    """
    _no_controls(value, what, "the Dockerfile", _DOCKER_HINT)
    return '"' + re.sub(r'([\\"$])', r"\\\1", value) + '"'


def docker_path(value: str, what: str = "path") -> str:
    """A bare ADD/COPY path: blanks, quotes, '$', '\\' and controls are refused (Docker splits, expands
    or un-escapes them there), so what is written is read back as it is."""
    _no_controls(value, what, "the Dockerfile", _DOCKER_HINT)
    bad = next((c for c in value if c.isspace() or c in "\"'$\\`[]"), None)
    if bad is not None or not value:
        raise Unrepresentable(what, value, "the Dockerfile ADD line", f"Docker reads {bad!r} specially there")
    return value


_IMAGE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,254}\Z")  # no blanks, quotes, '$' or controls


def image_ref(value: str, what: str = "base image") -> str:
    """An image reference for FROM / Bootstrap (registry/name[:tag][@sha256:digest])."""
    _common(value, what, "the Dockerfile")
    if not _IMAGE_REF.match(value):
        raise Unrepresentable(what, value, "FROM", "it is not an image reference such as debian:bookworm-slim "
                              "or registry.example.org:5000/team/base:1.0")
    return value


def docker_user(value: str) -> str:
    """USER name[:group] or uid[:gid], written bare (Docker reads USER without quotes)."""
    _common(value, "user", "the Dockerfile")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?", value):
        raise Unrepresentable("user", value, "the Dockerfile USER", "give name[:group] or uid[:gid]")
    return value


def docker_json(values: list[str], what: str = "command") -> str:
    """A JSON-form instruction argument (CMD, ENTRYPOINT): JSON escapes, no variable expansion."""
    for v in values:
        _common(v, what, "the Dockerfile")
    return json.dumps(values)


# --------------------------------------------------------------------------- Apptainer definition


def apptainer_label(key: str, value: str) -> str:
    """One %labels line: `KEY VALUE`, the value being the rest of the line."""
    _no_controls(key, "label name", "the Apptainer definition")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise Unrepresentable("label name", key, "the Apptainer definition", "use letters, digits, '.', '_', '-'")
    _no_controls(value, f"label {key}", "the Apptainer definition")
    if value != value.strip() or not value:
        raise Unrepresentable(f"label {key}", value, "the Apptainer definition",
                              "Apptainer trims leading and trailing blanks of a label value")
    return f"{key} {value}"


def apptainer_word(value: str, what: str = "path") -> str:
    """A %files path: whitespace separates source from destination, so none is allowed."""
    _no_controls(value, what, "the Apptainer definition")
    if re.search(r"\s", value) or value.startswith("%"):
        raise Unrepresentable(what, value, "the Apptainer definition %files",
                              "%files splits its lines on blanks")
    return value


def text_line(value: str, what: str = "text") -> str:
    """Free text on a line of its own (%help, comments): control characters shown escaped."""
    return _visible(_common(value, what, "a text line"))


# --------------------------------------------------------------------------- OCI config / enroot


def oci_env(key: str, value: str) -> str:
    """One `KEY=VALUE` of an OCI image config's Env (JSON carries any text; NUL and '=' in keys cannot)."""
    check_name("variable", key)
    return f"{key}={_common(value, f'variable {key}', 'the OCI image config')}"


def enroot_env(key: str, value: str) -> str:
    """One line of an enroot environment file (`KEY=VALUE`, read line by line, `$` expanded by enroot)."""
    check_name("variable", key)
    _no_controls(value, f"variable {key}", "an enroot environment file")
    if "$" in value or "\\" in value:
        raise Unrepresentable(f"variable {key}", value, "an enroot environment file",
                              "enroot expands '$' and '\\' in these files")
    return f"{key}={value}"
