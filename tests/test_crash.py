"""Crash safety (issue 9): SIGKILL `lock`, `build`, `pack`, `unpack` and `install` at seeded random points.

Each command first runs once uninterrupted from the trial's starting state, which
measures its duration T and gives the "new" result. Every trial then restores the
"old" state, starts the command as a user would (`python cli.py ...`, its own
process group), and SIGKILLs the whole group after a delay drawn from a seeded RNG
in [0, T]. After the kill every output path must hold the complete old result or
the complete new one (or nothing, where nothing was there before); re-running the
command must then succeed and leave no `.condastack-tmp-` temporaries behind.

Random delays alone may all miss the moments a temporary output exists, so each
command also gets one trial that is killed as soon as a new `.condastack-tmp-`
entry appears beside an output; every command must have at least one kill that
landed mid-write (a temporary was on disk after the kill).

Figures (trials, kills survived, files lost) go to `<pytest basetemp>/crash-figures.json`
and are printed at the end. Seed and trial count: CONDASTACK_CRASH_SEED / _TRIALS
(random trials per command; one watched trial is added to them).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.helpers import CLI, run_cli, write_project

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("CONDASTACK_CRASH_SEED", "20261129"))
TRIALS = int(os.environ.get("CONDASTACK_CRASH_TRIALS", "20"))
TMP = ".condastack-tmp-"
FIGURES: dict[str, dict] = {}


@dataclass
class Tally:
    """What happened over the trials of one command."""

    trials: int = 0
    killed: int = 0  # still running when SIGKILL came (the rest had already finished)
    mid_write: int = 0  # killed with a temporary on disk, i.e. in the middle of writing
    old: int = 0  # outputs found complete and old (or absent, where nothing was there before)
    new: int = 0  # outputs found complete and new
    files_lost: int = 0  # outputs found partial, or an old result gone
    reruns_ok: int = 0
    seconds_per_run: float = 0.0
    problems: list[str] = field(default_factory=list)

    def lost(self, trial: int, what: str) -> None:
        self.files_lost += 1
        self.problems.append(f"trial {trial}: {what}")


@pytest.fixture(scope="module", autouse=True)
def figures(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    yield FIGURES
    if not FIGURES:
        return
    keys = ("trials", "killed", "mid_write", "old", "new", "files_lost", "reruns_ok")
    total = {k: sum(f[k] for f in FIGURES.values()) for k in keys}
    path = tmp_path_factory.getbasetemp() / "crash-figures.json"
    data = {"seed": SEED, "trials_per_command": TRIALS, "total": total,
            "commands": {c: {k: v for k, v in f.items() if k != "problems"} for c, f in FIGURES.items()}}
    path.write_text(json.dumps(data, indent=1) + "\n")
    line = (f"crash safety: {total['trials']} trials, {total['killed']} kills survived "
            f"({total['mid_write']} mid-write), {total['files_lost']} files lost, "
            f"{total['reruns_ok']} re-runs ok -> {path}")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(f"\n{line}\n{json.dumps(data)}")


# --------------------------------------------------------------------------- helpers


def kill_at(args: list, delay: float | None, env: dict[str, str], watch: tuple[Path, ...] = ()) -> bool:
    """Run the CLI; SIGKILL its process group after `delay` s. True if it was still running.

    With `delay` None the kill comes as soon as a new temporary shows up directly in
    one of the `watch` folders (where outputs are written before their rename).
    """
    before = set(_top_temporaries(watch))
    p = subprocess.Popen([*CLI, *map(str, args)], env={**os.environ, **env}, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if delay is None:
        assert watch, "a watched trial needs folders to watch"
        # Spin (no sleep): a small output's temporary lives only as long as its write and fsync.
        while not set(_top_temporaries(watch)) - before:
            if p.poll() is not None:
                return False
    else:
        try:
            p.wait(timeout=delay)
            return False
        except subprocess.TimeoutExpired:
            pass
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 5  # children (tar, zstd) die asynchronously
    while time.monotonic() < deadline:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    return True


def _top_temporaries(folders: tuple[Path, ...]) -> list[str]:
    """Temporaries directly in `folders`: a cheap scan, fast enough to poll while a command runs."""
    out: list[str] = []
    for folder in folders:
        with contextlib.suppress(FileNotFoundError):
            out += [os.path.join(folder, n) for n in os.listdir(folder) if TMP in n]
    return out


def timed(args: list, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    res = run_cli(*args, env=env)
    assert res.returncode == 0, res.output
    return time.monotonic() - t0


def temporaries(*folders: Path) -> list[str]:
    out: list[str] = []
    for folder in folders:
        if folder.is_dir():
            out += [str(p) for p in folder.rglob("*") if TMP in p.name]
    return out


def digest(tree: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple] | None:
    """Every file, link and folder under `tree` with its size and CRC-32; None if absent.

    CRC-32 (not sha256) keeps the many checks cheap; it still tells a partial or
    unrelocated file from the complete one, which is all a crash check needs.
    """
    import zlib

    if not tree.exists() and not tree.is_symlink():
        return None
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(tree):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(tree))
            if rel in skip:
                continue
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                data = p.read_bytes()
                out[rel] = ("file", len(data), zlib.crc32(data), p.stat().st_mode & 0o111)
    return out


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def read_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def trials(name: str, run_once: Callable[[], float], trial: Callable[[int, float | None, Tally], None]) -> Tally:
    """TRIALS kills at seeded random delays, then one watched kill (delay None: at the first temporary)."""
    rng = random.Random(f"{SEED}:{name}")
    tally = Tally()
    t = run_once()
    tally.seconds_per_run = round(t, 3)
    for i in range(TRIALS):
        tally.trials += 1
        trial(i, rng.uniform(0, t), tally)
    tally.trials += 1
    trial(TRIALS, None, tally)
    FIGURES[name] = asdict(tally)
    assert tally.mid_write >= 1, f"{name}: no kill landed while a temporary output existed: {tally}"
    return tally


# --------------------------------------------------------------------------- the project


OLD_SPEC, NEW_SPEC = "libfoo <2", "libfoo >=2"


@dataclass
class World:
    root: Path
    proj: Path
    env: dict[str, str]  # CONDASTACK_PKGS for every command
    pkgs: Path
    old_lock: dict[str, bytes]
    new_lock: dict[str, bytes]
    old_lockfile: Path  # a copy of the old app lockfile, to verify old envs against
    old_env: Path  # a copy of envs/app built from the old lock
    env_b: Path  # an env built from the new lock (the `pack` source)
    archive_a: Path  # packed from the old env (with sidecars)
    archive_b: Path  # packed from the new env

    def set_spec(self, spec: str) -> None:
        """The old state (libfoo 1) or the new one (libfoo 2, and python in app: a bigger env to write)."""
        base, app = self.proj / "environments" / "base.yml", self.proj / "environments" / "app.yml"
        base.write_text(base.read_text().replace(OLD_SPEC, spec).replace(NEW_SPEC, spec))
        app.write_text(app.read_text().replace("  - python\n", "") + ("  - python\n" if spec == NEW_SPEC else ""))

    def set_lock(self, files: dict[str, bytes]) -> None:
        lock = self.proj / "lock"
        for p in lock.iterdir():
            if p.is_file() and not p.name.startswith("."):
                p.unlink()
        for name, data in files.items():
            (lock / name).write_bytes(data)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> World:
    """base (libhello, libfoo) <- app (hello): an old state (libfoo 1) and a new one (libfoo 2, python)."""
    root = tmp_path_factory.mktemp("crash")
    pkgs = root / "pkgs"
    env = {"CONDASTACK_PKGS": str(pkgs)}
    proj = write_project(root / "proj", """
        name: crash
        platforms: [linux-64]
        virtual-packages:
          linux-64: {__glibc: "2.28", __cuda: "12.6"}
        layers:
          base: {file: base.yml}
          app: {file: app.yml, extends: base}
        """, {
        "base.yml": f'name: base\nchannels: ["{channel_url}"]\ndependencies:\n  - libhello\n  - {OLD_SPEC}\n',
        "app.yml": f'name: app\nchannels: ["{channel_url}"]\ndependencies:\n  - hello\n',
    })
    saved = root / "saved"
    saved.mkdir()

    def ok(*args: object) -> None:
        res = run_cli("-C", proj, *args, env=env)
        assert res.returncode == 0, res.output

    ok("lock")
    old_lock = read_files(proj / "lock")
    old_lockfile = saved / "app.conda-lock.yml"
    old_lockfile.write_bytes(old_lock["app.conda-lock.yml"])
    ok("build", "app")
    copy_tree(proj / "envs" / "app", saved / "app-old")
    ok("pack", "--prefix", proj / "envs" / "app", "-o", saved / "a" / "app.tar.zst")
    w = World(root, proj, env, pkgs, old_lock, {}, old_lockfile, saved / "app-old", root / "envB",
              saved / "a" / "app.tar.zst", saved / "b" / "app.tar.zst")
    w.set_spec(NEW_SPEC)
    ok("lock")
    w.new_lock = read_files(proj / "lock")
    assert w.new_lock != old_lock
    ok("build", "app", "--prefix", w.env_b)
    ok("pack", "--prefix", w.env_b, "-o", w.archive_b)
    return w


# --------------------------------------------------------------------------- lock


def test_lock_survives_sigkill(world: World) -> None:
    w = world
    lock = w.proj / "lock"
    names = set(w.old_lock) | set(w.new_lock)

    def once() -> float:
        w.set_lock(w.old_lock)
        t = timed(["-C", w.proj, "lock"], w.env)
        assert read_files(lock) == w.new_lock  # locking is deterministic, so "new" is known byte for byte
        return t

    def trial(i: int, delay: float | None, tally: Tally) -> None:
        w.set_lock(w.old_lock)
        before = set(temporaries(lock))
        tally.killed += kill_at(["-C", w.proj, "lock"], delay, w.env, watch=(lock,))
        tally.mid_write += bool(set(temporaries(lock)) - before)
        now = read_files(lock)
        kinds = set()
        for n in sorted(names):
            if now.get(n) == w.old_lock.get(n):
                kinds.add("old")
            elif now.get(n) == w.new_lock.get(n):
                kinds.add("new")
            else:
                tally.lost(i, f"lock/{n} is neither the old nor the new file")
        tally.old += kinds == {"old"}
        tally.new += "new" in kinds
        res = run_cli("-C", w.proj, "lock", env=w.env)
        if res.returncode != 0 or read_files(lock) != w.new_lock:
            tally.problems.append(f"trial {i}: re-run failed: {res.output[-500:]}")
        elif left := temporaries(lock):
            tally.problems.append(f"trial {i}: temporaries left after the re-run: {left}")
        else:
            tally.reruns_ok += 1

    tally = trials("lock", once, trial)
    assert not tally.problems, "\n".join(tally.problems)
    assert tally.files_lost == 0 and tally.reruns_ok == tally.trials == TRIALS + 1


# --------------------------------------------------------------------------- build


def test_build_survives_sigkill(world: World) -> None:
    from condastack.env.prefix import read_marker
    from condastack.env.verify import verify_prefix

    w = world
    prefix = w.proj / "envs" / "app"
    old_hash = read_marker(w.old_env).lock_hash
    new_lockfile = w.proj / "lock" / "app.conda-lock.yml"

    def reset(cold_cache: bool) -> None:
        w.set_spec(NEW_SPEC)
        w.set_lock(w.new_lock)
        copy_tree(w.old_env, prefix)
        if cold_cache:  # make the build fetch and extract the new packages (python: 37 MB) too
            for p in [*w.pkgs.glob("libfoo-2.0*"), *w.pkgs.glob("python-*")]:
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def once() -> float:
        reset(True)
        return timed(["-C", w.proj, "build", "app"], w.env)

    def trial(i: int, delay: float | None, tally: Tally) -> None:
        reset(cold_cache=i % 2 == 0)
        before = set(temporaries(prefix.parent, w.pkgs))
        tally.killed += kill_at(["-C", w.proj, "build", "app"], delay, w.env, watch=(prefix.parent, w.pkgs))
        tally.mid_write += bool(set(temporaries(prefix.parent, w.pkgs)) - before)
        marker = read_marker(prefix) if prefix.is_dir() else None
        got = marker.lock_hash if marker else None
        if got == old_hash and verify_prefix(prefix, w.old_lockfile).ok:
            tally.old += 1
        elif got is not None and got != old_hash and verify_prefix(prefix, new_lockfile).ok:
            tally.new += 1
        else:
            tally.lost(i, f"envs/app is neither the old env nor the new one (marker {got})")
        res = run_cli("-C", w.proj, "build", "app", env=w.env)
        if res.returncode != 0 or not verify_prefix(prefix, new_lockfile).ok:
            tally.problems.append(f"trial {i}: re-run failed: {res.output[-500:]}")
        elif left := temporaries(prefix.parent, w.pkgs):
            tally.problems.append(f"trial {i}: temporaries left after the re-run: {left}")
        else:
            tally.reruns_ok += 1

    tally = trials("build", once, trial)
    assert not tally.problems, "\n".join(tally.problems)


# --------------------------------------------------------------------------- pack


def _sha256(p: Path) -> str:
    from condastack.core.fs import sha256_file

    return sha256_file(p)


def _valid_archive(out: Path, scratch: Path) -> str | None:
    """None if `out` matches its .sha256 and unpacks; else what is wrong."""
    from condastack.core.errors import CondastackError
    from condastack.archive.unpack import unpack_archive

    side = out.with_name(out.name + ".sha256")
    if not side.is_file():
        return f"{out.name} has no .sha256 beside it"
    if side.read_text().split()[0] != _sha256(out):
        return f"{out.name} does not match its .sha256"
    man = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    if man["sha256"] != _sha256(out):
        return f"{out.name} does not match its manifest"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        unpack_archive(out, scratch)
    except CondastackError as e:
        return f"{out.name} does not unpack: {e}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None


def test_pack_survives_sigkill(world: World, tmp_path: Path) -> None:
    w = world
    out = tmp_path / "dist" / "app.tar.zst"
    sha_a = _sha256(w.archive_a)
    args = ["pack", "--prefix", w.env_b, "-o", out]

    def reset() -> None:
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir()
        for suffix in ("", ".sha256", ".manifest.json"):
            shutil.copy2(f"{w.archive_a}{suffix}", f"{out}{suffix}")

    def once() -> float:
        reset()
        return timed(args, w.env)

    def trial(i: int, delay: float | None, tally: Tally) -> None:
        reset()
        before = set(temporaries(out.parent))
        tally.killed += kill_at(args, delay, w.env, watch=(out.parent,))
        tally.mid_write += bool(set(temporaries(out.parent)) - before)
        if not out.exists():
            tally.lost(i, "the old archive is gone and no new one is there")
        elif problem := _valid_archive(out, tmp_path / "check"):
            tally.lost(i, problem)
        else:
            sha = _sha256(out)
            tally.old += sha == sha_a
            tally.new += sha != sha_a
        res = run_cli(*args, env=w.env)
        side = out.with_name(out.name + ".sha256")
        if res.returncode != 0 or not side.is_file() or side.read_text().split()[0] != _sha256(out):
            tally.problems.append(f"trial {i}: re-run failed: {res.output[-500:]}")
        elif left := temporaries(out.parent):
            tally.problems.append(f"trial {i}: temporaries left after the re-run: {left}")
        else:
            tally.reruns_ok += 1

    tally = trials("pack", once, trial)
    assert not tally.problems, "\n".join(tally.problems)


# --------------------------------------------------------------------------- unpack


def test_unpack_survives_sigkill(world: World, tmp_path: Path) -> None:
    w = world
    dest = tmp_path / "site" / "app"
    args = ["unpack", w.archive_b, dest]
    ref: dict = {}

    def once() -> float:
        t = timed(args, w.env)
        ref.update(digest(dest))
        shutil.rmtree(dest)
        return t

    def trial(i: int, delay: float | None, tally: Tally) -> None:
        empty = i % 2 == 1  # DEST absent, or an empty folder made ready for it
        if empty:
            dest.mkdir()
        before = set(temporaries(dest.parent))
        tally.killed += kill_at(args, delay, w.env, watch=(dest.parent,))
        tally.mid_write += bool(set(temporaries(dest.parent)) - before)
        now = digest(dest)
        if now == ref:
            tally.new += 1
        elif (now is None and not empty) or (now == {} and empty):
            tally.old += 1
        else:
            tally.lost(i, f"DEST is neither as it was nor complete ({len(now or {})} entries)")
        shutil.rmtree(dest, ignore_errors=True)  # unpack wants a new or empty DEST
        res = run_cli(*args, env=w.env)
        if res.returncode != 0 or digest(dest) != ref:
            tally.problems.append(f"trial {i}: re-run failed: {res.output[-500:]}")
        elif left := temporaries(dest.parent):
            tally.problems.append(f"trial {i}: temporaries left after the re-run: {left}")
        else:
            tally.reruns_ok += 1
        shutil.rmtree(dest, ignore_errors=True)

    tally = trials("unpack", once, trial)
    assert not tally.problems, "\n".join(tally.problems)


# --------------------------------------------------------------------------- install


INSTALL_RECORD = "conda-meta/condastack.install"  # holds a timestamp: checked apart


def test_install_survives_sigkill(world: World, tmp_path: Path) -> None:
    w = world
    prefix = tmp_path / "shared" / "envs" / "app"
    saved_a = tmp_path / "installed-a"
    args = ["install", w.archive_b, "--prefix", prefix]
    sha = {_sha256(w.archive_a): "old", _sha256(w.archive_b): "new"}
    refs: dict[str, dict] = {}

    def state() -> str | None:
        now = digest(prefix, skip=(INSTALL_RECORD,))
        for kind, ref in refs.items():
            if now == ref:
                record = json.loads((prefix / INSTALL_RECORD).read_text())
                return kind if sha.get(record["sha256"]) == kind else None
        return None

    def once() -> float:
        res = run_cli("install", w.archive_a, "--prefix", prefix, env=w.env)
        assert res.returncode == 0, res.output
        refs["old"] = digest(prefix, skip=(INSTALL_RECORD,))
        copy_tree(prefix, saved_a)
        t = timed(args, w.env)
        refs["new"] = digest(prefix, skip=(INSTALL_RECORD,))
        assert refs["new"] != refs["old"]
        return t

    def trial(i: int, delay: float | None, tally: Tally) -> None:
        copy_tree(saved_a, prefix)
        before = set(temporaries(prefix.parent))
        tally.killed += kill_at(args, delay, w.env, watch=(prefix.parent,))
        tally.mid_write += bool(set(temporaries(prefix.parent)) - before)
        got = state()
        if got == "old":
            tally.old += 1
        elif got == "new":
            tally.new += 1
        else:
            tally.lost(i, f"{prefix} is neither the old install nor the new one")
        res = run_cli(*args, env=w.env)
        if res.returncode != 0 or state() != "new":
            tally.problems.append(f"trial {i}: re-run failed: {res.output[-500:]}")
        elif left := temporaries(prefix.parent):
            tally.problems.append(f"trial {i}: temporaries left after the re-run: {left}")
        else:
            tally.reruns_ok += 1

    tally = trials("install", once, trial)
    assert not tally.problems, "\n".join(tally.problems)


# --------------------------------------------------------------------------- a kill in the middle of a download


def test_build_killed_mid_download_leaves_no_temporary(tmp_path: Path, channel: Path) -> None:
    """A deterministic point the random trials rarely hit: SIGKILL while a package is being downloaded.

    The channel is served over HTTP on 127.0.0.1, slowly while `slow` is set, and the
    build is killed once its partial download shows up in the cache. The next build
    must remove that temporary (its pid is dead) and produce an env that verifies.
    """
    import functools
    import http.server
    import threading

    from condastack.env.verify import verify_layer

    slow = threading.Event()

    class Slow(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def copyfile(self, source, outputfile) -> None:  # noqa: ANN001 - file objects
            while block := source.read(1 << 16):
                outputfile.write(block)
                if slow.is_set():
                    time.sleep(0.02)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Slow, directory=str(channel)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        proj = write_project(tmp_path / "proj", """
            name: download
            platforms: [linux-64]
            virtual-packages:
              linux-64: {__glibc: "2.28"}
            layers:
              py: {file: py.yml}
            """, {"py.yml": f'name: py\nchannels: ["{url}"]\ndependencies:\n  - python\n'})
        pkgs = tmp_path / "pkgs"
        env = {"CONDASTACK_PKGS": str(pkgs)}
        res = run_cli("-C", proj, "lock", env=env)
        assert res.returncode == 0, res.output
        slow.set()
        p = subprocess.Popen([*CLI, "-C", str(proj), "build", "py"], env={**os.environ, **env},
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not [q for q in pkgs.glob(f"{TMP}python-*") if q.stat().st_size > 0]:
            assert p.poll() is None and time.monotonic() < deadline, "the download never started"
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        partial = temporaries(pkgs)
        assert partial and not (proj / "envs" / "py").exists()
        assert not list(pkgs.glob("python-*.conda"))  # no partial archive under the real name
        slow.clear()
        res = run_cli("-C", proj, "build", "py", env=env)
        assert res.returncode == 0, res.output
        assert verify_layer(proj, "py").ok
        assert temporaries(pkgs, proj / "envs") == [], "the killed download's temporary was left behind"
    finally:
        server.shutdown()
