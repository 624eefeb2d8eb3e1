"""Locks against real conda-forge metadata (../shared/realworld/channel; metadata only, no packages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.helpers import REPO, assert_user_error, run_cli, write_project

REAL = (REPO / ".." / "shared" / "realworld" / "channel").resolve()
pytestmark = pytest.mark.skipif(not (REAL / "linux-64" / "repodata.json").is_file(),
                                reason="../shared/realworld/channel is not here")

# Only what the verl stack declares: no hand-added __unix/__linux/__archspec.
STACK = """name: real
platforms: [linux-64]
virtual-packages:
  linux-64: {__cuda: "12.6", __glibc: "2.28"}
layers:
  base: {file: base.yml}
  app: {file: app.yml, extends: base}
"""
BASE = ["python 3.10.*", "pytorch ==2.7.1 cuda126*", "cuda-version 12.6.*", "numpy <2", "cudnn"]


def _project(root: Path, base: list[str], app: list[str]) -> Path:
    dep = lambda specs: "".join(f"  - {s}\n" for s in specs)  # noqa: E731
    return write_project(root, STACK, {
        "base.yml": f"channels: ['{REAL.as_uri()}']\ndependencies:\n{dep(base)}",
        "app.yml": f"dependencies:\n{dep(app)}" if app else "dependencies: []\n",
    })


def _pkgs(lock: Path) -> dict[str, dict]:
    data = yaml.safe_load(lock.read_text())
    return {p["name"]: p for p in data["package"] if p["manager"] == "conda"}


def _assert_conda_lock_writes_the_same(lock: Path, explicit: Path) -> None:
    """The plain writer and explicit renderer agree byte for byte with conda-lock's own."""
    from conda_lock.lockfile import parse_conda_lock_file

    from condastack.core.condalock import conda_lock_write, render_explicit

    data = yaml.safe_load(lock.read_text())
    meta = data["metadata"]
    again = lock.parent / "again" / lock.name
    again.parent.mkdir()
    conda_lock_write(again, data["package"], channels=[c["url"] for c in meta["channels"]],
                     platforms=meta["platforms"], sources=meta["sources"], content_hash=meta["content_hash"],
                     custom=meta["custom_metadata"])
    assert again.read_text() == lock.read_text()
    # what a lock run keeps in memory after writing is what reading the file gives
    from condastack.lock.lockfile import lockfile_document

    rendered = lockfile_document(lock.name, data["package"], channels=[c["url"] for c in meta["channels"]],
                                 platforms=meta["platforms"], sources=meta["sources"],
                                 content_hash=meta["content_hash"], custom=meta["custom_metadata"])
    assert rendered.text == lock.read_text() and rendered.doc == data
    assert render_explicit(parse_conda_lock_file(lock), "linux-64") == explicit.read_text()


def test_verl_shaped_base_locks_with_declared_virtual_packages(tmp_path: Path) -> None:
    proj = _project(tmp_path / "p", BASE, ["pandas"])
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    base = _pkgs(proj / "lock" / "base.conda-lock.yml")
    assert base["pytorch"]["version"] == "2.7.1" and base["pytorch"]["build"].startswith("cuda126")
    assert base["pytorch"]["build"].endswith("_300")  # the one cuda126 py310 build: h5ee0071_300
    assert base["python"]["version"].startswith("3.10.")
    assert base["cuda-version"]["version"].startswith("12.6")
    assert int(base["numpy"]["version"].split(".")[0]) < 2
    cudnn = tuple(int(x) for x in base["cudnn"]["version"].split(".")[:3])
    assert (9, 10, 1) <= cudnn < (10,)  # what this pytorch build requires (so not 9.8)
    app = _pkgs(proj / "lock" / "app.conda-lock.yml")
    assert all(app[n]["hash"] == p["hash"] for n, p in base.items())  # app holds base exactly
    meta = yaml.safe_load((proj / "lock" / "base.conda-lock.yml").read_text())["metadata"]
    vp = json.loads(meta["custom_metadata"]["condastack.virtual-packages.linux-64"])
    assert vp["__unix"] == "0" and vp["__cuda"] == "12.6" and "__linux" in vp and vp["__archspec"] == "1=x86_64"
    records = json.loads((proj / "lock" / "base.records.json").read_text())["platforms"]["linux-64"]
    assert {r["name"] for r in records} == set(base)
    check = run_cli("-C", proj, "lock", "--check")
    assert check.returncode == 0, check.output
    _assert_conda_lock_writes_the_same(proj / "lock" / "app.conda-lock.yml", proj / "lock" / "app.lock")
    layers = json.loads(run_cli("-C", proj, "layers", "--json").stdout)
    assert layers["effective-virtual-packages"]["linux-64"]["__unix"] == "0"


def test_child_breaking_parent_constrains_is_refused(tmp_path: Path) -> None:
    # pandas 2.3.3 constrains tabulate >=0.9.0; the child's tabulate <0.9 must not be locked.
    proj = _project(tmp_path / "p", ["python 3.11.*", "pandas ==2.3.3"], ["tabulate <0.9"])
    res = run_cli("-C", proj, "lock")
    assert_user_error(res, "layer app", "layer base", "'tabulate <0.9'", "pandas 2.3.3 constrains 'tabulate >=0.9.0'")
    assert not (proj / "lock" / "app.conda-lock.yml").exists()
    # without the records file (a lock from elsewhere), the parent's records come from the channel
    (proj / "lock" / "base.records.json").unlink()
    assert_user_error(run_cli("-C", proj, "lock", "app"), "layer app", "layer base", "tabulate")
    assert not (proj / "lock" / "app.conda-lock.yml").exists()


def test_child_breaking_parent_spec_names_both_layers_and_specs(tmp_path: Path) -> None:
    proj = _project(tmp_path / "p", ["python 3.11.*", "pytorch 2.10.*"], ["torchvision 0.22.*"])
    res = run_cli("-C", proj, "lock")
    assert_user_error(res, "layer app", "torchvision 0.22.*", "layer base", "pytorch 2.10.*")
    assert "no candidates" not in res.output.lower()
    assert not (proj / "lock" / "app.conda-lock.yml").exists()


def test_every_missing_spec_is_listed_and_unknown_update_refused(tmp_path: Path) -> None:
    proj = _project(tmp_path / "p", ["python 3.11.*", "no-such-pkg-a", "numpy >=99"], [])
    res = run_cli("-C", proj, "lock", "base")
    assert_user_error(res, "package no-such-pkg-a not found", "no version of numpy matching 'numpy >=99'")
    (proj / "environments" / "base.yml").write_text(f"channels: ['{REAL.as_uri()}']\ndependencies: [python 3.11.*]\n")
    assert run_cli("-C", proj, "lock", "base").returncode == 0
    assert_user_error(run_cli("-C", proj, "lock", "base", "--update", "no-such-package"), "no-such-package")


def test_check_names_inconsistent_records(tmp_path: Path) -> None:
    proj = _project(tmp_path / "p", ["python 3.11.*", "pandas ==2.3.3", "tabulate"], ["scipy"])
    assert run_cli("-C", proj, "lock", "base").returncode == 0
    records = proj / "lock" / "base.records.json"
    data = json.loads(records.read_text())
    for r in data["platforms"]["linux-64"]:
        if r["name"] == "tabulate":
            r["version"] = "0.8.10"  # a hand edit the lock's constrains rule out
    records.write_text(json.dumps(data))
    assert_user_error(run_cli("-C", proj, "lock", "--check", "base"), "pandas 2.3.3", "tabulate >=0.9.0")


# --------------------------------------------------------------------------- pip over conda


@pytest.fixture()
def torch_index(tmp_path: Path):  # noqa: ANN201
    """A PEP 503 index on 127.0.0.1 with PyPI torch's shape: torch needs nvidia-* wheels and triton."""
    import functools
    import hashlib
    import http.server
    import threading

    from tests.helpers import make_wheel

    files = tmp_path / "index" / "files"
    files.mkdir(parents=True)
    wheels = [
        make_wheel(files, "torch", "2.7.1", requires=["nvidia-cublas-cu12==12.6.4.1", "nvidia-cudnn-cu12==9.5.1.17",
                                                      "triton==3.3.1", "mpmath"]),
        make_wheel(files, "nvidia-cublas-cu12", "12.6.4.1"),
        make_wheel(files, "nvidia-cudnn-cu12", "9.5.1.17", requires=["nvidia-cublas-cu12"]),
        make_wheel(files, "triton", "3.3.1"),
        make_wheel(files, "mpmath", "1.3.0"),
        make_wheel(files, "torchapp", "1.0", requires=["torch>=2.5", "numpy"]),
    ]
    simple = tmp_path / "index" / "simple"
    for w in wheels:
        proj = w.name.split("-")[0].replace("_", "-")
        d = simple / proj
        d.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(w.read_bytes()).hexdigest()
        with (d / "index.html").open("a") as f:
            f.write(f'<a href="../../files/{w.name}#sha256={digest}">{w.name}</a>\n')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(tmp_path / "index")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    server.shutdown()


def test_pip_over_conda_pytorch_installs_no_pypi_torch_tree(tmp_path: Path, torch_index: str) -> None:
    proj = _project(tmp_path / "p", ["python 3.10.*", "pytorch ==2.7.1 cuda126*", "cuda-version 12.6.*", "numpy <2",
                                     "pip"], [])
    (proj / "environments" / "stack.yml").write_text(STACK + f'pip-index: ["{torch_index}"]\n')
    (proj / "environments" / "app.yml").write_text("dependencies:\n  - pip:\n    - torchapp\n    - torch>=2.7\n")
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    data = yaml.safe_load((proj / "lock" / "app.conda-lock.yml").read_text())
    pip = {p["name"]: p for p in data["package"] if p["manager"] == "pip"}
    conda = {p["name"] for p in data["package"] if p["manager"] == "conda"}
    assert set(pip) == {"torchapp"}, sorted(pip)  # no PyPI torch, no nvidia-*, no triton
    assert "pytorch" in conda and "numpy" in conda
    n_conda = sum(p["manager"] == "conda" for p in data["package"])
    assert f"{n_conda}+1" in res.output  # the printed count is the file's
    assert run_cli("-C", proj, "lock", "--check").returncode == 0
    _assert_conda_lock_writes_the_same(proj / "lock" / "app.conda-lock.yml", proj / "lock" / "app.lock")
