"""The shared rooms: structured errors, the environment model, the project layout, requirement names.

All fast and offline: no channel, no solve.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import REPO, write_project
from condastack.core import layout
from condastack.env.prefix import MARKER, PREFIXES_FILE, Env, EnvMarker, check_dest_fits, read_marker, write_marker
from condastack.core.errors import (
    ArchiveRefused,
    CondastackError,
    EnvDamaged,
    LockConflict,
    PrefixTooLong,
    StackInvalid,
)
from condastack.lock.layered import _check_parent_pip, requirement_name
from condastack.spec.stack import load_stack
from condastack.archive.unpack import unpack_archive

STACK = """
name: demo
platforms: [linux-64]
virtual-packages:
  linux-64: {__cuda: "12.6"}
layers:
  base: {file: base.yml}
"""
BASE = """
name: base
channels: [file:///nonexistent/channel]
dependencies:
  - python 3.11.*
"""


# --------------------------------------------------------------------------- structured errors


def test_stack_invalid_carries_file_and_line(tmp_path: Path) -> None:
    root = write_project(tmp_path, STACK.replace("platforms: [linux-64]", "platforms: [linux-64]\nflavour: x"),
                         {"base.yml": BASE})
    with pytest.raises(StackInvalid) as ei:
        load_stack(root)
    e = ei.value
    assert isinstance(e, CondastackError)
    assert e.file == root / "environments" / "stack.yml"
    assert e.line == 3
    assert "unknown key 'flavour'" in e.problem
    assert str(e) == f"{e.file}, line 3: {e.problem}"


def test_stack_invalid_for_a_missing_layer_file(tmp_path: Path) -> None:
    root = write_project(tmp_path, STACK, {})
    with pytest.raises(StackInvalid) as ei:
        load_stack(root)
    assert ei.value.file.name == "stack.yml" and ei.value.line == 6
    assert "layer 'base' names file" in ei.value.problem


def test_lock_conflict_fields() -> None:
    child = {"name": "tinylib", "version": "2.0"}  # lock entries are plain data
    parent_pin = {"name": "tinylib", "version": "1.0"}
    with pytest.raises(LockConflict) as ei:
        _check_parent_pip("app", "base", child, [parent_pin])
    e = ei.value
    assert (e.layer, e.parent, e.package, e.version, e.pinned) == ("app", "base", "tinylib", "2.0", "1.0")
    assert "layer app" in str(e) and "layer base pins tinylib 1.0" in str(e)
    _check_parent_pip("app", "base", {"name": "tinylib", "version": "1.0"}, [parent_pin])  # agrees


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_refused_names_the_member(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "evil.tar.gz", {"ok.txt": b"fine", "../escape.txt": b"bad"})
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveRefused) as ei:
        unpack_archive(archive, dest)
    e = ei.value
    assert e.archive == archive and e.member == "../escape.txt"
    assert "contains '..'" in e.reason
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()


def test_prefix_too_long_fields() -> None:
    ph = "/opt/ph" + "x" * 10
    check_dest_fits([("bin/hello", ph, "binary")], "/short")
    check_dest_fits([("etc/a.conf", "/p", "text")], "/a/much/longer/path")  # text files have no limit
    with pytest.raises(PrefixTooLong) as ei:
        check_dest_fits([("bin/hello", ph, "binary")], "/" + "y" * 40)
    e = ei.value
    assert (e.file, e.room) == ("bin/hello", len(ph)) and e.prefix == "/" + "y" * 40
    assert f"at most {len(ph)} characters" in str(e)


# --------------------------------------------------------------------------- the environment model


def _fake_env(prefix: Path) -> Env:
    meta = prefix / "conda-meta"
    meta.mkdir(parents=True)
    site = prefix / "lib" / "python3.11" / "site-packages"
    (site / "conda_owned-1.0.dist-info").mkdir(parents=True)
    (site / "Pip_Only-2.0.dist-info").mkdir()
    (site / "Pip_Only-2.0.dist-info" / "METADATA").write_text("Name: Pip_Only\nVersion: 2.0\n\nbody\n")
    rec = {"name": "conda-owned", "version": "1.0", "build": "0",
           "paths_data": {"paths": [{"_path": "lib/python3.11/site-packages/conda_owned-1.0.dist-info/RECORD"}]}}
    (meta / "conda-owned-1.0-0.json").write_text(json.dumps(rec))
    write_marker(prefix, EnvMarker(layer="base", lock_hash="abc"))
    return Env(prefix)


def test_env_model_reads_records_marker_and_pip(tmp_path: Path) -> None:
    env = _fake_env(tmp_path / "env")
    assert env.is_conda_env() and env.has_marker()
    assert env.marker == read_marker(env.prefix) == EnvMarker(layer="base", lock_hash="abc")
    assert env.record_names() == ["conda-owned-1.0-0.json"]  # the marker is not a package record
    assert list(env.records) == ["conda-owned"]
    assert env.record_path("conda-owned", "1.0", "0").is_file()
    assert env.pip_dists() == {"pip-only": ("2.0", "lib/python3.11/site-packages/Pip_Only-2.0.dist-info")}
    assert env.installed_dists() == {"conda-owned": "1.0", "pip-only": "2.0"}
    raw: dict = {}
    assert [r["name"] for r in env.raw_records(raw)] == ["conda-owned"]
    assert list(raw) == [str(env.prefix / "conda-meta" / "conda-owned-1.0-0.json")]
    assert env.path(MARKER).is_file() and not env.path(PREFIXES_FILE).exists()


def test_env_model_refuses_a_damaged_record(tmp_path: Path) -> None:
    env = _fake_env(tmp_path / "env")
    bad = env.prefix / "conda-meta" / "broken-1-0.json"
    bad.write_text("{not json")
    with pytest.raises(EnvDamaged) as ei:
        env.records  # noqa: B018 - the read is the test
    assert ei.value.file == bad
    assert [r["name"] for r in env.readable_records()] == ["conda-owned"]  # best-effort readers skip it


def test_not_a_conda_env(tmp_path: Path) -> None:
    with pytest.raises(CondastackError, match="not a conda environment"):
        Env(tmp_path).require_conda_env()


# --------------------------------------------------------------------------- layout and stack loading


def test_layout_paths(tmp_path: Path) -> None:
    assert layout.lockfile_path(tmp_path, "app") == tmp_path / "lock" / "app.conda-lock.yml"
    assert layout.explicit_path(tmp_path, "app", "linux-64", "linux-64") == tmp_path / "lock" / "app.lock"
    assert layout.explicit_path(tmp_path, "app", "osx-arm64", "linux-64") == tmp_path / "lock" / "app.osx-arm64.lock"
    assert layout.pip_txt_path(tmp_path, "app", "linux-64", "linux-64") == tmp_path / "lock" / "app.pip.txt"
    assert layout.env_prefix(tmp_path, "app") == tmp_path / "envs" / "app"
    assert layout.pack_output(tmp_path, "app", "linux-64", ".tar.zst") == tmp_path / "pack" / "app-linux-64.tar.zst"


def test_cache_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONDASTACK_CACHE", raising=False)
    monkeypatch.delenv("CONDASTACK_PKGS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert layout.cache_root() == Path("/xdg/condastack")
    assert layout.pkgs_dir() == Path("/xdg/condastack/pkgs")
    assert layout.wheels_dir() == Path("/xdg/condastack/pkgs/wheels")
    monkeypatch.setenv("CONDASTACK_CACHE", "/c")
    assert layout.cache_root() == Path("/c")


def test_stack_loads_without_the_solver(tmp_path: Path) -> None:
    """doctor reads the stack on compute nodes: loading it without specs must not import solve.py."""
    root = write_project(tmp_path, STACK, {"base.yml": BASE})
    code = ("import sys; from condastack.spec.stack import load_stack; "
            f"s = load_stack({str(root)!r}, parse_specs=False); "
            "print(s.virtual_packages_for('linux-64'), 'condastack.lock.conda_solve' in sys.modules, "
            "'conda_lock' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["{'__cuda':", "'12.6'}", "False", "False"]


# --------------------------------------------------------------------------- requirement names


@pytest.mark.parametrize(("spec", "name"), [
    ("tinylib~=1.0", "tinylib"),
    ("tinylib==1.0", "tinylib"),
    ("Tiny_Lib[extra]>=1,<2", "tiny-lib"),
    ("tinylib !=1.5 ; python_version >= '3.8'", "tinylib"),
    ("tinylib", "tinylib"),
])
def test_requirement_name(spec: str, name: str) -> None:
    assert requirement_name(spec) == name


# --------------------------------------------------------------------------- typed on-disk formats


def test_env_marker_round_trips_and_refuses_wrong_types(tmp_path: Path) -> None:
    from condastack.core.errors import CondastackError

    env = _fake_env(tmp_path / "env")
    want = EnvMarker(layer="app", stack="s", platform="linux-64", lock_hash="h", lockfile="/l", created_by="c")
    write_marker(env.prefix, want)
    assert read_marker(env.prefix, strict=True) == want
    (env.prefix / MARKER).write_text(json.dumps({"layer": ["not", "text"], "lock_hash": "h"}))
    with pytest.raises(CondastackError, match=r"condastack.info: field 'layer' must be a string"):
        read_marker(env.prefix, strict=True)
    assert read_marker(env.prefix) is None  # build treats a damaged marker as "not made by condastack"


def test_relocation_record_round_trips_and_refuses_bad_records(tmp_path: Path) -> None:
    from condastack.archive.relocate import RelocationRecord
    from condastack.core.errors import CondastackError

    prefix = tmp_path / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    rec = RelocationRecord("/opt/x", (("bin/tool", "/ph" * 10, "binary"), ("etc/a.cfg", "/ph", "text")))
    (prefix / PREFIXES_FILE).write_text(rec.text())
    assert RelocationRecord.read(prefix) == rec
    for bad in ({"current": 3, "records": []}, {"current": None, "records": [["../out", "/ph", "text"]]},
                {"current": None, "records": [["a", "/ph", "exec"]]}, ["not", "a", "mapping"]):
        (prefix / PREFIXES_FILE).write_text(json.dumps(bad))
        with pytest.raises(CondastackError, match="condastack.prefixes"):
            RelocationRecord.read(prefix)


def test_manifest_round_trips_and_names_the_bad_field(tmp_path: Path) -> None:
    from condastack.archive.manifest import Manifest, ManifestInvalid, PackageRef, Placeholder

    m = Manifest(format="tar.zst", archive="a.tar.zst", sha256="ab" * 32, size=10, layer="app",
                 packages=(PackageRef(name="x", version="1", build="0"),),
                 placeholders=(Placeholder("bin/x", "/ph", "binary"),), built_from={"mtime": 1},
                 extra={"future_field": [1, 2]})
    path = tmp_path / "a.tar.zst.manifest.json"
    path.write_text(m.text())
    assert Manifest.read(path) == m
    for key, value in (("size", "10"), ("sha256", "zz"), ("packages", [{"name": 3}]), ("layer", 4),
                       ("placeholders", [{"file": "/etc/passwd", "placeholder": "/p", "mode": "text"}])):
        path.write_text(json.dumps({**m.to_json(), key: value}))
        with pytest.raises(CondastackError) as e:
            Manifest.read(path)
        assert str(path) in str(e.value) and (key in str(e.value) or isinstance(e.value, ManifestInvalid))
