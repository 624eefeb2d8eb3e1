"""What the user or the node controls exits 1 (never 70, never a hang); scans of such text are linear.

Linear scans are shown by growth, not by wall-clock limits: the work for 8x the input must stay
well under the 64x a quadratic scan would need (counted in CPU time of the same process).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from condastack.archive.relocate import _binary_relocate, _records_block
from condastack.core.credentials import redact, strip_credentials
from condastack.core.errors import CondastackError
from condastack.env.prefix import MARKER, EnvMarker
from condastack.spec.envfile import _SELECTOR, selector
from tests.helpers import CLI, assert_user_error, run_cli, write_project


def _growth(fn, small: int, factor: int = 8) -> float:
    def cost(n: int) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            fn(n)
            best = min(best, time.process_time() - t)
        return max(best, 1e-4)
    return cost(small * factor) / cost(small)


def test_redaction_touches_only_real_userinfo() -> None:
    fix = "write it as `name @ git+https://…@<commit>`"
    assert redact(fix) == fix and strip_credentials(fix) == fix
    for kept in ("https://github.com/o/r@abc123", "git+https://github.com/o/r.git@v1.0", "/home/a@b/c",
                 "file:///srv/a@b/c", "https://host@<commit>"):
        assert redact(kept) == kept
    assert redact("https://user:pw@host/x") == "https://***@host/x"
    assert redact("git+https://tok@github.com/o/r@v1") == "git+https://***@github.com/o/r@v1"


def test_selector_scan_is_linear_and_same_as_conda_build() -> None:
    for line in ("  - numpy  # [linux]", "x # [a] [b]", " #][[a)]", "a # (x) [linux]", "# [linux]"):
        m = _SELECTOR.match(line)
        assert selector(line) == (m.group(3) if m else None)
    assert _growth(lambda n: selector("a" + " #[" * n + "(x"), 20000) < 24


def test_relocation_scans_are_linear() -> None:
    old = b"/placeholder_prefix"
    assert _growth(lambda n: _binary_relocate(old * n, old, b"/new", len(old), "f"), 20000) < 24
    text = "_prefix_records = [\n" * 1
    assert _records_block(text + "('a', 'b', 'text'),\n]\n") == "('a', 'b', 'text'),\n"
    assert _growth(lambda n: _records_block("x\n_prefix_records = [\n" * n), 20000) < 24


def test_condastack_info_field_of_wrong_type(tmp_path: Path) -> None:
    (tmp_path / "conda-meta").mkdir()
    (tmp_path / MARKER).write_text(json.dumps({"layer": ["x"], "lock_hash": 3}))
    with pytest.raises(CondastackError, match="field 'layer' must be a string"):
        EnvMarker.read(tmp_path)
    res = run_cli("module", tmp_path, "--name", "a", "--version", "1", "-o", tmp_path / "m")
    assert_user_error(res, "condastack.info", "field 'layer'")


def _project(tmp_path: Path, layer_text: str = "dependencies: [hello]\n") -> Path:
    return write_project(tmp_path / "p", "name: st\nplatforms: [linux-64]\nlayers:\n  app: {file: app.yml}\n",
                         {"app.yml": layer_text})


def test_deeply_nested_yaml_names_file_and_line(tmp_path: Path) -> None:
    proj = _project(tmp_path, "dependencies:\n  - " + "[" * 5000 + "]" * 5000 + "\n")
    assert_user_error(run_cli("-C", proj, "layers"), "app.yml", "line 2", "nested")


def test_long_comment_line_is_read(tmp_path: Path) -> None:
    proj = _project(tmp_path, "dependencies:\n  - hello  #" + " #[" * 200000 + "(\n")
    res = run_cli("-C", proj, "layers", timeout=120)
    assert res.returncode == 0, res.output


def test_closed_stdout_exits_1_without_traceback(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written: every write gets EPIPE
    p = subprocess.run([*CLI, "-C", str(proj), "layers", "--json"], stdout=w, stderr=subprocess.PIPE, text=True)
    os.close(w)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    sh = subprocess.run(["bash", "-c", " ".join([*CLI, "-C", str(proj), "layers", "--json"]) + " | true; "
                         "echo ${PIPESTATUS[0]}"], capture_output=True, text=True)
    assert sh.stdout.strip() in ("0", "1") and "Traceback" not in sh.stderr, sh.stderr


def test_non_utf8_locale_with_non_ascii_project_path(tmp_path: Path) -> None:
    proj = _project(tmp_path / "prøject-日本")
    for env in ({"LC_ALL": "C"}, {"LC_ALL": "POSIX"}, {"LANG": "C", "LC_ALL": "", "PYTHONUTF8": "0"}):
        res = run_cli("-C", proj, "layers", "--json", env=env)
        assert res.returncode == 0, (env, res.output)
        assert json.loads(res.stdout)["layers"]["app"]


def _fake_smi(tmp_path: Path, payload: bytes) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "payload").write_bytes(payload)
    smi = bindir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {bindir / 'payload'}\n")
    smi.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00garbage,\x80\x81,1.2,\x00\n", b"A100, 550.1, 8.0, 80 GiB\n" * 3,
                                     os.urandom(4096)])
def test_doctor_reads_odd_bytes_from_nvidia_smi(tmp_path: Path, payload: bytes) -> None:
    (tmp_path / "env" / "conda-meta").mkdir(parents=True)
    res = run_cli("doctor", "--prefix", tmp_path / "env", env=_fake_smi(tmp_path, payload))
    assert res.returncode in (0, 1) and "Traceback" not in res.output and "internal error" not in res.output, \
        res.output


def test_doctor_malformed_override_and_record(tmp_path: Path) -> None:
    env = tmp_path / "env"
    (env / "conda-meta").mkdir(parents=True)
    res = run_cli("doctor", "--prefix", env, env={"CONDA_OVERRIDE_CUDA": "twelve;rm"})
    assert_user_error(res, "CONDA_OVERRIDE_CUDA")
    rec = {"name": "x", "version": "1", "build": "0", "depends": [3, "__cuda >=12"],
           "paths_data": {"paths": [{"_path": "lib/a", "size_in_bytes": "lots"}, 7]}, "files": ["lib/a"]}
    (env / "conda-meta" / "x-1-0.json").write_text(json.dumps(rec))
    res = run_cli("doctor", "--prefix", env, env={"CONDA_OVERRIDE_CUDA": "12.4"})
    assert res.returncode in (0, 1) and "internal error" not in res.output and "Traceback" not in res.output, \
        res.output


def test_full_disk_during_lock_names_the_file(tmp_path: Path, channel_url: str) -> None:
    from tests.test_user_paths import _can_mount, run_on_mount

    if not _can_mount():
        pytest.skip("needs unshare -m and mount (root or user namespaces)")
    proj = _project(tmp_path, f'channels: ["{channel_url}"]\ndependencies: [libhello]\n' + "# pad\n" * 4000)
    res = run_on_mount(proj / "lock", "size=8k", "-C", proj, "lock", env={"CONDASTACK_PKGS": str(tmp_path / "k")})
    assert_user_error(res, str(proj / "lock"), "No space left")
