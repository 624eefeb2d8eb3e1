"""Crash-safe file-system primitives shared by every stage.

The rule everywhere: build the result at a temporary sibling path, then
rename it into place, so a killed process leaves either the old result or
the new one and never a partial file or folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from condastack.core.credentials import gate
from condastack.core.errors import CondastackError, naming

TMP_MARK = ".condastack-tmp-"
HASH_THREADS = 4  # threads hashing files at once (hashlib releases the GIL)

_RENAME_EXCHANGE = 2  # from linux/fs.h
_AT_FDCWD = -100


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path, *, suffix: str = "", durable: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `final` if the block succeeds.

    The temporary is removed on any failure, so `final` is either untouched or
    complete. Works for files and folders (a folder at `final` is swapped).
    `durable=False` skips the fsyncs, for caches whose entries are checked on use.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_MARK}{final.name}.{os.getpid()}{suffix}"
    remove_path(tmp)
    try:
        yield tmp
        if tmp.is_dir() and not tmp.is_symlink():
            swap_dir(tmp, final)
        else:
            if durable and tmp.exists():
                with contextlib.suppress(OSError):
                    fd = os.open(tmp, os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
            os.replace(tmp, final)
            if durable:
                _fsync_dir(final.parent)
    finally:
        remove_path(tmp)


@contextlib.contextmanager
def temp_siblings(*finals: Path) -> Iterator[list[Path]]:
    """A temporary sibling path for each of `finals`, removed on the way out unless renamed
    (with `replace_together`): for outputs that belong together, such as an archive and its sidecars."""
    tmps = [Path(f).parent / f"{TMP_MARK}{Path(f).name}.{os.getpid()}" for f in finals]
    for t in tmps:
        t.parent.mkdir(parents=True, exist_ok=True)
        remove_path(t)
    try:
        yield tmps
    finally:
        for t in tmps:
            remove_path(t)


def replace_together(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each (temporary, final) in order once every temporary is on disk, so a kill between
    two renames leaves a window of microseconds, not of writes and fsyncs; nothing is unlinked first."""
    for tmp, _ in pairs:
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    for tmp, final in pairs:
        os.replace(tmp, final)
    for folder in {Path(final).parent for _, final in pairs}:
        _fsync_dir(folder)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    # A full disk fails in write() or fsync(), with no file name: the message names `path`.
    with naming(path), atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically, through the credentials output gate."""
    atomic_write_bytes(path, gate(text).encode("utf-8"))


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with renameat2(RENAME_EXCHANGE); False if unsupported."""
    import ctypes  # lazy: ~1.2 ms of every command's start-up, for swapping folders only

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_dir(new: Path, final: Path) -> None:
    """Put folder `new` at `final`; an existing `final` is replaced atomically.

    Running processes holding files of the old folder keep them: the old tree
    is moved aside and removed only after the swap.
    """
    new, final = Path(new), Path(final)
    if not final.exists() and not final.is_symlink():
        os.rename(new, final)
        _fsync_dir(final.parent)
        return
    if _rename_exchange(new, final):
        # `new` now holds the old tree.
        remove_path(new)
    else:
        old = final.parent / f"{TMP_MARK}{final.name}.old.{os.getpid()}"
        remove_path(old)
        os.rename(final, old)
        os.rename(new, final)
        remove_path(old)
    _fsync_dir(final.parent)


def remove_path(path: Path) -> None:
    """Remove a file, link or folder if present."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def clean_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Remove temporaries left by killed runs (ours, whose pid is gone)."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not p.name.startswith(TMP_MARK):
            continue
        rest = p.name
        while rest.startswith(TMP_MARK):  # a temporary of a temporary (install unpacks into its stage)
            rest = rest[len(TMP_MARK):]
        if name is not None and not rest.startswith(name):
            continue
        pid = _pid_of(p.name)
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        remove_path(p)
        removed.append(p)
    return removed


def _pid_of(name: str) -> int | None:
    for part in reversed(name.split(".")):
        if part.isdigit():
            return int(part)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _flock(fd: int) -> Iterator[None]:
    """Hold an exclusive flock on an open descriptor for the block (waits for other holders), then close it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def file_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive advisory lock (flock) on a lock file, held for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _flock(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))


def dir_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive flock on a folder itself, held for the block: no lock file is left behind."""
    return _flock(os.open(folder, os.O_RDONLY | os.O_DIRECTORY))


def make_tempdir(near: Path, name: str) -> Path:
    """A temporary folder beside `near` (same file system, so rename works)."""
    Path(near).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_MARK}{name}.{os.getpid()}.", dir=near))


def require_free_space(path: Path, need_bytes: int, what: str) -> None:
    st = shutil.disk_usage(path)
    if st.free < need_bytes:
        raise CondastackError(
            f"not enough free space for {what} in {path}: need {need_bytes / 1e9:.2f} GB, "
            f"{st.free / 1e9:.2f} GB free."
        )
