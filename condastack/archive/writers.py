"""Archive writers: a tar stream through zstd or gzip, and a SquashFS image.

Each writer takes members as (folder, name) pairs through `add`, or a whole
`Plan` through `add_plan`, and `finish()` returns the archive's sha256; this
follows conda-pack's `formats.py`, where one writer per format shares that
interface. What goes in and from where is decided by the planner (pack.py).

The tar writer never streams bytes through Python: GNU tar reads lists of
paths (`-T -`, each group relative to its own folder) and pipes into
multithreaded `zstd -T<threads>` (or `pigz`), which writes the file; a thread
hashes it behind. The SquashFS writer fills a tree of hard links and runs
`mksquashfs -processors N -comp zstd` once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import queue
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condastack.core.errors import CondastackError
from condastack.core.fs import sha256_file
from condastack.core.progress import Meter


@dataclass
class Plan:
    """Where each archive member comes from."""

    from_prefix: list[str] = field(default_factory=list)
    from_cache: dict[str, list[str]] = field(default_factory=dict)  # package folder -> relative names
    staged: list[str] = field(default_factory=list)  # written under the staging folder
    records: list[tuple[str, str, str]] = field(default_factory=list)  # (file, placeholder, mode)
    packages: list[dict] = field(default_factory=list)
    bytes_unpacked: int = 0

    @property
    def count(self) -> int:
        return len(self.from_prefix) + sum(map(len, self.from_cache.values())) + len(self.staged)


class _Writer:
    """What both writers share: a plan is added folder by folder."""

    def add(self, base: str | Path, name: str) -> None:
        raise NotImplementedError

    def add_plan(self, prefix: Path, plan: Plan, staging: Path) -> None:
        for name in plan.from_prefix:
            self.add(prefix, name)
        for base, names in sorted(plan.from_cache.items()):
            resolved = Path(base).resolve()
            for name in names:
                self.add(resolved, name)
        for name in plan.staged:
            self.add(staging, name)

    def finish(self) -> str:
        raise NotImplementedError

    def abort(self) -> None:
        """Stop after a failure; the partial output is the caller's to remove."""


def compressor(fmt: str, level: int, threads: int) -> list[str]:
    """The command that compresses a tar stream for `fmt` ("tar.zst" or "tar.gz").

    Reproducible archives: zstd's output is the same for every -T<n> (n >= 1: its
    multithreaded format does not depend on the worker count; only --single-thread
    differs, measured with zstd 1.5.4), and pigz's does not depend on -p; -n keeps
    names and times out of the gzip header.
    """
    if fmt == "tar.zst":
        return ["zstd", f"-T{max(threads, 1)}", *(["--ultra"] if level > 19 else []), f"-{level}", "-q", "-c"]
    return ["pigz", "-n", "-p", str(threads), f"-{level}", "-c"]


class TarWriter(_Writer):
    """`tar -T - | compressor > out`: members are listed while earlier ones are already compressed."""

    def __init__(self, out: Path, comp_args: list[str], mtime: int = 0, meter: Meter | None = None) -> None:
        self.comp_args = comp_args
        self.meter = meter
        self.total: int | None = None  # expected tar bytes, once the plan is known (for `meter`)
        cmd = [*_TAR, f"--mtime=@{mtime}", "--clamp-mtime"]
        if meter is not None:
            cmd += [f"--checkpoint={_CP_RECORDS}", f"--checkpoint-action=echo={_CP}%u"]
        with open(out, "wb") as sink:
            self.tar = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                self.comp = subprocess.Popen(comp_args, stdin=self.tar.stdout, stdout=sink, stderr=subprocess.PIPE)
            except FileNotFoundError:
                self.tar.kill()
                self.tar.wait()
                raise CondastackError(f"{comp_args[0]} is not installed; install it or choose another --format.") \
                    from None
        assert self.tar.stdout is not None and self.tar.stdin is not None and self.comp.stderr is not None
        self.tar.stdout.close()
        self.errs: dict[str, bytes] = {}
        self.hasher = _Follower(out)
        comp_err = self.comp.stderr
        self.threads = [threading.Thread(target=self._read_tar_errors, daemon=True),
                        threading.Thread(target=lambda: self.errs.__setitem__("comp", comp_err.read()), daemon=True)]
        for t in [*self.threads, self.hasher]:
            t.start()
        with contextlib.suppress(OSError):  # room for ~16k names: tar never waits for the writer thread
            fcntl.fcntl(self.tar.stdin.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ
        self.feed = _TarFeed(self.tar.stdin)
        self.add = self.feed.add  # type: ignore[method-assign]  # the hot path: one call per member, no wrapper
        self.add_names = self.feed.add_names

    def _read_tar_errors(self) -> None:
        """tar's stderr: its checkpoints (progress, with a meter) and its errors."""
        errs = []
        assert self.tar.stderr is not None
        for line in self.tar.stderr:
            at = line.find(_CP.encode())
            if at >= 0 and self.meter is not None:
                with contextlib.suppress(ValueError):
                    n = int(line[at + len(_CP):].strip()) * _CP_RECORDS * 10240  # 20 blocks of 512 a record
                    self.meter("pack", min(n, self.total or n), self.total, "bytes")
                continue
            errs.append(line)
        self.errs["tar"] = b"".join(errs)

    def _close(self) -> tuple[int, int]:
        self.feed.close()
        rc_t = self.tar.wait()
        rc_c = self.comp.wait()
        self.hasher.done.set()
        for t in [*self.threads, self.hasher]:
            t.join()
        return rc_t, rc_c

    def abort(self) -> None:
        for p in (self.tar, self.comp):
            with contextlib.suppress(OSError):
                p.kill()
        self._close()

    def finish(self) -> str:
        rc_t, rc_c = self._close()
        if self.meter is not None and rc_t == 0 and rc_c == 0 and self.total:
            self.meter("pack", self.total, self.total, "bytes")
        if rc_c != 0:  # checked first: tar then only died of the broken pipe
            if b"No space left" in self.errs.get("comp", b""):  # a user error about the output (named by the caller)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            err = self.errs.get("comp", b"").decode(errors="replace").strip()
            raise CondastackError(f"packing failed: {self.comp_args[0]} exited {rc_c}: {err}")
        if rc_t != 0:
            err = self.errs.get("tar", b"").decode(errors="replace").strip()
            raise CondastackError(f"packing failed: tar exited {rc_t}: {err}")
        return self.hasher.hexdigest()


class SquashfsWriter(_Writer):
    """Links every member into `tree` (which already holds the staged files), then one `mksquashfs`."""

    def __init__(self, out: Path, tree: Path, level: int, threads: int, mtime: int = 0,
                 sort: str = "") -> None:
        self.out, self.tree, self.level, self.threads, self.mtime = out, tree, level, threads, mtime
        self.sort = sort  # a `mksquashfs -sort` file's text: these files first (archive.access)
        # Clamped like tar's --clamp-mtime: mksquashfs (4.5+) gives any file newer than
        # $SOURCE_DATE_EPOCH that time, and the image's creation time. No -all-time: a .py must
        # keep the mtime its timestamp .pyc records, and the hard links into the env are not touched.

    def add(self, base: str | Path, name: str) -> None:
        src = Path(base) / name
        if Path(base) == self.tree:  # a staged file: already in place
            return
        out = self.tree / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), out)
        elif src.is_dir():
            out.mkdir(exist_ok=True)
        else:
            try:
                os.link(src, out)
            except OSError:  # another file system: copy
                shutil.copy2(src, out)

    def finish(self) -> str:
        cmd = ["mksquashfs", str(self.tree), str(self.out), "-noappend", "-no-progress", "-quiet", "-comp", "zstd",
               "-Xcompression-level", str(self.level), "-processors", str(self.threads), "-all-root", "-no-xattrs"]
        sort = self.out.with_name(self.out.name + ".sort")
        if self.sort:
            sort.write_text(self.sort)
            cmd += ["-sort", str(sort)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True,
                               env={**os.environ, "SOURCE_DATE_EPOCH": str(self.mtime)})
        except FileNotFoundError:
            raise CondastackError("mksquashfs is not installed (apt-get install squashfs-tools).") from None
        finally:
            sort.unlink(missing_ok=True)
        if p.returncode != 0:
            raise CondastackError(f"mksquashfs failed for {self.out}: {(p.stderr or p.stdout).strip()}")
        return sha256_file(self.out)


# --no-verbatim-files-from: `--directory=` entries in the list switch folders (--null alone implies verbatim).
# Reproducible: one format, owner 0:0, and mtimes clamped to --mtime: what the env made at build or pack
# time gets that time, package files keep theirs (so timestamp .pyc files stay valid).
_CP, _CP_RECORDS = "@condastack-checkpoint ", 100  # a progress line every 100 records (~1 MB)
_TAR = ["tar", "-cf", "-", "--format=gnu", "--no-recursion", "--numeric-owner", "--owner=0", "--group=0",
        "--null", "--no-verbatim-files-from", "-T", "-"]


def _member(name: bytes) -> bytes:
    """A name as tar's list holds it: one starting with '-' would be read as an option."""
    return b"--add-file=" + name if name.startswith(b"-") else name


class _TarFeed:
    """Names for GNU tar's `-T -` (NUL-separated), each group read relative to its own folder.

    A thread writes them to tar, so the planning can run ahead of tar (it holds a queue of
    names, a few MB at most) and tar never waits for Python.
    """

    def __init__(self, pipe) -> None:  # noqa: ANN001 - a binary file object

        self.pipe = pipe
        self.base: str | None = None
        self.buf: list[bytes] = []
        self.count = 0
        self.broken = False
        self.queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.writer.start()

    def _write(self) -> None:
        while (block := self.queue.get()) is not None:
            if self.broken:
                continue
            try:
                self.pipe.write(block)
                self.pipe.flush()
            except (BrokenPipeError, ValueError):  # tar died (or was killed): its status says why
                self.broken = True

    def _folder(self, base: str | Path) -> None:
        base = str(base)
        if base != self.base:  # position-sensitive, like -C on the command line
            self.buf.append(b"--directory=" + os.fsencode(base) + b"\0")
            self.base = base

    def add(self, base: str | Path, name: str) -> None:
        self._folder(base)
        self.buf.append(_member(os.fsencode(name)) + b"\0")
        self.count += 1
        if len(self.buf) >= 1024:
            self.flush()

    def add_names(self, base: str | Path, names: list[str]) -> None:
        """`add` for many names of one folder: one join (a package's worth of files at a time)."""
        self._folder(base)
        encoded = [os.fsencode(n) for n in names]
        if any(n.startswith(b"-") for n in encoded):  # rare: checked once for the batch
            encoded = [_member(n) for n in encoded]
        self.buf.append(b"\0".join(encoded) + b"\0")
        self.count += len(names)
        self.flush()

    def flush(self) -> None:
        if self.buf:
            self.queue.put(b"".join(self.buf))
            self.buf.clear()

    def close(self) -> None:
        """All names are listed: let the writer finish, then end tar's list."""
        self.flush()
        self.queue.put(None)
        self.writer.join()
        with contextlib.suppress(BrokenPipeError):
            self.pipe.close()



class _Follower(threading.Thread):
    """sha256 of a file that is still being written; `done` is set once the writer has exited."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.done = threading.Event()
        self.h = hashlib.sha256()

    def run(self) -> None:
        flushed = 0
        with open(self.path, "rb", buffering=0) as f:
            while True:
                finished = self.done.is_set()  # read before the data: nothing can follow it then
                while block := f.read(8 << 20):
                    self.h.update(block)
                    pos = f.tell()
                    if pos - flushed >= 64 << 20:
                        _start_writeback(f.fileno(), flushed, pos - flushed)
                        flushed = pos
                if finished:
                    return
                self.done.wait(0.05)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a hashed range of the archive to disk (sync_file_range, not waiting), so the
    fsync that makes the finished archive durable has little left to do. Best effort."""
    global _sync_file_range
    if _sync_file_range is None:

        try:
            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
            _sync_file_range = fn
        except (OSError, AttributeError):  # not Linux/glibc
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


_sync_file_range: Any = None  # ctypes function, or False where there is none
