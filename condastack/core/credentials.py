"""Credentials in channel and index URLs: strip them before anything is written, redact them in text.

Shapes handled, in any position of any text:
- `scheme://user[:password]@host` with a scheme in any case and any characters
  in user and password, '@' included (the authority's last '@' ends them);
- conda tokens `/t/<token>` anywhere in a path, the end included;
- secret-looking query parameters (`?token=...`, `&access_key=...`).

Every function here runs in linear time: hand-written scans with str.find and
bounded regexes only, because a regex such as `[a-z][a-z0-9+.-]*://` is
quadratic on a long run of letters and hostile inputs (a 1,000,000-character
package name) would hang the command.
"""

from __future__ import annotations

import base64
import re
import sys
import urllib.parse
from typing import Any

MASK = "***"
# Characters that end a URL authority or a path segment in running text: ASCII controls and space,
# quotes, '/?#'. '@' is not one of them (a password may hold it), nor is a backslash in an authority
# (JSON writes a password's non-ASCII characters as \uXXXX), nor any non-ASCII space.
# Each pattern starts at a literal ('://' or '/t/') and its run stops at a '/', which every next start
# holds, so runs never overlap and a whole substitution is linear. The scheme is checked by a one-character
# look at the character before the match instead of being matched (matching `[a-z][a-z0-9+.-]*://` is
# quadratic on a long run of letters, and a leading lookbehind makes every position a start).
_USERINFO = re.compile(r"://[^/?#\x00-\x20\"<>`{}|^]*@")
# `(?:t/)*`: a path segment named `t` before the token (`/t/t/<token>`) must not hide the token behind it.
_TOKEN = re.compile(r"/t/(?:t/)*[^/?#\x00-\x20\"'<>\\`{}|^,;]+")
# A query parameter: bounded key (so each '?'/'&' costs at most 64 steps), value up to the next separator.
_QUERY = re.compile(r"([?&;])([A-Za-z0-9_.\-]{1,64})=([^&#;\x00-\x20\"'<>\\`]*)")
_SECRET_KEYS = ("token", "secret", "password", "passwd", "pwd", "signature", "credential", "apikey",
                "api_key", "api-key", "access_key", "auth", "session")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


def _is_secret_key(key: str) -> bool:
    k = key.lower()
    return k in ("sig", "key", "x-amz-signature", "x-amz-credential") or any(s in k for s in _SECRET_KEYS)


def _is_userinfo(m: re.Match) -> bool:
    """Whether a `://...@` match is a URL's userinfo: a scheme before it, something in it, a host after it.

    `git+https://…@<commit>` (a placeholder, then a commit) or `://@x` hold no credentials and stay
    as written; a host starts with a letter, a digit, '[' (IPv6) or '%' (an encoded name). O(1).
    """
    s, start, end = m.string, m.start(), m.end()
    return (start > 0 and s[start - 1] in _SCHEME_CHARS and end - start > 4 and end < len(s)
            and (s[end].isascii() and (s[end].isalnum() or s[end] in "[%")))


def _userinfo(text: str, repl: str) -> str:
    if "@" not in text:
        return text

    def sub(m: re.Match) -> str:
        return repl if _is_userinfo(m) else m.group(0)

    return _USERINFO.sub(sub, text)


def _queries(text: str, drop: bool) -> str:
    if "=" not in text:
        return text

    def sub(m: re.Match) -> str:
        if not _is_secret_key(m.group(2)):
            return m.group(0)
        return "" if drop and m.group(1) != "?" else (
            m.group(1) if drop else f"{m.group(1)}{m.group(2)}={MASK}")

    out = _QUERY.sub(sub, text)
    if drop:
        out = out.replace("?&", "?")
        if out.endswith("?"):
            out = out[:-1]
    return out


def strip_credentials(url: str) -> str:
    """The URL without user:password@, /t/<token> or secret query parameters: what a lockfile may hold."""
    url = _userinfo(url, "://")
    if not url[:5].lower() == "file:":  # local paths carry no tokens; a folder may be called 't'
        url = _TOKEN.sub("", url) if "/t/" in url else url
    return _queries(url, drop=True)


def redact(text: str) -> str:
    """`text` with every credential in every URL replaced by ***, for output, logs and messages."""
    text = _userinfo(text, f"://{MASK}@")
    text = _TOKEN.sub(f"/t/{MASK}", text) if "/t/" in text else text
    return _queries(text, drop=False)


_URL_END = re.compile(r"[\s\"'<>`\\]")


def gate(text: str) -> str:
    """The output gate: `text` with every credential inside a URL masked (see redact), and nothing else
    touched. Every text file condastack writes (fs.atomic_write_text) and everything it prints passes
    here, the last line behind strip_credentials/redact at each URL's source. Only the extent of each
    URL ('scheme://' up to a space, quote or backslash) is looked at, so a path such as `/home/t/x` or
    a shell line `a; key=b` in a script stays as written. Linear: each URL is scanned once."""
    if "://" not in text:
        return text
    out: list[str] = []
    pos = 0
    i = text.find("://")
    while i != -1:
        start = i
        while start > pos and i - start < 32 and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        m = _URL_END.search(text, i + 3)
        end = m.start() if m else len(text)
        out.append(text[pos:start])
        url = text[start:end]
        # a local path carries no token (a folder may be called 't'), as in strip_credentials
        out.append(_queries(_userinfo(url, f"://{MASK}@"), drop=False) if url[:5].lower() == "file:" else redact(url))
        pos = end
        i = text.find("://", end)
    out.append(text[pos:])
    return "".join(out)


class GatedStream:
    """A text stream whose every write passes the output gate (stdout, stderr and the logs on them)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def write(self, text: str) -> int:
        self._raw.write(gate(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding ...: the stream's own
        return getattr(self._raw, name)


def gate_std_streams() -> None:
    """Route sys.stdout and sys.stderr through the gate (once per process)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, GatedStream):
            setattr(sys, name, GatedStream(stream))


def with_credentials(url: str, credentials: list[str] | tuple) -> tuple[str, dict[str, str]]:
    """The URL to download and its headers, given the credentialed channel URLs it may fall under.

    A lock holds bare URLs (see strip_credentials); the stack's channel URL that
    the bare URL starts with gives back its /t/<token>/ part or its basic auth.
    """
    for full in credentials:
        bare = strip_credentials(full).rstrip("/") + "/"
        if bare == full.rstrip("/") + "/" or not url.startswith(bare):
            continue
        joined = full.rstrip("/") + "/" + url[len(bare):]
        m = next((m for m in _USERINFO.finditer(joined) if _is_userinfo(m)), None)
        if m is None:
            return joined, {}
        s, e = m.start() + 3, m.end()
        userinfo = joined[s:e - 1]
        user, _, password = userinfo.partition(":")
        auth = base64.b64encode(
            f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()).decode()
        return joined[:s] + joined[e:], {"Authorization": f"Basic {auth}"}
    return url, {}


__all__ = ["MASK", "strip_credentials", "redact", "gate", "gate_std_streams", "GatedStream", "with_credentials"]
