"""`wrap` keeps what a real wheel says: its dependencies, glibc floor, bytecode and version.

Wheels are built here: `fastpkg 2.13.0+cpu` is a manylinux_2_28 CPython wheel
with a C extension compiled by gcc and Requires-Dist lines with markers;
`helper_lib` is a pure wheel it needs, found in no channel until wrapped too.
They are wrapped, locked with the offline test channel, built, checked by
`doctor`, packed as SquashFS and imported from a read-only mount.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli, write_project
from condastack.core.elf import read_elf_dynamic
from condastack.channel.wheeldeps import wheel_requirements
from condastack.channel.assemble import WheelOptions
from condastack.channel.wrap import wrap

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
CP = f"cp{sys.version_info.major}{sys.version_info.minor}"
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")

FASTPKG_REQUIRES = [
    "helper_lib>=1.0",  # in no channel: wrapped from the wheel folder
    "hello>=1.0",  # in the test channel
    'legacy-shim; python_version < "3.0"',  # dropped: marker false for this python
    'pywin-thing>=1; sys_platform == "win32"',  # dropped: not Linux
    'pytest; extra == "dev"',  # dropped: extra not asked for
    'libhello; platform_machine == "x86_64" and python_version >= "3.8"',  # kept on linux-64
]

EXT_C = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
/* reallocarray is versioned GLIBC_2.26: the extension needs at least that glibc. */
static PyObject *twice(PyObject *self, PyObject *arg) {
    long v = PyLong_AsLong(arg);
    long *buf = reallocarray(NULL, 2, sizeof(long));
    buf[0] = v; buf[1] = v;
    long r = buf[0] + buf[1];
    free(buf);
    return PyLong_FromLong(r);
}
static PyMethodDef methods[] = {{"twice", twice, METH_O, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, methods};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&mod); }
"""


def write_wheel(folder: Path, name: str, version: str, tag: str, files: dict[str, bytes | str],
                requires: list[str] = ()) -> Path:
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    purelib = "true" if tag.endswith("none-any") else "false"
    allfiles = {**files, f"{dist}/METADATA": meta,
                f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: {purelib}\nTag: {tag}\n"}
    record = []
    for path, data in allfiles.items():
        raw = data.encode() if isinstance(data, str) else data
        digest = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(raw)}")
    record.append(f"{dist}/RECORD,,")
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, data in allfiles.items():
            z.writestr(path, data)
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return whl


def compile_ext(tmp: Path) -> bytes:
    src = tmp / "speed.c"
    src.write_text(EXT_C)
    out = tmp / f"_speed{EXT_SUFFIX}"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f"-I{sysconfig.get_paths()['include']}", "-o", str(out),
                    str(src)], check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    ext = compile_ext(tmp_path_factory.mktemp("cc"))
    write_wheel(d, "fastpkg", "2.13.0+cpu", f"{CP}-{CP}-manylinux_2_28_x86_64", {
        "fastpkg/__init__.py": "from fastpkg._speed import twice\nfrom fastpkg import util\nVERSION = '2.13.0'\n",
        "fastpkg/util.py": "def double(x):\n    return 2 * x\n",
        f"fastpkg/_speed{EXT_SUFFIX}": ext,
    }, FASTPKG_REQUIRES)
    write_wheel(d, "helper_lib", "1.1.0", "py3-none-any", {"helper_lib/__init__.py": "NAME = 'helper'\n"})
    write_wheel(d, "helper_lib", "0.9.0", "py3-none-any", {"helper_lib/__init__.py": "NAME = 'old'\n"})
    return d


def fastpkg_wheel(wheels: Path) -> Path:
    return next(wheels.glob("fastpkg-*.whl"))


def record_of(site: Path, name: str) -> dict:
    repo = json.loads((site / "linux-64" / "repodata.json").read_text())["packages.conda"]
    return next(r for r in repo.values() if r["name"] == name)


# --------------------------------------------------------------------------- metadata


def test_requires_dist_markers_and_names() -> None:
    metadata = "Name: x\nVersion: 1\n" + "".join(f"Requires-Dist: {r}\n" for r in [
        *FASTPKG_REQUIRES, "torch>=2.1,<3", "msgpack==1.0.*", "PyYAML~=6.0", "sympy===1.13.1", "mpmath<1.4,>=1.1"])
    specs = [d.spec for d in wheel_requirements(metadata, PY, "linux-64")]
    assert specs == ["helper-lib >=1.0", "hello >=1.0", "libhello", "pytorch >=2.1,<3", "msgpack-python 1.0.*",
                     "pyyaml ~=6.0", "sympy ==1.13.1", "mpmath >=1.1,<1.4"]
    # Markers follow the target: aarch64 drops the x86_64-only requirement; an extra adds its own.
    aarch = [d.spec for d in wheel_requirements(metadata, PY, "linux-aarch64", extras=("dev",))]
    assert "libhello" not in aarch and "pytest" in aarch


def test_conda_forge_mapping_is_inverted_and_ranked() -> None:
    """The shipped PyPI -> conda map prefers the package named like the PyPI name, then one that
    ships only it, then the shortest name; wrap and lock read the same map."""
    import importlib.util

    from condastack.channel.wheeldeps import pypi_to_conda_names

    spec = importlib.util.spec_from_file_location("make_mapping", REPO / "scripts" / "make_mapping.py")
    mm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mm)
    m = mm.pypi_to_conda({
        "fooish": ["foo"], "fooish-cuda": ["foo"],  # variants: the shorter name
        "gym": ["gym", "typing_extensions"], "typing_extensions": ["typing-extensions"],  # vendored: the owner
        "typing-extensions": None,  # conda-forge's empty alias of typing_extensions provides nothing
        "bar-conda": ["bar_py"], "pytorch-cpu": ["torch"], "pytorch": ["torch"], "nothing": None,
        "ruamel_yaml": ["ruamel.yaml", "ruamel.yaml.conda"], "ruamel.yaml": ["ruamel.yaml"],  # the one shipping only it
        "importlib_metadata": ["importlib_metadata"], "importlib-metadata": ["importlib-metadata"]})  # spelled alike
    assert (m["foo"], m["bar-py"], m["torch"]) == ("fooish", "bar-conda", "pytorch")
    assert (m["typing-extensions"], m["ruamel-yaml"]) == ("typing_extensions", "ruamel.yaml")  # conda-forge spelling
    assert "gym" not in m and "importlib-metadata" not in m  # spelled alike on both sides
    compact = mm.compact({"typing_extensions": ["typing-extensions"], "pip": ["pip"], "gym": ["gym"]})
    assert compact == {"typing_extensions": ["typing-extensions"]}
    shipped = pypi_to_conda_names()
    assert (shipped["torch"], shipped["msgpack"], shipped["tables"]) == ("pytorch", "msgpack-python", "pytables")
    assert (shipped["huggingface-hub"], shipped["typing-extensions"], shipped["ruamel-yaml"]) == (
        "huggingface_hub", "typing_extensions", "ruamel.yaml")
    assert "importlib-metadata" not in shipped and "pip" not in shipped


FULL_MAPPING = REPO.parent / "shared" / "realworld" / "conda-forge-pypi-names.json"


def test_shipped_mapping_is_made_from_the_full_conda_forge_mapping() -> None:
    """The shipped file is what scripts/make_mapping.py makes from parselmouth's full mapping, and every
    conda name it maps a PyPI name to is a real conda-forge package providing that name."""
    if not FULL_MAPPING.is_file():
        pytest.skip(f"{FULL_MAPPING} (parselmouth's full conda-forge mapping) is not on this machine")
    import importlib.util

    from condastack.core.names import NAMES_FILE

    spec = importlib.util.spec_from_file_location("make_mapping", REPO / "scripts" / "make_mapping.py")
    mm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mm)
    full = json.loads(FULL_MAPPING.read_text())
    shipped = json.loads(NAMES_FILE.read_text())
    assert shipped == {"conda_to_pypi": mm.compact(full), "pypi_to_conda": mm.pypi_to_conda(full)}
    for pypi, conda in shipped["pypi_to_conda"].items():
        assert pypi in {mm.canonical(p) for p in full[conda]}, (pypi, conda)
    respelled = {c for c in full
                 if c != mm.canonical(c) and mm.canonical(c) in {mm.canonical(p) for p in full[c] or []}}
    assert len(respelled) == 1241  # conda-forge names spelled otherwise than the PyPI name they provide
    for conda in respelled:  # each either is the name wrap uses, or one spelled exactly as PyPI provides it too
        p = mm.canonical(conda)
        assert shipped["pypi_to_conda"].get(p, p) in full and p in {
            mm.canonical(x) for x in full[shipped["pypi_to_conda"].get(p, p)] or []}, conda


SPELLED = {  # PyPI requirement -> the conda-forge package that provides it
    "huggingface-hub>=0.30": "huggingface_hub >=0.30",
    "typing-extensions>=4.0": "typing_extensions >=4.0",
    "ruamel.yaml": "ruamel.yaml",
    "importlib-metadata": "importlib-metadata",
    "Typing_Extensions<5": "typing_extensions <5",  # any spelling of the PyPI name: one conda name
}


def test_requires_dist_spelled_as_conda_forge_spells_it() -> None:
    metadata = "Name: x\nVersion: 1\n" + "".join(f"Requires-Dist: {r}\n" for r in SPELLED)
    specs = [d.spec for d in wheel_requirements(metadata, PY, "linux-64")]
    assert specs == ["huggingface_hub >=0.30", "typing_extensions >=4.0,<5", "ruamel.yaml", "importlib-metadata"]


def test_wrapped_wheels_name_and_need_conda_forge_spellings(channel: Path, tmp_path: Path) -> None:
    """A wheel needing huggingface-hub, typing-extensions, ruamel.yaml and importlib-metadata, wrapped with
    those wheels: each is wrapped under its conda-forge name, and the site channel solves."""
    import asyncio

    import rattler

    d = tmp_path / "wheels"
    top = write_wheel(d, "hubuser", "1.0", "py3-none-any", {"hubuser/__init__.py": ""}, list(SPELLED)[:4])
    for name, ver in (("huggingface_hub", "0.33.0"), ("typing_extensions", "4.12.2"), ("ruamel.yaml", "0.18.6"),
                      ("importlib_metadata", "8.7.0")):
        write_wheel(d, name, ver, "py3-none-any", {f"{name.replace('.', '_')}/__init__.py": ""})
    site = tmp_path / "site"
    placed = wrap(top, channel=site, python=PY, wheel=WheelOptions(check_channels=(channel.as_uri(),), wheel_dir=d))
    assert sorted(p.name for p in placed) == ["hubuser", "huggingface_hub", "importlib-metadata", "ruamel.yaml",
                                              "typing_extensions"]
    rec = record_of(site, "hubuser")
    assert rec["depends"] == [f"python {PY}.*", *list(SPELLED.values())[:4]]
    solved = asyncio.run(rattler.solve([site.as_uri(), channel.as_uri()], ["hubuser"],
                                       platforms=["linux-64", "noarch"]))
    assert {r.name.normalized for r in solved} >= {"hubuser", "huggingface_hub", "typing_extensions", "ruamel.yaml",
                                                    "importlib-metadata"}


def test_elf_reader_finds_glibc_symbol_versions(tmp_path: Path) -> None:
    so = tmp_path / "x.so"
    so.write_bytes(compile_ext(tmp_path))
    d = read_elf_dynamic(so)
    assert d is not None and ("libc.so.6", "GLIBC_2.26") in d.version_needs
    assert read_elf_dynamic(tmp_path / "speed.c") is None


# --------------------------------------------------------------------------- the wheel, end to end


def test_wrap_real_wheel_end_to_end(wheels: Path, channel: Path, tmp_path: Path, pkgs_cache: Path) -> None:
    import rattler

    site = tmp_path / "site"
    whl = fastpkg_wheel(wheels)

    # Without the wheel folder, the requirement no channel has is reported, with what to do.
    res = run_cli("wrap", whl, "--channel", site, "--check-channel", channel.as_uri())
    assert res.returncode == 0, res.output
    assert "no channel of the stack has helper_lib>=1.0" in res.stderr and "--wheels DIR" in res.stderr
    assert "hello" not in res.stderr.split("has", 1)[1].split(".")[0]  # satisfied by the test channel

    # With it, helper_lib is wrapped too (the newest wheel that fits >=1.0).
    placed = wrap(whl, channel=site, force=True,
                  wheel=WheelOptions(check_channels=(channel.as_uri(),), wheel_dir=wheels))
    assert [(p.name, p.version) for p in placed] == [("fastpkg", "2.13.0"), ("helper-lib", "1.1.0")]
    fast = placed[0]
    assert fast.unsatisfied == ("helper_lib>=1.0",)
    assert fast.build.startswith(f"cpu_py{PY.replace('.', '')}h")  # the local label lives in the build string
    rec = record_of(site, "fastpkg")
    assert rec["version"] == "2.13.0"
    assert rec["depends"] == [f"python {PY}.*", "helper-lib >=1.0", "hello >=1.0", "libhello", "__glibc >=2.28"]

    # torch-style specs match the public version.
    for spec in ("fastpkg 2.13.0", "fastpkg ==2.13.0", "fastpkg >=2.13", "fastpkg 2.13.*"):
        assert rattler.VersionSpec(spec.split(" ", 1)[1]).matches(rattler.Version(rec["version"])), spec

    # The raw form stays available.
    (raw,) = wrap(whl, channel=tmp_path / "raw", wheel=WheelOptions(keep_local_version=True))
    assert raw.version == "2.13.0+cpu" and raw.build.startswith(f"py{PY.replace('.', '')}h")
    # Bytecode included, the package is reproducible: wrapping again changes nothing.
    (again,) = wrap(whl, channel=tmp_path / "raw", wheel=WheelOptions(keep_local_version=True))
    assert again.status == "unchanged" and again.path == raw.path

    # A noarch: python package ships sources only; building the env compiles it, as conda does.
    add_noarch_python(site, tmp_path / "noarch-src")

    # Locked with `fastpkg 2.13.0` and `>=2.13`, built, imported.
    proj = write_project(tmp_path / "proj", """
        name: wheels
        platforms: [linux-64]
        virtual-packages:
          linux-64: {__glibc: "2.28"}
        layers:
          app: {file: app.yml}
        """, {"app.yml": f"""
            name: app
            channels: ["{site.as_uri()}", "{channel.as_uri()}"]
            dependencies:
              - python {PY}.*
              - fastpkg 2.13.0
              - fastpkg >=2.13
              - purepkg
            """})
    res = run_cli("-C", proj, "lock")
    assert res.returncode == 0, res.output
    assert "/linux-64/fastpkg-2.13.0-cpu_py" in (proj / "lock" / "app.conda-lock.yml").read_text()
    res = run_cli("-C", proj, "build", "app")
    assert res.returncode == 0, res.output
    prefix = proj / "envs" / "app"
    py = prefix / "bin" / "python"
    out = subprocess.run([str(py), "-c", "import fastpkg, helper_lib; print(fastpkg.twice(21), helper_lib.NAME)"],
                         capture_output=True, text=True)
    assert out.stdout.split() == ["42", "helper"], out.stderr

    # Every package record names its channel, local channels included.
    for f in (prefix / "conda-meta").glob("*.json"):
        if not f.name.startswith("condastack."):
            data = json.loads(f.read_text())
            assert data.get("channel"), f"{f.name}: channel {data.get('channel')!r}"
    fast_meta = json.loads(next((prefix / "conda-meta").glob("fastpkg-*.json")).read_text())
    assert fast_meta["channel"].rstrip("/") == site.as_uri()

    # Bytecode: every .py of the wrapped packages has a checked-hash .pyc for this python.
    site_pkgs = prefix / "lib" / f"python{PY}" / "site-packages"
    tag = sys.implementation.cache_tag
    for src in [*site_pkgs.glob("fastpkg/*.py"), *site_pkgs.glob("helper_lib/*.py"), *site_pkgs.glob("purepkg/*.py")]:
        pyc = src.parent / "__pycache__" / f"{src.stem}.{tag}.pyc"
        assert pyc.is_file(), pyc
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b11  # hash-based, checked
    pure = json.loads(next((prefix / "conda-meta").glob("purepkg-*.json")).read_text())
    assert f"lib/python{PY}/site-packages/purepkg/__pycache__/__init__.{tag}.pyc" in pure["files"]

    # doctor: the node's glibc is checked against the wheel's floor.
    res = run_cli("doctor", "--prefix", prefix, "--json", env={"CONDA_OVERRIDE_GLIBC": "2.17"})
    assert res.returncode == 1, res.output
    glibc = next(c for c in json.loads(res.stdout)["checks"] if c["name"] == "glibc")
    assert glibc["status"] == "fail" and ">=2.28" in glibc["required"] and "fastpkg" in glibc["required"]
    assert "too old" in glibc["fix"] and "2.17" in glibc["fix"]
    res = run_cli("doctor", "--prefix", prefix, "--json", env={"CONDA_OVERRIDE_GLIBC": "2.28"})
    glibc = next(c for c in json.loads(res.stdout)["checks"] if c["name"] == "glibc")
    assert glibc["status"] == "pass", glibc

    # The pack manifest names every channel too.
    mnt = tmp_path / "ro" / "app"
    img = tmp_path / "app.squashfs"
    res = run_cli("pack", "--prefix", prefix, "--format", "squashfs", "--dest-prefix", mnt, "-o", img)
    assert res.returncode == 0, res.output
    manifest = json.loads(Path(f"{img}.manifest.json").read_text())
    assert manifest["packages"] and all(p["channel"] for p in manifest["packages"]), manifest["packages"]
    _import_from_read_only_mount(img, mnt)


def _import_from_read_only_mount(img: Path, mnt: Path) -> None:
    """`import fastpkg` from a read-only SquashFS mount uses the shipped bytecode and writes nothing."""
    if not shutil.which("squashfuse") or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("squashfuse or /dev/fuse not available: read-only import not exercised")
    mnt.mkdir(parents=True)
    if subprocess.run(["squashfuse", str(img), str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("squashfuse cannot mount here")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}  # bytecode writing stays on
        out = subprocess.run([str(mnt / "bin" / "python"), "-v", "-c",
                              "import sys, fastpkg, helper_lib, purepkg; assert not sys.dont_write_bytecode; "
                              "print(fastpkg.twice(2))"], capture_output=True, text=True, env=env)
        assert out.returncode == 0 and out.stdout.strip() == "4", out.stderr[-2000:]
        tag = sys.implementation.cache_tag
        for mod in ("fastpkg/__init__", "fastpkg/util", "helper_lib/__init__", "purepkg/__init__"):
            pkg, stem = mod.split("/")
            pyc = mnt / "lib" / f"python{PY}" / "site-packages" / pkg / "__pycache__" / f"{stem}.{tag}.pyc"
            assert f"# {pyc} matches {mnt}/lib/python{PY}/site-packages/{mod}.py" in out.stderr, mod
            assert f"# code object from '{pyc}'" in out.stderr, mod
        # Nothing tried to write bytecode for the wrapped packages (the test channel's python ships none
        # for its standard library, unlike conda-forge's).
        tried = [ln for ln in out.stderr.splitlines() if ln.startswith("# could not create") and "site-packages" in ln]
        assert not tried, tried
    finally:
        if subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", str(mnt)], check=False)


def add_noarch_python(site: Path, src: Path) -> None:
    """A `noarch: python` package (sources only, as conda-forge ships them) in the site channel."""
    from rattler_build import assemble_package

    from condastack.channel.index import index_channel

    (src / "site-packages" / "purepkg").mkdir(parents=True)
    (src / "site-packages" / "purepkg" / "__init__.py").write_text("ANSWER = 42\n")
    (site / "noarch").mkdir(parents=True, exist_ok=True)
    out = assemble_package("purepkg", "1.0", "noarch", "pyh0_0", site / "noarch", files_dir=src, noarch="python",
                           depends=["python"], detect_prefix=False)
    _add_link_json(Path(out.path))
    index_channel(site)


def _add_link_json(pkg: Path) -> None:
    """info/link.json, as rattler-build writes for recipes: conda-pack reads the noarch type from it."""
    import io
    import tarfile

    with zipfile.ZipFile(pkg) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(pkg, "w") as z:
        for info, data in entries:
            if info.filename.startswith("info-"):
                raw = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
                with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as src, \
                        tarfile.open(fileobj=(new := io.BytesIO()), mode="w") as dst:
                    for m in src.getmembers():
                        dst.addfile(m, src.extractfile(m) if m.isfile() else None)
                    body = json.dumps({"noarch": {"type": "python"}, "package_metadata_version": 1}).encode()
                    ti = tarfile.TarInfo("info/link.json")
                    ti.size = len(body)
                    dst.addfile(ti, io.BytesIO(body))
                data = subprocess.run(["zstd", "-q", "-c"], input=new.getvalue(), capture_output=True,
                                      check=True).stdout
            z.writestr(info, data)


# --------------------------------------------------------------------------- folders


def test_folder_glibc_floor_from_elf(tmp_path: Path) -> None:
    folder = tmp_path / "built"
    (folder / "lib").mkdir(parents=True)
    (folder / "lib" / "libspeed.so").write_bytes(compile_ext(tmp_path))
    (p,) = wrap(folder, channel=tmp_path / "site", name="speed", version="1.0")
    assert "__glibc >=2.26" in p.depends
    assert "__glibc >=2.26" in record_of(tmp_path / "site", "speed")["depends"]
    # An explicit __glibc dependency wins over the detected floor.
    (q,) = wrap(folder, channel=tmp_path / "site", name="speed", version="1.0", depends=["__glibc >=2.34"])
    assert [d for d in q.depends if d.startswith("__glibc")] == ["__glibc >=2.34"]


def test_recipe_gets_glibc_floor_from_elf(tmp_path: Path) -> None:
    """A recipe whose compiler adds no __glibc run_export gets the floor its binaries need."""
    import rattler.package_streaming

    rdir = tmp_path / "recipe"
    rdir.mkdir()
    (rdir / "speedy.c").write_text("#include <stdlib.h>\nint main(void) { void *p = reallocarray(NULL, 2, 8); "
                                   "free(p); return 0; }\n")
    (rdir / "recipe.yaml").write_text(textwrap.dedent("""
        package:
          name: speedy
          version: "0.1"
        source:
          path: .
        build:
          number: 0
          script:
            - mkdir -p $PREFIX/bin
            - gcc -O1 -o $PREFIX/bin/speedy speedy.c
        """))
    site = tmp_path / "site"
    (p,) = wrap(rdir, channel=site, recipe=True, build_channels=())
    out = tmp_path / "x"
    rattler.package_streaming.extract(p.path, out)  # still a valid package, payload as built
    assert subprocess.run([str(out / "bin" / "speedy")]).returncode == 0
    # The floor is what binutils says the program needs (>= 2.26 for reallocarray; the start code may need more).
    dyn = subprocess.run(["objdump", "-T", str(out / "bin" / "speedy")], capture_output=True, text=True).stdout
    want = max((tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", dyn)))
    floor = ".".join(map(str, want))
    assert want >= (2, 26) and p.notes == (f"{p.path.name}: added __glibc >={floor} (what its ELF files need)",)
    assert f"__glibc >={floor}" in record_of(site, "speedy")["depends"]
    assert json.loads((out / "info" / "index.json").read_text())["depends"] == [f"__glibc >={floor}"]


@pytest.mark.parametrize("tag, requires, needles", [
    (f"{CP}-{CP}-musllinux_1_2_x86_64", [], ["musllinux", "musl libc", "manylinux wheel"]),
    (f"{CP}-{CP}-manylinux_2_28_aarch64", [], ["none of which runs on linux-64", "--platform"]),
    ("py3-none-any", ["other @ https://example.invalid/other.whl"], ["points at a URL", "--depends"]),
    ("py3-none-any", ["bad requirement ((("], ["is not a PEP 508 requirement"]),
])
def test_wrap_refuses_wheels_it_cannot_keep_faithful(tmp_path: Path, tag: str, requires: list[str],
                                                      needles: list[str]) -> None:
    from tests.helpers import assert_user_error

    whl = write_wheel(tmp_path / "w", "oddpkg", "1.0", tag, {"oddpkg/__init__.py": ""}, requires)
    assert_user_error(run_cli("wrap", whl, "--python", PY, "--channel", tmp_path / "site"), whl.name, *needles)
    assert not list((tmp_path / "site").rglob("*.conda"))
