"""The examples as a user runs them from a clean checkout (README commands 1 and 2, in that order)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import REPO, demo_project


def test_demo_project_ignores_the_channel_link_command_1_leaves(tmp_path: Path) -> None:
    """`bash examples/run.sh` leaves examples/demo/environments/channel (a link to its channel); a copy
    of the demo made by the tests afterwards (the Slurm `site` fixture) links the test channel instead."""
    src = tmp_path / "demo"
    (src / "environments").mkdir(parents=True)
    for f in (REPO / "examples" / "demo" / "environments").glob("*.yml"):
        (src / "environments" / f.name).write_text(f.read_text())
    (tmp_path / "demo-channel").mkdir()
    (src / "environments" / "channel").symlink_to(tmp_path / "demo-channel")
    test_channel = tmp_path / "test-channel"
    test_channel.mkdir()
    project = demo_project(tmp_path / "proj", test_channel, src)
    env = project / "environments"
    assert (env / "channel").resolve() == test_channel
    assert sorted(p.name for p in env.iterdir()) == ["app.yml", "base.yml", "channel", "stack.yml"]
