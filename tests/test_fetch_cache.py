"""The package cache when two channels hold one file name with other bytes.

The cache is keyed by file name (`<name>-<version>-<build>.conda`), and a site's packages built
from a recipe with a fixed build string (a python repackaged twice: examples/torch and
scripts/realworld.sh on one machine) share a name while their bytes differ. A build fetches the
file its lock names again, as conda and micromamba do on a hash mismatch; offline, it refuses.
"""

from __future__ import annotations

from pathlib import Path

from condastack.channel.wrap import wrap
from tests.helpers import assert_user_error, run_cli, write_project


def _site(root: Path, text: str) -> Path:
    folder = root / "tree"
    (folder / "share" / "sitedata").mkdir(parents=True)
    (folder / "share" / "sitedata" / "data.txt").write_text(text + "\n")
    (pkg,) = wrap(folder, channel=root / "channel", name="sitedata", version="1.0", platform="noarch",
                  build_string="h0_0")
    assert pkg.path.name == "sitedata-1.0-h0_0.conda"
    return root / "channel"


def _project(root: Path, channel: Path) -> Path:
    return write_project(root, """
        name: cachetest
        platforms: [linux-64]
        layers:
          app: {file: app.yml}
        """, {"app.yml": f"""
            channels: ["{channel.as_uri()}"]
            dependencies:
              - sitedata
            """})


def test_same_file_name_other_bytes_is_fetched_again(tmp_path: Path, pkgs_cache: Path) -> None:
    one = _project(tmp_path / "one", _site(tmp_path / "site-one", "first site"))
    two = _project(tmp_path / "two", _site(tmp_path / "site-two", "second site"))
    for proj in (one, two):
        res = run_cli("-C", proj, "lock")
        assert res.returncode == 0, res.output
    res = run_cli("-C", one, "build", "app")
    assert res.returncode == 0, res.output
    assert (one / "envs/app/share/sitedata/data.txt").read_text() == "first site\n"

    # offline, the cached file of the other site is refused: nothing can be fetched to replace it
    res = run_cli("-C", two, "build", "app", "--offline")
    assert_user_error(res, "sitedata-1.0-h0_0.conda", "does not match the lock")
    assert not (two / "envs" / "app").exists()

    res = run_cli("-C", two, "build", "app", "--json")
    assert res.returncode == 0, res.output
    assert "sitedata-1.0-h0_0.conda" in res.stdout  # reported as fetched
    assert (two / "envs/app/share/sitedata/data.txt").read_text() == "second site\n"
    res = run_cli("-C", two, "verify", "app")
    assert res.returncode == 0, res.output
    # the first env still holds its own files (hard links into the old extraction are untouched)
    assert (one / "envs/app/share/sitedata/data.txt").read_text() == "first site\n"
    res = run_cli("-C", one, "build", "app", "--force")
    assert res.returncode == 0, res.output
    assert (one / "envs/app/share/sitedata/data.txt").read_text() == "first site\n"
