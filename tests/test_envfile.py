"""Reading environment.yml files the way conda, conda-build and pip read them (no solving)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from tests.helpers import write_project

from condastack.spec.envfile import DEFAULT_CHANNELS, eval_selector, load_env_file
from condastack.core.errors import CondastackError
from condastack.lock.layered import input_hash
from condastack.spec.stack import load_stack

PLATS = ["linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64", "win-64"]

# selector -> the platforms it is true on (conda-build's definitions)
SELECTOR_CASES = {
    "linux": {"linux-64", "linux-aarch64", "linux-ppc64le"},
    "linux64": {"linux-64"},
    "linux32": set(),
    "aarch64": {"linux-aarch64"},
    "ppc64le": {"linux-ppc64le"},
    "x86_64": {"linux-64", "osx-64", "win-64"},
    "x86": {"linux-64", "osx-64", "win-64"},
    "unix": {"linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64"},
    "osx": {"osx-64", "osx-arm64"},
    "osx64": {"osx-64"},
    "arm64": {"osx-arm64"},
    "win": {"win-64"},
    "win64": {"win-64"},
    "win32": set(),
    "not win": {"linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64"},
    "linux and x86_64": {"linux-64"},
    "linux and not aarch64": {"linux-64", "linux-ppc64le"},
    "osx or win": {"osx-64", "osx-arm64", "win-64"},
    "(linux or osx) and not x86_64": {"linux-aarch64", "linux-ppc64le", "osx-arm64"},
    "not (unix)": {"win-64"},
}


@pytest.mark.parametrize("selector", sorted(SELECTOR_CASES))
def test_selector(selector: str) -> None:
    got = {p for p in PLATS if eval_selector(selector, p, where="f")}
    assert got == SELECTOR_CASES[selector]


def _env(tmp_path: Path, text: str, name: str = "environment.yml", plats: list[str] | None = None):  # noqa: ANN202
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return load_env_file(path, plats or ["linux-64"], layer="l")


def test_selectors_in_a_file_per_platform(tmp_path: Path) -> None:
    env = _env(tmp_path, """
        dependencies:
          - numpy
          - cudatoolkit  # [linux and x86_64]
          - pywin32  # [win]
          - libcxx  # [osx or (linux and not aarch64)]
          - jaxlib  # [not win]
          - pip:
            - uvloop  # [unix]
        """, plats=["linux-64", "linux-aarch64", "osx-arm64", "win-64"])
    assert env.conda["linux-64"] == ("numpy", "cudatoolkit", "libcxx", "jaxlib", "pip")
    assert env.conda["linux-aarch64"] == ("numpy", "jaxlib", "pip")
    assert env.conda["osx-arm64"] == ("numpy", "libcxx", "jaxlib", "pip")
    assert env.conda["win-64"] == ("numpy", "pywin32")  # its pip: list is empty there, as conda-lock reads it
    assert env.pip["win-64"] == () and env.pip["linux-64"] == ("uvloop",)


def test_unknown_selector_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(CondastackError, match=r"environment.yml, line 3: layer 'l': selector \[py>=38\] uses"):
        _env(tmp_path, "dependencies:\n  - numpy\n  - tomli  # [py<311]\n".replace("py<311", "py>=38"))


def test_quoted_versions_and_empty_dependencies(tmp_path: Path) -> None:
    env = _env(tmp_path, """
        dependencies:
          - python='3.10'
          - "numpy>=1.24,<2"
          - scipy="1.11.*"
        """)
    assert env.conda["linux-64"] == ("python 3.10.*", "numpy >=1.24,<2", "scipy 1.11.*")
    assert _env(tmp_path, "name: x\n", "a.yml").conda["linux-64"] == ()
    assert _env(tmp_path, "name: x\ndependencies:\n", "b.yml").conda["linux-64"] == ()
    assert _env(tmp_path, "", "c.yml").conda["linux-64"] == ()


def test_defaults_expands_and_nodefaults_is_dropped(tmp_path: Path) -> None:
    env = _env(tmp_path, "channels: [pytorch, defaults, nodefaults]\n")
    assert env.channels == ("pytorch", *DEFAULT_CHANNELS)
    assert DEFAULT_CHANNELS == ("https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r")
    assert _env(tmp_path, "channels: [conda-forge, nodefaults]\n", "n.yml").channels == ("conda-forge",)


@pytest.mark.parametrize("text, needles", [
    ("dependencies:\n  - numpy\n  - 'num py ==='\n", ["line 3", "'num py ===' is not a conda match spec"]),
    ("dependencies:\n  - numpy\n  - [a, b]\n", ["line 3", "each dependency must be"]),
    ("dependencies:\n  - numpy\n - bad\n", ["line 3", "malformed YAML"]),
    ("channels: [a]\nvariables: [A]\n", ["line 2", "'variables' must map"]),
    ("variables:\n  OK: 1\n  BAD-NAME: x\n", ["line 3", "'BAD-NAME' is not an environment variable"]),
    ("dependencies:\n  - pip:\n    - numpy\n    - 'not a ==== req'\n", ["line 4", "bad pip requirement"]),
    ("dependencies:\n  - pip:\n    - --no-deps\n", ["line 3", "pip option '--no-deps' is not supported"]),
    ("dependencies:\n  - pip:\n    - -r missing.txt\n", ["line 3", "cannot read requirements file", "missing.txt"]),
    ("dependncies:\n  - numpy\n", ["line 1", "unknown key 'dependncies'"]),
])
def test_parse_errors_name_file_and_line(tmp_path: Path, text: str, needles: list[str]) -> None:
    with pytest.raises(CondastackError) as e:
        _env(tmp_path, text)
    for n in ["environment.yml", *needles]:
        assert n in str(e.value)


@pytest.mark.parametrize("line, needles", [
    ("-e .", ["editable", "build a wheel", "condastack wrap"]),
    ("--editable=.", ["editable", "build a wheel"]),
    ("--editable .", ["editable"]),
    ("-e git+https://github.com/org/repo.git#egg=repo", ["editable"]),
    ("submodules/diff-gaussian-rasterization", ["local path", "condastack wrap"]),
    ("./third_party/pkg", ["local path"]),
    ("mypkg @ file:///tmp", ["local folder"]),
    ("repo @ hg+https://hg.example.org/repo@tip", ["only git", "name @ https://"]),
    ("git+https://github.com/org/repo.git@main#egg=repo&sha1=x", ["unknown URL fragment"]),
    ("git+https://github.com/org/repo.git#subdirectory=../up", ["#subdirectory=../up", "relative path"]),
])
def test_unlockable_pip_lines_are_refused_with_the_fix(tmp_path: Path, line: str, needles: list[str]) -> None:
    with pytest.raises(CondastackError) as e:
        _env(tmp_path, f"dependencies:\n  - python\n  - pip:\n    - numpy\n    - \"{line}\"\n")
    assert "environment.yml, line 5" in str(e.value)
    for n in needles:
        assert n in str(e.value)


def test_git_requirements_are_kept_as_written_with_any_ref(tmp_path: Path) -> None:
    lines = ["repo @ git+https://github.com/org/repo.git", "repo2 @ git+https://github.com/org/repo2.git@main",
             "git+https://github.com/org/repo3.git@v1.2#egg=repo3", "git+https://github.com/NVIDIA/dllogger.git",
             "onlylinux @ git+https://h/x.git@main ; sys_platform == 'win32'"]
    env = _env(tmp_path, "dependencies:\n  - python\n  - pip:\n" + "".join(f'    - "{line}"\n' for line in lines))
    assert env.pip["linux-64"] == tuple(lines[:4])  # the marker is false on linux-64


def test_pip_options_and_requirement_files(tmp_path: Path) -> None:
    (tmp_path / "reqs").mkdir()
    (tmp_path / "reqs" / "base.txt").write_text("einops>=0.6  # tensors\n-r more.txt\n")
    (tmp_path / "reqs" / "more.txt").write_text("rich ; sys_platform == 'win32'\nhydra-core \\\n  ==1.3.2\n")
    (tmp_path / "pins.txt").write_text("einops<0.8\n")
    env = _env(tmp_path, """
        dependencies:
          - python
          - pip:
            - --index-url https://user:secret@pypi.internal/simple
            - --extra-index-url=https://download.pytorch.org/whl/cu121
            - -f wheels
            - --pre
            - -r reqs/base.txt
            - -c pins.txt
            - torch==2.1.0
        """)
    assert env.pip["linux-64"] == ("einops>=0.6", "hydra-core ==1.3.2", "torch==2.1.0")
    o = env.pip_options
    assert o.index_url == "https://user:secret@pypi.internal/simple"
    assert o.extra_index_urls == ("https://download.pytorch.org/whl/cu121",)
    assert o.find_links == ((tmp_path / "wheels").as_uri(),)
    assert o.pre and o.constraints == ("einops<0.8",)
    assert {Path(p).name for p, _ in env.includes} == {"base.txt", "more.txt", "pins.txt"}


def _stack(tmp_path: Path, base: str, app: str, files: dict[str, str] | None = None) -> Path:
    return write_project(tmp_path / "p", """
        name: s
        platforms: [linux-64]
        layers:
          base: {file: base.yml}
          app: {file: app.yml, extends: base}
        """, {"base.yml": base, "app.yml": app, **(files or {})})


def test_variables_and_pip_options_inherit_and_enter_the_hash(tmp_path: Path) -> None:
    proj = _stack(tmp_path, """
        variables: {OMP_NUM_THREADS: 4, HF_HOME: /scratch/hf}
        dependencies:
          - python
          - pip:
            - --extra-index-url https://tok@download.pytorch.org/whl/cu121
            - -c pins.txt
            - numpy
        """, """
        variables: {OMP_NUM_THREADS: "8"}
        dependencies:
          - pip:
            - --index-url https://mirror.example/simple
            - numpy>=1.20
        """, {"pins.txt": "numpy<2\n"})
    st = load_stack(proj)
    assert st.variables_for("base") == {"OMP_NUM_THREADS": "4", "HF_HOME": "/scratch/hf"}
    assert st.variables_for("app") == {"OMP_NUM_THREADS": "8", "HF_HOME": "/scratch/hf"}
    assert st.pip_indexes_for("base") == ["https://pypi.org/simple", "https://tok@download.pytorch.org/whl/cu121"]
    assert st.pip_indexes_for("app") == ["https://mirror.example/simple", "https://tok@download.pytorch.org/whl/cu121"]
    assert st.specs_for("app", "linux-64")[1] == ["numpy<2", "numpy>=1.20,<2"]
    js = st.to_json()["layers"]["app"]
    assert js["variables"]["OMP_NUM_THREADS"] == "8" and js["own-variables"] == {"OMP_NUM_THREADS": "8"}
    assert "tok" not in str(js)  # credentials never reach output
    before = {n: input_hash(st, n, "linux-64") for n in ("base", "app")}
    env = proj / "environments"
    for path, old, new in [("base.yml", "HF_HOME: /scratch/hf", "HF_HOME: /tmp/hf"),
                           ("pins.txt", "numpy<2", "numpy<3"),
                           ("app.yml", "mirror.example", "mirror2.example")]:
        (env / path).write_text((env / path).read_text().replace(old, new))
        after = {n: input_hash(load_stack(proj), n, "linux-64") for n in ("base", "app")}
        assert after["app"] != before["app"], path
        before = after
    # a rotated token is not a change of inputs
    (env / "base.yml").write_text((env / "base.yml").read_text().replace("tok@", "tok2@"))
    assert input_hash(load_stack(proj), "app", "linux-64") == before["app"]
