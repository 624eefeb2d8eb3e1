"""archive.access: the first-read order of an env's files, from atimes, as `mksquashfs -sort` takes it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from condastack.archive.access import first_access, sort_file_text


def test_first_read_first_and_the_mtimes_kept(tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    for name in ("a.py", "b.py", "c.py", "never.py"):
        (prefix / "lib" / name).parent.mkdir(exist_ok=True)
        (prefix / "lib" / name).write_text(f"# {name}\n")
    os.utime(prefix / "lib" / "a.py", ns=(5, 1_600_000_000_123_456_789))
    code = f"for n in ('c.py', 'a.py', 'b.py'):\n    open({str(prefix / 'lib')!r} + '/' + n).read()\n"
    order = first_access(prefix, code)
    # python's own opens in the order made (no clock involved: the same env and warm-up, the same image)
    assert [p for p in order if p.startswith("lib/")] == ["lib/c.py", "lib/a.py", "lib/b.py"]
    assert order == first_access(prefix, code)
    assert (prefix / "lib" / "a.py").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert first_access(prefix, "raise SystemExit(3)") == []  # a failed warm-up orders nothing
    text = sort_file_text([*order, "lib/with space.py"])
    assert text == "lib/c.py 32767\nlib/a.py 32766\nlib/b.py 32765\n"
