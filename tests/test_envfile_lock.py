"""environment.yml pip options, URL and VCS requirements, locked for real (test channel, loopback index)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml
from tests.helpers import assert_user_error, make_wheel, run_cli, write_project


def _pip(proj: Path, layer: str = "base") -> dict[str, dict]:
    data = yaml.safe_load((proj / "lock" / f"{layer}.conda-lock.yml").read_text())
    return {p["name"]: p for p in data["package"] if p["manager"] == "pip" and p["platform"] == "linux-64"}


def _project(root: Path, channel_url: str, pip_lines: list[str], extra: dict[str, str] | None = None) -> Path:
    text = (f'channels: ["{channel_url}"]\ndependencies:\n  - python 3.11.*\n  - pip\n  - pip:\n'
            + "".join(f"    - {line}\n" for line in pip_lines))
    return write_project(root, """
        name: opts
        platforms: [linux-64]
        layers:
          base: {file: base.yml}
        """, {"base.yml": text, **(extra or {})})


def test_index_url_and_requirements_file_are_locked(tmp_path: Path, channel_url: str, pypi_index) -> None:  # noqa: ANN001
    proj = _project(tmp_path / "p", channel_url, [f"--index-url {pypi_index.url}", "-r requirements.txt", "-c constraints.txt"], {"requirements.txt": "tinyapp\ntinylib>=1\n", "constraints.txt": "tinylib<2\n"})
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    pip = _pip(proj)
    assert set(pip) == {"tinyapp", "tinylib"}
    assert pip["tinylib"]["version"] == "1.0"  # the -c constraint holds; 2.0 exists on the index
    assert pip["tinyapp"]["url"].startswith(pypi_index.url.rsplit("/simple", 1)[0])
    # editing the requirements file makes the lock stale
    assert run_cli("-C", proj, "lock", "--check").returncode == 0
    (proj / "environments" / "requirements.txt").write_text("tinyapp\n")
    assert_user_error(run_cli("-C", proj, "lock", "--check"), "base")


def test_url_wheel_requirement_locks_its_sha256(tmp_path: Path, channel_url: str, pypi_index) -> None:  # noqa: ANN001
    name = "tinylib-1.0-py3-none-any.whl"
    url = pypi_index.url.rsplit("/simple", 1)[0] + f"/files/{name}"
    proj = _project(tmp_path / "p", channel_url, [f"--index-url {pypi_index.url}", f"tinylib @ {url}"])
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    pip = _pip(proj)
    assert pip["tinylib"]["version"] == "1.0"
    assert pip["tinylib"]["hash"]["sha256"] == hashlib.sha256(pypi_index.wheels[name].read_bytes()).hexdigest()


def _git_repo(root: Path) -> tuple[Path, str]:
    """A local git repository holding a pure-python project `gitpkg` (pyproject, setuptools-free flit-like)."""
    repo = root / "gitpkg"
    (repo / "gitpkg").mkdir(parents=True)
    (repo / "gitpkg" / "__init__.py").write_text('__version__ = "0.3"\n')
    (repo / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                         'backend-path = ["."]\n[project]\nname = "gitpkg"\nversion = "0.3"\n')
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    return repo, sha


_GITPKG_BACKEND = """
import os, zipfile

META = "Metadata-Version: 2.1\\nName: gitpkg\\nVersion: 0.3\\n"


def prepare_metadata_for_build_wheel(d, config_settings=None):
    os.makedirs(os.path.join(d, "gitpkg-0.3.dist-info"))
    open(os.path.join(d, "gitpkg-0.3.dist-info", "METADATA"), "w").write(META)
    return "gitpkg-0.3.dist-info"


def build_wheel(d, config_settings=None, metadata_directory=None):
    with zipfile.ZipFile(os.path.join(d, "gitpkg-0.3-py3-none-any.whl"), "w") as z:
        z.writestr("gitpkg/__init__.py", "")
        z.writestr("gitpkg-0.3.dist-info/METADATA", META)
        z.writestr("gitpkg-0.3.dist-info/WHEEL", "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n")
        z.writestr("gitpkg-0.3.dist-info/RECORD", "")
    return "gitpkg-0.3-py3-none-any.whl"
"""


def test_vcs_requirement_pinned_to_a_commit_is_locked_and_built(tmp_path: Path, channel_url: str,  # noqa: ANN001
                                                                pypi_index, pkgs_cache: Path) -> None:
    """A local repository (git+file://) pinned to a commit; tests/test_vcs.py serves branches, tags and auth."""
    repo, sha = _git_repo(tmp_path)
    (repo / "backend.py").write_text(_GITPKG_BACKEND)
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "backend"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    proj = _project(tmp_path / "p", channel_url, [f"--index-url {pypi_index.url}",
                                                  f"gitpkg @ git+{repo.as_uri()}@{sha}"])
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    pip = _pip(proj)
    assert pip["gitpkg"]["version"] == "0.3"
    assert pip["gitpkg"]["url"] == f"git+{repo.as_uri()}@{sha}"  # the commit pins it; build hashes the wheel
    res = run_cli("-C", proj, "build", "base")
    assert res.returncode == 0, res.output
    assert list((proj / "envs" / "base").glob("lib/python3*/site-packages/gitpkg/__init__.py"))


def test_credentials_in_pip_options_never_reach_output(tmp_path: Path, channel_url: str, pypi_index) -> None:  # noqa: ANN001
    index = pypi_index.url.replace("http://", "http://alice:s3cr3t@")
    proj = _project(tmp_path / "p", channel_url, [f"--extra-index-url {index}", "--index-url " + index, "tinylib"])
    outputs = [run_cli("-C", proj, *args) for args in (["layers", "--json"], ["lock", "--dry-run", "--json"],
                                                       ["lock"])]
    assert all(r.returncode == 0 for r in outputs), [r.output for r in outputs]
    assert _pip(proj)["tinylib"]["version"] == "2.0"
    texts = [r.output for r in outputs] + [p.read_text() for p in (proj / "lock").iterdir() if p.is_file()]
    assert not any("s3cr3t" in t for t in texts)
    assert "http://***@127.0.0.1" in outputs[0].output  # shown redacted, so the user sees which index is used


def test_find_links_folder_and_page_are_locked(tmp_path: Path, channel_url: str, pypi_index,  # noqa: ANN001
                                               pkgs_cache: Path) -> None:
    import functools
    import http.server
    import threading

    wheels = tmp_path / "p" / "environments" / "wheels"
    wheels.mkdir(parents=True)
    local = make_wheel(wheels, "tinylocal", "0.5")
    flat = tmp_path / "flat"
    flat.mkdir()
    paged = make_wheel(flat, "tinypage", "0.7")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(flat)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = f"http://127.0.0.1:{server.server_address[1]}/"  # a directory listing: a flat page of links
    try:
        proj = _project(tmp_path / "p", channel_url, [f"--index-url {pypi_index.url}", "-f wheels",
                                                      f"--find-links {page}", "tinylocal", "tinypage", "tinylib"])
        res = run_cli("-C", proj, "lock")
        assert res.returncode == 0, res.output
        pip = _pip(proj)
        assert pip["tinylocal"]["url"] == local.resolve().as_uri()  # the folder's own file, not the loopback copy
        assert pip["tinylocal"]["hash"]["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
        assert pip["tinypage"]["url"] == page + paged.name
        assert pip["tinypage"]["hash"]["sha256"] == hashlib.sha256(paged.read_bytes()).hexdigest()
        assert pip["tinylib"]["version"] == "2.0"
        res = run_cli("-C", proj, "build", "base")
        assert res.returncode == 0, res.output
    finally:
        server.shutdown()
    assert list((proj / "envs" / "base" / "lib").glob("python3*/site-packages/tinylocal/__init__.py"))


def test_find_links_wheel_wins_over_the_index_for_the_same_version(tmp_path: Path, channel_url: str,  # noqa: ANN001
                                                                   pypi_index) -> None:
    """A site's own wheel of a version the index also serves (rebuilt, or there an sdist only) is locked."""
    wheels = tmp_path / "p" / "environments" / "wheels"
    wheels.mkdir(parents=True)
    rebuilt = make_wheel(wheels, "tinylib", "2.0", scripts={"tinylib": "tinylib:main"})
    assert rebuilt.read_bytes() != pypi_index.wheels[rebuilt.name].read_bytes()
    proj = _project(tmp_path / "p", channel_url, [f"--index-url {pypi_index.url}", "-f wheels", "tinyapp"])
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    pip = _pip(proj)
    assert pip["tinylib"]["url"] == rebuilt.resolve().as_uri(), pip["tinylib"]
    assert pip["tinylib"]["hash"]["sha256"] == hashlib.sha256(rebuilt.read_bytes()).hexdigest()
    assert pip["tinyapp"]["url"].startswith(pypi_index.url.rsplit("/simple", 1)[0])  # the rest from the index


def test_pre_takes_pre_releases_for_every_requirement(tmp_path: Path, channel_url: str, pypi_index) -> None:  # noqa: ANN001
    """pip's --pre: a pre-release counts like a release, for direct and indirect requirements alike."""
    def project(root: Path, pre: bool) -> Path:
        wheels = root / "environments" / "wheels"
        wheels.mkdir(parents=True)
        make_wheel(wheels, "tinydep", "1.0")
        make_wheel(wheels, "tinydep", "2.0rc1")
        make_wheel(wheels, "tinytop", "1.0", requires=["tinydep>=1"])
        make_wheel(wheels, "tinytop", "1.1b2", requires=["tinydep>=1"])
        return _project(root, channel_url, [f"--index-url {pypi_index.url}", "-f wheels",
                                            *(["--pre"] if pre else []), "tinytop"])

    for pre, top, dep in ((False, "1.0", "1.0"), (True, "1.1b2", "2.0rc1")):
        proj = project(tmp_path / f"pre-{pre}", pre)
        res = run_cli("-C", proj, "lock")
        assert res.returncode == 0, res.output
        pip = _pip(proj)
        assert (pip["tinytop"]["version"], pip["tinydep"]["version"]) == (top, dep), pip


def test_selectors_quotes_and_variables_only_file_lock_on_the_test_channel(tmp_path: Path, channel_url: str) -> None:
    proj = write_project(tmp_path / "p", """
        name: sel
        platforms: [linux-64, linux-aarch64]
        layers:
          base: {file: base.yml}
          app: {file: app.yml, extends: base}
        """, {"base.yml": f"""
            channels: ["{channel_url}", nodefaults]
            dependencies:
              - python='3.11'
              - libhello  # [linux and x86_64]
              - libfoo  # [aarch64]
              - gpu-kernels  # [not (osx or win)]
            """, "app.yml": "name: app\nvariables: {A: b}\ndependencies:\n"})
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    data = yaml.safe_load((proj / "lock" / "base.conda-lock.yml").read_text())
    names = {plat: {p["name"] for p in data["package"] if p["platform"] == plat} for plat in ("linux-64", "linux-aarch64")}
    assert {"python", "libhello", "gpu-kernels"} <= names["linux-64"] and "libfoo" not in names["linux-64"]
    assert {"python", "libfoo", "gpu-kernels"} <= names["linux-aarch64"] and "libhello" not in names["linux-aarch64"]
    assert next(p for p in data["package"] if p["name"] == "python")["version"].startswith("3.11")
    app = yaml.safe_load((proj / "lock" / "app.conda-lock.yml").read_text())
    assert {p["name"] for p in app["package"]} == {p["name"] for p in data["package"]}  # empty layer: the parent's
