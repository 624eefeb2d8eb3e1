"""Hostile stack and layer files: duplicate keys, aliases, alias bombs, names with newlines, fifos,
and very long strings. Each is exit 1 naming the file and line (or layer), bounded in time (every run
has a timeout, so a hang fails), writes no lockfile, leaves the canary beside the project as it was
and leaves no temporary. A fuzz test (hypothesis) feeds the loader arbitrary YAML-ish text.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import assert_user_error, run_cli, write_project

TMP = ".condastack-tmp-"
BOMB = "".join(f'{c}: &{c} [{", ".join([f"*{p}"] * 9)}]\n' for p, c in zip("abcdefgh", "bcdefghi"))
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + BOMB


def _project(tmp_path: Path, stack: str, layers: dict[str, str], channel_url: str) -> Path:
    layers = {k: v.replace("{channel_url}", channel_url) for k, v in layers.items()}
    root = write_project(tmp_path / "proj", stack, layers)
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("keep\n")
    return root


def _after(tmp_path: Path, root: Path) -> None:
    assert not (root / "lock").exists() or not list((root / "lock").iterdir())
    assert sorted(p.name for p in (tmp_path / "canary").iterdir()) == ["keep.txt"]
    assert (tmp_path / "canary" / "keep.txt").read_text() == "keep\n"
    assert not [p for p in tmp_path.rglob("*") if TMP in p.name]


STACK = "name: s\nplatforms: [linux-64]\nlayers:\n  app: {file: app.yml}\n"
APP = 'channels: ["{channel_url}"]\ndependencies:\n  - hello\n'

# id -> (stack.yml, {layer file: text}, command, substrings)
CASES: dict[str, tuple[str, dict[str, str], list[str], list[str]]] = {
    "stack-duplicate-top-key": (STACK + "name: other\n", {"app.yml": APP}, ["lock"],
                                ["stack.yml, line 5", "duplicate key 'name' (first on line 1)"]),
    "stack-duplicate-layer": ("name: s\nlayers:\n  app: {file: app.yml}\n  app: {file: other.yml}\n",
                              {"app.yml": APP}, ["lock"], ["stack.yml, line 4", "duplicate key 'app'"]),
    "layer-duplicate-dependencies": (STACK, {"app.yml": APP + "dependencies:\n  - libfoo\n"}, ["lock"],
                                     ["app.yml, line 4", "duplicate key 'dependencies'"]),
    "layer-duplicate-channels": (STACK, {"app.yml": APP + "channels: [x]\n"}, ["layers"],
                                 ["app.yml, line 4", "duplicate key 'channels'"]),
    "stack-alias-bomb": (BOMB + STACK, {"app.yml": APP}, ["layers", "--json"],
                         ["stack.yml, line 1", "anchors (&name) are not allowed"]),
    "layer-alias-bomb": (STACK, {"app.yml": BOMB + APP}, ["lock"],
                         ["app.yml, line 1", "not allowed in stack and layer files"]),
    "layer-alias-only": (STACK, {"app.yml": 'channels: ["{channel_url}"]\ndependencies:\n  - hello\n  - *x\n'},
                         ["lock"], ["app.yml, line 4", "aliases (*name) are not allowed"]),
    "stack-anchor-merge": ("base: &b {file: app.yml}\n" + STACK.replace("{file: app.yml}", "{<<: *b}"),
                           {"app.yml": APP}, ["lock"], ["stack.yml, line 1", "not allowed"]),
    "layer-name-trailing-newline": ('name: s\nplatforms: [linux-64]\nlayers:\n  "app\\n": {file: app.yml}\n',
                                    {"app.yml": APP}, ["lock"], ["stack.yml, line 4", "not a valid layer name"]),
    "layer-name-with-slash": ('name: s\nplatforms: [linux-64]\nlayers:\n  "../app": {file: app.yml}\n',
                              {"app.yml": APP}, ["lock"], ["stack.yml, line 4", "not a valid layer name"]),
    "virtual-package-trailing-newline": ('name: s\nplatforms: [linux-64]\nvirtual-packages:\n'
                                         '  linux-64: {"__cuda\\n": "12"}\nlayers:\n  app: {file: app.yml}\n',
                                         {"app.yml": APP}, ["lock"], ["stack.yml, line 4", "virtual package"]),
    "long-layer-name": ("name: s\nplatforms: [linux-64]\nlayers:\n  ? " + "a" * 200_000 + "!\n  : {file: app.yml}\n",
                        {"app.yml": APP}, ["layers"], ["stack.yml, line 4", "not a valid layer name"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_stack(case: str, tmp_path: Path, channel_url: str) -> None:
    stack, layers, cmd, needles = CASES[case]
    root = _project(tmp_path, stack, layers, channel_url)
    res = run_cli("-C", root, *cmd, timeout=120, env={"CONDASTACK_PKGS": str(tmp_path / "pkgs")})
    assert_user_error(res, *needles)
    assert len(res.output) < 5000  # the message is bounded, whatever the input's size
    _after(tmp_path, root)


def test_layer_file_is_a_fifo(tmp_path: Path, channel_url: str) -> None:
    root = _project(tmp_path, STACK, {}, channel_url)
    os.mkfifo(root / "environments" / "app.yml")
    res = run_cli("-C", root, "lock", timeout=120)
    assert_user_error(res, "app.yml", "not a regular file")
    assert "does not exist" not in res.output
    _after(tmp_path, root)


def test_huge_spec_in_layers_json_is_bounded(tmp_path: Path, channel_url: str) -> None:
    """A 400,000-character spec: `layers --json` answers (no quadratic redaction) and shows it whole."""
    spec = "x" * 400_000
    root = _project(tmp_path, STACK, {"app.yml": APP + f"  - {spec}\n"}, channel_url)
    res = run_cli("-C", root, "layers", "--json", timeout=120)
    assert res.returncode in (0, 1), res.output[-2000:]
    assert "internal error" not in res.output and "Traceback" not in res.output
    if res.returncode == 0:
        assert spec in res.stdout
    else:
        assert "app.yml" in res.output and len(res.output) < 5000
    _after(tmp_path, root)


# --------------------------------------------------------------------------- fuzz: the loader


_yaml_text = st.lists(st.sampled_from([
    "name: s\n", "platforms: [linux-64]\n", "layers:\n", "  app: {file: app.yml}\n", "  app: &x {file: a}\n",
    "  b: *x\n", "name: s\n", "- x\n", "  - y\n", ": \n", "? [a]\n", "!!python/object:os.system x\n",
    "key: 'unterminated\n", "\t", "{", "}", "[", "]", "&a", "*a", "<<: *a\n", "\"\\x\"\n", "\ufeff", "\0",
    "x" * 1000 + "\n", "platforms: linux-64\n", "layers: []\n", "extends: app\n", "---\n", "...\n",
]), max_size=12).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_yaml_text, layer=_yaml_text)
def test_fuzz_stack_loader(tmp_path: Path, text: str, layer: str) -> None:
    """Whatever the files hold, load_stack returns a Stack or raises CondastackError (never another error)."""
    from condastack.core.errors import CondastackError
    from condastack.spec.stack import load_stack

    env = tmp_path / "fuzz" / "environments"
    env.mkdir(parents=True, exist_ok=True)
    (env / "stack.yml").write_text(text, errors="surrogateescape")
    (env / "app.yml").write_text(layer, errors="surrogateescape")
    try:
        load_stack(tmp_path / "fuzz")
    except CondastackError as e:
        assert str(e) and len(str(e)) < 20_000


def test_stack_file_is_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "proj" / "environments").mkdir(parents=True)
    os.mkfifo(tmp_path / "proj" / "environments" / "stack.yml")
    (tmp_path / "canary").mkdir()
    (tmp_path / "canary" / "keep.txt").write_text("keep\n")
    res = run_cli("-C", tmp_path / "proj", "lock", timeout=120)
    assert_user_error(res, "stack.yml", "not a regular file")
    _after(tmp_path, tmp_path / "proj")
