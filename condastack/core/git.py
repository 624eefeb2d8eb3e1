"""git, run for a repository URL that may need credentials: a ref resolved to its commit, one commit fetched.

Credentials never reach git's command line, its config, FETCH_HEAD or a message: git is given the bare
URL, and for a URL under a credentialed one (a requirement's own `https://user:secret@host/…`, or a
stack's index or channel on that host) an `Authorization` header scoped to that URL, through
GIT_CONFIG_* variables of its environment (which only the user can read). git never prompts.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from condastack.core.credentials import redact, strip_credentials, with_credentials
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_path, remove_path

COMMIT_LEN = 40


class RefNotFound(CondastackError):
    """A branch or tag that the repository does not have."""

    def __init__(self, what: str, url: str, ref: str) -> None:
        self.what, self.url, self.ref = what, url, ref
        super().__init__(f"{what}: the repository {redact(url)} has no branch or tag '{ref}'. Check the spelling "
                         f"(`git ls-remote {redact(url)}` lists them), or give a full 40-character commit.")


def git_env(url: str, credentials: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The environment for running git on `url` (bare): no prompt, and basic auth for a credentialed URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", SSH_ASKPASS="true", LC_ALL="C")
    if not url.startswith(("http://", "https://")):
        return env
    for full in credentials:
        bare = strip_credentials(full).rstrip("/")
        if bare == full.rstrip("/") or not (url + "/").startswith(bare + "/"):
            continue
        _, headers = with_credentials(url.rstrip("/") + "/", [full])
        if "Authorization" in headers:
            n = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
            env.update({"GIT_CONFIG_COUNT": str(n + 1), f"GIT_CONFIG_KEY_{n}": f"http.{bare}/.extraHeader",
                        f"GIT_CONFIG_VALUE_{n}": f"Authorization: {headers['Authorization']}"})
            break
    return env


def _git(args: list[str], url: str, credentials: list[str] | tuple[str, ...], what: str,
         cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(["git", *args], cwd=cwd, env=git_env(url, credentials), capture_output=True,
                           text=True, timeout=600)
    except FileNotFoundError:
        raise CondastackError(f"{what}: git is not installed; install git to lock or build a git requirement.") \
            from None
    except subprocess.TimeoutExpired:
        raise CondastackError(f"{what}: git {args[0]} of {redact(url)} took over 10 minutes; check the host.") \
            from None
    if p.returncode != 0:
        tail = " | ".join(redact(p.stderr).strip().splitlines()[-4:])
        raise _GitFailed(f"{what}: git {args[0]} of {redact(url)} failed: {tail or f'exit {p.returncode}'}")
    return p.stdout


class _GitFailed(CondastackError):
    pass


def resolve_ref(url: str, ref: str | None, what: str, credentials: list[str] | tuple[str, ...] = ()) -> str:
    """The commit a branch or tag (None: the default branch) points at now, by `git ls-remote`.

    A full commit is taken as given (fetching it proves it exists).
    """
    if ref is not None and len(ref) == COMMIT_LEN and all(c in "0123456789abcdef" for c in ref):
        return ref
    if ref is None:
        out = _git(["ls-remote", "--symref", "--", url, "HEAD"], url, credentials, what)
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name == "HEAD" and not sha.startswith("ref:"):
                return sha
        raise CondastackError(f"{what}: the repository {redact(url)} has no default branch (HEAD); name a branch, "
                              "tag or commit: `…@main`.")
    out = _git(["ls-remote", "--", url, ref, f"refs/tags/{ref}^{{}}"], url, credentials, what)
    found: dict[str, str] = {}
    for line in out.splitlines():
        sha, tab, name = line.partition("\t")
        if tab:
            found[name] = sha
    for name in (f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
        if name in found:
            return found[name]
    raise RefNotFound(what, url, ref)


def fetch_commit(url: str, commit: str, dest: Path, what: str,
                 credentials: list[str] | tuple[str, ...] = ()) -> Path:
    """The repository's tree at `commit` (with its submodules) at `dest`, fetched once: an existing
    `dest` is kept. Only the bare URL is written into `dest/.git`."""
    dest = Path(dest)
    if (dest / ".git").is_dir():
        return dest
    with atomic_path(dest, durable=False) as tmp:
        tmp.mkdir(parents=True)
        _git(["init", "-q", str(tmp)], url, credentials, what)
        try:  # one commit, shallow: servers allow it for reachable commits (git's protocol v2, GitHub, GitLab)
            _git(["fetch", "-q", "--depth", "1", "--", url, commit], url, credentials, what, cwd=tmp)
        except _GitFailed:
            _git(["fetch", "-q", "--", url, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
                 url, credentials, what, cwd=tmp)
        try:
            _git(["-c", "advice.detachedHead=false", "checkout", "-q", commit], url, credentials, what, cwd=tmp)
        except _GitFailed:
            raise CondastackError(f"{what}: the repository {redact(url)} has no commit {commit}. Check the "
                                  "commit, or re-lock with `condastack lock --update NAME`.") from None
        if (tmp / ".gitmodules").is_file():
            _git(["submodule", "update", "--init", "--recursive", "--depth", "1"], url, credentials, what, cwd=tmp)
        remove_path(tmp / ".git" / "FETCH_HEAD")  # names the URL; nothing needs it
    return dest


def commit_time(src: Path) -> str:
    """The commit's time (seconds since the epoch), for SOURCE_DATE_EPOCH: reproducible wheels."""
    p = subprocess.run(["git", "-C", str(src), "log", "-1", "--format=%ct"], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip().isdigit() else "315532800"
