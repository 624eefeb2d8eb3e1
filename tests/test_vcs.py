"""git requirements locked as uv and pixi lock them, built into the env: real repositories served on
127.0.0.1 by git's smart HTTP backend (`git http-backend`, behind a small CGI server with optional
basic auth), the test channel's python and a loopback index.

Build backends: most repositories carry an in-tree PEP 517 backend (`backend-path = ["."]`, no build
requirements), which keeps them fast and offline; the round trip and the no-#egg case use real
setuptools, whose wheel pip installs into the isolated build environment from a `-f` folder holding
the setuptools wheel of the machine's local wheel mirror (/opt/pypi/files, used by scripts/setup.sh).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.helpers import assert_user_error, run_cli, write_project

SECRET = "s3cr3t-git-9f2c"
_BACKEND = '''
import base64, hashlib, json, os, sys, zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
META = json.load(open(os.path.join(HERE, "meta.json")))
DIST = META["name"].replace("-", "_") + "-" + META["version"]


def _metadata():
    return ("Metadata-Version: 2.1\\nName: %s\\nVersion: %s\\n" % (META["name"], META["version"])
            + "".join("Requires-Dist: %s\\n" % r for r in META.get("requires", [])))


def _fail(step):
    if META.get("fail") == step:
        for n in range(30):
            print("compiling part %d of the extension" % n)
        print("error: the compiler exploded at part 29", file=sys.stderr)
        raise SystemExit(1)


def prepare_metadata_for_build_wheel(directory, config_settings=None):
    _fail("metadata")
    os.makedirs(os.path.join(directory, DIST + ".dist-info"))
    with open(os.path.join(directory, DIST + ".dist-info", "METADATA"), "w") as f:
        f.write(_metadata())
    return DIST + ".dist-info"


def build_wheel(directory, config_settings=None, metadata_directory=None):
    _fail("wheel")
    mod = META["name"].replace("-", "_")
    wheel = "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    files = {mod + "/__init__.py": open(os.path.join(HERE, mod + ".py")).read(),
             DIST + ".dist-info/METADATA": _metadata(), DIST + ".dist-info/WHEEL": wheel}
    record = ["%s,sha256=%s,%d" % (p, base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b"=")
                                   .decode(), len(t.encode())) for p, t in files.items()]
    files[DIST + ".dist-info/RECORD"] = "\\n".join(record + [DIST + ".dist-info/RECORD,,"]) + "\\n"
    name = DIST + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as z:
        for p, t in files.items():
            z.writestr(zipfile.ZipInfo(p, (2020, 1, 1, 0, 0, 0)), t)
    return name
'''


# --------------------------------------------------------------------------- repositories


class Repo:
    """A git repository of one pure-python project, served under the server's root."""

    def __init__(self, path: Path, url: str) -> None:
        self.path, self.url = path, url

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.path), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, version: str, *, requires: tuple[str, ...] = (), fail: str | None = None,
               setuptools: bool = False) -> str:
        """Write the project at `version` and commit it; returns the commit."""
        name = self.path.name.removesuffix(".git")
        mod = name.replace("-", "_")
        if setuptools:
            deps = ", ".join(json.dumps(r) for r in requires)
            (self.path / "pyproject.toml").write_text(
                '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
                f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = [{deps}]\n'
                f'[tool.setuptools]\npackages = ["{mod}"]\n')
            (self.path / mod).mkdir(exist_ok=True)
            (self.path / mod / "__init__.py").write_text(f'__version__ = "{version}"\n')
        else:
            (self.path / "pyproject.toml").write_text(
                '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n')
            (self.path / "backend.py").write_text(_BACKEND)
            (self.path / "meta.json").write_text(json.dumps({"name": name, "version": version,
                                                              "requires": list(requires), "fail": fail}))
            (self.path / f"{mod}.py").write_text(f'__version__ = "{version}"\n')
        self.git("add", "-A")
        self.git("commit", "-qm", f"version {version}")
        return self.git("rev-parse", "HEAD")


@dataclass
class GitServer:
    root: Path
    base: str  # http://127.0.0.1:PORT

    def repo(self, name: str, *, private: bool = False, branch: str = "main") -> Repo:
        rel = f"{'private/' if private else ''}{name}.git"
        path = self.root / rel
        subprocess.run(["git", "init", "-q", "-b", branch, str(path)], check=True)
        subprocess.run(["git", "-C", str(path), "config", "http.receivepack", "false"], check=True)
        return Repo(path, f"{self.base}/{rel}")


def _cgi_handler(root: Path) -> type[http.server.BaseHTTPRequestHandler]:
    want = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._cgi()

        def do_POST(self) -> None:  # noqa: N802
            self._cgi()

        def _cgi(self) -> None:
            path, _, query = self.path.partition("?")
            if path.startswith("/private/") and self.headers.get("Authorization") != want:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
                   "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                   "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                   "REMOTE_ADDR": "127.0.0.1", "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
            if self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            p = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
            head, _, payload = p.stdout.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.decode().split("\r\n"):
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.split()[0])
                elif key:
                    headers.append((key, value.strip()))
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture()
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    if not shutil.which("git"):
        pytest.skip("git not installed")
    root = tmp_path / "served"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _cgi_handler(root))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield GitServer(root, f"http://127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()


@pytest.fixture()
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Private package and condastack caches (the git cache lives in the package cache)."""
    env = {"CONDASTACK_PKGS": str(tmp_path / "pkgs"), "CONDASTACK_CACHE": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="session")
def setuptools_links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A -f folder holding the setuptools wheel (from the machine's local wheel mirror)."""
    found = sorted(Path("/opt/pypi/files").glob("setuptools-[0-9]*-py3-none-any.whl"))
    if not found:
        pytest.skip("no setuptools wheel in /opt/pypi/files (the local wheel mirror scripts/setup.sh uses)")
    folder = tmp_path_factory.mktemp("setuptools-links")
    shutil.copy(found[-1], folder)
    return folder


def _project(root: Path, channel_url: str, pip_lines: list[str], *, child: bool = False) -> Path:
    text = (f'channels: ["{channel_url}"]\ndependencies:\n  - python 3.11.*\n  - pip\n  - pip:\n'
            + "".join(f"    - {line}\n" for line in pip_lines))
    app = "  app: {file: app.yml, extends: base}\n" if child else ""
    return write_project(root, "name: vcs\nplatforms: [linux-64]\nlayers:\n  base: {file: base.yml}\n" + app,
                         {"base.yml": text, **({"app.yml": "dependencies:\n  - libhello\n"} if child else {})})


def _pip(proj: Path, layer: str = "base") -> dict[str, dict]:
    data = yaml.safe_load((proj / "lock" / f"{layer}.conda-lock.yml").read_text())
    return {p["name"]: p for p in data["package"] if p["manager"] == "pip"}


def _lock(proj: Path, *args: str) -> None:
    res = run_cli("-C", proj, "lock", *args)
    assert res.returncode == 0, res.output


# --------------------------------------------------------------------------- refs


def test_a_branch_is_locked_at_its_commit_and_moves_only_with_update(tmp_path: Path, channel_url: str,
                                                                    git_server: GitServer, caches: dict) -> None:
    repo = git_server.repo("movepkg")
    first = repo.commit("1.0")
    req = f"movepkg @ git+{repo.url}@main"
    proj = _project(tmp_path / "p", channel_url, [req], child=True)

    shown = json.loads(run_cli("-C", proj, "layers", "--json").stdout)["layers"]["base"]["own"]["linux-64"]
    assert req in shown["pip"]
    assert shown["vcs"] == [{"requirement": req, "url": repo.url, "ref": "main", "name": "movepkg",
                             "resolved": "at lock time: ref 'main' becomes its commit"}]
    plan = json.loads(run_cli("-C", proj, "lock", "--dry-run", "--json").stdout)
    assert plan[0]["pip"] == [req] and plan[0]["vcs"][0]["ref"] == "main" and plan[0]["action"] == "solve"

    _lock(proj)
    pip = _pip(proj)
    assert pip["movepkg"]["url"] == f"git+{repo.url}@{first}" and pip["movepkg"]["version"] == "1.0"
    lock_text = (proj / "lock" / "base.conda-lock.yml").read_text()

    second = repo.commit("1.1")
    assert second != first
    _lock(proj)  # the file is unchanged: the recorded commit stays, nothing is rewritten
    assert (proj / "lock" / "base.conda-lock.yml").read_text() == lock_text
    assert run_cli("-C", proj, "lock", "--check").returncode == 0

    assert _pip(proj, "app")["movepkg"]["url"] == f"git+{repo.url}@{first}"  # the child has its parent's commit

    # a changed file re-solves the layer, and the recorded commit is kept like any other pin
    with open(proj / "environments" / "base.yml", "a") as f:
        f.write("variables: {MOVE: '1'}\n")
    _lock(proj)
    assert (proj / "lock" / "base.conda-lock.yml").read_text() != lock_text
    assert _pip(proj)["movepkg"]["url"] == f"git+{repo.url}@{first}"

    _lock(proj, "--update", "movepkg")
    pip = _pip(proj)
    assert pip["movepkg"]["url"] == f"git+{repo.url}@{second}" and pip["movepkg"]["version"] == "1.1"
    assert _pip(proj, "app")["movepkg"]["url"] == f"git+{repo.url}@{second}"  # the child follows
    pip_txt = (proj / "lock" / "base.pip.txt").read_text()
    assert f"# movepkg @ git+{repo.url}@{second}" in pip_txt


def test_a_tag_is_locked_at_the_commit_it_names(tmp_path: Path, channel_url: str, git_server: GitServer,
                                               caches: dict) -> None:
    repo = git_server.repo("tagpkg")
    tagged = repo.commit("1.4.4")
    repo.git("tag", "-a", "v1.4.4", "-m", "release")  # annotated: ls-remote's peeled line names the commit
    repo.commit("1.5.0.dev0")
    proj = _project(tmp_path / "p", channel_url, [f"git+{repo.url}@v1.4.4#egg=tagpkg"])
    _lock(proj)
    pip = _pip(proj)
    assert pip["tagpkg"]["url"] == f"git+{repo.url}@{tagged}" and pip["tagpkg"]["version"] == "1.4.4"


def test_no_ref_is_the_default_branch(tmp_path: Path, channel_url: str, git_server: GitServer,
                                      caches: dict) -> None:
    repo = git_server.repo("headpkg", branch="trunk")
    head = repo.commit("2.0")
    repo.git("checkout", "-qb", "feature")
    repo.commit("3.0.dev0")
    repo.git("checkout", "-q", "trunk")
    proj = _project(tmp_path / "p", channel_url, [f"headpkg @ git+{repo.url}"])
    _lock(proj)
    pip = _pip(proj)
    assert pip["headpkg"]["url"] == f"git+{repo.url}@{head}" and pip["headpkg"]["version"] == "2.0"


def test_a_ref_that_does_not_exist_names_the_requirement_and_the_ref(tmp_path: Path, channel_url: str,
                                                                     git_server: GitServer, caches: dict) -> None:
    repo = git_server.repo("refpkg")
    repo.commit("1.0")
    proj = _project(tmp_path / "p", channel_url, [f"refpkg @ git+{repo.url}@no-such-branch"])
    assert_user_error(run_cli("-C", proj, "lock"), f"refpkg @ git+{repo.url}@no-such-branch", "'no-such-branch'",
                      "no branch or tag")
    assert not (proj / "lock" / "base.conda-lock.yml").exists()


def test_a_repository_that_does_not_build_shows_the_builds_last_lines(tmp_path: Path, channel_url: str,
                                                                      git_server: GitServer, caches: dict) -> None:
    repo = git_server.repo("brokenpkg")
    repo.commit("1.0", fail="metadata")
    proj = _project(tmp_path / "p", channel_url, [f"brokenpkg @ git+{repo.url}@main"])
    res = run_cli("-C", proj, "lock")
    assert_user_error(res, "brokenpkg @ git+", "does not build", "compiling part 29 of the extension",
                      "error: the compiler exploded at part 29")
    assert "compiling part 3 of" not in res.output  # the last lines, not the whole log


def test_editable_and_local_folders_stay_refused(tmp_path: Path, channel_url: str, git_server: GitServer) -> None:
    repo = git_server.repo("editpkg")
    repo.commit("1.0")
    for line, needle in [(f"-e git+{repo.url}@main#egg=editpkg", "editable"), ("./src/editpkg", "local path"),
                         (f"hgpkg @ hg+{repo.url}@tip", "only git")]:
        proj = _project(tmp_path / f"p{abs(hash(line))}", channel_url, [line])
        assert_user_error(run_cli("-C", proj, "layers"), "base.yml, line 6", needle)


# --------------------------------------------------------------------------- credentials


def _files_containing(roots: list[Path], needle: bytes) -> list[Path]:
    found = []
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                with contextlib.suppress(OSError):
                    if not p.is_symlink() and needle in p.read_bytes():
                        found.append(p)
    return found


def test_a_private_repository_behind_basic_auth_never_writes_the_secret(tmp_path: Path, channel_url: str,
                                                                       git_server: GitServer, caches: dict) -> None:
    repo = git_server.repo("privpkg", private=True)
    commit = repo.commit("0.9")
    with_secret = repo.url.replace("http://", f"http://alice:{SECRET}@")
    # without the credentials the server refuses, and git never prompts
    proj = _project(tmp_path / "anon", channel_url, [f"privpkg @ git+{repo.url}@main"])
    assert_user_error(run_cli("-C", proj, "lock"), "privpkg @ git+", "ls-remote")

    proj = _project(tmp_path / "p", channel_url, [f"privpkg @ git+{with_secret}@main"])
    outputs = [run_cli("-C", proj, *args) for args in (["layers", "--json"], ["layers"],
                                                       ["lock", "--dry-run", "--json"], ["lock"])]
    assert all(r.returncode == 0 for r in outputs), [r.output for r in outputs]
    assert _pip(proj)["privpkg"]["url"] == f"git+{repo.url}@{commit}"
    assert "git+http://***@127.0.0.1" in outputs[0].stdout  # shown masked, so the user sees which URL is used
    # build fetches the commit again into a fresh cache, with the stack's credentials
    fresh = {"CONDASTACK_PKGS": str(tmp_path / "pkgs2")}
    res = run_cli("-C", proj, "build", "base", env=fresh)
    assert res.returncode == 0, res.output
    outputs.append(res)
    assert not [r.output for r in outputs if SECRET in r.output]
    written = _files_containing([proj, tmp_path / "pkgs", tmp_path / "pkgs2", tmp_path / "cache"],
                                SECRET.encode())
    assert written == [proj / "environments" / "base.yml"]  # the user's own file, and nothing else


# --------------------------------------------------------------------------- name from the source, round trip


def test_no_egg_name_comes_from_the_source_and_its_requirements_join_the_solve(
        tmp_path: Path, channel_url: str, git_server: GitServer, caches: dict, pypi_index,  # noqa: ANN001
        setuptools_links: Path) -> None:
    repo = git_server.repo("dllogger")
    commit = repo.commit("1.0.0", requires=("tinylib>=1",), setuptools=True)
    proj = _project(tmp_path / "p", channel_url, [f"--index-url {pypi_index.url}", f"-f {setuptools_links}",
                                                  f"git+{repo.url}"])
    shown = json.loads(run_cli("-C", proj, "layers", "--json").stdout)["layers"]["base"]["own"]["linux-64"]["vcs"]
    assert shown[0]["name"] is None and "the name and version come from the source" in shown[0]["resolved"]
    _lock(proj)
    pip = _pip(proj)
    assert pip["dllogger"]["url"] == f"git+{repo.url}@{commit}" and pip["dllogger"]["version"] == "1.0.0"
    assert pip["dllogger"]["dependencies"] == {"tinylib": ">=1"}
    assert pip["tinylib"]["version"] == "2.0"  # from the index, through the git package's own requirement


def test_lock_build_verify_pack_unpack_round_trip(tmp_path: Path, channel_url: str, git_server: GitServer,
                                                  caches: dict, pypi_index, setuptools_links: Path) -> None:  # noqa: ANN001
    repo = git_server.repo("roundtrip")
    commit = repo.commit("0.5", requires=("tinylib==1.0",), setuptools=True)
    proj = _project(tmp_path / "p", channel_url, [f"--index-url {pypi_index.url}", f"-f {setuptools_links}",
                                                  f"roundtrip @ git+{repo.url}@main"])
    _lock(proj)
    res = run_cli("-C", proj, "build", "base", "--json")
    assert res.returncode == 0, res.output
    built = json.loads(res.stdout)
    assert built["pip_packages"] == 2 and "roundtrip-0.5-py3-none-any.whl" in built["fetched"]
    prefix = proj / "envs" / "base"
    py = prefix / "bin" / "python"
    code = "import roundtrip, tinylib; print(roundtrip.__version__, tinylib.__version__)"
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0.5", "1.0"]
    dist = next(prefix.glob("lib/python3.*/site-packages/roundtrip-0.5.dist-info"))
    assert json.loads((dist / "direct_url.json").read_text()) == {"url": repo.url,
                                                                 "vcs_info": {"commit_id": commit, "vcs": "git"}}
    # the wheel was built once into the cache keyed by URL + commit, its sha256 recorded there
    wheels = list((tmp_path / "pkgs" / "vcs").glob("*/wheels/roundtrip-0.5-py3-none-any.whl"))
    assert len(wheels) == 1 and (wheels[0].parent / (wheels[0].name + ".sha256")).is_file()

    rep = json.loads(run_cli("-C", proj, "verify", "base", "--json").stdout)
    assert rep["ok"], rep
    # the env's SBOM gives the git package the sha256 of the wheel it was installed from
    sbom = json.loads((prefix / "conda-meta" / "condastack.cdx").read_text())
    comp = next(c for c in sbom["components"] if c["name"] == "roundtrip")
    want = (wheels[0].parent / (wheels[0].name + ".sha256")).read_text().strip()
    assert comp["hashes"] == [{"alg": "SHA-256", "content": want}]

    # a second env, offline, reuses the built wheel (nothing fetched, nothing built)
    res = run_cli("-C", proj, "build", "base", "--offline", "--prefix", tmp_path / "second", "--json")
    assert res.returncode == 0, res.output
    assert json.loads(res.stdout)["fetched"] == []
    # a changed cached wheel is refused by its recorded sha256
    original = wheels[0].read_bytes()
    wheels[0].write_bytes(original + b"\0")
    assert_user_error(run_cli("-C", proj, "build", "base", "--offline", "--prefix", tmp_path / "third"),
                      "roundtrip 0.5", "was recorded")
    wheels[0].write_bytes(original)

    res = run_cli("-C", proj, "pack", "base")
    assert res.returncode == 0, res.output
    archive = proj / "pack" / "base-linux-64.tar.zst"
    dest = tmp_path / "elsewhere" / "env"
    res = run_cli("unpack", archive, dest)
    assert res.returncode == 0, res.output
    code = "import roundtrip, sys; print(roundtrip.__version__, roundtrip.__file__.startswith(sys.prefix))"
    out = subprocess.run([str(dest / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["0.5", "True"]

    # verify sees an env installed from another commit
    (dist / "direct_url.json").write_text(json.dumps({"url": repo.url, "vcs_info": {"vcs": "git",
                                                                                   "commit_id": "0" * 40}}))
    res = run_cli("-C", proj, "verify", "base", "--json")
    assert res.returncode == 1
    assert [p["kind"] for p in json.loads(res.stdout)["problems"]] == ["wrong-pip-commit"]
