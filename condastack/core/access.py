"""Who may read what condastack installs: `--mode` for install, module -o, slurm-preamble -o and pack.

A shared env is for everyone on the cluster, but login nodes often run with `umask 077`,
which would leave the prefix, its bin/ and conda-meta/, activate.sh and the modulefiles
readable by their owner alone. So these outputs get an explicit mode, whatever the umask:

- `shared` (the default): folders 0755, files 0644 (0755 where the owner may execute);
- `group`: folders 0750, files 0640 / 0750;
- `private`: folders 0700, files 0600 / 0700;
- an octal folder mode such as `0750` or `775`: files get its read/write bits, and its
  execute bits where the owner may execute the file.

Only permission bits are set (never set-id bits), symlinks are left alone, and the owner
always keeps read and write (an install must stay replaceable by its owner).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from condastack.core.errors import CondastackError

NAMED_MODES = {"shared": 0o755, "group": 0o750, "private": 0o700}
DEFAULT_MODE = "shared"


@dataclass(frozen=True)
class Access:
    """The folder mode; file modes follow from it."""

    folder: int

    @property
    def file(self) -> int:
        return self.folder & 0o666

    def file_mode(self, current: int) -> int:
        """A file's new mode: execute bits only where the owner could execute it."""
        return self.folder & 0o777 if current & stat.S_IXUSR else self.file


def parse_mode(text: str | None) -> Access:
    """`--mode` as given (shared, group, private or an octal folder mode), else exit 1 naming it."""
    text = DEFAULT_MODE if text is None else text.strip()
    if text in NAMED_MODES:
        return Access(NAMED_MODES[text])
    if re.fullmatch(r"0?[0-7]{3}", text):
        mode = int(text, 8)
        if mode & 0o700 != 0o700:
            raise CondastackError(f"--mode {text}: the owner needs rwx on folders (7 first, e.g. 0750).")
        return Access(mode)
    raise CondastackError(f"--mode {text!r}: give shared, group, private or an octal folder mode such as 0750.")


SHARED = parse_mode(DEFAULT_MODE)


def apply_file(path: Path, access: Access) -> None:
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        os.chmod(path, access.file_mode(st.st_mode))


def apply_tree(root: Path, access: Access) -> None:
    """Set the mode of `root` and of every folder and regular file below it (symlinks untouched)."""
    root = Path(root)
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode):
        return
    if not stat.S_ISDIR(st.st_mode):
        apply_file(root, access)
        return
    os.chmod(root, access.folder)
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            p = os.path.join(folder, d)
            if not os.path.islink(p):
                os.chmod(p, access.folder)
        for f in files:
            apply_file(Path(folder, f), access)


def make_folders(path: Path, access: Access) -> None:
    """`mkdir -p path`, the folders it creates getting `access.folder` (existing ones are not changed)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, access.folder)
