"""pip's `--find-links` for conda-lock's PyPI solver, which reads PEP 503 indexes only.

A find-links target is a local folder of wheels/sdists or a flat HTML page of
links (download.pytorch.org/whl/torch_stable.html). Both are turned into a
PEP 503 index served on 127.0.0.1 for the length of one solve; what the solver
locks from a local folder is then recorded as the file's file:// URL, and what
it locks from a page keeps the page's own (absolute) link.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import http.server
import re
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from condastack.core.errors import CondastackError
from condastack.core.names import canonical

_DIST = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._]*?)-\d[^/]*\.(whl|tar\.gz|zip|tar\.bz2)$")
_HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.I)


def _project(filename: str) -> str | None:
    m = _DIST.match(filename)
    return canonical(m.group("name")) if m else None


def _links(target: str) -> list[tuple[str, str]]:
    """(file name, absolute URL with #sha256= where known) of one find-links target."""
    if target.startswith("file:"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlparse(target).path))
        if not folder.is_dir():
            raise CondastackError(f"--find-links {target}: no such folder.")
        out = []
        for f in sorted(folder.iterdir()):
            if f.is_file() and _project(f.name):
                out.append((f.name, f"{f.resolve().as_uri()}#sha256={hashlib.sha256(f.read_bytes()).hexdigest()}"))
        return out
    try:
        with urllib.request.urlopen(target, timeout=60) as r:  # noqa: S310 - http(s): checked by the caller
            page = r.read(64 << 20).decode("utf-8", "replace")
    except OSError as e:
        raise CondastackError(f"--find-links {target}: cannot read the page: {e}.") from None
    out = []
    for href in _HREF.findall(page):
        url = urllib.parse.urljoin(target, html.unescape(href))
        name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
        if _project(name):
            out.append((name, url))
    return out


def _write_index(root: Path, links: list[tuple[str, str]], serve: str) -> None:
    by_project: dict[str, list[tuple[str, str]]] = {}
    for name, url in links:
        by_project.setdefault(_project(name) or "", []).append((name, url))
    for proj, items in by_project.items():
        d = root / "simple" / proj
        d.mkdir(parents=True, exist_ok=True)
        rows = []
        for name, url in items:
            if url.startswith("file:"):  # poetry fetches over http only: serve the file itself
                (root / "files").mkdir(exist_ok=True)
                local = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
                link = root / "files" / name
                if not link.exists():
                    link.symlink_to(local)
                url = f"{serve}files/{urllib.parse.quote(name)}#{urllib.parse.urlparse(url).fragment}"
            rows.append(f'<a href="{html.escape(url)}">{html.escape(name)}</a>')
        (d / "index.html").write_text("<html><body>\n" + "\n".join(rows) + "\n</body></html>\n")
    (root / "simple").mkdir(exist_ok=True)


class _QuietServer(http.server.ThreadingHTTPServer):
    """The solver hangs up mid-download when it has what it needs: not an error, and no traceback."""

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@contextlib.contextmanager
def find_links_index(targets: list[str] | tuple[str, ...]) -> Iterator[tuple[str | None, dict[str, str]]]:
    """A loopback PEP 503 index of `targets` (None when there are none) and {served URL: original file URL}."""
    if not targets:
        yield None, {}
        return
    with tempfile.TemporaryDirectory(prefix="condastack-find-links.") as tmp:
        root = Path(tmp)

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        server = _QuietServer(("127.0.0.1", 0), functools.partial(Quiet, directory=tmp))
        serve = f"http://127.0.0.1:{server.server_address[1]}/"
        links = [link for t in targets for link in _links(t)]
        _write_index(root, links, serve)
        back = {f"{serve}files/{urllib.parse.quote(n)}": u.split("#", 1)[0] for n, u in links if u.startswith("file:")}
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"{serve}simple/", back
        finally:
            server.shutdown()
            server.server_close()
