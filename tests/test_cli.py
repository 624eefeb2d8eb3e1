"""Argument handling of every command, in process (click's CliRunner): fast, no subprocess.

Exit codes and crash behaviour of the real program stay covered by the subprocess
tests (tests.helpers.run_cli) in the other files.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from condastack.cli import app as cli
from tests.helpers import run_cli, write_project

COMMANDS = sorted(cli.main.commands)

STACK = """
name: clitest
platforms: [linux-64, linux-aarch64]
layers:
  base: {file: base.yml}
  app: {file: app.yml, extends: base}
"""


@pytest.fixture()
def invoke(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Run `condastack ARGS` in this process and return click's Result.

    A user error normally leaves through os._exit (see cli._exit_now), which would
    end pytest too; here it leaves through sys.exit, so the exit code is kept.
    """
    monkeypatch.setattr(cli, "_exit_now", sys.exit)
    runner = CliRunner()

    def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
        res = runner.invoke(cli.main, [str(a) for a in args], prog_name="condastack", env=env)
        assert "Traceback" not in res.output, res.output
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        return res

    return run


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "proj", STACK, {
        "base.yml": 'channels: ["file:///nonexistent/channel"]\ndependencies: [libhello]\n',
        "app.yml": "dependencies: [hello]\n",
    })


def test_the_command_list() -> None:
    """The parametrized tests below cover every command; a new one must be added to MISSING as well."""
    assert COMMANDS == sorted(["build", "container", "diff", "doctor", "install", "layers", "lock", "module", "pack",
                               "relocate", "sbom", "slurm-preamble", "unpack", "verify", "wrap"])
    assert set(MISSING) | NO_REQUIRED_ARGUMENT == set(COMMANDS)


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize("name", COMMANDS)
def test_help(invoke, name: str) -> None:  # noqa: ANN001
    res = invoke(name, "--help")
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"Usage: condastack {name} "), res.output
    summary = cli.main.commands[name].help.split("\n")[0].split(":")[0].split("(")[0]
    assert " ".join(summary.split()[:4]) in " ".join(res.output.split()), res.output
    for flag in ("-q, --quiet", "-v, --verbose"):
        assert flag in res.output


def test_group_help_lists_every_command(invoke) -> None:  # noqa: ANN001
    res = invoke("--help")
    assert res.exit_code == 0
    listed = re.findall(r"^  ([\w-]+)\s", res.output.split("Commands:")[1], flags=re.M)
    assert listed == COMMANDS


# --------------------------------------------------------------------------- missing arguments: exit 2


# Each command with what it must be given; each entry leaves out a required argument or option.
MISSING: dict[str, list[list[str]]] = {
    "build": [[]],
    "pack": [[], ["--prefix", "{root}", "--format", "tar.gz"]],
    "verify": [[]],
    "unpack": [[], ["x.tar.zst"]],
    "relocate": [[]],
    "install": [[], ["x.tar.zst"]],
    "module": [[], ["{root}"], ["{root}", "--name", "a/b"]],
    "wrap": [[]],
    "diff": [[], ["old.conda-lock.yml"]],
    "slurm-preamble": [[]],
    "sbom": [[]],
}
NO_REQUIRED_ARGUMENT = {"layers", "lock", "doctor", "container"}  # all their arguments have defaults


@pytest.mark.parametrize("name,args", [(n, a) for n, cases in MISSING.items() for a in cases],
                         ids=[f"{n}:{' '.join(a) or '-'}" for n, cases in MISSING.items() for a in cases])
def test_missing_argument_is_a_usage_error(invoke, project: Path, name: str, args: list[str]) -> None:  # noqa: ANN001
    res = invoke("-C", project, name, *[a.replace("{root}", str(project)) for a in args])
    assert res.exit_code == 2, res.output
    assert f"Usage: condastack {name}" in res.output, res.output
    assert "condastack: error" not in res.output  # a usage error, not a user error


def test_missing_argument_is_a_usage_error_in_a_subprocess(project: Path) -> None:
    """The same through the real program: exit 2, usage on stderr."""
    for args in (["verify"], ["pack"]):
        res = run_cli("-C", project, *args)
        assert res.returncode == 2, res.output
        assert "Usage: condastack" in res.stderr and "LAYER" in res.stderr


# --------------------------------------------------------------------------- -q / -v after the command


@pytest.mark.parametrize("name", COMMANDS)
def test_quiet_and_verbose_after_the_command(invoke, name: str) -> None:  # noqa: ANN001
    """Parsed (an unknown option would exit 2 before --help is looked at)."""
    res = invoke(name, "-q", "-v", "--verbose", "--quiet", "--help")
    assert res.exit_code == 0, res.output


def test_quiet_after_the_command_silences_it(invoke, project: Path) -> None:  # noqa: ANN001
    loud = invoke("-C", project, "layers")
    assert loud.exit_code == 0, loud.output
    assert "base" in loud.output
    for args in (["-q", "layers"], ["layers", "-q"], ["layers", "--quiet"]):
        res = invoke("-C", project, *args)
        assert res.exit_code == 0, res.output
        assert res.output == "", args


def test_verbose_after_the_command_counts(invoke, project: Path) -> None:  # noqa: ANN001
    root = logging.getLogger()
    level = root.level
    try:
        for args, want in ((["layers"], logging.WARNING), (["layers", "-v"], logging.WARNING),
                           (["-v", "layers", "-v"], logging.DEBUG), (["layers", "-vv"], logging.DEBUG)):
            res = invoke("-C", project, *args)
            assert res.exit_code == 0, res.output
            assert root.level == want, (args, logging.getLevelName(root.level))
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------- unknown layers


@pytest.mark.parametrize("args", [["verify", "ap"], ["pack", "ap"], ["build", "ap"], ["lock", "ap"],
                                  ["verify", "ap", "--prefix", "{root}"], ["container", "ap"], ["doctor", "ap"]])
def test_unknown_layer_is_called_unknown(invoke, project: Path, args: list[str]) -> None:  # noqa: ANN001
    res = invoke("-C", project, *[a.replace("{root}", str(project)) for a in args])
    assert res.exit_code == 1, res.output
    assert "unknown layer 'ap'" in res.stderr, res.output
    assert "layers: base, app" in res.stderr
    assert "condastack build ap" not in res.output


def test_without_a_stack_a_layer_is_not_checked(invoke, tmp_path: Path) -> None:  # noqa: ANN001
    """`pack LAYER` works from envs/LAYER alone (its marker names the layer): no stack, no "unknown"."""
    res = invoke("-C", tmp_path, "pack", "ap")
    assert res.exit_code == 1, res.output
    assert "unknown layer" not in res.output and "stack.yml" not in res.output
    assert "condastack build ap" in res.stderr, res.output


# --------------------------------------------------------------------------- not an archive


@pytest.mark.parametrize("content", [b"", b"0" * 64 + b"  app-linux-64.tar.zst\n", b"just text\n" * 100])
@pytest.mark.parametrize("name", ["app-linux-64.tar.zst.sha256", "app.tar.zst"])
def test_unpack_of_a_file_that_is_not_an_archive(invoke, tmp_path: Path, name: str, content: bytes) -> None:  # noqa: ANN001
    f = tmp_path / name
    f.write_bytes(content)
    for args in (["unpack", f, tmp_path / "dest"], ["install", f, "--prefix", tmp_path / "site"]):
        res = invoke(*args)
        assert res.exit_code == 1, res.output
        assert f"{f}: refused: not an archive" in res.stderr, res.output
        assert "truncated" not in res.output
        assert ("checksum file" in res.stderr) == name.endswith(".sha256")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "site").exists()


def test_a_real_archive_passes_the_archive_check(tmp_path: Path) -> None:
    """Each kind the library reads gets past the magic check (plain tar: 'ustar' at offset 257)."""
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("empty"), io.BytesIO(b""))
    for name, data in (("a.tar", buf.getvalue()), ("a.tar.gz", gzip.compress(buf.getvalue())),
                       ("a.tar.zst", b"\x28\xb5\x2f\xfd" + b"\0" * 16), ("a.squashfs", b"hsqs" + b"\0" * 96)):
        (tmp_path / name).write_bytes(data)
        cli.require_archive(tmp_path / name)  # raises CondastackError if refused
    buf2 = io.BytesIO()
    with tarfile.open(fileobj=buf2, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("x"), io.BytesIO(b""))
    (tmp_path / "pax.tar").write_bytes(buf2.getvalue())
    cli.require_archive(tmp_path / "pax.tar")


# --------------------------------------------------------------------------- narrow terminals


def _column(output: str, index: int) -> str:
    """The text of one column of a rich table, its folded pieces joined."""
    return "".join(line.split("│")[index].strip() for line in output.splitlines() if line.count("│") >= 3)


def test_tables_fold_long_names_at_80_columns(invoke, tmp_path: Path) -> None:  # noqa: ANN001
    layer = "a-layer-with-a-rather-long-name-for-an-80-column-terminal"
    channel = "file:///" + "/".join(["deeply-nested-site-channel-folder"] * 4)
    root = write_project(tmp_path / "proj", f"""
        name: narrow
        platforms: [linux-64]
        layers:
          {layer}: {{file: base.yml}}
        """, {"base.yml": f'channels: ["{channel}"]\ndependencies: [libhello, hello]\n'})
    res = invoke("-C", root, "lock", "--dry-run", env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80, res.output
    assert "…" not in res.output, res.output
    assert layer in _column(res.output, 1), res.output
    assert channel in _column(res.output, 4), res.output


# --------------------------------------------------------------------------- lock --check


@pytest.fixture()
def two_platform_lock(tmp_path: Path, channel_url: str, pkgs_cache: Path) -> Path:
    root = write_project(tmp_path / "proj", STACK, {
        "base.yml": f'channels: ["{channel_url}"]\ndependencies: [libhello]\n',
        "app.yml": "dependencies: [hello]\n",
    })
    res = run_cli("-C", root, "lock")
    assert res.returncode == 0, res.output
    base = root / "environments" / "base.yml"
    base.write_text(base.read_text().replace("[libhello]", "[libhello, libfoo]"))
    return root


def test_lock_check_names_each_stale_layer_once(invoke, two_platform_lock: Path) -> None:  # noqa: ANN001
    res = invoke("-C", two_platform_lock, "lock", "--check")
    assert res.exit_code == 1, res.output
    assert "2 layer(s) need `condastack lock`: base, app." in res.stderr, res.output
    assert "stale: layer base:" in res.stderr and "stale: layer app:" in res.stderr


def test_lock_check_lists_every_stale_platform(invoke, two_platform_lock: Path) -> None:  # noqa: ANN001
    res = invoke("-C", two_platform_lock, "lock", "--check")
    assert res.exit_code == 1, res.output
    for layer in ("base", "app"):
        for plat in ("linux-64", "linux-aarch64"):
            assert re.search(rf"stale: layer {layer}: {plat}\b", res.stderr), res.stderr
