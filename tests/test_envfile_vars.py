"""environment.yml `variables:` from the file to every place an env is used.

lock -> build (conda-meta/state, as conda writes it) -> pack -> install
(activate.sh, modulefile) and the container outputs (Dockerfile, Apptainer, OCI config).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers import run_cli, run_ok, write_project


def test_variables_reach_env_archive_modules_and_containers(tmp_path: Path, channel_url: str,
                                                            pkgs_cache: Path) -> None:
    proj = write_project(tmp_path / "p", """
        name: vars
        platforms: [linux-64]
        layers:
          base: {file: base.yml}
          app: {file: app.yml, extends: base}
        """, {
        "base.yml": f"""
            channels: ["{channel_url}"]
            variables:
              GREETING: hello world
              OMP_NUM_THREADS: 4
            dependencies: [libhello]
            """,
        "app.yml": """
            variables:
              OMP_NUM_THREADS: "8"
            dependencies: [hello]
            """,
    })
    want = {"GREETING": "hello world", "OMP_NUM_THREADS": "8"}
    layers = json.loads(run_ok("-C", proj, "layers", "--json"))["layers"]
    assert layers["app"]["variables"] == want and layers["base"]["variables"]["OMP_NUM_THREADS"] == "4"
    dry = json.loads(run_ok("-C", proj, "lock", "--dry-run", "--json"))
    assert next(d for d in (dry if isinstance(dry, list) else dry["plan"]) if d["layer"] == "app")["variables"] == want
    run_ok("-C", proj, "lock")
    run_ok("-C", proj, "build", "app")
    state = proj / "envs" / "app" / "conda-meta" / "state"
    assert json.loads(state.read_text()) == {"env_vars": want}
    run_ok("-C", proj, "verify", "app")

    # only a variable changes: the lock is stale, and a rebuild rewrites the state without relinking
    app_yml = proj / "environments" / "app.yml"
    app_yml.write_text(app_yml.read_text().replace('"8"', '"16"'))
    assert run_cli("-C", proj, "lock", "--check").returncode == 1
    run_ok("-C", proj, "lock")
    run_ok("-C", proj, "build", "app")
    want["OMP_NUM_THREADS"] = "16"
    assert json.loads(state.read_text()) == {"env_vars": want}

    # pack -> install: the state travels, activate.sh and the modulefile set the variables
    archive = tmp_path / "app.tar.zst"
    run_ok("-C", proj, "pack", "app", "-o", archive)
    inst = tmp_path / "inst"
    run_ok("install", archive, "--prefix", inst)
    assert json.loads((inst / "conda-meta" / "state").read_text()) == {"env_vars": want}
    out = subprocess.run(["sh", "-c", f'. "{inst}/activate.sh" && printf "%s|%s" "$GREETING" "$OMP_NUM_THREADS"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == "hello world|16"
    mods = tmp_path / "mods"
    run_ok("module", inst, "--name", "vars/app", "--version", "1", "-o", mods)
    lua = next(mods.rglob("*.lua")).read_text()
    assert 'setenv("GREETING", "hello world")' in lua and 'setenv("OMP_NUM_THREADS", "16")' in lua

    # containers: Dockerfile ENV, Apptainer %environment, OCI config Env
    run_ok("-C", proj, "pack", "app", "--format", "tar.gz", "--dest-prefix", "/opt/env")
    oci = tmp_path / "app.oci.tar"
    run_ok("-C", proj, "container", "app", "--oci", oci)
    docker = (proj / "Dockerfile.thin").read_text()
    assert 'GREETING="hello world"' in docker and 'OMP_NUM_THREADS="16"' in docker
    definition = (proj / "pack" / "app.def").read_text()
    assert "export GREETING='hello world'" in definition and "export OMP_NUM_THREADS='16'" in definition
    cfg = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{oci}"], capture_output=True,
                                    text=True, check=True).stdout)
    env = dict(e.split("=", 1) for e in cfg["config"]["Env"])
    assert env["GREETING"] == "hello world" and env["OMP_NUM_THREADS"] == "16" and env["CONDA_PREFIX"] == "/opt/env"
