"""A pip VCS requirement as written (`name @ git+https://host/repo.git@main`, `git+…#egg=name`, no ref, no name).

Only git is resolved (as uv, pixi and poetry do). The parts are read here once, so the lock (which
resolves the ref to a commit), the build (which builds the wheel) and the outputs that show the
requirement agree on them. Credentials in the URL stay in `url`; `bare_url` is what may be written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from condastack.core.credentials import redact, strip_credentials

VCS_PREFIXES = ("git+", "hg+", "svn+", "bzr+")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
_NAMED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[(?P<extras>[^\]]*)\])?\s*@\s*(?P<url>\S+)"
                    r"\s*(?:;\s*(?P<marker>.*))?$")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class VcsRequirement:
    """One git requirement of a `pip:` list, read into its parts."""

    written: str  # the line as written (may hold credentials: show it through `shown`)
    url: str  # the repository URL without `git+`, ref or fragment (may hold credentials)
    ref: str | None  # a branch, tag or commit; None = the default branch
    name: str | None  # from `name @` or `#egg=`; None = read from the source's metadata at lock time
    extras: tuple[str, ...] = ()
    subdirectory: str | None = None
    marker: str | None = None

    @property
    def bare_url(self) -> str:
        """The repository URL as the lock may record it (no credentials; ssh's `git@` user is no secret)."""
        if self.url.startswith("ssh://") and ":" not in self.url[6:].partition("/")[0]:
            return self.url
        return strip_credentials(self.url)

    @property
    def shown(self) -> str:
        """The requirement as written, credentials masked: for output and messages."""
        return redact(self.written)

    @property
    def key(self) -> str:
        """The requirement as written without credentials: what the lock remembers it by."""
        return strip_credentials(self.written)

    def locked_url(self, commit: str) -> str:
        """`git+URL@<commit>[#subdirectory=…]`: the URL the lock records."""
        sub = f"#subdirectory={self.subdirectory}" if self.subdirectory else ""
        return f"git+{self.bare_url}@{commit}{sub}"

    def to_json(self) -> dict[str, object]:
        return {"requirement": self.shown, "url": redact(self.url), "ref": self.ref, "name": self.name,
                "resolved": "at lock time: " + (f"ref '{self.ref}'" if self.ref else "the default branch")
                            + " becomes its commit" + ("" if self.name else "; the name and version come from "
                                                      "the source's own metadata")}


def is_vcs(line: str) -> bool:
    """A VCS URL, bare (`git+…`) or named (`name @ git+…`)."""
    s = line.strip()
    if s.startswith(VCS_PREFIXES):
        return True
    m = _NAMED.match(s)
    return bool(m and m.group("url").startswith(VCS_PREFIXES))


def parse_vcs(line: str) -> VcsRequirement | None:
    """The parts of a git requirement, None when `line` is not a VCS requirement.

    Raises ValueError (with the reason) for a VCS requirement condastack cannot resolve.
    """
    s = line.strip()
    name = extras = marker = None
    if not s.startswith(VCS_PREFIXES):
        m = _NAMED.match(s)
        if not m or not m.group("url").startswith(VCS_PREFIXES):
            return None
        name, extras, marker, s = m.group("name"), m.group("extras"), m.group("marker"), m.group("url")
    elif ";" in s:
        s, _, marker = s.partition(";")
        s, marker = s.strip(), marker.strip()
    if not s.startswith("git+"):
        raise ValueError(f"only git is resolved ({s.split('+', 1)[0]} is not); host the code in git, or build a "
                         "wheel and list it as `name @ https://…/name.whl`")
    url, _, frag = s[4:].partition("#")
    params = dict(p.partition("=")[::2] for p in frag.split("&") if p)
    egg = params.pop("egg", None)
    sub = params.pop("subdirectory", None) or None
    if params:
        raise ValueError(f"unknown URL fragment '{frag}' (pip knows #egg= and #subdirectory=)")
    if egg is not None:
        if not _NAME.match(egg):
            raise ValueError(f"#egg={egg} is not a project name")
        name = name or egg
    if sub is not None and (sub.startswith("/") or ".." in sub.split("/")):
        raise ValueError(f"#subdirectory={sub} must be a relative path inside the repository")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("https", "http", "ssh", "git", "file") or not rest:
        raise ValueError("the URL must be git+https://, git+http://, git+ssh://, git+git:// or git+file://")
    host, slash, path = rest.partition("/")
    ref = None
    if "@" in path:
        path, _, ref = path.rpartition("@")
        if not ref:
            raise ValueError("'@' after the path needs a branch, tag or commit")
    return VcsRequirement(written=line.strip(), url=f"{scheme}://{host}{slash}{path}", ref=ref, name=name,
                          extras=tuple(e.strip() for e in (extras or "").split(",") if e.strip()),
                          subdirectory=sub, marker=marker or None)


def credential_urls(reqs: list[str] | tuple[str, ...]) -> list[str]:
    """The repository URLs of git requirements that carry credentials, for `with_credentials` at build time."""
    out = []
    for line in reqs:
        try:
            v = parse_vcs(line)
        except ValueError:
            continue
        if v is not None and v.bare_url != v.url and v.url not in out:
            out.append(v.url)
    return out
