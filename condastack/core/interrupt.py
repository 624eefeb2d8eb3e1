"""SIGINT, SIGTERM and SIGHUP end a command cleanly: children first, then every `finally`.

Without a handler Python dies at once on SIGTERM: no `finally` runs, temporaries stay, and
the zstd/tar children keep writing for seconds. The handler sends the signal on to this
process's children (so the `wait()` calls in the stages return at once) and raises
`Terminated`, a KeyboardInterrupt, which unwinds through the cleanup code.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


class Terminated(KeyboardInterrupt):
    """The process got SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def children() -> list[int]:
    """The pids of this process's children (Linux /proc; empty where it is not available)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(p) for p in (task / "children").read_text().split()]
    return out


def end_children(signum: int = signal.SIGTERM) -> None:
    for pid in children():
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def _handler(signum: int, _frame: object) -> None:
    end_children(signal.SIGTERM)
    raise Terminated(signum)


def install() -> None:
    """Install the handlers (main thread only; a no-op elsewhere)."""
    with contextlib.suppress(ValueError):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _handler)


__all__ = ["Terminated", "install", "end_children", "children"]
