"""Lock entries are checked against the packages they point to (issue 23).

- build: each archive's own info/index.json (name, version, build, subdir) must be what its entry says;
- the same name twice on one platform is refused;
- verify compares what is installed with the lock entry and with the package's own metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_user_error, libhello_project, run_cli


def _rename(lock: Path, old: str, new: str) -> None:
    """Rename an entry in the lock, keeping its URL and hash (what a hostile or careless edit does)."""
    doc = yaml.safe_load(lock.read_text())
    for p in doc["package"]:
        if p["name"] == old:
            p["name"] = new
    lock.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture()
def project(tmp_path: Path, channel_url: str) -> tuple[Path, dict[str, str]]:
    return libhello_project(tmp_path, channel_url, "xcheck", ("lock",))


@pytest.mark.parametrize("field,edit", [("name", "libzzz"), ("version", "1.0.1"), ("build", "h1_0")])
def test_build_refuses_an_entry_that_is_not_its_package(project: tuple[Path, dict[str, str]], field: str,
                                                        edit: str) -> None:
    proj, env = project
    lock = proj / "lock" / "app.conda-lock.yml"
    doc = yaml.safe_load(lock.read_text())
    (p,) = [p for p in doc["package"] if p["name"] == "libhello"]
    p[field] = edit
    lock.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = run_cli("-C", proj, "build", "app", "--frozen", env=env)
    assert_user_error(res, str(lock), f"field '{field}'", "info/index.json", "libhello")
    assert not (proj / "envs" / "app").exists()


def test_same_name_twice_is_refused_by_build(project: tuple[Path, dict[str, str]]) -> None:
    proj, env = project
    lock = proj / "lock" / "app.conda-lock.yml"
    doc = yaml.safe_load(lock.read_text())
    (p,) = [p for p in doc["package"] if p["name"] == "libhello"]
    doc["package"].append(dict(p, version="2.0.0"))
    lock.write_text(yaml.safe_dump(doc, sort_keys=False))
    for args in (["build", "app", "--frozen"], ["lock", "--check"]):
        res = run_cli("-C", proj, *args, env=env)
        assert_user_error(res, str(lock), "libhello", "listed twice", "1.0.0", "2.0.0")


def test_verify_compares_with_the_package_own_metadata(project: tuple[Path, dict[str, str]]) -> None:
    """An env whose record and lock agree on a name that is not the installed package's (what building a
    renamed entry used to give) fails verify, with the package cache and without it."""
    proj, env = project
    assert run_cli("-C", proj, "build", "app", env=env).returncode == 0
    assert run_cli("-C", proj, "verify", "app", env=env).returncode == 0
    lock = proj / "lock" / "app.conda-lock.yml"
    _rename(lock, "libhello", "libzzz")
    meta = proj / "envs" / "app" / "conda-meta"
    (old,) = meta.glob("libhello-*.json")
    data = json.loads(old.read_text())
    data["name"] = "libzzz"
    (meta / old.name.replace("libhello", "libzzz")).write_text(json.dumps(data))
    old.unlink()
    for cache in ("kept", "emptied"):
        if cache == "emptied":
            env = dict(env, CONDASTACK_PKGS=str(proj.parent / "empty-pkgs"))
        res = run_cli("-C", proj, "verify", "app", "--json", env=env)
        assert res.returncode != 0, res.output
        assert "Traceback" not in res.output
        problems = json.loads(res.stdout)["problems"]
        assert [p["kind"] for p in problems] == ["not-the-locked-package"], problems
        assert "libhello" in problems[0]["detail"] and problems[0]["package"] == "libzzz"
    res = run_cli("-C", proj, "build", "app", "--force", "--frozen", env=env)
    assert_user_error(res, "field 'name'", "libhello")
