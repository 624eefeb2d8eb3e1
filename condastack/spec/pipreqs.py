"""The pip: part of an environment.yml as pip reads it: option lines (-i, --extra-index-url, -f, --pre, -r, -c),
requirements and their URLs, and where in which file each came from.
"""


from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from condastack.core.condalock import marker_holds, parse_pip_requirement
from condastack.core.credentials import redact
from condastack.core.errors import StackInvalid
from condastack.core.names import canonical
from condastack.spec.vcsreq import is_vcs, parse_vcs


@dataclass(frozen=True)
class PipOptions:
    """pip's option lines of a `pip:` list (and of the requirement files it reads)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    pre: bool = False
    constraints: tuple[str, ...] = ()  # requirement strings read from -c files

    def merged(self, child: PipOptions) -> PipOptions:
        """This layer's options with a child's on top: the child's --index-url wins, lists add up."""
        def add(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
            return a + tuple(x for x in b if x not in a)

        return PipOptions(index_url=child.index_url or self.index_url,
                          extra_index_urls=add(self.extra_index_urls, child.extra_index_urls),
                          find_links=add(self.find_links, child.find_links),
                          trusted_hosts=add(self.trusted_hosts, child.trusted_hosts),
                          pre=self.pre or child.pre, constraints=add(self.constraints, child.constraints))

    def to_json(self, clean: Any = str) -> dict[str, Any]:
        d = asdict(self)
        d["index_url"] = clean(self.index_url) if self.index_url else None
        for k in ("extra_index_urls", "find_links"):
            d[k] = [clean(u) for u in d[k]]
        return d


@dataclass(frozen=True)
class Where:
    """A place in a layer file (or a -r/-c file it reads), for error messages."""

    file: Path
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}" if self.line else str(self.file)


def _bad(where: Where | str, problem: str) -> StackInvalid:
    if isinstance(where, Where):
        return StackInvalid(where.file, problem, where.line)
    return StackInvalid(where, problem)


def _where(path: Path, line: int | None) -> Where:
    return Where(Path(path), line)


_OPTS_WITH_VALUE = {"-i": "index_url", "--index-url": "index_url", "--extra-index-url": "extra_index_urls",
                    "-f": "find_links", "--find-links": "find_links", "--trusted-host": "trusted_hosts",
                    "-r": "requirement", "--requirement": "requirement", "-c": "constraint",
                    "--constraint": "constraint", "-e": "editable", "--editable": "editable"}


_REQ_URL = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?)\s*@\s*(?P<url>\S+)(?P<rest>.*)$")


_EDITABLE_FIX = ("cannot be locked or packed: build a wheel (`pip wheel PATH`) and publish it to an index "
                 "(--extra-index-url) or list it as `name @ https://…/name.whl`, or wrap it with `condastack wrap`")


@dataclass
class _PipState:
    """What the `pip:` list of one file says for one platform (filled line by line)."""

    platform: str
    reqs: list[str] = field(default_factory=list)
    opts: dict[str, Any] = field(default_factory=lambda: {"index_url": None, "extra_index_urls": [],
                                                            "find_links": [], "trusted_hosts": [],
                                                            "pre": False, "constraints": []})
    includes: dict[str, str] = field(default_factory=dict)
    reading: tuple[Path, ...] = ()


def _pip_option(line: str, base: Path, where: Where, st: _PipState) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as e:
        raise _bad(where, f"cannot read pip option line '{line}': {e}.") from None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        opt, eq, value = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        if opt in ("-e", "--editable") or opt.startswith("-e"):
            raise _bad(where, f"editable pip dependency '{line}' {_EDITABLE_FIX}.")
        if opt == "--pre":
            st.opts["pre"] = True
            i += 1
            continue
        if opt not in _OPTS_WITH_VALUE:
            raise _bad(
                where, f"pip option '{opt}' is not supported in a layer's pip: list (supported: --index-url, "
                "--extra-index-url, --find-links/-f, --trusted-host, --pre, -r/--requirement, -c/--constraint). "
                "Remove it, or give it to pip yourself outside the lock.")
        if not eq and len(tok) > 2 and not tok.startswith("--"):
            value = tok[2:]  # -rrequirements.txt, as pip allows
        elif not eq:
            i += 1
            if i >= len(tokens):
                raise _bad(where, f"pip option '{opt}' needs a value.")
            value = tokens[i]
        _pip_option_value(_OPTS_WITH_VALUE[opt], value, base, where, st)
        i += 1


def _pip_option_value(kind: str, value: str, base: Path, where: Where, st: _PipState) -> None:
    if kind == "index_url":
        st.opts["index_url"] = value
    elif kind in ("extra_index_urls", "trusted_hosts"):
        if value not in st.opts[kind]:
            st.opts[kind].append(value)
    elif kind == "find_links":
        link = value if "://" in value else (base / value).resolve().as_uri()
        if link not in st.opts["find_links"]:
            st.opts["find_links"].append(link)
    elif kind in ("requirement", "constraint"):
        _read_requirements_file(base / value, where, st, constraints=kind == "constraint")


def _read_requirements_file(path: Path, where: Where, st: _PipState, *, constraints: bool) -> None:
    """A -r/-c file, relative to the file naming it; its content enters the lock's content hash."""
    path = path.resolve()
    what = "constraints" if constraints else "requirements"
    if path in st.reading:
        raise _bad(where, f"{what} file {path} includes itself.")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        raise _bad(where, f"cannot read {what} file {path}: {why}.") from None
    st.includes[str(path)] = hashlib.sha256(data).hexdigest()
    outer, st.reading = st.reading, (*st.reading, path)
    try:
        joined = re.sub(r"[ \t]*\\\n[ \t]*", " ", text)  # pip's line continuation
        for n, raw in enumerate(joined.splitlines(), 1):
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            if constraints and not line.startswith("-"):
                st.opts["constraints"].append(_requirement(line, path.parent, _where(path, n), st.platform))
            else:
                _pip_line(line, path.parent, _where(path, n), st)
    finally:
        st.reading = outer


def _pip_line(line: str, base: Path, where: Where, st: _PipState) -> None:
    if line.startswith("-"):
        _pip_option(line, base, where, st)
        return
    req = _requirement(line, base, where, st.platform)
    if req and req not in st.reqs:
        st.reqs.append(req)


def _requirement(line: str, base: Path, where: Where, platform: str) -> str:
    """A pip requirement that can be locked (as written), '' when its marker is false on `platform`."""
    if " --" in line:
        raise _bad(where, f"per-requirement pip options in '{line}' are not supported; the lock "
                              "records each file's sha256 itself. Remove the options.")
    if is_vcs(line):
        return _vcs_requirement(line, where, platform)
    m = _REQ_URL.match(line)
    if m:
        _check_url(m.group("url"), line, base, where)
    elif line.startswith((".", "/", "~")) or ("/" in line.split(";")[0] and "://" not in line) \
            or line.startswith("file:"):
        raise _bad(where, f"pip requirement '{line}' is a local path, which {_EDITABLE_FIX}.")
    try:
        dep = parse_pip_requirement(line)
    except Exception as e:  # conda-lock raises plain ValueErrors and packaging errors
        raise _bad(where, f"bad pip requirement '{line}': {e}") from None
    return line if marker_holds(dep.markers, platform) else ""


def _vcs_requirement(line: str, where: Where, platform: str) -> str:
    """A git requirement (any ref, or none; named or not): resolved to a commit at lock time."""
    try:
        v = parse_vcs(line)
    except ValueError as e:
        raise _bad(where, f"VCS requirement '{redact(line)}': {e}.") from None
    assert v is not None  # is_vcs said so
    if v.marker:
        try:
            holds = marker_holds(v.marker, platform)
        except Exception as e:  # packaging's InvalidMarker and conda-lock's ValueErrors
            raise _bad(where, f"VCS requirement '{redact(line)}': bad marker '{v.marker}': {e}") from None
        if not holds:
            return ""
    return v.written


def _check_url(url: str, line: str, base: Path, where: Where) -> None:
    """file: URLs must name an archive, not a folder."""
    if url.startswith("file:"):
        target = Path(url.split("://", 1)[-1] if "://" in url else url[5:])
        if target.is_dir() or not target.name.endswith((".whl", ".tar.gz", ".zip", ".tar.bz2")):
            raise _bad(where, f"pip requirement '{line}' is a local folder, which {_EDITABLE_FIX}.")
    elif not re.match(r"^https?://", url):
        raise _bad(where, f"pip requirement '{line}' has URL '{url}', which is not http(s), "
                              "file: or a VCS URL.")


def apply_constraints(reqs: list[str], constraints: tuple[str, ...] | list[str]) -> list[str]:
    """pip's -c: a constraint narrows a requirement of the same name (it never adds a package)."""
    if not constraints:
        return list(reqs)
    from packaging.requirements import InvalidRequirement, Requirement  # lazy: ~12 ms a lock; pip specs only

    narrow: dict[str, list[str]] = {}
    for c in constraints:
        try:
            r = Requirement(c)
        except InvalidRequirement:
            continue
        if str(r.specifier):
            narrow.setdefault(canonical(r.name), []).append(str(r.specifier))
    out = []
    for line in reqs:
        try:
            r = Requirement(line)
        except InvalidRequirement:
            out.append(line)
            continue
        extra = narrow.get(canonical(r.name))
        if not extra or r.url:
            out.append(line)
            continue
        spec = ",".join([s for s in [str(r.specifier), *extra] if s])
        name = r.name + (f"[{','.join(sorted(r.extras))}]" if r.extras else "")
        out.append(f"{name}{spec}" + (f"; {r.marker}" if r.marker else ""))
    return out
