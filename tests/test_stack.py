"""The stack file, its validation errors, `condastack layers` and CLI conventions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, assert_user_error, run_cli, write_project
from condastack.core.errors import CondastackError
from condastack.spec.stack import load_stack

GOOD_STACK = """
name: demo
platforms: [linux-64, linux-aarch64]
virtual-packages:
  linux-64: {__cuda: "12.6", __glibc: "2.28"}
layers:
  base: {file: base.yml}
  app: {file: app.yml, extends: base}
"""
BASE = """
name: base
channels: [file:///nonexistent/channel]
dependencies:
  - python 3.11.*
  - libfoo >=1.0  # [linux64]
  - pip:
    - tinypkg==1.0
"""
APP = """
name: app
dependencies:
  - hello
"""


def test_load_good_stack(tmp_path: Path) -> None:
    root = write_project(tmp_path, GOOD_STACK, {"base.yml": BASE, "app.yml": APP})
    stack = load_stack(root)
    assert stack.platforms == ("linux-64", "linux-aarch64")
    assert stack.virtual_packages["linux-64"] == {"__cuda": "12.6", "__glibc": "2.28"}
    assert [l.name for l in stack.chain("app")] == ["base", "app"]
    # selectors are applied per platform by conda-lock's parser
    assert "libfoo >=1.0" in stack.layers["base"].conda["linux-64"]
    assert not any(s.startswith("libfoo") for s in stack.layers["base"].conda["linux-aarch64"])
    assert stack.layers["base"].pip["linux-64"] == ("tinypkg==1.0",)
    conda, pip = stack.specs_for("app", "linux-64")
    assert conda[:2] == ["python 3.11.*", "libfoo >=1.0"] and "hello" in conda
    assert pip == ["tinypkg==1.0"]
    assert stack.channels_for("app") == ["file:///nonexistent/channel"]


def test_layers_command_text_and_json(tmp_path: Path) -> None:
    root = write_project(tmp_path, GOOD_STACK, {"base.yml": BASE, "app.yml": APP})
    res = run_cli("-C", root, "layers")
    assert res.returncode == 0, res.output
    assert "base" in res.stdout and "app" in res.stdout and "inherited from base" in res.stdout
    res = run_cli("-C", root, "layers", "--json")
    data = json.loads(res.stdout)
    app = data["layers"]["app"]
    assert app["extends"] == "base"
    assert app["own"]["linux-64"]["conda"] == ["hello"]
    assert "python 3.11.*" in app["inherited"]["linux-64"]["conda"]
    assert app["inherited"]["linux-64"]["pip"] == ["tinypkg==1.0"]


BAD_CASES = [
    ("unknown-key", GOOD_STACK + "colour: blue\n", {}, ["stack.yml, line 8", "unknown key 'colour'"]),
    ("missing-file", GOOD_STACK.replace("app.yml", "nope.yml"), {}, ["nope.yml", "does not exist", "layer 'app'"]),
    ("unknown-extends", GOOD_STACK.replace("extends: base", "extends: basis"), {},
     ["extends unknown layer 'basis'", "stack.yml"]),
    ("cycle", GOOD_STACK.replace("base: {file: base.yml}", "base: {file: base.yml, extends: app}"), {},
     ["cycle", "base -> app -> base"]),
    ("unknown-platform", GOOD_STACK.replace("linux-aarch64]", "linux-riscv]"), {}, ["unknown platform 'linux-riscv'"]),
    ("malformed-yaml", "name: demo\nlayers: [base: {file: \n", {}, ["stack.yml", "malformed YAML", "line"]),
    ("malformed-layer", GOOD_STACK, {"app.yml": "name: app\ndependencies: [hello\n"}, ["app.yml", "malformed YAML"]),
    ("unknown-layer-key", GOOD_STACK, {"app.yml": APP + "dependancies: []\n"}, ["app.yml", "unknown key 'dependancies'"]),
    ("vpkg-unknown-platform", GOOD_STACK.replace("linux-64: {__cuda", "osx-64: {__cuda"), {},
     ["virtual-packages names platform 'osx-64'"]),
    ("bad-vpkg-name", GOOD_STACK.replace("__cuda", "cuda"), {}, ["'cuda' is not a virtual package name"]),
    ("wrong-type-layers", "name: demo\nlayers: [base, app]\n", {}, ["'layers' must map layer names"]),
]


@pytest.mark.parametrize("case,stack,overrides,needles", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_stack_validation_errors(tmp_path: Path, case: str, stack: str, overrides: dict[str, str],
                                 needles: list[str]) -> None:
    files = {"base.yml": BASE, "app.yml": APP, **overrides}
    root = write_project(tmp_path, stack, files)
    with pytest.raises(CondastackError) as ei:
        load_stack(root)
    for n in needles:
        assert n in str(ei.value)
    res = run_cli("-C", root, "layers")
    assert_user_error(res, *needles)


def test_no_stack_file(tmp_path: Path) -> None:
    assert_user_error(run_cli("-C", tmp_path, "layers"), "no stack file", "environments/stack.yml")


def test_help_version_and_usage_errors(tmp_path: Path) -> None:
    res = run_cli("--help")
    assert res.returncode == 0 and "layers" in res.stdout
    for cmd in ("layers",):
        assert run_cli(cmd, "--help").returncode == 0
    res = run_cli("--version")
    assert res.returncode == 0 and "condastack" in res.stdout
    assert run_cli("no-such-command").returncode == 2
    assert run_cli("layers", "--no-such-flag").returncode == 2


def test_installed_entry_point_matches_checkout() -> None:
    exe = Path(sys.executable).parent / "condastack"
    if not exe.exists():
        pytest.skip("condastack is not installed in this interpreter's environment")
    a = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    b = run_cli("--help")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_layers_shows_pip_extras_verbatim(tmp_path: Path) -> None:
    """`pkg[extra]` must print as written (rich would eat it as markup)."""
    base = BASE.replace("tinypkg==1.0", "sglang[all]==0.4.8")
    root = write_project(tmp_path, GOOD_STACK, {"base.yml": base, "app.yml": APP})
    res = run_cli("-C", root, "layers", env={"COLUMNS": "200"})
    assert res.returncode == 0 and "sglang[all]==0.4.8" in res.stdout, res.output
    res = run_cli("-C", root, "lock", "--dry-run", env={"COLUMNS": "250"})
    assert res.returncode == 0 and "sglang[all]==0.4.8" in res.stdout, res.output
