"""`condastack wrap`: wheels, built folders and recipes become packages of a site channel.

The round trip: a wheel with a console script and a built folder are wrapped
into a site channel, a layer that uses them together with the offline test
channel is solved and installed, and the wrapped entry point runs from the
installed environment (and again after the environment is moved).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, run_cli, write_project
from condastack.core.errors import CondastackError
from condastack.channel.wrap import default_channel, wrap

PY = f"{sys.version_info.major}.{sys.version_info.minor}"  # the test channel's python


def make_wheel(folder: Path, name: str = "tiny_tool", version: str = "1.2.0", *, tag: str = "py3-none-any",
               message: str = "hello from tiny-tool") -> Path:
    """Write a small pure-python wheel with one console_scripts entry point."""
    files = {
        "tinytool/__init__.py": "VERSION = '%s'\n" % version,
        "tinytool/cli.py": textwrap.dedent(f"""
            import sys
            import tinytool

            def main():
                print("{message}", tinytool.VERSION, "prefix=" + sys.prefix, "args=" + ",".join(sys.argv[1:]))
                return 3
            """),
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
        f"{name}-{version}.dist-info/entry_points.txt": "[console_scripts]\ntiny-tool = tinytool.cli:main\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return whl


def make_built_folder(folder: Path, text: str = "site data v1") -> Path:
    """A tree mirroring a prefix: a relocatable script and a data file."""
    (folder / "bin").mkdir(parents=True)
    (folder / "share" / "site-data").mkdir(parents=True)
    (folder / "share" / "site-data" / "data.txt").write_text(text + "\n")
    script = folder / "bin" / "site-data"
    script.write_text('#!/bin/sh\nhere=$(dirname -- "$0")\ncat "$here/../share/site-data/data.txt"\n')
    script.chmod(0o755)
    return folder


# --------------------------------------------------------------------------- round trip


def test_wrap_round_trip(channel: Path, tmp_path: Path, pkgs_cache: Path) -> None:
    site = tmp_path / "site"
    whl = make_wheel(tmp_path / "wheels")
    folder = make_built_folder(tmp_path / "built")

    res = run_cli("wrap", whl, "--python", PY, "--channel", site, "--depends", "libhello >=1.0", "--json")
    assert res.returncode == 0, res.output
    (w,) = json.loads(res.stdout)
    assert (w["name"], w["version"], w["subdir"], w["status"]) == ("tiny-tool", "1.2.0", "linux-64", "added")
    assert w["entry_points"] == ["tiny-tool"]
    assert w["build"].startswith(f"py{PY.replace('.', '')}h") and w["build"].endswith("_0")

    res = run_cli("wrap", folder, "--name", "site-data", "--version", "1.0", "--channel", site, "--platform", "noarch")
    assert res.returncode == 0, res.output
    assert "added: noarch/site-data-1.0-h" in res.stdout

    # The site channel is an indexed channel with the python-ABI dependency recorded.
    repo = json.loads((site / "linux-64" / "repodata.json").read_text())
    (rec,) = repo["packages.conda"].values()
    assert rec["name"] == "tiny-tool" and f"python {PY}.*" in rec["depends"] and "libhello >=1.0" in rec["depends"]
    assert json.loads((site / "noarch" / "repodata.json").read_text())["packages.conda"]

    # A layer that uses both, locked together with the test channel, built and run.
    proj = write_project(tmp_path / "proj", """
        name: wrapped
        platforms: [linux-64]
        virtual-packages:
          linux-64: {__cuda: "12.6", __glibc: "2.28"}
        layers:
          base: {file: base.yml}
          app: {file: app.yml, extends: base}
        """, {
        "base.yml": f"""
            name: base
            channels: ["{channel.as_uri()}"]
            dependencies:
              - python {PY}.*
              - libhello
            """,
        "app.yml": f"""
            name: app
            channels: ["{site.as_uri()}", "{channel.as_uri()}"]
            dependencies:
              - tiny-tool 1.2.0.*
              - site-data
              - hello
            """,
    })
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    locked = (proj / "lock" / "app.conda-lock.yml").read_text()
    assert site.as_uri() + "/linux-64/tiny-tool-1.2.0-" in locked and "/noarch/site-data-1.0-" in locked
    res = run_cli("-C", proj, "build", "app")
    assert res.returncode == 0, res.output
    prefix = proj / "envs" / "app"
    installed = {f.name.rsplit("-", 2)[0] for f in (prefix / "conda-meta").glob("*.json")}
    assert {"tiny-tool", "site-data", "python", "libhello", "hello"} <= installed
    out = subprocess.run([str(prefix / "bin" / "tiny-tool"), "a", "b"], capture_output=True, text=True)
    assert out.returncode == 3, out.stderr  # the entry point's return value is the exit code
    assert out.stdout.strip() == f"hello from tiny-tool 1.2.0 prefix={prefix} args=a,b"
    assert subprocess.run([str(prefix / "bin/site-data")], capture_output=True, text=True).stdout == "site data v1\n"
    assert (prefix / "lib" / f"python{PY}" / "site-packages" / "tinytool" / "cli.py").is_file()
    meta = json.loads((prefix / "share/condastack/wrapped/tiny-tool.json").read_text())
    assert meta["entry_points"] == {"tiny-tool": "tinytool.cli:main"}
    assert meta["sha256"] == hashlib.sha256(whl.read_bytes()).hexdigest()
    pkg_text = (prefix / "bin" / "tiny-tool").read_text()
    assert str(tmp_path) not in pkg_text  # nothing in the launcher names a build or install path

    # The launcher finds the python beside it, so the env still works after it is moved.
    moved = tmp_path / "elsewhere" / "deeper" / "app"
    moved.parent.mkdir(parents=True)
    shutil.move(str(prefix), str(moved))
    out = subprocess.run([str(moved / "bin" / "tiny-tool")], capture_output=True, text=True)
    assert out.returncode == 3 and f"prefix={moved} " in out.stdout, out.stdout + out.stderr


def test_wrap_is_deterministic_and_refuses_overwrite(tmp_path: Path) -> None:
    site = tmp_path / "site"
    folder = make_built_folder(tmp_path / "a")
    (p1,) = wrap(folder, channel=site, name="site-data", version="1.0")
    (p2,) = wrap(folder, channel=site, name="site-data", version="1.0")
    assert p1.status == "added" and p2.status == "unchanged" and p1.path == p2.path
    sha = hashlib.sha256(p1.path.read_bytes()).hexdigest()

    # Other content gives another build string: both packages coexist.
    other = make_built_folder(tmp_path / "b", text="site data v2")
    (p3,) = wrap(other, channel=site, name="site-data", version="1.0")
    assert p3.build != p1.build and p1.path.exists()

    # The same name-version-build with other content is refused, unless forced.
    with pytest.raises(CondastackError, match="already exists and differs.*--force"):
        wrap(other, channel=site, name="site-data", version="1.0", build_string=p1.build)
    assert hashlib.sha256(p1.path.read_bytes()).hexdigest() == sha  # untouched
    (p4,) = wrap(other, channel=site, name="site-data", version="1.0", build_string=p1.build, force=True)
    assert p4.status == "replaced" and hashlib.sha256(p4.path.read_bytes()).hexdigest() != sha
    repo = json.loads((site / "linux-64" / "repodata.json").read_text())["packages.conda"]
    assert repo[p4.path.name]["sha256"] == hashlib.sha256(p4.path.read_bytes()).hexdigest()  # re-indexed


def test_wrap_default_channel_is_beside_the_stack(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", "name: x\nlayers:\n  base: {file: base.yml}\n",
                         {"base.yml": "name: base\ndependencies: [python]\n"})
    res = run_cli("-C", root, "wrap", make_built_folder(tmp_path / "f"), "--name", "site-data", "--version", "2.0")
    assert res.returncode == 0, res.output
    assert default_channel(root) == root.resolve() / "environments" / "channel"
    assert list((root / "environments" / "channel" / "linux-64").glob("site-data-2.0-h*_0.conda"))
    assert (root / "environments" / "channel" / "linux-64" / "repodata.json").is_file()


def test_wrap_cp_wheel_takes_its_python(tmp_path: Path) -> None:
    """A cpXY wheel names its python; the dependency follows it (even when it is not this interpreter)."""
    whl = make_wheel(tmp_path / "w", tag="cp310-cp310-manylinux_2_17_x86_64")
    (p,) = wrap(whl, channel=tmp_path / "site", name="tiny-tool")
    assert p.build.startswith("py310h")
    repo = json.loads((tmp_path / "site" / "linux-64" / "repodata.json").read_text())["packages.conda"]
    assert repo[p.path.name]["depends"] == ["python 3.10.*", "__glibc >=2.17"]  # the manylinux_2_17 floor
    with pytest.raises(CondastackError, match="built for python 3.10"):
        wrap(whl, channel=tmp_path / "site", python="3.11")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["{tmp}/missing.whl", "--name", "x", "--version", "1"], ["does not exist"]),
        (["{tmp}/notawheel.txt", "--name", "x", "--version", "1"], ["neither a folder nor a wheel"]),
        (["{tmp}/broken-1.0-py3-none-any.whl"], ["not a zip archive"]),
        (["{tmp}/built", "--name", "Bad Name", "--version", "1"], ["not a valid conda package name"]),
        (["{tmp}/built", "--name", "ok", "--version", "1-2"], ["not a valid conda version"]),
        (["{tmp}/built", "--version", "1"], ["--name is required"]),
        (["{tmp}/built", "--name", "ok", "--version", "1", "--depends", "foo >=>=1"], ["not a conda match spec"]),
        (["{tmp}/tiny_tool-1.2.0-py3-none-any.whl"], ["--python X.Y"]),
        (["{tmp}/abs", "--name", "ok", "--version", "1"], ["contains the absolute path", "--recipe"]),
    ],
)
def test_wrap_bad_input(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    (tmp_path / "notawheel.txt").write_text("x")
    (tmp_path / "broken-1.0-py3-none-any.whl").write_text("not a zip")
    make_wheel(tmp_path)
    make_built_folder(tmp_path / "built")
    abs_dir = tmp_path / "abs"
    (abs_dir / "etc").mkdir(parents=True)
    (abs_dir / "etc" / "conf").write_text(f"root={abs_dir}\n")
    res = run_cli("wrap", *[a.format(tmp=tmp_path) for a in args], "--channel", tmp_path / "site")
    assert_user_error(res, *needles)
    assert not list((tmp_path / "site").rglob("*.conda"))


def test_wrap_recipe(tmp_path: Path) -> None:
    """--recipe builds with rattler-build into the site channel (a recipe needing only /bin/sh)."""
    rdir = tmp_path / "recipe"
    rdir.mkdir()
    (rdir / "recipe.yaml").write_text(textwrap.dedent("""
        package:
          name: recipe-data
          version: "0.1"
        build:
          number: 0
          noarch: generic
          script:
            - mkdir -p $PREFIX/share/recipe-data
            - echo built > $PREFIX/share/recipe-data/flag
        """))
    site = tmp_path / "site"
    (p,) = wrap(rdir, channel=site, recipe=True, build_channels=())
    assert (p.name, p.version, p.subdir, p.status) == ("recipe-data", "0.1", "noarch", "added")
    assert "recipe-data" in (site / "noarch" / "repodata.json").read_text()
    with pytest.raises(CondastackError, match="builds 'recipe-data', not --name other"):
        wrap(rdir, channel=site, recipe=True, name="other", build_channels=())
    with pytest.raises(CondastackError, match="looks like a rattler-build recipe"):
        wrap(rdir, channel=site, name="recipe-data", version="0.1")
