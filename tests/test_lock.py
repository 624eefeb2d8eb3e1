"""Layered locking on the offline test channel (issue 3)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_user_error, run_cli, write_pip_project, write_project


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _pkgs(lock: dict, platform: str, manager: str = "conda") -> dict[str, dict]:
    return {p["name"]: p for p in lock["package"] if p["platform"] == platform and p["manager"] == manager}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.name.startswith(".condastack")}


def test_base_app_two_platforms(base_app_project: Path) -> None:
    res = run_cli("-C", base_app_project, "lock")
    assert res.returncode == 0, res.output
    lockdir = base_app_project / "lock"
    names = sorted(p.name for p in lockdir.iterdir() if not p.name.startswith("."))
    assert names == ["app.conda-lock.yml", "app.linux-aarch64.lock", "app.lock", "app.records.json",
                     "base.conda-lock.yml", "base.linux-aarch64.lock", "base.lock", "base.records.json"]
    base, app = _load(lockdir / "base.conda-lock.yml"), _load(lockdir / "app.conda-lock.yml")
    assert base["version"] == 1 and set(base["metadata"]["platforms"]) == {"linux-64", "linux-aarch64"}
    assert set(base["metadata"]["content_hash"]) == {"linux-64", "linux-aarch64"}
    for plat in ("linux-64", "linux-aarch64"):
        b, a = _pkgs(base, plat), _pkgs(app, plat)
        assert b and "hello" in a and "hello" not in b
        for name, pkg in b.items():  # app keeps every base pin, version and build
            assert (a[name]["version"], a[name]["build"], a[name]["url"]) == (pkg["version"], pkg["build"], pkg["url"])
        for pkg in a.values():
            assert len(pkg["hash"]["md5"]) == 32 and len(pkg["hash"]["sha256"]) == 64
    # virtual packages come from the stack: CUDA build on linux-64 (declared __cuda), CPU build on aarch64
    assert _pkgs(base, "linux-64")["gpu-kernels"]["build"] == "cuda12_1"
    assert _pkgs(base, "linux-aarch64")["gpu-kernels"]["build"] == "cpu_0"
    # hashes in the lock match the package files
    for pkg in _pkgs(app, "linux-64").values():
        data = Path(pkg["url"].removeprefix("file://")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == pkg["hash"]["sha256"]
        assert hashlib.md5(data).hexdigest() == pkg["hash"]["md5"]
    explicit = (lockdir / "app.lock").read_text()
    assert "@EXPLICIT" in explicit and "linux-aarch64" not in explicit
    urls = [l for l in explicit.splitlines() if l and not l.startswith(("#", "@"))]
    assert sorted(u.split("#")[0] for u in urls) == sorted(p["url"] for p in _pkgs(app, "linux-64").values())
    assert all(u.split("#")[1] == _pkgs(app, "linux-64")[u.split("/")[-1].rsplit("-", 2)[0]]["hash"]["md5"]
               for u in urls)


def test_conda_lock_and_rattler_read_our_lockfile(base_app_project: Path, tmp_path: Path) -> None:
    assert run_cli("-C", base_app_project, "lock").returncode == 0
    path = base_app_project / "lock" / "app.conda-lock.yml"
    from conda_lock.lockfile import parse_conda_lock_file

    parsed = parse_conda_lock_file(path)
    assert {p.name for p in parsed.package} >= {"hello", "libhello", "libfoo", "gpu-kernels"}
    exe = Path(sys.executable).parent / "conda-lock"
    out = subprocess.run([str(exe), "render", "--kind", "explicit", "-p", "linux-64", "--filename-template",
                          str(tmp_path / "rendered-{platform}.lock"), str(path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rendered = (tmp_path / "rendered-linux-64.lock").read_text()
    ours = (base_app_project / "lock" / "app.lock").read_text()

    def urls(t: str) -> list[str]:
        return sorted(l for l in t.splitlines() if l and not l.startswith(("#", "@")))

    assert urls(rendered) == urls(ours) and len(urls(ours)) == 4
    import rattler

    env = rattler.LockFile.from_path(str(path)).default_environment()
    plats = {p.name: p for p in env.platforms()}
    recs = env.conda_repodata_records_for_platform(plats["linux-64"])
    assert sorted(r.name.normalized for r in recs) == ["gpu-kernels", "hello", "libfoo", "libhello"]
    assert all(r.sha256 is not None for r in recs)


def test_conflict_names_both_layers_and_keeps_old_locks(base_app_project: Path) -> None:
    assert run_cli("-C", base_app_project, "lock").returncode == 0
    before = _snapshot(base_app_project / "lock")
    (base_app_project / "environments" / "app.yml").write_text(
        "name: app\ndependencies:\n  - hello\n  - needs-old-foo\n")
    res = run_cli("-C", base_app_project, "lock", "app")
    assert_user_error(res, "layer app: needs-old-foo 1.0 needs libfoo <2, but layer base pins libfoo 2.0")
    assert _snapshot(base_app_project / "lock") == before


def test_own_spec_against_parent_pin(base_app_project: Path) -> None:
    assert run_cli("-C", base_app_project, "lock").returncode == 0
    (base_app_project / "environments" / "app.yml").write_text("name: app\ndependencies:\n  - libfoo <2\n")
    assert_user_error(run_cli("-C", base_app_project, "lock", "app"),
                      "layer app: it asks for libfoo <2, but layer base pins libfoo 2.0")


def test_relock_is_noop_and_check_detects_edits(base_app_project: Path) -> None:
    assert run_cli("-C", base_app_project, "lock").returncode == 0
    lockdir = base_app_project / "lock"
    before = _snapshot(lockdir)
    mtimes = {p: p.stat().st_mtime_ns for p in lockdir.iterdir()}
    res = run_cli("-C", base_app_project, "lock", "--json")
    assert res.returncode == 0
    assert all(r["solved"] == [] for r in json.loads(res.stdout))
    assert _snapshot(lockdir) == before
    assert {p: p.stat().st_mtime_ns for p in lockdir.iterdir()} == mtimes
    assert run_cli("-C", base_app_project, "lock", "--check").returncode == 0
    # editing base makes base and its child app stale
    (base_app_project / "environments" / "base.yml").write_text(
        (base_app_project / "environments" / "base.yml").read_text().replace("libfoo", "libfoo <2"))
    res = run_cli("-C", base_app_project, "lock", "--check")
    assert_user_error(res, "base", "need `condastack lock`")
    assert "stale: layer base" in res.stderr
    assert _snapshot(lockdir) == before  # --check writes nothing
    assert run_cli("-C", base_app_project, "lock").returncode == 0
    assert _pkgs(_load(lockdir / "app.conda-lock.yml"), "linux-64")["libfoo"]["version"] == "1.0"
    assert run_cli("-C", base_app_project, "lock", "--check").returncode == 0


def test_update_moves_only_the_named_package(base_app_project: Path) -> None:
    env = base_app_project / "environments" / "base.yml"
    env.write_text(env.read_text().replace("libfoo", "libfoo <2"))
    assert run_cli("-C", base_app_project, "lock", "base").returncode == 0
    env.write_text(env.read_text().replace("libfoo <2", "libfoo"))
    # with the spec relaxed, a plain lock keeps the previous solution as a preference ...
    assert run_cli("-C", base_app_project, "lock", "base").returncode == 0
    lock = base_app_project / "lock" / "base.conda-lock.yml"
    assert _pkgs(_load(lock), "linux-64")["libfoo"]["version"] == "1.0"
    # ... and --update libfoo moves it forward
    assert run_cli("-C", base_app_project, "lock", "base", "--update", "libfoo").returncode == 0
    assert _pkgs(_load(lock), "linux-64")["libfoo"]["version"] == "2.0"
    assert _pkgs(_load(lock), "linux-64")["libhello"]["version"] == "1.0.0"


def test_pip_layer_locks_against_local_index(tmp_path: Path, channel_url: str, pypi_index) -> None:  # noqa: ANN001
    proj = write_pip_project(tmp_path / "p", channel_url, pypi_index.url, ["linux-64", "linux-aarch64"])
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    app = _load(proj / "lock" / "app.conda-lock.yml")
    for plat in ("linux-64", "linux-aarch64"):
        pip = _pkgs(app, plat, "pip")
        assert set(pip) == {"tinyapp", "tinylib"}
        assert pip["tinylib"]["version"] == "1.0"  # the base layer's pip pin holds (2.0 exists)
        for name, pkg in pip.items():
            wheel = pypi_index.wheels[pkg["url"].rsplit("/", 1)[1].split("#")[0]]
            assert pkg["hash"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
            assert pkg["url"].startswith("http://127.0.0.1:")
    pip_txt = (proj / "lock" / "app.pip.txt").read_text().splitlines()
    assert "tinylib==1.0 --hash=sha256:" + _pkgs(app, "linux-64", "pip")["tinylib"]["hash"]["sha256"] in pip_txt
    # the requirements file is accepted by pip --require-hashes (against the same local index)
    target = tmp_path / "target"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes", "--index-url",
                          pypi_index.url, "--target", str(target), "-r", str(proj / "lock" / "app.pip.txt")],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    assert (target / "tinyapp" / "__init__.py").exists()
    # conda-lock's explicit rendering keeps pip packages as comments, so micromamba reads only conda
    assert "# pip tinyapp" in (proj / "lock" / "app.lock").read_text()


def test_bad_inputs(tmp_path: Path, channel: Path, channel_url: str) -> None:
    def project(base_deps: str, channels: str, name: str) -> Path:
        return write_project(tmp_path / name, """
            name: bad
            platforms: [linux-64, linux-aarch64]
            layers:
              base: {file: base.yml}
            """, {"base.yml": f"channels: {channels}\ndependencies: {base_deps}\n"})

    unknown = project("[no-such-package]", f'["{channel_url}"]', "unknown")
    assert_user_error(run_cli("-C", unknown, "lock"), "layer base", "no-such-package", "not found")
    assert not (unknown / "lock" / "base.conda-lock.yml").exists()

    empty_ch = tmp_path / "empty-channel"
    (empty_ch / "noarch").mkdir(parents=True)
    (empty_ch / "noarch" / "repodata.json").write_text('{"packages": {}, "packages.conda": {}}')
    empty = project("[hello]", f'["{empty_ch.as_uri()}"]', "empty")
    assert_user_error(run_cli("-C", empty, "lock"), "layer base", "hello")

    missing_ch = project("[hello]", f'["{(tmp_path / "nowhere").as_uri()}"]', "nowhere")
    assert_user_error(run_cli("-C", missing_ch, "lock"), "layer base")

    # a channel without the linux-aarch64 subdir: the platform is missing from it
    partial = tmp_path / "partial-channel"
    shutil.copytree(channel, partial, ignore=shutil.ignore_patterns("linux-aarch64"))
    plat = project("[hello]", f'["{partial.as_uri()}"]', "platform")
    assert_user_error(run_cli("-C", plat, "lock"), "layer base (linux-aarch64)", "hello")

    unsat = project("[hello >=9]", f'["{channel_url}"]', "unsat")
    assert_user_error(run_cli("-C", unsat, "lock"), "layer base", "hello")

    malformed = project("[hello", f'["{channel_url}"]', "malformed")
    assert_user_error(run_cli("-C", malformed, "lock"), "base.yml", "malformed YAML")

    assert_user_error(run_cli("-C", unknown, "lock", "nosuchlayer"), "unknown layer 'nosuchlayer'")
    assert_user_error(run_cli("-C", unknown, "lock", "--platform", "osx-64"), "platform 'osx-64'")


def test_interrupted_lock_keeps_old_files(base_app_project: Path) -> None:
    """A lock killed mid-solve leaves the old lockfiles byte for byte."""
    import signal
    import time

    assert run_cli("-C", base_app_project, "lock").returncode == 0
    before = _snapshot(base_app_project / "lock")
    (base_app_project / "environments" / "base.yml").write_text(
        (base_app_project / "environments" / "base.yml").read_text().replace("libfoo", "libfoo <2"))
    from tests.helpers import CLI

    for delay in (0.2, 0.5, 0.8):
        p = subprocess.Popen([*CLI, "-C", str(base_app_project), "lock"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        after = {n: d for n, d in _snapshot(base_app_project / "lock").items() if ".condastack-tmp-" not in n}
        assert set(after) == set(before)  # no stray files under final names
        for name, data in after.items():
            if data == before[name]:
                continue
            # a new version must be complete: a parseable lockfile, or a whole explicit file
            if name.endswith(".yml"):
                from conda_lock.lockfile import parse_conda_lock_file

                assert parse_conda_lock_file(base_app_project / "lock" / name).package
            elif name.endswith(".records.json"):
                assert json.loads(data)["platforms"]
            else:
                assert data.startswith(b"# Generated by conda-lock.") and data.endswith(b"\n")
                assert b"@EXPLICIT" in data
    assert run_cli("-C", base_app_project, "lock").returncode == 0
    assert not [p for p in (base_app_project / "lock").iterdir() if p.name.startswith(".condastack-tmp")]


def test_diff_and_dry_run(base_app_project: Path, tmp_path: Path) -> None:
    assert run_cli("-C", base_app_project, "lock").returncode == 0
    old = tmp_path / "old.conda-lock.yml"
    shutil.copy(base_app_project / "lock" / "app.conda-lock.yml", old)
    env = base_app_project / "environments" / "base.yml"
    env.write_text(env.read_text().replace("libfoo", "libfoo <2"))
    assert run_cli("-C", base_app_project, "lock").returncode == 0
    res = run_cli("diff", old, base_app_project / "lock" / "app.conda-lock.yml", "--json")
    assert res.returncode == 0, res.output
    data = json.loads(res.stdout)
    assert data["linux-64"] == [{"name": "libfoo", "old": "2.0 hb0f4dca_0", "new": "1.0 hb0f4dca_0"}]
    res = run_cli("-C", base_app_project, "lock", "--dry-run", "--json")
    plan = json.loads(res.stdout)
    assert {(r["layer"], r["platform"]) for r in plan} == {("base", "linux-64"), ("base", "linux-aarch64"),
                                                           ("app", "linux-64"), ("app", "linux-aarch64")}
    assert all(r["action"] == "up to date" for r in plan)
    assert all(r["channels"] for r in plan)
    # diff against git
    subprocess.run(["git", "init", "-q"], cwd=base_app_project, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x", "--allow-empty"],
                   cwd=base_app_project, check=True)
    subprocess.run(["git", "add", "lock"], cwd=base_app_project, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "locks"],
                   cwd=base_app_project, check=True)
    env.write_text(env.read_text().replace("libfoo <2", "libfoo"))
    assert run_cli("-C", base_app_project, "lock", "--update", "libfoo").returncode == 0
    res = run_cli("diff", base_app_project / "lock" / "base.conda-lock.yml", "--git", "HEAD", "--json")
    assert json.loads(res.stdout)["linux-64"] == [{"name": "libfoo", "old": "1.0 hb0f4dca_0", "new": "2.0 hb0f4dca_0"}]


def test_external_solver_needs_its_binary(base_app_project: Path, tmp_path: Path) -> None:
    import os

    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}  # no conda/mamba/micromamba there
    for solver in ("conda", "mamba", "micromamba"):
        res = run_cli("-C", base_app_project, "lock", "--solver", solver, env=env)
        assert_user_error(res, f"no '{solver}' binary on PATH")
    assert not (base_app_project / "lock" / "base.conda-lock.yml").exists()
    assert os.environ.get("PATH")  # the test itself did not change the caller's PATH


def test_explicit_file_read_by_rattler_matches_lock(base_app_project: Path) -> None:
    """py-rattler's @EXPLICIT reader (the format micromamba reads) sees exactly the locked conda packages."""
    from rattler.explicit_environment import ExplicitEnvironmentSpec

    assert run_cli("-C", base_app_project, "lock").returncode == 0
    lock = _load(base_app_project / "lock" / "app.conda-lock.yml")
    for name, plat in (("app.lock", "linux-64"), ("app.linux-aarch64.lock", "linux-aarch64")):
        spec = ExplicitEnvironmentSpec.from_path(base_app_project / "lock" / name)
        assert str(spec.platform) == plat
        urls = {e.url.split("#")[0]: e.url.split("#")[1] for e in spec.packages}
        locked = _pkgs(lock, plat)
        assert urls == {p["url"]: p["hash"]["md5"] for p in locked.values()}
        for url, md5 in urls.items():
            assert hashlib.md5(Path(url.removeprefix("file://")).read_bytes()).hexdigest() == md5


def test_lockfile_with_star_pip_dependencies_is_read_everywhere(tmp_path: Path, channel_url: str, pypi_index,  # noqa: ANN001
                                                                pkgs_cache: Path) -> None:
    """conda-lock writes pip dependency values such as '*' or a bare version; every command reads them."""
    proj = write_pip_project(tmp_path / "p", channel_url, pypi_index.url, ["linux-64"])
    env = proj / "environments"
    (env / "stack.yml").write_text((env / "stack.yml").read_text() + "  tools: {file: tools.yml, extends: app}\n")
    (env / "tools.yml").write_text("dependencies: [hello]\n")
    assert run_cli("-C", proj, "lock", "app").returncode == 0
    lock = proj / "lock" / "app.conda-lock.yml"
    data = _load(lock)
    for p in data["package"]:
        if p["name"] == "tinyapp":
            p["dependencies"] = {"tinylib": "*"}
        if p["name"] == "tinylib":
            p["dependencies"] = {"python": "3.11"}  # a bare version, as conda-lock writes `==`
    lock.write_text(yaml.safe_dump(data, sort_keys=False))
    res = run_cli("-C", proj, "build", "app", "--json")
    assert res.returncode == 0, res.output
    res = run_cli("-C", proj, "build", "app", "--offline", "--prefix", tmp_path / "again", "--json")
    assert res.returncode == 0, res.output
    res = run_cli("-C", proj, "lock", "tools")  # a child of the layer whose lock holds them
    assert res.returncode == 0, res.output
    assert set(_pkgs(_load(proj / "lock" / "tools.conda-lock.yml"), "linux-64", "pip")) == {"tinyapp", "tinylib"}
    res = run_cli("-C", proj, "lock", "app", "--update", "tinyapp")
    assert res.returncode == 0, res.output


@pytest.mark.parametrize("spec", ["python 3.11.*", "pytorch 2.10.*", "numpy", "numpy <2", "numpy <2.0.0",
                                  "libfoo >=1.0,<2", "cudnn >=9.10.1.4,<10", "pip", "scikit-learn",
                                  "jupyterlab >=4", "a-b_c.d 1.*", "x !=1.0", "x >=1.0a1,<2"])
def test_fast_spec_reader_agrees_with_conda_lock(spec: str) -> None:
    from condastack.spec.envfile import _conda_lock_spec, fast_conda_spec

    assert fast_conda_spec(spec) == _conda_lock_spec(spec, "e.yml")


@pytest.mark.parametrize("spec", ["python 3.11", "python =3.11", "python>=3.10", "Numpy",
                                  "pytorch ==2.7.1 cuda126*", "x 1.0|2.0", "conda-forge::x", "x[build=1]"])
def test_fast_spec_reader_leaves_other_forms_to_conda_lock(spec: str) -> None:
    from condastack.spec.envfile import fast_conda_spec

    assert fast_conda_spec(spec) is None


def test_one_name_in_both_sections_is_a_lock_error() -> None:
    from condastack.core.errors import CondastackError
    from condastack.lock.layered import _check_no_overlap

    conda = [{"name": "pytorch", "version": "2.7.1"}, {"name": "numpy", "version": "1.26.4"}]
    _check_no_overlap("app", "linux-64", conda, [{"name": "tinyapp", "version": "1.0"}])
    with pytest.raises(CondastackError, match=r"torch \(pip 2\.7\.1, conda pytorch\)"):
        _check_no_overlap("app", "linux-64", conda, [{"name": "torch", "version": "2.7.1"}])
