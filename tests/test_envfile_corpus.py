"""A corpus of environment.yml files in the shapes real projects write them (tests/envfiles/).

All of them form one stack (each file a root layer, four platforms so every
selector branch is taken somewhere) and go through `layers --json` and
`lock --dry-run --json`. The check is independent of condastack's reader: the
files are read here as plain YAML (selector comments are YAML comments), and no
conda spec, pip line or variable may go missing on the way to the output.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml
from tests.helpers import run_cli, write_project

CORPUS = Path(__file__).parent / "envfiles"
PLATFORMS = ["linux-64", "linux-aarch64", "osx-arm64", "win-64"]


def _name(spec: str) -> str:
    return re.split(r"[\s=<>!~\[;]", spec.split("::")[-1].strip(), maxsplit=1)[0].lower()


def _pip_names(reqs: list[str]) -> set[str]:
    return {_name(r.split("@")[0]).replace("_", "-") for r in reqs}


def _req_lines(path: Path) -> list[str]:
    text = re.sub(r"[ \t]*\\\n[ \t]*", " ", path.read_text())
    return [l.split(" #")[0].strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]


def _check_pip(pip_lines: list[str], own: set[str], effective: set[str], opts: dict, folder: Path, where: str) -> None:
    for line in pip_lines:
        line = str(line).strip()
        opt, _, value = line.replace("=", " ", 1).partition(" ") if line.startswith("-") else ("", "", "")
        if opt in ("-r", "--requirement"):
            _check_pip(_req_lines(folder / value), own, effective, opts, folder, where)
        elif opt in ("-c", "--constraint"):
            assert set(_req_lines(folder / value)) <= set(opts["constraints"]), where
        elif opt in ("--index-url", "-i"):
            assert opts["index_url"] == value, where
        elif opt == "--extra-index-url":
            assert value in opts["extra_index_urls"], where
        elif opt in ("-f", "--find-links"):
            assert value in opts["find_links"], where
        elif opt == "--pre":
            assert opts["pre"] is True, where
        else:
            assert not opt, f"{where}: an option the corpus check does not know: {line}"
            assert line in own, f"{where}: pip line {line!r} lost"  # git requirements too, as written
            egg = re.match(r"^(git\+\S+?)#egg=(\S+)$", line)
            line = f"{egg.group(2)} @ {egg.group(1)}" if egg else line  # pip's old spelling, read as PEP 508
            assert _pip_names([line]) <= effective, f"{where}: {line!r} missing from lock --dry-run"


def test_corpus_keeps_every_spec_pip_line_and_variable(tmp_path: Path) -> None:
    files = sorted(CORPUS.glob("*.yml"))
    assert len(files) >= 15
    layers = {f.stem: f for f in files}
    stack = "name: corpus\nplatforms: [" + ", ".join(PLATFORMS) + "]\nlayers:\n" + "".join(
        f"  {n}: {{file: {f.name}}}\n" for n, f in layers.items())
    proj = write_project(tmp_path / "p", stack, {})
    for f in CORPUS.iterdir():
        shutil.copy(f, proj / "environments" / f.name)

    res = run_cli("-C", proj, "layers", "--json")
    assert res.returncode == 0, res.output
    shown = json.loads(res.stdout)["layers"]
    res = run_cli("-C", proj, "lock", "--dry-run", "--json")
    assert res.returncode == 0, res.output
    plan = json.loads(res.stdout)
    plan = plan if isinstance(plan, list) else plan["plan"]

    for name, path in layers.items():
        raw = yaml.safe_load(path.read_text()) or {}
        out = shown[name]
        own_conda = {_name(s) for p in PLATFORMS for s in out["own"][p]["conda"]}
        own_pip = {s for p in PLATFORMS for s in out["own"][p]["pip"]}
        rows = [r for r in plan if r["layer"] == name]
        assert {r["platform"] for r in rows} == set(PLATFORMS)
        planned_conda = {_name(s) for r in rows for s in r["conda"]}
        planned_pip = _pip_names([s for r in rows for s in r["pip"] if not s.startswith("git+")])
        planned_pip |= {v["name"] for r in rows for v in r["vcs"] if v["name"]}  # a git line's #egg= name
        pip_lines: list[str] = []
        for dep in raw.get("dependencies") or []:
            if isinstance(dep, dict):
                pip_lines += dep.get("pip") or []
                continue
            assert _name(dep) in own_conda, f"{path.name}: conda spec {dep!r} lost in layers --json"
            assert _name(dep) in planned_conda, f"{path.name}: conda spec {dep!r} lost in lock --dry-run"
        _check_pip(pip_lines, own_pip, planned_pip, out["pip-options"], CORPUS, path.name)
        variables = {k: str(v) for k, v in (raw.get("variables") or {}).items()}
        assert out["variables"] == variables, path.name
        assert all(r["variables"] == variables for r in rows), path.name
        if "defaults" in (raw.get("channels") or []):
            assert "https://repo.anaconda.com/pkgs/main" in out["channels"], path.name
